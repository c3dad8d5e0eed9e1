//! SIGTERM while the engine is busy and a client never reads its answers: the shutdown grace
//! runs out with forward passes still queued, and the server must still exit 0, never SIGSEGV.
//! (Returning from `main` while the engine thread is inside a forward pass would run libtorch's
//! exit-time teardown under it: exit 139 in about half the runs.)

use distill_tests::*;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const RUNS: usize = 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_forward_passes_in_flight_exits_zero_every_time() {
    let tmp = TempDir::new("shutdown-busy");
    // A CNN on 28×28 inputs: a 256-sample forward pass on one thread takes long enough that the
    // queued passes outlast the 1 s grace.
    fresh_checkpoint(tmp.path(), "cnn", &[1, 28, 28], 10);
    let wire = request(0, &random_inputs(256, &[1, 28, 28]));
    for run in 0..RUNS {
        let started = Instant::now();
        let mut teacher = TeacherProcess::start(
            tmp.path(),
            &[
                "--shutdown-grace-s",
                "1",
                "--threads",
                "1",
                "--max-batch-size",
                "256",
            ],
        )
        .await;
        let mut client = teacher.client().await;
        let (tx, rx) = mpsc::channel::<v1::LogitsRequest>(4);
        let responses = client
            .stream_logits(ReceiverStream::new(rx))
            .await
            .expect("StreamLogits call");
        // Requests keep coming; the responses are never read.
        let sender = {
            let wire = wire.clone();
            tokio::spawn(async move {
                for batch_id in 0.. {
                    let mut r = wire.clone();
                    r.batch_id = batch_id;
                    if tx.send(r).await.is_err() {
                        break;
                    }
                }
            })
        };
        // Synchronise on the engine's own log line: it is computing.
        teacher
            .logs
            .wait_for("forward pass", Duration::from_secs(60))
            .await;
        teacher.signal("TERM");
        let status = teacher.wait(Duration::from_secs(60)).await;
        sender.abort();
        drop(responses);
        assert_eq!(
            status.code(),
            Some(0),
            "run {run}: exit status {status}; logs:\n{}",
            teacher.logs.text()
        );
        assert!(
            teacher.logs.contains("teacher-server stopped"),
            "run {run}: logs:\n{}",
            teacher.logs.text()
        );
        eprintln!("run {run}: exit 0 after {:?}", started.elapsed());
    }
}
