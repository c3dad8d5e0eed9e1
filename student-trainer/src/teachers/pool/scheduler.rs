//! The pool's failover logic as a synchronous, deterministic state machine: which replica gets
//! which batch, what happens when a replica fails, times out, rejoins or answers late, and when a
//! batch may go to the training loop.
//!
//! No I/O, no clock, no tensors: time is passed in as [`Instant`]s, replicas and groups are
//! indices, the batch `B` and the answer payload `P` are opaque. The async shell
//! ([`super::Pool`], in `shell`) feeds it events and carries out what it returns (send wire id W of batch S
//! to replica R; connect replica R; replica R failed with N batches re-queued; wake at the next
//! deadline).
//!
//! # Rules
//!
//! - A batch is *admitted* while fewer than `prefetch × min over groups of replicas up` (at least
//!   `prefetch`) are pending; it gets the next sequence number and is queued once per group it
//!   is admitted to (every group, or a subset: one group per batch when an ensemble samples).
//! - A queued part goes to the replica of its group that is up, has fewer than `prefetch` parts
//!   in flight, and has the fewest in flight; ties go round-robin from the group's cursor. Every
//!   send gets a fresh wire id, remembered with its replica and the replica's connection
//!   generation.
//! - An answer counts only if its wire id is in flight on the replica *and generation* that
//!   delivers it; anything else is a late answer and is discarded.
//! - A replica that fails (stream broken, send refused, a part unanswered for `batch_timeout`) is
//!   taken down: its generation changes, its parts in flight are re-queued at the front of their
//!   group's queue, and it is retried after a backoff delay.
//! - A batch is released when the parts of every group it was admitted to have arrived, in
//!   sequence order only.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

/// Index of a replica (in the order added).
pub(crate) type ReplicaId = usize;
/// Index of a group (in the order added).
pub(crate) type GroupId = usize;

/// Settings of a [`Scheduler`].
pub(crate) struct SchedulerConfig {
    /// Parts in flight per replica (≥ 1).
    pub(crate) prefetch: usize,
    /// A part unanswered this long fails its replica.
    pub(crate) batch_timeout: Duration,
    /// Reconnect delay after the n-th consecutive failure (n ≥ 1).
    pub(crate) backoff: Box<dyn FnMut(u32) -> Duration + Send>,
}

impl fmt::Debug for SchedulerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SchedulerConfig")
            .field("prefetch", &self.prefetch)
            .field("batch_timeout", &self.batch_timeout)
            .finish_non_exhaustive()
    }
}

/// Where a replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplicaState {
    /// Connecting, checking, opening its stream (the shell's task runs).
    Connecting,
    /// Stream open; takes parts.
    Up,
    /// Failed or not yet connected; retried at `retry_at`.
    Down {
        /// When to connect again.
        retry_at: Instant,
    },
    /// Out of service (vanished from DNS, or the same server as another replica); never retried.
    Retired,
}

#[derive(Debug)]
struct Replica {
    group: GroupId,
    state: ReplicaState,
    /// Connection generation: events of older generations are stale.
    generation: u64,
    /// Consecutive failed attempts (0 once up).
    attempt: u32,
    /// Wire ids in flight on the current generation, with their send time.
    in_flight: HashMap<u64, Instant>,
    /// Parts it answered whose answers were used (over the scheduler's life).
    answered: u64,
}

#[derive(Debug, Default)]
struct Group {
    replicas: Vec<ReplicaId>,
    cursor: usize,
    /// Sequence numbers of parts to send, front first.
    queue: VecDeque<u64>,
}

/// Where a wire id was sent.
#[derive(Debug, Clone, Copy)]
struct Slot {
    seq: u64,
    group: GroupId,
    replica: ReplicaId,
    generation: u64,
}

#[derive(Debug)]
struct Entry<B, P> {
    batch: B,
    /// One slot per group; `None` until that group's part arrives.
    parts: Vec<Option<(P, ReplicaId)>>,
    /// The groups the batch was admitted to (by group index).
    wanted: Vec<bool>,
}

impl<B, P> Entry<B, P> {
    fn complete(&self) -> bool {
        self.parts
            .iter()
            .zip(&self.wanted)
            .all(|(p, w)| !w || p.is_some())
    }
}

/// One part to put on the wire: send batch `seq` with request id `wire` to `replica`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dispatch {
    /// Fresh request id (`LogitsRequest.batch_id`).
    pub(crate) wire: u64,
    /// The batch's sequence number.
    pub(crate) seq: u64,
    /// The part's group.
    pub(crate) group: GroupId,
    /// The replica to send it to.
    pub(crate) replica: ReplicaId,
}

/// The part an answer is for, handed to the decoder of [`Scheduler::answer`].
#[derive(Debug)]
pub(crate) struct InFlight<'a, B> {
    /// The batch's sequence number.
    pub(crate) seq: u64,
    /// The part's group.
    pub(crate) group: GroupId,
    /// The batch.
    pub(crate) batch: &'a B,
}

/// What an answer carried, as the decoder judged it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply<P> {
    /// The part's payload (e.g. its logits).
    Payload(P),
    /// A retriable per-batch error: send the part again (to any replica).
    Retry,
}

/// What became of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answered {
    /// Not in flight on that replica and generation (re-sent elsewhere, or from a finished run):
    /// discarded.
    Late,
    /// Stored for batch `seq`.
    Used {
        /// The batch.
        seq: u64,
        /// Time since the part was sent.
        latency: Duration,
    },
    /// A retriable error: batch `seq`'s part is queued again.
    Requeued {
        /// The batch.
        seq: u64,
    },
}

/// A replica taken down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Failed {
    /// Whether it was up (its stream open); `false` for a failed connection attempt.
    pub(crate) was_up: bool,
    /// Parts it had in flight, now queued again.
    pub(crate) requeued: usize,
    /// When it will be tried again.
    pub(crate) retry_at: Instant,
}

/// A batch every group it was admitted to has answered, released in sequence order.
#[derive(Debug)]
pub(crate) struct Released<B, P> {
    /// Its sequence number.
    pub(crate) seq: u64,
    /// The batch.
    pub(crate) batch: B,
    /// The groups it was admitted to, in group order.
    pub(crate) groups: Vec<GroupId>,
    /// One payload per group of `groups`, in the same order, with the replica that answered it.
    pub(crate) parts: Vec<(P, ReplicaId)>,
}

/// Cumulative counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Parts queued again after their replica failed or answered with a retriable error.
    pub(crate) resent: u64,
    /// Answers discarded as late.
    pub(crate) late_discarded: u64,
}

/// The scheduler: replicas, groups, pending batches and parts in flight.
#[derive(Debug)]
pub(crate) struct Scheduler<B, P> {
    config: SchedulerConfig,
    groups: Vec<Group>,
    replicas: Vec<Replica>,
    /// Admitted batches not yet released, by sequence number.
    pending: BTreeMap<u64, Entry<B, P>>,
    /// Where each wire id in flight went.
    slots: HashMap<u64, Slot>,
    next_wire: u64,
    next_seq: u64,
    next_release: u64,
    /// Since when some group has had parts queued and no replica up.
    starving_since: Option<Instant>,
    counters: Counters,
}

impl<B, P> Scheduler<B, P> {
    /// An empty scheduler.
    pub(crate) fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            config,
            groups: Vec::new(),
            replicas: Vec::new(),
            pending: BTreeMap::new(),
            slots: HashMap::new(),
            next_wire: 0,
            next_seq: 0,
            next_release: 0,
            starving_since: None,
            counters: Counters::default(),
        }
    }

    /// Adds a group (before any batch is admitted).
    pub(crate) fn add_group(&mut self) -> GroupId {
        self.groups.push(Group::default());
        self.groups.len() - 1
    }

    /// Adds a replica to `group`, down and due for a connection at `now`.
    pub(crate) fn add_replica(&mut self, group: GroupId, now: Instant) -> ReplicaId {
        self.replicas.push(Replica {
            group,
            state: ReplicaState::Down { retry_at: now },
            generation: 0,
            attempt: 0,
            in_flight: HashMap::new(),
            answered: 0,
        });
        let r = self.replicas.len() - 1;
        self.groups[group].replicas.push(r);
        r
    }

    /// Number of replicas (every state).
    #[cfg(test)]
    pub(crate) fn replica_count(&self) -> usize {
        self.replicas.len()
    }

    /// Replica `r`'s state.
    pub(crate) fn state(&self, r: ReplicaId) -> ReplicaState {
        self.replicas[r].state
    }

    /// Replica `r`'s group.
    pub(crate) fn group_of(&self, r: ReplicaId) -> GroupId {
        self.replicas[r].group
    }

    /// Replica `r`'s current connection generation.
    pub(crate) fn generation(&self, r: ReplicaId) -> u64 {
        self.replicas[r].generation
    }

    /// Parts answered by replica `r` and used.
    pub(crate) fn answered(&self, r: ReplicaId) -> u64 {
        self.replicas[r].answered
    }

    /// Parts in flight on replica `r`.
    pub(crate) fn in_flight(&self, r: ReplicaId) -> usize {
        self.replicas[r].in_flight.len()
    }

    /// The replicas of `group`, in the order added.
    pub(crate) fn replicas_of(&self, group: GroupId) -> &[ReplicaId] {
        &self.groups[group].replicas
    }

    /// Replicas of `group` that are up.
    pub(crate) fn up_count(&self, group: GroupId) -> usize {
        self.groups[group]
            .replicas
            .iter()
            .filter(|&&r| self.replicas[r].state == ReplicaState::Up)
            .count()
    }

    /// Cumulative counters.
    pub(crate) fn counters(&self) -> Counters {
        self.counters
    }

    /// Starts a connection attempt of replica `r` (any state but retired): a new generation,
    /// state [`ReplicaState::Connecting`]. Returns the generation the attempt's events carry.
    pub(crate) fn connect(&mut self, r: ReplicaId) -> u64 {
        let rep = &mut self.replicas[r];
        debug_assert!(
            rep.in_flight.is_empty(),
            "connecting a replica with parts in flight"
        );
        rep.generation += 1;
        rep.state = ReplicaState::Connecting;
        rep.generation
    }

    /// The down replicas whose retry time has come, each moved to connecting, with the
    /// generation of its attempt.
    pub(crate) fn reconnects_due(&mut self, now: Instant) -> Vec<(ReplicaId, u64)> {
        let due: Vec<ReplicaId> = (0..self.replicas.len())
            .filter(|&r| {
                matches!(self.replicas[r].state, ReplicaState::Down { retry_at } if retry_at <= now)
            })
            .collect();
        due.into_iter().map(|r| (r, self.connect(r))).collect()
    }

    /// Replica `r`'s attempt of `generation` has its stream open. Returns `None` for a stale
    /// event (another generation, or not connecting), else whether it is a rejoin (it had failed
    /// before).
    pub(crate) fn connected(&mut self, r: ReplicaId, generation: u64) -> Option<bool> {
        let rep = &mut self.replicas[r];
        if rep.generation != generation || rep.state != ReplicaState::Connecting {
            return None;
        }
        rep.state = ReplicaState::Up;
        let rejoined = rep.attempt > 0;
        rep.attempt = 0;
        Some(rejoined)
    }

    /// Replica `r`'s connection or stream of `generation` failed. `None` for a stale event.
    pub(crate) fn failed(&mut self, r: ReplicaId, generation: u64, now: Instant) -> Option<Failed> {
        let rep = &self.replicas[r];
        if rep.generation != generation
            || !matches!(rep.state, ReplicaState::Up | ReplicaState::Connecting)
        {
            return None;
        }
        Some(self.take_down(r, now))
    }

    /// Takes replica `r` down now, whatever its generation (the shell could not send to it, or
    /// could not connect to it at start). `None` if it is retired.
    pub(crate) fn fail(&mut self, r: ReplicaId, now: Instant) -> Option<Failed> {
        if self.replicas[r].state == ReplicaState::Retired {
            return None;
        }
        Some(self.take_down(r, now))
    }

    fn take_down(&mut self, r: ReplicaId, now: Instant) -> Failed {
        let was_up = self.replicas[r].state == ReplicaState::Up;
        let requeued = self.requeue_in_flight(r);
        let rep = &mut self.replicas[r];
        rep.attempt = rep.attempt.saturating_add(1);
        let retry_at = now + (self.config.backoff)(rep.attempt);
        rep.state = ReplicaState::Down { retry_at };
        Failed {
            was_up,
            requeued,
            retry_at,
        }
    }

    /// Forgets replica `r`'s parts in flight (new generation) and queues them again at the
    /// front of its group's queue, in sequence order. Returns how many.
    fn requeue_in_flight(&mut self, r: ReplicaId) -> usize {
        let rep = &mut self.replicas[r];
        rep.generation += 1;
        let wires: Vec<u64> = rep.in_flight.drain().map(|(w, _)| w).collect();
        let mut seqs: Vec<u64> = wires
            .iter()
            .filter_map(|w| self.slots.remove(w))
            .filter(|s| self.pending.contains_key(&s.seq))
            .map(|s| s.seq)
            .collect();
        seqs.sort_unstable();
        let queue = &mut self.groups[rep.group].queue;
        for &seq in seqs.iter().rev() {
            if !queue.contains(&seq) {
                queue.push_front(seq);
            }
        }
        self.counters.resent += seqs.len() as u64;
        seqs.len()
    }

    /// Takes replica `r` out of service for good (until [`Scheduler::revive`]): its parts in
    /// flight are queued again. Returns how many, or `None` if it was retired already.
    pub(crate) fn retire(&mut self, r: ReplicaId) -> Option<usize> {
        if self.replicas[r].state == ReplicaState::Retired {
            return None;
        }
        let n = self.requeue_in_flight(r);
        self.replicas[r].state = ReplicaState::Retired;
        Some(n)
    }

    /// Puts a retired replica back, due for a connection at `now`. Returns whether it was
    /// retired.
    pub(crate) fn revive(&mut self, r: ReplicaId, now: Instant) -> bool {
        let rep = &mut self.replicas[r];
        if rep.state != ReplicaState::Retired {
            return false;
        }
        rep.state = ReplicaState::Down { retry_at: now };
        rep.attempt = 0;
        true
    }

    /// Fails every up replica with a part in flight for `batch_timeout` or longer.
    pub(crate) fn expire(&mut self, now: Instant) -> Vec<(ReplicaId, Failed)> {
        let timeout = self.config.batch_timeout;
        let stalled: Vec<ReplicaId> = (0..self.replicas.len())
            .filter(|&r| {
                let rep = &self.replicas[r];
                rep.state == ReplicaState::Up
                    && rep
                        .in_flight
                        .values()
                        .any(|&sent| now.saturating_duration_since(sent) >= timeout)
            })
            .collect();
        stalled
            .into_iter()
            .map(|r| (r, self.take_down(r, now)))
            .collect()
    }

    /// How many more batches may be admitted now.
    pub(crate) fn window(&self) -> usize {
        let up = (0..self.groups.len())
            .map(|g| self.up_count(g))
            .min()
            .unwrap_or(0)
            .max(1);
        (self.config.prefetch.max(1) * up).saturating_sub(self.pending.len())
    }

    /// Admits `batch`: it gets the next sequence number and a part in every group's queue.
    pub(crate) fn admit(&mut self, batch: B) -> u64 {
        let all: Vec<GroupId> = (0..self.groups.len()).collect();
        self.admit_to(batch, &all)
    }

    /// Admits `batch` to the groups `groups` only (indices of existing groups; duplicates and
    /// unknown indices are ignored): it gets the next sequence number and a part in each of
    /// their queues, and is released once those parts have arrived. With no valid group it is
    /// released as soon as its turn comes, with no parts.
    pub(crate) fn admit_to(&mut self, batch: B, groups: &[GroupId]) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut wanted = vec![false; self.groups.len()];
        for &g in groups {
            if let Some(w) = wanted.get_mut(g) {
                *w = true;
            }
        }
        for (g, w) in self.groups.iter_mut().zip(&wanted) {
            if *w {
                g.queue.push_back(seq);
            }
        }
        self.pending.insert(
            seq,
            Entry {
                batch,
                parts: (0..self.groups.len()).map(|_| None).collect(),
                wanted,
            },
        );
        seq
    }

    /// The pending batch `seq`.
    pub(crate) fn batch(&self, seq: u64) -> Option<&B> {
        self.pending.get(&seq).map(|e| &e.batch)
    }

    /// The next part to send, recorded as in flight from `now`; `None` when no queued part has a
    /// replica with room.
    pub(crate) fn next_send(&mut self, now: Instant) -> Option<Dispatch> {
        for g in 0..self.groups.len() {
            while let Some(&seq) = self.groups[g].queue.front() {
                if !self.pending.contains_key(&seq) {
                    self.groups[g].queue.pop_front();
                    continue;
                }
                let Some(r) = self.pick(g) else { break };
                self.groups[g].queue.pop_front();
                let wire = self.next_wire;
                self.next_wire += 1;
                let rep = &mut self.replicas[r];
                rep.in_flight.insert(wire, now);
                self.slots.insert(
                    wire,
                    Slot {
                        seq,
                        group: g,
                        replica: r,
                        generation: rep.generation,
                    },
                );
                return Some(Dispatch {
                    wire,
                    seq,
                    group: g,
                    replica: r,
                });
            }
        }
        None
    }

    /// The replica of group `g` to send to next: up, below `prefetch`, fewest in flight, ties
    /// round-robin from the group's cursor.
    fn pick(&mut self, g: GroupId) -> Option<ReplicaId> {
        let group = &self.groups[g];
        let n = group.replicas.len();
        let mut best: Option<(usize, usize)> = None; // (position, in flight)
        for k in 0..n {
            let pos = (group.cursor + k) % n;
            let rep = &self.replicas[group.replicas[pos]];
            let load = rep.in_flight.len();
            if rep.state != ReplicaState::Up || load >= self.config.prefetch.max(1) {
                continue;
            }
            if best.is_none_or(|(_, o)| load < o) {
                best = Some((pos, load));
            }
        }
        let (pos, _) = best?;
        self.groups[g].cursor = (pos + 1) % n;
        Some(self.groups[g].replicas[pos])
    }

    /// An answer from replica `r`, stream `generation`, for request `wire`, at `now`. If the
    /// part is in flight there, `decode` judges the answer (it sees the batch and group) and the
    /// part is stored or queued again; otherwise the answer is late and `decode` is not called.
    ///
    /// # Errors
    /// `decode`'s error (the part is then no longer in flight).
    pub(crate) fn answer<E>(
        &mut self,
        r: ReplicaId,
        generation: u64,
        wire: u64,
        now: Instant,
        decode: impl FnOnce(InFlight<'_, B>) -> Result<Reply<P>, E>,
    ) -> Result<Answered, E> {
        let slot = match self.slots.get(&wire) {
            Some(s) if s.replica == r && s.generation == generation => *s,
            _ => {
                self.counters.late_discarded += 1;
                return Ok(Answered::Late);
            }
        };
        self.slots.remove(&wire);
        let sent = self.replicas[r].in_flight.remove(&wire);
        let latency = sent.map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        let Some(entry) = self.pending.get_mut(&slot.seq) else {
            self.counters.late_discarded += 1;
            return Ok(Answered::Late);
        };
        let reply = decode(InFlight {
            seq: slot.seq,
            group: slot.group,
            batch: &entry.batch,
        })?;
        match reply {
            Reply::Payload(p) => {
                entry.parts[slot.group] = Some((p, r));
                self.replicas[r].answered += 1;
                Ok(Answered::Used {
                    seq: slot.seq,
                    latency,
                })
            }
            Reply::Retry => {
                self.groups[slot.group].queue.push_front(slot.seq);
                self.counters.resent += 1;
                Ok(Answered::Requeued { seq: slot.seq })
            }
        }
    }

    /// Whether the next batch in sequence has the parts of every group it was admitted to.
    pub(crate) fn ready(&self) -> bool {
        self.pending
            .get(&self.next_release)
            .is_some_and(Entry::complete)
    }

    /// The next batch in sequence, if the parts of its groups have arrived.
    pub(crate) fn release(&mut self) -> Option<Released<B, P>> {
        if !self.ready() {
            return None;
        }
        let seq = self.next_release;
        let entry = self.pending.remove(&seq)?;
        self.next_release += 1;
        let groups = (0..entry.wanted.len())
            .filter(|&g| entry.wanted[g])
            .collect();
        Some(Released {
            seq,
            batch: entry.batch,
            groups,
            parts: entry.parts.into_iter().flatten().collect(),
        })
    }

    /// Whether no batch is pending.
    pub(crate) fn is_idle(&self) -> bool {
        self.pending.is_empty()
    }

    /// Forgets every pending batch and part in flight (a run that ends early): answers to them
    /// will be late. Replicas keep their state.
    pub(crate) fn abandon(&mut self) {
        self.pending.clear();
        self.slots.clear();
        for g in &mut self.groups {
            g.queue.clear();
        }
        for rep in &mut self.replicas {
            rep.in_flight.clear();
        }
        self.next_release = self.next_seq;
        self.starving_since = None;
    }

    /// The first group with parts queued and no replica up, with the time since when some group
    /// has been in that state (the outage clock; it restarts once no group starves).
    pub(crate) fn starving(&mut self, now: Instant) -> Option<(GroupId, Instant)> {
        let g = (0..self.groups.len())
            .find(|&g| !self.groups[g].queue.is_empty() && self.up_count(g) == 0);
        match g {
            None => {
                self.starving_since = None;
                None
            }
            Some(g) => Some((g, *self.starving_since.get_or_insert(now))),
        }
    }

    /// The earliest time at which [`Scheduler::expire`] or [`Scheduler::reconnects_due`] has
    /// something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.replicas
            .iter()
            .filter_map(|rep| match rep.state {
                ReplicaState::Up => rep
                    .in_flight
                    .values()
                    .min()
                    .map(|&sent| sent + self.config.batch_timeout),
                ReplicaState::Down { retry_at } => Some(retry_at),
                ReplicaState::Connecting | ReplicaState::Retired => None,
            })
            .min()
    }

    /// Checks the invariants (tests): parts in flight only on up replicas and at most
    /// `prefetch` each, every slot matching its replica's in-flight set, no part both queued and
    /// in flight.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        for (r, rep) in self.replicas.iter().enumerate() {
            if rep.state != ReplicaState::Up && !rep.in_flight.is_empty() {
                return Err(format!(
                    "replica {r} is {:?} with {} part(s) in flight",
                    rep.state,
                    rep.in_flight.len()
                ));
            }
            if rep.in_flight.len() > self.config.prefetch.max(1) {
                return Err(format!(
                    "replica {r} has {} in flight, prefetch {}",
                    rep.in_flight.len(),
                    self.config.prefetch
                ));
            }
            for w in rep.in_flight.keys() {
                match self.slots.get(w) {
                    Some(s) if s.replica == r && s.generation == rep.generation => {}
                    other => return Err(format!("wire {w} on replica {r}: slot {other:?}")),
                }
            }
        }
        let mut parts = std::collections::HashSet::new();
        for (w, s) in &self.slots {
            if !parts.insert((s.seq, s.group)) {
                return Err(format!(
                    "batch {} in flight twice for group {}",
                    s.seq, s.group
                ));
            }
            if !self.replicas[s.replica].in_flight.contains_key(w) {
                return Err(format!("slot of wire {w} not in flight on {}", s.replica));
            }
            if self.groups[s.group].queue.contains(&s.seq) {
                return Err(format!("batch {} both queued and in flight", s.seq));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
