//! The `distill.v1.Teacher` gRPC service.
//!
//! `StreamLogits` runs one task per stream: it reads requests (at most `stream_window` in flight,
//! beyond which it stops reading and HTTP/2 flow control pushes back on the client), validates
//! each, submits the good ones to the [`Batcher`], and sends responses, in completion order,
//! through a bounded channel. A bad batch gets a `LogitsResponse` carrying an `Error` and the
//! stream stays open. On shutdown the task stops reading, answers every batch it has read, and
//! ends the stream with `UNAVAILABLE` so the client resends anything unanswered elsewhere.

use crate::batcher::Batcher;
use crate::engine::{BatchTiming, Job, JobResult, Logits};
use crate::error::{EngineError, Error, read_failure};
use crate::model::ModelDescription;
use crate::validate::{Limits, validate};
use distill_proto::codec;
use distill_proto::v1::{self, teacher_server::Teacher};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

/// Responses buffered per stream before the stream task waits for the client to read.
const RESPONSE_BUFFER: usize = 16;

/// State shared by every call of the service.
#[derive(Debug, Clone)]
pub(crate) struct TeacherService {
    info: ModelDescription,
    limits: Limits,
    max_message_bytes: usize,
    /// Random id of this server process (`ModelInfo.instance_id`), drawn once in [`TeacherService::new`].
    instance_id: String,
    stream_window: usize,
    batcher: Batcher,
    draining: watch::Receiver<bool>,
}

/// Settings of [`TeacherService`].
#[derive(Debug, Clone)]
pub(crate) struct ServiceSettings {
    /// `--max-batch-size`.
    pub max_batch_size: usize,
    /// `--max-message-bytes` (reported in `ModelInfo`).
    pub max_message_bytes: usize,
    /// Batches one stream may have in flight.
    pub stream_window: usize,
}

impl TeacherService {
    /// A service for the model `info`, feeding `batcher`; `draining` turns `true` on shutdown.
    ///
    /// # Errors
    /// [`Error::Config`] if the model's input kind has no wire `DType`.
    pub(crate) fn new(
        info: ModelDescription,
        settings: ServiceSettings,
        batcher: Batcher,
        draining: watch::Receiver<bool>,
    ) -> Result<Self, Error> {
        let input_dtype = codec::dtype_of(info.input_dtype)
            .map_err(|e| Error::Config(format!("the model's input dtype cannot be served: {e}")))?;
        let limits = Limits {
            input_shape: info.input_shape.clone(),
            input_dtype,
            num_logits: info.num_logits,
            max_batch_size: settings.max_batch_size,
        };
        Ok(TeacherService {
            info,
            limits,
            max_message_bytes: settings.max_message_bytes,
            instance_id: format!("{:032x}", rand::random::<u128>()),
            stream_window: settings.stream_window.max(1),
            batcher,
            draining,
        })
    }
}

#[tonic::async_trait]
impl Teacher for TeacherService {
    async fn get_model_info(
        &self,
        _request: Request<v1::GetModelInfoRequest>,
    ) -> Result<Response<v1::ModelInfo>, Status> {
        let ModelDescription {
            name,
            version,
            fingerprint,
            input_shape,
            input_dtype: _,
            num_logits,
            device,
            precision,
        } = self.info.clone();
        Ok(Response::new(v1::ModelInfo {
            name,
            version,
            fingerprint,
            input_dtype: self.limits.input_dtype as i32,
            input_shape,
            num_logits,
            max_batch_size: u32::try_from(self.limits.max_batch_size).unwrap_or(u32::MAX),
            device,
            max_message_bytes: self.max_message_bytes as u64,
            instance_id: self.instance_id.clone(),
            precision: precision.dtype() as i32,
        }))
    }

    type StreamLogitsStream = ReceiverStream<Result<v1::LogitsResponse, Status>>;

    async fn stream_logits(
        &self,
        request: Request<Streaming<v1::LogitsRequest>>,
    ) -> Result<Response<Self::StreamLogitsStream>, Status> {
        if *self.draining.borrow() {
            return Err(Error::ShuttingDown.into());
        }
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |a| a.to_string());
        let (tx, rx) = mpsc::channel(RESPONSE_BUFFER);
        let stream = StreamTask {
            service: self.clone(),
            inbound: request.into_inner(),
            out: tx,
            jobs: JoinSet::new(),
            answered: 0,
        };
        tokio::spawn(stream.run(peer));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// What a finished job hands back to its stream task.
type Done = (u64, Result<JobResult, oneshot::error::RecvError>);

/// One `StreamLogits` call.
struct StreamTask {
    service: TeacherService,
    inbound: Streaming<v1::LogitsRequest>,
    out: mpsc::Sender<Result<v1::LogitsResponse, Status>>,
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
    async fn run(mut self, peer: String) {
        tracing::debug!(%peer, "stream opened");
        let end = self.serve().await;
        let (how, last) = match end {
            End::Finished => ("finished", None),
            End::Draining => ("shutting down", Some(Status::from(Error::ShuttingDown))),
            End::Failed(status) => ("failed", Some(status)),
            End::Gone => ("client gone", None),
        };
        if let Some(status) = last {
            let _ = self.out.send(Err(status)).await;
        }
        tracing::debug!(%peer, answered = self.answered, how, "stream closed");
    }

    async fn serve(&mut self) -> End {
        let mut draining = self.service.draining.clone();
        let mut reading = true;
        let mut end = End::Finished;
        loop {
            if !reading && self.jobs.is_empty() {
                return end;
            }
            let room = self.jobs.len() < self.service.stream_window;
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
                        end = End::Failed(read_failure(status, self.service.max_message_bytes));
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
        let valid = match validate(&req, &self.service.limits) {
            Ok(v) => v,
            Err(e) => return Some(self.error_response(batch_id, &Error::from(e))),
        };
        drop(req);
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs: valid.inputs,
            output: valid.output,
            arrived,
            reply,
        };
        if let Err(e) = self.service.batcher.submit(job) {
            return Some(self.error_response(batch_id, &e));
        }
        self.jobs.spawn(async move { (batch_id, rx.await) });
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
        v1::LogitsResponse {
            batch_id,
            result: Some(v1::logits_response::Result::Error(e.to_wire())),
            timing: Some(timing(BatchTiming::default(), self.depth())),
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
        match encode(output.logits) {
            Ok(result) => v1::LogitsResponse {
                batch_id,
                result: Some(result),
                timing: Some(timing(output.timing, self.depth())),
            },
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
