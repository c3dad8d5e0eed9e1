//! Unit tests of the optimizers: step for step against tch's and float64 references, clipping,
//! exact resume, state names, and the resume policy.

use super::*;
use tch::nn::Module;
use tch::{Device, nn::VarStore};

/// `f32` values of `shape`, uniform in `[-scale, scale)`, from a Rust generator seeded with
/// `seed`: libtorch's global generator is shared with the tests running on other threads, so a
/// `manual_seed` there does not give the same draws twice.
fn seeded(shape: &[i64], seed: u64, scale: f32) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n = shape.iter().product::<i64>() as usize;
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
    Tensor::from_slice(&values).reshape(shape)
}

/// A 2-layer MLP 8 → 16 → 4 on the CPU, its weights a pure function of `seed`.
fn mlp(seed: i64) -> (VarStore, impl Module) {
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let net = nn::seq()
        .add(nn::linear(&root / "l1", 8, 16, Default::default()))
        .add_fn(|x| x.relu())
        .add(nn::linear(&root / "l2", 16, 4, Default::default()));
    tch::no_grad(|| {
        for (i, (_, mut p)) in trainable_parameters(&vs).into_iter().enumerate() {
            p.copy_(&seeded(&p.size(), seed as u64 * 1000 + i as u64, 0.35));
        }
    });
    (vs, net)
}

/// Fixed batches: inputs `[32, 8]`, labels `[32]` in `0..4`, the same on every call.
fn batches(n: usize) -> Vec<(Tensor, Tensor)> {
    (0..n as u64)
        .map(|i| {
            let x = seeded(&[32, 8], 1234 + i, 2.0);
            let y = seeded(&[32], 5678 + i, 2.0)
                .f_add_scalar(2.0)
                .unwrap()
                .floor()
                .clamp(0.0, 3.0)
                .to_kind(Kind::Int64);
            (x, y)
        })
        .collect()
}

fn loss(net: &impl Module, x: &Tensor, y: &Tensor) -> Tensor {
    net.forward(x).cross_entropy_for_logits(y)
}

fn max_diff(a: &VarStore, b: &VarStore) -> f64 {
    let (a, b) = (trainable_parameters(a), trainable_parameters(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            (ta - tb).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

fn compare_with_tch(ours: OptimizerConfig, theirs: impl nn::OptimizerConfig, lr: f64) {
    let data = batches(25);
    let (vs_a, net_a) = mlp(7);
    let (mut vs_b, net_b) = mlp(8);
    vs_b.copy(&vs_a).unwrap();
    let mut opt_a = Optimizer::for_var_store(ours, &vs_a).unwrap();
    let mut opt_b = theirs.build(&vs_b, lr).unwrap();
    for (i, (x, y)) in data.iter().enumerate() {
        opt_a.zero_grad();
        loss(&net_a, x, y).backward();
        opt_a.step().unwrap();
        opt_b.zero_grad();
        loss(&net_b, x, y).backward();
        opt_b.step();
        let d = max_diff(&vs_a, &vs_b);
        assert!(d < 1e-6, "step {i}: parameters differ by {d}");
    }
    assert_eq!(opt_a.step_count(), 25);
    // The parameters did move.
    let (vs_0, _) = mlp(7);
    assert!(max_diff(&vs_a, &vs_0) > 1e-3);
}

#[test]
fn adam_matches_tch_step_for_step() {
    compare_with_tch(OptimizerConfig::adam(1e-2), nn::Adam::default(), 1e-2);
}

#[test]
fn adam_with_weight_decay_and_betas_matches_tch() {
    let ours = OptimizerConfig {
        beta1: 0.8,
        beta2: 0.99,
        eps: 1e-6,
        weight_decay: 0.05,
        ..OptimizerConfig::adam(3e-3)
    };
    let theirs = nn::Adam {
        beta1: 0.8,
        beta2: 0.99,
        eps: 1e-6,
        wd: 0.05,
        amsgrad: false,
    };
    compare_with_tch(ours, theirs, 3e-3);
}

#[test]
fn adamw_matches_tch_step_for_step() {
    // PyTorch's defaults (weight decay 0.01) on both sides.
    assert_eq!(OptimizerConfig::adamw(1e-2).weight_decay, 0.01);
    compare_with_tch(OptimizerConfig::adamw(1e-2), nn::AdamW::default(), 1e-2);
    let ours = OptimizerConfig {
        beta1: 0.8,
        beta2: 0.99,
        eps: 1e-6,
        weight_decay: 0.3,
        ..OptimizerConfig::adamw(3e-3)
    };
    let theirs = nn::AdamW {
        beta1: 0.8,
        beta2: 0.99,
        eps: 1e-6,
        wd: 0.3,
        amsgrad: false,
    };
    compare_with_tch(ours, theirs, 3e-3);
}

#[test]
fn adamw_with_a_cosine_schedule_matches_tch() {
    // Our scheduled steps against tch's AdamW whose rate is set by hand from the formula.
    let config = OptimizerConfig {
        weight_decay: 0.1,
        schedule: LrSchedule {
            kind: crate::optim::LrScheduleKind::Cosine,
            warmup_steps: 5,
            min_lr: 1e-3,
        },
        ..OptimizerConfig::adamw(2e-2)
    };
    let total = 20u64;
    let data = batches(total as usize);
    let (vs_a, net_a) = mlp(11);
    let (mut vs_b, net_b) = mlp(12);
    vs_b.copy(&vs_a).unwrap();
    let mut opt_a = Optimizer::for_var_store(config, &vs_a).unwrap();
    let theirs = nn::AdamW {
        wd: 0.1,
        ..Default::default()
    };
    let mut opt_b = nn::OptimizerConfig::build(theirs, &vs_b, 2e-2).unwrap();
    for (k, (x, y)) in data.iter().enumerate() {
        opt_a.zero_grad();
        loss(&net_a, x, y).backward();
        let stats = opt_a.step_scheduled(total).unwrap();
        let lr = if k < 5 {
            2e-2 * k as f64 / 5.0
        } else {
            let progress = (k - 5) as f64 / 15.0;
            1e-3 + (2e-2 - 1e-3) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        };
        assert!(
            (stats.lr - lr).abs() < 1e-15,
            "step {k}: {} vs {lr}",
            stats.lr
        );
        assert_eq!(stats.grad_norm, None);
        opt_b.set_lr(lr);
        opt_b.zero_grad();
        loss(&net_b, x, y).backward();
        opt_b.step();
        let d = max_diff(&vs_a, &vs_b);
        assert!(d < 1e-6, "step {k}: parameters differ by {d}");
    }
    // The first update ran at rate 0: AdamW's decay and step both vanish, as in PyTorch.
    assert_eq!(opt_a.step_count(), total);
}

/// AdamW on `f64` parameters with the loss `½‖θ − c‖²` (gradient `θ − c`), against a plain
/// float64 re-implementation of `torch.optim.AdamW` with the warm-up + cosine schedule.
#[test]
fn adamw_matches_a_float64_reference() {
    let c = [0.5f64, -1.5, 2.0, 0.0];
    let theta0 = [1.0f64, 1.0, -1.0, 3.0];
    let (lr, wd, b1, b2, eps) = (0.1, 0.05, 0.9, 0.999, 1e-8);
    let (warmup, total) = (3u64, 25u64);
    let rate = |k: u64| {
        if k < warmup {
            lr * k as f64 / warmup as f64
        } else {
            let progress = (k - warmup) as f64 / (total - warmup) as f64;
            lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    };
    // Reference.
    let mut theta = theta0;
    let (mut m, mut v) = ([0.0f64; 4], [0.0f64; 4]);
    let mut reference = Vec::new();
    for k in 0..total {
        let t = (k + 1) as f64;
        let eta = rate(k);
        for i in 0..4 {
            let g = theta[i] - c[i];
            theta[i] *= 1.0 - eta * wd;
            m[i] = b1 * m[i] + (1.0 - b1) * g;
            v[i] = b2 * v[i] + (1.0 - b2) * g * g;
            let m_hat = m[i] / (1.0 - b1.powf(t));
            let v_hat = v[i] / (1.0 - b2.powf(t));
            theta[i] -= eta * m_hat / (v_hat.sqrt() + eps);
        }
        reference.push(theta);
    }
    // Ours.
    let p = Tensor::from_slice(&theta0).set_requires_grad(true);
    let target = Tensor::from_slice(&c);
    let config = OptimizerConfig {
        weight_decay: wd,
        schedule: LrSchedule {
            kind: crate::optim::LrScheduleKind::Cosine,
            warmup_steps: warmup,
            min_lr: 0.0,
        },
        ..OptimizerConfig::adamw(lr)
    };
    let mut opt = Optimizer::new(config, vec![("theta".into(), p.shallow_clone())]);
    for (k, want) in reference.iter().enumerate() {
        opt.zero_grad();
        ((&p - &target).square().sum(Kind::Double) * 0.5).backward();
        opt.step_scheduled(total).unwrap();
        let got = Vec::<f64>::try_from(&p.detach()).unwrap();
        for i in 0..4 {
            assert!(
                (got[i] - want[i]).abs() <= 1e-12,
                "step {k} θ{i}: {} vs {}",
                got[i],
                want[i]
            );
        }
    }
    // It moved towards c, and decay pulled it towards 0 a little.
    assert!((reference[24][0] - theta0[0]).abs() > 0.1);
}

/// Two parameters with gradients set by hand, under plain SGD.
fn with_grads(a: &[f32], b: &[f32]) -> (Optimizer, Tensor, Tensor) {
    with_grads_for(OptimizerConfig::sgd(0.1, 0.0), a, b)
}

fn with_grads_for(config: OptimizerConfig, a: &[f32], b: &[f32]) -> (Optimizer, Tensor, Tensor) {
    let pa = Tensor::zeros([a.len() as i64], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let pb = Tensor::zeros([b.len() as i64], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let ga = Tensor::from_slice(a);
    let gb = Tensor::from_slice(b);
    (&pa * &ga).sum(Kind::Float).backward();
    (&pb * &gb).sum(Kind::Float).backward();
    let opt = Optimizer::new(
        config,
        vec![
            ("a".into(), pa.shallow_clone()),
            ("b".into(), pb.shallow_clone()),
        ],
    );
    (opt, pa, pb)
}

fn grads(p: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(&p.grad()).unwrap()
}

#[test]
fn clip_grad_norm_scales_by_max_over_norm() {
    // ‖(3, 4, 12)‖ = 13.
    let (mut opt, pa, pb) = with_grads(&[3.0, 4.0], &[12.0]);
    assert!((opt.grad_norm().unwrap() - 13.0).abs() < 1e-6);
    let norm = opt.clip_grad_norm(6.5).unwrap();
    assert!((norm - 13.0).abs() < 1e-6, "{norm}");
    let coef = 6.5 / (13.0 + 1e-6);
    let want = [3.0 * coef, 4.0 * coef, 12.0 * coef];
    let got: Vec<f32> = grads(&pa).into_iter().chain(grads(&pb)).collect();
    for (g, w) in got.iter().zip(want) {
        assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
    }
    // Now just under 6.5.
    let after = opt.grad_norm().unwrap();
    assert!(after < 6.5 && after > 6.5 - 1e-5, "{after}");

    // Below the bound: untouched, bit for bit.
    let (mut opt, pa, pb) = with_grads(&[3.0, 4.0], &[12.0]);
    assert!((opt.clip_grad_norm(20.0).unwrap() - 13.0).abs() < 1e-6);
    assert_eq!(grads(&pa), [3.0, 4.0]);
    assert_eq!(grads(&pb), [12.0]);
}

#[test]
fn clip_grad_norm_matches_a_float64_norm() {
    let (vs, net) = mlp(4);
    let data = batches(1);
    loss(&net, &data[0].0, &data[0].1).backward();
    let mut opt = Optimizer::for_var_store(OptimizerConfig::adamw(1e-3), &vs).unwrap();
    let want: f64 = opt
        .parameters()
        .iter()
        .map(|(_, p)| {
            Vec::<f32>::try_from(&p.grad().flatten(0, -1))
                .unwrap()
                .iter()
                .map(|g| (*g as f64) * (*g as f64))
                .sum::<f64>()
        })
        .sum::<f64>()
        .sqrt();
    let got = opt.clip_grad_norm(want / 4.0).unwrap();
    assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
    let after = opt.grad_norm().unwrap();
    assert!((after - want / 4.0).abs() <= 1e-5 * want, "{after}");
}

#[test]
fn clip_grad_norm_errors() {
    let (mut opt, pa, _) = with_grads(&[f32::NAN, 1.0], &[1.0]);
    let err = opt.clip_grad_norm(1.0).unwrap_err();
    assert!(
        matches!(err, OptimError::NonFiniteGradNorm { norm, step: 0 } if norm.is_nan()),
        "{err}"
    );
    assert!(err.to_string().contains("NaN"), "{err}");
    // Nothing was scaled.
    assert_eq!(grads(&pa)[1], 1.0);
    let (mut opt, _, _) = with_grads(&[f32::INFINITY], &[1.0]);
    assert!(matches!(
        opt.clip_grad_norm(1.0),
        Err(OptimError::NonFiniteGradNorm { .. })
    ));
    // A scheduled step with clipping refuses too, and takes no step.
    let clipped = OptimizerConfig {
        clip_grad_norm: Some(1.0),
        ..OptimizerConfig::sgd(0.1, 0.0)
    };
    let (mut opt, pa, _) = with_grads_for(clipped, &[f32::NAN], &[1.0]);
    assert!(matches!(
        opt.step_scheduled(10),
        Err(OptimError::NonFiniteGradNorm { .. })
    ));
    assert_eq!(Vec::<f32>::try_from(&pa.detach()).unwrap(), [0.0]);
    assert_eq!(opt.step_count(), 0);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            opt.clip_grad_norm(bad),
            Err(OptimError::Config(_))
        ));
    }
    // No gradient anywhere: norm 0.
    let p = Tensor::zeros([2], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let mut none = Optimizer::new(OptimizerConfig::adam(1.0), vec![("p".into(), p)]);
    assert_eq!(none.clip_grad_norm(1.0).unwrap(), 0.0);
}

#[test]
fn sgd_matches_tch_step_for_step() {
    compare_with_tch(OptimizerConfig::sgd(0.1, 0.0), nn::Sgd::default(), 0.1);
    let ours = OptimizerConfig {
        weight_decay: 1e-3,
        ..OptimizerConfig::sgd(0.05, 0.9)
    };
    let theirs = nn::Sgd {
        momentum: 0.9,
        dampening: 0.0,
        wd: 1e-3,
        nesterov: false,
    };
    compare_with_tch(ours, theirs, 0.05);
}

fn resume_equals_straight_run(config: OptimizerConfig) {
    let data = batches(20);
    let total = data.len() as u64;
    let dir = std::env::temp_dir().join(format!("st-optim-{}-{}", config.kind, std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // Straight run.
    let (vs_a, net_a) = mlp(3);
    let mut opt_a = Optimizer::for_var_store(config, &vs_a).unwrap();
    for (x, y) in &data {
        opt_a.zero_grad();
        loss(&net_a, x, y).backward();
        opt_a.step_scheduled(total).unwrap();
    }

    // 10 steps, checkpoint through safetensors files, fresh model and optimizer, 10 more.
    let (vs_b, net_b) = mlp(3);
    let mut opt_b = Optimizer::for_var_store(config, &vs_b).unwrap();
    for (x, y) in &data[..10] {
        opt_b.zero_grad();
        loss(&net_b, x, y).backward();
        opt_b.step_scheduled(total).unwrap();
    }
    let weights = dir.join("model.safetensors");
    let state_file = dir.join("optimizer.safetensors");
    vs_b.save(&weights).unwrap();
    Tensor::write_safetensors(&opt_b.state().unwrap(), &state_file).unwrap();
    drop((opt_b, net_b, vs_b));

    let (mut vs_c, net_c) = mlp(99);
    vs_c.load(&weights).unwrap();
    let mut opt_c = Optimizer::for_var_store(config, &vs_c).unwrap();
    opt_c
        .load_state(Tensor::read_safetensors(&state_file).unwrap())
        .unwrap();
    assert_eq!(opt_c.step_count(), 10);
    for (x, y) in &data[10..] {
        opt_c.zero_grad();
        loss(&net_c, x, y).backward();
        opt_c.step_scheduled(total).unwrap();
    }
    let d = max_diff(&vs_a, &vs_c);
    assert!(d <= 1e-7, "{}: resumed run differs by {d}", config.kind);
    assert_eq!(opt_c.step_count(), 20);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn adam_resume_equals_straight_run() {
    resume_equals_straight_run(OptimizerConfig::adam(1e-2));
}

#[test]
fn adamw_with_schedule_and_clipping_resumes_exactly() {
    resume_equals_straight_run(OptimizerConfig {
        schedule: LrSchedule {
            kind: crate::optim::LrScheduleKind::Cosine,
            warmup_steps: 4,
            min_lr: 1e-4,
        },
        clip_grad_norm: Some(0.5),
        ..OptimizerConfig::adamw(1e-2)
    });
}

#[test]
fn sgd_momentum_resume_equals_straight_run() {
    resume_equals_straight_run(OptimizerConfig::sgd(0.05, 0.9));
}

#[test]
fn state_names_and_load_errors() {
    let data = batches(1);
    let (vs, net) = mlp(5);
    let mut opt = Optimizer::for_var_store(OptimizerConfig::adam(1e-3), &vs).unwrap();
    // Before any step: only the counter; loads into a fresh optimizer.
    let empty = opt.state().unwrap();
    assert_eq!(empty.len(), 1);
    opt.load_state(empty).unwrap();
    loss(&net, &data[0].0, &data[0].1).backward();
    opt.step().unwrap();
    let state = opt.state().unwrap();
    let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "step",
        "adam.exp_avg.l1.weight",
        "adam.exp_avg_sq.l2.bias",
        "adam.step.l1.bias",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    // The state is a copy: further steps do not change it.
    let before = state[1].1.copy();
    loss(&net, &data[0].0, &data[0].1).backward();
    opt.step().unwrap();
    assert_eq!((&state[1].1 - &before).abs().max().double_value(&[]), 0.0);

    let fresh = |kind| {
        let config = OptimizerConfig::new(kind, 1e-3);
        Optimizer::new(config, trainable_parameters(&vs))
    };
    let without = |drop: &str| -> Vec<(String, Tensor)> {
        state
            .iter()
            .filter(|(n, _)| n != drop)
            .map(|(n, t)| (n.clone(), t.shallow_clone()))
            .collect()
    };
    let err = fresh(OptimizerKind::Adam)
        .load_state(without("adam.exp_avg.l1.weight"))
        .unwrap_err();
    assert!(matches!(&err, OptimError::Missing { name } if name == "adam.exp_avg.l1.weight"));
    let err = fresh(OptimizerKind::Adam)
        .load_state(without("step"))
        .unwrap_err();
    assert!(
        matches!(&err, OptimError::Missing { name } if name == "step"),
        "{err}"
    );

    let mut misshaped = without("adam.exp_avg.l2.weight");
    misshaped.push((
        "adam.exp_avg.l2.weight".into(),
        Tensor::zeros([3, 3], tch::kind::FLOAT_CPU),
    ));
    let err = fresh(OptimizerKind::Adam)
        .load_state(misshaped)
        .unwrap_err();
    assert!(
        matches!(&err, OptimError::Shape { expected, .. } if *expected == vec![4, 16]),
        "{err}"
    );
    assert!(err.to_string().contains("[3, 3]"));

    let mut opt_sgd = fresh(OptimizerKind::Sgd);
    let err = opt_sgd.load_state(without("")).unwrap_err();
    assert!(matches!(err, OptimError::Unexpected { .. }), "{err}");
    assert_eq!(opt_sgd.step_count(), 0, "a failed load changes nothing");

    let mut bad_step = without("step");
    bad_step.push(("step".into(), Tensor::from(-3i64)));
    let err = fresh(OptimizerKind::Adam).load_state(bad_step).unwrap_err();
    assert!(matches!(err, OptimError::Invalid { .. }), "{err}");
}

#[test]
fn kinds_parse_and_configs_validate() {
    use clap::ValueEnum;
    assert_eq!(
        OptimizerKind::from_str("adam", true).unwrap(),
        OptimizerKind::Adam
    );
    assert_eq!(
        OptimizerKind::from_str("SGD", true).unwrap(),
        OptimizerKind::Sgd
    );
    assert_eq!(
        OptimizerKind::from_str("rmsprop", true).unwrap_err(),
        "invalid variant: rmsprop"
    );
    for kind in OptimizerKind::value_variants() {
        let name = kind.to_possible_value().unwrap().get_name().to_string();
        assert_eq!(kind.to_string(), name);
    }
    assert!(OptimizerConfig::default().validate().is_ok());
    let e = OptimizerConfig::adam(-1.0)
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid learning rate: -1"), "{e}");
    let bad = OptimizerConfig {
        beta2: 1.0,
        ..OptimizerConfig::default()
    };
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("invalid beta2 (must lie in [0, 1)): 1"), "{e}");
    let json = serde_json::to_string(&OptimizerConfig::sgd(0.1, 0.9)).unwrap();
    assert!(json.contains("\"sgd\""), "{json}");
    let back: OptimizerConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, OptimizerConfig::sgd(0.1, 0.9));
    assert_eq!(
        OptimizerKind::from_str("AdamW", true).unwrap(),
        OptimizerKind::AdamW
    );
    let adamw = OptimizerConfig {
        clip_grad_norm: Some(1.0),
        schedule: LrSchedule {
            kind: crate::optim::LrScheduleKind::Cosine,
            warmup_steps: 10,
            min_lr: 1e-5,
        },
        ..OptimizerConfig::adamw(3e-4)
    };
    let json = serde_json::to_string(&adamw).unwrap();
    assert!(
        json.contains("\"adamw\"") && json.contains("\"cosine\""),
        "{json}"
    );
    assert_eq!(
        serde_json::from_str::<OptimizerConfig>(&json).unwrap(),
        adamw
    );
    // A checkpoint from before schedules: constant rate, no clipping.
    let old = r#"{"kind":"adam","lr":0.001,"beta1":0.9,"beta2":0.999,"eps":1e-8,
                  "weight_decay":0.0,"momentum":0.9}"#;
    let old: OptimizerConfig = serde_json::from_str(old).unwrap();
    assert_eq!(old.schedule, LrSchedule::default());
    assert_eq!(old.clip_grad_norm, None);
    for bad in [
        OptimizerConfig {
            clip_grad_norm: Some(0.0),
            ..adamw
        },
        OptimizerConfig {
            clip_grad_norm: Some(f64::NAN),
            ..adamw
        },
        OptimizerConfig {
            schedule: LrSchedule {
                min_lr: 1.0,
                ..adamw.schedule
            },
            ..adamw
        },
    ] {
        assert!(
            matches!(bad.validate(), Err(OptimError::Config(_))),
            "{bad:?}"
        );
    }
    assert!(adamw.validate().is_ok());
}

#[test]
fn resume_refuses_another_rule_and_warns_about_rates() {
    let cosine = LrSchedule {
        kind: LrScheduleKind::Cosine,
        warmup_steps: 100,
        min_lr: 0.0,
    };
    let saved = OptimizerConfig {
        schedule: cosine,
        clip_grad_norm: Some(1.0),
        ..OptimizerConfig::adamw(3e-4)
    };
    assert_eq!(
        check_resume(&saved, Some(1000), &saved, 1000).unwrap(),
        Vec::<String>::new()
    );
    // Another optimizer.
    let adam = OptimizerConfig {
        kind: OptimizerKind::Adam,
        ..saved
    };
    let e = check_resume(&saved, Some(1000), &adam, 1000).unwrap_err();
    assert!(
        e.contains("--optimizer adamw") && e.contains("--optimizer adam "),
        "{e}"
    );
    // Another schedule, warm-up or floor.
    for schedule in [
        LrSchedule::default(),
        LrSchedule {
            warmup_steps: 50,
            ..cosine
        },
        LrSchedule {
            min_lr: 1e-5,
            ..cosine
        },
    ] {
        let now = OptimizerConfig { schedule, ..saved };
        let e = check_resume(&saved, Some(1000), &now, 1000).unwrap_err();
        assert!(
            e.contains("--lr-schedule") && e.contains("--warmup-steps"),
            "{e}"
        );
    }
    // A cosine run of another length.
    let e = check_resume(&saved, Some(1000), &saved, 1500).unwrap_err();
    assert!(
        e.contains("1000") && e.contains("1500") && e.contains("--epochs"),
        "{e}"
    );
    // A constant schedule may run longer.
    let constant = OptimizerConfig {
        schedule: LrSchedule::default(),
        ..saved
    };
    assert!(
        check_resume(&constant, Some(1000), &constant, 1500)
            .unwrap()
            .is_empty()
    );
    // Step-size changes are warnings, one per flag.
    let now = OptimizerConfig {
        lr: 1e-4,
        clip_grad_norm: None,
        ..saved
    };
    let w = check_resume(&saved, Some(1000), &now, 1000).unwrap();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].contains("--lr 0.0001") && w[0].contains("0.0003"),
        "{w:?}"
    );
    assert!(w[1].contains("--clip-grad-norm off"), "{w:?}");
}
