//! The running student's Prometheus metrics (served on `--metrics-listen` by
//! [`distill_telemetry`]; `metrics.jsonl` stays the per-epoch record on disk).
//!
//! | metric | type | what |
//! |---|---|---|
//! | `student_samples_trained_total` | counter | samples trained on by this process |
//! | `student_epoch` | gauge | epoch in progress, from 1 (as `metrics.jsonl` and the logs count) |
//! | `student_step` | gauge | optimizer steps taken, over the whole run |
//! | `student_loss` | gauge | training loss of the last step |
//! | `student_soft_target_wait_seconds_total` | counter | time the training loop waited for soft targets (s) |
//! | `student_prefetch_wait_seconds_total` | counter | time batches waited for a prefetch slot (s) |
//! | `student_replica_in_flight_batches{group,replica}` | gauge | batches sent and unanswered |
//! | `student_replica_latency_seconds{group,replica}` | histogram | send to answer, per used answer (s) |
//! | `student_replica_batches_answered_total{group,replica}` | counter | answers used |
//! | `student_replica_batches_resent_total{group,replica}` | counter | batches moved away from it after a failure, or re-sent on its retry answer |
//! | `student_replica_state{group,replica,state}` | gauge | 1 for the current state: `connecting`, `up`, `down`, `retired` |

use distill_telemetry::prometheus::{
    self, Counter, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};
use std::time::Duration;

/// A replica's state as `student_replica_state` labels it.
pub(crate) const REPLICA_STATES: [&str; 4] = ["connecting", "up", "down", "retired"];

/// Every metric of one student process, registered in its own [`Registry`]. Cloning shares them.
#[derive(Debug, Clone)]
pub struct StudentMetrics {
    /// Where they are registered (what `/metrics` serves).
    pub registry: Registry,
    samples: IntCounter,
    epoch: IntGauge,
    step: IntGauge,
    loss: prometheus::Gauge,
    target_wait: Counter,
    prefetch_wait: Counter,
    in_flight: IntGaugeVec,
    latency: HistogramVec,
    answered: IntCounterVec,
    resent: IntCounterVec,
    state: IntGaugeVec,
}

impl StudentMetrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// A `prometheus` error if two metrics share a name (a bug).
    pub fn new() -> prometheus::Result<StudentMetrics> {
        let registry = Registry::new();
        macro_rules! register {
            ($metric:expr) => {{
                let m = $metric;
                registry.register(Box::new(m.clone()))?;
                m
            }};
        }
        let replica = ["group", "replica"];
        Ok(StudentMetrics {
            samples: register!(IntCounter::with_opts(Opts::new(
                "student_samples_trained_total",
                "Samples trained on by this process."
            ))?),
            epoch: register!(IntGauge::with_opts(Opts::new(
                "student_epoch",
                "Epoch in progress, from 1 (as metrics.jsonl and the logs count)."
            ))?),
            step: register!(IntGauge::with_opts(Opts::new(
                "student_step",
                "Optimizer steps taken over the whole run."
            ))?),
            loss: register!(prometheus::Gauge::with_opts(Opts::new(
                "student_loss",
                "Training loss of the last step."
            ))?),
            target_wait: register!(Counter::with_opts(Opts::new(
                "student_soft_target_wait_seconds_total",
                "Seconds the training loop waited for soft targets from the teachers."
            ))?),
            prefetch_wait: register!(Counter::with_opts(Opts::new(
                "student_prefetch_wait_seconds_total",
                "Seconds the next batch waited for a prefetch slot (every slot held by unanswered batches)."
            ))?),
            in_flight: register!(IntGaugeVec::new(
                Opts::new(
                    "student_replica_in_flight_batches",
                    "Batches sent to the replica and not answered yet."
                ),
                &replica
            )?),
            latency: register!(HistogramVec::new(
                HistogramOpts::new(
                    "student_replica_latency_seconds",
                    "Seconds from sending a batch to the replica's used answer."
                )
                .buckets(distill_telemetry::latency_buckets()),
                &replica
            )?),
            answered: register!(IntCounterVec::new(
                Opts::new(
                    "student_replica_batches_answered_total",
                    "Batches the replica answered whose answers were used."
                ),
                &replica
            )?),
            resent: register!(IntCounterVec::new(
                Opts::new(
                    "student_replica_batches_resent_total",
                    "Batches re-sent because of the replica (it failed with them outstanding, or asked for a retry)."
                ),
                &replica
            )?),
            state: register!(IntGaugeVec::new(
                Opts::new(
                    "student_replica_state",
                    "1 for the replica's current state (connecting, up, down, retired), 0 for the others."
                ),
                &["group", "replica", "state"]
            )?),
            registry,
        })
    }

    /// One optimizer step of `samples` samples in `epoch` (from 1), `step` (after it), with
    /// `loss`.
    pub fn trained(&self, epoch: u64, step: u64, samples: usize, loss: f64) {
        self.samples.inc_by(samples as u64);
        self.epoch.set(i64::try_from(epoch).unwrap_or(i64::MAX));
        self.step.set(i64::try_from(step).unwrap_or(i64::MAX));
        self.loss.set(loss);
    }

    /// The training loop waited `d` for soft targets.
    pub fn waited_for_targets(&self, d: Duration) {
        self.target_wait.inc_by(d.as_secs_f64());
    }

    /// The next batch waited `seconds` for a prefetch slot.
    pub fn waited_for_prefetch_slot(&self, seconds: f64) {
        if seconds > 0.0 {
            self.prefetch_wait.inc_by(seconds);
        }
    }

    /// A used answer of `replica` (URL) in `group`, `latency` after its send.
    pub fn answered(&self, group: &str, replica: &str, latency: Duration) {
        self.answered.with_label_values(&[group, replica]).inc();
        self.latency
            .with_label_values(&[group, replica])
            .observe(latency.as_secs_f64());
    }

    /// `n` batches re-sent because of `replica`.
    pub fn resent(&self, group: &str, replica: &str, n: u64) {
        if n > 0 {
            self.resent.with_label_values(&[group, replica]).inc_by(n);
        }
    }

    /// The replica's batches in flight and its state (one of [`REPLICA_STATES`]).
    pub fn replica(&self, group: &str, replica: &str, in_flight: usize, state: &str) {
        self.in_flight
            .with_label_values(&[group, replica])
            .set(i64::try_from(in_flight).unwrap_or(i64::MAX));
        for s in REPLICA_STATES {
            self.state
                .with_label_values(&[group, replica, s])
                .set(i64::from(s == state));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_state_is_one_hot_and_counters_accumulate() {
        let m = StudentMetrics::new().unwrap();
        m.replica("teacher", "http://a", 3, "up");
        let states: Vec<i64> = REPLICA_STATES
            .iter()
            .map(|s| m.state.with_label_values(&["teacher", "http://a", s]).get())
            .collect();
        assert_eq!(states, [0, 1, 0, 0]);
        m.replica("teacher", "http://a", 0, "down");
        assert_eq!(
            m.state
                .with_label_values(&["teacher", "http://a", "down"])
                .get(),
            1
        );
        assert_eq!(
            m.state
                .with_label_values(&["teacher", "http://a", "up"])
                .get(),
            0
        );
        m.trained(1, 10, 32, 0.5);
        m.trained(1, 11, 32, 0.25);
        assert_eq!(
            (m.samples.get(), m.step.get(), m.loss.get()),
            (64, 11, 0.25)
        );
        m.resent("teacher", "http://a", 0);
        m.resent("teacher", "http://a", 2);
        assert_eq!(
            m.resent.with_label_values(&["teacher", "http://a"]).get(),
            2
        );
    }
}
