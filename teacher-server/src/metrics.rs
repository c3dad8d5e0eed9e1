//! The server's Prometheus metrics (served on `--metrics-listen` by [`distill_telemetry`]).
//!
//! | metric | type | what |
//! |---|---|---|
//! | `teacher_model_state{state}` | gauge | 1 for the current state: `loading`, `serving`, `draining` |
//! | `teacher_model_info{name,version,fingerprint,device,precision}` | gauge | 1 once loaded |
//! | `teacher_streams_open` | gauge | `StreamLogits` calls open now |
//! | `teacher_requests_total` | counter | requests (batches) answered with logits |
//! | `teacher_samples_total` | counter | samples answered with logits |
//! | `teacher_errors_total{code}` | counter | per-batch errors and failed calls, by gRPC code |
//! | `teacher_queue_depth` | gauge | requests waiting in the batching queue |
//! | `teacher_merged_batch_size` | histogram | samples per forward pass |
//! | `teacher_queue_seconds` | histogram | per request: arrival to the start of its forward pass (s) |
//! | `teacher_compute_seconds` | histogram | per forward pass: concatenation, forward, split (s) |
//!
//! Device memory is not exported: tch has no API for it, `unsafe` is forbidden here, and
//! `nvml-wrapper` would need `libnvidia-ml` at run time on every machine, GPU or not; use the
//! NVIDIA DCGM exporter beside the server for GPU memory.

use distill_telemetry::prometheus::{
    self, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::time::Duration;

/// The server's lifecycle, as `teacher_model_state` and `/readyz` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Bound and answering health checks; the model is loading (or warming up).
    Loading,
    /// The model is loaded and warmed up: serving.
    Serving,
    /// Shutting down: answering what was read, taking nothing new.
    Draining,
}

impl Phase {
    const ALL: [Phase; 3] = [Phase::Loading, Phase::Serving, Phase::Draining];

    /// The `state` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Serving => "serving",
            Phase::Draining => "draining",
        }
    }
}

/// Every metric of one server process, registered in its own [`Registry`].
#[derive(Debug, Clone)]
pub(crate) struct ServerMetrics {
    /// Where they are registered (what `/metrics` serves).
    pub registry: Registry,
    model_state: IntGaugeVec,
    model_info: IntGaugeVec,
    /// `teacher_streams_open`.
    pub streams_open: IntGauge,
    /// `teacher_requests_total`.
    pub requests: IntCounter,
    /// `teacher_samples_total`.
    pub samples: IntCounter,
    errors: IntCounterVec,
    /// `teacher_queue_depth`.
    pub queue_depth: IntGauge,
    merged_batch_size: Histogram,
    queue_seconds: Histogram,
    compute_seconds: Histogram,
}

impl ServerMetrics {
    /// Creates and registers every metric; `max_batch_size` bounds the batch-size buckets.
    ///
    /// # Errors
    /// A `prometheus` error if two metrics share a name (a bug).
    pub(crate) fn new(max_batch_size: usize) -> prometheus::Result<ServerMetrics> {
        let registry = Registry::new();
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let model_state = gauge_vec(
            "teacher_model_state",
            "1 for the server's current state (loading, serving, draining), 0 for the others.",
            &["state"],
        )?;
        let model_info = gauge_vec(
            "teacher_model_info",
            "1 once the model is loaded; its labels describe it.",
            &["name", "version", "fingerprint", "device", "precision"],
        )?;
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let errors = IntCounterVec::new(
            Opts::new(
                "teacher_errors_total",
                "Per-batch errors and failed calls, by gRPC status code.",
            ),
            &["code"],
        )?;
        registry.register(Box::new(errors.clone()))?;
        let m = ServerMetrics {
            model_state,
            model_info,
            streams_open: gauge("teacher_streams_open", "StreamLogits calls open now.")?,
            requests: counter(
                "teacher_requests_total",
                "Requests (batches) answered with logits.",
            )?,
            samples: counter("teacher_samples_total", "Samples answered with logits.")?,
            errors,
            queue_depth: gauge(
                "teacher_queue_depth",
                "Requests waiting in the batching queue for a forward pass.",
            )?,
            merged_batch_size: histogram(
                "teacher_merged_batch_size",
                "Samples per forward pass (requests of several streams merged).",
                distill_telemetry::size_buckets(max_batch_size),
            )?,
            queue_seconds: histogram(
                "teacher_queue_seconds",
                "Per request: seconds from arrival to the start of its forward pass.",
                distill_telemetry::latency_buckets(),
            )?,
            compute_seconds: histogram(
                "teacher_compute_seconds",
                "Per forward pass: seconds of concatenation, forward and split.",
                distill_telemetry::latency_buckets(),
            )?,
            registry,
        };
        m.set_phase(Phase::Loading);
        Ok(m)
    }

    /// Sets `teacher_model_state`: 1 for `phase`, 0 for the others.
    pub(crate) fn set_phase(&self, phase: Phase) {
        for p in Phase::ALL {
            self.model_state
                .with_label_values(&[p.label()])
                .set(i64::from(p == phase));
        }
    }

    /// Sets `teacher_model_info` for the loaded model.
    pub(crate) fn set_model(&self, labels: [&str; 5]) {
        self.model_info.with_label_values(&labels).set(1);
    }

    /// Counts one error with gRPC `code`.
    pub(crate) fn error(&self, code: tonic::Code) {
        self.errors.with_label_values(&[&format!("{code:?}")]).inc();
    }

    /// Records one forward pass of `samples` samples that took `compute`.
    pub(crate) fn forward_pass(&self, samples: i64, compute: Duration) {
        self.merged_batch_size.observe(samples as f64);
        self.compute_seconds.observe(compute.as_secs_f64());
    }

    /// Records how long one request waited for its forward pass.
    pub(crate) fn queued(&self, wait: Duration) {
        self.queue_seconds.observe(wait.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_gauge_has_exactly_one_current_state() {
        let m = ServerMetrics::new(64).unwrap();
        let state = |p: Phase| m.model_state.with_label_values(&[p.label()]).get();
        assert_eq!(state(Phase::Loading), 1);
        m.set_phase(Phase::Serving);
        assert_eq!(
            Phase::ALL.map(state),
            [0, 1, 0],
            "loading, serving, draining"
        );
        m.error(tonic::Code::InvalidArgument);
        m.error(tonic::Code::InvalidArgument);
        assert_eq!(m.errors.with_label_values(&["InvalidArgument"]).get(), 2);
        m.forward_pass(48, Duration::from_millis(3));
        assert_eq!(m.merged_batch_size.get_sample_count(), 1);
        assert_eq!(m.merged_batch_size.get_sample_sum(), 48.0);
    }
}
