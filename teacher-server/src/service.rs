//! The `distill.v1.Teacher` gRPC service.
//!
//! `StreamLogits` runs one task per stream: it reads requests (at most `stream_window` in flight,
//! beyond which it stops reading and HTTP/2 flow control pushes back on the client), validates
//! each, submits the good ones to the [`Batcher`] through the stream's own [`StreamQueue`] (so
//! streams take turns in the forward passes), and sends responses, in completion order,
//! through a bounded channel. A bad batch gets a `LogitsResponse` carrying an `Error` and the
//! stream stays open. On shutdown the task stops reading, answers every batch it has read, and
//! ends the stream with `UNAVAILABLE` so the client resends anything unanswered elsewhere.

use crate::batcher::{Batcher, StreamQueue};
use crate::engine::{BatchTiming, EngineError, Job, JobResult, Logits};
use crate::error::{Error, read_failure};
use crate::metrics::ServerMetrics;
use crate::model::ModelDescription;
use crate::validate::{Limits, OutputLimit, validate};
use distill_proto::codec;
use distill_proto::v1::{self, teacher_server::Teacher};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Responses buffered per stream before the stream task waits for the client to read.
const RESPONSE_BUFFER: usize = 16;

/// The `distill.v1.Teacher` service. It answers from the moment the server binds: until the
/// model is loaded and warmed up ([`TeacherService::set_ready`]), both RPCs fail with
/// `UNAVAILABLE` and a retry hint instead of waiting.
#[derive(Debug, Clone)]
pub(crate) struct TeacherService {
    ready: Arc<OnceLock<Arc<ServingModel>>>,
    /// Random id of this server process (`ModelInfo.instance_id`), drawn once in [`TeacherService::new`].
    instance_id: String,
    draining: watch::Receiver<bool>,
    metrics: ServerMetrics,
}

/// What the service needs once the model is loaded.
#[derive(Debug)]
pub(crate) struct ServingModel {
    info: ModelDescription,
    limits: Limits,
    max_message_bytes: usize,
    stream_window: usize,
    batcher: Batcher,
}

/// Settings of [`ServingModel`].
#[derive(Debug, Clone)]
pub(crate) struct ServiceSettings {
    /// `--max-batch-size`.
    pub max_batch_size: usize,
    /// `--max-message-bytes` (reported in `ModelInfo`).
    pub max_message_bytes: usize,
    /// Batches one stream may have in flight.
    pub stream_window: usize,
}

impl ServingModel {
    /// The loaded model `info`, fed through `batcher`.
    ///
    /// # Errors
    /// [`Error::Config`] if the model's input kind has no wire `DType`.
    pub(crate) fn new(
        info: ModelDescription,
        settings: ServiceSettings,
        batcher: Batcher,
    ) -> Result<Self, Error> {
        let input_dtype = codec::dtype_of(info.input_dtype)
            .map_err(|e| Error::Config(format!("the model's input dtype cannot be served: {e}")))?;
        let limits = Limits {
            input_shape: info.input_shape.clone(),
            input_dtype,
            num_logits: info.num_logits,
            max_batch_size: settings.max_batch_size,
            max_seq_len: info.sequence.as_ref().map(|s| s.max_seq_len),
            max_message_bytes: settings.max_message_bytes as u64,
            outputs: info
                .outputs
                .iter()
                .filter(|o| o.name != info.logits_output)
                .map(|o| OutputLimit {
                    name: o.name.clone(),
                    elements: o.elements(),
                    per_position: o.per_position(),
                })
                .collect(),
            logits_output: info.logits_output.clone(),
        };
        Ok(ServingModel {
            info,
            limits,
            max_message_bytes: settings.max_message_bytes,
            stream_window: settings.stream_window.max(1),
            batcher,
        })
    }
}

impl TeacherService {
    /// A service with no model yet; `draining` turns `true` on shutdown.
    pub(crate) fn new(draining: watch::Receiver<bool>, metrics: ServerMetrics) -> Self {
        TeacherService {
            ready: Arc::new(OnceLock::new()),
            instance_id: format!("{:032x}", rand::random::<u128>()),
            draining,
            metrics,
        }
    }

    /// Starts serving `model` (once; a second call is ignored).
    pub(crate) fn set_ready(&self, model: ServingModel) {
        let _ = self.ready.set(Arc::new(model));
    }

    /// The loaded model, or [`Error::NotReady`] (counted) while it loads.
    fn model(&self) -> Result<Arc<ServingModel>, Status> {
        match self.ready.get() {
            Some(m) => Ok(m.clone()),
            None => Err(self.failed(Error::NotReady)),
        }
    }

    /// `e` as the status of a failed call, counted in `teacher_errors_total`.
    fn failed(&self, e: Error) -> Status {
        self.metrics.error(e.code());
        e.into()
    }
}

#[tonic::async_trait]
impl Teacher for TeacherService {
    async fn get_model_info(
        &self,
        _request: Request<v1::GetModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfo>, Status> {
        let model = self.model()?;
        let ModelDescription {
            name,
            version,
            fingerprint,
            input_shape,
            input_dtype: _,
            num_logits,
            device,
            precision,
            sequence,
            outputs,
            logits_output,
        } = model.info.clone();
        Ok(Response::new(v1::ModelInfo {
            name,
            version,
            fingerprint,
            input_dtype: model.limits.input_dtype as i32,
            input_shape,
            num_logits,
            max_batch_size: u32::try_from(model.limits.max_batch_size).unwrap_or(u32::MAX),
            device,
            max_message_bytes: model.max_message_bytes as u64,
            instance_id: self.instance_id.clone(),
            precision: precision.dtype() as i32,
            sequence_model: sequence.is_some(),
            max_seq_len: sequence.as_ref().map_or(0, |s| s.max_seq_len),
            tokenizer_fingerprint: sequence
                .map(|s| s.tokenizer_fingerprint)
                .unwrap_or_default(),
            outputs: outputs
                .into_iter()
                .map(|o| v1::OutputInfo {
                    dtype: codec::dtype_of(o.kind).map_or(v1::DType::DtypeUnspecified, |d| d)
                        as i32,
                    name: o.name,
                    shape: o.shape,
                })
                .collect(),
            logits_output,
        }))
    }

    type StreamLogitsStream = ReceiverStream<Result<v1::LogitsResponse, Status>>;

    async fn stream_logits(
        &self,
        request: Request<Streaming<v1::LogitsRequest>>,
    ) -> Result<Response<Self::StreamLogitsStream>, Status> {
        let model = self.model()?;
        if *self.draining.borrow() {
            return Err(self.failed(Error::ShuttingDown));
        }
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let queue = model.batcher.stream();
        let stream = StreamTask {
            model,
            draining: self.draining.clone(),
            metrics: self.metrics.clone(),
            inbound: request.into_inner(),
            out: tx,
            queue,
            jobs: JoinSet::new(),
            answered: 0,
        };
        let span = tracing::info_span!("stream", %peer);
        tokio::spawn(stream.run().instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What a finished job hands back to its stream task.
type Done = (u64, Result<JobResult, oneshot::error::RecvError>);

/// One `StreamLogits` call.
struct StreamTask {
    model: Arc<ServingModel>,
    draining: watch::Receiver<bool>,
    metrics: ServerMetrics,
    inbound: Streaming<v1::LogitsRequest>,
    out: mpsc::Sender<Result<v1::LogitsResponse, Status>>,
    /// This stream's lane in the batcher.
    queue: StreamQueue,
    /// Batches submitted and not yet answered; dropping the set drops their receivers, so the
    /// batcher discards them.
    jobs: JoinSet<Done>,
    answered: u64,
}

/// How a stream ended.
enum End {
    /// The client half-closed and everything was answered.
    Finished,
    /// The server is shutting down; everything read was answered.
    Draining,
    /// Reading failed (e.g. a message over the size limit); everything read was answered.
    Failed(Status),
    /// The client went away.
    Gone,
}

impl StreamTask {
    async fn run(mut self) {
        tracing::debug!("stream opened");
        self.metrics.streams_open.inc();
        let end = self.serve().await;
        self.metrics.streams_open.dec();
        let (how, last) = match end {
            End::Finished => ("finished", None),
            End::Draining => ("shutting down", Some(Status::from(Error::ShuttingDown))),
            End::Failed(status) => ("failed", Some(status)),
            End::Gone => ("client gone", None),
        };
        if let Some(status) = last {
            self.metrics.error(status.code());
            let _ = self.out.send(Err(status)).await;
        }
        tracing::debug!(answered = self.answered, how, "stream closed");
    }

    async fn serve(&mut self) -> End {
        let mut draining = self.draining.clone();
        let mut reading = true;
        let mut end = End::Finished;
        loop {
            if !reading && self.jobs.is_empty() {
                return end;
            }
            let room = self.jobs.len() < self.model.stream_window;
            tokio::select! {
                biased;
                Some(done) = self.jobs.join_next(), if !self.jobs.is_empty() => {
                    let response = match done {
                        Ok((batch_id, result)) => self.response(batch_id, result),
                        // A job task cannot panic; treat a join error as a lost engine.
                        Err(_) => continue,
                    };
                    if !self.send(response).await {
                        return End::Gone;
                    }
                }
                _ = until_true(&mut draining), if reading => {
                    reading = false;
                    end = End::Draining;
                }
                msg = self.inbound.message(), if reading && room => match msg {
                    Ok(Some(req)) => {
                        if let Some(response) = self.submit(req)
                            && !self.send(response).await
                        {
                            return End::Gone;
                        }
                    }
                    Ok(None) => reading = false,
                    Err(status) => {
                        tracing::debug!(%status, "reading the stream failed");
                        reading = false;
                        end = End::Failed(read_failure(status, self.model.max_message_bytes));
                    }
                },
                _ = self.out.closed() => return End::Gone,
            }
        }
    }

    /// Validates and submits one request; returns the response to send at once, if any.
    fn submit(&mut self, req: v1::LogitsRequest) -> Option<v1::LogitsResponse> {
        let arrived = Instant::now();
        let batch_id = req.batch_id;
        let span = tracing::info_span!("batch", batch_id, samples = tracing::field::Empty);
        let _entered = span.enter();
        let valid = match validate(&req, &self.model.limits) {
            Ok(v) => v,
            Err(e) => return Some(self.error_response(batch_id, &Error::from(e))),
        };
        span.record("samples", valid.inputs.size().first().copied().unwrap_or(0));
        drop(req);
        let (reply, rx) = oneshot::channel();
        let job = Job {
            sequence: self.model.limits.max_seq_len.is_some(),
            inputs: valid.inputs,
            mask: valid.mask,
            output: valid.output,
            outputs: valid.outputs,
            gather: valid.gather,
            gathered_only: valid.gathered_only,
            arrived,
            reply,
            span: span.clone(),
        };
        if let Err(e) = self.queue.submit(job) {
            return Some(self.error_response(batch_id, &Error::from(e)));
        }
        drop(_entered);
        self.jobs
            .spawn(async move { (batch_id, rx.await) }.instrument(span));
        None
    }

    async fn send(&mut self, response: v1::LogitsResponse) -> bool {
        self.answered += 1;
        self.out.send(Ok(response)).await.is_ok()
    }

    fn depth(&self) -> u32 {
        u32::try_from(self.jobs.len()).unwrap_or(u32::MAX)
    }

    fn error_response(&self, batch_id: u64, e: &Error) -> v1::LogitsResponse {
        self.metrics.error(e.code());
        v1::LogitsResponse {
            batch_id,
            result: Some(v1::logits_response::Result::Error(e.to_wire())),
            timing: Some(timing(BatchTiming::default(), self.depth())),
            outputs: Vec::new(),
            gathered: None,
        }
    }

    fn response(
        &self,
        batch_id: u64,
        result: Result<JobResult, oneshot::error::RecvError>,
    ) -> v1::LogitsResponse {
        let output = match result {
            Ok(Ok(output)) => output,
            Ok(Err(e)) => return self.error_response(batch_id, &Error::from(e)),
            Err(_) => return self.error_response(batch_id, &Error::from(EngineError::Stopped)),
        };
        let samples = match (&output.logits, &output.gathered) {
            (Some(l), _) => l.samples(),
            (None, Some(g)) => g.size().first().map_or(0, |&n| n.max(0) as u64),
            (None, None) => 0,
        };
        match encode_output(output.logits, output.outputs, output.gathered) {
            Ok((result, outputs, gathered)) => {
                self.metrics.requests.inc();
                self.metrics.samples.inc_by(samples);
                v1::LogitsResponse {
                    batch_id,
                    result,
                    timing: Some(timing(output.timing, self.depth())),
                    outputs,
                    gathered,
                }
            }
            Err(e) => self.error_response(batch_id, &e),
        }
    }
}

/// Completes once the watched flag is `true` (or its sender is gone).
async fn until_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|v| *v).await;
}

fn timing(t: BatchTiming, depth: u32) -> v1::Timing {
    let BatchTiming {
        queue_us,
        compute_us,
        merged_batch_size,
        merged_requests,
    } = t;
    v1::Timing {
        queue_us,
        compute_us,
        merged_batch_size,
        merged_requests,
        stream_queue_depth: depth,
    }
}

/// A job's answer on the wire: its result (none with `gathered_only`), named outputs and
/// gathered log-probabilities.
type WireOutput = (
    Option<v1::logits_response::Result>,
    Vec<v1::NamedTensor>,
    Option<v1::Tensor>,
);

/// Encodes a job's logits, named outputs and gathered log-probabilities.
fn encode_output(
    logits: Option<Logits>,
    outputs: Vec<(String, tch::Tensor)>,
    gathered: Option<tch::Tensor>,
) -> Result<WireOutput, Error> {
    let outputs = outputs
        .into_iter()
        .map(|(name, t)| {
            Ok(v1::NamedTensor {
                name,
                tensor: Some(codec::encode(&t)?),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let result = logits.map(encode).transpose()?;
    let gathered = gathered.map(|t| codec::encode(&t)).transpose()?;
    Ok((result, outputs, gathered))
}

/// Domain logits → wire result.
fn encode(logits: Logits) -> Result<v1::logits_response::Result, Error> {
    Ok(match logits {
        Logits::Dense(t) => v1::logits_response::Result::Logits(codec::encode(&t)?),
        Logits::Sparse {
            indices,
            values,
            logsumexp,
            tail_logsumexp,
        } => v1::logits_response::Result::Sparse(v1::SparseLogits {
            indices: Some(codec::encode(&indices)?),
            values: Some(codec::encode(&values)?),
            logsumexp: Some(codec::encode(&logsumexp)?),
            tail_logsumexp: Some(codec::encode(&tail_logsumexp)?),
        }),
    })
}
