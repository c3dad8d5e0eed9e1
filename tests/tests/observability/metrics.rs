//! Readiness and Prometheus metrics, end to end:
//!
//! - a teacher still loading its model is bound and says so: health `NOT_SERVING`, both RPCs
//!   `UNAVAILABLE` at once with a retry hint (never a hang), `/readyz` 503, and
//!   `teacher_model_state{state="loading"}`;
//! - a student started meanwhile retries within `--connect-timeout` and trains once the teacher
//!   is ready;
//! - during the run both `/metrics` endpoints parse as Prometheus text and count what happened
//!   (the teacher stalls after 2 forward passes, so the run holds still while it is scraped);
//! - on SIGTERM the teacher turns `NOT_SERVING` (seen on an open health watch), `/readyz` says
//!   draining, and it exits 0 once the stalled pass ends.

use distill_tests::trainer::{DistillArgs, spawn_student, write_synthetic_idx};
use distill_tests::*;
use std::net::SocketAddr;
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// Scrapes `addr` until `ok` holds for the scrape (the run moves on its own; nothing to wait on
/// across processes but the metrics themselves), at most 60 s.
async fn scrape_until(addr: SocketAddr, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = scrape(addr).await;
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within 60 s; last scrape: {:?}",
            s.0.samples
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The address in the server's `metrics on http://ADDR` stdout line.
async fn metrics_addr(server: &Server) -> SocketAddr {
    server
        .logs
        .wait_for("metrics on http://", STARTUP_TIMEOUT)
        .await;
    let text = server.logs.text();
    let line = text
        .lines()
        .find_map(|l| l.split("metrics on http://").nth(1))
        .expect("the metrics line");
    line.trim().parse().expect("an address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loading_teacher_is_not_ready_then_serves_is_scraped_and_drains() {
    let tmp = TempDir::new("observability");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 200, 50, 10, 5);
    let model = tmp.path().join("teacher");
    let ck = fresh_checkpoint(&model, "mlp:32", &[1, 28, 28], 10);
    let (gate, release) = (tmp.path().join("loaded"), tmp.path().join("release"));
    let mut teacher = Server::spawn(
        &binary("stalling-teacher-server"),
        [
            "--device".as_ref(),
            "cpu".as_ref(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--metrics-listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--max-batch-size".as_ref(),
            "50".as_ref(),
            "--stall-after".as_ref(),
            "2".as_ref(),
            "--shutdown-grace-s".as_ref(),
            "120".as_ref(),
            "--hold-load-until".as_ref(),
            gate.as_os_str(),
            "--release-stall-on".as_ref(),
            release.as_os_str(),
            "--model".as_ref(),
            model.as_os_str(),
        ],
    )
    .await;
    let t_metrics = metrics_addr(&teacher).await;

    // Loading: bound, answering, not ready.
    let channel = teacher.channel().await;
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: TEACHER_SERVICE.into(),
        })
        .await
        .expect("health answers while loading")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::NotServing as i32);
    let mut client = TeacherClient::new(channel.clone());
    let early = client
        .get_model_info(v1::GetModelInfoRequest {})
        .await
        .expect_err("GetModelInfo before the model is loaded");
    assert_eq!(early.code(), tonic::Code::Unavailable, "{early:?}");
    assert!(early.message().contains("still loading"), "{early:?}");
    assert!(
        early
            .metadata()
            .get(distill_proto::RETRY_PUSHBACK_HEADER)
            .is_some(),
        "{early:?}"
    );
    let (_tx, rx) = tokio::sync::mpsc::channel::<v1::LogitsRequest>(1);
    let early = client
        .stream_logits(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("StreamLogits before the model is loaded");
    assert_eq!(early.code(), tonic::Code::Unavailable, "{early:?}");
    let (code, body) = http_get(t_metrics, "/readyz").await;
    assert_eq!(
        (code, body.as_str()),
        (503, "not ready: loading the model\n")
    );
    let s = scrape(t_metrics).await;
    assert_eq!(
        s.value("teacher_model_state", &[("state", "loading")]),
        Some(1.0)
    );
    assert_eq!(
        s.value("teacher_errors_total", &[("code", "Unavailable")]),
        Some(2.0)
    );

    // A student started now waits for the teacher (within --connect-timeout).
    let s_metrics: SocketAddr = format!("127.0.0.1:{}", closed_port()).parse().unwrap();
    let out = tmp.path().join("out");
    let args = DistillArgs::new(&data, &out)
        .teacher(teacher.url())
        .arch("mlp:16")
        .epochs(1)
        .batch_size(50)
        .prefetch(2)
        .no_epoch_eval()
        .flag("--connect-timeout", 120)
        .flag("--metrics-listen", s_metrics)
        .build();
    let student = spawn_student(&args);
    scrape_until(t_metrics, "the student's first GetModelInfo", |s| {
        s.value("teacher_errors_total", &[("code", "Unavailable")]) >= Some(3.0)
    })
    .await;
    std::fs::write(&gate, b"").expect("open the load gate");

    // Two batches answered and trained; the third stalls in the teacher's forward pass.
    let url = teacher.url();
    let replica = [("group", "teacher"), ("replica", url.as_str())];
    let st = scrape_until(s_metrics, "two trained batches", |s| {
        s.value("student_samples_trained_total", &[]) == Some(100.0)
            && s.value("student_replica_in_flight_batches", &replica) >= Some(1.0)
    })
    .await;
    assert_eq!(st.value("student_step", &[]), Some(2.0));
    assert_eq!(st.value("student_epoch", &[]), Some(1.0));
    assert!(st.value("student_loss", &[]).is_some_and(f64::is_finite));
    assert_eq!(
        st.value("student_replica_batches_answered_total", &replica),
        Some(2.0)
    );
    assert_eq!(
        st.histogram_count("student_replica_latency_seconds", &replica),
        Some(2.0)
    );
    let up = [replica[0], replica[1], ("state", "up")];
    assert_eq!(st.value("student_replica_state", &up), Some(1.0));
    assert!(
        st.value("student_soft_target_wait_seconds_total", &[])
            .is_some_and(|w| w > 0.0),
        "{:?}",
        st.0.samples
    );
    assert!(
        st.value("student_prefetch_wait_seconds_total", &[])
            .is_some(),
    );

    let tt = scrape(t_metrics).await;
    assert_eq!(tt.value("teacher_requests_total", &[]), Some(2.0));
    assert_eq!(tt.value("teacher_samples_total", &[]), Some(100.0));
    assert_eq!(tt.value("teacher_streams_open", &[]), Some(1.0));
    assert_eq!(
        tt.value("teacher_model_state", &[("state", "serving")]),
        Some(1.0)
    );
    assert_eq!(
        tt.value(
            "teacher_model_info",
            &[("fingerprint", &ck.meta.fingerprint)]
        ),
        Some(1.0)
    );
    // Two passes finished; the stalled third is not counted until it ends.
    assert_eq!(
        tt.histogram_count("teacher_merged_batch_size", &[]),
        Some(2.0)
    );
    assert_eq!(
        tt.histogram_count("teacher_compute_seconds", &[]),
        Some(2.0)
    );
    assert!(tt.histogram_count("teacher_queue_seconds", &[]) >= Some(2.0));
    assert!(tt.value("teacher_queue_depth", &[]).is_some());
    assert_eq!(http_get(t_metrics, "/readyz").await.0, 200);

    // SIGTERM: NOT_SERVING on the open watch, /readyz draining, exit 0 once the pass ends.
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: TEACHER_SERVICE.into(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = watch.message().await.expect("watch").expect("a status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    drop(student);
    teacher.signal("TERM");
    let next = tokio::time::timeout(Duration::from_secs(30), watch.message())
        .await
        .expect("a status change after SIGTERM")
        .expect("watch")
        .expect("a status");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    let (code, body) = http_get(t_metrics, "/readyz").await;
    assert_eq!(
        (code, body.as_str()),
        (503, "not ready: draining (shutting down)\n")
    );
    assert_eq!(
        scrape(t_metrics)
            .await
            .value("teacher_model_state", &[("state", "draining")]),
        Some(1.0)
    );
    // The open watch and client would hold the server until --shutdown-grace-s: close them.
    drop((watch, client));
    std::fs::write(&release, b"").expect("release the stalled pass");
    let status = teacher.wait(Duration::from_secs(60)).await;
    assert!(status.success(), "{status}");
}
