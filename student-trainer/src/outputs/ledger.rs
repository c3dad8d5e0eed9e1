//! The test-only batch ledger (`distill --batch-ledger FILE`): one JSON line
//! `{epoch, index, batch_id, replica, groups}` per trained batch, written unbuffered so a test
//! can watch the run's progress and check that every batch was trained exactly once.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// An open ledger file (appended to: a resumed run continues it).
#[derive(Debug)]
pub(crate) struct Ledger {
    path: PathBuf,
    file: std::fs::File,
}

impl Ledger {
    /// Opens `path` for appending, creating it.
    ///
    /// # Errors
    /// The file cannot be opened.
    pub(crate) fn open(path: &Path) -> std::io::Result<Ledger> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Ledger {
            path: path.to_path_buf(),
            file,
        })
    }

    /// The ledger's file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the line of batch `index` of `epoch`, answered as request `batch_id` by
    /// `replica` for `groups`; `on_policy` (an on-policy distillation run): whether the student
    /// generated the batch, and the positions of its sequences (`S` of the `[B, S]` token ids
    /// sent to the teachers and trained on).
    ///
    /// # Errors
    /// The line cannot be written.
    pub(crate) fn record(
        &mut self,
        epoch: u64,
        index: usize,
        batch_id: u64,
        replica: &str,
        groups: &[String],
        on_policy: Option<(bool, i64)>,
    ) -> std::io::Result<()> {
        let mut line = serde_json::json!({
            "epoch": epoch, "index": index, "batch_id": batch_id, "replica": replica,
            "groups": groups,
        });
        if let Some((on, positions)) = on_policy {
            line["on_policy"] = serde_json::Value::Bool(on);
            line["positions"] = positions.into();
        }
        writeln!(self.file, "{line}")
    }
}
