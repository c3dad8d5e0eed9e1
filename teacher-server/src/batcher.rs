//! Dynamic batching: a queue actor that merges the requests of all streams into forward passes.
//!
//! Modelled on text-embeddings-inference's queue: the actor collects [`Job`]s from a bounded
//! channel, and only once it holds a reserved slot in the capacity-1 channel to the
//! [`crate::engine`] does it cut a batch, so while the device is busy requests keep accumulating
//! and the next batch grows. After reserving the slot it waits up to `max_batch_delay` (counted
//! from the oldest request's arrival) for the batch to fill, then takes, in arrival order, the
//! requests with the same per-sample shape and kind as the oldest, up to `max_batch_size` samples.
//! Requests whose stream has gone away (their `oneshot` receiver dropped) are discarded before
//! they run. The queue is bounded: [`Batcher::submit`] fails fast with
//! [`SubmitError::Overloaded`] when full.

use crate::config::BatchConfig;
use crate::engine::{Job, MergedBatch};
use distill_telemetry::prometheus::IntGauge;
use std::collections::VecDeque;
use std::time::Duration;
use tch::Kind;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Suggested delay before retrying a request rejected by a full queue.
pub(crate) const RETRY_AFTER: Duration = Duration::from_millis(50);

/// Why [`Batcher::submit`] refused a job.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full.
    #[error(
        "server overloaded: the queue of {capacity} batches is full; retry after {} ms",
        retry_after.as_millis()
    )]
    Overloaded {
        /// `--queue-capacity`.
        capacity: usize,
        /// Suggested delay before retrying ([`RETRY_AFTER`]).
        retry_after: Duration,
    },
    /// The actor has stopped: the server is shutting down.
    #[error("teacher-server is shutting down: send this batch to another replica")]
    ShuttingDown,
}

/// Handle for submitting jobs to the batching actor. Cloneable; the actor ends (flushing what is
/// queued) when every handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Job>,
    capacity: usize,
}

impl Batcher {
    /// Starts the actor on the current tokio runtime. It feeds `engine` (the capacity-1 channel of
    /// [`crate::engine::Engine`]) and stops waiting for batches to fill once `draining` is `true`.
    /// `depth`, if given, tracks the requests waiting (`teacher_queue_depth`).
    pub(crate) fn spawn(
        config: BatchConfig,
        engine: mpsc::Sender<MergedBatch>,
        draining: watch::Receiver<bool>,
        depth: Option<IntGauge>,
    ) -> (Batcher, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let capacity = config.queue_capacity;
        let actor = Actor {
            config,
            rx,
            draining,
            queue: VecDeque::new(),
            open: true,
            depth,
        };
        let handle = tokio::spawn(actor.run(engine));
        (Batcher { tx, capacity }, handle)
    }

    /// Queues a job without waiting.
    ///
    /// # Errors
    /// [`SubmitError::Overloaded`] (with a retry hint) when the queue is full;
    /// [`SubmitError::ShuttingDown`] when the actor has stopped.
    pub(crate) fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded {
                capacity: self.capacity,
                retry_after: RETRY_AFTER,
            },
            mpsc::error::TrySendError::Closed(_) => SubmitError::ShuttingDown,
        })
    }
}

/// Jobs merge only when their inputs agree on kind and per-sample shape; sequences of any
/// length merge (the engine pads them to the longest).
#[derive(Debug, Clone, PartialEq)]
struct Key {
    kind: Kind,
    sample_shape: Vec<i64>,
}

fn key(job: &Job) -> Key {
    let size = job.inputs.size();
    Key {
        kind: job.inputs.kind(),
        sample_shape: if job.sequence {
            Vec::new()
        } else {
            size.get(1..).unwrap_or_default().to_vec()
        },
    }
}

struct Actor {
    config: BatchConfig,
    rx: mpsc::Receiver<Job>,
    draining: watch::Receiver<bool>,
    /// Jobs taken from `rx`, in arrival order.
    queue: VecDeque<Job>,
    /// Whether `rx` can still deliver jobs.
    open: bool,
    /// `teacher_queue_depth`, set whenever a job is taken or a batch is cut.
    depth: Option<IntGauge>,
}

impl Actor {
    async fn run(mut self, engine: mpsc::Sender<MergedBatch>) {
        loop {
            self.prune();
            if self.queue.is_empty() {
                if !self.open {
                    break;
                }
                match self.rx.recv().await {
                    Some(job) => self.queue.push_back(job),
                    None => {
                        self.open = false;
                        continue;
                    }
                }
            }
            // Reserve the engine's slot first; keep collecting while the device is busy.
            let permit = loop {
                tokio::select! {
                    biased;
                    permit = engine.reserve() => break permit,
                    job = self.rx.recv(), if self.can_accept() => self.accept(job),
                }
            };
            let Ok(permit) = permit else {
                tracing::error!("the engine stopped; failing queued batches");
                break;
            };
            self.fill().await;
            self.prune();
            if let Some(batch) = self.cut() {
                permit.send(batch);
            }
            self.report_depth();
        }
    }

    /// Whether to take more jobs from the channel: the local queue is bounded too, so a full
    /// channel really means a full server.
    fn can_accept(&self) -> bool {
        self.open && self.queue.len() < self.config.queue_capacity
    }

    fn accept(&mut self, job: Option<Job>) {
        match job {
            Some(job) => self.queue.push_back(job),
            None => self.open = false,
        }
        self.report_depth();
    }

    /// Sets `teacher_queue_depth` to the requests waiting here and in the channel.
    fn report_depth(&self) {
        if let Some(depth) = &self.depth {
            depth.set((self.queue.len() + self.rx.len()) as i64);
        }
    }

    /// Drops jobs whose stream has gone away.
    fn prune(&mut self) {
        self.queue.retain(|j| !j.reply.is_closed());
    }

    /// Samples queued that could join a batch led by the oldest job.
    fn mergeable_samples(&self) -> usize {
        let Some(front) = self.queue.front() else {
            return 0;
        };
        let k = key(front);
        self.queue
            .iter()
            .filter(|j| !j.reply.is_closed() && key(j) == k)
            .map(Job::samples)
            .sum()
    }

    /// Waits, up to `max_batch_delay` after the oldest job arrived, for the batch to fill.
    async fn fill(&mut self) {
        while self.can_accept() {
            match self.rx.try_recv() {
                Ok(job) => self.queue.push_back(job),
                Err(_) => break,
            }
        }
        let Some(front) = self.queue.front() else {
            return;
        };
        let deadline = Instant::from_std(front.arrived) + self.config.max_batch_delay;
        while self.open
            && !*self.draining.borrow()
            && self.mergeable_samples() < self.config.max_batch_size
        {
            tokio::select! {
                biased;
                job = self.rx.recv(), if self.can_accept() => self.accept(job),
                changed = self.draining.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }

    /// Takes the oldest job and every later one with the same key, in order, while the total
    /// fits `max_batch_size` (the first that does not fit ends the batch, keeping arrival order).
    fn cut(&mut self) -> Option<MergedBatch> {
        let front = self.queue.front()?;
        let k = key(front);
        let max = self.config.max_batch_size;
        let mut total = 0;
        let mut jobs = Vec::new();
        let mut rest = VecDeque::with_capacity(self.queue.len());
        let mut full = false;
        for job in self.queue.drain(..) {
            if full || key(&job) != k {
                rest.push_back(job);
                continue;
            }
            let n = job.samples();
            if total + n > max && !jobs.is_empty() {
                full = true;
                rest.push_back(job);
            } else {
                total += n;
                jobs.push(job);
            }
        }
        self.queue = rest;
        Some(MergedBatch { jobs })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Engine, EngineSettings, JobResult, Logits, OutputSpec};
    use crate::error::Error;
    use crate::model::{ForwardError, ModelDescription, TeacherModel};
    use std::sync::{Arc, Mutex};
    use tch::Tensor;
    use tokio::sync::oneshot;

    /// A fake teacher: logits `[sum of the sample, batch size of the forward pass]`. Records
    /// every forward pass's batch size; optionally blocks each pass until the test releases it.
    struct Fake {
        passes: Arc<Mutex<Vec<i64>>>,
        gate: Option<std::sync::mpsc::Receiver<()>>,
        entered: Option<mpsc::UnboundedSender<i64>>,
    }

    impl TeacherModel for Fake {
        fn forward(&self, x: &Tensor) -> Result<Tensor, ForwardError> {
            let n = x.size()[0];
            self.passes.lock().unwrap().push(n);
            if let Some(e) = &self.entered {
                let _ = e.send(n);
            }
            if let Some(g) = &self.gate {
                let _ = g.recv();
            }
            let sums = x
                .f_flatten(1, -1)?
                .f_sum_dim_intlist(1, false, Kind::Float)?;
            let size = Tensor::f_full([n], n as f64, (Kind::Float, tch::Device::Cpu))?;
            Ok(Tensor::f_stack(&[sums, size], 1)?)
        }
        fn info(&self) -> ModelDescription {
            ModelDescription {
                name: "fake".into(),
                version: "0".into(),
                fingerprint: String::new(),
                input_shape: vec![2],
                input_dtype: Kind::Float,
                num_logits: 2,
                device: "cpu".into(),
                precision: crate::model::Precision::F32,
                sequence: None,
                outputs: Vec::new(),
                logits_output: String::new(),
            }
        }
    }

    struct Rig {
        batcher: Batcher,
        passes: Arc<Mutex<Vec<i64>>>,
        gate: std::sync::mpsc::Sender<()>,
        entered: mpsc::UnboundedReceiver<i64>,
        _drain: watch::Sender<bool>,
    }

    async fn rig(max_batch_size: usize, delay: Duration, gated: bool) -> Rig {
        let passes = Arc::new(Mutex::new(Vec::new()));
        let (gate_tx, gate_rx) = std::sync::mpsc::channel();
        let (entered_tx, entered) = mpsc::unbounded_channel();
        let p = passes.clone();
        let engine = Engine::start(
            move || {
                Ok(Box::new(Fake {
                    passes: p,
                    gate: gated.then_some(gate_rx),
                    entered: Some(entered_tx),
                }))
            },
            EngineSettings::default(),
        )
        .await
        .unwrap();
        let (drain_tx, drain_rx) = watch::channel(false);
        let config = BatchConfig {
            max_batch_size,
            max_batch_delay: delay,
            queue_capacity: 16,
        };
        let (batcher, _) = Batcher::spawn(config, engine.tx.clone(), drain_rx, None);
        Rig {
            batcher,
            passes,
            gate: gate_tx,
            entered,
            _drain: drain_tx,
        }
    }

    /// A job of `n` samples of per-sample shape `[width]`, every value `v`.
    fn job(n: i64, width: i64, v: f64) -> (Job, oneshot::Receiver<JobResult>) {
        let (tx, rx) = oneshot::channel();
        let inputs = Tensor::full([n, width], v, (Kind::Float, tch::Device::Cpu));
        let job = Job {
            inputs,
            mask: None,
            sequence: false,
            output: OutputSpec::default(),
            outputs: Vec::new(),
            arrived: std::time::Instant::now(),
            reply: tx,
            span: tracing::Span::none(),
        };
        (job, rx)
    }

    /// Logits of a finished job as rows of `[sum, merged batch size]`.
    async fn rows(rx: oneshot::Receiver<JobResult>) -> (Vec<Vec<f32>>, u32, u32) {
        let out = rx.await.unwrap().unwrap();
        let Logits::Dense(t) = out.logits else {
            panic!("expected dense logits")
        };
        let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&t).unwrap();
        (
            rows,
            out.timing.merged_batch_size,
            out.timing.merged_requests,
        )
    }

    const FOREVER: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn merges_same_shape_and_splits_results_back() {
        let r = rig(4, FOREVER, false).await;
        // Full batches are cut at once; with an hour's delay nothing else cuts them.
        let (a, ra) = job(2, 3, 1.0);
        let (b, rb) = job(1, 5, 7.0); // other shape: not merged with a, c
        let (c, rc) = job(2, 3, 2.0);
        r.batcher.submit(a).unwrap();
        r.batcher.submit(b).unwrap();
        r.batcher.submit(c).unwrap();
        let (rows_a, merged_a, reqs_a) = rows(ra).await;
        assert_eq!(rows_a, vec![vec![3.0, 4.0]; 2]);
        assert_eq!((merged_a, reqs_a), (4, 2));
        let (rows_c, merged_c, _) = rows(rc).await;
        assert_eq!(rows_c, vec![vec![6.0, 4.0]; 2]);
        assert_eq!(merged_c, 4);
        let (d, rd) = job(3, 5, 1.0);
        r.batcher.submit(d).unwrap();
        let (rows_b, merged_b, reqs_b) = rows(rb).await;
        assert_eq!(rows_b, vec![vec![35.0, 4.0]]);
        assert_eq!((merged_b, reqs_b), (4, 2));
        assert_eq!(rows(rd).await.0, vec![vec![5.0, 4.0]; 3]);
        assert_eq!(*r.passes.lock().unwrap(), vec![4, 4]);
    }

    #[tokio::test]
    async fn never_exceeds_max_batch_size_and_keeps_order() {
        let r = rig(4, FOREVER, false).await;
        let (a, ra) = job(3, 2, 1.0);
        let (b, rb) = job(3, 2, 2.0);
        let (c, rc) = job(1, 2, 3.0);
        r.batcher.submit(a).unwrap();
        r.batcher.submit(b).unwrap();
        r.batcher.submit(c).unwrap();
        // a + c = 4 would fit, but b came first: a runs alone (3 + 3 > 4), then b + c.
        assert_eq!(rows(ra).await.1, 3);
        assert_eq!(rows(rb).await.1, 4);
        assert_eq!(rows(rc).await.0, vec![vec![6.0, 4.0]]);
        assert_eq!(*r.passes.lock().unwrap(), vec![3, 4]);
    }

    #[tokio::test]
    async fn drops_requests_whose_stream_went_away() {
        let r = rig(4, FOREVER, false).await;
        let (gone, rx_gone) = job(2, 2, 100.0);
        r.batcher.submit(gone).unwrap();
        drop(rx_gone);
        let (a, ra) = job(2, 2, 1.0);
        let (b, rb) = job(2, 2, 2.0);
        r.batcher.submit(a).unwrap();
        r.batcher.submit(b).unwrap();
        let (rows_a, merged, reqs) = rows(ra).await;
        assert_eq!(rows_a, vec![vec![2.0, 4.0]; 2]);
        assert_eq!((merged, reqs), (4, 2));
        assert_eq!(rows(rb).await.0, vec![vec![4.0, 4.0]; 2]);
        assert_eq!(*r.passes.lock().unwrap(), vec![4]);
    }

    #[tokio::test]
    async fn batches_grow_while_the_device_is_busy() {
        let mut r = rig(100, Duration::ZERO, true).await;
        let (first, r_first) = job(1, 2, 1.0);
        r.batcher.submit(first).unwrap();
        assert_eq!(r.entered.recv().await, Some(1)); // the device is now busy
        let mut waiting = Vec::new();
        for i in 0..6 {
            let (j, rx) = job(1, 2, f64::from(i));
            r.batcher.submit(j).unwrap();
            waiting.push(rx);
        }
        // At most one batch sits in the engine's slot; everything else waits and merges.
        drop(r.gate);
        assert_eq!(rows(r_first).await.1, 1);
        for (i, rx) in waiting.into_iter().enumerate() {
            assert_eq!(rows(rx).await.0[0][0], 2.0 * i as f32);
        }
        let passes = r.passes.lock().unwrap().clone();
        assert_eq!(passes.iter().sum::<i64>(), 7);
        assert!(
            passes.len() <= 3,
            "expected the waiting requests merged, got passes {passes:?}"
        );
        assert!(passes.iter().any(|&n| n >= 3), "{passes:?}");
    }

    #[tokio::test]
    async fn full_queue_pushes_back_with_a_retry_hint() {
        let mut r = rig(1, Duration::ZERO, true).await;
        let mut held = Vec::new();
        let (j, rx) = job(1, 2, 0.0);
        r.batcher.submit(j).unwrap();
        held.push(rx);
        assert_eq!(r.entered.recv().await, Some(1));
        let mut rejected = None;
        for _ in 0..40 {
            let (j, rx) = job(1, 2, 0.0);
            match r.batcher.submit(j) {
                Ok(()) => held.push(rx),
                Err(e) => {
                    rejected = Some(e);
                    break;
                }
            }
        }
        let e = Error::from(rejected.expect("a bounded queue must reject at some point"));
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.to_string().contains("retry after 50 ms"), "{e}");
        drop(r.gate);
    }
}
