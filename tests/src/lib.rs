//! Integration-test harness: runs the real `teacher-server` (and `student-trainer`) binaries on
//! local ports and talks to them over gRPC.
//!
//! - [`binary`] finds a built binary in `target/<profile>/` (next to the test executable's
//!   `deps/` folder); build them first with `cargo build --workspace --bins` (`make test` does:
//!   `cargo test` builds only this crate's own binaries for its tests).
//! - [`Server::spawn`] starts any binary that prints `listening on HOST:PORT` as its first stdout
//!   line (pass `--listen 127.0.0.1:0`), captures its logs (printed if the test panics), and kills
//!   it on drop. [`TeacherProcess::start`] does that for `teacher-server` and waits on `grpc.health.v1`
//!   until the teacher is serving — no sleeps.
//! - [`fixtures`] exports the TorchScript teachers with the project's Python torch
//!   ([`python`]), once per script version (cached in the system temp dir).
//! - [`fresh_checkpoint`] writes a checkpoint directory of a freshly initialised built-in
//!   architecture, as `student-trainer` would ([`scaled_checkpoint`]: with weights scaled up).
//! - The crate's test-only binary `stalling-teacher-server` is `teacher-server` with a model that
//!   hangs after N forward passes ([`TeacherProcess::start_binary`] runs it).
//! - [`LogitsStream`] drives one `StreamLogits` call; [`request`], [`to_wire`] and [`from_wire`]
//!   convert tensors.
//! - [`text_files`] writes corpora of `.txt`/`.jsonl` files and trains their tokenizer with
//!   Python's `tokenizers`, as a user would.
//! - [`torch_rng`] serialises the use of libtorch's global random generator: the tests share one
//!   process (`tests/integration.rs`) and run on parallel threads.
//! - [`images`] writes image folders from generated PNG files and computes a file's view.

pub mod images;
pub mod text_files;
pub mod trainer;

use distill_models::{ArchSpec, Checkpoint, CheckpointMeta, Network};
use distill_proto::codec;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tch::{Device, Tensor, nn};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

pub use distill_proto::v1;
/// The generated `Teacher` client.
pub type TeacherClient = v1::teacher_client::TeacherClient<Channel>;

/// How long a server may take to print its address and report healthy.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest message the test clients send or accept (tests of the server's limit go above it on
/// purpose by configuring the server lower).
pub const CLIENT_MAX_MESSAGE_BYTES: usize = 256 << 20;

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A local TCP port that was free a moment ago and has no listener now: a teacher URL that
/// refuses connections.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// Path of the built binary `name` in `target/<profile>/`, beside this test executable's `deps/`.
///
/// # Panics
/// With instructions, if the binary has not been built.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executables live in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before the tests (`make test` does)",
        path.display()
    );
    path
}

/// A command running the built binary `name` (see [`binary`]), for one-shot runs such as
/// `student-trainer distill ...`; `RUST_LOG` defaults to `info`.
pub fn command(name: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(binary(name));
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd
}

/// The `PYTHONPATH` that makes the project's torch importable: the parent of the resolved
/// `LIBTORCH` (the wheel's `torch/` folder lives in it). `None` when `LIBTORCH` is not a wheel.
pub fn torch_pythonpath() -> Option<PathBuf> {
    let libtorch = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .or_else(|| option_env!("LIBTORCH").map(PathBuf::from))?;
    let libtorch = if libtorch.is_relative() {
        workspace_root().join(libtorch)
    } else {
        libtorch
    };
    let resolved = libtorch.canonicalize().ok()?;
    let parent = resolved.parent()?;
    parent
        .join("torch")
        .join("__init__.py")
        .is_file()
        .then(|| parent.to_path_buf())
}

/// A `python3` command (or `$PYTHON`) that imports the project's torch.
pub fn python() -> std::process::Command {
    let exe = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let mut cmd = std::process::Command::new(exe);
    if let Some(path) = torch_pythonpath() {
        let mut pp = path.into_os_string();
        if let Some(old) = std::env::var_os("PYTHONPATH") {
            pp.push(":");
            pp.push(old);
        }
        cmd.env("PYTHONPATH", pp);
    }
    cmd
}

/// TorchScript teachers made by `scripts/export_teacher.py` (small CNNs, f32 `[1, 28, 28]`
/// inputs, 10 logits, and a small causal LM, each with its sidecar `FILE.json`).
#[derive(Debug, Clone)]
pub struct Fixtures {
    /// Folder holding them.
    pub dir: PathBuf,
    /// Saved in eval mode, seed 0.
    pub teacher: PathBuf,
    /// The same weights saved in training mode (dropout active unless switched to eval).
    pub teacher_train: PathBuf,
    /// Other weights (seed 1).
    pub teacher_other: PathBuf,
    /// A small causal LM (`forward(input_ids, attention_mask)`, vocabulary 64, sequences up to
    /// 16 tokens; 2 pre-norm blocks of width 32 with 4 heads, the built-in `lm` family), with a
    /// sidecar naming `lm_tokenizer.json` beside it as its tokenizer.
    pub lm: PathBuf,
    /// Returns `(logits, features)`: `relu(Linear(784, 64))` features and a `Linear(64, 10)`
    /// head (`feature.*`, `head.*` parameters), for `[1, 28, 28]` inputs.
    pub multi_tuple: PathBuf,
    /// The same weights, returning `{"logits": ..., "features": ...}`.
    pub multi_dict: PathBuf,
    /// Returns `(logits, features.mean(0))`: a second output without the batch dimension.
    pub multi_batchless: PathBuf,
    /// Returns `(logits, batch size)`: a second output that is an int.
    pub multi_int: PathBuf,
}

/// The TorchScript fixtures, exported once per version of the export script: cached in
/// `$TMPDIR/distill-fixtures-<hash of the script and torch path>`, written atomically.
///
/// # Panics
/// If the script fails (its output is in the message).
pub fn fixtures() -> &'static Fixtures {
    static FIXTURES: OnceLock<Fixtures> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        use std::hash::{Hash, Hasher};
        let script = workspace_root().join("scripts").join("export_teacher.py");
        let source = std::fs::read(&script).expect("read scripts/export_teacher.py");
        let mut h = std::collections::hash_map::DefaultHasher::new();
        source.hash(&mut h);
        torch_pythonpath().hash(&mut h);
        let dir = std::env::temp_dir().join(format!("distill-fixtures-{:016x}", h.finish()));
        let files = Fixtures {
            teacher: dir.join("teacher.pt"),
            teacher_train: dir.join("teacher_train.pt"),
            teacher_other: dir.join("teacher_other.pt"),
            lm: dir.join("lm.pt"),
            multi_tuple: dir.join("multi_tuple.pt"),
            multi_dict: dir.join("multi_dict.pt"),
            multi_batchless: dir.join("multi_batchless.pt"),
            multi_int: dir.join("multi_int.pt"),
            dir: dir.clone(),
        };
        if dir.join(".complete").is_file() {
            return files;
        }
        let tmp = std::env::temp_dir().join(format!(
            "distill-fixtures-{}-{:?}.partial",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&tmp);
        let out = python()
            .arg(&script)
            .arg("--out-dir")
            .arg(&tmp)
            .output()
            .expect("run python3 (set PYTHON to choose the interpreter)");
        assert!(
            out.status.success(),
            "scripts/export_teacher.py failed ({}); is torch installed (`make setup`)?\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(tmp.join(".complete"), b"").expect("mark fixtures complete");
        // Another test process may have won the race; either copy is complete.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        assert!(dir.join(".complete").is_file(), "fixtures missing in {}", dir.display());
        files
    })
}

/// Exclusive use of libtorch's global random generator, until the guard is dropped.
///
/// The integration tests share one process and run on parallel threads, and libtorch draws
/// everything (`Tensor::randn`, `randint`, weight initialisation, which includes
/// `Checkpoint::load_network` before the saved weights replace the drawn ones, dropout in
/// training mode) from one process-wide generator, which `tch::manual_seed` resets. A test that
/// seeds it and expects the draws that follow (the weights `student-trainer` draws for a seed)
/// would get others if a test on another thread drew or reseeded in between. So every draw in
/// the harness and the tests holds this guard: a seeded section around its seed and draws, an
/// unseeded draw around the draw alone. Never take it twice on one thread (it is not
/// reentrant): the harness's [`random_inputs`], [`fresh_checkpoint`], [`scaled_checkpoint`] and
/// [`checkpoint_forward`] take it themselves.
pub fn torch_rng() -> std::sync::MutexGuard<'static, ()> {
    static RNG: Mutex<()> = Mutex::new(());
    // A test that panicked while holding it left the generator in a valid state.
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// A temporary directory, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `$TMPDIR/<prefix>-<pid>-<n>`.
    pub fn new(prefix: &str) -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a checkpoint of a freshly initialised built-in architecture (`cnn`, `mlp`,
/// `mlp:H1,...`) into `dir`, as `student-trainer` would, and returns it (its `meta.fingerprint`
/// is the weights' fingerprint). Each call draws new random weights.
///
/// # Panics
/// On an unknown architecture or a write failure.
pub fn fresh_checkpoint(
    dir: &Path,
    arch: &str,
    input_shape: &[i64],
    num_classes: i64,
) -> Checkpoint {
    scaled_checkpoint(dir, arch, input_shape, num_classes, 1.0)
}

/// [`fresh_checkpoint`] with every weight and bias multiplied by `scale` before saving: with a
/// large scale, a teacher whose logits overflow (f16 above 65504, or f32 to infinity).
///
/// # Panics
/// As [`fresh_checkpoint`].
pub fn scaled_checkpoint(
    dir: &Path,
    arch: &str,
    input_shape: &[i64],
    num_classes: i64,
    scale: f64,
) -> Checkpoint {
    let spec = ArchSpec {
        arch: arch.parse().expect("architecture name"),
        input_shape: input_shape.to_vec(),
        num_classes,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    {
        let _rng = torch_rng();
        Network::new(&vs.root(), &spec).expect("build network");
    }
    if scale != 1.0 {
        tch::no_grad(|| {
            for (_, mut t) in vs.variables() {
                let _ = t.f_mul_scalar_(scale).expect("scale weights");
            }
        });
    }
    let meta = CheckpointMeta {
        arch: spec,
        epoch: 0,
        step: 0,
        fingerprint: String::new(),
        metrics: serde_json::Value::Null,
        trainer: serde_json::Value::Null,
    };
    Checkpoint::save(dir, meta, &vs, &[]).expect("save checkpoint")
}

/// Runs `teacher-server --model MODEL --device cpu --listen 127.0.0.1:0 EXTRA...` to its exit
/// and returns (exit code, stderr), for a model the server must refuse. A server still up after
/// a minute is serving the model: killed, and the test fails.
pub async fn serve_to_exit(model: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let child = tokio::process::Command::from(command("teacher-server"))
        .arg("--model")
        .arg(model)
        .args(["--device", "cpu", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run teacher-server");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("teacher-server kept serving a model it should refuse")
        .expect("wait for teacher-server");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one `Error:` line of a failed `teacher-server` (exit code `code`, output `stderr`),
/// checked to be the only error output and free of libtorch frame dumps.
pub fn error_line(code: Option<i32>, stderr: &str) -> String {
    assert!(
        code.is_some_and(|c| c != 0),
        "expected a failure:\n{stderr}"
    );
    assert!(
        !stderr.contains("frame #")
            && !stderr.contains("Caused by")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{stderr}");
    errors[0].to_string()
}

/// Logits `f32 [batch, num_classes]` of `inputs` by the checkpoint's network in eval mode, in
/// this process (the reference the server's answers are compared with).
pub fn checkpoint_forward(ck: &Checkpoint, inputs: &Tensor) -> Tensor {
    let _g = tch::no_grad_guard();
    let (_vs, net) = {
        // Building the network draws initial weights before the saved ones replace them.
        let _rng = torch_rng();
        ck.load_network(Device::Cpu).expect("load checkpoint")
    };
    net.forward(inputs, false).expect("forward")
}

/// Logits of `inputs` by a TorchScript file in eval mode, in this process.
pub fn torchscript_forward(path: &Path, inputs: &Tensor) -> Tensor {
    let _g = tch::no_grad_guard();
    let mut m = tch::CModule::load(path).expect("load TorchScript");
    m.set_eval();
    m.forward_ts(&[inputs]).expect("forward")
}

/// Random `f32` inputs `[batch, ...sample_shape]`.
pub fn random_inputs(batch: i64, sample_shape: &[i64]) -> Tensor {
    let mut shape = vec![batch];
    shape.extend_from_slice(sample_shape);
    let _rng = torch_rng();
    Tensor::randn(shape.as_slice(), (tch::Kind::Float, Device::Cpu))
}

/// Largest absolute difference between two tensors of the same shape (as f64).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    (a.to_kind(tch::Kind::Double) - b.to_kind(tch::Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Encodes a tensor for the wire.
pub fn to_wire(t: &Tensor) -> v1::Tensor {
    codec::encode(t).expect("encode tensor")
}

/// Decodes a wire tensor.
pub fn from_wire(t: &v1::Tensor) -> Tensor {
    codec::decode(t).expect("decode tensor")
}

/// A dense-logits request for `inputs`.
pub fn request(batch_id: u64, inputs: &Tensor) -> v1::LogitsRequest {
    v1::LogitsRequest {
        batch_id,
        inputs: Some(to_wire(inputs)),
        output_dtype: v1::DType::F32 as i32,
        top_k: 0,
        temperature: 0.0,
        attention_mask: None,
        outputs: Vec::new(),
        gather_ids: None,
        gathered_only: false,
    }
}

/// The dense logits of a response, with its timing.
///
/// # Panics
/// If the response carries an error or sparse logits.
pub fn dense(resp: &v1::LogitsResponse) -> Tensor {
    match &resp.result {
        Some(v1::logits_response::Result::Logits(t)) => from_wire(t),
        other => panic!(
            "batch {}: expected dense logits, got {other:?}",
            resp.batch_id
        ),
    }
}

/// Bounded buffer of a server's output lines (last 2,000 kept), which tests can wait on.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    lines: Arc<Mutex<std::collections::VecDeque<String>>>,
    added: Arc<tokio::sync::Notify>,
}

impl Logs {
    fn push(&self, line: String) {
        {
            let mut q = self.lines.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() == 2000 {
                q.pop_front();
            }
            q.push_back(line);
        }
        self.added.notify_waiters();
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        let q = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().map(String::as_str).collect::<Vec<_>>().join("\n")
    }

    /// Whether a captured line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        let q = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        q.iter().any(|l| l.contains(needle))
    }

    /// How many captured lines contain every one of `needles`.
    pub fn count(&self, needles: &[&str]) -> usize {
        let q = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        q.iter()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .count()
    }

    /// Waits until a line containing `needle` has been captured (woken by each new line).
    ///
    /// # Panics
    /// If none arrives within `timeout` (the logs are in the message).
    pub async fn wait_for(&self, needle: &str, timeout: Duration) {
        self.wait_for_count(&[needle], 1, timeout).await;
    }

    /// Waits until `n` captured lines contain every one of `needles` (woken by each new line).
    ///
    /// # Panics
    /// If fewer than `n` have arrived within `timeout` (the logs are in the message).
    pub async fn wait_for_count(&self, needles: &[&str], n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if self.count(needles) >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                panic!(
                    "fewer than {n} log lines containing {needles:?} within {timeout:?}; logs:\n{}",
                    self.text()
                );
            }
        }
    }
}

fn drain<R: AsyncRead + Unpin + Send + 'static>(reader: R, logs: Logs, prefix: &'static str) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            logs.push(format!("{prefix}{line}"));
        }
    });
}

/// A running server process (killed on drop; its logs are printed if the test is panicking).
#[derive(Debug)]
pub struct Server {
    child: tokio::process::Child,
    /// The address it reported on its first stdout line.
    pub addr: SocketAddr,
    /// Its stdout (after the first line) and stderr.
    pub logs: Logs,
    name: String,
    /// The client TLS settings it is reached with (`None`: plain text).
    tls: Option<ClientTlsConfig>,
}

impl Server {
    /// Starts `bin` (a path, e.g. from [`binary`]) with `args`, which must make it listen on port
    /// 0 (`--listen 127.0.0.1:0`), and waits for its `listening on HOST:PORT` line.
    ///
    /// # Panics
    /// If it exits or stays silent for [`STARTUP_TIMEOUT`] (its stderr is in the message).
    pub async fn spawn<I, S>(bin: &Path, args: I) -> Server
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let name = bin
            .file_name()
            .map_or_else(|| "server".into(), |n| n.to_string_lossy().into_owned());
        let mut child = tokio::process::Command::new(bin)
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,teacher_server=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let logs = Logs::default();
        drain(child.stderr.take().expect("stderr"), logs.clone(), "");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(STARTUP_TIMEOUT, stdout.next_line()).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            other => {
                let status = child.try_wait().ok().flatten();
                // Give the stderr drain a moment's worth of lines by waiting for the exit.
                if status.is_none() {
                    let _ = child.start_kill();
                }
                let _ = child.wait().await;
                panic!(
                    "{name} did not print `listening on HOST:PORT` ({other:?}, exit {status:?}); logs:\n{}",
                    logs.text()
                );
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .unwrap_or_else(|| {
                panic!("{name}: first stdout line {line:?} is not `listening on HOST:PORT`")
            });
        drain(stdout.into_inner(), logs.clone(), "stdout: ");
        Server {
            child,
            addr,
            logs,
            name,
            tls: None,
        }
    }

    /// `http://HOST:PORT`, or `https://HOST:PORT` for a server reached over TLS (see
    /// [`Server::use_tls`]).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Reaches the server over TLS with `tls` from now on ([`Server::url`], [`Server::channel`],
    /// [`Server::wait_healthy`]).
    pub fn use_tls(&mut self, tls: ClientTlsConfig) {
        self.tls = Some(tls);
    }

    /// An endpoint for [`Server::url`], with the TLS settings if any.
    fn endpoint(&self) -> Result<Endpoint, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(self.url())?;
        match &self.tls {
            Some(tls) => endpoint.tls_config(tls.clone()),
            None => Ok(endpoint),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("server is running")
    }

    /// A fresh connection (each call opens its own HTTP/2 connection).
    pub async fn channel(&self) -> Channel {
        self.endpoint()
            .expect("valid url")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap_or_else(|e| {
                panic!("connect to {}: {e}\nlogs:\n{}", self.name, self.logs.text())
            })
    }

    /// Sends a signal (`TERM`, `INT`, ...) with `kill -s`.
    pub fn signal(&self, signal: &str) {
        let ok = std::process::Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -s {signal} {} failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit.
    ///
    /// # Panics
    /// If it is still running then.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for server"),
            Err(_) => panic!(
                "{} still running after {timeout:?}; logs:\n{}",
                self.name,
                self.logs.text()
            ),
        }
    }

    /// Waits until `grpc.health.v1.Health/Check` reports `service` SERVING.
    ///
    /// # Panics
    /// If the process exits or [`STARTUP_TIMEOUT`] passes first.
    pub async fn wait_healthy(&mut self, service: &str) {
        use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        let mut last = String::new();
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited with {status} while starting; logs:\n{}",
                    self.name,
                    self.logs.text()
                );
            }
            let attempt = async {
                let channel = self
                    .endpoint()
                    .map_err(|e| e.to_string())?
                    .connect()
                    .await
                    .map_err(|e| e.to_string())?;
                let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
                let resp = client
                    .check(HealthCheckRequest {
                        service: service.to_string(),
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(resp.into_inner().status)
            };
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(s)) if s == ServingStatus::Serving as i32 => return,
                Ok(Ok(s)) => last = format!("status {s}"),
                Ok(Err(e)) => last = e,
                Err(_) => last = "health check timed out".into(),
            }
            // Back off between polls of a server that is still loading (not a synchronisation).
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} not healthy after {STARTUP_TIMEOUT:?} ({last}); logs:\n{}",
            self.name,
            self.logs.text()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        if std::thread::panicking() {
            eprintln!(
                "---- {} logs ----\n{}\n---- end of logs ----",
                self.name,
                self.logs.text()
            );
        }
    }
}

/// The gRPC service name health reports for the teacher.
pub const TEACHER_SERVICE: &str = "distill.v1.Teacher";

/// A running `teacher-server` (derefs to [`Server`]).
#[derive(Debug)]
pub struct TeacherProcess {
    /// The process.
    pub server: Server,
}

impl std::ops::Deref for TeacherProcess {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.server
    }
}

impl std::ops::DerefMut for TeacherProcess {
    fn deref_mut(&mut self) -> &mut Server {
        &mut self.server
    }
}

impl TeacherProcess {
    /// Starts `teacher-server --model MODEL --device cpu --listen 127.0.0.1:0 EXTRA...` and waits
    /// until it reports healthy. `model` may be a TorchScript file, a checkpoint directory, or a
    /// `.safetensors` file (then pass `--arch` etc. in `extra`). Later flags win, so `extra` may
    /// override `--device`.
    pub async fn start<S: AsRef<OsStr>>(model: &Path, extra: &[S]) -> TeacherProcess {
        Self::start_binary("teacher-server", model, extra).await
    }

    /// [`TeacherProcess::start`] for another binary that takes `teacher-server`'s flags, such as
    /// the test-only `stalling-teacher-server` (its own flags go in `extra`).
    pub async fn start_binary<S: AsRef<OsStr>>(
        name: &str,
        model: &Path,
        extra: &[S],
    ) -> TeacherProcess {
        Self::start_reached(name, model, extra, None).await
    }

    /// [`TeacherProcess::start`] for a server with `--tls-cert` etc. in `extra`, reached (health
    /// check included) over TLS with `tls`.
    pub async fn start_tls<S: AsRef<OsStr>>(
        model: &Path,
        extra: &[S],
        tls: ClientTlsConfig,
    ) -> TeacherProcess {
        Self::start_reached("teacher-server", model, extra, Some(tls)).await
    }

    async fn start_reached<S: AsRef<OsStr>>(
        name: &str,
        model: &Path,
        extra: &[S],
        tls: Option<ClientTlsConfig>,
    ) -> TeacherProcess {
        let mut args: Vec<&OsStr> = vec![
            OsStr::new("--model"),
            model.as_os_str(),
            OsStr::new("--device"),
            OsStr::new("cpu"),
            OsStr::new("--listen"),
            OsStr::new("127.0.0.1:0"),
        ];
        args.extend(extra.iter().map(AsRef::as_ref));
        let mut server = Server::spawn(&binary(name), args).await;
        server.tls = tls;
        server.wait_healthy(TEACHER_SERVICE).await;
        TeacherProcess { server }
    }

    /// A `Teacher` client on a fresh connection, with message limits raised to
    /// [`CLIENT_MAX_MESSAGE_BYTES`].
    pub async fn client(&self) -> TeacherClient {
        TeacherClient::new(self.channel().await)
            .max_decoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(CLIENT_MAX_MESSAGE_BYTES)
    }

    /// `GetModelInfo`.
    pub async fn info(&self) -> v1::ModelInfo {
        self.client()
            .await
            .get_model_info(v1::GetModelInfoRequest {})
            .await
            .expect("GetModelInfo")
            .into_inner()
    }

    /// Dense logits of `inputs` through a one-request stream.
    pub async fn logits(&self, inputs: &Tensor) -> (Tensor, v1::Timing) {
        let mut s = LogitsStream::open(&mut self.client().await).await;
        s.send(request(1, inputs)).await;
        let resp = s
            .recv()
            .await
            .expect("a response")
            .expect("no stream error");
        (dense(&resp), resp.timing.unwrap_or_default())
    }
}

/// One `StreamLogits` call: send requests, receive responses (in completion order).
#[derive(Debug)]
pub struct LogitsStream {
    tx: Option<mpsc::Sender<v1::LogitsRequest>>,
    rx: tonic::Streaming<v1::LogitsResponse>,
}

impl LogitsStream {
    /// Opens the stream.
    ///
    /// # Panics
    /// If the server refuses the call.
    pub async fn open(client: &mut TeacherClient) -> LogitsStream {
        let (tx, rx) = mpsc::channel(64);
        let resp = client
            .stream_logits(ReceiverStream::new(rx))
            .await
            .expect("StreamLogits call");
        LogitsStream {
            tx: Some(tx),
            rx: resp.into_inner(),
        }
    }

    /// Queues a request (the stream is buffered; this waits only when 64 are unsent).
    ///
    /// # Panics
    /// If the stream was closed with [`LogitsStream::close_send`] or the call ended.
    pub async fn send(&mut self, req: v1::LogitsRequest) {
        self.tx
            .as_ref()
            .expect("stream still open for sending")
            .send(req)
            .await
            .expect("request stream open");
    }

    /// Half-closes: no more requests; the server answers what it has and ends the stream.
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    /// The next response: `Some(Ok)`, `Some(Err(status))` when the call ended with an error,
    /// `None` when it ended OK. Waits at most 60 s.
    pub async fn recv(&mut self) -> Option<Result<v1::LogitsResponse, tonic::Status>> {
        let next = tokio::time::timeout(STARTUP_TIMEOUT, self.rx.message())
            .await
            .expect("a response within 60 s");
        next.transpose()
    }

    /// The next response, which must be a successful one.
    pub async fn recv_ok(&mut self) -> v1::LogitsResponse {
        match self.recv().await {
            Some(Ok(r)) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    }
}

/// `GET path` over plain HTTP/1.1 to `addr` (the `--metrics-listen` endpoint): the status code
/// and the body.
///
/// # Panics
/// If the connection or the read fails, or the answer is not HTTP.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("send the request");
    let mut raw = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut s, &mut raw)
        .await
        .expect("read the answer");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let code = text
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Scrapes `http://addr/metrics` and parses it with a Prometheus text-format parser.
///
/// # Panics
/// If the scrape fails or does not parse.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let (code, body) = http_get(addr, "/metrics").await;
    assert_eq!(code, 200, "GET /metrics: {body}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    Scrape(prometheus_parse::Scrape::parse(lines).unwrap_or_else(|e| panic!("{e}: {body}")))
}

/// A parsed `/metrics` answer.
#[derive(Debug)]
pub struct Scrape(pub prometheus_parse::Scrape);

impl Scrape {
    /// The value of the sample `name` whose labels include `labels` (counter, gauge or untyped;
    /// a histogram's `_count` and `_sum` are their own samples); `None` if absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        use prometheus_parse::Value;
        match &self.sample(name, labels)?.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
            Value::Histogram(_) | Value::Summary(_) => None,
        }
    }

    /// The number of observations of histogram `name` with `labels`; `None` if absent.
    pub fn histogram_count(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match &self.sample(name, labels)?.value {
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map(|b| b.count),
            _ => None,
        }
    }

    /// The first sample `name` whose labels include `labels`.
    fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Option<&prometheus_parse::Sample> {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
    }
}

/// One `StreamLogits` stream of load: keeps `in_flight` copies of `wire` outstanding (numbered
/// from 0) until `stop` is raised, adding `per_answer` to `answered` for each answer (its samples,
/// or 1 to count answers), then waits for the last answers. Used by `bench` and `soak`.
///
/// # Errors
/// A message naming what failed: the call, the stream, or a per-batch refusal.
pub async fn drive_stream(
    mut client: TeacherClient,
    wire: v1::LogitsRequest,
    per_answer: u64,
    in_flight: usize,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(in_flight);
    let mut responses = client
        .stream_logits(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("StreamLogits: {e}"))?
        .into_inner();
    let mut next_id = 0u64;
    let mut send = |tx: &mpsc::Sender<v1::LogitsRequest>| {
        let mut r = wire.clone();
        r.batch_id = next_id;
        next_id += 1;
        tx.try_send(r).map_err(|e| format!("send: {e}"))
    };
    for _ in 0..in_flight {
        send(&tx)?;
    }
    let mut outstanding = in_flight;
    while outstanding > 0 {
        let resp = responses
            .message()
            .await
            .map_err(|e| format!("stream failed: {e}"))?
            .ok_or("stream ended early")?;
        if let Some(v1::logits_response::Result::Error(e)) = resp.result {
            return Err(format!("batch {} refused: {}", resp.batch_id, e.message));
        }
        answered.fetch_add(per_answer, Ordering::Relaxed);
        outstanding -= 1;
        if !stop.load(Ordering::Relaxed) {
            send(&tx)?;
            outstanding += 1;
        }
    }
    Ok(())
}
