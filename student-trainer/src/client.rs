//! Client of a `teacher-server`: connection, model-info check, and the `StreamLogits` stream.
//!
//! tonic and wire types stay in this module: the training loop sees only [`TeacherBatch`]es
//! (`tch` tensors with their schedule position).
//!
//! Pairing: each request carries a fresh `batch_id`; responses may come back in any order and are
//! matched by that id in a [`Pairing`] table, never by arrival order. Batches are then handed to
//! the training loop in schedule order, and at most `prefetch` batches are outstanding (sent and
//! not yet handed over), so memory stays bounded while the teacher's forward passes overlap the
//! student's steps.

use crate::schedule::{PlannedBatch, TeacherBatch};
use distill_proto::codec;
use distill_proto::v1::{
    self, GetModelInfoRequest, LogitsRequest, LogitsResponse, logits_response,
    teacher_client::TeacherClient as Grpc,
};
use std::collections::HashMap;
use std::time::Duration;
use tch::{Kind, Tensor};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

/// The gRPC service name the teacher's health service reports on.
pub const TEACHER_SERVICE: &str = "distill.v1.Teacher";

/// Largest gRPC message this client sends or accepts unless the teacher announces more (bytes).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

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
        "teacher rejected batch {batch_id} (epoch {epoch}, batch {index} of the epoch): code {code}: {message}"
    )]
    Batch {
        /// The request's id.
        batch_id: u64,
        /// Its epoch.
        epoch: u64,
        /// Its position in the epoch.
        index: usize,
        /// gRPC status code number.
        code: i32,
        /// The teacher's message.
        message: String,
    },
    /// A response that breaks the protocol (unknown or duplicate id, wrong shape, ...).
    #[error("teacher protocol violation: {0}")]
    Protocol(String),
    /// The response stream ended while batches were outstanding.
    #[error("teacher closed the logits stream with {outstanding} batch(es) unanswered")]
    StreamClosed {
        /// Batches sent and not answered.
        outstanding: usize,
    },
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

/// The teacher's `ModelInfo`, as domain values.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherInfo {
    /// Model name (architecture name for checkpoints, e.g. `cnn`).
    pub name: String,
    /// Model version string.
    pub version: String,
    /// Hex SHA-256 of the teacher's weights.
    pub fingerprint: String,
    /// Expected input dtype.
    pub input_dtype: v1::DType,
    /// Per-sample input shape, no batch dimension.
    pub input_shape: Vec<i64>,
    /// Logits per sample.
    pub num_logits: i64,
    /// Largest batch one request may carry (0: not announced).
    pub max_batch_size: u32,
    /// Device the teacher runs on.
    pub device: String,
    /// Largest gRPC message the teacher accepts (bytes; 0: not announced).
    pub max_message_bytes: u64,
    /// Random id of the serving process (hex; empty from servers that predate it): two URLs
    /// with the same id reach one server.
    pub instance_id: String,
}

impl From<v1::ModelInfo> for TeacherInfo {
    fn from(m: v1::ModelInfo) -> Self {
        // Destructured so that a new field cannot be ignored silently.
        let v1::ModelInfo {
            name,
            version,
            fingerprint,
            input_dtype,
            input_shape,
            num_logits,
            max_batch_size,
            device,
            max_message_bytes,
            instance_id,
        } = m;
        TeacherInfo {
            name,
            version,
            fingerprint,
            input_dtype: v1::DType::try_from(input_dtype).unwrap_or_default(),
            input_shape,
            num_logits,
            max_batch_size,
            device,
            max_message_bytes,
            instance_id,
        }
    }
}

impl TeacherInfo {
    /// Checks the teacher against our data and student, before any training: input dtype (the
    /// data is `f32`), per-sample input shape, and number of logits = classes.
    ///
    /// # Errors
    /// [`ClientError::Incompatible`] naming the first mismatch, with both values.
    pub fn check(
        &self,
        url: &str,
        sample_shape: &[i64],
        num_classes: i64,
        batch_size: usize,
    ) -> Result<(), ClientError> {
        let bad = |what, teacher: String, side, ours: String| ClientError::Incompatible {
            url: url.to_string(),
            what,
            teacher,
            side,
            ours,
        };
        if self.input_dtype != v1::DType::F32 {
            return Err(bad(
                "input dtype",
                codec::dtype_name(self.input_dtype).into(),
                "the data",
                "f32".into(),
            ));
        }
        if self.input_shape != sample_shape {
            return Err(bad(
                "per-sample input shape",
                format!("{:?}", self.input_shape),
                "the data",
                format!("{sample_shape:?}"),
            ));
        }
        if self.num_logits != num_classes {
            return Err(bad(
                "number of classes (logits)",
                self.num_logits.to_string(),
                "the data and student",
                num_classes.to_string(),
            ));
        }
        if self.max_batch_size > 0 && batch_size > self.max_batch_size as usize {
            return Err(bad(
                "maximum batch size",
                self.max_batch_size.to_string(),
                "--batch-size",
                batch_size.to_string(),
            ));
        }
        Ok(())
    }
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long to wait for the TCP/HTTP2 connection.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval (detects a dead teacher on an idle stream).
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(20),
        }
    }
}

/// Counters of one [`TeacherClient::stream`] call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamStats {
    /// Batches answered.
    pub batches: u64,
    /// Samples answered.
    pub samples: u64,
    /// Responses that arrived out of send order.
    pub out_of_order: u64,
    /// Sum of the server-reported queue times (µs).
    pub queue_us: u64,
    /// Sum of the server-reported compute times (µs).
    pub compute_us: u64,
    /// Largest forward pass the server reported (samples).
    pub max_merged_batch: u32,
}

/// A connected teacher: a gRPC channel and its model info.
#[derive(Debug, Clone)]
pub struct TeacherClient {
    url: String,
    channel: Channel,
    grpc: Grpc<Channel>,
    info: TeacherInfo,
}

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

impl TeacherClient {
    /// Connects to `url` (with HTTP/2 keepalive and raised message limits) and fetches
    /// `GetModelInfo`.
    ///
    /// # Errors
    /// [`ClientError::Url`], [`ClientError::Unreachable`], or [`ClientError::Rpc`] for a failing
    /// `GetModelInfo`.
    pub async fn connect(url: &str, options: &ClientOptions) -> Result<TeacherClient, ClientError> {
        let endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| ClientError::Url {
                url: url.to_string(),
                reason: error_chain(&e),
            })?
            .connect_timeout(options.connect_timeout)
            .http2_keep_alive_interval(options.keepalive_interval)
            .keep_alive_timeout(options.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.to_string(),
                reason: error_chain(&e),
            })?;
        let mut grpc = Grpc::new(channel.clone())
            .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES);
        let info: TeacherInfo = grpc
            .get_model_info(GetModelInfoRequest {})
            .await
            .map_err(|s| rpc_error(url, "GetModelInfo", s))?
            .into_inner()
            .into();
        if info.max_message_bytes as usize > DEFAULT_MAX_MESSAGE_BYTES {
            let n = info.max_message_bytes as usize;
            grpc = grpc
                .max_decoding_message_size(n)
                .max_encoding_message_size(n);
        }
        Ok(TeacherClient {
            url: url.to_string(),
            channel,
            grpc,
            info,
        })
    }

    /// Asks the teacher's `grpc.health.v1.Health` service whether `distill.v1.Teacher` is
    /// serving.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] or [`ClientError::Rpc`] when the check itself fails.
    pub async fn serving(&self) -> Result<bool, ClientError> {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let mut health = HealthClient::new(self.channel.clone());
        let status = health
            .check(HealthCheckRequest {
                service: TEACHER_SERVICE.to_string(),
            })
            .await
            .map_err(|s| rpc_error(&self.url, "Health/Check", s))?
            .into_inner()
            .status;
        Ok(status == ServingStatus::Serving as i32)
    }

    /// Opens one `StreamLogits` call fed by `requests`; the returned stream yields the responses
    /// in completion order.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] or [`ClientError::Rpc`] when the call is refused.
    pub async fn open_stream(
        &self,
        requests: mpsc::Receiver<LogitsRequest>,
    ) -> Result<tonic::Streaming<LogitsResponse>, ClientError> {
        let mut grpc = self.grpc.clone();
        Ok(grpc
            .stream_logits(ReceiverStream::new(requests))
            .await
            .map_err(|s| rpc_error(&self.url, "StreamLogits", s))?
            .into_inner())
    }

    /// The teacher's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The teacher's model info (from `GetModelInfo` at connect time).
    pub fn info(&self) -> &TeacherInfo {
        &self.info
    }

    /// Streams `plan` to the teacher on one `StreamLogits` stream and hands the logits to `out`
    /// in plan order. `inputs` is the whole dataset, `f32 [N, ...sample_shape]` on the CPU; each
    /// batch sends the rows named by its indices. At most `prefetch` batches are outstanding.
    ///
    /// Returns when every batch has been handed over; `out` is dropped then.
    ///
    /// # Errors
    /// [`ClientError::Batch`] for a per-batch error (naming the batch), [`ClientError::Rpc`] for
    /// a failed stream, [`ClientError::Protocol`] for an unknown/duplicate id or wrong shape,
    /// [`ClientError::StreamClosed`], or [`ClientError::ConsumerGone`] if `out` is closed.
    pub async fn stream<I>(
        &self,
        plan: I,
        inputs: Tensor,
        prefetch: usize,
        out: mpsc::Sender<TeacherBatch>,
    ) -> Result<StreamStats, ClientError>
    where
        I: IntoIterator<Item = PlannedBatch>,
    {
        let prefetch = prefetch.max(1);
        let mut plan = plan.into_iter().peekable();
        let mut stats = StreamStats::default();
        if plan.peek().is_none() {
            return Ok(stats);
        }
        let (req_tx, req_rx) = mpsc::channel::<LogitsRequest>(prefetch);
        let mut pairing = Pairing::new(self.info.num_logits);
        // Fill the window before opening the stream, so the first requests travel with it.
        while pairing.outstanding() < prefetch {
            let Some(b) = plan.next() else { break };
            let req = request(&inputs, &b, pairing.next_id())?;
            req_tx
                .try_send(req)
                .expect("the request channel has room for a full window");
            pairing.sent(b);
        }
        let mut grpc = self.grpc.clone();
        let mut responses = grpc
            .stream_logits(ReceiverStream::new(req_rx))
            .await
            .map_err(|s| rpc_error(&self.url, "StreamLogits", s))?
            .into_inner();
        let mut req_tx = Some(req_tx);
        loop {
            while pairing.outstanding() < prefetch {
                let Some(b) = plan.next() else { break };
                let req = request(&inputs, &b, pairing.next_id())?;
                let tx = req_tx.as_ref().expect("open while the plan has batches");
                if tx.send(req).await.is_err() {
                    return Err(ClientError::StreamClosed {
                        outstanding: pairing.outstanding(),
                    });
                }
                pairing.sent(b);
            }
            if plan.peek().is_none() {
                // Half-close: the teacher finishes the outstanding batches and ends the stream.
                req_tx = None;
            }
            if pairing.outstanding() == 0 {
                break;
            }
            let msg = responses
                .message()
                .await
                .map_err(|s| rpc_error(&self.url, "StreamLogits", s))?
                .ok_or(ClientError::StreamClosed {
                    outstanding: pairing.outstanding(),
                })?;
            if let Some(t) = &msg.timing {
                stats.queue_us += t.queue_us;
                stats.compute_us += t.compute_us;
                stats.max_merged_batch = stats.max_merged_batch.max(t.merged_batch_size);
            }
            if msg.batch_id != pairing.next_to_deliver() {
                stats.out_of_order += 1;
            }
            pairing.answer(msg)?;
            while let Some(mut batch) = pairing.pop_ready() {
                batch.replica.clone_from(&self.url);
                stats.batches += 1;
                stats.samples += batch.indices.len() as u64;
                out.send(batch)
                    .await
                    .map_err(|_| ClientError::ConsumerGone)?;
            }
        }
        drop(req_tx);
        tracing::debug!(?stats, "teacher stream done");
        Ok(stats)
    }
}

pub(crate) fn rpc_error(url: &str, rpc: &'static str, s: tonic::Status) -> ClientError {
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

/// The request for one planned batch: the rows of `inputs` named by its indices.
pub(crate) fn request(
    inputs: &Tensor,
    b: &PlannedBatch,
    batch_id: u64,
) -> Result<LogitsRequest, ClientError> {
    let idx = Tensor::from_slice(&b.indices);
    let rows = inputs.f_index_select(0, &idx)?.f_to_kind(Kind::Float)?;
    Ok(LogitsRequest {
        batch_id,
        inputs: Some(codec::encode(&rows)?),
        output_dtype: v1::DType::F32 as i32,
        top_k: 0,
    })
}

/// Outstanding batches of one stream, keyed by `batch_id`: matches responses to the batches they
/// answer and releases them in send order.
///
/// Ids are assigned consecutively from 0 in send order, so "send order" is "id order".
#[derive(Debug)]
pub struct Pairing {
    num_logits: i64,
    next_id: u64,
    next_deliver: u64,
    pending: HashMap<u64, (PlannedBatch, Option<Tensor>)>,
}

impl Pairing {
    /// An empty table for a teacher with `num_logits` logits per sample.
    pub fn new(num_logits: i64) -> Pairing {
        Pairing {
            num_logits,
            next_id: 0,
            next_deliver: 0,
            pending: HashMap::new(),
        }
    }

    /// The id the next [`Pairing::sent`] batch gets.
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// The id of the next batch [`Pairing::pop_ready`] will release.
    pub fn next_to_deliver(&self) -> u64 {
        self.next_deliver
    }

    /// Batches sent and not yet released (answered or not).
    pub fn outstanding(&self) -> usize {
        self.pending.len()
    }

    /// Records `b` as sent with id [`Pairing::next_id`]; returns that id.
    pub fn sent(&mut self, b: PlannedBatch) -> u64 {
        let id = self.next_id;
        self.pending.insert(id, (b, None));
        self.next_id += 1;
        id
    }

    /// Matches a response to its batch by `batch_id` and checks its logits are
    /// `[batch, num_logits]`.
    ///
    /// # Errors
    /// [`ClientError::Batch`] for an error response; [`ClientError::Protocol`] for an unknown or
    /// duplicate id, a missing result, sparse logits, or a wrong shape.
    pub fn answer(&mut self, msg: LogitsResponse) -> Result<(), ClientError> {
        let id = msg.batch_id;
        let Some((planned, slot)) = self.pending.get_mut(&id) else {
            return Err(ClientError::Protocol(format!(
                "response for batch_id {id}, which is not outstanding"
            )));
        };
        if slot.is_some() {
            return Err(ClientError::Protocol(format!(
                "second response for batch_id {id}"
            )));
        }
        let wire = match msg.result {
            Some(logits_response::Result::Logits(t)) => t,
            Some(logits_response::Result::Error(e)) => {
                return Err(ClientError::Batch {
                    batch_id: id,
                    epoch: planned.epoch,
                    index: planned.index,
                    code: e.code,
                    message: e.message,
                });
            }
            Some(logits_response::Result::Sparse(_)) => {
                return Err(ClientError::Protocol(format!(
                    "sparse logits for batch_id {id}, dense requested"
                )));
            }
            None => {
                return Err(ClientError::Protocol(format!(
                    "empty response for batch_id {id}"
                )));
            }
        };
        let logits = codec::decode(&wire)?;
        let expected = vec![planned.indices.len() as i64, self.num_logits];
        if logits.size() != expected {
            return Err(ClientError::Protocol(format!(
                "batch_id {id}: logits of shape {:?}, expected {expected:?}",
                logits.size()
            )));
        }
        *slot = Some(logits.f_to_kind(Kind::Float)?);
        Ok(())
    }

    /// The next batch in send order, if it has been answered.
    pub fn pop_ready(&mut self) -> Option<TeacherBatch> {
        let id = self.next_deliver;
        if !matches!(self.pending.get(&id), Some((_, Some(_)))) {
            return None;
        }
        let (b, logits) = self.pending.remove(&id)?;
        self.next_deliver += 1;
        Some(TeacherBatch {
            batch_id: id,
            epoch: b.epoch,
            index: b.index,
            indices: b.indices,
            logits: logits?,
            replica: String::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(index: usize, indices: &[i64]) -> PlannedBatch {
        PlannedBatch {
            epoch: 0,
            index,
            indices: indices.to_vec(),
        }
    }

    /// Logits whose first column is the sample index: a teacher that "knows" its samples.
    fn response(id: u64, indices: &[i64]) -> LogitsResponse {
        let rows: Vec<f32> = indices.iter().flat_map(|&i| [i as f32, 0.0, 0.0]).collect();
        let t = Tensor::from_slice(&rows).reshape([indices.len() as i64, 3]);
        LogitsResponse {
            batch_id: id,
            result: Some(logits_response::Result::Logits(codec::encode(&t).unwrap())),
            timing: None,
        }
    }

    #[test]
    fn out_of_order_answers_are_released_in_send_order_with_their_own_logits() {
        let mut p = Pairing::new(3);
        let batches = [vec![5i64, 1], vec![7, 2], vec![0, 9]];
        for (i, b) in batches.iter().enumerate() {
            assert_eq!(p.sent(planned(i, b)), i as u64);
        }
        p.answer(response(2, &batches[2])).unwrap();
        p.answer(response(1, &batches[1])).unwrap();
        assert!(p.pop_ready().is_none(), "batch 0 is not answered yet");
        p.answer(response(0, &batches[0])).unwrap();
        for (i, b) in batches.iter().enumerate() {
            let got = p.pop_ready().unwrap();
            assert_eq!((got.batch_id, got.index), (i as u64, i));
            assert_eq!(&got.indices, b);
            let first: Vec<f32> = Vec::try_from(got.logits.select(1, 0)).unwrap();
            let expect: Vec<f32> = b.iter().map(|&x| x as f32).collect();
            assert_eq!(first, expect);
        }
        assert_eq!(p.outstanding(), 0);
    }

    #[test]
    fn unknown_duplicate_misshaped_and_error_responses_are_rejected() {
        let mut p = Pairing::new(3);
        p.sent(planned(0, &[1, 2]));
        assert!(matches!(
            p.answer(response(9, &[1, 2])),
            Err(ClientError::Protocol(_))
        ));
        assert!(matches!(
            p.answer(response(0, &[1])),
            Err(ClientError::Protocol(_))
        ));
        p.answer(response(0, &[1, 2])).unwrap();
        let dup = p.answer(response(0, &[1, 2])).unwrap_err().to_string();
        assert!(dup.contains("second response"), "{dup}");
        p.sent(PlannedBatch {
            epoch: 3,
            index: 4,
            indices: vec![0],
        });
        let err = p
            .answer(LogitsResponse {
                batch_id: 1,
                result: Some(logits_response::Result::Error(v1::Error {
                    code: 3,
                    message: "NaN in inputs".into(),
                })),
                timing: None,
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("batch 1") && err.contains("epoch 3") && err.contains("NaN"),
            "{err}"
        );
    }

    fn info() -> TeacherInfo {
        TeacherInfo {
            name: "cnn".into(),
            version: "1".into(),
            fingerprint: "ab".into(),
            input_dtype: v1::DType::F32,
            input_shape: vec![1, 28, 28],
            num_logits: 10,
            max_batch_size: 256,
            device: "cpu".into(),
            max_message_bytes: 0,
            instance_id: String::new(),
        }
    }

    #[test]
    fn model_info_check_names_the_mismatch() {
        let i = info();
        i.check("u", &[1, 28, 28], 10, 128).unwrap();
        let e = i.check("u", &[1, 28, 28], 5, 128).unwrap_err().to_string();
        assert!(
            e.contains("number of classes") && e.contains("10") && e.contains('5'),
            "{e}"
        );
        let e = i.check("u", &[784], 10, 128).unwrap_err().to_string();
        assert!(e.contains("input shape"), "{e}");
        let e = i.check("u", &[1, 28, 28], 10, 512).unwrap_err().to_string();
        assert!(e.contains("batch size"), "{e}");
        let mut f16 = info();
        f16.input_dtype = v1::DType::F16;
        assert!(
            f16.check("u", &[1, 28, 28], 10, 1)
                .unwrap_err()
                .to_string()
                .contains("dtype")
        );
    }
}
