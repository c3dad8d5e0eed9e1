//! `teacher-server`: serves a teacher's logits over the `distill.v1.Teacher` gRPC service.
//!
//! Requests from many concurrent streams are validated ([`validate`]), merged by a queue actor
//! ([`batcher`]) into forward passes of up to `--max-batch-size` samples, run by one dedicated
//! thread that owns the model ([`engine`], [`model`]), and split back to their streams
//! ([`service`]). [`server::run`] wires it together; the binary only parses flags, binds the
//! listener and calls it.

pub mod batcher;
pub mod config;
pub mod engine;
pub mod error;
pub mod model;
pub mod server;
pub mod service;
pub mod validate;

pub use config::{Args, Config};
pub use error::Error;
pub use server::run;

/// Completes on SIGINT or SIGTERM (Ctrl-C only on non-Unix systems).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
