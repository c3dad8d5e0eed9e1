//! Dynamic batching: a queue actor that merges the requests of all streams into forward passes,
//! fairly across streams.
//!
//! Modelled on text-embeddings-inference's queue: the actor collects requests from a bounded
//! channel, and only once it holds a reserved slot in the capacity-1 channel to the
//! [`crate::engine`] does it cut a batch, so while the device is busy requests keep accumulating
//! and the next batch grows. After reserving the slot it waits up to `max_batch_delay` (counted
//! from the oldest waiting request's arrival) for the batch to fill, then cuts it from a
//! [`FairQueue`]: one FIFO lane per stream, served round-robin, so a stream that keeps many large
//! requests queued delays another stream's request by a few forward passes at most (one turn of
//! each stream with work, plus the pass running and the one waiting in the engine's slot), never
//! by its whole backlog. A batch holds only requests with the same per-sample shape and kind as
//! its first, up to `max_batch_size` samples.
//!
//! Requests whose stream has gone away (their `oneshot` receiver dropped) are discarded before
//! they run. The queue is bounded twice: [`StreamQueue::submit`] fails fast with
//! [`SubmitError::Overloaded`] when `queue_capacity` requests wait, and with
//! [`SubmitError::StreamShareFull`] when its own stream already holds half of them, so one stream
//! alone never fills the queue for the others.

use crate::config::BatchConfig;
use crate::engine::{Job, MergedBatch};
use distill_telemetry::prometheus::IntGauge;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tch::Kind;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::Instant;

/// Suggested delay before retrying a request rejected by a full queue.
pub(crate) const RETRY_AFTER: Duration = Duration::from_millis(50);

/// Why [`StreamQueue::submit`] refused a job.
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
    /// This stream already holds its share of the queue (the rest stays for other streams).
    #[error(
        "server overloaded: this stream already has {share} batches waiting, its share of the queue of {capacity}; retry after {} ms",
        retry_after.as_millis()
    )]
    StreamShareFull {
        /// Batches one stream may have waiting: half of `--queue-capacity`, at least 1.
        share: usize,
        /// `--queue-capacity`.
        capacity: usize,
        /// Suggested delay before retrying ([`RETRY_AFTER`]).
        retry_after: Duration,
    },
    /// The actor has stopped: the server is shutting down.
    #[error("teacher-server is shutting down: send this batch to another replica")]
    ShuttingDown,
}

impl SubmitError {
    /// The suggested delay before retrying, for the overload errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SubmitError::Overloaded { retry_after, .. }
            | SubmitError::StreamShareFull { retry_after, .. } => Some(*retry_after),
            SubmitError::ShuttingDown => None,
        }
    }
}

/// Names a stream to the batcher: its requests share one lane of the [`FairQueue`].
type StreamId = u64;

/// Handle on the batching actor, from which each stream takes its [`StreamQueue`]. Cloneable;
/// the actor ends (flushing what is queued) when every handle and every stream queue is dropped.
#[derive(Debug, Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Queued>,
    capacity: usize,
    /// Where the next [`StreamQueue`]'s id comes from.
    next_stream: Arc<AtomicU64>,
}

/// One stream's way into the batcher: its requests keep their order and take turns with other
/// streams' requests, and at most [`StreamQueue::share`] of them wait at a time.
#[derive(Debug)]
pub(crate) struct StreamQueue {
    tx: mpsc::Sender<Queued>,
    stream: StreamId,
    capacity: usize,
    /// One permit per request this stream may have waiting; a queued request holds one until it
    /// is cut into a batch or dropped.
    slots: Arc<Semaphore>,
}

/// A job waiting in the batcher, with what the [`FairQueue`] needs to know of it.
#[derive(Debug)]
struct Queued {
    job: Job,
    /// The lane it waits in.
    stream: StreamId,
    /// What it merges with, worked out once at submission.
    key: Key,
    /// Its place in its stream's share of the queue, given back when it leaves the queue.
    _slot: OwnedSemaphorePermit,
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
            queue: FairQueue::default(),
            open: true,
            depth,
        };
        let handle = tokio::spawn(actor.run(engine));
        let batcher = Batcher {
            tx,
            capacity,
            next_stream: Arc::new(AtomicU64::new(0)),
        };
        (batcher, handle)
    }

    /// The queue of a new stream, with its own lane and share.
    pub(crate) fn stream(&self) -> StreamQueue {
        StreamQueue {
            tx: self.tx.clone(),
            stream: self.next_stream.fetch_add(1, Ordering::Relaxed),
            capacity: self.capacity,
            slots: Arc::new(Semaphore::new(StreamQueue::share(self.capacity))),
        }
    }
}

impl StreamQueue {
    /// Requests one stream may have waiting in a queue of `capacity`: half of it, at least 1.
    fn share(capacity: usize) -> usize {
        (capacity / 2).max(1)
    }

    /// Queues a job of this stream without waiting.
    ///
    /// # Errors
    /// [`SubmitError::ShuttingDown`] when the actor has stopped; otherwise, with a retry hint,
    /// [`SubmitError::StreamShareFull`] when this stream already has its share waiting and
    /// [`SubmitError::Overloaded`] when the queue is full.
    pub(crate) fn submit(&self, job: Job) -> Result<(), SubmitError> {
        if self.tx.is_closed() {
            return Err(SubmitError::ShuttingDown);
        }
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            return Err(SubmitError::StreamShareFull {
                share: StreamQueue::share(self.capacity),
                capacity: self.capacity,
                retry_after: RETRY_AFTER,
            });
        };
        let queued = Queued {
            key: key(&job),
            job,
            stream: self.stream,
            _slot: slot,
        };
        self.tx.try_send(queued).map_err(|e| match e {
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

/// What the [`FairQueue`] needs to know of a waiting request.
trait Pending {
    /// The stream that sent it.
    fn stream(&self) -> StreamId;
    /// What it merges with.
    fn key(&self) -> &Key;
    /// Its samples.
    fn samples(&self) -> usize;
    /// When it arrived at the server.
    fn arrived(&self) -> std::time::Instant;
    /// Whether its stream has gone away (it is then dropped unrun).
    fn is_gone(&self) -> bool;
}

impl Pending for Queued {
    fn stream(&self) -> StreamId {
        self.stream
    }
    fn key(&self) -> &Key {
        &self.key
    }
    fn samples(&self) -> usize {
        self.job.samples()
    }
    fn arrived(&self) -> std::time::Instant {
        self.job.arrived
    }
    fn is_gone(&self) -> bool {
        self.job.reply.is_closed()
    }
}

/// The waiting requests of one stream, in arrival order; never empty while in a [`FairQueue`].
#[derive(Debug)]
struct Lane<T> {
    /// Whose requests these are.
    stream: StreamId,
    /// Oldest first.
    items: VecDeque<T>,
}

/// Waiting requests, one FIFO lane per stream, cut into batches round-robin over the lanes.
///
/// The lanes form a ring whose front is the next to serve. [`FairQueue::cut`] takes one request
/// from the front lane and moves that lane to the back, then does the same with the next, round
/// after round, until the batch is full; a lane whose next request cannot join (other shape, or
/// too large for the room left) sits out the rest of the cut and leads the next one. A stream
/// that starts waiting joins at the back. So each stream with work gets a turn in every round,
/// whatever the others have queued, and a stream's own requests run in the order it sent them
/// (among those of one shape).
#[derive(Debug)]
struct FairQueue<T> {
    /// The ring of streams with requests waiting; the front one leads the next batch.
    lanes: VecDeque<Lane<T>>,
    /// Requests in all lanes.
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            lanes: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T: Pending> FairQueue<T> {
    /// Requests waiting.
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `item` at the back of its stream's lane (a new lane joins the ring at the back).
    fn push(&mut self, item: T) {
        self.len += 1;
        let stream = item.stream();
        match self.lanes.iter_mut().find(|l| l.stream == stream) {
            Some(lane) => lane.items.push_back(item),
            None => self.lanes.push_back(Lane {
                stream,
                items: VecDeque::from([item]),
            }),
        }
    }

    /// Drops requests whose stream has gone away, and lanes left empty.
    fn prune(&mut self) {
        for lane in &mut self.lanes {
            lane.items.retain(|i| !i.is_gone());
        }
        self.lanes.retain(|l| !l.items.is_empty());
        self.len = self.lanes.iter().map(|l| l.items.len()).sum();
    }

    /// Arrival of the oldest request waiting.
    fn oldest(&self) -> Option<std::time::Instant> {
        self.lanes
            .iter()
            .filter_map(|l| l.items.front().map(Pending::arrived))
            .min()
    }

    /// The key of the next batch: that of the front lane's oldest request.
    fn lead(&self) -> Option<&Key> {
        self.lanes.front()?.items.front().map(Pending::key)
    }

    /// Samples waiting that could join the next batch (of its key, not gone), counted up to
    /// `max`.
    fn mergeable(&self, max: usize) -> usize {
        let Some(lead) = self.lead() else {
            return 0;
        };
        let mut total = 0;
        for item in self.lanes.iter().flat_map(|l| &l.items) {
            if item.key() == lead && !item.is_gone() {
                total += item.samples();
                if total >= max {
                    break;
                }
            }
        }
        total
    }

    /// Cuts the next batch, up to `max` samples (its first request alone may hold more): round
    /// after round over the lanes from the front, each lane's oldest request of the batch's key,
    /// until the batch is full or no lane has one that fits. Lanes served move to the back of
    /// the ring; lanes that sat out keep the front.
    fn cut(&mut self, max: usize) -> Vec<T> {
        let Some(lead) = self.lead().cloned() else {
            return Vec::new();
        };
        let mut batch = Vec::new();
        let mut total = 0;
        let mut sat_out = Vec::new();
        while total < max {
            let Some(mut lane) = self.lanes.pop_front() else {
                break;
            };
            let next = lane.items.iter().position(|i| i.key() == &lead);
            let fits = |i: &T| batch.is_empty() || total + i.samples() <= max;
            let Some(item) = next
                .filter(|&at| lane.items.get(at).is_some_and(fits))
                .and_then(|at| lane.items.remove(at))
            else {
                sat_out.push(lane);
                continue;
            };
            total += item.samples();
            batch.push(item);
            if !lane.items.is_empty() {
                self.lanes.push_back(lane);
            }
        }
        for lane in sat_out.into_iter().rev() {
            self.lanes.push_front(lane);
        }
        self.len -= batch.len();
        batch
    }
}

struct Actor {
    config: BatchConfig,
    rx: mpsc::Receiver<Queued>,
    draining: watch::Receiver<bool>,
    /// Jobs taken from `rx`, by stream.
    queue: FairQueue<Queued>,
    /// Whether `rx` can still deliver jobs.
    open: bool,
    /// `teacher_queue_depth`, set whenever a job is taken or a batch is cut.
    depth: Option<IntGauge>,
}

impl Actor {
    async fn run(mut self, engine: mpsc::Sender<MergedBatch>) {
        loop {
            self.queue.prune();
            if self.queue.is_empty() {
                if !self.open {
                    break;
                }
                match self.rx.recv().await {
                    Some(job) => self.queue.push(job),
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
            self.queue.prune();
            let jobs: Vec<Job> = self
                .queue
                .cut(self.config.max_batch_size)
                .into_iter()
                .map(|q| q.job)
                .collect();
            if !jobs.is_empty() {
                permit.send(MergedBatch { jobs });
            }
            self.report_depth();
        }
    }

    /// Whether to take more jobs from the channel: the local queue is bounded too, so a full
    /// channel really means a full server.
    fn can_accept(&self) -> bool {
        self.open && self.queue.len() < self.config.queue_capacity
    }

    fn accept(&mut self, job: Option<Queued>) {
        match job {
            Some(job) => self.queue.push(job),
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

    /// Waits, up to `max_batch_delay` after the oldest job arrived, for the batch to fill.
    async fn fill(&mut self) {
        while self.can_accept() {
            match self.rx.try_recv() {
                Ok(job) => self.queue.push(job),
                Err(_) => break,
            }
        }
        let Some(oldest) = self.queue.oldest() else {
            return;
        };
        let deadline = Instant::from_std(oldest) + self.config.max_batch_delay;
        let max = self.config.max_batch_size;
        while self.open && !*self.draining.borrow() && self.queue.mergeable(max) < max {
            tokio::select! {
                biased;
                job = self.rx.recv(), if self.can_accept() => self.accept(job),
                changed = self.draining.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
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
        /// One stream's queue (the tests that need several streams take more).
        stream: StreamQueue,
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
            stream: batcher.stream(),
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
            gather: None,
            gathered_only: false,
            arrived: std::time::Instant::now(),
            reply: tx,
            span: tracing::Span::none(),
        };
        (job, rx)
    }

    /// Logits of a finished job as rows of `[sum, merged batch size]`.
    async fn rows(rx: oneshot::Receiver<JobResult>) -> (Vec<Vec<f32>>, u32, u32) {
        let out = rx.await.unwrap().unwrap();
        let Some(Logits::Dense(t)) = out.logits else {
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
        r.stream.submit(a).unwrap();
        r.stream.submit(b).unwrap();
        r.stream.submit(c).unwrap();
        let (rows_a, merged_a, reqs_a) = rows(ra).await;
        assert_eq!(rows_a, vec![vec![3.0, 4.0]; 2]);
        assert_eq!((merged_a, reqs_a), (4, 2));
        let (rows_c, merged_c, _) = rows(rc).await;
        assert_eq!(rows_c, vec![vec![6.0, 4.0]; 2]);
        assert_eq!(merged_c, 4);
        let (d, rd) = job(3, 5, 1.0);
        r.stream.submit(d).unwrap();
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
        r.stream.submit(a).unwrap();
        r.stream.submit(b).unwrap();
        r.stream.submit(c).unwrap();
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
        r.stream.submit(gone).unwrap();
        drop(rx_gone);
        let (a, ra) = job(2, 2, 1.0);
        let (b, rb) = job(2, 2, 2.0);
        r.stream.submit(a).unwrap();
        r.stream.submit(b).unwrap();
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
        r.stream.submit(first).unwrap();
        assert_eq!(r.entered.recv().await, Some(1)); // the device is now busy
        let mut waiting = Vec::new();
        for i in 0..6 {
            let (j, rx) = job(1, 2, f64::from(i));
            r.stream.submit(j).unwrap();
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
        r.stream.submit(j).unwrap();
        held.push(rx);
        assert_eq!(r.entered.recv().await, Some(1));
        let mut rejected = None;
        for _ in 0..40 {
            // Each from its own stream: no stream reaches its share, the queue fills.
            let (j, rx) = job(1, 2, 0.0);
            match r.batcher.stream().submit(j) {
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
        assert!(e.to_string().contains("queue of 16 batches is full"), "{e}");
        drop(r.gate);
    }

    #[tokio::test]
    async fn one_stream_fills_only_its_share_of_the_queue() {
        let mut r = rig(1, Duration::ZERO, true).await;
        let mut held = Vec::new();
        let (j, rx) = job(1, 2, 0.0);
        r.stream.submit(j).unwrap();
        held.push(rx);
        assert_eq!(r.entered.recv().await, Some(1)); // the device is busy; the rest waits
        // Half of the queue of 16; the job running holds no place in it.
        for _ in 0..8 {
            let (j, rx) = job(1, 2, 0.0);
            r.stream.submit(j).unwrap();
            held.push(rx);
        }
        let (j, _rx) = job(1, 2, 0.0);
        let e = Error::from(r.stream.submit(j).unwrap_err());
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        let msg = e.to_string();
        assert!(msg.contains("8 batches waiting"), "{msg}");
        assert!(msg.contains("retry after 50 ms"), "{msg}");
        // Another stream still gets in.
        let (j, other) = job(1, 2, 5.0);
        r.batcher.stream().submit(j).unwrap();
        drop(r.gate);
        assert_eq!(rows(other).await.0, vec![vec![10.0, 1.0]]);
        // Once its requests have run, the stream has its share back.
        for rx in held {
            rows(rx).await;
        }
        let (j, again) = job(1, 2, 1.0);
        r.stream.submit(j).unwrap();
        assert_eq!(rows(again).await.0, vec![vec![2.0, 1.0]]);
    }

    #[tokio::test]
    async fn a_light_stream_overtakes_a_backlog() {
        // Every batch but the light request's is full, and that one has full ones queued behind
        // it: none waits for the delay (in arrival order the light one would, at the end).
        let mut r = rig(4, Duration::from_millis(20), true).await;
        let (first, r_first) = job(4, 2, 0.0);
        r.stream.submit(first).unwrap();
        assert_eq!(r.entered.recv().await, Some(4)); // the device is busy
        let mut flood = vec![r_first];
        for _ in 0..8 {
            let (j, rx) = job(4, 2, 0.0);
            r.stream.submit(j).unwrap();
            flood.push(rx);
        }
        let (light, r_light) = job(1, 2, 1.0);
        r.batcher.stream().submit(light).unwrap();
        drop(r.gate);
        assert_eq!(rows(r_light).await.0, vec![vec![2.0, 1.0]]);
        for rx in flood {
            assert_eq!(rows(rx).await.1, 4);
        }
        // The pass running, the flood's next batch (its lane leads the ring), then the light
        // request's turn: in arrival order it would have waited for all eight queued before it.
        let passes = r.passes.lock().unwrap().clone();
        assert_eq!(passes.len(), 10, "{passes:?}");
        assert_eq!(passes.iter().position(|&n| n == 1), Some(2), "{passes:?}");
    }

    /// A request in a [`FairQueue`] test: `id` tells it apart.
    #[derive(Debug)]
    struct Item {
        stream: StreamId,
        id: usize,
        samples: usize,
        key: Key,
        arrived: std::time::Instant,
        gone: bool,
    }

    impl Pending for Item {
        fn stream(&self) -> StreamId {
            self.stream
        }
        fn key(&self) -> &Key {
            &self.key
        }
        fn samples(&self) -> usize {
            self.samples
        }
        fn arrived(&self) -> std::time::Instant {
            self.arrived
        }
        fn is_gone(&self) -> bool {
            self.gone
        }
    }

    fn width(w: i64) -> Key {
        Key {
            kind: Kind::Float,
            sample_shape: vec![w],
        }
    }

    /// Builds [`Item`]s with increasing ids and arrival times.
    #[derive(Default)]
    struct Items {
        next: usize,
        start: Option<std::time::Instant>,
    }

    impl Items {
        fn make(&mut self, stream: StreamId, samples: usize) -> Item {
            self.keyed(stream, samples, width(2))
        }
        fn keyed(&mut self, stream: StreamId, samples: usize, key: Key) -> Item {
            let start = *self.start.get_or_insert_with(std::time::Instant::now);
            self.next += 1;
            Item {
                stream,
                id: self.next,
                samples,
                key,
                arrived: start + Duration::from_micros(self.next as u64),
                gone: false,
            }
        }
    }

    /// `(stream, id)` of each request of a batch.
    fn cut(q: &mut FairQueue<Item>, max: usize) -> Vec<(StreamId, usize)> {
        q.cut(max).iter().map(|i| (i.stream, i.id)).collect()
    }

    #[test]
    fn a_light_stream_waits_one_turn_whatever_the_other_has_queued() {
        let mut items = Items::default();
        let mut q = FairQueue::default();
        // Stream 0 keeps 100 full batches queued; stream 1 sends one small request at a time,
        // the next once the previous has been cut.
        for _ in 0..100 {
            q.push(items.make(0, 8));
        }
        let mut light = items.make(1, 1);
        let mut light_since = 0;
        q.push(light);
        let mut worst = 0;
        let mut light_batches = 0;
        let mut flood_samples = 0;
        for n in 1..=60 {
            let batch = q.cut(8);
            assert!(!batch.is_empty());
            assert!(batch.iter().map(|i| i.samples).sum::<usize>() <= 8);
            for done in batch {
                if done.stream == 1 {
                    worst = worst.max(n - light_since);
                    light_batches += 1;
                    light = items.make(1, 1);
                    light_since = n;
                    q.push(light);
                } else {
                    flood_samples += done.samples;
                    q.push(items.make(0, 8));
                }
            }
        }
        // Cut in the second batch after it arrived at worst; in arrival order the first light
        // request alone would have waited for all 100.
        assert_eq!(worst, 2);
        assert_eq!(light_batches, 30);
        // The flood still gets every other forward pass, full.
        assert_eq!(flood_samples, 30 * 8);
    }

    #[test]
    fn streams_take_turns_and_each_keeps_its_order() {
        let mut items = Items::default();
        let mut q = FairQueue::default();
        // Each stream's four requests arrive together, stream by stream.
        for s in 0..3 {
            for _ in 0..4 {
                q.push(items.make(s, 1));
            }
        }
        let mut cut_ids = Vec::new();
        let mut served = [0usize; 3];
        while !q.is_empty() {
            let batch = cut(&mut q, 2);
            assert_eq!(batch.len(), 2);
            for &(s, id) in &batch {
                served[s as usize] += 1;
                cut_ids.push((s, id));
            }
            let (min, max) = (served.iter().min(), served.iter().max());
            assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{served:?}");
        }
        assert_eq!(q.len(), 0);
        for s in 0..3 {
            let ids: Vec<usize> = cut_ids
                .iter()
                .filter(|(t, _)| *t == s)
                .map(|&(_, id)| id)
                .collect();
            assert!(ids.is_sorted() && ids.len() == 4, "stream {s}: {ids:?}");
        }
    }

    #[test]
    fn a_request_that_does_not_fit_leaves_room_to_others_and_leads_next() {
        let mut items = Items::default();
        let mut q = FairQueue::default();
        q.push(items.make(0, 3)); // 1
        q.push(items.make(0, 3)); // 2
        q.push(items.make(1, 3)); // 3
        q.push(items.make(2, 1)); // 4
        // Stream 0 leads; stream 1's 3 samples do not fit beside it, stream 2's one does.
        assert_eq!(cut(&mut q, 4), vec![(0, 1), (2, 4)]);
        // Stream 1 sat out, so it leads the next batch, ahead of stream 0.
        assert_eq!(cut(&mut q, 4), vec![(1, 3)]);
        assert_eq!(cut(&mut q, 4), vec![(0, 2)]);
        assert!(q.is_empty() && cut(&mut q, 4).is_empty());
    }

    #[test]
    fn a_batch_holds_one_shape_and_a_new_stream_joins_at_the_back() {
        let mut items = Items::default();
        let mut q = FairQueue::default();
        q.push(items.keyed(0, 1, width(3))); // 1
        q.push(items.keyed(0, 1, width(5))); // 2
        q.push(items.keyed(0, 1, width(3))); // 3
        q.push(items.keyed(1, 1, width(5))); // 4
        q.push(items.keyed(2, 1, width(3))); // 5
        assert_eq!(q.mergeable(10), 3);
        // Only the lead's shape; stream 0's other-shaped request waits without blocking its own
        // later ones (as in one queue in arrival order).
        assert_eq!(cut(&mut q, 10), vec![(0, 1), (2, 5), (0, 3)]);
        assert_eq!(q.len(), 2);
        // Stream 1 sat out and leads; stream 0 comes back after it.
        q.push(items.keyed(3, 1, width(5))); // 6: a new stream joins behind both
        assert_eq!(cut(&mut q, 2), vec![(1, 4), (0, 2)]);
        assert_eq!(cut(&mut q, 2), vec![(3, 6)]);
    }

    #[test]
    fn gone_requests_are_pruned_and_the_oldest_sets_the_deadline() {
        let mut items = Items::default();
        let mut q = FairQueue::default();
        let mut gone = items.make(0, 1);
        gone.gone = true;
        let first = gone.arrived;
        q.push(gone);
        let kept = items.make(1, 2);
        let second = kept.arrived;
        q.push(kept);
        q.push(items.make(1, 2));
        assert_eq!(q.oldest(), Some(first));
        assert_eq!(q.mergeable(10), 4); // a gone request never counts
        q.prune();
        assert_eq!((q.len(), q.oldest()), (2, Some(second)));
        assert_eq!(cut(&mut q, 10), vec![(1, 2), (1, 3)]);
        assert_eq!(q.oldest(), None);
    }
}
