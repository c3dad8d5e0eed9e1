//! `samples.jsonl`: a few of the student's own completions per epoch of on-policy distillation,
//! decoded, one JSON line `{epoch, prompt, completion, ended_with_eos, tokens}` each.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// File name of the samples log inside the output directory.
pub(crate) const SAMPLES_FILE: &str = "samples.jsonl";

/// One decoded prompt and completion.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Sample {
    /// The epoch after which it was sampled, from 1.
    pub epoch: u64,
    /// The prompt, decoded.
    pub prompt: String,
    /// The student's completion, decoded (end-of-sequence token left out).
    pub completion: String,
    /// Whether the completion ended with the end-of-sequence token.
    pub ended_with_eos: bool,
    /// Completion tokens (end-of-sequence included).
    pub tokens: i64,
}

/// An append-only `samples.jsonl` (a resumed run continues it).
#[derive(Debug)]
pub(crate) struct SamplesLog {
    path: PathBuf,
}

impl SamplesLog {
    /// The log in `dir` (created on the first append).
    pub(crate) fn new(dir: &Path) -> SamplesLog {
        SamplesLog {
            path: dir.join(SAMPLES_FILE),
        }
    }

    /// The log's file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `samples`, one line each, and flushes them to disk.
    ///
    /// # Errors
    /// The file cannot be opened or written.
    pub(crate) fn append(&self, samples: &[Sample]) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        for s in samples {
            let line = serde_json::to_string(s).map_err(std::io::Error::other)?;
            writeln!(file, "{line}")?;
        }
        file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_appended_as_json_lines() {
        let dir = std::env::temp_dir().join(format!("samples-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = SamplesLog::new(&dir);
        let s = Sample {
            epoch: 1,
            prompt: "a \"b\"".into(),
            completion: "c\nd".into(),
            ended_with_eos: true,
            tokens: 3,
        };
        log.append(std::slice::from_ref(&s)).unwrap();
        log.append(&[Sample {
            epoch: 2,
            ..s.clone()
        }])
        .unwrap();
        let text = std::fs::read_to_string(log.path()).unwrap();
        let lines: Vec<Sample> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0], s);
        assert_eq!(lines[1].epoch, 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
