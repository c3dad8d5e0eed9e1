//! What operators see: health, readiness, Prometheus metrics and tracing spans.

mod metrics;
mod spans;
