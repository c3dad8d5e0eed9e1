//! `distill --alpha 0 --labels all` gives the teacher no weight on any sample: it trains on the
//! labels alone without contacting the teacher (here unreachable), and warns.

use distill_tests::TempDir;
use distill_tests::trainer::{read_json, student, write_synthetic_idx};

#[tokio::test]
async fn alpha_zero_with_every_label_needs_no_teacher() {
    let tmp = TempDir::new("student-alpha0");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 200, 50, 10, 2);
    let port = distill_tests::closed_port();
    let out = tmp.path().join("out");
    let run = |alpha: &'static str| {
        let (d, o) = (data.display().to_string(), out.display().to_string());
        async move {
            student(&[
                "distill",
                "--teacher",
                &format!("http://127.0.0.1:{port}"),
                "--alpha",
                alpha,
                "--labels",
                "all",
                "--epochs",
                "1",
                "--arch",
                "mlp:8",
                "--data-dir",
                &d,
                "--out",
                &o,
                "--connect-timeout",
                "1",
                "--teacher-wait",
                "1",
            ])
            .await
        }
    };
    let r = run("0").await.expect_ok("distill --alpha 0");
    assert!(
        r.stderr.contains("without contacting the teacher"),
        "{}",
        r.stderr
    );
    assert_eq!(read_json(&out.join("checkpoint.json"))["epoch"], 1);
    // Any other alpha needs the teacher, and says it cannot reach it.
    let r = run("0.1").await;
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains(&port.to_string()), "{}", r.stderr);
}
