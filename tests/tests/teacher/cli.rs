//! The command line of the real `teacher-server` binary: help, and configuration errors that stop
//! it before it binds anything.

use std::process::Command;

fn teacher_server(args: &[&str]) -> std::process::Output {
    Command::new(distill_tests::binary("teacher-server"))
        .args(args)
        .env_remove("TEACHER_MODEL")
        .output()
        .expect("run teacher-server")
}

#[test]
fn help_lists_every_flag_with_its_environment_variable() {
    let out = teacher_server(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, env) in [
        ("--model", "TEACHER_MODEL"),
        ("--arch", "TEACHER_ARCH"),
        ("--input-shape", "TEACHER_INPUT_SHAPE"),
        ("--input-dtype", "TEACHER_INPUT_DTYPE"),
        ("--num-logits", "TEACHER_NUM_LOGITS"),
        ("--device", "TEACHER_DEVICE"),
        ("--listen", "TEACHER_LISTEN"),
        ("--max-batch-size", "TEACHER_MAX_BATCH_SIZE"),
        ("--max-batch-delay-us", "TEACHER_MAX_BATCH_DELAY_US"),
        ("--max-message-bytes", "TEACHER_MAX_MESSAGE_BYTES"),
        ("--queue-capacity", "TEACHER_QUEUE_CAPACITY"),
        ("--log-format", "TEACHER_LOG_FORMAT"),
        ("--threads", "TEACHER_THREADS"),
        ("--shutdown-grace-s", "TEACHER_SHUTDOWN_GRACE_S"),
        ("--tls-cert", "TEACHER_TLS_CERT"),
        ("--tls-key", "TEACHER_TLS_KEY"),
        ("--tls-client-ca", "TEACHER_TLS_CLIENT_CA"),
        ("--auth-token-file", "TEACHER_AUTH_TOKEN_FILE"),
        ("--send-compression", "TEACHER_SEND_COMPRESSION"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(help.contains(env), "{env} missing from --help");
    }
    assert!(help.contains("127.0.0.1:50051"));
}

#[test]
fn the_shipped_server_has_no_fault_injection_switch() {
    // A hung replica for tests is `stalling-teacher-server` (tests/ crate), not a flag here.
    let out = teacher_server(&["--fault-stall-after", "3", "--model", "/nonexistent/t.pt"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unexpected argument '--fault-stall-after'"),
        "{err}"
    );
}

#[test]
fn configuration_errors_exit_non_zero_with_a_message() {
    let out = teacher_server(&["--model", "/nonexistent/teacher.pt"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such file"), "{err}");
    assert!(out.stdout.is_empty(), "nothing on stdout before binding");

    let dir = std::env::temp_dir().join(format!("teacher-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("weights.safetensors");
    std::fs::write(&model, b"").unwrap();
    let out = teacher_server(&["--model", model.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("needs --arch"),
        "{err}"
    );
    let out = teacher_server(&[
        "--model",
        model.to_str().unwrap(),
        "--arch",
        "mlp",
        "--input-shape",
        "4",
        "--num-logits",
        "3",
        "--device",
        "tpu",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("unknown device \"tpu\": expected auto, cpu, cuda or cuda:N"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
