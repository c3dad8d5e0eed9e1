//! `stalling-teacher-server`: a test-only replica that hangs. It is the real `teacher-server`
//! (same library, same flags) serving a model that answers its first `--stall-after N` forward
//! passes and then never returns from another one, as a hung device would. Streams, health and
//! `GetModelInfo` keep working; batches are read and queued but never answered. The shipped
//! `teacher-server` has no such switch.
//!
//! The count is of forward passes, over all streams: run it with `--max-batch-size` equal to the
//! client's batch size so that no two batches merge and one pass is one batch. On SIGINT/SIGTERM
//! the stalled pass is released (its batch fails) and the server shuts down as usual.
//!
//! Two more switches make the server's lifecycle observable: `--hold-load-until FILE` keeps the
//! model "loading" (the engine thread waits after the real load and warm-up) until FILE exists,
//! and `--release-stall-on FILE` releases the stalled pass when FILE appears instead of at
//! shutdown, so a test can watch the server drain. Both poll the file every 5 ms on the engine
//! thread (the test process has no other way to signal it).

use clap::Parser;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::Duration;
use tch::Tensor;
use teacher_server::model::{ForwardError, ModelDescription};
use teacher_server::{Args, TeacherModel};

/// `teacher-server`'s flags plus `--stall-after`.
#[derive(Debug, Parser)]
#[command(
    name = "stalling-teacher-server",
    about = "TEST ONLY: teacher-server whose model stops answering after N forward passes.",
    args_override_self = true
)]
struct Cli {
    /// Forward passes answered before the model hangs (over all streams); default: never.
    #[arg(long, default_value_t = u64::MAX)]
    stall_after: u64,
    /// Report the model loaded only once this file exists.
    #[arg(long)]
    hold_load_until: Option<PathBuf>,
    /// Release the stalled pass when this file exists (instead of at shutdown).
    #[arg(long)]
    release_stall_on: Option<PathBuf>,
    #[command(flatten)]
    server: Args,
}

/// Answers `after` forward passes through `inner`, then blocks in the next one until `release`
/// is dropped (at shutdown) and fails it.
struct Stalling {
    inner: Box<dyn TeacherModel>,
    after: u64,
    passes: Cell<u64>,
    release: mpsc::Receiver<()>,
    release_on: Option<PathBuf>,
}

impl TeacherModel for Stalling {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ForwardError> {
        let pass = self.passes.get();
        self.passes.set(pass + 1);
        if pass < self.after {
            return self.inner.forward(x);
        }
        tracing::debug!(
            pass,
            "stalling: this forward pass never returns before shutdown"
        );
        match &self.release_on {
            Some(file) => wait_for_file(file),
            // Nothing is ever sent: this returns only when shutdown drops the sender.
            None => {
                let _ = self.release.recv();
            }
        }
        Err(ForwardError::Stopped)
    }

    fn info(&self) -> ModelDescription {
        self.inner.info()
    }
}

/// Blocks the calling (engine) thread until `file` exists.
fn wait_for_file(file: &Path) {
    while !file.exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let (release_tx, release) = mpsc::channel::<()>();
    let shutdown = async move {
        teacher_server::shutdown_signal().await;
        drop(release_tx);
    };
    let (after, hold, release_on) = (cli.stall_after, cli.hold_load_until, cli.release_stall_on);
    let served = teacher_server::serve(cli.server, shutdown, move |inner| {
        if let Some(file) = &hold {
            tracing::info!(file = %file.display(), "holding the load until the file exists");
            wait_for_file(file);
        }
        Box::new(Stalling {
            inner,
            after,
            passes: Cell::new(0),
            release,
            release_on,
        })
    })
    .await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e}");
            ExitCode::FAILURE
        }
    }
}
