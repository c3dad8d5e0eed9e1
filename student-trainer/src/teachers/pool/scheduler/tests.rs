//! Unit tests and property tests of the scheduler: random interleavings of sends, answers, late
//! answers, retriable errors, timeouts, kills, retirements and rejoins.

use super::*;
use proptest::prelude::*;
use std::convert::Infallible;

const TIMEOUT: Duration = Duration::from_millis(1000);

/// Batches are plan positions (`u64`); an answer's payload names the batch and group it was
/// computed for, so a payload given to the wrong batch is detected.
type Sched = Scheduler<u64, (u64, GroupId)>;

fn scheduler(prefetch: usize) -> Sched {
    Scheduler::new(SchedulerConfig {
        prefetch,
        batch_timeout: TIMEOUT,
        backoff: Box::new(|n| Duration::from_millis(10 * u64::from(n))),
    })
}

/// A scheduler with `sizes[g]` replicas in group `g`, all up.
fn up(sizes: &[usize], prefetch: usize, now: Instant) -> Sched {
    let mut s = scheduler(prefetch);
    for &n in sizes {
        let g = s.add_group();
        for _ in 0..n {
            let r = s.add_replica(g, now);
            let generation = s.connect(r);
            assert_eq!(s.connected(r, generation), Some(false));
        }
    }
    s
}

fn own_answer(f: InFlight<'_, u64>) -> Result<Reply<(u64, GroupId)>, Infallible> {
    Ok(Reply::Payload((*f.batch, f.group)))
}

fn answer(s: &mut Sched, send: Dispatch, now: Instant) -> Answered {
    let generation = s.generation(send.replica);
    s.answer(send.replica, generation, send.wire, now, own_answer)
        .unwrap()
}

fn sends(s: &mut Sched, now: Instant) -> Vec<Dispatch> {
    std::iter::from_fn(|| s.next_send(now)).collect()
}

#[test]
fn least_outstanding_with_round_robin_ties_and_at_most_prefetch_each() {
    let t0 = Instant::now();
    let mut s = up(&[3], 2, t0);
    assert_eq!(s.window(), 6);
    for b in 0..7 {
        s.admit(b);
    }
    let sent = sends(&mut s, t0);
    let to: Vec<ReplicaId> = sent.iter().map(|x| x.replica).collect();
    assert_eq!(
        to,
        [0, 1, 2, 0, 1, 2],
        "round-robin, two each, the 7th waits"
    );
    // Replica 1 answers: it has the fewest in flight and gets the waiting batch.
    assert!(matches!(
        answer(&mut s, sent[1], t0),
        Answered::Used { seq: 1, .. }
    ));
    let next = sends(&mut s, t0);
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].seq, next[0].replica), (6, 1));
}

#[test]
fn out_of_order_answers_are_released_in_order_with_their_own_payloads() {
    let t0 = Instant::now();
    let mut s = up(&[2], 4, t0);
    for b in 0..4 {
        s.admit(100 + b);
    }
    let sent = sends(&mut s, t0);
    for &i in &[3, 1, 2] {
        answer(&mut s, sent[i], t0);
    }
    assert!(s.release().is_none(), "batch 0 is not answered yet");
    answer(&mut s, sent[0], t0);
    for b in 0..4 {
        let r = s.release().expect("released");
        assert_eq!((r.seq, r.batch), (b, 100 + b));
        assert_eq!(r.parts[0].0, (100 + b, 0));
    }
    assert!(s.is_idle());
}

#[test]
fn a_failed_replicas_parts_move_and_its_late_answers_are_discarded() {
    let t0 = Instant::now();
    let mut s = up(&[2], 2, t0);
    for b in 0..4 {
        s.admit(b);
    }
    let sent = sends(&mut s, t0);
    let on_0: Vec<Dispatch> = sent.iter().copied().filter(|x| x.replica == 0).collect();
    let old_generation = s.generation(0);
    let f = s.failed(0, old_generation, t0).expect("fails");
    assert_eq!((f.was_up, f.requeued), (true, 2));
    assert_eq!(f.retry_at, t0 + Duration::from_millis(10));
    assert_eq!(s.failed(0, old_generation, t0), None, "stale event");
    // The late answer of the dead stream is discarded.
    let late = s
        .answer(0, old_generation, on_0[0].wire, t0, own_answer)
        .unwrap();
    assert_eq!(late, Answered::Late);
    assert_eq!(s.counters().late_discarded, 1);
    // Replica 1 gets the re-queued parts once it has room, in sequence order.
    for x in sent.iter().filter(|x| x.replica == 1) {
        answer(&mut s, *x, t0);
    }
    let moved = sends(&mut s, t0);
    assert_eq!(
        moved.iter().map(|x| (x.seq, x.replica)).collect::<Vec<_>>(),
        [(0, 1), (2, 1)]
    );
    // Rejoin after the backoff.
    assert!(s.reconnects_due(t0).is_empty());
    assert_eq!(s.next_deadline(), Some(t0 + Duration::from_millis(10)));
    let due = s.reconnects_due(t0 + Duration::from_millis(10));
    assert_eq!(due.len(), 1);
    assert_eq!(s.connected(due[0].0, due[0].1), Some(true), "a rejoin");
}

#[test]
fn a_part_unanswered_for_the_timeout_fails_its_replica_at_the_deadline() {
    let t0 = Instant::now();
    let mut s = up(&[2], 1, t0);
    s.admit(0);
    let sent = sends(&mut s, t0);
    assert_eq!(s.next_deadline(), Some(t0 + TIMEOUT));
    assert!(s.expire(t0 + TIMEOUT - Duration::from_millis(1)).is_empty());
    let failed = s.expire(t0 + TIMEOUT);
    assert_eq!(failed.len(), 1);
    assert_eq!((failed[0].0, failed[0].1.requeued), (sent[0].replica, 1));
    let again = sends(&mut s, t0 + TIMEOUT);
    assert_ne!(again[0].replica, sent[0].replica);
}

#[test]
fn a_retriable_error_queues_the_part_again() {
    let t0 = Instant::now();
    let mut s = up(&[1], 1, t0);
    s.admit(7);
    let first = sends(&mut s, t0)[0];
    let r = s
        .answer(0, s.generation(0), first.wire, t0, |_| {
            Ok::<_, Infallible>(Reply::Retry)
        })
        .unwrap();
    assert_eq!(r, Answered::Requeued { seq: 0 });
    let second = sends(&mut s, t0)[0];
    assert_ne!(second.wire, first.wire);
    answer(&mut s, second, t0);
    assert_eq!(s.release().unwrap().batch, 7);
}

#[test]
fn a_batch_waits_for_every_group_and_starving_groups_start_the_outage_clock() {
    let t0 = Instant::now();
    let mut s = up(&[1, 1], 2, t0);
    s.admit(0);
    let sent = sends(&mut s, t0);
    assert_eq!(sent.len(), 2);
    answer(&mut s, sent[0], t0);
    assert!(!s.ready());
    s.failed(1, s.generation(1), t0).unwrap();
    assert_eq!(s.starving(t0), Some((1, t0)));
    let later = t0 + Duration::from_secs(1);
    assert_eq!(
        s.starving(later),
        Some((1, t0)),
        "the clock keeps its start"
    );
    let (r, generation) = s.reconnects_due(later)[0];
    s.connected(r, generation);
    assert_eq!(s.starving(later), None);
    let part = sends(&mut s, later)[0];
    answer(&mut s, part, later);
    let rel = s.release().unwrap();
    assert_eq!(rel.parts, [((0, 0), 0), ((0, 1), 1)]);
}

/// One step of a random interleaving. Indices are taken modulo what exists at that point.
#[derive(Debug, Clone)]
enum Op {
    /// Admit batches and send every part that has room.
    Pump,
    /// A request on the wire is answered (possibly from a dead stream: a late answer).
    Answer(usize),
    /// A request on the wire is answered with a retriable error.
    Retry(usize),
    /// An answer already delivered arrives again (duplicate).
    Replay(usize),
    /// A replica's stream breaks.
    Kill(usize),
    /// Time passes; timeouts and reconnects are due.
    Advance(u64),
    /// A pending connection attempt succeeds.
    ConnectOk(usize),
    /// A pending connection attempt fails.
    ConnectFail(usize),
    /// A replica is retired (e.g. its address vanished from DNS).
    Retire(usize),
    /// A retired replica comes back.
    Revive(usize),
    /// Hand ready batches to the training loop.
    Release,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Pump),
        4 => any::<usize>().prop_map(Op::Answer),
        1 => any::<usize>().prop_map(Op::Retry),
        1 => any::<usize>().prop_map(Op::Replay),
        1 => any::<usize>().prop_map(Op::Kill),
        2 => (0u64..2500).prop_map(Op::Advance),
        2 => any::<usize>().prop_map(Op::ConnectOk),
        1 => any::<usize>().prop_map(Op::ConnectFail),
        1 => any::<usize>().prop_map(Op::Retire),
        1 => any::<usize>().prop_map(Op::Revive),
        3 => Just(Op::Release),
    ]
}

/// A request as the network carries it: the replica and stream it went to, and what the harness
/// put in it (the batch and group, read from the scheduler when sending).
#[derive(Debug, Clone, Copy)]
struct Wire {
    replica: ReplicaId,
    generation: u64,
    wire: u64,
    batch: u64,
    group: GroupId,
}

struct Sim {
    s: Sched,
    now: Instant,
    plan: u64,
    admitted: u64,
    prefetch: usize,
    on_wire: Vec<Wire>,
    delivered: Vec<Wire>,
    attempts: Vec<(ReplicaId, u64)>,
    released: Vec<u64>,
    groups: usize,
    /// The groups each batch is admitted to (`None`: every group, [`Scheduler::admit`]).
    subsets: Option<Vec<Vec<GroupId>>>,
}

impl Sim {
    fn new(sizes: &[usize], prefetch: usize, plan: u64) -> Sim {
        let now = Instant::now();
        let mut s = scheduler(prefetch);
        let mut attempts = Vec::new();
        for &n in sizes {
            let g = s.add_group();
            for _ in 0..n {
                let r = s.add_replica(g, now);
                attempts.push((r, s.connect(r)));
            }
        }
        Sim {
            s,
            now,
            plan,
            admitted: 0,
            prefetch,
            on_wire: Vec::new(),
            delivered: Vec::new(),
            attempts,
            released: Vec::new(),
            groups: sizes.len(),
            subsets: None,
        }
    }

    /// The groups batch `b` goes to.
    fn groups_of(&self, b: u64) -> Vec<GroupId> {
        match &self.subsets {
            None => (0..self.groups).collect(),
            Some(s) => s[b as usize].clone(),
        }
    }

    fn pump(&mut self) {
        while self.admitted < self.plan && self.s.window() > 0 {
            let seq = match &self.subsets {
                None => self.s.admit(self.admitted),
                Some(s) => self.s.admit_to(self.admitted, &s[self.admitted as usize]),
            };
            assert_eq!(seq, self.admitted);
            self.admitted += 1;
        }
        while let Some(x) = self.s.next_send(self.now) {
            let batch = *self.s.batch(x.seq).expect("a sent batch is pending");
            assert_eq!(self.s.state(x.replica), ReplicaState::Up, "sent to {x:?}");
            assert_eq!(self.s.group_of(x.replica), x.group);
            self.on_wire.push(Wire {
                replica: x.replica,
                generation: self.s.generation(x.replica),
                wire: x.wire,
                batch,
                group: x.group,
            });
        }
    }

    fn deliver(&mut self, w: Wire, retry: bool) -> Answered {
        let got = self
            .s
            .answer(w.replica, w.generation, w.wire, self.now, |f| {
                // The scheduler must hand the decoder the batch this wire id was sent for.
                assert_eq!(
                    (*f.batch, f.group),
                    (w.batch, w.group),
                    "decoder sees {f:?}"
                );
                Ok::<_, Infallible>(if retry {
                    Reply::Retry
                } else {
                    Reply::Payload((w.batch, w.group))
                })
            })
            .unwrap();
        if got != Answered::Late {
            assert_eq!(
                w.generation,
                self.s.generation(w.replica),
                "an answer from a dead stream was used: {w:?}"
            );
        }
        got
    }

    fn release(&mut self) {
        while let Some(r) = self.s.release() {
            assert_eq!(
                r.batch,
                self.released.len() as u64,
                "released out of schedule order (or twice)"
            );
            assert_eq!(r.seq, r.batch);
            let groups = self.groups_of(r.batch);
            assert_eq!(
                r.groups, groups,
                "batch {} released with other groups",
                r.batch
            );
            assert_eq!(r.parts.len(), groups.len());
            for (&g, (payload, replica)) in groups.iter().zip(&r.parts) {
                assert_eq!(
                    *payload,
                    (r.batch, g),
                    "batch {} got another answer",
                    r.batch
                );
                assert_eq!(self.s.group_of(*replica), g);
            }
            self.released.push(r.batch);
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Pump => self.pump(),
            Op::Answer(i) | Op::Retry(i) if !self.on_wire.is_empty() => {
                let w = self.on_wire.remove(i % self.on_wire.len());
                let got = self.deliver(w, matches!(op, Op::Retry(_)));
                if matches!(got, Answered::Used { .. }) {
                    self.delivered.push(w);
                }
            }
            Op::Replay(i) if !self.delivered.is_empty() => {
                let w = self.delivered[i % self.delivered.len()];
                assert_eq!(self.deliver(w, false), Answered::Late, "duplicate used");
            }
            Op::Kill(i) => {
                let r = i % self.s.replica_count();
                let generation = self.s.generation(r);
                // A connection attempt of the killed generation stays pending: its events are
                // stale from now on.
                if let Some(f) = self.s.failed(r, generation, self.now) {
                    assert!(f.retry_at > self.now);
                }
                assert_eq!(self.s.in_flight(r), 0, "killed replica keeps parts");
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(ms);
                for (r, f) in self.s.expire(self.now) {
                    assert!(f.was_up);
                    assert_eq!(self.s.in_flight(r), 0);
                }
                let due = self.s.reconnects_due(self.now);
                self.attempts.extend(due);
            }
            Op::ConnectOk(i) if !self.attempts.is_empty() => {
                let (r, generation) = self.attempts.remove(i % self.attempts.len());
                self.s.connected(r, generation);
            }
            Op::ConnectFail(i) if !self.attempts.is_empty() => {
                let (r, generation) = self.attempts.remove(i % self.attempts.len());
                if let Some(f) = self.s.failed(r, generation, self.now) {
                    assert!(!f.was_up && f.requeued == 0);
                }
            }
            Op::Retire(i) => {
                let r = i % self.s.replica_count();
                self.s.retire(r);
                assert_eq!(self.s.in_flight(r), 0, "retired replica keeps parts");
            }
            Op::Revive(i) => {
                let r = i % self.s.replica_count();
                self.s.revive(r, self.now);
            }
            Op::Release => self.release(),
            _ => {}
        }
        if let Err(e) = self.s.check_invariants() {
            panic!("after {op:?}: {e}");
        }
        for r in 0..self.s.replica_count() {
            assert!(self.s.in_flight(r) <= self.prefetch);
        }
    }

    /// Brings every replica back and answers everything until the plan is released.
    fn drain(&mut self) {
        for _ in 0..10_000 {
            if self.released.len() as u64 == self.plan {
                break;
            }
            for r in 0..self.s.replica_count() {
                self.s.revive(r, self.now);
            }
            self.now += Duration::from_secs(60);
            self.step(&Op::Advance(0));
            while !self.attempts.is_empty() {
                self.step(&Op::ConnectOk(0));
            }
            self.pump();
            while !self.on_wire.is_empty() {
                self.step(&Op::Answer(0));
            }
            self.release();
        }
        assert_eq!(self.released, (0..self.plan).collect::<Vec<u64>>());
        assert!(self.s.is_idle());
        let answered: u64 = (0..self.s.replica_count())
            .map(|r| self.s.answered(r))
            .sum();
        let parts: u64 = (0..self.plan).map(|b| self.groups_of(b).len() as u64).sum();
        assert_eq!(answered, parts, "answers used");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every batch reaches training exactly once, in schedule order, with its own answers; no
    /// part stays in flight on a dead replica; no replica exceeds `prefetch`.
    #[test]
    fn every_batch_is_released_once_in_order_with_its_own_answers(
        sizes in prop::collection::vec(1usize..=5, 1..=3),
        prefetch in 1usize..=4,
        plan in 1u64..40,
        ops in prop::collection::vec(op(), 0..300),
    ) {
        let mut sim = Sim::new(&sizes, prefetch, plan);
        for op in &ops {
            sim.step(op);
        }
        sim.drain();
    }

    /// The same when each batch goes to a subset of the groups (one group per batch when an
    /// ensemble samples, or any subset): released once, in order, with the parts of exactly
    /// its groups.
    #[test]
    fn batches_admitted_to_subsets_are_released_once_in_order_with_their_groups_parts(
        sizes in prop::collection::vec(1usize..=4, 1..=3),
        prefetch in 1usize..=4,
        plan in 1u64..40,
        masks in prop::collection::vec(any::<u8>(), 40),
        ops in prop::collection::vec(op(), 0..300),
    ) {
        let mut sim = Sim::new(&sizes, prefetch, plan);
        let n = sizes.len();
        sim.subsets = Some(
            masks
                .iter()
                .map(|&m| {
                    let set: Vec<GroupId> = (0..n).filter(|g| m & (1 << g) != 0).collect();
                    if set.is_empty() { vec![m as usize % n] } else { set }
                })
                .collect(),
        );
        for op in &ops {
            sim.step(op);
        }
        sim.drain();
    }
}

#[test]
fn a_batch_for_one_group_is_released_without_waiting_for_the_others() {
    let t0 = Instant::now();
    let mut s = up(&[1, 1], 2, t0);
    s.admit_to(10, &[1]);
    s.admit_to(11, &[0]);
    let sent = sends(&mut s, t0);
    assert_eq!(sent.len(), 2);
    let to_1 = sent.iter().find(|x| x.group == 1).unwrap();
    assert_eq!((to_1.seq, to_1.replica), (0, 1));
    let to_0 = sent.iter().find(|x| x.group == 0).unwrap();
    answer(&mut s, *to_0, t0);
    assert!(s.release().is_none(), "batch 0 comes first");
    answer(&mut s, *to_1, t0);
    let r = s.release().unwrap();
    assert_eq!(
        (r.batch, r.groups, r.parts),
        (10, vec![1], vec![((10, 1), 1)])
    );
    let r = s.release().unwrap();
    assert_eq!(
        (r.batch, r.groups, r.parts),
        (11, vec![0], vec![((11, 0), 0)])
    );
}
