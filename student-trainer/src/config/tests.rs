use super::*;
use crate::cli::{Cli, Command, DistillArgs};
use crate::device::DeviceChoice;
use crate::ensemble::EnsembleMode;
use crate::loss::LossKind;
use crate::optim::{LrSchedule, OptimizerKind};
use crate::soft_targets::{TargetRequest, WireDType};
use crate::training::{LabelPolicy, TrainConfig};
use clap::Parser;
use distill_models::Arch;
use std::path::PathBuf;
use std::time::Duration;

fn parse(args: &[&str]) -> Command {
    let mut v = vec!["student-trainer"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).expect("parses").command
}

fn distill(args: &[&str]) -> Result<DistillConfig, ConfigError> {
    let mut v = vec!["distill", "--teacher", "127.0.0.1:50051"];
    v.extend_from_slice(args);
    match parse(&v) {
        Command::Distill(a) => DistillConfig::try_from(a),
        other => panic!("{other:?}"),
    }
}

fn train(args: &[&str]) -> Result<TrainConfig, ConfigError> {
    let mut v = vec!["train"];
    v.extend_from_slice(args);
    match parse(&v) {
        Command::Train(a) => TrainConfig::try_from(a),
        other => panic!("{other:?}"),
    }
}

#[test]
fn defaults_match_the_reference_loop() {
    let c = distill(&[]).unwrap();
    assert_eq!(c.teachers.groups.len(), 1);
    assert_eq!(c.teachers.groups[0].urls, ["http://127.0.0.1:50051"]);
    assert_eq!(c.loss.temperature, 4.0);
    assert_eq!(c.loss.alpha, 0.9);
    assert_eq!(c.labels, LabelPolicy::All);
    assert_eq!(c.teachers.prefetch, 4);
    let t = &c.train;
    assert_eq!((t.batch_size, t.optimizer.lr, t.seed), (128, 1e-3, 0));
    assert_eq!(t.optimizer.kind, OptimizerKind::Adam);
    assert_eq!(t.arch.to_string(), "mlp");
    assert_eq!(t.data_dir, PathBuf::from("data/fashion-mnist"));
    assert_eq!(t.device, DeviceChoice::Auto);
    assert!(!t.resume && t.limit.is_none());
}

#[test]
fn flags_are_carried_over() {
    let c = distill(&[
        "--arch",
        "mlp:64,32",
        "--labels",
        "1000",
        "--loss",
        "mse",
        "--temperature",
        "2",
        "--alpha",
        "0.5",
        "--prefetch",
        "8",
        "--device",
        "cuda:1",
        "--limit",
        "500",
        "--optimizer",
        "sgd",
        "--resume",
        "--epochs",
        "3",
        "--seed",
        "7",
    ])
    .unwrap();
    assert_eq!(c.labels, LabelPolicy::First(1000));
    assert_eq!(c.loss.kind, LossKind::Mse);
    assert_eq!(
        (c.loss.temperature, c.loss.alpha, c.teachers.prefetch),
        (2.0, 0.5, 8)
    );
    assert_eq!(c.train.device, DeviceChoice::Cuda(1));
    assert_eq!(
        c.train.arch,
        Arch::Mlp {
            hidden: vec![64, 32]
        }
    );
    assert_eq!(c.train.optimizer.kind, OptimizerKind::Sgd);
    assert_eq!(
        (c.train.limit, c.train.epochs, c.train.seed),
        (Some(500), 3, 7)
    );
    assert!(c.train.resume);
}

#[test]
fn soft_target_flags_parse_and_bad_combinations_name_the_flags() {
    let c = distill(&[
        "--wire",
        "bf16",
        "--top-k",
        "3",
        "--sparse-tail",
        "uniform",
        "--temperature",
        "2",
    ])
    .unwrap();
    assert_eq!(
        c.request(),
        TargetRequest {
            wire: WireDType::Bf16,
            top_k: 3,
            temperature: 2.0,
            hint_output: None,
        }
    );
    assert_eq!(c.loss.sparse_tail, crate::loss::SparseTail::Uniform);
    assert_eq!(c.ensemble_mode, EnsembleMode::Mix);
    let d = distill(&[]).unwrap();
    assert_eq!(
        (d.request().wire.to_string(), d.request().top_k),
        ("f32".into(), 0)
    );
    assert_eq!(d.loss.sparse_tail.to_string(), "bucket");
    let e = distill(&["--loss", "mse", "--top-k", "4"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--top-k") && e.contains("--loss mse"), "{e}");
    let groups = [
        "--teacher-group",
        "a=127.0.0.1:1",
        "--teacher-group",
        "b=127.0.0.1:2",
    ];
    let mut two = vec!["distill"];
    two.extend_from_slice(&groups);
    two.extend_from_slice(&["--top-k", "2"]);
    let Command::Distill(args) = parse(&two) else {
        panic!("distill")
    };
    let e = DistillConfig::try_from(args.clone())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--top-k") && e.contains("--ensemble-mode") && e.contains("2 teacher groups"),
        "{e}"
    );
    let mut hinted = vec!["distill"];
    hinted.extend_from_slice(&groups);
    hinted.extend_from_slice(&["--hint", "features=h1"]);
    let Command::Distill(hinted_args) = parse(&hinted) else {
        panic!("distill")
    };
    let e = DistillConfig::try_from(hinted_args)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("one teacher") && e.contains("2 teacher groups"),
        "{e}"
    );
    let d = distill(&[
        "--hint",
        "conv=c2",
        "--hint-loss",
        "cosine",
        "--hint-weight",
        "0",
        "--hint-stage-epochs",
        "3",
    ])
    .unwrap();
    let h = d.hint.clone().unwrap();
    assert_eq!(
        (h.spec.to_string(), h.loss, h.weight, h.stage_epochs),
        ("conv=c2".to_string(), crate::hint::HintLoss::Cosine, 0.0, 3)
    );
    assert_eq!(d.request().hint_output.as_deref(), Some("conv"));
    let sampled = DistillConfig::try_from(DistillArgs {
        ensemble_mode: EnsembleMode::Sample,
        ..args
    })
    .unwrap();
    assert_eq!(sampled.ensemble_mode, EnsembleMode::Sample);
}

#[test]
fn optimizer_schedule_and_clipping_flags() {
    use crate::optim::LrScheduleKind;
    let t = train(&[
        "--optimizer",
        "adamw",
        "--lr",
        "3e-4",
        "--lr-schedule",
        "cosine",
        "--warmup-steps",
        "100",
        "--min-lr",
        "3e-5",
        "--clip-grad-norm",
        "1.0",
    ])
    .unwrap();
    let o = t.optimizer;
    assert_eq!(o.kind, OptimizerKind::AdamW);
    // AdamW's weight decay defaults to PyTorch's 0.01.
    assert_eq!((o.lr, o.weight_decay), (3e-4, 0.01));
    assert_eq!(
        o.schedule,
        LrSchedule {
            kind: LrScheduleKind::Cosine,
            warmup_steps: 100,
            min_lr: 3e-5
        }
    );
    assert_eq!(o.clip_grad_norm, Some(1.0));
    assert!(o.validate().is_ok());
    // An explicit --weight-decay wins; Adam and SGD default to 0.
    let t = train(&["--optimizer", "adamw", "--weight-decay", "0"]).unwrap();
    assert_eq!(t.optimizer.weight_decay, 0.0);
    let t = train(&["--optimizer", "adam", "--weight-decay", "0.1"]).unwrap();
    assert_eq!(t.optimizer.weight_decay, 0.1);
    for opt in ["adam", "sgd"] {
        assert_eq!(
            train(&["--optimizer", opt]).unwrap().optimizer.weight_decay,
            0.0
        );
    }
    // Defaults: constant rate, no warm-up, no clipping.
    let d = train(&[]).unwrap().optimizer;
    assert_eq!(
        (d.schedule, d.clip_grad_norm),
        (LrSchedule::default(), None)
    );
    // A constant schedule with warm-up.
    let w = train(&["--warmup-steps", "10"]).unwrap().optimizer.schedule;
    assert_eq!((w.kind, w.warmup_steps), (LrScheduleKind::Constant, 10));
}

#[test]
fn rkl_and_jsd_losses_parse_with_beta() {
    let c = distill(&["--loss", "rkl", "--top-k", "8"]).unwrap();
    assert_eq!((c.loss.kind, c.request().top_k), (LossKind::Rkl, 8));
    let c = distill(&["--loss", "jsd"]).unwrap();
    assert_eq!((c.loss.kind, c.loss.jsd_beta), (LossKind::Jsd, 0.5));
    let c = distill(&["--loss", "jsd", "--jsd-beta", "0.1", "--top-k", "4"]).unwrap();
    assert_eq!(c.loss.jsd_beta, 0.1);
    for beta in ["0", "1", "1.5", "-0.2", "nan"] {
        let e = distill(&["--loss", "jsd", &format!("--jsd-beta={beta}")])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--jsd-beta: ") && e.contains("0 < beta < 1"),
            "{beta}: {e}"
        );
    }
    let e = distill(&["--loss", "kl", "--jsd-beta", "0.3"])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("--jsd-beta: ") && e.contains("--loss jsd") && e.contains("--loss kl"),
        "{e}"
    );
}

#[test]
fn only_alpha_zero_with_every_label_needs_no_teacher() {
    assert!(!distill(&["--alpha", "0"]).unwrap().needs_teacher());
    assert!(distill(&["--alpha", "0.1"]).unwrap().needs_teacher());
    // Unlabelled samples keep the soft term at weight 1.
    assert!(
        distill(&["--alpha", "0", "--labels", "10"])
            .unwrap()
            .needs_teacher()
    );
    assert!(
        distill(&["--alpha", "0", "--labels", "none"])
            .unwrap()
            .needs_teacher()
    );
}

#[test]
fn labels_none_forces_alpha_one() {
    let c = distill(&["--labels", "none", "--alpha", "0.3"]).unwrap();
    assert_eq!(c.labels, LabelPolicy::None);
    assert_eq!(c.loss.alpha, 1.0);
}

#[test]
fn bad_values_name_their_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--temperature", "0"], "--temperature"),
        (&["--alpha", "1.5"], "--alpha"),
        (&["--labels", "some"], "--labels"),
        (&["--prefetch", "0"], "--prefetch"),
        (&["--epochs", "0"], "--epochs"),
        (&["--batch-size", "0"], "--batch-size"),
        (&["--lr=-1"], "--lr"),
        (&["--arch", "resnet"], "--arch"),
        (&["--device", "tpu"], "--device"),
        (&["--limit", "0"], "--limit"),
        (&["--connect-timeout", "0"], "--connect-timeout"),
        (&["--batch-timeout", "0"], "--batch-timeout"),
        (&["--teacher-wait", "0"], "--teacher-wait"),
        (&["--weight-decay=-1"], "--weight-decay"),
        (&["--min-lr=-1", "--lr-schedule", "cosine"], "--min-lr"),
        (&["--min-lr", "1", "--lr-schedule", "cosine"], "--min-lr"),
        (&["--min-lr", "1e-5"], "--min-lr"),
        (&["--clip-grad-norm", "0"], "--clip-grad-norm"),
        (&["--clip-grad-norm=-1"], "--clip-grad-norm"),
        (&["--clip-grad-norm", "inf"], "--clip-grad-norm"),
    ];
    for (args, flag) in cases {
        let err = distill(args).unwrap_err().to_string();
        assert!(err.starts_with(flag), "{args:?}: {err}");
    }
    // Hints: what each refusal names.
    let hint_cases: &[(&[&str], &str, &str)] = &[
        (
            &["--hint", "features"],
            "--hint",
            "TEACHER_OUTPUT=STUDENT_LAYER",
        ),
        (
            &["--hint-stage-epochs", "2"],
            "--hint-stage-epochs",
            "without --hint",
        ),
        (
            &["--hint", "features=h1", "--logit-cache", "/tmp/c"],
            "--hint",
            "online only",
        ),
        (
            &["--hint", "features=h1", "--arch", "lm"],
            "--hint",
            "language-model",
        ),
        (
            &["--hint", "features=h1", "--hint-weight=-1"],
            "--hint-weight",
            "-1",
        ),
    ];
    for (args, flag, what) in hint_cases {
        let err = distill(args).unwrap_err().to_string();
        assert!(
            err.starts_with(flag) && err.contains(what),
            "{args:?}: {err}"
        );
    }
    let e = train(&["--threads", "0"]).unwrap_err().to_string();
    assert_eq!(e, "--threads: must be at least 1");
    // Enumerated flags are checked by clap, which lists the accepted values.
    for args in [
        ["distill", "--teacher", "h:1", "--loss", "hinge"],
        ["train", "--optimizer", "lbfgs", "--lr", "1"],
        ["train", "--lr-schedule", "linear", "--lr", "1"],
    ] {
        let mut v = vec!["student-trainer"];
        v.extend_from_slice(&args);
        let e = Cli::try_parse_from(v).unwrap_err().to_string();
        assert!(e.contains("possible values"), "{args:?}: {e}");
    }
    // A negative or fractional warm-up is refused by clap, naming the flag.
    for bad in ["--warmup-steps=-5", "--warmup-steps=1.5"] {
        let e = Cli::try_parse_from(["student-trainer", "train", bad])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--warmup-steps"), "{bad}: {e}");
    }
    let Command::Distill(a) = parse(&["distill", "--teacher", "ftp://x"]) else {
        panic!()
    };
    let e = DistillConfig::try_from(a).unwrap_err().to_string();
    assert!(e.contains("http"), "{e}");
}

#[test]
fn replicas_and_groups_parse_with_weights() {
    let c = distill(&["--teacher", "b:2,c:3", "--batch-timeout", "2"]).unwrap();
    assert_eq!(
        c.teachers.groups[0].urls,
        ["http://127.0.0.1:50051", "http://b:2", "http://c:3"]
    );
    assert_eq!(c.teachers.batch_timeout, Duration::from_secs(2));
    assert_eq!(c.teachers.teacher_wait, Duration::from_secs(300));
    let g = teacher_groups(
        &[],
        &["a=h:1,h:2".into(), "b=h:3".into()],
        &["a=0.7".into(), "b=0.3".into()],
    )
    .unwrap();
    assert_eq!(g.len(), 2);
    assert_eq!((g[0].name.as_str(), g[0].weight), ("a", 0.7));
    assert_eq!(g[0].urls, ["http://h:1", "http://h:2"]);
    assert_eq!(
        (g[1].name.as_str(), g[1].weight, g[1].urls.len()),
        ("b", 0.3, 1)
    );
    for (groups, weights, why) in [
        (
            vec!["a"],
            vec![],
            "--teacher-group: \"a\": expected NAME=URL,URL,...",
        ),
        (
            vec!["a=h:1", "a=h:2"],
            vec![],
            "--teacher-group: \"a=h:2\": group names must be non-empty and distinct",
        ),
        (vec!["a="], vec![], "--teacher-group: \"a=\": no URL"),
        (
            vec!["a=h:1"],
            vec!["b=1"],
            "--group-weight: \"b=1\": no group named \"b\"",
        ),
        (
            vec!["a=h:1"],
            vec!["a=-1"],
            "--group-weight: \"a=-1\": W must be ≥ 0",
        ),
        (
            vec!["a=h:1"],
            vec!["a=0"],
            "--group-weight: the weights sum to 0",
        ),
    ] {
        let groups: Vec<String> = groups.into_iter().map(String::from).collect();
        let weights: Vec<String> = weights.into_iter().map(String::from).collect();
        let e = teacher_groups(&[], &groups, &weights)
            .unwrap_err()
            .to_string();
        assert_eq!(e, why, "{groups:?} {weights:?}");
    }
    let e = teacher_groups(&[], &[], &[]).unwrap_err().to_string();
    assert!(e.starts_with("--teacher: give --teacher URL"), "{e}");
}

#[test]
fn eval_needs_exactly_one_target() {
    let mk = |args: &[&str]| {
        let mut v = vec!["student-trainer", "eval"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v)
    };
    let e = mk(&[]).unwrap_err().to_string();
    assert!(
        e.contains("required arguments were not provided") && e.contains("--checkpoint"),
        "{e}"
    );
    let e = mk(&["--checkpoint", "a", "--teacher", "b"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("'--checkpoint <CHECKPOINT>' cannot be used with '--teacher <TEACHER>'"),
        "{e}"
    );
    assert!(
        mk(&[
            "--checkpoint",
            "a",
            "--data-dir",
            "d",
            "--device",
            "cpu",
            "--json"
        ])
        .is_ok()
    );
    let teachers = |args: &[&str]| {
        let Command::Eval(a) = mk(args).unwrap().command else {
            panic!()
        };
        match EvalConfig::try_from(a).unwrap().target {
            EvalTarget::Teachers(teachers) => teachers.groups,
            other => panic!("{other:?}"),
        }
    };
    let one = teachers(&["--teacher", "localhost:1"]);
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].urls, ["http://localhost:1"]);
    // Several replicas and dns:// names form one group, as in distill.
    let many = teachers(&["--teacher", "a:1", "--teacher", "dns://teachers:50051,b:2"]);
    assert_eq!(many.len(), 1);
    assert_eq!(
        many[0].urls,
        ["http://a:1", "dns://teachers:50051", "http://b:2"]
    );
    let Command::Eval(a) = mk(&["--teacher", "dns://nameonly"]).unwrap().command else {
        panic!()
    };
    let e = EvalConfig::try_from(a).unwrap_err().to_string();
    assert!(e.contains("dns://NAME:PORT"), "{e}");
}

fn plot(args: &[&str]) -> Result<PlotConfig, ConfigError> {
    let mut v = vec!["plot"];
    v.extend_from_slice(args);
    match parse(&v) {
        Command::Plot(a) => PlotConfig::try_from(a),
        other => panic!("{other:?}"),
    }
}

#[test]
fn plot_takes_run_dirs_a_png_and_a_bounded_size() {
    let c = plot(&["runs/baseline", "runs/distilled", "-o", "runs/report.png"]).unwrap();
    assert_eq!(
        c.runs,
        [
            PathBuf::from("runs/baseline"),
            PathBuf::from("runs/distilled")
        ]
    );
    assert_eq!(c.output, PathBuf::from("runs/report.png"));
    assert_eq!(
        (c.width, c.height),
        (
            crate::outputs::plot::DEFAULT_WIDTH,
            crate::outputs::plot::DEFAULT_HEIGHT
        )
    );
    let c = plot(&[
        "r", "--output", "x.PNG", "--width", "640", "--height", "480",
    ])
    .unwrap();
    assert_eq!((c.width, c.height), (640, 480));
    let e = plot(&["r", "-o", "curves.jpg"]).unwrap_err().to_string();
    assert!(e.contains("--output") && e.contains(".png"), "{e}");
    let e = plot(&["r", "--width", "10"]).unwrap_err().to_string();
    assert!(e.contains("--width: 10 pixels"), "{e}");
    let e = plot(&["r", "--height", "100000"]).unwrap_err().to_string();
    assert!(e.contains("--height"), "{e}");
    let e = Cli::try_parse_from(["student-trainer", "plot"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("required arguments were not provided") && e.contains("<RUN_DIR>"),
        "{e}"
    );
}

#[test]
fn each_command_requires_its_teachers_as_before_the_shared_flags() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
    let parse = |args: &[&str]| {
        let mut v = vec!["student-trainer"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|_| ())
    };
    for args in [&["capture", "--out", "c"][..], &["distill"][..]] {
        let e = parse(args).unwrap_err().to_string();
        assert!(
            e.contains("required arguments were not provided") && e.contains("--teacher <TEACHER>"),
            "{args:?}: {e}"
        );
    }
    parse(&["distill", "--logit-cache", "c"]).unwrap();
    parse(&["distill", "--teacher-group", "a=h:1"]).unwrap();
    parse(&["capture", "--out", "c", "--teacher", "h:1"]).unwrap();
    parse(&["eval", "--teacher", "h:1", "--batch-timeout", "5"]).unwrap();
}

#[test]
fn stop_after_steps_is_carried_over_and_hidden_from_help() {
    use clap::CommandFactory;
    assert_eq!(train(&[]).unwrap().stop_after_steps, None);
    assert_eq!(
        train(&["--stop-after-steps", "7"])
            .unwrap()
            .stop_after_steps,
        Some(7)
    );
    assert_eq!(
        distill(&["--stop-after-steps", "0"])
            .unwrap()
            .train
            .stop_after_steps,
        Some(0)
    );
    let mut cli = Cli::command();
    for sub in ["train", "distill"] {
        let help = cli
            .find_subcommand_mut(sub)
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(!help.contains("stop-after-steps"), "{sub}: {help}");
    }
}

#[test]
fn the_help_names_the_signal_repeat_window() {
    use clap::CommandFactory;
    let after = Cli::command().get_after_help().unwrap().to_string();
    let window = crate::signals::REPEAT_WINDOW.as_secs();
    assert!(
        after.contains(&format!(
            "within {window} s of the first are the same request"
        )),
        "{after}"
    );
}

fn capture(args: &[&str]) -> Result<CaptureConfig, ConfigError> {
    let mut v = vec!["capture", "--out", "c", "--teacher", "h:1"];
    v.extend_from_slice(args);
    match parse(&v) {
        Command::Capture(a) => CaptureConfig::try_from(a),
        other => panic!("{other:?}"),
    }
}

#[test]
fn temperatures_outside_the_computable_range_are_refused() {
    for (t, got) in [
        ("1e-45", "got 1e-45"),
        ("0.005", "got 0.005"),
        ("101", "got 101"),
        ("1e30", "got 1e30"),
        ("0", "got 0"),
        ("NaN", "got NaN"),
    ] {
        for err in [
            distill(&["--temperature", t]).unwrap_err().to_string(),
            capture(&["--temperature", t]).unwrap_err().to_string(),
        ] {
            assert!(
                err.starts_with("--temperature: expected 0.01 to 100, where the T²-scaled loss")
                    && err.ends_with(got),
                "{t}: {err}"
            );
        }
    }
    for t in ["0.01", "100"] {
        let want: f64 = t.parse().unwrap();
        assert_eq!(
            distill(&["--temperature", t]).unwrap().loss.temperature,
            want
        );
        assert_eq!(
            capture(&["--temperature", t]).unwrap().request.temperature,
            want
        );
    }
}

#[test]
fn a_huge_timeout_is_too_large_not_negative() {
    let err = distill(&["--batch-timeout", "1e300"])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "--batch-timeout: 1e300 seconds is too large: expected less than 1000000 (about 11.6 days)"
    );
    let err = distill(&["--teacher-wait", "inf"]).unwrap_err().to_string();
    assert!(
        err.starts_with("--teacher-wait: inf seconds is too large"),
        "{err}"
    );
    let err = distill(&["--connect-timeout=-3"]).unwrap_err().to_string();
    assert_eq!(
        err,
        "--connect-timeout: -3 is not a positive number of seconds"
    );
    let c = distill(&["--batch-timeout", "999999"]).unwrap();
    assert_eq!(c.teachers.batch_timeout, Duration::from_secs(999_999));
}

#[test]
fn numbers_in_messages_stay_short() {
    use super::error::number;
    assert_eq!(number(1e300), "1e300");
    assert_eq!(number(1e-45), "1e-45");
    assert_eq!(number(2.5), "2.5");
    assert_eq!(number(0.0), "0");
    assert_eq!(number(-7.0), "-7");
    assert_eq!(number(f64::INFINITY), "inf");
}

#[test]
fn text_file_flags_parse_default_and_need_the_tokenizer() {
    use distill_text::{Documents, FilesOptions, TestSplit};
    let t = train(&[
        "--tokenizer",
        "tok.json",
        "--documents",
        "blank-lines",
        "--text-field",
        "body",
        "--eos-token",
        "</s>",
        "--test-every",
        "7",
    ])
    .unwrap();
    assert_eq!(
        t.text.files,
        FilesOptions {
            tokenizer: Some("tok.json".into()),
            documents: Some(Documents::BlankLines),
            text_field: Some("body".into()),
            eos_token: Some("</s>".into()),
            test_every: Some(7),
            test_data: None,
        }
    );
    // Defaults: whole files, field "text", the tokenizer's own EOS, every 20th document.
    let spec = train(&["--tokenizer", "tok.json"])
        .unwrap()
        .text
        .files
        .spec()
        .unwrap();
    assert_eq!(
        (
            spec.documents,
            spec.text_field.as_str(),
            spec.eos_token,
            spec.test
        ),
        (Documents::File, "text", None, TestSplit::Every(20))
    );
    assert_eq!(train(&[]).unwrap().text.files, FilesOptions::default());
    let c = capture(&[
        "--tokenizer",
        "t.json",
        "--test-data",
        "held-out",
        "--seq-len",
        "32",
    ])
    .unwrap();
    assert_eq!(c.text.seq_len, 32);
    assert_eq!(
        c.text.files.spec().unwrap().test,
        TestSplit::Data("held-out".into())
    );

    let err = |r: Result<TrainConfig, ConfigError>| r.unwrap_err().to_string();
    assert_eq!(
        err(train(&["--documents", "lines"])),
        "--documents: needs --tokenizer FILE (the teacher's tokenizer.json): it reads --data-dir \
         as .txt and .jsonl files"
    );
    assert!(
        capture(&["--text-field", "x"])
            .unwrap_err()
            .to_string()
            .starts_with("--text-field: needs --tokenizer")
    );
    assert_eq!(
        err(train(&["--tokenizer", "t", "--test-every", "1"])),
        "--test-every: expected at least 2 (every N-th document is held out), got 1"
    );
    assert_eq!(
        err(train(&["--tokenizer", "t", "--eos-token", ""])),
        "--eos-token: expected a non-empty string, got \"\""
    );
    let e = Cli::try_parse_from(["student-trainer", "train", "--documents", "pages"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("expected file, lines or blank-lines, got \"pages\""),
        "{e}"
    );
    let e = Cli::try_parse_from([
        "student-trainer",
        "train",
        "--tokenizer",
        "t",
        "--test-every",
        "5",
        "--test-data",
        "d",
    ])
    .unwrap_err()
    .to_string();
    assert!(e.contains("cannot be used with"), "{e}");
    // eval --checkpoint takes them without --tokenizer (the checkpoint's record stands in).
    let Command::Eval(a) = parse(&["eval", "--checkpoint", "c", "--documents", "lines"]) else {
        panic!()
    };
    assert_eq!(
        EvalConfig::try_from(a).unwrap().text.files.documents,
        Some(Documents::Lines)
    );
    let Command::Eval(a) = parse(&["eval", "--teacher", "h:1", "--documents", "lines"]) else {
        panic!()
    };
    assert!(EvalConfig::try_from(a).is_err());
}

#[test]
fn a_torchscript_student_excludes_arch_and_names_its_logits_only_with_student() {
    let t = train(&["--student", "s.pt", "--student-logits-output", "logits"]).unwrap();
    assert_eq!(t.student, Some(PathBuf::from("s.pt")));
    assert_eq!(t.student_logits_output.as_deref(), Some("logits"));
    assert!(!t.arch_given);
    let e = train(&["--student", "s.pt", "--arch", "cnn"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("s.pt and --arch cnn together"), "{e}");
    let e = train(&["--student-logits-output", "logits"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs --student FILE.pt"), "{e}");
    let t = train(&["--init", "runs/x"]).unwrap();
    assert_eq!(t.init, Some(PathBuf::from("runs/x")));
    assert_eq!(t.arch.to_string(), "mlp");
    let d = distill(&["--student", "s.pt"]).unwrap();
    assert!(d.top_k_default && d.top_k == 0);
    assert!(!distill(&["--top-k", "0"]).unwrap().top_k_default);
}

#[test]
fn image_flags_parse_into_the_options_and_bad_values_name_their_flag() {
    let c = distill(&[
        "--image-size",
        "64,48",
        "--channels",
        "3",
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
        "--teacher-mean",
        "-0.5",
        "--augment",
        "crop,flip",
        "--skip-bad-images",
        "--loader-threads",
        "3",
    ])
    .unwrap();
    let o = &c.train.images;
    assert_eq!((o.size, o.channels), (Some((64, 48)), Some(3)));
    assert_eq!(o.mean, [0.485, 0.456, 0.406]);
    assert_eq!(o.teacher_mean.as_deref(), Some(&[-0.5][..]));
    assert_eq!(o.teacher_std, None);
    assert!(o.augment.crop && o.augment.flip && o.skip_bad);
    assert_eq!(o.threads(), 3);
    assert_eq!(train(&[]).unwrap().images, Default::default());
    for (args, want) in [
        (&["--image-size", "0,4"][..], "--image-size: expected H,W"),
        (
            &["--channels", "4"],
            "--channels: expected 1 (gray) or 3 (RGB), got 4",
        ),
        (&["--std", "0.5,0"], "--std: expected finite values > 0"),
        (&["--mean", "NaN"], "--mean: expected finite values"),
        (
            &["--loader-threads", "0"],
            "--loader-threads: must be at least 1",
        ),
    ] {
        let e = train(args).unwrap_err().to_string();
        assert!(e.starts_with(want), "{args:?}: {e}");
    }
    let e = distill(&["--augment", "flip", "--logit-cache", "c"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--augment flip") && e.contains("--logit-cache"),
        "{e}"
    );
}

#[test]
fn on_policy_flags_parse_with_their_defaults() {
    let c = distill(&[
        "--arch",
        "lm",
        "--on-policy",
        "0.5",
        "--prompt-tokens",
        "16",
    ])
    .unwrap();
    let op = c.on_policy.expect("on-policy settings");
    assert_eq!(op.lambda, 0.5);
    assert_eq!(
        (op.max_new_tokens, op.sample_temperature, op.top_p),
        (128, 1.0, 1.0)
    );
    assert_eq!(op.prompts, distill::PromptSource::Corpus { tokens: 16 });
    assert_eq!(op.estimator, crate::on_policy::OnPolicyEstimator::Full);
    assert_eq!((op.eval_prompts, op.samples_per_epoch), (64, 4));
    // Reverse KL by default on-policy, forward KL otherwise; --loss still wins.
    assert_eq!(c.loss.kind, LossKind::Rkl);
    assert_eq!(distill(&["--arch", "lm"]).unwrap().loss.kind, LossKind::Kl);
    let c = distill(&[
        "--on-policy",
        "1",
        "--prompts",
        "p.jsonl",
        "--prompt-field",
        "q",
        "--max-new-tokens",
        "32",
        "--sample-temperature",
        "0",
        "--top-p",
        "0.9",
        "--loss",
        "jsd",
        "--on-policy-estimator",
        "k1",
        "--truncate-prompts",
    ])
    .unwrap();
    let op = c.on_policy.unwrap();
    assert_eq!(
        op.prompts,
        distill::PromptSource::File {
            path: "p.jsonl".into(),
            prompt_field: "q".into(),
            completion_field: None
        }
    );
    assert_eq!(
        (op.max_new_tokens, op.sample_temperature, op.top_p),
        (32, 0.0, 0.9)
    );
    assert!(op.truncate_prompts);
    assert_eq!(c.loss.kind, LossKind::Jsd);
    assert!(distill(&[]).unwrap().on_policy.is_none());
}

#[test]
fn bad_on_policy_runs_are_refused_naming_the_flags() {
    let err = |args: &[&str]| distill(args).unwrap_err().to_string();
    let corpus = ["--on-policy", "1", "--prompt-tokens", "8"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        corpus
            .iter()
            .copied()
            .chain(extra.iter().copied())
            .collect()
    };
    for (args, needles) in [
        (
            vec!["--on-policy", "1.5", "--prompt-tokens", "8"],
            vec!["--on-policy", "0 to 1", "1.5"],
        ),
        (
            vec!["--on-policy", "1"],
            vec!["--prompts FILE.jsonl", "--prompt-tokens P"],
        ),
        (
            vec![
                "--on-policy",
                "1",
                "--prompts",
                "p.jsonl",
                "--prompt-tokens",
                "8",
            ],
            vec!["--prompt-tokens 8", "use one"],
        ),
        (
            vec!["--on-policy", "0.5", "--prompts", "p.jsonl"],
            vec!["--completion-field", "--on-policy 0.5"],
        ),
        (
            with(&["--logit-cache", "c"]),
            vec!["--logit-cache", "--on-policy 1"],
        ),
        (
            with(&["--max-new-tokens", "0"]),
            vec!["--max-new-tokens", "at least 1"],
        ),
        (with(&["--top-p", "0"]), vec!["--top-p", "(0, 1]"]),
        (
            with(&["--sample-temperature=-1"]),
            vec!["--sample-temperature", ">= 0"],
        ),
        (with(&["--loss", "mse"]), vec!["--loss", "mse"]),
        (
            with(&["--completion-field", "c"]),
            vec!["--completion-field", "--prompt-tokens"],
        ),
        (
            vec!["--max-new-tokens", "8"],
            vec!["--max-new-tokens", "--on-policy LAMBDA"],
        ),
        (
            vec!["--prompts", "p.jsonl"],
            vec!["--prompts", "--on-policy LAMBDA"],
        ),
        (
            vec!["--on-policy-estimator", "k1"],
            vec!["--on-policy-estimator", "--on-policy"],
        ),
        (
            vec![
                "--on-policy",
                "1",
                "--prompt-tokens",
                "8",
                "--on-policy-estimator",
                "k1",
                "--teacher-group",
                "a=127.0.0.1:1",
                "--teacher-group",
                "b=127.0.0.1:2",
                "--top-k",
                "0",
            ],
            vec!["--on-policy-estimator", "teacher groups mixed"],
        ),
    ] {
        let e = err(&args);
        for n in needles {
            assert!(e.contains(n), "{args:?}: {e:?} lacks {n:?}");
        }
    }
}
