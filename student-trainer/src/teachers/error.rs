//! Why talking to a teacher failed: [`ClientError`], with the gRPC status code kept (retry policy
//! depends on it), and the helpers that sort a `tonic::Status` into it.

use distill_proto::codec;

/// Why talking to the teacher failed. gRPC status codes are kept: retry policy depends on them.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL cannot be used as a gRPC endpoint.
    #[error("invalid teacher URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No connection could be made.
    #[error("cannot reach the teacher at {url}: {reason} (is teacher-server running there?)")]
    Unreachable {
        /// The URL given.
        url: String,
        /// The transport error and its causes.
        reason: String,
    },
    /// An RPC failed with a gRPC status.
    #[error("teacher at {url}: {rpc} failed: {code:?}: {message}")]
    Rpc {
        /// The teacher's URL.
        url: String,
        /// Which RPC.
        rpc: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The teacher refused our credentials (`UNAUTHENTICATED` or `PERMISSION_DENIED`): the
    /// replica counts as refused, not as a transient failure.
    #[error(
        "teacher at {url} refused the credentials: {rpc}: {}: {message}: check --auth-token-file / STUDENT_AUTH_TOKEN against the teacher's --auth-token-file",
        code_name(*code)
    )]
    Refused {
        /// The teacher's URL.
        url: String,
        /// Which RPC.
        rpc: &'static str,
        /// `Unauthenticated` or `PermissionDenied`.
        code: tonic::Code,
        /// The teacher's message.
        message: String,
    },
    /// The teacher does not fit the data or the student.
    #[error("teacher at {url} does not fit: {what}: teacher has {teacher}, {side} has {ours}")]
    Incompatible {
        /// The teacher's URL.
        url: String,
        /// What differs (e.g. "number of classes").
        what: &'static str,
        /// The teacher's value.
        teacher: String,
        /// Which side of ours (the data, the student, --batch-size).
        side: &'static str,
        /// Our value.
        ours: String,
    },
    /// The teacher answered one batch with a per-batch error.
    #[error(
        "teacher rejected batch {batch_id} (epoch {epoch}, batch {index} of the epoch): {code:?}: {message}"
    )]
    Batch {
        /// The request's id.
        batch_id: u64,
        /// Its epoch.
        epoch: u64,
        /// Its position in the epoch.
        index: usize,
        /// The per-batch error's gRPC status code.
        code: tonic::Code,
        /// The teacher's message.
        message: String,
    },
    /// A response that breaks the protocol (unknown or duplicate id, wrong shape, ...).
    #[error("teacher protocol violation: {0}")]
    Protocol(String),
    /// The consumer of the batches (the training loop) is gone.
    #[error("the training loop stopped receiving teacher batches")]
    ConsumerGone,
    /// Wire tensor encoding or decoding failed.
    #[error("tensor codec: {0}")]
    Codec(#[from] codec::CodecError),
    /// A libtorch failure while preparing a batch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The error and its causes on one line, leaving out causes an earlier message already quotes.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !parts.iter().any(|p| p.contains(&s_text)) {
            parts.push(s_text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// The gRPC spelling of the codes an auth refusal carries (`UNAUTHENTICATED`, ...).
fn code_name(code: tonic::Code) -> String {
    match code {
        tonic::Code::Unauthenticated => "UNAUTHENTICATED".into(),
        tonic::Code::PermissionDenied => "PERMISSION_DENIED".into(),
        other => format!("{other:?}"),
    }
}

impl ClientError {
    /// Whether the teacher refused our credentials ([`ClientError::Refused`]).
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, ClientError::Refused { .. })
    }
}

/// Whether a status refuses our credentials.
pub(crate) fn is_auth_refusal(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    )
}

/// The [`ClientError`] of a failed `rpc` to `url`: [`ClientError::Refused`] for an auth refusal,
/// [`ClientError::Unreachable`] for `UNAVAILABLE`, [`ClientError::Rpc`] otherwise.
pub(crate) fn rpc_error(url: &str, rpc: &'static str, s: tonic::Status) -> ClientError {
    if is_auth_refusal(s.code()) {
        return ClientError::Refused {
            url: url.to_string(),
            rpc,
            code: s.code(),
            message: s.message().to_string(),
        };
    }
    if s.code() == tonic::Code::Unavailable {
        return ClientError::Unreachable {
            url: url.to_string(),
            reason: format!("{rpc}: {}", s.message()),
        };
    }
    ClientError::Rpc {
        url: url.to_string(),
        rpc,
        code: s.code(),
        message: s.message().to_string(),
    }
}
