//! Tracing spans survive `--log-format json`: the server logs inside a `stream` span
//! (with the peer), a `batch` span per request (with its id and size) and a `forward_pass` span
//! per merged batch; the student logs its training step inside the `batch` span opened when the
//! batch was first sent (epoch, index, schedule sequence number).

use distill_tests::trainer::{DistillArgs, student_logging, write_synthetic_idx};
use distill_tests::*;
use serde_json::Value;

/// The JSON log lines of `text` (other lines skipped).
fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter_map(|l| l.strip_prefix("stdout: ").or(Some(l)))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The first line whose message is `message`.
fn line<'a>(lines: &'a [Value], message: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["fields"]["message"] == message)
        .unwrap_or_else(|| panic!("no {message:?} line in {lines:#?}"))
}

/// The span named `name` in a line's span list.
fn span<'a>(line: &'a Value, name: &str) -> &'a Value {
    line["spans"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no {name:?} span in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_student_log_inside_their_spans_in_json() {
    let tmp = TempDir::new("tracing-spans");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 100, 20, 10, 3);
    let model = tmp.path().join("teacher");
    fresh_checkpoint(&model, "mlp:32", &[1, 28, 28], 10);
    // Passes of at most one request's 50 samples: the first pass's span then says 50 whether or
    // not the second request was already queued (which depends on how busy the machine is).
    let teacher =
        TeacherProcess::start(&model, &["--log-format", "json", "--max-batch-size", "50"]).await;
    let out = tmp.path().join("out");
    let args = DistillArgs::new(&data, &out)
        .teacher(teacher.url())
        .arch("mlp:16")
        .epochs(1)
        .batch_size(50)
        .no_epoch_eval()
        .flag("--log-format", "json")
        .build();
    let run = student_logging(&args, "warn,student_trainer=trace").await;
    let run = run.expect_ok("distill with JSON logs");

    let student = json_lines(&run.stderr);
    let trained = line(&student, "trained");
    let batch = span(trained, "batch");
    assert_eq!(batch["epoch"], 0, "{trained}");
    assert!(
        batch["index"].is_u64() && batch["seq"].is_u64(),
        "{trained}"
    );
    assert_eq!(batch["samples"], 50, "{trained}");
    // The span is the one opened at the send: the same fields as the `sent` event's.
    let sent = line(&student, "sent");
    assert_eq!(span(sent, "batch")["seq"], batch["seq"], "{sent}");

    teacher
        .logs
        .wait_for("\"message\":\"stream closed\"", STARTUP_TIMEOUT)
        .await;
    let server = json_lines(&teacher.logs.text());
    let pass = line(&server, "forward pass");
    assert_eq!(
        span(pass, "forward_pass")["merged_batch_size"],
        50,
        "{pass}"
    );
    let opened = line(&server, "stream opened");
    assert!(
        span(opened, "stream")["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{opened}"
    );
}
