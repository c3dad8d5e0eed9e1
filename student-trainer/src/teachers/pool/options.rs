//! The pool's settings, what one run asks for, its counters and errors, and the reconnect delay.

use crate::ensemble::{EnsembleMode, MixError};
use crate::outputs::monitoring::StudentMetrics;
use crate::soft_targets::TargetRequest;
use crate::teachers::client::ClientOptions;
use crate::teachers::error::ClientError;
use std::time::Duration;

/// How often the pool logs while no replica of a group is reachable.
pub const WAIT_LOG_INTERVAL: Duration = Duration::from_secs(5);

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
    /// How often `dns://` names are resolved again (replicas added and retired accordingly).
    pub resolve_interval: Duration,
    /// Prometheus metrics to keep up to date (per-replica state, latency, answers, re-sends;
    /// prefetch-slot waits), if served.
    pub metrics: Option<StudentMetrics>,
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
            resolve_interval: Duration::from_secs(30),
            metrics: None,
        }
    }
}

/// What one [`Pool::run`] asks the teachers for, and how an ensemble's groups share batches.
#[derive(Debug, Clone, PartialEq)]
pub struct RunTargets {
    /// Wire dtype, top-k and temperature of every request.
    pub request: TargetRequest,
    /// Mix every group's answer, or sample one group per batch.
    pub ensemble: EnsembleMode,
    /// The run's seed (drawing the group of a batch under [`EnsembleMode::Sample`]).
    pub seed: u64,
}

impl RunTargets {
    /// Dense `f32` logits from every group, mixed at temperature `temperature` (evaluating the
    /// teachers).
    pub fn dense_f32(temperature: f64) -> RunTargets {
        RunTargets {
            request: TargetRequest {
                temperature,
                ..TargetRequest::dense_f32()
            },
            ensemble: EnsembleMode::Mix,
            seed: 0,
        }
    }
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
    /// Seconds the plan's next batch waited to be admitted because every prefetch slot was
    /// taken by batches the teachers had not answered yet (the consumer had nothing to take):
    /// time the teachers were the bottleneck.
    pub backpressure_s: f64,
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

/// The reconnect delay after `attempt` consecutive failures: `base · 2^(attempt-1)`, capped at
/// `max`, scaled by a random factor in [0.5, 1) (jitter, so replicas restarted together are not
/// hit by every student at once).
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    exp.min(max).mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

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
