//! Why talking to a teacher failed: [`ClientError`], with the gRPC status code kept (retry policy
//! depends on it), and the helpers that sort a `tonic::Status` into it, or recognise the TLS
//! mistake behind a broken connection ([`tls_mistake`]).

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
    /// The connection broke in a way that points at the TLS settings of one side: a client
    /// certificate missing or refused, or TLS spoken on one side only.
    #[error("teacher at {url}: {cause} ({detail})")]
    Tls {
        /// The teacher's URL.
        url: String,
        /// The probable mistake and the flag that fixes it (see [`tls_mistake`]).
        cause: &'static str,
        /// What the transport reported.
        detail: String,
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

/// What the student knows of its side of a connection that broke: enough to name the probable
/// TLS mistake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TlsSide {
    /// Whether it spoke TLS (an `https://` URL).
    pub(crate) tls: bool,
    /// Whether it offered a client certificate (`--tls-cert`/`--tls-key`).
    pub(crate) client_certificate: bool,
}

/// The teacher asked for a client certificate and got none.
const NEEDS_CERTIFICATE: &str =
    "the teacher requires a client certificate (mutual TLS): pass --tls-cert and --tls-key";
/// The teacher closed the connection right after the handshake, without saying why.
const PROBABLY_NEEDS_CERTIFICATE: &str = "the teacher closed the connection after the TLS handshake: it probably requires a client certificate (mutual TLS): pass --tls-cert and --tls-key";
/// The teacher refused our certificate as expired.
const CERTIFICATE_EXPIRED: &str =
    "the teacher refused our client certificate as expired: renew --tls-cert";
/// The teacher does not know the CA of our certificate.
const UNKNOWN_CA: &str = "the teacher does not trust the CA of our client certificate: --tls-cert must be signed by the CA of the teacher's --tls-client-ca";
/// The teacher refused our certificate for another reason.
const CERTIFICATE_REFUSED: &str = "the teacher refused our client certificate: --tls-cert/--tls-key must be signed by the CA of the teacher's --tls-client-ca and not be expired";
/// The teacher closed the connection right after the handshake, and we offered a certificate.
const PROBABLY_CERTIFICATE_REFUSED: &str = "the teacher closed the connection after the TLS handshake: it probably refused our client certificate: --tls-cert/--tls-key must be signed by the CA of the teacher's --tls-client-ca and not be expired";
/// A plain-text connection got bytes that are not HTTP/2 (a TLS alert, most likely).
const SPEAKS_TLS: &str = "the teacher does not answer in plain-text HTTP/2: it probably speaks TLS: use an https:// URL (with --tls-ca if its CA is a private one)";
/// A plain-text connection closed at the first call.
const PROBABLY_SPEAKS_TLS: &str = "the teacher closed the plain-text connection at the first call: it probably speaks TLS: use an https:// URL (with --tls-ca if its CA is a private one)";

/// The probable TLS mistake behind a broken connection, naming the flag that fixes it: `chain`
/// is the transport error and its causes on one line ([`error_chain`]), `side` what we spoke,
/// and `handshaken` whether the TLS handshake had completed on our side (the first RPC failed,
/// not the connect). `None` when nothing points at TLS.
///
/// A teacher that refuses a client certificate sends a TLS alert (rustls: `received fatal
/// alert: NAME`), which usually reaches us; when it does not (the connection just closes after
/// the handshake), whether we offered a certificate tells the likely cause. A plain-text client
/// reading a TLS server's alert sees an HTTP/2 frame of impossible size, or (when the
/// connection's end overtakes its first call) a connection closed at once.
pub(crate) fn tls_mistake(chain: &str, side: TlsSide, handshaken: bool) -> Option<&'static str> {
    if !side.tls {
        return if chain.contains("frame with invalid size") {
            Some(SPEAKS_TLS)
        } else if handshaken && chain.ends_with("connection closed") {
            Some(PROBABLY_SPEAKS_TLS)
        } else {
            None
        };
    }
    let alert = chain.split("received fatal alert: ").nth(1).map(|rest| {
        rest.split(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .unwrap_or("")
    });
    match (alert, side.client_certificate) {
        (Some("CertificateRequired"), _) => Some(NEEDS_CERTIFICATE),
        (Some("HandshakeFailure"), false) => Some(PROBABLY_NEEDS_CERTIFICATE),
        (Some("CertificateExpired"), true) => Some(CERTIFICATE_EXPIRED),
        (Some("UnknownCA"), true) => Some(UNKNOWN_CA),
        (
            Some(
                "BadCertificate"
                | "UnsupportedCertificate"
                | "CertificateUnknown"
                | "CertificateRevoked"
                | "AccessDenied"
                | "HandshakeFailure",
            ),
            true,
        ) => Some(CERTIFICATE_REFUSED),
        (Some(_), _) => None,
        (None, _) if !handshaken => None,
        (None, false) => Some(PROBABLY_NEEDS_CERTIFICATE),
        (None, true) => Some(PROBABLY_CERTIFICATE_REFUSED),
    }
}

/// The [`ClientError`] of a failed connect to `url`: [`ClientError::Tls`] when the error points at
/// a TLS mistake, else [`ClientError::Unreachable`] (with a hint at the TLS flags when a
/// certificate is involved).
pub(crate) fn connect_error(
    url: &str,
    side: TlsSide,
    e: &(dyn std::error::Error + 'static),
) -> ClientError {
    let reason = error_chain(e);
    if let Some(cause) = tls_mistake(&reason, side, false) {
        return ClientError::Tls {
            url: url.to_string(),
            cause,
            detail: reason,
        };
    }
    let hint = if reason.contains("certificate") || reason.contains("Certificate") {
        " (TLS: check --tls-ca, --tls-server-name, and --tls-cert/--tls-key for mutual TLS)"
    } else {
        ""
    };
    ClientError::Unreachable {
        url: url.to_string(),
        reason: format!("{reason}{hint}"),
    }
}

/// [`rpc_error`] for the first RPCs on a new connection: a broken connection (no status from the
/// teacher, and not `UNAVAILABLE`, which is a connect that failed) that points at a TLS mistake
/// is a [`ClientError::Tls`].
pub(crate) fn first_rpc_error(
    url: &str,
    rpc: &'static str,
    side: TlsSide,
    s: tonic::Status,
) -> ClientError {
    use std::error::Error as _;
    let broken = matches!(
        s.code(),
        tonic::Code::Unknown | tonic::Code::Cancelled | tonic::Code::Internal
    );
    // A status the teacher sent has no source; one made from a transport error has.
    if let Some(source) = s.source().filter(|_| broken) {
        let chain = error_chain(source);
        if let Some(cause) = tls_mistake(&chain, side, true) {
            return ClientError::Tls {
                url: url.to_string(),
                cause,
                // The status message is tonic's rendering of the same chain.
                detail: format!("{rpc}: {:?}: {chain}", s.code()),
            };
        }
    }
    rpc_error(url, rpc, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TLS: TlsSide = TlsSide {
        tls: true,
        client_certificate: false,
    };
    const MTLS: TlsSide = TlsSide {
        tls: true,
        client_certificate: true,
    };
    const PLAIN: TlsSide = TlsSide {
        tls: false,
        client_certificate: false,
    };

    #[test]
    fn tls_alerts_and_closed_connections_name_the_flag() {
        let alert =
            |name: &str| format!("transport error: connection error: received fatal alert: {name}");
        let closed = "transport error: operation was canceled: connection closed";
        let mistake = |chain: &str, side, handshaken| tls_mistake(chain, side, handshaken);
        assert_eq!(
            mistake(&alert("CertificateRequired"), TLS, true),
            Some(NEEDS_CERTIFICATE)
        );
        assert_eq!(
            mistake(&alert("CertificateExpired"), MTLS, true),
            Some(CERTIFICATE_EXPIRED)
        );
        assert_eq!(mistake(&alert("UnknownCA"), MTLS, true), Some(UNKNOWN_CA));
        assert_eq!(
            mistake(&alert("BadCertificate"), MTLS, false),
            Some(CERTIFICATE_REFUSED)
        );
        assert_eq!(mistake(closed, TLS, true), Some(PROBABLY_NEEDS_CERTIFICATE));
        assert_eq!(
            mistake(closed, MTLS, true),
            Some(PROBABLY_CERTIFICATE_REFUSED)
        );
        // Before the handshake ended, a closed connection says nothing about certificates.
        assert_eq!(mistake(closed, TLS, false), None);
        // Alerts about the server's side are left to the caller's message.
        assert_eq!(mistake(&alert("ProtocolVersion"), MTLS, true), None);
        let h2 = "transport error: http2 error: connection error detected: frame with invalid size";
        assert_eq!(mistake(h2, PLAIN, true), Some(SPEAKS_TLS));
        assert_eq!(mistake(closed, PLAIN, true), Some(PROBABLY_SPEAKS_TLS));
        assert_eq!(mistake(closed, PLAIN, false), None);
        assert_eq!(mistake("connection refused", PLAIN, true), None);
        for cause in [
            NEEDS_CERTIFICATE,
            PROBABLY_NEEDS_CERTIFICATE,
            CERTIFICATE_EXPIRED,
            UNKNOWN_CA,
            CERTIFICATE_REFUSED,
            PROBABLY_CERTIFICATE_REFUSED,
        ] {
            assert!(cause.contains("--tls-cert"), "{cause}");
        }
        for cause in [SPEAKS_TLS, PROBABLY_SPEAKS_TLS] {
            assert!(cause.contains("https://"), "{cause}");
        }
    }

    #[test]
    fn a_status_the_teacher_sent_is_not_a_tls_mistake() {
        let e = first_rpc_error(
            "https://t:1",
            "GetModelInfo",
            TLS,
            tonic::Status::unknown("connection closed"),
        );
        assert!(matches!(e, ClientError::Rpc { .. }), "{e}");
    }
}
