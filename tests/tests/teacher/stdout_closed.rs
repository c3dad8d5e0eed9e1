//! A closed stdout is not fatal: `teacher-server ... | head -n 1` reads the `listening on` line
//! and goes away, and a supervisor may close the pipe before the line is even written. The server
//! keeps serving either way (the address is in its log too) and exits 0 on SIGTERM; it never
//! panics or exits with an error because of a broken pipe.

use distill_tests::*;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Starts the server with its stdout piped, lets `on_stdout` consume (or close) it, then finds
/// the address in the stderr log, checks the teacher answers, sends SIGTERM and returns the exit
/// code and the log.
async fn serve_with_stdout(
    model: &std::path::Path,
    read_first_line: bool,
) -> (Option<i32>, String) {
    let mut child = Command::new(binary("teacher-server"))
        .args(["--device", "cpu", "--listen", "127.0.0.1:0", "--model"])
        .arg(model)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn teacher-server");
    let stdout = child.stdout.take().expect("stdout");
    if read_first_line {
        // What `head -n 1` does: read one line, then close the pipe.
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(STARTUP_TIMEOUT, lines.next_line())
            .await
            .expect("a first line in time")
            .expect("read stdout");
        assert!(
            first
                .as_deref()
                .is_some_and(|l| l.starts_with("listening on ")),
            "{first:?}"
        );
    } else {
        // Closed before the server writes to it (it is still loading libtorch).
        drop(stdout);
    }
    let mut log = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut text = String::new();
    let addr: SocketAddr = loop {
        let line = tokio::time::timeout(STARTUP_TIMEOUT, log.next_line())
            .await
            .expect("a log line in time")
            .expect("read stderr");
        let Some(line) = line else {
            let status = child.wait().await.expect("wait");
            panic!("teacher-server exited ({status}) before serving; logs:\n{text}");
        };
        text.push_str(&line);
        text.push('\n');
        // The line that says the model is loaded (the address is also logged before the load).
        if line.contains("teacher-server serving")
            && let Some(rest) = line.split("addr=").nth(1)
        {
            break rest
                .split_whitespace()
                .next()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no address in {line:?}"));
        }
    };
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let info = TeacherClient::new(channel)
        .get_model_info(v1::GetModelInfoRequest {})
        .await
        .expect("GetModelInfo after stdout closed")
        .into_inner();
    assert_eq!(info.num_logits, 3);
    let pid = child.id().expect("running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-s", "TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let drain = async {
        while let Ok(Some(line)) = log.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
    };
    tokio::time::timeout(Duration::from_secs(30), drain)
        .await
        .expect("stderr closes at exit");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("exits after SIGTERM")
        .expect("wait");
    (status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_neither_stops_nor_crashes_the_server() {
    let tmp = TempDir::new("stdout-closed");
    fresh_checkpoint(tmp.path(), "mlp:8", &[4], 3);
    for read_first_line in [false, true] {
        let (code, log) = serve_with_stdout(tmp.path(), read_first_line).await;
        assert_eq!(
            code,
            Some(0),
            "read_first_line {read_first_line}; logs:\n{log}"
        );
        assert!(!log.contains("panicked"), "{log}");
        if !read_first_line {
            assert!(log.contains("cannot print to stdout"), "{log}");
        }
    }
}
