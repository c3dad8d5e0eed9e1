//! Credentials on the channel: TLS and mutual TLS between student and teacher, bearer tokens (a wrong or
//! missing one gets UNAUTHENTICATED; health stays open), a replica that refuses the token counts
//! as refused, bad certificate/key/token files stop the binaries at start naming the file,
//! tokens never show in `--help`, logs or reports, a failed TLS handshake is logged once by the
//! server (rate-limited) and named, with the flag that fixes it, by the student.
//!
//! The certificates are made here with rcgen (a CA, a certificate for `localhost` and
//! `127.0.0.1`, client certificates: a good one, an expired one and one of another CA), written
//! to the test's temp dir.

use distill_tests::trainer::{
    DistillArgs, Run, batches_answered, read_json, student, student_env, write_synthetic_idx,
};
use distill_tests::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// PEM files of a test PKI.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A client certificate of our CA that expired in 2021.
    expired_cert: PathBuf,
    expired_key: PathBuf,
    /// A client certificate of another CA.
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
    /// Another CA (it signed only `stranger_cert`).
    other_ca: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    (params.self_signed(&key).expect("self-sign CA"), key)
}

fn leaf(
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &(rcgen::Certificate, KeyPair),
) -> (String, String) {
    leaf_with(names, usage, issuer, |_| {})
}

/// [`leaf`], with `edit` applied to its parameters before signing.
fn leaf_with(
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &(rcgen::Certificate, KeyPair),
    edit: impl FnOnce(&mut CertificateParams),
) -> (String, String) {
    let key = KeyPair::generate().expect("leaf key");
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("leaf params");
    params.extended_key_usages = vec![usage];
    edit(&mut params);
    let cert = params
        .signed_by(&key, &issuer.0, &issuer.1)
        .expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        let root = ca("distill test CA");
        let (server_cert, server_key) = leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &root,
        );
        let (client_cert, client_key) =
            leaf(&["student"], ExtendedKeyUsagePurpose::ClientAuth, &root);
        let (expired_cert, expired_key) = leaf_with(
            &["student"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &root,
            |p| {
                p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                p.not_after = rcgen::date_time_ymd(2021, 1, 1);
            },
        );
        let other = ca("another CA");
        let (stranger_cert, stranger_key) =
            leaf(&["student"], ExtendedKeyUsagePurpose::ClientAuth, &other);
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        Pki {
            ca: write("ca.pem", &root.0.pem()),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            expired_cert: write("expired.pem", &expired_cert),
            expired_key: write("expired.key", &expired_key),
            stranger_cert: write("stranger.pem", &stranger_cert),
            stranger_key: write("stranger.key", &stranger_key),
            other_ca: write("other-ca.pem", &other.0.pem()),
        }
    }

    fn server_flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.server_cert.display().to_string(),
            "--tls-key".into(),
            self.server_key.display().to_string(),
        ]
    }

    /// What a client trusting our CA uses.
    fn client_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&self.ca).unwrap()))
            .domain_name("localhost")
    }

    fn client_tls_with_identity(&self) -> ClientTlsConfig {
        self.client_tls().identity(Identity::from_pem(
            std::fs::read(&self.client_cert).unwrap(),
            std::fs::read(&self.client_key).unwrap(),
        ))
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `eval --teacher URL --data-dir DATA --batch-size 20 --json EXTRA...` with `env`.
async fn eval(url: &str, data: &Path, extra: &[String], env: &[(&str, &str)]) -> Run {
    let mut args: Vec<String> = vec![
        "eval".into(),
        "--teacher".into(),
        url.into(),
        "--data-dir".into(),
        path(data),
        "--batch-size".into(),
        "20".into(),
        "--json".into(),
    ];
    args.extend(extra.iter().cloned());
    student_env(&args, "warn", env).await
}

fn eval_total(run: Run, what: &str) -> u64 {
    let run = run.expect_ok(what);
    let v: serde_json::Value =
        serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stdout));
    v["total"].as_u64().unwrap_or_else(|| panic!("{v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_model_info_logits_and_a_distill_run() {
    let tmp = TempDir::new("security-tls");
    let pki = Pki::new(&tmp.path().join("pki"));
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 100, 40, 10, 3);
    let model = tmp.path().join("teacher");
    let ck = fresh_checkpoint(&model, "mlp:16", &[1, 28, 28], 10);
    // start_tls waits for health over TLS.
    let teacher = TeacherProcess::start_tls(&model, &pki.server_flags(), pki.client_tls()).await;
    assert!(teacher.url().starts_with("https://127.0.0.1:"));
    assert_eq!(teacher.info().await.fingerprint, ck.meta.fingerprint);
    let inputs = random_inputs(3, &[1, 28, 28]);
    let (logits, _) = teacher.logits(&inputs).await;
    assert!(max_abs_diff(&logits, &checkpoint_forward(&ck, &inputs)) < 1e-5);
    // The plain-text port is gone: an http:// client gets no answer.
    let plain = Endpoint::from_shared(format!("http://{}", teacher.addr))
        .unwrap()
        .connect()
        .await
        .map(TeacherClient::new);
    if let Ok(mut c) = plain {
        assert!(c.get_model_info(v1::GetModelInfoRequest {}).await.is_err());
    }

    let out = tmp.path().join("out");
    let args = DistillArgs::new(&data, &out)
        .teacher(teacher.url())
        .flag("--tls-ca", path(&pki.ca))
        .arch("mlp:8")
        .epochs(1)
        .batch_size(50)
        .no_epoch_eval()
        .build();
    student(&args).await.expect_ok("distill over https");
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["replicas"][0]["batches_answered"], 2, "{report}");

    // dns:// replicas become https:// ones, checked against --tls-server-name.
    let dns = format!("dns://localhost:{}", teacher.addr.port());
    let extra = [
        "--tls-ca".into(),
        path(&pki.ca),
        "--tls-server-name".into(),
        "localhost".into(),
    ];
    assert_eq!(
        eval_total(eval(&dns, &data, &extra, &[]).await, "eval dns:// over TLS"),
        40
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_or_plain_http_fails_with_a_clear_error() {
    let tmp = TempDir::new("security-wrong-ca");
    let pki = Pki::new(&tmp.path().join("pki"));
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 20, 20, 10, 3);
    let model = tmp.path().join("teacher");
    fresh_checkpoint(&model, "mlp:8", &[1, 28, 28], 10);
    let teacher = TeacherProcess::start_tls(&model, &pki.server_flags(), pki.client_tls()).await;
    let extra = ["--tls-ca".into(), path(&pki.other_ca)];
    let err = eval(&teacher.url(), &data, &extra, &[]).await.one_error();
    assert!(
        err.contains(&teacher.url()) && err.contains("certificate") && err.contains("--tls-ca"),
        "{err}"
    );
    // TLS flags with an http:// URL: refused before connecting, naming the URL.
    let http = format!("http://{}", teacher.addr);
    let extra = ["--tls-ca".into(), path(&pki.ca)];
    let err = eval(&http, &data, &extra, &[]).await.one_error();
    assert!(err.contains(&http) && err.contains("https://"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let tmp = TempDir::new("security-mtls");
    let pki = Pki::new(&tmp.path().join("pki"));
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 20, 20, 10, 3);
    let model = tmp.path().join("teacher");
    fresh_checkpoint(&model, "mlp:8", &[1, 28, 28], 10);
    let mut flags = pki.server_flags();
    flags.extend(["--tls-client-ca".into(), path(&pki.ca)]);
    let teacher = TeacherProcess::start_tls(&model, &flags, pki.client_tls_with_identity()).await;

    // A client that trusts the server but has no certificate gets no answer.
    let anonymous = async {
        let channel = Endpoint::from_shared(teacher.url())?
            .tls_config(pki.client_tls())?
            .connect()
            .await?;
        TeacherClient::new(channel)
            .get_model_info(v1::GetModelInfoRequest {})
            .await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    assert!(
        anonymous.is_err(),
        "a client without a certificate was served"
    );

    let ca = ["--tls-ca".into(), path(&pki.ca)];
    let err = eval(&teacher.url(), &data, &ca, &[]).await.one_error();
    assert!(err.contains(&teacher.url()), "{err}");
    let mut with_cert = ca.to_vec();
    with_cert.extend([
        "--tls-cert".into(),
        path(&pki.client_cert),
        "--tls-key".into(),
        path(&pki.client_key),
    ]);
    assert_eq!(
        eval_total(
            eval(&teacher.url(), &data, &with_cert, &[]).await,
            "eval with a client certificate"
        ),
        20
    );
}

/// A client of `teacher` over TLS with `tls` that fails `GetModelInfo` (it never gets through
/// the handshake).
async fn refused_over_tls(teacher: &TeacherProcess, url: String, tls: Option<ClientTlsConfig>) {
    let attempt = async {
        let mut endpoint = Endpoint::from_shared(url)?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls)?;
        }
        TeacherClient::new(endpoint.connect().await?)
            .get_model_info(v1::GetModelInfoRequest {})
            .await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    assert!(attempt.await.is_err(), "served:\n{}", teacher.logs.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handshakes_are_logged_once_and_the_server_keeps_serving() {
    let tmp = TempDir::new("security-handshake-log");
    let pki = Pki::new(&tmp.path().join("pki"));
    let model = tmp.path().join("teacher");
    fresh_checkpoint(&model, "mlp:8", &[1, 28, 28], 10);
    let mut flags = pki.server_flags();
    flags.extend(["--tls-client-ca".into(), path(&pki.ca)]);
    let teacher = TeacherProcess::start_tls(&model, &flags, pki.client_tls_with_identity()).await;
    let wait = std::time::Duration::from_secs(20);
    let plain = format!("http://{}", teacher.addr);
    let cases = [
        (
            teacher.url(),
            Some(pki.client_tls()),
            "the client sent no certificate",
            "reason=peer sent no certificates",
        ),
        (
            plain,
            None,
            "the client does not speak TLS",
            "reason=received corrupt message of type InvalidContentType",
        ),
    ];
    for (url, tls, kind, reason) in cases {
        let failed = ["TLS handshake failed", kind];
        let warned = ["WARN", "TLS handshake failed", kind];
        refused_over_tls(&teacher, url.clone(), tls.clone()).await;
        teacher.logs.wait_for_count(&warned, 1, wait).await;
        let line = teacher
            .logs
            .text()
            .lines()
            .find(|l| warned.iter().all(|w| l.contains(w)))
            .unwrap()
            .to_string();
        assert!(
            line.contains("peer=127.0.0.1:") && line.contains(reason),
            "{line}"
        );
        // Two more within the interval: logged at debug only (which the test waits on).
        let before = teacher.logs.count(&failed);
        for _ in 0..2 {
            refused_over_tls(&teacher, url.clone(), tls.clone()).await;
        }
        teacher.logs.wait_for_count(&failed, before + 2, wait).await;
        assert_eq!(
            teacher.logs.count(&warned),
            1,
            "{kind}: not rate-limited:\n{}",
            teacher.logs.text()
        );
    }
    // A handshake that never starts holds up no other, and the server still serves, with the
    // peer's address in the stream's span.
    let _silent = tokio::net::TcpStream::connect(teacher.addr).await.unwrap();
    assert_eq!(teacher.info().await.num_logits, 10);
    let (logits, _) = teacher.logits(&random_inputs(2, &[1, 28, 28])).await;
    assert_eq!(logits.size(), [2, 10]);
    teacher
        .logs
        .wait_for_count(&["stream{peer=127.0.0.1:", "stream opened"], 1, wait)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mistakes_name_the_cause_and_the_flag() {
    let tmp = TempDir::new("security-tls-mistakes");
    let pki = Pki::new(&tmp.path().join("pki"));
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 20, 20, 10, 3);
    let model = tmp.path().join("teacher");
    fresh_checkpoint(&model, "mlp:8", &[1, 28, 28], 10);
    let mut flags = pki.server_flags();
    flags.extend(["--tls-client-ca".into(), path(&pki.ca)]);
    let teacher = TeacherProcess::start_tls(&model, &flags, pki.client_tls_with_identity()).await;
    let ca = vec!["--tls-ca".to_string(), path(&pki.ca)];
    let with = |cert: &Path, key: &Path| {
        let mut args = ca.clone();
        args.extend([
            "--tls-cert".into(),
            path(cert),
            "--tls-key".into(),
            path(key),
        ]);
        args
    };
    // The student names the cause from the teacher's TLS alert, or (when the connection's end
    // overtakes the alert) as the probable one from what it sent: both name the same flags.
    let cases: [(String, Vec<String>, &[&str]); 4] = [
        (
            teacher.url(),
            ca.clone(),
            &["requires a client certificate", "--tls-cert and --tls-key"],
        ),
        (
            teacher.url(),
            with(&pki.expired_cert, &pki.expired_key),
            &["client certificate", "expired", "--tls-cert"],
        ),
        (
            teacher.url(),
            with(&pki.stranger_cert, &pki.stranger_key),
            &["client certificate", "CA of", "--tls-client-ca"],
        ),
        (
            format!("http://{}", teacher.addr),
            vec![],
            &["probably speaks TLS", "https://"],
        ),
    ];
    for (url, extra, expected) in cases {
        let err = eval(&url, &data, &extra, &[]).await.one_error();
        assert!(err.contains(&url), "{err}");
        for e in expected {
            assert!(err.contains(e), "{extra:?}: {e:?} not in {err}");
        }
    }
}

const RIGHT: &str = "right-token-3f9a71c2";
const OLD: &str = "old-token-rotating-out";
const WRONG: &str = "wrong-token-0000";

/// A `Teacher` client that sends `authorization: Bearer TOKEN` on every call.
async fn client_with_token(
    teacher: &TeacherProcess,
    token: Option<&str>,
) -> v1::teacher_client::TeacherClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor,
    >,
> {
    client_with_authorization(teacher, token.map(|t| format!("Bearer {t}"))).await
}

/// A `Teacher` client that sends `authorization: VALUE` on every call.
async fn client_with_authorization(
    teacher: &TeacherProcess,
    value: Option<String>,
) -> v1::teacher_client::TeacherClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        impl tonic::service::Interceptor,
    >,
> {
    let value: Option<MetadataValue<Ascii>> = value.map(|v| v.parse().unwrap());
    v1::teacher_client::TeacherClient::with_interceptor(
        teacher.channel().await,
        move |mut req: tonic::Request<()>| -> Result<tonic::Request<()>, tonic::Status> {
            if let Some(v) = &value {
                req.metadata_mut().insert("authorization", v.clone());
            }
            Ok(req)
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_checked_and_never_shown() {
    let tmp = TempDir::new("security-tokens");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 100, 20, 10, 3);
    let model = tmp.path().join("teacher");
    fresh_checkpoint(&model, "mlp:8", &[1, 28, 28], 10);
    let tokens = tmp.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("# two during a rotation\n{OLD}\n{RIGHT}\n"),
    )
    .unwrap();
    // start() waits on health without a token: health is open to probes.
    let teacher = TeacherProcess::start(&model, &["--auth-token-file", &path(&tokens)]).await;

    for token in [None, Some(WRONG), Some("Bearer")] {
        let status = client_with_token(&teacher, token)
            .await
            .get_model_info(v1::GetModelInfoRequest {})
            .await
            .expect_err("served without the right token");
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{token:?}: {status}"
        );
        assert!(!status.message().contains(RIGHT), "{status}");
    }
    let status = client_with_token(&teacher, Some(WRONG))
        .await
        .stream_logits(tokio_stream::iter(vec![request(
            1,
            &random_inputs(1, &[1, 28, 28]),
        )]))
        .await
        .expect_err("stream opened with a wrong token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // Reflection is guarded too.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let status = ServerReflectionClient::new(teacher.channel().await)
        .server_reflection_info(tokio_stream::iter(vec![list]))
        .await
        .expect_err("reflection without a token");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    // Either token of the file works, for both RPCs.
    for token in [RIGHT, OLD] {
        let mut c = client_with_token(&teacher, Some(token)).await;
        c.get_model_info(v1::GetModelInfoRequest {})
            .await
            .expect("GetModelInfo with the token");
        let mut s = c
            .stream_logits(tokio_stream::iter(vec![request(
                7,
                &random_inputs(2, &[1, 28, 28]),
            )]))
            .await
            .expect("StreamLogits with the token")
            .into_inner();
        let resp = s.message().await.expect("a response").expect("one");
        assert_eq!(dense(&resp).size(), [2, 10]);
    }
    // The scheme is case-insensitive (RFC 7235); the token is not.
    for value in [format!("bearer {RIGHT}"), format!("BEARER {OLD}")] {
        client_with_authorization(&teacher, Some(value.clone()))
            .await
            .get_model_info(v1::GetModelInfoRequest {})
            .await
            .unwrap_or_else(|s| panic!("{value:?} refused: {s}"));
    }
    let status =
        client_with_authorization(&teacher, Some(format!("bearer {}", RIGHT.to_uppercase())))
            .await
            .get_model_info(v1::GetModelInfoRequest {})
            .await
            .expect_err("served with the token in the wrong case");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);

    // The student: a wrong token is refused with a message naming the flags, not the token.
    let err = eval(&teacher.url(), &data, &[], &[("STUDENT_AUTH_TOKEN", WRONG)])
        .await
        .one_error();
    assert!(
        err.contains("UNAUTHENTICATED")
            && err.contains("--auth-token-file")
            && err.contains("STUDENT_AUTH_TOKEN")
            && !err.contains(WRONG),
        "{err}"
    );
    let err = eval(&teacher.url(), &data, &[], &[]).await.one_error();
    assert!(err.contains("UNAUTHENTICATED"), "{err}");
    // The right one, from the environment and from a file.
    let env = [("STUDENT_AUTH_TOKEN", RIGHT)];
    assert_eq!(
        eval_total(
            eval(&teacher.url(), &data, &[], &env).await,
            "STUDENT_AUTH_TOKEN"
        ),
        20
    );
    let file = tmp.path().join("student-token");
    std::fs::write(&file, format!("{RIGHT}\n")).unwrap();
    let flag = ["--auth-token-file".into(), path(&file)];
    assert_eq!(
        eval_total(
            eval(&teacher.url(), &data, &flag, &[]).await,
            "--auth-token-file"
        ),
        20
    );

    // A debug-logged distill run: the token is in no output, log or report.
    let out = tmp.path().join("out");
    let args = DistillArgs::new(&data, &out)
        .teacher(teacher.url())
        .arch("mlp:8")
        .epochs(1)
        .batch_size(50)
        .build();
    let run = student_env(&args, "debug", &env)
        .await
        .expect_ok("distill with a token");
    let mut seen = format!("{}\n{}\n{}", run.stdout, run.stderr, teacher.logs.text());
    for f in ["report.json", "metrics.jsonl"] {
        seen.push_str(&std::fs::read_to_string(out.join(f)).unwrap());
    }
    assert!(
        run.stderr.contains("teacher answer"),
        "no debug logs:\n{}",
        run.stderr
    );
    for t in [RIGHT, OLD, WRONG] {
        assert!(!seen.contains(t), "token {t} leaked:\n{seen}");
    }

    // --help with the variable set names it and hides its value.
    for sub in ["distill", "capture", "eval"] {
        let help = student_env(&[sub, "--help"], "warn", &env)
            .await
            .expect_ok("--help");
        assert!(
            help.stdout.contains("STUDENT_AUTH_TOKEN"),
            "{}",
            help.stdout
        );
        assert!(!help.stdout.contains(RIGHT), "{}", help.stdout);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refusing_the_token_counts_as_refused() {
    let tmp = TempDir::new("security-refused");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 200, 20, 10, 3);
    let model = tmp.path().join("teacher");
    fresh_checkpoint(&model, "mlp:8", &[1, 28, 28], 10);
    let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
    std::fs::write(&ours, RIGHT).unwrap();
    std::fs::write(&theirs, OLD).unwrap();
    let a = TeacherProcess::start(&model, &["--auth-token-file", &path(&ours)]).await;
    let b = TeacherProcess::start(&model, &["--auth-token-file", &path(&theirs)]).await;
    let out = tmp.path().join("out");
    let args = DistillArgs::new(&data, &out)
        .teachers(&[a.url(), b.url()])
        .arch("mlp:8")
        .epochs(1)
        .batch_size(50)
        .no_epoch_eval()
        .build();
    let run = student_env(&args, "warn", &[("STUDENT_AUTH_TOKEN", RIGHT)])
        .await
        .expect_ok("distill with one replica refusing the token");
    let refusal = run
        .stderr
        .lines()
        .find(|l| l.contains("teacher replica refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{}", run.stderr));
    assert!(
        refusal.contains("ERROR")
            && refusal.contains(&b.url())
            && refusal.contains("UNAUTHENTICATED")
            && refusal.contains("--auth-token-file / STUDENT_AUTH_TOKEN")
            && !refusal.contains(RIGHT),
        "{refusal}"
    );
    let r = read_json(&out.join("report.json"));
    let answered = |url: &str| batches_answered(&r, url);
    assert_eq!(answered(&a.url()), Some(4), "{r}");
    assert_eq!(answered(&b.url()), Some(0), "{r}");

    // With every replica refusing, the run stops at once with the refusal.
    let run = student_env(&args, "warn", &[("STUDENT_AUTH_TOKEN", WRONG)]).await;
    let err = run.one_error();
    assert!(
        err.contains("refused the credentials") && err.contains("UNAUTHENTICATED"),
        "{err}"
    );
}

/// Runs `teacher-server --model MODEL --device cpu --listen 127.0.0.1:0 ARGS` to its exit.
fn teacher_fails(model: &Path, args: &[String]) -> String {
    let out = command("teacher-server")
        .arg("--model")
        .arg(model)
        .args(["--device", "cpu", "--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .expect("run teacher-server");
    assert!(!out.status.success(), "teacher-server {args:?} started");
    assert!(
        out.stdout.is_empty(),
        "it printed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificate_key_and_token_files_are_named_at_start() {
    let tmp = TempDir::new("security-bad-input");
    let pki = Pki::new(&tmp.path().join("pki"));
    let model = tmp.path().join("teacher");
    fresh_checkpoint(&model, "mlp:8", &[1, 28, 28], 10);
    let missing = tmp.path().join("missing.pem");
    let empty = tmp.path().join("empty-tokens");
    std::fs::write(&empty, "\n# no token yet\n").unwrap();
    let s = |p: &Path| path(p);
    let cases: Vec<(Vec<String>, Vec<String>)> = vec![
        (
            vec![
                "--tls-cert".into(),
                s(&missing),
                "--tls-key".into(),
                s(&pki.server_key),
            ],
            vec![s(&missing), "--tls-cert".into()],
        ),
        (
            // The client's key with the server's certificate.
            vec![
                "--tls-cert".into(),
                s(&pki.server_cert),
                "--tls-key".into(),
                s(&pki.client_key),
            ],
            vec![
                s(&pki.client_key),
                s(&pki.server_cert),
                "does not fit".into(),
            ],
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&pki.server_key),
                "--tls-key".into(),
                s(&pki.server_key),
            ],
            vec![s(&pki.server_key), "CERTIFICATE".into()],
        ),
        (
            vec!["--auth-token-file".into(), s(&empty)],
            vec![s(&empty), "empty".into()],
        ),
        (
            vec!["--auth-token-file".into(), s(&missing)],
            vec![s(&missing), "--auth-token-file".into()],
        ),
    ];
    for (args, expected) in cases {
        let err = teacher_fails(&model, &args);
        for e in expected {
            assert!(err.contains(&e), "{args:?}: {e:?} not in:\n{err}");
        }
    }

    // The student names its files before contacting any teacher.
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 20, 20, 10, 3);
    let url = format!("https://127.0.0.1:{}", closed_port());
    for (extra, named) in [
        (vec!["--tls-ca".to_string(), s(&missing)], s(&missing)),
        (
            vec!["--tls-ca".to_string(), s(&pki.server_key)],
            s(&pki.server_key),
        ),
        (vec!["--auth-token-file".to_string(), s(&empty)], s(&empty)),
    ] {
        let err = eval(&url, &data, &extra, &[]).await.one_error();
        assert!(
            err.contains(&named) && !err.contains("cannot reach"),
            "{extra:?}: {err}"
        );
    }
}
