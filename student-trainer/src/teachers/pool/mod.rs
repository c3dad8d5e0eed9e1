//! A pool of teacher replicas (and groups of different teachers): load balancing, failover with
//! exactly-once batches, consistency checks, and waiting out a teacher outage.
//!
//! # Layout
//!
//! - `scheduler`: the failover logic as a synchronous, deterministic state machine (which
//!   replica gets which batch, failures, timeouts, rejoins, late answers, release order), with
//!   property tests. No tokio, no tonic, no tensors.
//! - `shell`: the async shell that drives it: connecting the groups, the replica tasks
//!   (`replica`), `dns://` re-resolution (`discovery`), and the loop that carries out what
//!   the scheduler decides, waking at its next deadline.
//! - `options`: the pool's settings, a run's targets, counters and errors.
//! - Decoding responses into tensors is [`super::wire`]'s; mixing an ensemble's answers is
//!   [`crate::ensemble`]'s.
//!
//! # Model
//!
//! - A *group* is a set of replicas of one teacher (same fingerprint); `--teacher URL` (repeated)
//!   makes one group, `--teacher-group NAME=URL,URL` one group each (an ensemble). With
//!   [`EnsembleMode::Mix`] every batch is answered by exactly one replica of every group; with
//!   [`EnsembleMode::Sample`] by one replica of one group, drawn per batch
//!   ([`crate::ensemble::sample_group`]).
//! - Each replica has one gRPC channel (HTTP/2 keepalive on) and one `StreamLogits` stream, owned
//!   by a task that connects, checks, opens the stream and forwards every response to the pool's
//!   loop through a bounded channel.
//! - Scheduling and exactly-once: see `scheduler.rs`. Batches are handed to the training loop in
//!   schedule order (the loop checks each against its own schedule).
//! - Consistency: the first reachable replica of a group is its reference; every other replica's
//!   `GetModelInfo` must match it (`info::inconsistency`), or it is refused with a log
//!   line naming both fingerprints. URLs that reach the same server process (same non-empty
//!   `instance_id`) count as one replica.
//! - Credentials: a replica that answers `UNAUTHENTICATED` or `PERMISSION_DENIED` is refused
//!   like an inconsistent one (an error log line naming the token flags), not counted as a
//!   transient failure; a group none of whose replicas accepts the token fails at connect.
//! - Recovery: a failed or refused replica is retried with exponential backoff and jitter; it
//!   rejoins after its health check reports `SERVING` and its fingerprint matches.
//! - Outage: while some group has work and no replica up, the pool waits, logging every
//!   [`WAIT_LOG_INTERVAL`], for at most `teacher_wait`, then fails with [`PoolError::NoTeacher`]
//!   (the caller checkpoints the student).

mod discovery;
mod options;
mod replica;
pub(crate) mod scheduler;
mod shell;

pub use super::endpoint::GroupSpec;
pub use super::info::Expect;
pub use discovery::{Resolver, Resolving, SystemResolver};
pub use options::{
    PoolError, PoolOptions, ReplicaStats, RunStats, RunTargets, WAIT_LOG_INTERVAL, backoff,
};
pub use shell::Pool;
