//! A pool of teacher replicas (and groups of different teachers): load balancing, failover with
//! exactly-once batches, consistency checks, and waiting out a teacher outage.
//!
//! # Model
//!
//! - A *group* is a set of replicas of one teacher (same fingerprint); `--teacher URL` (repeated)
//!   makes one group, `--teacher-group NAME=URL,URL` one group each (an ensemble, see
//!   [`crate::ensemble`]). Every batch is answered by exactly one replica of every group.
//! - Each replica has one gRPC channel (HTTP/2 keepalive on) and one `StreamLogits` stream, owned
//!   by a task that connects, checks, opens the stream and forwards every response to the pool's
//!   event loop through a bounded channel. tonic types stay here and in [`crate::client`].
//! - Scheduling: a batch (part) goes to the replica of its group with the fewest batches
//!   outstanding, ties broken round-robin; a replica never has more than `prefetch` outstanding.
//!   Batches are handed to the training loop in schedule order (the loop checks each against its
//!   own schedule), so a slow replica delays only its own batches.
//! - Exactly once: every send of a part gets a fresh wire `batch_id`; the pool remembers which
//!   replica (and which connection generation) it went to. When a replica's stream breaks, or one
//!   of its batches is unanswered after `batch_timeout`, the replica is dropped (stream closed,
//!   task aborted), its outstanding parts are re-queued at the front, and any answer carrying a
//!   forgotten wire id is discarded. A batch is handed over once, when every part has arrived.
//! - Consistency: the first reachable replica of a group is its reference; every other replica's
//!   `GetModelInfo` must match its fingerprint, input shape/dtype and number of logits, or it is
//!   refused with a log line naming both fingerprints. Groups must agree on input shape and
//!   number of logits (each is checked against the data and the student).
//! - Recovery: a failed or refused replica is retried with exponential backoff and jitter; it
//!   rejoins after its health check reports `SERVING` and its fingerprint matches.
//! - Outage: while some group has work and no replica up, the pool waits, logging every
//!   [`WAIT_LOG_INTERVAL`], for at most `teacher_wait`, then fails with [`PoolError::NoTeacher`]
//!   (the caller checkpoints the student).

use crate::client::{self, ClientError, ClientOptions, TeacherClient, TeacherInfo};
use crate::ensemble::{self, MixError};
use crate::schedule::{PlannedBatch, TeacherBatch};
use distill_proto::codec;
use distill_proto::v1::{LogitsRequest, LogitsResponse, logits_response};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tch::{Kind, Tensor};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// How often the pool logs while no replica of a group is reachable.
pub const WAIT_LOG_INTERVAL: Duration = Duration::from_secs(5);
/// Period of the pool's housekeeping (timeouts, reconnects, waiting).
const TICK: Duration = Duration::from_millis(50);
/// Events buffered between the replica tasks and the pool's loop.
const EVENT_BUFFER: usize = 64;

/// gRPC codes of a per-batch error after which the batch is re-sent (to any replica) rather than
/// failing the run: `CANCELLED`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED`,
/// `UNAVAILABLE`.
const RETRIABLE_CODES: [i32; 5] = [1, 4, 8, 10, 14];

/// A pending DNS lookup: every address of a name, or the lookup's error.
pub type Resolving = Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send>>;

/// Looks up the addresses behind a `dns://NAME:PORT` replica URL. The pool calls it at start and
/// every `resolve_interval`; tests inject their own.
pub trait Resolver: Send + Sync + std::fmt::Debug {
    /// Every address of `host`, each with `port`.
    fn resolve(&self, host: &str, port: u16) -> Resolving;
}

/// The system resolver (`getaddrinfo` through [`tokio::net::lookup_host`]: `/etc/hosts`, DNS,
/// e.g. a Kubernetes headless service, which answers with one address per ready pod).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let target = format!("{host}:{port}");
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

/// Splits `dns://NAME:PORT` into its name and port (`None` for any other URL).
pub fn parse_dns_url(url: &str) -> Option<(String, u16)> {
    let rest = url.strip_prefix("dns://")?;
    let (host, port) = rest.trim_end_matches('/').rsplit_once(':')?;
    if host.is_empty() {
        return None;
    }
    Some((host.to_string(), port.parse().ok()?))
}

/// The replica URL of one resolved address: `http://IP:PORT` (`http://[IPv6]:PORT`).
pub fn address_url(addr: &SocketAddr) -> String {
    format!("http://{addr}")
}

/// One group of replicas of the same teacher.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupSpec {
    /// Name in logs and the report (`teacher` for plain `--teacher` flags).
    pub name: String,
    /// Weight of the group's probabilities in the ensemble mixture (normalised over groups).
    pub weight: f64,
    /// Replica URLs: `http://HOST:PORT`, or `dns://NAME:PORT` for every address of NAME
    /// (re-resolved every `resolve_interval`).
    pub urls: Vec<String>,
}

/// Settings of the pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// Batches in flight per replica (≥ 1).
    pub prefetch: usize,
    /// A batch unanswered this long marks its replica failed and moves its batches.
    pub batch_timeout: Duration,
    /// Longest the pool waits with no replica of a group reachable before giving up.
    pub teacher_wait: Duration,
    /// Connection settings (connect timeout, HTTP/2 keepalive).
    pub client: ClientOptions,
    /// First reconnect delay after a failure; doubles per failed attempt.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Distillation temperature T (for mixing the groups of an ensemble).
    pub temperature: f64,
    /// How often `dns://` names are resolved again (replicas added and retired accordingly).
    pub resolve_interval: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            prefetch: 4,
            batch_timeout: Duration::from_secs(30),
            teacher_wait: Duration::from_secs(300),
            client: ClientOptions::default(),
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_secs(10),
            temperature: 1.0,
            resolve_interval: Duration::from_secs(30),
        }
    }
}

/// What every group's teacher must fit: the data and the student.
#[derive(Debug, Clone, PartialEq)]
pub struct Expect {
    /// Per-sample input shape of the data.
    pub sample_shape: Vec<i64>,
    /// Number of classes of the data and the student.
    pub num_classes: i64,
    /// Samples per batch.
    pub batch_size: usize,
}

/// Why the pool cannot serve batches.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// Connecting, a fatal per-batch error, a protocol violation, or the consumer leaving.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// No replica of a group was reachable for `teacher_wait`.
    #[error(
        "no teacher replica reachable for {waited_s:.0} s (--teacher-wait) in group {group} ({urls})"
    )]
    NoTeacher {
        /// Seconds waited.
        waited_s: f64,
        /// The group without replicas.
        group: String,
        /// Its replica URLs.
        urls: String,
    },
    /// Mixing the groups' answers failed.
    #[error("ensemble: {0}")]
    Mix(#[from] MixError),
}

/// Counters of one [`Pool::run`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunStats {
    /// Batches handed to the consumer.
    pub batches: u64,
    /// Samples handed to the consumer.
    pub samples: u64,
    /// Batch parts sent again after their replica failed or timed out.
    pub resent: u64,
    /// Answers discarded because their batch had been re-sent elsewhere.
    pub late_discarded: u64,
}

/// Per-replica counters, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStats {
    /// Replica URL.
    pub url: String,
    /// Its group's name.
    pub group: String,
    /// Batches it answered (and whose answers were used), over the pool's life.
    pub answered: u64,
    /// Whether it is connected now.
    pub up: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Connecting, checking, opening its stream.
    Connecting,
    /// Stream open; takes batches.
    Up,
    /// Failed or refused; retried at `retry_at`.
    Down,
    /// Removed from the pool (e.g. vanished from DNS); never retried.
    Retired,
}

#[derive(Debug)]
struct Replica {
    url: String,
    group: usize,
    state: State,
    /// Connection generation: events of older generations are ignored.
    generation: u64,
    /// Consecutive failed attempts (0 while up).
    attempt: u32,
    retry_at: Instant,
    answered: u64,
    /// Wire ids sent on the current stream and not answered, with their send time.
    outstanding: HashMap<u64, Instant>,
    tx: Option<mpsc::Sender<LogitsRequest>>,
    task: Option<AbortHandle>,
    /// Moving average of the answer latency (ms).
    latency_ms: f64,
    /// The `dns://` source it was resolved from, if any (index into `Pool::sources`).
    source: Option<usize>,
}

/// A `dns://NAME:PORT` replica source of a group.
#[derive(Debug)]
struct DnsSource {
    group: usize,
    host: String,
    port: u16,
    resolving: bool,
}

#[derive(Debug)]
struct Group {
    name: String,
    weight: f64,
    reference: TeacherInfo,
    replicas: Vec<usize>,
    cursor: usize,
    queue: VecDeque<u64>,
}

/// Where a wire id was sent.
#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: u64,
    group: usize,
    replica: usize,
    generation: u64,
}

#[derive(Debug)]
struct Entry {
    planned: PlannedBatch,
    parts: Vec<Option<Tensor>>,
    answered_by: Vec<String>,
}

#[derive(Debug)]
enum Event {
    Up {
        replica: usize,
        generation: u64,
        tx: mpsc::Sender<LogitsRequest>,
    },
    Failed {
        replica: usize,
        generation: u64,
        reason: String,
        refused: bool,
    },
    Response {
        replica: usize,
        generation: u64,
        msg: Box<LogitsResponse>,
        at: Instant,
    },
    Resolved {
        source: usize,
        result: std::io::Result<Vec<SocketAddr>>,
    },
}

/// Replicas of one or more teachers, and the loop that streams batches to them.
#[derive(Debug)]
pub struct Pool {
    options: PoolOptions,
    expect: Expect,
    groups: Vec<Group>,
    replicas: Vec<Replica>,
    events_tx: mpsc::Sender<Event>,
    events_rx: mpsc::Receiver<Event>,
    next_wire: u64,
    next_seq: u64,
    resolver: Arc<dyn Resolver>,
    sources: Vec<DnsSource>,
    last_resolve: Instant,
}

/// The first difference between a replica's `ModelInfo` and its group's reference, if any.
pub fn inconsistency(reference: &TeacherInfo, got: &TeacherInfo) -> Option<String> {
    if got.fingerprint != reference.fingerprint {
        return Some(format!(
            "fingerprint {} differs from the group's {}",
            got.fingerprint, reference.fingerprint
        ));
    }
    if got.input_shape != reference.input_shape || got.input_dtype != reference.input_dtype {
        return Some(format!(
            "input {:?} {} differs from the group's {:?} {} (fingerprints {} and {})",
            got.input_shape,
            codec::dtype_name(got.input_dtype),
            reference.input_shape,
            codec::dtype_name(reference.input_dtype),
            got.fingerprint,
            reference.fingerprint
        ));
    }
    if got.num_logits != reference.num_logits {
        return Some(format!(
            "{} logits differ from the group's {} (fingerprints {} and {})",
            got.num_logits, reference.num_logits, got.fingerprint, reference.fingerprint
        ));
    }
    None
}

/// The reconnect delay after `attempt` consecutive failures: `base · 2^(attempt-1)`, capped at
/// `max`, scaled by a random factor in [0.5, 1) (jitter, so replicas restarted together are not
/// hit by every student at once).
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    exp.min(max).mul_f64(0.5 + rand::random::<f64>() * 0.5)
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
        let mut pool = Pool {
            options,
            expect,
            groups: Vec::new(),
            replicas: Vec::new(),
            events_tx,
            events_rx,
            next_wire: 0,
            next_seq: 0,
            resolver,
            sources: Vec::new(),
            last_resolve: Instant::now(),
        };
        for spec in specs {
            pool.connect_group(spec).await?;
        }
        Ok(pool)
    }

    async fn connect_group(&mut self, mut spec: GroupSpec) -> Result<(), PoolError> {
        let g = self.groups.len();
        // Expand dns:// names into one URL per address, remembering where each came from.
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
                    let mut addrs: Vec<String> = addrs.iter().map(address_url).collect();
                    addrs.sort();
                    addrs.dedup();
                    tracing::info!(%url, addresses = ?addrs, "resolved");
                    let source = self.sources.len();
                    self.sources.push(DnsSource {
                        group: g,
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
        spec.urls = urls.iter().map(|(u, _)| u.clone()).collect();
        let mut attempts = tokio::task::JoinSet::new();
        for (i, url) in spec.urls.iter().enumerate() {
            let (url, opts) = (url.clone(), self.options.client.clone());
            attempts.spawn(async move { (i, TeacherClient::connect(&url, &opts).await) });
        }
        let mut results: Vec<Option<Result<TeacherClient, ClientError>>> =
            (0..spec.urls.len()).map(|_| None).collect();
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
            let first = results.into_iter().flatten().find_map(Result::err);
            return Err(first
                .unwrap_or_else(|| ClientError::Unreachable {
                    url: spec.urls.join(","),
                    reason: "no replica given".into(),
                })
                .into());
        };
        let e = &self.expect;
        reference.check(&ref_url, &e.sample_shape, e.num_classes, e.batch_size)?;
        tracing::info!(
            group = %spec.name, url = %ref_url, name = %reference.name,
            fingerprint = %reference.fingerprint, device = %reference.device,
            input_shape = ?reference.input_shape, num_logits = reference.num_logits,
            "teacher group reference"
        );
        self.groups.push(Group {
            name: spec.name.clone(),
            weight: spec.weight,
            reference: reference.clone(),
            replicas: Vec::new(),
            cursor: 0,
            queue: VecDeque::new(),
        });
        for ((url, source), result) in urls.iter().zip(results) {
            let r = self.push_replica(g, url.clone());
            self.replicas[r].source = *source;
            match result {
                Some(Ok(client)) => match inconsistency(&reference, client.info()) {
                    None => self.start_replica(r, Some(client)),
                    Some(why) => {
                        tracing::error!(
                            group = %spec.name, %url, fingerprint = %client.info().fingerprint,
                            reference = %reference.fingerprint,
                            "teacher replica refused: {why} (replica fingerprint {}, group fingerprint {})",
                            client.info().fingerprint, reference.fingerprint
                        );
                        self.mark_down(r);
                    }
                },
                Some(Err(e)) => {
                    tracing::warn!(group = %spec.name, %url, error = %e, "teacher replica unreachable; retrying in the background");
                    self.mark_down(r);
                }
                None => self.mark_down(r),
            }
        }
        Ok(())
    }

    fn push_replica(&mut self, group: usize, url: String) -> usize {
        let r = self.replicas.len();
        self.replicas.push(Replica {
            url,
            group,
            state: State::Down,
            generation: 0,
            attempt: 0,
            retry_at: Instant::now(),
            answered: 0,
            outstanding: HashMap::new(),
            tx: None,
            task: None,
            latency_ms: 0.0,
            source: None,
        });
        self.groups[group].replicas.push(r);
        r
    }

    /// Adds a replica to group `group` (index in the order the groups were given); it is
    /// connected, checked and used from the pool's next housekeeping tick. Returns `false` if
    /// the URL is already in that group (a retired one is revived).
    pub fn add_replica(&mut self, group: usize, url: &str) -> bool {
        if group >= self.groups.len() {
            return false;
        }
        if let Some(&r) = self.groups[group]
            .replicas
            .iter()
            .find(|&&r| self.replicas[r].url == url)
        {
            if self.replicas[r].state == State::Retired {
                self.replicas[r].state = State::Down;
                self.replicas[r].attempt = 0;
                self.replicas[r].retry_at = Instant::now();
                return true;
            }
            return false;
        }
        tracing::info!(group = %self.groups[group].name, url, "teacher replica added");
        self.push_replica(group, url.to_string());
        true
    }

    /// Removes the replica `url` of group `group` from service: its outstanding batches go to
    /// the others and it is not retried. Returns whether it was in the group.
    pub fn retire_replica(&mut self, group: usize, url: &str) -> bool {
        let Some(&r) = self.groups.get(group).and_then(|g| {
            g.replicas
                .iter()
                .find(|&&r| self.replicas[r].url == url && self.replicas[r].state != State::Retired)
        }) else {
            return false;
        };
        tracing::info!(group = %self.groups[group].name, url, "teacher replica retired");
        // Outside a run nothing is outstanding; inside one, see `Pool::retire_in_run`.
        self.take_down(r);
        self.replicas[r].state = State::Retired;
        true
    }

    /// The groups' names and URLs of their replicas (retired ones left out).
    pub fn replica_urls(&self, group: usize) -> Vec<String> {
        self.groups.get(group).map_or_else(Vec::new, |g| {
            g.replicas
                .iter()
                .filter(|&&r| self.replicas[r].state != State::Retired)
                .map(|&r| self.replicas[r].url.clone())
                .collect()
        })
    }

    /// The reference `ModelInfo` of each group, in group order.
    pub fn references(&self) -> Vec<&TeacherInfo> {
        self.groups.iter().map(|g| &g.reference).collect()
    }

    /// The group names, in order.
    pub fn group_names(&self) -> Vec<&str> {
        self.groups.iter().map(|g| g.name.as_str()).collect()
    }

    /// Per-replica counters.
    pub fn replica_stats(&self) -> Vec<ReplicaStats> {
        self.replicas
            .iter()
            .map(|r| ReplicaStats {
                url: r.url.clone(),
                group: self.groups[r.group].name.clone(),
                answered: r.answered,
                up: r.state == State::Up,
            })
            .collect()
    }

    fn mark_down(&mut self, r: usize) {
        let opts = &self.options;
        let rep = &mut self.replicas[r];
        rep.state = State::Down;
        rep.attempt = rep.attempt.saturating_add(1);
        rep.retry_at = Instant::now() + backoff(rep.attempt, opts.backoff_base, opts.backoff_max);
    }

    /// Starts the task owning replica `r`'s connection and stream (reusing `client` if given).
    fn start_replica(&mut self, r: usize, client: Option<TeacherClient>) {
        let rep = &mut self.replicas[r];
        rep.generation += 1;
        rep.state = State::Connecting;
        let task = ReplicaTask {
            replica: r,
            generation: rep.generation,
            url: rep.url.clone(),
            client,
            reference: self.groups[rep.group].reference.clone(),
            options: self.options.client.clone(),
            prefetch: self.options.prefetch,
            events: self.events_tx.clone(),
        };
        rep.task = Some(tokio::spawn(task.run()).abort_handle());
    }

    /// Drops replica `r`'s stream and task; returns the wire ids it had outstanding.
    fn take_down(&mut self, r: usize) -> Vec<u64> {
        let rep = &mut self.replicas[r];
        rep.tx = None;
        if let Some(t) = rep.task.take() {
            t.abort();
        }
        rep.generation += 1;
        rep.outstanding.drain().map(|(w, _)| w).collect()
    }

    /// Streams `plan` to the replicas and hands the answered batches to `out` in plan order.
    /// `inputs` is the whole dataset, `f32 [N, ...sample_shape]` on the CPU; each batch sends
    /// the rows named by its indices. Returns when every batch has been handed over.
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
        out: mpsc::Sender<TeacherBatch>,
    ) -> Result<RunStats, PoolError>
    where
        I: IntoIterator<Item = PlannedBatch>,
    {
        let mut plan = plan.into_iter();
        let mut run = Run {
            plan_done: false,
            inputs,
            pending: BTreeMap::new(),
            slots: HashMap::new(),
            next_deliver: self.next_seq,
            stats: RunStats::default(),
            waiting_since: None,
            last_wait_log: None,
        };
        let result = self.drive(&mut run, &mut plan, &out).await;
        // Forget what is still outstanding (an aborted run): answers to it will be discarded.
        for g in &mut self.groups {
            g.queue.clear();
        }
        for rep in &mut self.replicas {
            rep.outstanding.clear();
        }
        tracing::debug!(stats = ?run.stats, "pool run done");
        result.map(|()| run.stats)
    }

    async fn drive(
        &mut self,
        run: &mut Run,
        plan: &mut dyn Iterator<Item = PlannedBatch>,
        out: &mpsc::Sender<TeacherBatch>,
    ) -> Result<(), PoolError> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.admit(run, plan);
            self.assign(run)?;
            if run.plan_done && run.pending.is_empty() {
                return Ok(());
            }
            let ready = run
                .pending
                .get(&run.next_deliver)
                .is_some_and(|e| e.parts.iter().all(Option::is_some));
            tokio::select! {
                biased;
                permit = out.reserve(), if ready => {
                    let permit = permit.map_err(|_| ClientError::ConsumerGone)?;
                    let Some(entry) = run.pending.remove(&run.next_deliver) else { continue };
                    run.next_deliver += 1;
                    let batch = self.finish(run.next_deliver - 1, entry)?;
                    run.stats.batches += 1;
                    run.stats.samples += batch.indices.len() as u64;
                    permit.send(batch);
                }
                Some(event) = self.events_rx.recv() => self.handle(run, event)?,
                _ = tick.tick() => self.housekeeping(run)?,
            }
        }
    }

    /// The batch to hand over for a fully answered entry.
    fn finish(&self, seq: u64, entry: Entry) -> Result<TeacherBatch, PoolError> {
        let Entry {
            planned,
            parts,
            answered_by,
        } = entry;
        let parts: Vec<Tensor> = parts.into_iter().flatten().collect();
        let weights: Vec<f64> = self.groups.iter().map(|g| g.weight).collect();
        let logits = ensemble::mix(&parts, &weights, self.options.temperature)?;
        Ok(TeacherBatch {
            batch_id: seq,
            epoch: planned.epoch,
            index: planned.index,
            indices: planned.indices,
            logits,
            replica: answered_by.join("+"),
        })
    }

    fn up_count(&self, g: usize) -> usize {
        self.groups[g]
            .replicas
            .iter()
            .filter(|&&r| self.replicas[r].state == State::Up)
            .count()
    }

    /// Takes batches from the plan while fewer than `prefetch × replicas up` are pending.
    fn admit(&mut self, run: &mut Run, plan: &mut dyn Iterator<Item = PlannedBatch>) {
        let up = (0..self.groups.len())
            .map(|g| self.up_count(g))
            .min()
            .unwrap_or(0)
            .max(1);
        let window = self.options.prefetch * up;
        while !run.plan_done && run.pending.len() < window {
            let Some(planned) = plan.next() else {
                run.plan_done = true;
                break;
            };
            let seq = self.next_seq;
            self.next_seq += 1;
            let n = self.groups.len();
            run.pending.insert(
                seq,
                Entry {
                    planned,
                    parts: (0..n).map(|_| None).collect(),
                    answered_by: vec![String::new(); n],
                },
            );
            for g in &mut self.groups {
                g.queue.push_back(seq);
            }
        }
    }

    /// The replica of group `g` to send to next: up, below `prefetch`, fewest outstanding, ties
    /// round-robin from the group's cursor.
    fn pick(&mut self, g: usize) -> Option<usize> {
        let group = &self.groups[g];
        let n = group.replicas.len();
        let mut best: Option<(usize, usize)> = None; // (position, outstanding)
        for k in 0..n {
            let pos = (group.cursor + k) % n;
            let rep = &self.replicas[group.replicas[pos]];
            if rep.state != State::Up || rep.outstanding.len() >= self.options.prefetch {
                continue;
            }
            if best.is_none_or(|(_, o)| rep.outstanding.len() < o) {
                best = Some((pos, rep.outstanding.len()));
            }
        }
        let (pos, _) = best?;
        self.groups[g].cursor = (pos + 1) % n;
        Some(self.groups[g].replicas[pos])
    }

    /// Sends queued parts to replicas with room.
    fn assign(&mut self, run: &mut Run) -> Result<(), PoolError> {
        for g in 0..self.groups.len() {
            while let Some(&seq) = self.groups[g].queue.front() {
                let Some(entry) = run.pending.get(&seq) else {
                    self.groups[g].queue.pop_front();
                    continue;
                };
                let Some(r) = self.pick(g) else { break };
                self.groups[g].queue.pop_front();
                let wire = self.next_wire;
                self.next_wire += 1;
                let req = client::request(&run.inputs, &entry.planned, wire)?;
                let sent = self.replicas[r]
                    .tx
                    .as_ref()
                    .is_some_and(|tx| tx.try_send(req).is_ok());
                if !sent {
                    self.groups[g].queue.push_front(seq);
                    self.fail(run, r, "its request stream is closed");
                    continue;
                }
                let rep = &mut self.replicas[r];
                rep.outstanding.insert(wire, Instant::now());
                run.slots.insert(
                    wire,
                    Slot {
                        seq,
                        group: g,
                        replica: r,
                        generation: rep.generation,
                    },
                );
            }
        }
        Ok(())
    }

    /// Marks replica `r` failed: re-queues its outstanding parts and schedules a reconnect.
    fn fail(&mut self, run: &mut Run, r: usize, reason: &str) {
        if !matches!(self.replicas[r].state, State::Up | State::Connecting) {
            return;
        }
        let wires = self.take_down(r);
        let mut seqs: Vec<u64> = wires
            .iter()
            .filter_map(|w| run.slots.remove(w).map(|s| s.seq))
            .collect();
        seqs.sort_unstable();
        let g = self.replicas[r].group;
        for seq in seqs.iter().rev() {
            if !self.groups[g].queue.contains(seq) {
                self.groups[g].queue.push_front(*seq);
            }
        }
        run.stats.resent += seqs.len() as u64;
        self.mark_down(r);
        let rep = &self.replicas[r];
        tracing::warn!(
            group = %self.groups[g].name, url = %rep.url, reason, resent = seqs.len(),
            retry_in_ms = rep.retry_at.saturating_duration_since(Instant::now()).as_millis() as u64,
            "teacher replica failed; its outstanding batches go to the other replicas"
        );
    }

    fn handle(&mut self, run: &mut Run, event: Event) -> Result<(), PoolError> {
        match event {
            Event::Up {
                replica,
                generation,
                tx,
            } => {
                let rep = &mut self.replicas[replica];
                if rep.generation != generation || rep.state != State::Connecting {
                    return Ok(());
                }
                rep.state = State::Up;
                rep.tx = Some(tx);
                if rep.attempt > 0 {
                    tracing::info!(group = %self.groups[rep.group].name, url = %rep.url, "teacher replica (re)joined");
                }
                rep.attempt = 0;
            }
            Event::Failed {
                replica,
                generation,
                reason,
                refused,
            } => {
                if self.replicas[replica].generation != generation {
                    return Ok(());
                }
                if refused {
                    let rep = &self.replicas[replica];
                    tracing::error!(group = %self.groups[rep.group].name, url = %rep.url, "teacher replica refused: {reason}");
                }
                if self.replicas[replica].state == State::Connecting
                    && self.replicas[replica].outstanding.is_empty()
                {
                    self.take_down(replica);
                    self.mark_down(replica);
                    let rep = &self.replicas[replica];
                    tracing::debug!(url = %rep.url, %reason, attempt = rep.attempt, "teacher replica not available");
                } else {
                    self.fail(run, replica, &reason);
                }
            }
            Event::Response {
                replica,
                generation,
                msg,
                at,
            } => self.response(run, replica, generation, *msg, at)?,
            Event::Resolved { source, result } => self.resolved(run, source, result),
        }
        Ok(())
    }

    /// Applies a new resolution of `dns://` source `source`: adds new addresses as replicas
    /// and retires replicas whose address vanished (their batches go to the others).
    fn resolved(&mut self, run: &mut Run, source: usize, result: std::io::Result<Vec<SocketAddr>>) {
        let Some(src) = self.sources.get_mut(source) else {
            return;
        };
        src.resolving = false;
        let (g, name) = (src.group, format!("dns://{}:{}", src.host, src.port));
        let addrs = match result {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(url = %name, error = %e, "re-resolving failed; keeping the current replicas");
                return;
            }
        };
        let now: Vec<String> = addrs.iter().map(address_url).collect();
        for url in &now {
            let known = self.groups[g]
                .replicas
                .iter()
                .any(|&r| self.replicas[r].url == *url && self.replicas[r].state != State::Retired);
            if !known {
                tracing::info!(url = %name, replica = %url, "new address: replica added");
                if self.add_replica(g, url)
                    && let Some(&r) = self.groups[g].replicas.last()
                    && self.replicas[r].url == *url
                {
                    self.replicas[r].source = Some(source);
                }
            }
        }
        let vanished: Vec<usize> = self.groups[g]
            .replicas
            .iter()
            .copied()
            .filter(|&r| {
                let rep = &self.replicas[r];
                rep.source == Some(source) && rep.state != State::Retired && !now.contains(&rep.url)
            })
            .collect();
        for r in vanished {
            tracing::info!(url = %name, replica = %self.replicas[r].url, "address vanished: replica retired");
            self.fail(run, r, "its address vanished from DNS");
            self.take_down(r);
            self.replicas[r].state = State::Retired;
        }
    }

    fn response(
        &mut self,
        run: &mut Run,
        replica: usize,
        generation: u64,
        msg: LogitsResponse,
        at: Instant,
    ) -> Result<(), PoolError> {
        let wire = msg.batch_id;
        let slot = match run.slots.get(&wire) {
            Some(s) if s.replica == replica && s.generation == generation => *s,
            _ => {
                run.stats.late_discarded += 1;
                tracing::debug!(url = %self.replicas[replica].url, wire, "late or unknown answer discarded");
                return Ok(());
            }
        };
        run.slots.remove(&wire);
        let rep = &mut self.replicas[replica];
        let sent = rep.outstanding.remove(&wire);
        let latency_ms = sent.map_or(0.0, |s| (at - s).as_secs_f64() * 1e3);
        rep.latency_ms = if rep.latency_ms == 0.0 {
            latency_ms
        } else {
            0.8 * rep.latency_ms + 0.2 * latency_ms
        };
        tracing::debug!(
            url = %rep.url, latency_ms = format!("{latency_ms:.1}"),
            mean_latency_ms = format!("{:.1}", rep.latency_ms),
            outstanding = rep.outstanding.len(),
            server_queue_depth = msg.timing.as_ref().map_or(0, |t| t.stream_queue_depth),
            server_queue_us = msg.timing.as_ref().map_or(0, |t| t.queue_us),
            "teacher answer"
        );
        let Some(entry) = run.pending.get_mut(&slot.seq) else {
            return Ok(());
        };
        let wire_tensor = match msg.result {
            Some(logits_response::Result::Logits(t)) => t,
            Some(logits_response::Result::Error(e)) if RETRIABLE_CODES.contains(&e.code) => {
                tracing::warn!(url = %rep.url, code = e.code, message = %e.message, "teacher could not answer a batch now; re-sending it");
                self.groups[slot.group].queue.push_front(slot.seq);
                run.stats.resent += 1;
                return Ok(());
            }
            Some(logits_response::Result::Error(e)) => {
                return Err(ClientError::Batch {
                    batch_id: slot.seq,
                    epoch: entry.planned.epoch,
                    index: entry.planned.index,
                    code: e.code,
                    message: e.message,
                }
                .into());
            }
            Some(logits_response::Result::Sparse(_)) => {
                return Err(ClientError::Protocol(format!(
                    "{}: sparse logits for batch_id {wire}, dense requested",
                    rep.url
                ))
                .into());
            }
            None => {
                return Err(ClientError::Protocol(format!(
                    "{}: empty response for batch_id {wire}",
                    rep.url
                ))
                .into());
            }
        };
        let logits = codec::decode(&wire_tensor).map_err(ClientError::from)?;
        let expected = vec![
            entry.planned.indices.len() as i64,
            self.groups[slot.group].reference.num_logits,
        ];
        if logits.size() != expected {
            return Err(ClientError::Protocol(format!(
                "{}: batch_id {wire}: logits of shape {:?}, expected {expected:?}",
                rep.url,
                logits.size()
            ))
            .into());
        }
        entry.parts[slot.group] = Some(logits.f_to_kind(Kind::Float).map_err(ClientError::from)?);
        entry.answered_by[slot.group].clone_from(&rep.url);
        rep.answered += 1;
        Ok(())
    }

    /// Timeouts, reconnects, and the outage clock.
    fn housekeeping(&mut self, run: &mut Run) -> Result<(), PoolError> {
        let now = Instant::now();
        let timeout = self.options.batch_timeout;
        let stalled: Vec<usize> = (0..self.replicas.len())
            .filter(|&r| {
                let rep = &self.replicas[r];
                rep.state == State::Up
                    && rep
                        .outstanding
                        .values()
                        .any(|&sent| now.saturating_duration_since(sent) >= timeout)
            })
            .collect();
        for r in stalled {
            let why = format!(
                "no answer within --batch-timeout ({:.1} s)",
                timeout.as_secs_f64()
            );
            self.fail(run, r, &why);
        }
        let due: Vec<usize> = (0..self.replicas.len())
            .filter(|&r| self.replicas[r].state == State::Down && self.replicas[r].retry_at <= now)
            .collect();
        for r in due {
            self.start_replica(r, None);
        }
        if !self.sources.is_empty()
            && now.saturating_duration_since(self.last_resolve) >= self.options.resolve_interval
        {
            self.last_resolve = now;
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
        let starving = (0..self.groups.len())
            .find(|&g| !self.groups[g].queue.is_empty() && self.up_count(g) == 0);
        match starving {
            None => run.waiting_since = None,
            Some(g) => {
                let since = *run.waiting_since.get_or_insert(now);
                let waited = now.saturating_duration_since(since);
                let urls = self.replica_urls(g).join(",");
                if waited >= self.options.teacher_wait {
                    return Err(PoolError::NoTeacher {
                        waited_s: waited.as_secs_f64(),
                        group: self.groups[g].name.clone(),
                        urls,
                    });
                }
                let log_due = run
                    .last_wait_log
                    .is_none_or(|t| now.saturating_duration_since(t) >= WAIT_LOG_INTERVAL);
                if log_due && waited >= Duration::from_millis(500) {
                    run.last_wait_log = Some(now);
                    tracing::warn!(
                        group = %self.groups[g].name, %urls,
                        waited_s = waited.as_secs(), limit_s = self.options.teacher_wait.as_secs(),
                        "no teacher replica reachable; training waits"
                    );
                }
            }
        }
        Ok(())
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

/// State of one [`Pool::run`].
struct Run {
    /// The plan has no more batches.
    plan_done: bool,
    inputs: Tensor,
    /// Admitted batches not yet handed over, by sequence number.
    pending: BTreeMap<u64, Entry>,
    /// Where each outstanding wire id went.
    slots: HashMap<u64, Slot>,
    next_deliver: u64,
    stats: RunStats,
    waiting_since: Option<Instant>,
    last_wait_log: Option<Instant>,
}

/// The task owning one replica connection: connect (or reuse), health check, consistency check,
/// open the stream, then forward every response to the pool.
struct ReplicaTask {
    replica: usize,
    generation: u64,
    url: String,
    client: Option<TeacherClient>,
    reference: TeacherInfo,
    options: ClientOptions,
    prefetch: usize,
    events: mpsc::Sender<Event>,
}

impl ReplicaTask {
    async fn run(self) {
        let (replica, generation) = (self.replica, self.generation);
        let failed = |reason: String, refused: bool| Event::Failed {
            replica,
            generation,
            reason,
            refused,
        };
        let client = match self.client {
            Some(c) => c,
            None => {
                let c = match TeacherClient::connect(&self.url, &self.options).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = self.events.send(failed(e.to_string(), false)).await;
                        return;
                    }
                };
                match c.serving().await {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = self
                            .events
                            .send(failed("health check: not serving".into(), false))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = self.events.send(failed(e.to_string(), false)).await;
                        return;
                    }
                }
                if let Some(why) = inconsistency(&self.reference, c.info()) {
                    let why = format!(
                        "{why} (replica fingerprint {}, group fingerprint {})",
                        c.info().fingerprint,
                        self.reference.fingerprint
                    );
                    let _ = self.events.send(failed(why, true)).await;
                    return;
                }
                c
            }
        };
        let (tx, rx) = mpsc::channel(self.prefetch.max(1));
        let mut stream = match client.open_stream(rx).await {
            Ok(s) => s,
            Err(e) => {
                let _ = self.events.send(failed(e.to_string(), false)).await;
                return;
            }
        };
        if self
            .events
            .send(Event::Up {
                replica,
                generation,
                tx,
            })
            .await
            .is_err()
        {
            return;
        }
        let reason = loop {
            match stream.message().await {
                Ok(Some(msg)) => {
                    let ev = Event::Response {
                        replica,
                        generation,
                        msg: Box::new(msg),
                        at: Instant::now(),
                    };
                    if self.events.send(ev).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break "the teacher ended the stream".to_string(),
                Err(s) => break format!("stream broke: {:?}: {}", s.code(), s.message()),
            }
        };
        let _ = self.events.send(failed(reason, false)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use distill_proto::v1;

    fn info(fp: &str) -> TeacherInfo {
        TeacherInfo {
            name: "cnn".into(),
            version: "1".into(),
            fingerprint: fp.into(),
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
    fn inconsistency_names_both_fingerprints() {
        assert_eq!(inconsistency(&info("aa"), &info("aa")), None);
        let why = inconsistency(&info("aa"), &info("bb")).unwrap();
        assert!(why.contains("aa") && why.contains("bb"), "{why}");
        let mut other = info("aa");
        other.num_logits = 5;
        assert!(
            inconsistency(&info("aa"), &other)
                .unwrap()
                .contains("logits")
        );
    }

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..20 {
            let d1 = backoff(1, base, max);
            assert!(
                d1 >= Duration::from_millis(50) && d1 < Duration::from_millis(100),
                "{d1:?}"
            );
            let d3 = backoff(3, base, max);
            assert!(
                d3 >= Duration::from_millis(200) && d3 < Duration::from_millis(400),
                "{d3:?}"
            );
            let d20 = backoff(20, base, max);
            assert!(d20 >= Duration::from_secs(1) && d20 < max, "{d20:?}");
        }
    }
}
