//! The inference engine: one named OS thread owns the model and runs merged batches.
//!
//! The thread sets `tch::no_grad_guard` and the intra-op thread count itself (grad mode is
//! thread-local), builds the model through a factory (so the model's tensors never leave it),
//! then takes [`MergedBatch`]es from a capacity-1 channel fed by the [`crate::batcher`]. For each
//! batch it drops requests whose stream has gone away, concatenates the rest, runs one forward
//! pass, splits the logits back, shapes each part as its request asked (dtype, top-k), and answers
//! every request on its `oneshot`. Nothing here runs on the tokio runtime, and nothing panics: tch
//! is called through its fallible `f_*` methods.

use crate::error::{EngineError, Error};
use crate::model::{ModelDescription, TeacherModel};
use std::time::Instant;
use tch::{Kind, Tensor};
use tokio::sync::{mpsc, oneshot};

/// How a request wants its logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSpec {
    /// Kind of the logits (and top-k values): `Float`, `Half` or `BFloat16`.
    pub kind: Kind,
    /// `0`: dense logits; `k > 0`: the top k of each row (k ≤ num_logits, checked upstream).
    pub top_k: i64,
}

impl Default for OutputSpec {
    fn default() -> Self {
        OutputSpec {
            kind: Kind::Float,
            top_k: 0,
        }
    }
}

/// The logits of one request, on the CPU, ready to encode.
#[derive(Debug)]
pub enum Logits {
    /// `[batch, num_logits]` of the requested kind.
    Dense(Tensor),
    /// Top-k of each row.
    Sparse {
        /// `i64 [batch, k]`: positions of the k largest logits, largest first.
        indices: Tensor,
        /// `[batch, k]` of the requested kind: the logits at `indices`.
        values: Tensor,
        /// `f32 [batch]`: log-sum-exp of each full row (computed from the model's logits before
        /// any cast), so `exp(values - logsumexp)` are the exact top-k probabilities.
        logsumexp: Tensor,
    },
}

/// Where the time of one request went, and what it was merged with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchTiming {
    /// From arrival at the server to the start of the forward pass, in microseconds.
    pub queue_us: u64,
    /// Duration of the forward pass (concatenation, forward, split), in microseconds.
    pub compute_us: u64,
    /// Samples in that forward pass.
    pub merged_batch_size: u32,
    /// Requests merged into that forward pass.
    pub merged_requests: u32,
}

/// The answer to one [`Job`].
#[derive(Debug)]
pub struct JobOutput {
    /// The request's logits.
    pub logits: Logits,
    /// Its timing.
    pub timing: BatchTiming,
}

/// What a job's submitter receives.
pub type JobResult = Result<JobOutput, EngineError>;

/// One request's inputs on their way to the model.
#[derive(Debug)]
pub struct Job {
    /// Inputs `[batch, ...input_shape]` on the CPU, validated.
    pub inputs: Tensor,
    /// How the logits are wanted.
    pub output: OutputSpec,
    /// When the request arrived at the server.
    pub arrived: Instant,
    /// Where the answer goes; closed when the stream has gone away (the job is then dropped).
    pub reply: oneshot::Sender<JobResult>,
}

impl Job {
    /// Samples in this job (the inputs' first dimension).
    pub fn samples(&self) -> usize {
        self.inputs.size().first().copied().unwrap_or(0).max(0) as usize
    }
}

/// Requests merged into one forward pass (same per-sample shape and kind).
#[derive(Debug)]
pub struct MergedBatch {
    /// The requests, in queue order.
    pub jobs: Vec<Job>,
}

/// Settings of the engine thread.
#[derive(Debug, Clone, Default)]
pub struct EngineSettings {
    /// libtorch intra-op threads (`None`: libtorch's default).
    pub threads: Option<i32>,
}

/// Handle to the running engine thread.
#[derive(Debug)]
pub struct Engine {
    /// Capacity-1 channel into the engine: the batcher reserves its slot before cutting a batch.
    pub tx: mpsc::Sender<MergedBatch>,
    /// What the model is.
    pub info: ModelDescription,
    thread: std::thread::JoinHandle<()>,
}

impl Engine {
    /// Starts the engine thread, builds the model there with `factory`, and returns once it is
    /// loaded. The thread exits when every sender of [`Engine::tx`] is dropped and the channel is
    /// drained.
    ///
    /// # Errors
    /// Whatever `factory` returns, or [`Error::Io`] if the thread cannot be spawned.
    pub async fn start<M, F>(factory: F, settings: EngineSettings) -> Result<Engine, Error>
    where
        M: TeacherModel + ?Sized + 'static,
        F: FnOnce() -> Result<Box<M>, Error> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<MergedBatch>(1);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<ModelDescription, Error>>();
        let thread = std::thread::Builder::new()
            .name("teacher-engine".into())
            .spawn(move || {
                if let Some(n) = settings.threads {
                    tch::set_num_threads(n);
                }
                let _no_grad = tch::no_grad_guard();
                let model = match factory() {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let info = model.info();
                let num_logits = info.num_logits;
                if ready_tx.send(Ok(info)).is_err() {
                    return;
                }
                while let Some(batch) = rx.blocking_recv() {
                    run_batch(model.as_ref(), num_logits, batch);
                }
                tracing::debug!("engine thread exiting");
            })
            .map_err(|source| Error::Io {
                context: "spawning the engine thread".into(),
                source,
            })?;
        let info = ready_rx
            .await
            .map_err(|_| Error::Load("the engine thread died while loading the model".into()))??;
        Ok(Engine { tx, info, thread })
    }

    /// Splits the handle into the batch sender and a join handle for the thread.
    pub fn into_parts(self) -> (mpsc::Sender<MergedBatch>, ModelDescription, EngineThread) {
        (self.tx, self.info, EngineThread(self.thread))
    }
}

/// The engine's OS thread; join it after every sender is dropped.
#[derive(Debug)]
pub struct EngineThread(std::thread::JoinHandle<()>);

impl EngineThread {
    /// Waits (without blocking the runtime) for the thread to finish its last batch and exit.
    pub async fn join(self) {
        let _ = tokio::task::spawn_blocking(move || self.0.join()).await;
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Runs one merged batch and answers each of its requests.
fn run_batch(model: &(impl TeacherModel + ?Sized), num_logits: i64, batch: MergedBatch) {
    let mut jobs = batch.jobs;
    jobs.retain(|j| !j.reply.is_closed());
    if jobs.is_empty() {
        return;
    }
    let start = Instant::now();
    let sizes: Vec<i64> = jobs.iter().map(|j| j.samples() as i64).collect();
    let total: i64 = sizes.iter().sum();
    let result = forward_split(model, num_logits, &jobs, &sizes, total);
    let compute_us = micros(start.elapsed());
    tracing::debug!(
        merged_batch_size = total,
        merged_requests = jobs.len(),
        compute_us,
        "forward pass"
    );
    let timing = |j: &Job| BatchTiming {
        queue_us: micros(start.saturating_duration_since(j.arrived)),
        compute_us,
        merged_batch_size: u32::try_from(total).unwrap_or(u32::MAX),
        merged_requests: u32::try_from(jobs.len()).unwrap_or(u32::MAX),
    };
    match result {
        Ok(parts) => {
            let timings: Vec<BatchTiming> = jobs.iter().map(timing).collect();
            for ((job, part), timing) in jobs.into_iter().zip(parts).zip(timings) {
                let out =
                    shape_output(&part, job.output).map(|logits| JobOutput { logits, timing });
                let _ = job.reply.send(out);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, merged_batch_size = total, "forward pass failed");
            for job in jobs {
                let _ = job.reply.send(Err(e.clone()));
            }
        }
    }
}

fn forward_split(
    model: &(impl TeacherModel + ?Sized),
    num_logits: i64,
    jobs: &[Job],
    sizes: &[i64],
    total: i64,
) -> Result<Vec<Tensor>, EngineError> {
    let x = if jobs.len() == 1 {
        jobs[0].inputs.shallow_clone()
    } else {
        let inputs: Vec<&Tensor> = jobs.iter().map(|j| &j.inputs).collect();
        Tensor::f_cat(&inputs, 0)?
    };
    let y = model.forward(&x)?;
    let got = y.size();
    if got != [total, num_logits] {
        return Err(EngineError::OutputShape {
            batch: total,
            num_logits,
            got,
        });
    }
    if jobs.len() == 1 {
        Ok(vec![y])
    } else {
        Ok(y.f_split_with_sizes(sizes, 0)?)
    }
}

/// Casts (dense) or reduces to top-k (sparse) one request's logits `[batch, num_logits]`.
fn shape_output(logits: &Tensor, spec: OutputSpec) -> Result<Logits, EngineError> {
    if spec.top_k == 0 {
        let t = if logits.kind() == spec.kind {
            logits.f_contiguous()?
        } else {
            logits.f_to_kind(spec.kind)?
        };
        return Ok(Logits::Dense(t));
    }
    let full = logits.f_to_kind(Kind::Float)?;
    let (values, indices) = full.f_topk(spec.top_k, -1, true, true)?;
    let logsumexp = full.f_logsumexp([-1i64].as_slice(), false)?;
    Ok(Logits::Sparse {
        indices: indices.f_to_kind(Kind::Int64)?,
        values: values.f_to_kind(spec.kind)?,
        logsumexp,
    })
}
