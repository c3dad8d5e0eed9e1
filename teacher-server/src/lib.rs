//! `teacher-server`: serves a teacher's logits over the `distill.v1.Teacher` gRPC service.
//!
//! Requests from many concurrent streams are validated ([`validate`]), merged by a queue actor
//! ([`batcher`]) into forward passes of up to `--max-batch-size` samples, run by one dedicated
//! thread that owns the model ([`engine`], [`model`]), and split back to their streams
//! ([`service`]). [`server::run`] wires it together; [`serve`] is the whole process (logging,
//! binding, the `listening on` line), which the binary calls after parsing its flags.
//!
//! # Layout
//!
//! One file per module, except [`model`], a folder (`model/mod.rs` only declares and
//! re-exports); `validate/tests.rs` holds `validate.rs`'s unit tests. From the bottom up, a
//! module imports only modules listed above it:
//!
//! - [`model`]: the [`TeacherModel`] trait, the model's spec ([`model::ModelSource`],
//!   [`model::ModelSpec`], [`model::Precision`]), [`model::load()`] and the two implementations
//!   (TorchScript, built-in architectures), with their errors ([`model::LoadError`],
//!   [`model::ForwardError`]). Imports nothing of the crate.
//! - [`security`]: TLS files, bearer tokens (the interceptor) and compression names, with
//!   `SecurityError`. Imports nothing of the crate.
//! - `incoming`: the TLS connections the server serves, each handshake on its own task and
//!   failed ones logged (rate-limited). Imports nothing of the crate.
//! - `metrics`: the Prometheus metrics and the server's phase. Imports nothing of the crate.
//! - [`config`]: [`Args`] (the flags) and [`Config`] (validated), with `ConfigError`; imports
//!   `model` and `security`.
//! - `engine`: the thread that owns the model and runs merged batches, with `EngineError`
//!   and `StartError`; imports `model` and `metrics`.
//! - `validate`: one request checked against the model, with `InvalidRequest`; imports
//!   `engine` (the output spec it produces).
//! - `batcher`: the queue actor that merges requests, with `SubmitError`; imports `config`
//!   and `engine`.
//! - [`error`]: [`Error`], which wraps every lower module's error, and its one mapping to gRPC
//!   status codes; imports the modules whose errors it wraps.
//! - `service`: the `distill.v1.Teacher` gRPC service; imports everything above except
//!   `config` and `security`.
//! - `server`: wires it all and serves until shutdown; imports everything above.
//!
//! gRPC services and statuses stay in `error`, `service`, `server` and `security`: the model,
//! the engine, validation and batching use no `tonic` type.

mod batcher;
pub mod config;
mod engine;
pub mod error;
mod incoming;
mod metrics;
pub mod model;
pub mod security;
mod server;
mod service;
mod validate;

pub use config::{Args, Config};
pub use error::Error;
pub use model::TeacherModel;
pub use server::run;

use config::LogFormat;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use tracing_subscriber::EnvFilter;

/// Runs a `teacher-server` process: sets up logging on stderr (level from `RUST_LOG`, default
/// `info`), validates `args`, binds, prints `listening on HOST:PORT` on stdout, and serves
/// `wrap(model)` until `shutdown` completes (see [`server::run_with`]; `teacher-server` passes
/// the identity and [`shutdown_signal`]). A closed stdout is logged, not fatal.
///
/// # Errors
/// [`Error::Config`] for bad flags, [`Error::Io`] if the address cannot be bound, and whatever
/// [`server::run_with`] returns.
pub async fn serve<W>(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
    wrap: W,
) -> Result<(), Error>
where
    W: FnOnce(Box<dyn TeacherModel>) -> Box<dyn TeacherModel> + Send + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // Fails only if the embedding program installed its own subscriber: keep that one.
    let _ = match args.log_format {
        LogFormat::Text => logs.try_init(),
        LogFormat::Json => logs.json().try_init(),
    };
    let config = Config::try_from(args)?;
    if let Some(warning) = plain_text_warning(&config) {
        tracing::warn!("{warning}");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Io {
            context: format!("binding {}", config.listen),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Io {
        context: "reading the listener's address".into(),
        source,
    })?;
    announce(addr);
    server::run_with(config, listener, shutdown, wrap).await
}

/// The start-up warning for plain text beyond loopback: anyone on the network can read the
/// inputs and logits (and any bearer token). `None` with TLS or on a loopback address.
fn plain_text_warning(config: &Config) -> Option<String> {
    if config.tls.is_some() || config.listen.ip().is_loopback() {
        return None;
    }
    let tokens = if config.auth_tokens.is_empty() {
        ""
    } else {
        ", bearer tokens included"
    };
    Some(format!(
        "listening on {} without TLS: requests and logits travel in plain text{tokens}; \
         give --tls-cert and --tls-key to encrypt",
        config.listen
    ))
}

/// Prints `listening on ADDR` on stdout, at bind, before the model is loaded (scripts and tests
/// parse it; readiness is health's and `/readyz`'s job).
fn announce(addr: SocketAddr) {
    announce_line(&format!("listening on {addr}"));
}

/// Prints one line on stdout. A closed stdout (`teacher-server | head -n 0`, a supervisor that
/// closed the pipe) is logged and otherwise ignored: the line's content is also in the log, and
/// the server keeps serving.
pub(crate) fn announce_line(line: &str) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        tracing::warn!(error = %e, line, "cannot print to stdout; serving anyway");
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM (Ctrl-C only on non-Unix systems): the one shutdown
/// trigger of the binaries built on this crate.
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
