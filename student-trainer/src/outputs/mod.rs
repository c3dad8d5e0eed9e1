//! What a run leaves for people and machines: the per-epoch `metrics.jsonl` ([`metrics`]), the
//! final `report.json` and table ([`report`]), training-curve PNGs ([`plot`]), the progress bar
//! or log lines ([`progress`]), the live Prometheus metrics ([`monitoring`]), the student's own
//! completions of on-policy distillation ([`samples`]) and the test-only batch ledger
//! ([`ledger`]).
//!
//! Imports nothing of the crate outside this folder: the training loop and the commands hand
//! their results in.

pub(crate) mod ledger;
pub(crate) mod metrics;
pub(crate) mod monitoring;
pub(crate) mod plot;
pub(crate) mod progress;
pub(crate) mod report;
pub(crate) mod samples;
