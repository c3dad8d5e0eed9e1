//! The inference engine: one named OS thread owns the model and runs merged batches.
//!
//! The thread sets `tch::no_grad_guard` and the intra-op thread count itself (grad mode is
//! thread-local), builds the model through a factory (so the model's tensors never leave it),
//! then takes [`MergedBatch`]es from a capacity-1 channel fed by the [`crate::batcher`]. For each
//! batch it drops requests whose stream has gone away, concatenates the rest, runs one forward
//! pass, splits the logits back, shapes each part as its request asked (dtype, top-k), and answers
//! every request on its `oneshot`. Nothing here runs on the tokio runtime, and nothing panics: tch
//! is called through its fallible `f_*` methods. No non-finite value leaves the engine: a request
//! whose logits hold NaN or infinities, or would overflow its requested dtype (F16 tops out at
//! 65504), gets an [`EngineError`] instead of logits.
//!
//! Shutdown: [`EngineThread::stop_and_join`] makes the thread skip whatever is still queued and
//! waits for it to leave its current forward pass, so libtorch is never torn down (at process
//! exit) under a running forward pass. The engine knows nothing of gRPC.

use crate::metrics::ServerMetrics;
use crate::model::{ForwardError, LoadError, ModelDescription, TeacherModel};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::{Kind, Tensor};
use tokio::sync::{mpsc, oneshot};

/// How a request wants its logits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct OutputSpec {
    /// Kind of the logits (and top-k values): `Float`, `Half` or `BFloat16`.
    pub kind: Kind,
    /// `0`: dense logits; `k > 0`: the top k of each row (k ≤ num_logits, checked upstream).
    pub top_k: i64,
    /// Softmax temperature T (finite, > 0; checked upstream) of the sparse tail's log-sum-exp.
    pub temperature: f32,
}

impl Default for OutputSpec {
    fn default() -> Self {
        OutputSpec {
            kind: Kind::Float,
            top_k: 0,
            temperature: 1.0,
        }
    }
}

/// The logits of one request, on the CPU, ready to encode.
#[derive(Debug)]
pub(crate) enum Logits {
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
        /// `f32 [batch]`: log-sum-exp of `z / T` over the entries *not* in the top k (from the
        /// full f32 row), `-inf` when k = num_logits. The row's log-sum-exp at T is then
        /// `logaddexp(logsumexp(values / T), tail_logsumexp)`.
        tail_logsumexp: Tensor,
    },
}

impl Logits {
    /// The same logits on the CPU (the engine shapes them on the model's device first, so only
    /// the reduced form crosses to the host).
    ///
    /// # Errors
    /// [`EngineError::Torch`] if a copy fails.
    pub(crate) fn into_cpu(self) -> Result<Logits, EngineError> {
        let cpu = |t: Tensor| t.f_to_device(tch::Device::Cpu);
        Ok(match self {
            Logits::Dense(t) => Logits::Dense(cpu(t)?),
            Logits::Sparse {
                indices,
                values,
                logsumexp,
                tail_logsumexp,
            } => Logits::Sparse {
                indices: cpu(indices)?,
                values: cpu(values)?,
                logsumexp: cpu(logsumexp)?,
                tail_logsumexp: cpu(tail_logsumexp)?,
            },
        })
    }

    /// Samples (rows) in these logits.
    pub(crate) fn samples(&self) -> u64 {
        let t = match self {
            Logits::Dense(t) => t,
            Logits::Sparse { values, .. } => values,
        };
        t.size().first().map_or(0, |&n| n.max(0) as u64)
    }
}

/// Where the time of one request went, and what it was merged with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct BatchTiming {
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
pub(crate) struct JobOutput {
    /// The request's logits; `None` when it asked for its gathered log-probabilities alone.
    pub logits: Option<Logits>,
    /// `f32`, CPU, the shape of the request's `gather_ids`: the log-probabilities at T of those
    /// ids ([`gather_log_probs`]); `None` when it asked for none.
    pub gathered: Option<Tensor>,
    /// The named outputs it asked for beside the logits, in its order: CPU, the requested kind,
    /// `[batch, ...]` (per position: `[batch, seq, ...]`, zeros at padded positions).
    pub outputs: Vec<(String, Tensor)>,
    /// Its timing.
    pub timing: BatchTiming,
}

/// What a job's submitter receives.
pub(crate) type JobResult = Result<JobOutput, EngineError>;

/// One request's inputs on their way to the model.
#[derive(Debug)]
pub(crate) struct Job {
    /// Inputs `[batch, ...input_shape]` on the CPU, validated (a sequence model: `i64 [batch,
    /// seq]` token ids).
    pub inputs: Tensor,
    /// A sequence model's attention mask, `i64 [batch, seq]` (1 = real token); `None`: all real.
    pub mask: Option<Tensor>,
    /// Whether this is a sequence model's job: it merges with sequences of other lengths, padded
    /// on the right to the longest (padding never changes a real position's logits).
    pub sequence: bool,
    /// How the logits are wanted.
    pub output: OutputSpec,
    /// Named outputs wanted beside the logits (validated against the model's outputs).
    pub outputs: Vec<String>,
    /// `i64 [batch, m]` or `[batch, seq, m]` (validated: ids in `0..num_logits`): the ids whose
    /// log-probabilities at the output's temperature to return.
    pub gather: Option<Tensor>,
    /// Return the gathered log-probabilities alone, no logits.
    pub gathered_only: bool,
    /// When the request arrived at the server.
    pub arrived: Instant,
    /// Where the answer goes; closed when the stream has gone away (the job is then dropped).
    pub reply: oneshot::Sender<JobResult>,
    /// The request's `batch` span: the forward pass that runs it `follows_from` it.
    pub span: tracing::Span,
}

impl Job {
    /// Samples in this job (the inputs' first dimension).
    pub(crate) fn samples(&self) -> usize {
        self.inputs.size().first().copied().unwrap_or(0).max(0) as usize
    }
}

/// Requests merged into one forward pass (same per-sample shape and kind; sequences of any
/// length).
#[derive(Debug)]
pub(crate) struct MergedBatch {
    /// The requests, in queue order.
    pub jobs: Vec<Job>,
}

/// A failure of the model or of libtorch while computing a merged batch. Cloneable: one failed
/// forward pass answers every request merged into it. The model's own [`ForwardError`]s become
/// the variants of the same name and message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// A libtorch error (message as reported by libtorch), in the model or in the engine's own
    /// tensor work (concatenation, split, top-k, casts).
    #[error("libtorch: {0}")]
    Torch(String),
    /// The model returned logits of an unexpected shape.
    #[error("model output: expected shape {expected:?}, got {got:?}")]
    OutputShape {
        /// `[batch, num_logits]`, or `[batch, seq, num_logits]` for a sequence model.
        expected: Vec<i64>,
        /// The shape returned.
        got: Vec<i64>,
    },
    /// The logits do not fit the requested output dtype (F16 holds magnitudes up to 65504):
    /// sending them would turn them into infinities. The batch is refused, not clamped.
    #[error(
        "logits: {count} value(s) outside the {dtype} range (largest magnitude {max:e}, {dtype} holds up to {limit}): request output_dtype BF16 or F32 instead"
    )]
    OutOfRange {
        /// The requested output dtype (wire name, e.g. `F16`).
        dtype: &'static str,
        /// Values that would not be finite in it.
        count: i64,
        /// Largest magnitude among the model's logits.
        max: f64,
        /// Largest finite magnitude of `dtype`, as written in the message (`65504`).
        limit: &'static str,
    },
    /// The model produced NaN or infinite logits (from finite inputs): a broken teacher. The batch
    /// is refused rather than sent.
    #[error(
        "model output: {count} NaN or infinite logit(s) from finite inputs; refusing to send them (check the teacher's weights)"
    )]
    NonFinite {
        /// NaN or infinite values among the request's logits.
        count: i64,
    },
    /// The model panicked (a bug in tch or the model; caught at the engine boundary).
    #[error("model panicked: {0}")]
    Panicked(String),
    /// The engine thread stopped before answering, or the model gave up its forward pass at
    /// shutdown.
    #[error("the inference engine stopped")]
    Stopped,
}

impl From<ForwardError> for EngineError {
    fn from(e: ForwardError) -> Self {
        match e {
            ForwardError::Torch(message) => EngineError::Torch(message),
            ForwardError::Panicked(message) => EngineError::Panicked(message),
            ForwardError::Stopped => EngineError::Stopped,
        }
    }
}

impl From<tch::TchError> for EngineError {
    fn from(e: tch::TchError) -> Self {
        EngineError::Torch(distill_models::torch_message(&e))
    }
}

/// Why [`Engine::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The model factory failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The OS refused to spawn the engine thread.
    #[error("spawning the engine thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The engine thread ended (panicked) before reporting the model loaded.
    #[error("the engine thread died while loading the model")]
    Died,
}

/// Settings of the engine thread.
#[derive(Debug, Clone, Default)]
pub(crate) struct EngineSettings {
    /// libtorch intra-op threads (`None`: libtorch's default).
    pub threads: Option<i32>,
    /// Where forward passes are counted (batch size, compute and queue time).
    pub metrics: Option<ServerMetrics>,
}

/// Handle to the running engine thread.
#[derive(Debug)]
pub(crate) struct Engine {
    /// Capacity-1 channel into the engine: the batcher reserves its slot before cutting a batch.
    pub tx: mpsc::Sender<MergedBatch>,
    /// What the model is.
    pub info: ModelDescription,
    thread: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl Engine {
    /// Starts the engine thread, builds the model there with `factory`, and returns once it is
    /// loaded. The thread exits when every sender of [`Engine::tx`] is dropped and the channel is
    /// drained.
    ///
    /// # Errors
    /// [`StartError::Load`] with whatever `factory` returns, [`StartError::Spawn`] if the thread
    /// cannot be spawned, [`StartError::Died`] if it panics while loading.
    pub(crate) async fn start<M, F>(
        factory: F,
        settings: EngineSettings,
    ) -> Result<Engine, StartError>
    where
        M: TeacherModel + ?Sized + 'static,
        F: FnOnce() -> Result<Box<M>, LoadError> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<MergedBatch>(1);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<ModelDescription, LoadError>>();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("teacher-engine".into())
            .spawn(move || {
                distill_models::threads::compute_thread(
                    settings.threads.map(|n| usize::try_from(n).unwrap_or(1)),
                );
                let _no_grad = tch::no_grad_guard();
                let model = match factory() {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let info = model.info();
                let layout = Layout::of(&info);
                if ready_tx.send(Ok(info)).is_err() {
                    return;
                }
                while let Some(batch) = rx.blocking_recv() {
                    if stopped.load(Ordering::Acquire) {
                        // Dropping the jobs closes their replies: their streams see the engine
                        // stopped.
                        tracing::debug!(
                            requests = batch.jobs.len(),
                            "engine stopped: batch dropped"
                        );
                        continue;
                    }
                    run_batch(model.as_ref(), &layout, batch, settings.metrics.as_ref());
                }
                tracing::debug!("engine thread exiting");
            })
            .map_err(StartError::Spawn)?;
        let info = ready_rx.await.map_err(|_| StartError::Died)??;
        Ok(Engine {
            tx,
            info,
            thread,
            stop,
        })
    }

    /// Splits the handle into the batch sender and a handle for stopping and joining the thread.
    pub(crate) fn into_parts(self) -> (mpsc::Sender<MergedBatch>, ModelDescription, EngineThread) {
        let thread = EngineThread {
            handle: self.thread,
            stop: self.stop,
        };
        (self.tx, self.info, thread)
    }
}

/// The engine's OS thread.
#[derive(Debug)]
pub(crate) struct EngineThread {
    handle: std::thread::JoinHandle<()>,
    stop: Arc<AtomicBool>,
}

impl EngineThread {
    /// Waits (without blocking the runtime) for the thread to answer everything sent to it and
    /// exit; call after every sender of [`Engine::tx`] is dropped.
    pub(crate) async fn join(self) {
        let _ = tokio::task::spawn_blocking(move || self.handle.join()).await;
    }

    /// Tells the thread to run no further batch, then waits (without blocking the runtime) until
    /// it has left its current forward pass (if any) and exited; call after every sender of
    /// [`Engine::tx`] is dropped, or the thread waits for more batches. A batch still queued is
    /// dropped unanswered (its requests see [`EngineError::Stopped`]).
    pub(crate) async fn stop_and_join(self) {
        self.stop.store(true, Ordering::Release);
        self.join().await;
    }
}

fn micros(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// What the engine needs to know of the model's outputs.
#[derive(Debug, Clone)]
struct Layout {
    /// Logits per sample (per position).
    num_logits: i64,
    /// Name of the logits output.
    logits: String,
    /// Names of a sequence model's per-position outputs (cut back and masked like the logits).
    per_position: Vec<String>,
}

impl Layout {
    fn of(info: &ModelDescription) -> Layout {
        Layout {
            num_logits: info.num_logits,
            logits: info.logits_output.clone(),
            per_position: info
                .outputs
                .iter()
                .filter(|o| o.per_position())
                .map(|o| o.name.clone())
                .collect(),
        }
    }

    /// The logits and the outputs `wanted` (in that order) among a forward pass's `all`. A
    /// model that returns a single output returns its logits.
    fn pick(
        &self,
        all: Vec<(String, Tensor)>,
        wanted: &[String],
    ) -> Result<(Tensor, Vec<Tensor>), EngineError> {
        let find = |name: &str| {
            all.iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .ok_or_else(|| {
                    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
                    EngineError::Torch(format!(
                        "the model returned no output {name}; it returned {names:?}"
                    ))
                })
        };
        let logits = match all.as_slice() {
            [(_, only)] => only.shallow_clone(),
            _ => find(&self.logits)?,
        };
        let extras = wanted
            .iter()
            .map(|n| find(n))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((logits, extras))
    }
}

/// One request's share of a forward pass: its logits and the outputs it asked for.
struct Part {
    logits: Tensor,
    outputs: Vec<Tensor>,
}

/// Runs one merged batch and answers each of its requests.
fn run_batch(
    model: &(impl TeacherModel + ?Sized),
    layout: &Layout,
    batch: MergedBatch,
    metrics: Option<&ServerMetrics>,
) {
    let mut jobs = batch.jobs;
    jobs.retain(|j| !j.reply.is_closed());
    if jobs.is_empty() {
        return;
    }
    let start = Instant::now();
    let sizes: Vec<i64> = jobs.iter().map(|j| j.samples() as i64).collect();
    let total: i64 = sizes.iter().sum();
    let span = tracing::info_span!(
        "forward_pass",
        merged_batch_size = total,
        merged_requests = jobs.len()
    );
    for job in &jobs {
        span.follows_from(&job.span);
    }
    let _entered = span.enter();
    let result = forward_split(model, layout, &jobs, &sizes, total);
    let compute = start.elapsed();
    let compute_us = micros(compute);
    if let Some(m) = metrics {
        m.forward_pass(total, compute);
        for job in &jobs {
            m.queued(start.saturating_duration_since(job.arrived));
        }
    }
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
                let out = job_logits(&part.logits, &job).and_then(|(logits, gathered)| {
                    let outputs = job
                        .outputs
                        .iter()
                        .zip(&part.outputs)
                        .map(|(name, t)| Ok((name.clone(), shape_extra(name, t, job.output.kind)?)))
                        .collect::<Result<Vec<_>, EngineError>>()?;
                    Ok(JobOutput {
                        logits,
                        gathered,
                        outputs,
                        timing,
                    })
                });
                match &out {
                    Err(e @ EngineError::NonFinite { .. }) => {
                        tracing::warn!(error = %e, "request refused");
                    }
                    Err(e) => tracing::debug!(error = %e, "request refused"),
                    Ok(_) => {}
                }
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

/// The union of the outputs the jobs want, in first-asked order.
fn wanted_outputs(jobs: &[Job]) -> Vec<String> {
    let mut wanted: Vec<String> = Vec::new();
    for name in jobs.iter().flat_map(|j| &j.outputs) {
        if !wanted.contains(name) {
            wanted.push(name.clone());
        }
    }
    wanted
}

/// Each job's [`Part`]: its rows of the logits (`logits[j]`) and of the outputs it asked for,
/// in its order (`extras[i][j]`: job `j`'s rows of `wanted[i]`).
///
/// # Errors
/// [`EngineError::Torch`] if a split gave fewer parts than jobs (never, when the sizes add up).
fn job_parts(
    jobs: &[Job],
    logits: Vec<Tensor>,
    wanted: &[String],
    extras: &[Vec<Tensor>],
) -> Result<Vec<Part>, EngineError> {
    let missing = || EngineError::Torch("a split output has fewer parts than requests".into());
    let mut parts = Vec::with_capacity(jobs.len());
    for (j, (job, logits)) in jobs.iter().zip(logits).enumerate() {
        let outputs = job
            .outputs
            .iter()
            .map(|n| {
                wanted
                    .iter()
                    .position(|w| w == n)
                    .and_then(|i| extras.get(i)?.get(j))
                    .map(Tensor::shallow_clone)
                    .ok_or_else(missing)
            })
            .collect::<Result<Vec<_>, _>>()?;
        parts.push(Part { logits, outputs });
    }
    Ok(parts)
}

fn forward_split(
    model: &(impl TeacherModel + ?Sized),
    layout: &Layout,
    jobs: &[Job],
    sizes: &[i64],
    total: i64,
) -> Result<Vec<Part>, EngineError> {
    if jobs.first().is_some_and(|j| j.sequence) {
        return forward_sequences(model, layout, jobs, sizes, total);
    }
    let wanted = wanted_outputs(jobs);
    let inputs: Vec<&Tensor> = jobs.iter().map(|j| &j.inputs).collect();
    let all = model.forward_all(&cat_rows(&inputs)?, None)?;
    let (y, extras) = layout.pick(all, &wanted)?;
    let got = y.size();
    if got != [total, layout.num_logits] {
        return Err(EngineError::OutputShape {
            expected: vec![total, layout.num_logits],
            got,
        });
    }
    let extras = extras
        .into_iter()
        .map(|t| {
            check_batch(&t, total)?;
            split_rows(t, sizes)
        })
        .collect::<Result<Vec<_>, _>>()?;
    job_parts(jobs, split_rows(y, sizes)?, &wanted, &extras)
}

/// Fails unless `t`'s first dimension is the merged batch's `total` samples.
fn check_batch(t: &Tensor, total: i64) -> Result<(), EngineError> {
    let got = t.size();
    if got.first() == Some(&total) {
        Ok(())
    } else {
        let mut expected = got.clone();
        if let Some(d) = expected.first_mut() {
            *d = total;
        }
        Err(EngineError::OutputShape { expected, got })
    }
}

/// The parts concatenated along the batch dimension; a single part is shared, not copied.
fn cat_rows(parts: &[&Tensor]) -> Result<Tensor, tch::TchError> {
    match parts {
        [one] => Ok(one.shallow_clone()),
        _ => Tensor::f_cat(parts, 0),
    }
}

/// `y`'s rows cut back into parts of `sizes` rows (a view; `y` itself for a single part).
fn split_rows(y: Tensor, sizes: &[i64]) -> Result<Vec<Tensor>, EngineError> {
    if sizes.len() == 1 {
        Ok(vec![y])
    } else {
        Ok(y.f_split_with_sizes(sizes, 0)?)
    }
}

/// [`forward_split`] for a sequence model: the jobs' token ids (`i64 [b_j, s_j]`) are padded on
/// the right to the longest `s_max` (id 0, mask 0) and run as one `[total, s_max]` batch with
/// their attention masks; each job gets back `[b_j, s_j, V]`, with the positions its own mask
/// marks as padding set to 0 (their values are unspecified by the contract, and whatever the
/// model put there, NaN included, must not reach the client or the output checks). A batch whose
/// sequences are all real and of one length runs without a mask.
fn forward_sequences(
    model: &(impl TeacherModel + ?Sized),
    layout: &Layout,
    jobs: &[Job],
    sizes: &[i64],
    total: i64,
) -> Result<Vec<Part>, EngineError> {
    let wanted = wanted_outputs(jobs);
    let lens: Vec<i64> = jobs
        .iter()
        .map(|j| j.inputs.size().get(1).copied().unwrap_or(0))
        .collect();
    let s_max = lens.iter().copied().max().unwrap_or(0);
    let masked = jobs.iter().any(|j| j.mask.is_some()) || lens.iter().any(|&l| l != s_max);
    let pad = |t: &Tensor, len: i64| -> Result<Tensor, tch::TchError> {
        if len == s_max {
            Ok(t.shallow_clone())
        } else {
            t.f_constant_pad_nd([0, s_max - len])
        }
    };
    let mut inputs = Vec::with_capacity(jobs.len());
    let mut masks = Vec::with_capacity(jobs.len());
    for (job, &len) in jobs.iter().zip(&lens) {
        inputs.push(pad(&job.inputs, len)?);
        if masked {
            let m = match &job.mask {
                Some(m) => m.shallow_clone(),
                None => job.inputs.f_ones_like()?.f_to_kind(Kind::Int64)?,
            };
            masks.push(pad(&m, len)?);
        }
    }
    let x = cat_rows(&inputs.iter().collect::<Vec<_>>())?;
    let mask = if masked {
        Some(cat_rows(&masks.iter().collect::<Vec<_>>())?)
    } else {
        None
    };
    let all = model.forward_all(&x, mask.as_ref())?;
    let (y, extras) = layout.pick(all, &wanted)?;
    let expected = vec![total, s_max, layout.num_logits];
    if y.size() != expected {
        return Err(EngineError::OutputShape {
            expected,
            got: y.size(),
        });
    }
    // Each job's rows, cut back to its own length and zeroed at its padding (per position).
    let cut = |y: Tensor, per_position: bool| -> Result<Vec<Tensor>, EngineError> {
        let parts = split_rows(y, sizes)?;
        if !per_position {
            return Ok(parts);
        }
        let mut out = Vec::with_capacity(parts.len());
        for ((part, job), &len) in parts.into_iter().zip(jobs).zip(&lens) {
            let part = if len == s_max {
                part
            } else {
                part.f_narrow(1, 0, len)?
            };
            out.push(match &job.mask {
                Some(m) => {
                    // [b, s] -> [b, s, 1, ...] to broadcast over the output's trailing dims.
                    let mut padding = m.f_eq(0)?;
                    for _ in 2..part.dim() {
                        padding = padding.f_unsqueeze(-1)?;
                    }
                    part.f_masked_fill(&padding.f_to_device(part.device())?, 0.0)?
                }
                None => part,
            });
        }
        Ok(out)
    };
    let mut split_extras = Vec::with_capacity(extras.len());
    for (name, t) in wanted.iter().zip(extras) {
        check_batch(&t, total)?;
        let per_position = layout.per_position.contains(name);
        if per_position && t.size().get(1) != Some(&s_max) {
            return Err(EngineError::OutputShape {
                expected: vec![total, s_max],
                got: t.size(),
            });
        }
        split_extras.push(cut(t, per_position)?);
    }
    job_parts(jobs, cut(y, true)?, &wanted, &split_extras)
}

/// One request's named output `t` (`[batch, ...]`, on the model's device) on the CPU in `kind`.
///
/// # Errors
/// [`EngineError::NonFinite`] / [`EngineError::OutOfRange`] as for the logits (naming no output:
/// the message says which check failed); [`EngineError::Torch`] on a libtorch failure.
fn shape_extra(name: &str, t: &Tensor, kind: Kind) -> Result<Tensor, EngineError> {
    let count = non_finite(t)?;
    if count > 0 {
        tracing::debug!(output = name, count, "non-finite values in a named output");
        return Err(EngineError::NonFinite { count });
    }
    let cast = if t.kind() == kind {
        t.f_contiguous()?
    } else {
        let c = t.f_to_kind(kind)?;
        ensure_fits(t, &c, kind)?;
        c
    };
    // Contiguous already: a copy on the CPU is a no-op, and from a GPU it stays contiguous.
    Ok(cast.f_to_device(tch::Device::Cpu)?)
}

/// Casts (dense) or reduces to top-k (sparse) one request's logits `[batch, num_logits]`.
///
/// # Errors
/// [`EngineError::NonFinite`] if the model's logits hold NaN or infinities;
/// [`EngineError::OutOfRange`] if a value does not fit the requested kind (F16 above 65504);
/// [`EngineError::Torch`] on a libtorch failure.
fn shape_output(logits: &Tensor, spec: OutputSpec) -> Result<Logits, EngineError> {
    let count = non_finite(logits)?;
    if count > 0 {
        return Err(EngineError::NonFinite { count });
    }
    if spec.top_k == 0 {
        let t = if logits.kind() == spec.kind {
            logits.f_contiguous()?
        } else {
            let t = logits.f_to_kind(spec.kind)?;
            ensure_fits(logits, &t, spec.kind)?;
            t
        };
        return Ok(Logits::Dense(t));
    }
    let full = logits.f_to_kind(Kind::Float)?;
    ensure_fits(logits, &full, Kind::Float)?;
    let (values, indices) = full.f_topk(spec.top_k, -1, true, true)?;
    let logsumexp = full.f_logsumexp([-1i64].as_slice(), false)?;
    ensure_fits(&full, &logsumexp, Kind::Float)?;
    let tail_logsumexp = tail_logsumexp(&full, &indices, spec.temperature)?;
    let cast = values.f_to_kind(spec.kind)?;
    ensure_fits(&values, &cast, spec.kind)?;
    Ok(Logits::Sparse {
        indices: indices.f_to_kind(Kind::Int64)?,
        values: cast,
        logsumexp,
        tail_logsumexp,
    })
}

/// A job's answer from its part of the forward pass (`logits`: `[batch, V]` or `[batch, seq,
/// V]` on the model's device): its logits shaped as asked (none with `gathered_only`) and its
/// gathered log-probabilities, both on the CPU.
///
/// # Errors
/// [`EngineError::NonFinite`] for logits that are not all finite, and the errors of
/// [`shape_output`].
fn job_logits(logits: &Tensor, job: &Job) -> Result<(Option<Logits>, Option<Tensor>), EngineError> {
    let shaped = if job.gathered_only {
        let count = non_finite(logits)?;
        if count > 0 {
            return Err(EngineError::NonFinite { count });
        }
        None
    } else {
        Some(shape_output(logits, job.output)?.into_cpu()?)
    };
    let gathered = job
        .gather
        .as_ref()
        .map(|ids| gather_log_probs(logits, ids, job.output.temperature))
        .transpose()?;
    Ok((shaped, gathered))
}

/// `f32`, CPU, the shape of `ids`: `log_softmax(logits / t)` over the last dimension, at `ids`
/// (`i64 [..., m]`, the leading dimensions of `logits` `[..., V]`), computed in f32 from the
/// full rows on their device.
fn gather_log_probs(logits: &Tensor, ids: &Tensor, t: f32) -> Result<Tensor, EngineError> {
    let log_probs = logits
        .f_to_kind(Kind::Float)?
        .f_div_scalar(f64::from(t))?
        .f_log_softmax(-1, Kind::Float)?;
    let ids = ids.f_to_device(log_probs.device())?;
    Ok(log_probs
        .f_gather(-1, &ids, false)?
        .f_to_device(tch::Device::Cpu)?)
}

/// `f32 [batch]`: log-sum-exp of `full / t` (`f32 [batch, V]`) over the positions not in
/// `indices` (`i64 [batch, k]`); `-inf` for a row whose every position is in `indices`.
fn tail_logsumexp(full: &Tensor, indices: &Tensor, t: f32) -> Result<Tensor, EngineError> {
    let scaled = full.f_div_scalar(f64::from(t))?;
    let masked = scaled.f_scatter_value(-1, indices, f64::NEG_INFINITY)?;
    // logsumexp over an all -inf row is -inf (libtorch guards the max subtraction).
    Ok(masked.f_logsumexp([-1i64].as_slice(), false)?)
}

/// Number of NaN or infinite values in `t`. The usual all-finite case costs one pass and no
/// temporary of `t`'s size: the minimum and maximum are both finite exactly when every value is
/// (a NaN makes both NaN, an infinity shows in one of them); only otherwise are they counted.
fn non_finite(t: &Tensor) -> Result<i64, EngineError> {
    if t.numel() == 0 {
        return Ok(0);
    }
    let (min, max) = t.f_aminmax(None, false)?;
    let finite = |x: Tensor| -> Result<bool, EngineError> {
        Ok(x.f_to_kind(Kind::Double)?.f_double_value(&[])?.is_finite())
    };
    if finite(min)? && finite(max)? {
        return Ok(0);
    }
    Ok(t.f_isfinite()?
        .f_logical_not()?
        .f_sum(Kind::Int64)?
        .f_int64_value(&[])?)
}

/// Fails with [`EngineError::OutOfRange`] if `derived` (computed from the finite `source`, e.g.
/// its cast to `kind`) holds values that are not finite.
fn ensure_fits(source: &Tensor, derived: &Tensor, kind: Kind) -> Result<(), EngineError> {
    let count = non_finite(derived)?;
    if count == 0 {
        return Ok(());
    }
    let max = source
        .f_abs()?
        .f_max()?
        .f_to_kind(Kind::Double)?
        .f_double_value(&[])?;
    let (dtype, limit) = match kind {
        Kind::Half => ("F16", "65504"),
        Kind::BFloat16 => ("BF16", "3.3895e38"),
        _ => ("F32", "3.4028e38"),
    };
    Err(EngineError::OutOfRange {
        dtype,
        count,
        max,
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelDescription, OutputDescription};

    /// A sequence "model" whose logits `[b, s, 3]` and per-position output `hidden` `[b, s, 2]`
    /// repeat each token id (hidden: id + 100), so that every cut and mask can be read off.
    struct SeqFake;

    impl TeacherModel for SeqFake {
        fn forward(&self, _x: &Tensor) -> Result<Tensor, ForwardError> {
            Err(ForwardError::Torch("forward_all only".into()))
        }

        fn forward_all(
            &self,
            x: &Tensor,
            _mask: Option<&Tensor>,
        ) -> Result<Vec<(String, Tensor)>, ForwardError> {
            let (b, s) = (x.size()[0], x.size()[1]);
            let ids = x.f_to_kind(Kind::Float)?.f_unsqueeze(-1)?;
            Ok(vec![
                ("0".into(), ids.f_expand([b, s, 3], false)?.f_contiguous()?),
                (
                    "hidden".into(),
                    (ids + 100.0).f_expand([b, s, 2], false)?.f_contiguous()?,
                ),
            ])
        }

        fn info(&self) -> ModelDescription {
            unreachable!("not used by forward_split")
        }
    }

    fn seq_job(ids: &[i64], mask: Option<&[i64]>, outputs: &[&str]) -> Job {
        let row = |v: &[i64]| Tensor::from_slice(v).reshape([1, v.len() as i64]);
        Job {
            inputs: row(ids),
            mask: mask.map(row),
            sequence: true,
            output: OutputSpec::default(),
            gather: None,
            gathered_only: false,
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            arrived: Instant::now(),
            reply: oneshot::channel().0,
            span: tracing::Span::none(),
        }
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(t.flatten(0, -1)).unwrap()
    }

    #[test]
    fn merged_sequences_get_their_own_outputs_cut_and_masked() {
        let layout = Layout::of(&ModelDescription {
            name: "fake".into(),
            version: "0".into(),
            fingerprint: String::new(),
            input_shape: vec![4],
            input_dtype: Kind::Int64,
            num_logits: 3,
            device: "cpu".into(),
            precision: crate::model::Precision::F32,
            sequence: None,
            outputs: vec![
                OutputDescription {
                    name: "0".into(),
                    shape: vec![-1, 3],
                    kind: Kind::Float,
                },
                OutputDescription {
                    name: "hidden".into(),
                    shape: vec![-1, 2],
                    kind: Kind::Float,
                },
            ],
            logits_output: "0".into(),
        });
        let jobs = [
            seq_job(&[1, 2], None, &["hidden"]),
            seq_job(&[5, 6, 7, 8], Some(&[1, 1, 1, 0]), &[]),
            seq_job(&[9, 9, 9], Some(&[1, 1, 0]), &["hidden", "hidden"]),
        ];
        let parts = forward_split(&SeqFake, &layout, &jobs, &[1, 1, 1], 3).unwrap();
        assert_eq!(parts[0].logits.size(), vec![1, 2, 3]);
        assert_eq!(values(&parts[0].outputs[0]), [101.0, 101.0, 102.0, 102.0]);
        assert!(parts[1].outputs.is_empty());
        assert_eq!(
            values(&parts[1].logits),
            [5.0, 5.0, 5.0, 6.0, 6.0, 6.0, 7.0, 7.0, 7.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(parts[2].outputs.len(), 2);
        for out in &parts[2].outputs {
            assert_eq!(values(out), [109.0, 109.0, 109.0, 109.0, 0.0, 0.0]);
        }
        // Shaped for the wire: on the CPU, in the requested kind.
        let bf = shape_extra("hidden", &parts[0].outputs[0], Kind::BFloat16).unwrap();
        assert_eq!(bf.kind(), Kind::BFloat16);
        assert_eq!(
            values(&bf.to_kind(Kind::Float)),
            [101.0, 101.0, 102.0, 102.0]
        );
    }

    fn logits(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).reshape([1, values.len() as i64])
    }

    fn spec(kind: Kind, top_k: i64) -> OutputSpec {
        OutputSpec {
            kind,
            top_k,
            temperature: 1.0,
        }
    }

    /// log-sum-exp in float64 of `row[j] / t` over the positions `j` not in `top`.
    fn tail64(row: &[f32], top: &[i64], t: f64) -> f64 {
        let rest: Vec<f64> = (0..row.len())
            .filter(|j| !top.contains(&(*j as i64)))
            .map(|j| f64::from(row[j]) / t)
            .collect();
        let m = rest.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + rest.iter().map(|x| (x - m).exp()).sum::<f64>().ln()
    }

    #[test]
    fn the_tail_is_the_logsumexp_at_t_of_the_entries_not_sent() {
        let rows: [[f32; 6]; 2] = [
            [1.5, -2.0, 7.25, 0.5, 3.0, -8.0],
            [40.0, 39.5, -3.0, 12.0, 0.0, 38.0],
        ];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let x = Tensor::from_slice(&flat).reshape([2, 6]);
        for t in [1.0f32, 2.5] {
            for kind in [Kind::Float, Kind::BFloat16] {
                let out = shape_output(
                    &x,
                    OutputSpec {
                        kind,
                        top_k: 2,
                        temperature: t,
                    },
                )
                .unwrap();
                let Logits::Sparse {
                    indices,
                    tail_logsumexp,
                    logsumexp,
                    ..
                } = out
                else {
                    panic!("expected sparse logits");
                };
                assert_eq!(tail_logsumexp.size(), vec![2]);
                assert_eq!(tail_logsumexp.kind(), Kind::Float);
                for (b, row) in rows.iter().enumerate() {
                    let top: Vec<i64> = (0..2)
                        .map(|j| indices.int64_value(&[b as i64, j]))
                        .collect();
                    let want = tail64(row, &top, f64::from(t));
                    let got = tail_logsumexp.double_value(&[b as i64]);
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                        "T {t} row {b}: tail {got}, float64 {want}"
                    );
                    // logsumexp keeps its meaning: the raw row at T = 1.
                    let lse = tail64(row, &[], 1.0);
                    let got = logsumexp.double_value(&[b as i64]);
                    assert!((got - lse).abs() <= 1e-5 * lse.abs(), "{got} vs {lse}");
                }
            }
        }
        let all = shape_output(
            &x,
            OutputSpec {
                kind: Kind::Float,
                top_k: 6,
                temperature: 2.0,
            },
        )
        .unwrap();
        let Logits::Sparse { tail_logsumexp, .. } = all else {
            panic!("expected sparse logits");
        };
        for b in 0..2 {
            assert_eq!(tail_logsumexp.double_value(&[b]), f64::NEG_INFINITY);
        }
    }

    #[test]
    fn values_beyond_f16_are_refused_not_sent_as_infinity() {
        let big = logits(&[1.0, 70000.0, 3.0]);
        for top_k in [0, 2] {
            match shape_output(&big, spec(Kind::Half, top_k)) {
                Err(EngineError::OutOfRange {
                    dtype, count, max, ..
                }) => {
                    assert_eq!((dtype, count, max), ("F16", 1, 70000.0));
                }
                other => panic!("top_k {top_k}: expected OutOfRange, got {other:?}"),
            }
        }
        // Only what is sent counts: the top 2 of this row fit f16 although the row does not.
        assert!(shape_output(&logits(&[1.0, -70000.0, 3.0]), spec(Kind::Half, 2)).is_ok());
        assert!(shape_output(&big, spec(Kind::BFloat16, 0)).is_ok());
        assert!(shape_output(&big, spec(Kind::Float, 3)).is_ok());
        assert!(shape_output(&logits(&[65504.0, -65504.0]), spec(Kind::Half, 0)).is_ok());
    }

    #[test]
    fn non_finite_logits_are_refused_whatever_the_dtype() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for (kind, top_k) in [(Kind::Float, 0), (Kind::Half, 0), (Kind::Float, 1)] {
                assert_eq!(
                    shape_output(&logits(&[0.0, bad, 1.0]), spec(kind, top_k)).unwrap_err(),
                    EngineError::NonFinite { count: 1 }
                );
            }
        }
    }
}
