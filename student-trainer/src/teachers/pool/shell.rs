//! The async shell around the [`super::scheduler`]: connecting the groups, the replica tasks,
//! `dns://` re-resolution, and the loop that carries out what the scheduler decides.

use super::discovery::{DnsSource, Resolver, SystemResolver};
use super::options::{
    PoolError, PoolOptions, ReplicaStats, RunStats, RunTargets, WAIT_LOG_INTERVAL, backoff,
};
use super::replica::{Event, ReplicaTask};
use super::scheduler::{
    self, Answered, Failed, ReplicaId, ReplicaState, Reply, Scheduler, SchedulerConfig,
};
use crate::ensemble::{self, EnsembleMode, MixError};
use crate::outputs::monitoring::StudentMetrics;
use crate::schedule::{PlannedBatch, ViewedBatch};
use crate::soft_targets::{SoftTargets, TeacherBatch};
use crate::teachers::client::TeacherClient;
use crate::teachers::endpoint::{GroupSpec, address_url, parse_dns_url};
use crate::teachers::error::ClientError;
use crate::teachers::info::{Expect, TeacherInfo, inconsistency};
use crate::teachers::wire::{self, Answering, Decoded};
use distill_proto::v1::{LogitsRequest, LogitsResponse};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::Tensor;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::task::AbortHandle;

/// How long an outage lasts before its first log line.
const WAIT_LOG_AFTER: Duration = Duration::from_millis(500);
/// Events buffered between the replica tasks and the pool's loop.
const EVENT_BUFFER: usize = 64;
/// How long the loop sleeps when nothing is due (it wakes earlier on any event).
const IDLE_WAKE: Duration = Duration::from_secs(3600);

/// One group's answer to a batch: its soft targets and, for `distill --hint`, the teacher's
/// hint feature `f32 [batch, ...]`.
#[derive(Debug)]
pub(crate) struct Answer {
    targets: SoftTargets,
    hint: Option<Tensor>,
    /// The log-probabilities at the ids the batch's `gather_ids` named, `f32 [batch, S, m]`.
    gathered: Option<Tensor>,
}

/// What the response to a made batch must hold beyond a plan's: its own positions (a made
/// token batch's length `S`) and the shape of its gathered log-probabilities.
#[derive(Debug, Clone)]
struct MadeShape {
    /// `Some(S)` for token ids `[B, S]`; `None` for images.
    positions: Option<i64>,
    /// `[B, S, m]` when the batch asks for gathered log-probabilities.
    gathered: Option<Vec<i64>>,
}

/// What the shell keeps of a replica besides the scheduler's state.
#[derive(Debug)]
struct Replica {
    url: String,
    /// The request stream, while up.
    tx: Option<mpsc::Sender<LogitsRequest>>,
    task: Option<AbortHandle>,
    /// Moving average of the answer latency (ms).
    latency_ms: f64,
    /// The `dns://` source it was resolved from, if any (index into `Pool::sources`).
    source: Option<usize>,
    /// The replica this URL duplicates (same server process): retired for good and left out
    /// of the report.
    alias_of: Option<ReplicaId>,
    /// The server's `instance_id` from its last connection (empty: unknown).
    instance_id: String,
}

#[derive(Debug)]
struct Group {
    name: String,
    weight: f64,
    reference: TeacherInfo,
}

/// Replicas of one or more teachers, and the loop that streams batches to them.
#[derive(Debug)]
pub struct Pool {
    options: PoolOptions,
    expect: Expect,
    groups: Vec<Group>,
    replicas: Vec<Replica>,
    sched: Scheduler<PlannedBatch, Answer>,
    /// The targets of the current (or last) run.
    targets: RunTargets,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    resolver: Arc<dyn Resolver>,
    sources: Vec<DnsSource>,
    next_resolve: Instant,
    /// The shapes the answers to made batches must have, by sequence number, until released.
    made_shapes: HashMap<u64, MadeShape>,
}

/// Where the batches of a run, and the inputs each request carries, come from.
enum Source<'a> {
    /// A plan over one tensor of inputs ([`Run::inputs`]): each request carries the rows its
    /// batch's indices name.
    Plan(&'a mut dyn Iterator<Item = PlannedBatch>),
    /// Batches made with their own inputs by a loader thread, in plan order (an image folder's
    /// views for this teacher).
    Views(&'a mut mpsc::Receiver<ViewedBatch>),
}

/// The next made batch of a [`Source::Views`] (`None` once the loader is done); never ready
/// for a [`Source::Plan`].
async fn next_view(source: &mut Source<'_>) -> Option<ViewedBatch> {
    match source {
        Source::Views(rx) => rx.recv().await,
        Source::Plan(_) => std::future::pending().await,
    }
}

/// State of one [`Pool::run`].
#[derive(Debug)]
struct Run {
    /// The plan has no more batches.
    plan_done: bool,
    /// The whole dataset's inputs, for a [`Source::Plan`] (empty for [`Source::Views`]).
    inputs: Tensor,
    /// Each admitted batch of a [`Source::Views`] with its inputs, by sequence number, until it
    /// is released.
    made: HashMap<u64, ViewedBatch>,
    batches: u64,
    samples: u64,
    last_wait_log: Option<Instant>,
    /// Since when the next batch has waited for a prefetch slot (see
    /// [`RunStats::backpressure_s`]).
    blocked_since: Option<Instant>,
    backpressure_s: f64,
    /// The `batch` span of each batch in flight (by schedule sequence number), from its first
    /// send until the training step that uses it (the span travels in [`TeacherBatch::span`]).
    spans: HashMap<u64, tracing::Span>,
}

impl Run {
    /// Accounts backpressure at `now`: `blocked` whether a batch is waiting for a slot.
    fn backpressure(&mut self, blocked: bool, now: Instant, metrics: Option<&StudentMetrics>) {
        match (blocked, self.blocked_since) {
            (true, None) => self.blocked_since = Some(now),
            (false, Some(since)) => {
                let waited = now.saturating_duration_since(since).as_secs_f64();
                self.backpressure_s += waited;
                if let Some(m) = metrics {
                    m.waited_for_prefetch_slot(waited);
                }
                self.blocked_since = None;
            }
            _ => {}
        }
    }
}

impl Pool {
    /// Connects to every replica of every group (concurrently, each within the connect
    /// timeout), picks each group's reference (its first reachable replica), checks it against
    /// `expect`, refuses inconsistent replicas, and starts a stream to every accepted one.
    /// Unreachable replicas other than a reference are retried in the background.
    ///
    /// # Errors
    /// [`PoolError::Client`] when no replica of a group is reachable (the first one's error) or
    /// a reference does not fit the data. (A group always keeps its reference, so refusals alone
    /// never leave a group empty; they are logged and retried.)
    pub async fn connect(
        specs: Vec<GroupSpec>,
        options: PoolOptions,
        expect: Expect,
    ) -> Result<Pool, PoolError> {
        Pool::connect_with(specs, options, expect, Arc::new(SystemResolver)).await
    }

    /// [`Pool::connect`] with `resolver` for `dns://` URLs.
    ///
    /// # Errors
    /// As [`Pool::connect`]; also [`ClientError::Unreachable`] for a `dns://` name without
    /// addresses.
    pub async fn connect_with(
        specs: Vec<GroupSpec>,
        options: PoolOptions,
        expect: Expect,
        resolver: Arc<dyn Resolver>,
    ) -> Result<Pool, PoolError> {
        let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
        let (base, max) = (options.backoff_base, options.backoff_max);
        let sched = Scheduler::new(SchedulerConfig {
            prefetch: options.prefetch.max(1),
            batch_timeout: options.batch_timeout,
            backoff: Box::new(move |attempt| backoff(attempt, base, max)),
        });
        let mut pool = Pool {
            next_resolve: Instant::now() + options.resolve_interval,
            made_shapes: HashMap::new(),
            options,
            expect,
            groups: Vec::new(),
            replicas: Vec::new(),
            sched,
            targets: RunTargets::dense_f32(1.0),
            events_tx,
            events_rx,
            resolver,
            sources: Vec::new(),
        };
        for spec in specs {
            pool.connect_group(spec).await?;
        }
        Ok(pool)
    }

    /// Expands a group's `dns://` names into one URL per address, remembering where each came
    /// from.
    async fn expand(
        &mut self,
        spec: &GroupSpec,
        group: usize,
    ) -> Result<Vec<(String, Option<usize>)>, PoolError> {
        let mut urls: Vec<(String, Option<usize>)> = Vec::new();
        for url in &spec.urls {
            match parse_dns_url(url) {
                None => urls.push((url.clone(), None)),
                Some((host, port)) => {
                    let addrs = self.resolver.resolve(&host, port).await.map_err(|e| {
                        ClientError::Unreachable {
                            url: url.clone(),
                            reason: format!("resolving {host}: {e}"),
                        }
                    })?;
                    let tls = self.options.client.security.tls();
                    let mut addrs: Vec<String> =
                        addrs.iter().map(|a| address_url(a, tls)).collect();
                    addrs.sort();
                    addrs.dedup();
                    tracing::info!(%url, addresses = ?addrs, "resolved");
                    let source = self.sources.len();
                    self.sources.push(DnsSource {
                        group,
                        host,
                        port,
                        resolving: false,
                    });
                    urls.extend(addrs.into_iter().map(|a| (a, Some(source))));
                }
            }
        }
        if urls.is_empty() {
            return Err(ClientError::Unreachable {
                url: spec.urls.join(","),
                reason: "no replica address (the name resolves to nothing)".into(),
            }
            .into());
        }
        Ok(urls)
    }

    async fn connect_group(&mut self, spec: GroupSpec) -> Result<(), PoolError> {
        let g = self.groups.len();
        let urls = self.expand(&spec, g).await?;
        let mut attempts = tokio::task::JoinSet::new();
        for (i, (url, _)) in urls.iter().enumerate() {
            let (url, opts) = (url.clone(), self.options.client.clone());
            attempts.spawn(async move { (i, TeacherClient::connect(&url, &opts).await) });
        }
        let mut results: Vec<Option<Result<TeacherClient, ClientError>>> =
            (0..urls.len()).map(|_| None).collect();
        while let Some(joined) = attempts.join_next().await {
            if let Ok((i, r)) = joined {
                results[i] = Some(r);
            }
        }
        let reference = results
            .iter()
            .flatten()
            .find_map(|r| r.as_ref().ok())
            .map(|c| (c.url().to_string(), c.info().clone()));
        let Some((ref_url, reference)) = reference else {
            // A refusal of our credentials explains more than an unreachable replica.
            let mut errors: Vec<ClientError> = results
                .into_iter()
                .flatten()
                .filter_map(Result::err)
                .collect();
            let first = match errors.iter().position(ClientError::is_refusal) {
                Some(i) => Some(errors.swap_remove(i)),
                None => errors.into_iter().next(),
            };
            return Err(first
                .unwrap_or_else(|| ClientError::Unreachable {
                    url: spec.urls.join(","),
                    reason: "no replica given".into(),
                })
                .into());
        };
        reference.check(&ref_url, &self.expect)?;
        tracing::info!(
            group = %spec.name, url = %ref_url, name = %reference.name,
            fingerprint = %reference.fingerprint, device = %reference.device,
            input_shape = ?reference.input_shape, num_logits = reference.num_logits,
            "teacher group reference"
        );
        let sg = self.sched.add_group();
        debug_assert_eq!(sg, g);
        self.groups.push(Group {
            name: spec.name.clone(),
            weight: spec.weight,
            reference: reference.clone(),
        });
        let now = Instant::now();
        for ((url, source), result) in urls.into_iter().zip(results) {
            let r = self.push_replica(g, url.clone(), source, now);
            match result {
                Some(Ok(client)) => {
                    if self.merge_alias(r, &client.info().instance_id) {
                        continue;
                    }
                    match inconsistency(&reference, client.info()) {
                        None => {
                            self.replicas[r]
                                .instance_id
                                .clone_from(&client.info().instance_id);
                            self.start_replica(r, Some(client));
                        }
                        Some(why) => {
                            tracing::error!(
                                group = %spec.name, %url, fingerprint = %client.info().fingerprint,
                                reference = %reference.fingerprint,
                                "teacher replica refused: {why} (replica fingerprint {}, group fingerprint {})",
                                client.info().fingerprint, reference.fingerprint
                            );
                            self.sched.fail(r, now);
                        }
                    }
                }
                Some(Err(e)) if e.is_refusal() => {
                    tracing::error!(group = %spec.name, %url, "teacher replica refused: {e}");
                    self.sched.fail(r, now);
                }
                Some(Err(e)) => {
                    tracing::warn!(group = %spec.name, %url, error = %e, "teacher replica unreachable; retrying in the background");
                    self.sched.fail(r, now);
                }
                None => {
                    self.sched.fail(r, now);
                }
            }
        }
        Ok(())
    }

    fn push_replica(
        &mut self,
        group: usize,
        url: String,
        source: Option<usize>,
        now: Instant,
    ) -> ReplicaId {
        let r = self.sched.add_replica(group, now);
        debug_assert_eq!(r, self.replicas.len());
        self.replicas.push(Replica {
            url,
            tx: None,
            task: None,
            latency_ms: 0.0,
            source,
            alias_of: None,
            instance_id: String::new(),
        });
        r
    }

    /// If replica `r`'s server (`instance_id`) is already a replica of its group under another
    /// URL, retires `r` as an alias of it (one server, one replica) and returns `true`.
    fn merge_alias(&mut self, r: ReplicaId, instance_id: &str) -> bool {
        if instance_id.is_empty() {
            return false;
        }
        let g = self.sched.group_of(r);
        let Some(&twin) = self.sched.replicas_of(g).iter().find(|&&o| {
            o != r
                && self.replicas[o].alias_of.is_none()
                && self.replicas[o].instance_id == instance_id
                && self.sched.state(o) != ReplicaState::Retired
        }) else {
            return false;
        };
        tracing::info!(
            group = %self.groups[g].name, url = %self.replicas[r].url,
            same_as = %self.replicas[twin].url, instance_id,
            "{} reaches the same teacher-server as {} (instance {instance_id}): counted as one replica",
            self.replicas[r].url, self.replicas[twin].url
        );
        self.sched.retire(r);
        self.drop_connection(r);
        self.replicas[r].alias_of = Some(twin);
        true
    }

    /// Adds a replica to group `group` (index in the order the groups were given); it is
    /// connected, checked and used from the pool's next run. Returns `false` if the URL is
    /// already in that group (a retired one is revived).
    pub fn add_replica(&mut self, group: usize, url: &str) -> bool {
        if group >= self.groups.len() {
            return false;
        }
        let now = Instant::now();
        if let Some(&r) = self
            .sched
            .replicas_of(group)
            .iter()
            .find(|&&r| self.replicas[r].url == url)
        {
            return self.replicas[r].alias_of.is_none() && self.sched.revive(r, now);
        }
        tracing::info!(group = %self.groups[group].name, url, "teacher replica added");
        self.push_replica(group, url.to_string(), None, now);
        true
    }

    /// Removes the replica `url` of group `group` from service: its outstanding batches go to
    /// the others and it is not retried. Returns whether it was in the group.
    pub fn retire_replica(&mut self, group: usize, url: &str) -> bool {
        let Some(r) = self.live_replica(group, url) else {
            return false;
        };
        tracing::info!(group = %self.groups[group].name, url, "teacher replica retired");
        self.sched.retire(r);
        self.drop_connection(r);
        true
    }

    /// The replica of `group` at `url` that is not retired.
    fn live_replica(&self, group: usize, url: &str) -> Option<ReplicaId> {
        if group >= self.groups.len() {
            return None;
        }
        self.sched
            .replicas_of(group)
            .iter()
            .copied()
            .find(|&r| self.replicas[r].url == url && self.sched.state(r) != ReplicaState::Retired)
    }

    /// The URLs of group `group`'s replicas (retired ones left out).
    pub fn replica_urls(&self, group: usize) -> Vec<String> {
        if group >= self.groups.len() {
            return Vec::new();
        }
        self.sched
            .replicas_of(group)
            .iter()
            .filter(|&&r| self.sched.state(r) != ReplicaState::Retired)
            .map(|&r| self.replicas[r].url.clone())
            .collect()
    }

    /// The reference `ModelInfo` of each group, in group order.
    pub fn references(&self) -> Vec<&TeacherInfo> {
        self.groups.iter().map(|g| &g.reference).collect()
    }

    /// The group names, in order.
    pub fn group_names(&self) -> Vec<&str> {
        self.groups.iter().map(|g| g.name.as_str()).collect()
    }

    /// Per-replica counters (URLs that reach another replica's server left out).
    pub fn replica_stats(&self) -> Vec<ReplicaStats> {
        (0..self.replicas.len())
            .filter(|&r| self.replicas[r].alias_of.is_none())
            .map(|r| ReplicaStats {
                url: self.replicas[r].url.clone(),
                group: self.groups[self.sched.group_of(r)].name.clone(),
                answered: self.sched.answered(r),
                up: self.sched.state(r) == ReplicaState::Up,
            })
            .collect()
    }

    /// Sets the per-replica gauges (batches in flight, state) of the metrics, if any. Aliases
    /// (URLs that reach another replica's server) are left out.
    fn export_replicas(&self) {
        let Some(m) = &self.options.metrics else {
            return;
        };
        for (r, rep) in self.replicas.iter().enumerate() {
            if rep.alias_of.is_some() {
                continue;
            }
            let state = match self.sched.state(r) {
                ReplicaState::Connecting => "connecting",
                ReplicaState::Up => "up",
                ReplicaState::Down { .. } => "down",
                ReplicaState::Retired => "retired",
            };
            let group = &self.groups[self.sched.group_of(r)].name;
            m.replica(group, &rep.url, self.sched.in_flight(r), state);
        }
    }

    /// Starts the task owning replica `r`'s connection and stream (reusing `client` if given),
    /// as a new connection generation.
    fn start_replica(&mut self, r: ReplicaId, client: Option<TeacherClient>) {
        let generation = self.sched.connect(r);
        self.spawn_task(r, generation, client);
    }

    fn spawn_task(&mut self, r: ReplicaId, generation: u64, client: Option<TeacherClient>) {
        self.drop_connection(r);
        let group = self.sched.group_of(r);
        let task = ReplicaTask {
            replica: r,
            generation,
            url: self.replicas[r].url.clone(),
            client,
            reference: self.groups[group].reference.clone(),
            options: self.options.client.clone(),
            prefetch: self.options.prefetch,
            events: self.events_tx.clone(),
        };
        self.replicas[r].task = Some(tokio::spawn(task.run()).abort_handle());
    }

    /// Closes replica `r`'s request stream and ends its task.
    fn drop_connection(&mut self, r: ReplicaId) {
        let rep = &mut self.replicas[r];
        rep.tx = None;
        if let Some(t) = rep.task.take() {
            t.abort();
        }
    }

    /// Streams `plan` to the replicas and hands the answered batches to `out` in plan order.
    /// `inputs` is the whole dataset, `f32 [N, ...sample_shape]` on the CPU; each batch sends
    /// the rows named by its indices, asking for the soft targets `targets` describes (the
    /// `top_k` was checked against every teacher when it was admitted). Returns when every batch has been
    /// handed over.
    ///
    /// # Errors
    /// [`PoolError::NoTeacher`] after waiting `teacher_wait` without a replica;
    /// [`PoolError::Client`] for a non-retriable per-batch error, a protocol violation, or `out`
    /// closed ([`ClientError::ConsumerGone`]); [`PoolError::Mix`] for an ensemble that cannot be
    /// mixed.
    pub async fn run<I>(
        &mut self,
        plan: I,
        inputs: Tensor,
        targets: RunTargets,
        out: mpsc::Sender<TeacherBatch>,
    ) -> Result<RunStats, PoolError>
    where
        I: IntoIterator<Item = PlannedBatch>,
    {
        let mut plan = plan.into_iter();
        self.run_source(Source::Plan(&mut plan), inputs, targets, out)
            .await
    }

    /// [`Pool::run`] for batches made with their inputs elsewhere: `views` yields each planned
    /// batch with its samples in this teacher's view (`f32 [B, C, H, W]`, CPU), in plan order,
    /// from a loader thread; the run ends when it closes. Batches are taken from it as the
    /// prefetch window has room (the channel's capacity is how far the loader runs ahead).
    ///
    /// # Errors
    /// As [`Pool::run`].
    pub async fn run_views(
        &mut self,
        mut views: mpsc::Receiver<ViewedBatch>,
        targets: RunTargets,
        out: mpsc::Sender<TeacherBatch>,
    ) -> Result<RunStats, PoolError> {
        self.run_source(Source::Views(&mut views), Tensor::new(), targets, out)
            .await
    }

    async fn run_source(
        &mut self,
        mut source: Source<'_>,
        inputs: Tensor,
        targets: RunTargets,
        out: mpsc::Sender<TeacherBatch>,
    ) -> Result<RunStats, PoolError> {
        self.targets = targets;
        let before = self.sched.counters();
        let mut run = Run {
            plan_done: false,
            inputs,
            made: HashMap::new(),
            batches: 0,
            samples: 0,
            last_wait_log: None,
            blocked_since: None,
            backpressure_s: 0.0,
            spans: HashMap::new(),
        };
        let result = self.drive(&mut run, &mut source, &out).await;
        run.backpressure(false, Instant::now(), self.options.metrics.as_ref());
        self.export_replicas();
        // Forget what is still in flight (an aborted run): answers to it will be discarded.
        self.sched.abandon();
        let after = self.sched.counters();
        let stats = RunStats {
            batches: run.batches,
            samples: run.samples,
            resent: after.resent - before.resent,
            late_discarded: after.late_discarded - before.late_discarded,
            backpressure_s: run.backpressure_s,
        };
        tracing::debug!(?stats, "pool run done");
        result.map(|()| stats)
    }

    async fn drive(
        &mut self,
        run: &mut Run,
        source: &mut Source<'_>,
        out: &mpsc::Sender<TeacherBatch>,
    ) -> Result<(), PoolError> {
        loop {
            let now = Instant::now();
            self.housekeeping(now);
            self.admit(run, source);
            run.backpressure(
                !run.plan_done && self.sched.window() == 0 && !self.sched.ready(),
                now,
                self.options.metrics.as_ref(),
            );
            self.assign(run, now)?;
            self.export_replicas();
            if run.plan_done && self.sched.is_idle() {
                return Ok(());
            }
            let outage = self.outage(run, now)?;
            let wake = [
                self.sched.next_deadline(),
                outage,
                (!self.sources.is_empty()).then_some(self.next_resolve),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + IDLE_WAKE);
            let ready = self.sched.ready();
            let wants_view =
                matches!(source, Source::Views(_)) && !run.plan_done && self.sched.window() > 0;
            tokio::select! {
                biased;
                permit = out.reserve(), if ready => {
                    let permit = permit.map_err(|_| ClientError::ConsumerGone)?;
                    if let Some(released) = self.sched.release() {
                        run.made.remove(&released.seq);
                        self.made_shapes.remove(&released.seq);
                        let span = run.spans.remove(&released.seq).unwrap_or_else(tracing::Span::none);
                        let batch = self.finish(released, span)?;
                        run.batches += 1;
                        run.samples += batch.indices.len() as u64;
                        permit.send(batch);
                    }
                }
                view = next_view(source), if wants_view => match view {
                    Some(v) => self.admit_one(run, v.batch.clone(), Some(v)),
                    None => run.plan_done = true,
                },
                Some(event) = self.events_rx.recv() => self.handle(event)?,
                () = tokio::time::sleep_until(wake.into()) => {}
            }
        }
    }

    /// The batch to hand over for a released entry: its one group's targets, or the groups'
    /// dense logits mixed.
    fn finish(
        &self,
        released: scheduler::Released<PlannedBatch, Answer>,
        span: tracing::Span,
    ) -> Result<TeacherBatch, PoolError> {
        let scheduler::Released {
            seq,
            batch,
            groups,
            parts,
        } = released;
        let answered_by: Vec<&str> = parts
            .iter()
            .map(|(_, r)| self.replicas[*r].url.as_str())
            .collect();
        let replica = answered_by.join("+");
        let (mut hints, mut gathered): (Vec<Tensor>, Vec<Tensor>) = (Vec::new(), Vec::new());
        let mut parts: Vec<SoftTargets> = parts
            .into_iter()
            .map(|(a, _)| {
                hints.extend(a.hint);
                gathered.extend(a.gathered);
                a.targets
            })
            .collect();
        // Hints and gathered log-probabilities come from one group (checked at start): its
        // answer's.
        let hint = hints.pop();
        let gathered = gathered.pop();
        let targets = if parts.len() == 1 {
            parts.pop().ok_or(MixError::Arity {
                parts: 0,
                weights: 0,
            })?
        } else {
            let dense: Vec<Tensor> = parts
                .iter()
                .map(|p| p.as_dense().map(Tensor::shallow_clone))
                .collect::<Option<_>>()
                .ok_or(MixError::Sparse)?;
            let weights: Vec<f64> = groups.iter().map(|&g| self.groups[g].weight).collect();
            SoftTargets::Dense(ensemble::mix(
                &dense,
                &weights,
                self.targets.request.temperature,
            )?)
        };
        Ok(TeacherBatch {
            batch_id: seq,
            epoch: batch.epoch,
            index: batch.index,
            indices: batch.indices,
            targets,
            hint,
            gathered,
            groups: groups
                .iter()
                .map(|&g| self.groups[g].name.clone())
                .collect(),
            replica,
            span,
        })
    }

    /// Takes batches from the source while the scheduler's window has room (made batches only
    /// as far as the loader has made them).
    fn admit(&mut self, run: &mut Run, source: &mut Source<'_>) {
        while !run.plan_done && self.sched.window() > 0 {
            let next = match source {
                Source::Plan(plan) => plan.next().map(|b| (b, None)),
                Source::Views(rx) => match rx.try_recv() {
                    Ok(v) => Some((v.batch.clone(), Some(v))),
                    Err(TryRecvError::Empty) => return,
                    Err(TryRecvError::Disconnected) => None,
                },
            };
            match next {
                Some((b, inputs)) => self.admit_one(run, b, inputs),
                None => run.plan_done = true,
            }
        }
    }

    /// Admits batch `b` (to one drawn group under [`EnsembleMode::Sample`]), with its own
    /// inputs when it was `made` with them.
    fn admit_one(&mut self, run: &mut Run, b: PlannedBatch, made: Option<ViewedBatch>) {
        let seq = match self.targets.ensemble {
            EnsembleMode::Sample if self.groups.len() > 1 => {
                let weights: Vec<f64> = self.groups.iter().map(|g| g.weight).collect();
                let g = ensemble::sample_group(self.targets.seed, b.epoch, b.index, &weights);
                self.sched.admit_to(b, &[g])
            }
            _ => self.sched.admit(b),
        };
        if let Some(made) = made {
            let size = made.inputs.size();
            let positions =
                (made.inputs.kind() == tch::Kind::Int64 && size.len() == 2).then(|| size[1]);
            let gathered = made.gather_ids.as_ref().map(Tensor::size);
            self.made_shapes.insert(
                seq,
                MadeShape {
                    positions,
                    gathered,
                },
            );
            run.made.insert(seq, made);
        }
    }

    /// Puts every part the scheduler assigns on its replica's stream.
    fn assign(&mut self, run: &mut Run, now: Instant) -> Result<(), PoolError> {
        while let Some(send) = self.sched.next_send(now) {
            let batch = self
                .sched
                .batch(send.seq)
                .expect("the scheduler sends pending batches only");
            let url = self.replicas[send.replica].url.as_str();
            let span = run.spans.entry(send.seq).or_insert_with(|| {
                tracing::info_span!(
                    "batch",
                    epoch = batch.epoch,
                    index = batch.index,
                    seq = send.seq,
                    samples = batch.indices.len()
                )
            });
            span.in_scope(|| tracing::debug!(wire = send.wire, replica = url, "sent"));
            let req = match run.made.get(&send.seq) {
                Some(made) => wire::request_made(made, send.wire, &self.targets.request)?,
                None => wire::request(&run.inputs, batch, send.wire, &self.targets.request)?,
            };
            let sent = self.replicas[send.replica]
                .tx
                .as_ref()
                .is_some_and(|tx| tx.try_send(req).is_ok());
            if !sent {
                if let Some(f) = self.sched.fail(send.replica, now) {
                    self.log_failed(send.replica, f, "its request stream is closed", now);
                }
                self.drop_connection(send.replica);
            }
        }
        Ok(())
    }

    /// Timeouts, due reconnects, due DNS lookups.
    fn housekeeping(&mut self, now: Instant) {
        for (r, f) in self.sched.expire(now) {
            self.drop_connection(r);
            let why = format!(
                "no answer within --batch-timeout ({:.1} s)",
                self.options.batch_timeout.as_secs_f64()
            );
            self.log_failed(r, f, &why, now);
        }
        for (r, generation) in self.sched.reconnects_due(now) {
            self.spawn_task(r, generation, None);
        }
        if !self.sources.is_empty() && now >= self.next_resolve {
            self.next_resolve = now + self.options.resolve_interval;
            for (i, src) in self.sources.iter_mut().enumerate() {
                if src.resolving {
                    continue;
                }
                src.resolving = true;
                let lookup = self.resolver.resolve(&src.host, src.port);
                let events = self.events_tx.clone();
                tokio::spawn(async move {
                    let result = lookup.await;
                    let _ = events.send(Event::Resolved { source: i, result }).await;
                });
            }
        }
    }

    /// The outage clock: logs while a group with work has no replica up, fails after
    /// `teacher_wait`; returns when it next needs to act.
    fn outage(&mut self, run: &mut Run, now: Instant) -> Result<Option<Instant>, PoolError> {
        let Some((g, since)) = self.sched.starving(now) else {
            run.last_wait_log = None;
            return Ok(None);
        };
        let waited = now.saturating_duration_since(since);
        let urls = self.replica_urls(g).join(",");
        if waited >= self.options.teacher_wait {
            return Err(PoolError::NoTeacher {
                waited_s: waited.as_secs_f64(),
                group: self.groups[g].name.clone(),
                urls,
            });
        }
        let mut log_at = run
            .last_wait_log
            .map_or(since + WAIT_LOG_AFTER, |t| t + WAIT_LOG_INTERVAL);
        if now >= log_at {
            run.last_wait_log = Some(now);
            log_at = now + WAIT_LOG_INTERVAL;
            tracing::warn!(
                group = %self.groups[g].name, %urls,
                waited_s = waited.as_secs(), limit_s = self.options.teacher_wait.as_secs(),
                "no teacher replica reachable; training waits"
            );
        }
        Ok(Some(log_at.min(since + self.options.teacher_wait)))
    }

    fn log_failed(&self, r: ReplicaId, f: Failed, reason: &str, now: Instant) {
        let rep = &self.replicas[r];
        if let Some(m) = &self.options.metrics {
            let group = &self.groups[self.sched.group_of(r)].name;
            m.resent(group, &rep.url, f.requeued as u64);
        }
        let retry_in_ms = f.retry_at.saturating_duration_since(now).as_millis() as u64;
        if f.was_up || f.requeued > 0 {
            tracing::warn!(
                group = %self.groups[self.sched.group_of(r)].name, url = %rep.url, reason,
                resent = f.requeued, retry_in_ms,
                "teacher replica failed; its outstanding batches go to the other replicas"
            );
        } else {
            tracing::debug!(url = %rep.url, reason, retry_in_ms, "teacher replica not available");
        }
    }

    fn handle(&mut self, event: Event) -> Result<(), PoolError> {
        let now = Instant::now();
        match event {
            Event::Up {
                replica,
                generation,
                tx,
                instance_id,
            } => {
                if self.sched.generation(replica) != generation
                    || self.sched.state(replica) != ReplicaState::Connecting
                {
                    return Ok(());
                }
                if self.merge_alias(replica, &instance_id) {
                    return Ok(());
                }
                if let Some(rejoined) = self.sched.connected(replica, generation) {
                    let rep = &mut self.replicas[replica];
                    rep.tx = Some(tx);
                    rep.instance_id = instance_id;
                    if rejoined {
                        let g = self.sched.group_of(replica);
                        tracing::info!(group = %self.groups[g].name, url = %self.replicas[replica].url, "teacher replica (re)joined");
                    }
                }
            }
            Event::Failed {
                replica,
                generation,
                reason,
                refused,
            } => {
                if let Some(f) = self.sched.failed(replica, generation, now) {
                    self.drop_connection(replica);
                    if refused {
                        let g = self.sched.group_of(replica);
                        tracing::error!(group = %self.groups[g].name, url = %self.replicas[replica].url, "teacher replica refused: {reason}");
                    }
                    self.log_failed(replica, f, &reason, now);
                }
            }
            Event::Response {
                replica,
                generation,
                msg,
                at,
            } => self.response(replica, generation, *msg, at)?,
            Event::Resolved { source, result } => self.resolved(source, result, now),
        }
        Ok(())
    }

    fn response(
        &mut self,
        replica: ReplicaId,
        generation: u64,
        msg: LogitsResponse,
        at: Instant,
    ) -> Result<(), PoolError> {
        let wire_id = msg.batch_id;
        let url = self.replicas[replica].url.as_str();
        let groups = &self.groups;
        let positions = self.expect.positions();
        let made_shapes = &self.made_shapes;
        let top_k = self.targets.request.top_k;
        let hint_output = self.targets.request.hint_output.as_deref();
        let result = msg.result;
        let outputs = msg.outputs;
        let gathered = msg.gathered;
        let answered = self.sched.answer(replica, generation, wire_id, at, |f| {
            let made = made_shapes.get(&f.seq);
            let to = Answering {
                url,
                wire: wire_id,
                seq: f.seq,
                batch: f.batch,
                num_logits: groups[f.group].reference.num_logits,
                positions: made.map_or(positions, |m| m.positions),
                top_k,
            };
            Ok::<_, ClientError>(match wire::decode(result, to)? {
                Decoded::Targets(targets) => {
                    let rows = f.batch.indices.len() as i64;
                    let hint = hint_output
                        .map(|name| wire::decode_hint(&outputs, name, rows, url, wire_id))
                        .transpose()?;
                    let gathered = made
                        .and_then(|m| m.gathered.as_deref())
                        .map(|shape| wire::decode_gathered(gathered.as_ref(), shape, url, wire_id))
                        .transpose()?;
                    Reply::Payload(Answer {
                        targets,
                        hint,
                        gathered,
                    })
                }
                Decoded::Retry { code, message } => {
                    tracing::warn!(url, ?code, %message, "teacher could not answer a batch now; re-sending it");
                    Reply::Retry
                }
            })
        })?;
        let rep = &mut self.replicas[replica];
        match answered {
            Answered::Late => {
                tracing::debug!(url = %rep.url, wire = wire_id, "late or unknown answer discarded");
            }
            Answered::Requeued { .. } => {
                if let Some(m) = &self.options.metrics {
                    let group = &self.groups[self.sched.group_of(replica)].name;
                    m.resent(group, &rep.url, 1);
                }
            }
            Answered::Used { latency, .. } => {
                if let Some(m) = &self.options.metrics {
                    let group = &self.groups[self.sched.group_of(replica)].name;
                    m.answered(group, &rep.url, latency);
                }
                let latency_ms = latency.as_secs_f64() * 1e3;
                rep.latency_ms = if rep.latency_ms == 0.0 {
                    latency_ms
                } else {
                    0.8 * rep.latency_ms + 0.2 * latency_ms
                };
                tracing::debug!(
                    url = %rep.url, latency_ms = format!("{latency_ms:.1}"),
                    mean_latency_ms = format!("{:.1}", rep.latency_ms),
                    outstanding = self.sched.in_flight(replica),
                    server_queue_depth = msg.timing.as_ref().map_or(0, |t| t.stream_queue_depth),
                    server_queue_us = msg.timing.as_ref().map_or(0, |t| t.queue_us),
                    "teacher answer"
                );
            }
        }
        Ok(())
    }

    /// Applies a new resolution of `dns://` source `source`: adds new addresses as replicas
    /// and retires replicas whose address vanished (their batches go to the others).
    fn resolved(&mut self, source: usize, result: std::io::Result<Vec<SocketAddr>>, now: Instant) {
        let Some(src) = self.sources.get_mut(source) else {
            return;
        };
        src.resolving = false;
        let (g, name) = (src.group, src.url());
        let addrs = match result {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(url = %name, error = %e, "re-resolving failed; keeping the current replicas");
                return;
            }
        };
        let tls = self.options.client.security.tls();
        let current: Vec<String> = addrs.iter().map(|a| address_url(a, tls)).collect();
        for url in &current {
            let known = self.sched.replicas_of(g).iter().any(|&r| {
                self.replicas[r].url == *url
                    && (self.sched.state(r) != ReplicaState::Retired
                        || self.replicas[r].alias_of.is_some())
            });
            if known {
                continue;
            }
            tracing::info!(url = %name, replica = %url, "new address: replica added");
            match self
                .sched
                .replicas_of(g)
                .iter()
                .copied()
                .find(|&r| self.replicas[r].url == *url)
            {
                Some(r) => {
                    self.sched.revive(r, now);
                    self.replicas[r].source = Some(source);
                }
                None => {
                    self.push_replica(g, url.clone(), Some(source), now);
                }
            }
        }
        let vanished: Vec<ReplicaId> = self
            .sched
            .replicas_of(g)
            .iter()
            .copied()
            .filter(|&r| {
                self.replicas[r].source == Some(source)
                    && self.sched.state(r) != ReplicaState::Retired
                    && !current.contains(&self.replicas[r].url)
            })
            .collect();
        for r in vanished {
            let requeued = self.sched.retire(r).unwrap_or(0);
            self.drop_connection(r);
            tracing::info!(url = %name, replica = %self.replicas[r].url, resent = requeued, "address vanished: replica retired");
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for rep in &mut self.replicas {
            if let Some(t) = rep.task.take() {
                t.abort();
            }
        }
    }
}
