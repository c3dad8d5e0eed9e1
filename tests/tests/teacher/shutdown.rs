//! SIGTERM during a stream: every batch the server has read is answered, the stream ends with
//! UNAVAILABLE (resend elsewhere), new connections are refused, and the process exits 0.

use distill_tests::*;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_in_flight_batches_and_exits_zero() {
    let fx = fixtures();
    // A 5 s batching delay: small batches wait in the queue until shutdown flushes them.
    let mut teacher = TeacherProcess::start(
        &fx.teacher,
        &[
            "--max-batch-size",
            "64",
            "--max-batch-delay-us",
            "5000000",
            "--shutdown-grace-s",
            "30",
        ],
    )
    .await;
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    // A full batch runs at once; the three small ones queue behind it.
    let full = random_inputs(64, &[1, 28, 28]);
    let small: Vec<tch::Tensor> = (0..3).map(|_| random_inputs(1, &[1, 28, 28])).collect();
    stream.send(request(100, &full)).await;
    for (i, x) in small.iter().enumerate() {
        stream.send(request(i as u64, x)).await;
    }
    let first = stream.recv_ok().await;
    assert_eq!(first.batch_id, 100);
    let in_flight = first.timing.expect("timing").stream_queue_depth;
    assert!(
        in_flight >= 1,
        "the small batches should be queued at the server by now"
    );

    teacher.signal("TERM");
    let mut answered = Vec::new();
    let end = loop {
        match stream.recv().await {
            Some(Ok(resp)) => {
                let i = resp.batch_id as usize;
                let diff =
                    max_abs_diff(&dense(&resp), &torchscript_forward(&fx.teacher, &small[i]));
                assert!(diff <= 1e-5, "batch {i}: {diff}");
                // Flushed by the shutdown, not by the 5 s batching delay.
                assert!(resp.timing.unwrap().queue_us < 4_000_000);
                answered.push(i);
            }
            Some(Err(status)) => break Some(status),
            None => break None,
        }
    };
    assert!(
        answered.len() >= in_flight as usize,
        "{in_flight} batches were in flight, {} answered",
        answered.len()
    );
    if let Some(status) = end {
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    }
    let status = teacher.wait(Duration::from_secs(30)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status; logs:\n{}",
        teacher.logs.text()
    );
    assert!(teacher.logs.text().contains("shutting down"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_on_an_idle_server_exits_zero() {
    let fx = fixtures();
    let mut teacher = TeacherProcess::start(&fx.teacher, &[] as &[&str]).await;
    let _idle = teacher.client().await;
    teacher.signal("INT");
    let status = teacher.wait(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "logs:\n{}", teacher.logs.text());
}
