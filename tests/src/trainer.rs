//! Helpers for the `student_*` tests: run the `student-trainer` binary, write small synthetic
//! IDX datasets, read its outputs.

use std::path::{Path, PathBuf};
use std::process::Output;
use student_trainer::schedule::PlannedBatch;
use student_trainer::soft_targets::TeacherBatch;
use student_trainer::teachers::pool::{Pool, RunTargets};

/// The `student-trainer` binary (built by `cargo build --workspace --bins`).
pub fn student_trainer_bin() -> PathBuf {
    crate::binary("student-trainer")
}

/// The result of one `student-trainer` run.
#[derive(Debug)]
pub struct Run {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Captured stdout.
    pub stdout: String,
    /// Captured stderr.
    pub stderr: String,
}

impl Run {
    /// Whether it exited with 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// The `error: …` lines of stderr.
    pub fn error_lines(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect()
    }

    /// The one `error: …` line of a run that failed cleanly: exit status 1, no panic, exactly
    /// one error line (panics with both streams otherwise).
    pub fn one_error(&self) -> String {
        assert_eq!(
            self.code,
            Some(1),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        let errors = self.error_lines();
        assert_eq!(errors.len(), 1, "expected one error line:\n{}", self.stderr);
        errors[0].to_string()
    }

    /// Panics with both streams unless the run succeeded.
    pub fn expect_ok(self, what: &str) -> Run {
        assert!(
            self.ok(),
            "{what} failed with {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `student-trainer ARGS` on the CPU with one libtorch thread and warnings-only logs, and
/// waits for it (async, so that servers started by the same test keep draining their logs).
pub async fn student<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    student_logging(args, "warn").await
}

/// [`student`] with the log filter `RUST_LOG=filter` (e.g. `info`).
pub async fn student_logging<S: AsRef<std::ffi::OsStr>>(args: &[S], filter: &str) -> Run {
    student_env(args, filter, &[]).await
}

/// [`student_logging`] with extra environment variables (e.g. `STUDENT_AUTH_TOKEN`).
pub async fn student_env<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    filter: &str,
    env: &[(&str, &str)],
) -> Run {
    let out: Output = tokio::process::Command::new(student_trainer_bin())
        .args(args)
        .envs(env.iter().copied())
        .env("STUDENT_DEVICE", "cpu")
        .env("STUDENT_THREADS", "1")
        .env("RUST_LOG", filter)
        .env_remove("STUDENT_DATA_DIR")
        .env_remove("STUDENT_TEACHER")
        .output()
        .await
        .expect("spawn student-trainer");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Builds a `student-trainer distill` command line: `distill --data-dir DATA --out OUT`, then the
/// flags added, in the order added.
///
/// ```no_run
/// # use distill_tests::trainer::DistillArgs;
/// # let (data, out) = (std::path::Path::new("d"), std::path::Path::new("o"));
/// let args = DistillArgs::new(data, out)
///     .teacher("http://127.0.0.1:50051")
///     .arch("mlp:16")
///     .epochs(1)
///     .no_epoch_eval()
///     .build();
/// ```
#[derive(Debug, Clone)]
pub struct DistillArgs {
    args: Vec<String>,
}

impl DistillArgs {
    /// `distill --data-dir DATA --out OUT`.
    pub fn new(data: &Path, out: &Path) -> DistillArgs {
        DistillArgs {
            args: vec![
                "distill".into(),
                "--data-dir".into(),
                data.display().to_string(),
                "--out".into(),
                out.display().to_string(),
            ],
        }
    }

    /// Adds `NAME VALUE` (`name` with its dashes, e.g. `--alpha`).
    pub fn flag(mut self, name: &str, value: impl ToString) -> DistillArgs {
        self.args.push(name.to_string());
        self.args.push(value.to_string());
        self
    }

    /// Adds a flag without a value (e.g. `--resume`).
    pub fn switch(mut self, name: &str) -> DistillArgs {
        self.args.push(name.to_string());
        self
    }

    /// `--teacher URL`.
    pub fn teacher(self, url: impl ToString) -> DistillArgs {
        self.flag("--teacher", url)
    }

    /// `--teacher URL` for each URL.
    pub fn teachers<S: ToString>(self, urls: &[S]) -> DistillArgs {
        urls.iter().fold(self, |a, u| a.teacher(u.to_string()))
    }

    /// `--teacher-group NAME=URL,URL`.
    pub fn teacher_group<S: AsRef<str>>(self, name: &str, urls: &[S]) -> DistillArgs {
        let urls: Vec<&str> = urls.iter().map(AsRef::as_ref).collect();
        self.flag("--teacher-group", format!("{name}={}", urls.join(",")))
    }

    /// `--arch ARCH`.
    pub fn arch(self, arch: &str) -> DistillArgs {
        self.flag("--arch", arch)
    }

    /// `--epochs N`.
    pub fn epochs(self, n: u64) -> DistillArgs {
        self.flag("--epochs", n)
    }

    /// `--batch-size N`.
    pub fn batch_size(self, n: usize) -> DistillArgs {
        self.flag("--batch-size", n)
    }

    /// `--prefetch N`.
    pub fn prefetch(self, n: usize) -> DistillArgs {
        self.flag("--prefetch", n)
    }

    /// `--batch-ledger PATH`.
    pub fn ledger(self, path: &Path) -> DistillArgs {
        self.flag("--batch-ledger", path.display())
    }

    /// `--wire DTYPE` (`f32`, `f16`, `bf16`).
    pub fn wire(self, dtype: &str) -> DistillArgs {
        self.flag("--wire", dtype)
    }

    /// `--top-k K`.
    pub fn top_k(self, k: u32) -> DistillArgs {
        self.flag("--top-k", k)
    }

    /// `--sparse-tail MODE` (`bucket`, `uniform`, `renorm`).
    pub fn sparse_tail(self, mode: &str) -> DistillArgs {
        self.flag("--sparse-tail", mode)
    }

    /// `--ensemble-mode MODE` (`mix`, `sample`).
    pub fn ensemble_mode(self, mode: &str) -> DistillArgs {
        self.flag("--ensemble-mode", mode)
    }

    /// `--no-epoch-eval`.
    pub fn no_epoch_eval(self) -> DistillArgs {
        self.switch("--no-epoch-eval")
    }

    /// `--resume`.
    pub fn resume(self) -> DistillArgs {
        self.switch("--resume")
    }

    /// The arguments.
    pub fn build(self) -> Vec<String> {
        self.args
    }
}

/// Writes a learnable synthetic dataset in the Fashion-MNIST layout (raw IDX files
/// `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-…`) into `dir`: 28×28 images of
/// noise with a bright 6×6 block whose position depends on the class (`classes` ≤ 12).
pub fn write_synthetic_idx(dir: &Path, train: usize, test: usize, classes: u8, seed: u64) {
    std::fs::create_dir_all(dir).expect("create data dir");
    let mut rng = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    let mut next = move || {
        // xorshift64*
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as u32
    };
    for (prefix, n) in [("train", train), ("t10k", test)] {
        let mut images = Vec::with_capacity(16 + n * 784);
        images.extend(0x0000_0803u32.to_be_bytes());
        for d in [n as u32, 28, 28] {
            images.extend(d.to_be_bytes());
        }
        let mut labels = Vec::with_capacity(8 + n);
        labels.extend(0x0000_0801u32.to_be_bytes());
        labels.extend((n as u32).to_be_bytes());
        for _ in 0..n {
            let c = (next() % classes as u32) as u8;
            labels.push(c);
            let (r0, c0) = (2 + 8 * (c as usize / 4), 2 + 7 * (c as usize % 4));
            // Jitter the block by up to 2 pixels so the task is not a lookup.
            let (dr, dc) = ((next() % 3) as usize, (next() % 3) as usize);
            for r in 0..28 {
                for col in 0..28 {
                    let inside = (r0 + dr..r0 + dr + 6).contains(&r)
                        && (c0 + dc..c0 + dc + 6).contains(&col);
                    let noise = (next() % 90) as u8;
                    images.push(if inside {
                        150 + (next() % 100) as u8
                    } else {
                        noise
                    });
                }
            }
        }
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images)
            .expect("write images");
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels)
            .expect("write labels");
    }
}

/// Parses a JSON file.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Batches the replica `url` answered, from a `report.json` (`None` when the report does not
/// list it).
pub fn batches_answered(report: &serde_json::Value, url: &str) -> Option<u64> {
    report["replicas"]
        .as_array()
        .expect("report.json has a replicas list")
        .iter()
        .find(|x| x["url"] == url)
        .map(|x| x["batches_answered"].as_u64().expect("batches_answered"))
}

/// The lines of `dir/metrics.jsonl`.
pub fn read_metrics(dir: &Path) -> Vec<serde_json::Value> {
    let path = dir.join("metrics.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("metrics line is JSON"))
        .collect()
}

/// Largest absolute difference between same-named tensors of two safetensors files; panics if
/// their names or shapes differ.
pub fn max_abs_diff(a: &Path, b: &Path) -> f64 {
    let mut ta = tch::Tensor::read_safetensors(a).expect("read safetensors");
    let mut tb = tch::Tensor::read_safetensors(b).expect("read safetensors");
    ta.sort_by(|x, y| x.0.cmp(&y.0));
    tb.sort_by(|x, y| x.0.cmp(&y.0));
    let names = |v: &[(String, tch::Tensor)]| v.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&ta), names(&tb), "{} vs {}", a.display(), b.display());
    ta.iter()
        .zip(&tb)
        .map(|((n, x), (_, y))| {
            assert_eq!(x.size(), y.size(), "{n}");
            let d = (x.to_kind(tch::Kind::Double) - y.to_kind(tch::Kind::Double)).abs();
            if d.numel() == 0 {
                0.0
            } else {
                d.max().double_value(&[])
            }
        })
        .fold(0.0, f64::max)
}

/// A `student-trainer` process started with [`spawn_student`], running while the test acts on
/// the teachers.
#[derive(Debug)]
pub struct StudentProcess {
    child: tokio::process::Child,
}

/// Starts `student-trainer ARGS` like [`student`] (CPU, one thread, warnings-only logs) without
/// waiting for it.
pub fn spawn_student<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> StudentProcess {
    let child = tokio::process::Command::new(student_trainer_bin())
        .args(args)
        .env("STUDENT_DEVICE", "cpu")
        .env("STUDENT_THREADS", "1")
        .env("RUST_LOG", "warn")
        .env_remove("STUDENT_DATA_DIR")
        .env_remove("STUDENT_TEACHER")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn student-trainer");
    StudentProcess { child }
}

impl StudentProcess {
    /// Waits for the process to exit (at most 5 minutes) and returns its output.
    ///
    /// # Panics
    /// If it runs longer.
    pub async fn finish(self) -> Run {
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(300),
            self.child.wait_with_output(),
        )
        .await
        .expect("student-trainer finished within 5 minutes")
        .expect("wait for student-trainer");
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }
}

/// The lines of a `--batch-ledger` file (missing file: none).
pub fn read_ledger(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Polls the ledger until it holds at least `n` lines; returns how many it holds then.
///
/// # Panics
/// If the student exits first or a minute passes.
pub async fn wait_for_ledger(path: &Path, n: usize, student: &mut StudentProcess) -> usize {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let have = read_ledger(path).len();
        if have >= n {
            return have;
        }
        assert!(
            !student.exited(),
            "student exited with {have} ledger lines, before {n}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "ledger stuck at {have} lines"
        );
        // Polling the file the student appends to (no event to wait on across processes).
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}

/// Checks that a ledger holds every batch of `epochs` epochs of `batches` batches exactly once;
/// returns the number of lines per replica URL.
///
/// # Panics
/// On a missing or duplicate batch.
pub fn assert_exactly_once(
    ledger: &[serde_json::Value],
    epochs: u64,
    batches: u64,
) -> std::collections::BTreeMap<String, usize> {
    let mut seen = std::collections::BTreeSet::new();
    let mut per_replica = std::collections::BTreeMap::new();
    for l in ledger {
        let key = (l["epoch"].as_u64().unwrap(), l["index"].as_u64().unwrap());
        assert!(seen.insert(key), "batch {key:?} trained twice");
        *per_replica
            .entry(l["replica"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen.len() as u64,
        epochs * batches,
        "expected {epochs}×{batches} batches trained once each"
    );
    per_replica
}

/// Runs 12 batches of 8 random `[1, 28, 28]` samples through `pool`; checks they arrive in plan
/// order with `[8, 10]` logits, and returns the replica that answered each.
pub async fn run_once(pool: &mut Pool) -> Vec<String> {
    let inputs = crate::random_inputs(96, &[1, 28, 28]);
    let plan: Vec<PlannedBatch> = (0..12)
        .map(|i| PlannedBatch {
            epoch: 0,
            index: i,
            indices: (i as i64 * 8..i as i64 * 8 + 8).collect(),
        })
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<TeacherBatch>(4);
    let collect = async {
        let mut got = Vec::new();
        while let Some(b) = rx.recv().await {
            assert_eq!(b.index, got.len(), "batches in plan order");
            let logits = b.targets.as_dense().expect("dense logits");
            assert_eq!(logits.size(), [8, 10]);
            got.push(b.replica);
        }
        got
    };
    let (ran, got) = tokio::join!(
        pool.run(plan, inputs, RunTargets::dense_f32(1.0), tx),
        collect
    );
    ran.expect("pool run");
    assert_eq!(got.len(), 12);
    got
}

/// Writes a small synthetic English-like dictionary in the GCIDE's dictd layout
/// (`gcide.dict.dz`: the entries gzip'ed; `gcide.index`: `HEADWORD\tOFFSET\tLENGTH` with dictd's
/// base-64 numbers) into `dir`, so that `student-trainer --data-dir DIR` reads it as a text
/// corpus. `entries` entries of 20 to 60 words drawn from a fixed word list by a generator
/// seeded with `seed`: another seed gives another corpus (and another BPE tokenizer).
pub fn write_synthetic_corpus(dir: &Path, entries: usize, seed: u64) {
    use std::io::Write as _;
    const WORDS: &[&str] = &[
        "the",
        "a",
        "of",
        "to",
        "and",
        "in",
        "that",
        "is",
        "for",
        "it",
        "as",
        "with",
        "be",
        "by",
        "on",
        "not",
        "or",
        "which",
        "from",
        "at",
        "plant",
        "animal",
        "small",
        "large",
        "water",
        "used",
        "having",
        "kind",
        "form",
        "made",
        "part",
        "body",
        "any",
        "one",
        "state",
        "act",
        "quality",
        "color",
        "genus",
        "family",
        "species",
        "tree",
        "bird",
        "fish",
        "stone",
        "metal",
        "light",
        "sound",
        "hard",
        "soft",
        "long",
        "short",
        "white",
        "black",
        "red",
        "green",
        "old",
        "new",
        "formerly",
        "especially",
    ];
    std::fs::create_dir_all(dir).expect("create corpus dir");
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |n: usize| {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        ((rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize) % n
    };
    let b64 = |mut n: usize| {
        const DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        loop {
            out.push(DIGITS[n % 64]);
            n /= 64;
            if n == 0 {
                break;
            }
        }
        out.reverse();
        String::from_utf8(out).expect("ascii")
    };
    let mut text = Vec::<u8>::new();
    let mut index = Vec::new();
    for i in 0..entries {
        let head = format!("{}{i}", WORDS[next(WORDS.len())]);
        let words: Vec<&str> = (0..20 + next(41))
            .map(|_| WORDS[next(WORDS.len())])
            .collect();
        let body = format!(
            "{head} \\{head}\\, n.\n   {}.\n   [1913 Webster]\n\n",
            words.join(" ")
        );
        index.push(format!(
            "{head}\t{}\t{}\n",
            b64(text.len()),
            b64(body.len())
        ));
        text.extend_from_slice(body.as_bytes());
    }
    index.sort();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&text).expect("gzip corpus");
    std::fs::write(dir.join("gcide.dict.dz"), gz.finish().expect("gzip corpus"))
        .expect("write gcide.dict.dz");
    std::fs::write(dir.join("gcide.index"), index.concat()).expect("write gcide.index");
}
