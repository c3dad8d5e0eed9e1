//! Unit tests of the distillation losses: hand-computed and float64 references, the shared
//! cases of `tests/data/`, sparse targets, token-level masking, and bad inputs.

use super::*;
use serde_json::Value;

fn t2(rows: &[&[f32]]) -> Tensor {
    let c = rows[0].len() as i64;
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, c])
}

fn value(t: &Tensor) -> f64 {
    t.double_value(&[])
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-5 * want.abs() + 1e-7;
    assert!(
        (got - want).abs() <= tol,
        "{what}: got {got}, want {want} (rel tol 1e-5)"
    );
}

fn json_tensor(v: &Value) -> Tensor {
    let rows: Vec<Vec<f32>> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
    t2(&refs)
}

/// The hand-computed KD/MSE cases the project owns, `student-trainer/tests/data/kd_loss.json`
/// (a copy of the values to check against; keep the two in step), compiled into the test so
/// that no test depends on files outside the crate.
fn cases() -> Value {
    serde_json::from_str(include_str!("../../tests/data/kd_loss.json"))
        .expect("tests/data/kd_loss.json is valid JSON")
}

#[test]
fn shared_kd_cases() {
    let cases = cases();
    let kd = cases["kd"].as_array().unwrap();
    assert!(!kd.is_empty());
    for case in kd {
        let name = case["name"].as_str().unwrap();
        let s = json_tensor(&case["student_logits"]);
        let t = json_tensor(&case["teacher_logits"]);
        let labels: Vec<i64> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_i64().unwrap())
            .collect();
        let y = Tensor::from_slice(&labels);
        let temperature = case["temperature"].as_f64().unwrap();
        let alpha = case["alpha"].as_f64().unwrap();
        let kl = value(&kl_batchmean(&s, &t, temperature));
        close(
            kl,
            case["kl_batchmean"].as_f64().unwrap(),
            &format!("{name} kl"),
        );
        close(
            value(&cross_entropy(&s, &y)),
            case["ce"].as_f64().unwrap(),
            &format!("{name} ce"),
        );
        let loss = DistillLoss {
            kind: LossKind::Kl,
            temperature,
            alpha,
            sparse_tail: SparseTail::Bucket,
            jsd_beta: DEFAULT_JSD_BETA,
        };
        let parts = loss.compute(&s, &t, &y, None).unwrap();
        close(
            value(&parts.total),
            case["loss"].as_f64().unwrap(),
            &format!("{name} loss"),
        );
        close(
            parts.soft,
            temperature * temperature * kl,
            &format!("{name} soft"),
        );
        close(
            parts.hard,
            case["ce"].as_f64().unwrap(),
            &format!("{name} hard"),
        );
        assert!(value(&parts.total).is_finite(), "{name}");
    }
}

#[test]
fn shared_mse_cases() {
    let cases = cases();
    let mse = cases["mse"].as_array().unwrap();
    assert!(!mse.is_empty());
    for case in mse {
        let name = case["name"].as_str().unwrap();
        let s = json_tensor(&case["student_logits"]);
        let t = json_tensor(&case["teacher_logits"]);
        let want = case["mse_mean_over_elements"].as_f64().unwrap();
        let b = s.size()[0];
        let y = Tensor::zeros([b], (Kind::Int64, tch::Device::Cpu));
        // alpha = 1: the loss is the soft term alone; T must not matter.
        for temperature in [1.0, 4.0] {
            let loss = DistillLoss {
                kind: LossKind::Mse,
                temperature,
                alpha: 1.0,
                sparse_tail: SparseTail::Bucket,
                jsd_beta: DEFAULT_JSD_BETA,
            };
            let parts = loss.compute(&s, &t, &y, None).unwrap();
            close(value(&parts.total), want, &format!("{name} mse loss"));
            close(parts.soft, want, &format!("{name} mse soft"));
        }
        // Mixed with CE the same way as KL.
        let loss = DistillLoss {
            kind: LossKind::Mse,
            temperature: 4.0,
            alpha: 0.25,
            sparse_tail: SparseTail::Bucket,
            jsd_beta: DEFAULT_JSD_BETA,
        };
        let parts = loss.compute(&s, &t, &y, None).unwrap();
        let ce = value(&cross_entropy(&s, &y));
        close(
            value(&parts.total),
            0.25 * want + 0.75 * ce,
            &format!("{name} mixed"),
        );
    }
}

#[test]
fn identical_distributions_have_zero_kl() {
    let x = Tensor::randn([5, 7], tch::kind::FLOAT_CPU) * 3.0;
    for temperature in [0.5, 1.0, 4.0] {
        assert_eq!(value(&kl_batchmean(&x, &x, temperature)), 0.0);
    }
}

#[test]
fn hand_computed_uniform_student() {
    let t = t2(&[&[2.0, 1.0, 0.0]]);
    let s = t2(&[&[0.0, 0.0, 0.0]]);
    for (temperature, want) in [(1.0, 0.266217), (2.0, 0.313684), (4.0, 0.328202)] {
        let got = temperature * temperature * value(&kl_batchmean(&s, &t, temperature));
        // The hand values have 6 decimals; f32 with the T² factor agrees to ~4e-6 relative.
        assert!(
            (got - want).abs() <= 1e-5 * want + 5e-7,
            "T={temperature}: {got} vs {want}"
        );
    }
}

#[test]
fn batchmean_not_element_mean() {
    let t = t2(&[&[2.0, 1.0, 0.0], &[0.0, 3.0, 0.0]]);
    let s = t2(&[&[0.0, 0.0, 0.0], &[1.0, 0.0, 0.0]]);
    let got = value(&kl_batchmean(&s, &t, 1.0));
    assert!((got - 0.702894).abs() < 1e-6, "{got}");
    assert!((got - 0.234298).abs() > 0.1);
}

#[test]
fn zero_teacher_probability_contributes_zero() {
    let s = t2(&[&[0.0, 0.0, 0.0]]);
    for t in [
        t2(&[&[0.0, 0.0, f32::NEG_INFINITY]]),
        t2(&[&[0.0, 0.0, -1000.0]]),
    ] {
        let s = s.copy().set_requires_grad(true);
        let kl = kl_batchmean(&s, &t, 1.0);
        // p = [0.5, 0.5, 0], q = uniform: KL = log(3/2).
        close(value(&kl), (1.5f64).ln(), "kl with p=0");
        kl.backward();
        let g = s.grad();
        assert_eq!(value(&g.isnan().any()), 0.0, "NaN gradient");
    }
}

#[test]
fn gradient_flows_to_student_only() {
    let s = Tensor::randn([4, 5], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let t = Tensor::randn([4, 5], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
    for kind in [LossKind::Kl, LossKind::Mse] {
        let loss = DistillLoss {
            kind,
            temperature: 4.0,
            alpha: 0.9,
            sparse_tail: SparseTail::Bucket,
            jsd_beta: DEFAULT_JSD_BETA,
        };
        let parts = loss.compute(&s, &t, &y, None).unwrap();
        parts.total.backward();
        assert!(s.grad().defined());
        assert!(value(&s.grad().abs().sum(Kind::Float)) > 0.0);
        let tg = t.grad();
        assert!(!tg.defined() || value(&tg.abs().sum(Kind::Float)) == 0.0);
    }
}

#[test]
fn unlabelled_samples_use_alpha_one() {
    let s = Tensor::randn([6, 4], tch::kind::FLOAT_CPU);
    let t = Tensor::randn([6, 4], tch::kind::FLOAT_CPU);
    // Garbage labels on unlabelled rows must be ignored.
    let y = Tensor::from_slice(&[1i64, 2, -7, 99, 0, 3]);
    let mask = Tensor::from_slice(&[true, true, false, false, true, true]);
    let loss = DistillLoss {
        kind: LossKind::Kl,
        temperature: 4.0,
        alpha: 0.9,
        sparse_tail: SparseTail::Bucket,
        jsd_beta: DEFAULT_JSD_BETA,
    };
    let parts = loss.compute(&s, &t, &y, Some(&mask)).unwrap();
    // Per-row reference.
    let mut want = 0.0;
    let mut ce_sum = 0.0;
    for i in 0..6 {
        let si = s.narrow(0, i, 1);
        let ti = t.narrow(0, i, 1);
        let soft = 16.0 * value(&kl_batchmean(&si, &ti, 4.0));
        if bool::try_from(mask.get(i)).unwrap() {
            let ce = value(&cross_entropy(&si, &y.narrow(0, i, 1)));
            ce_sum += ce;
            want += 0.9 * soft + 0.1 * ce;
        } else {
            want += soft;
        }
    }
    close(value(&parts.total), want / 6.0, "masked total");
    close(parts.hard, ce_sum / 4.0, "masked hard");

    // Nothing labelled == alpha 1 everywhere.
    let none = Tensor::zeros([6], (Kind::Bool, tch::Device::Cpu));
    let a = loss.compute(&s, &t, &y, Some(&none)).unwrap();
    let alpha1 = DistillLoss { alpha: 1.0, ..loss };
    let ok_labels = Tensor::zeros([6], (Kind::Int64, tch::Device::Cpu));
    let b = alpha1.compute(&s, &t, &ok_labels, None).unwrap();
    close(value(&a.total), value(&b.total), "no labels vs alpha 1");
    assert_eq!(a.hard, 0.0);
}

#[test]
fn bad_inputs_are_errors() {
    let s = Tensor::zeros([2, 3], tch::kind::FLOAT_CPU);
    let y = Tensor::zeros([2], (Kind::Int64, tch::Device::Cpu));
    let loss = DistillLoss {
        kind: LossKind::Kl,
        temperature: 4.0,
        alpha: 0.9,
        sparse_tail: SparseTail::Bucket,
        jsd_beta: DEFAULT_JSD_BETA,
    };
    let t4 = Tensor::zeros([2, 4], tch::kind::FLOAT_CPU);
    let e = loss.compute(&s, &t4, &y, None).unwrap_err().to_string();
    assert!(
        e.contains("must both be [batch, classes], got [2, 3] and [2, 4]"),
        "{e}"
    );
    let y3 = Tensor::zeros([3], (Kind::Int64, tch::Device::Cpu));
    let e = loss.compute(&s, &s, &y3, None).unwrap_err().to_string();
    assert!(e.contains("labels must be [2], got [3]"), "{e}");
    let out_of_range = Tensor::from_slice(&[0i64, 5]);
    let e = loss
        .compute(&s, &s, &out_of_range, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Target 5 is out of bounds"), "{e}");
    let bad_t = DistillLoss {
        temperature: 0.0,
        ..loss
    };
    let e = bad_t.compute(&s, &s, &y, None).unwrap_err().to_string();
    assert!(e.contains("temperature must be positive, got 0"), "{e}");
    let bad_mask = Tensor::ones([3], (Kind::Bool, tch::Device::Cpu));
    let e = loss
        .compute(&s, &s, &y, Some(&bad_mask))
        .unwrap_err()
        .to_string();
    assert!(e.contains("labelled mask must be [2], got [3]"), "{e}");
}

const TAILS: [SparseTail; 3] = [SparseTail::Bucket, SparseTail::Uniform, SparseTail::Renorm];

/// The top-k targets of dense teacher logits `[B, C]` at temperature `t`, with the tail
/// computed in float64 from the full rows (as the teacher-server does in f32).
fn top_k(teacher: &Tensor, k: i64, t: f64) -> SoftTargets {
    let (values, indices) = teacher.topk(k, -1, true, true);
    let masked = (teacher.to_kind(Kind::Double) / t).scatter_value(1, &indices, f64::NEG_INFINITY);
    let tail = masked
        .logsumexp([-1i64].as_slice(), false)
        .to_kind(Kind::Float);
    SoftTargets::Sparse {
        indices,
        values,
        tail_logsumexp: tail,
    }
}

fn relative(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

#[test]
fn with_k_equal_to_the_classes_every_tail_mode_is_the_dense_loss() {
    tch::manual_seed(3);
    let s = Tensor::randn([6, 7], tch::kind::FLOAT_CPU) * 2.0;
    let t = Tensor::randn([6, 7], tch::kind::FLOAT_CPU) * 3.0;
    let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]);
    let mask = Tensor::from_slice(&[true, false, true, true, false, true]);
    for temperature in [1.0, 2.5] {
        let targets = top_k(&t, 7, temperature);
        let SoftTargets::Sparse { tail_logsumexp, .. } = &targets else {
            unreachable!()
        };
        assert_eq!(
            Vec::<f32>::try_from(tail_logsumexp).unwrap(),
            [f32::NEG_INFINITY; 6]
        );
        for sparse_tail in TAILS {
            let loss = DistillLoss {
                kind: LossKind::Kl,
                temperature,
                alpha: 0.8,
                sparse_tail,
                jsd_beta: DEFAULT_JSD_BETA,
            };
            for labelled in [None, Some(&mask)] {
                let dense = loss.compute(&s, &t, &y, labelled).unwrap();
                let sparse = loss.compute_targets(&s, &targets, &y, labelled).unwrap();
                let (d, sp) = (value(&dense.total), value(&sparse.total));
                assert!(
                    relative(sp, d) <= 1e-6,
                    "{sparse_tail} T={temperature}: sparse {sp}, dense {d}"
                );
                assert!(relative(sparse.soft, dense.soft) <= 1e-6);
                assert_eq!(sparse.hard, dense.hard);
            }
        }
    }
}

fn json_rows<T>(v: &Value, f: impl Fn(&Value) -> T) -> Vec<Vec<T>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(&f).collect())
        .collect()
}

/// The float64 cases of `tests/data/kd_sparse.json`, written by `kd_sparse.py` (plain
/// Python, independent of this code).
#[test]
fn shared_sparse_cases() {
    let doc: Value = serde_json::from_str(include_str!("../../tests/data/kd_sparse.json"))
        .expect("tests/data/kd_sparse.json is valid JSON");
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let s = json_tensor(&case["student_logits"]);
        let b = s.size()[0];
        let k = case["top_k"].as_i64().unwrap();
        let indices: Vec<i64> = json_rows(&case["indices"], |x| x.as_i64().unwrap()).concat();
        let values: Vec<f32> = json_rows(&case["values"], |x| x.as_f64().unwrap() as f32).concat();
        let tail: Vec<f32> = case["tail_logsumexp"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().map_or(f32::NEG_INFINITY, |v| v as f32))
            .collect();
        let targets = SoftTargets::Sparse {
            indices: Tensor::from_slice(&indices).view([b, k]),
            values: Tensor::from_slice(&values).view([b, k]),
            tail_logsumexp: Tensor::from_slice(&tail),
        };
        let labels: Vec<i64> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_i64().unwrap())
            .collect();
        let y = Tensor::from_slice(&labels);
        let mask = case.get("labelled").map(|m| {
            let marks: Vec<bool> = m
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_bool().unwrap())
                .collect();
            Tensor::from_slice(&marks)
        });
        for sparse_tail in TAILS {
            let loss = DistillLoss {
                kind: LossKind::Kl,
                temperature: case["temperature"].as_f64().unwrap(),
                alpha: case["alpha"].as_f64().unwrap(),
                sparse_tail,
                jsd_beta: DEFAULT_JSD_BETA,
            };
            let parts = loss
                .compute_targets(&s, &targets, &y, mask.as_ref())
                .unwrap();
            let want = &case[sparse_tail.to_string()];
            close(
                value(&parts.total),
                want["loss"].as_f64().unwrap(),
                &format!("{name} {sparse_tail} loss"),
            );
            close(
                parts.soft,
                want["soft"].as_f64().unwrap(),
                &format!("{name} {sparse_tail} soft"),
            );
        }
    }
}

#[test]
fn sparse_gradients_reach_the_student_only_and_stay_finite() {
    tch::manual_seed(5);
    let t = Tensor::randn([4, 9], tch::kind::FLOAT_CPU) * 3.0;
    let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
    for (k, kind, sparse_tail) in [3, 9]
        .into_iter()
        .flat_map(|k| DIVERGENCES.map(|kind| (k, kind)))
        .flat_map(|(k, kind)| TAILS.map(|tail| (k, kind, tail)))
    {
        {
            let s = (Tensor::randn([4, 9], tch::kind::FLOAT_CPU) * 2.0).set_requires_grad(true);
            let SoftTargets::Sparse {
                indices,
                values,
                tail_logsumexp,
            } = top_k(&t, k, 2.0)
            else {
                unreachable!()
            };
            let values = values.set_requires_grad(true);
            let tail = tail_logsumexp.set_requires_grad(true);
            let targets = SoftTargets::Sparse {
                indices,
                values: values.shallow_clone(),
                tail_logsumexp: tail.shallow_clone(),
            };
            let loss = DistillLoss {
                kind,
                temperature: 2.0,
                alpha: 0.9,
                sparse_tail,
                jsd_beta: DEFAULT_JSD_BETA,
            };
            let parts = loss.compute_targets(&s, &targets, &y, None).unwrap();
            parts.total.backward();
            let g = s.grad();
            assert_eq!(
                value(&g.isfinite().logical_not().any()),
                0.0,
                "k {k} {kind} {sparse_tail}: non-finite gradient"
            );
            assert!(value(&g.abs().sum(Kind::Float)) > 0.0);
            for teacher in [values.grad(), tail.grad()] {
                assert!(!teacher.defined() || value(&teacher.abs().sum(Kind::Float)) == 0.0);
            }
        }
    }
}

#[test]
fn sparse_targets_with_mse_or_bad_shapes_are_errors() {
    let s = Tensor::zeros([2, 4], tch::kind::FLOAT_CPU);
    let y = Tensor::from_slice(&[0i64, 1]);
    let t = top_k(&Tensor::randn([2, 4], tch::kind::FLOAT_CPU), 2, 1.0);
    let mse = DistillLoss {
        kind: LossKind::Mse,
        temperature: 1.0,
        alpha: 1.0,
        sparse_tail: SparseTail::Bucket,
        jsd_beta: DEFAULT_JSD_BETA,
    };
    let e = mse
        .compute_targets(&s, &t, &y, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("MSE") && e.contains("top-k"), "{e}");
    let kl = DistillLoss {
        kind: LossKind::Kl,
        ..mse
    };
    let wide = Tensor::zeros([2, 1], tch::kind::FLOAT_CPU);
    let e = kl
        .compute_targets(&wide, &t, &y, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[2, 1]") && e.contains("[2, 2]"), "{e}");
}

#[test]
fn sparse_tail_parses() {
    for (s, want) in [
        ("bucket", SparseTail::Bucket),
        ("uniform", SparseTail::Uniform),
        ("renorm", SparseTail::Renorm),
    ] {
        assert_eq!(
            <SparseTail as clap::ValueEnum>::from_str(s, true).unwrap(),
            want
        );
        assert_eq!(want.to_string(), s);
    }
    assert_eq!(SparseTail::default(), SparseTail::Bucket);
}

#[test]
fn loss_kind_parses() {
    use clap::ValueEnum;
    assert_eq!(LossKind::from_str("kl", true).unwrap(), LossKind::Kl);
    assert_eq!(LossKind::from_str("rkl", true).unwrap(), LossKind::Rkl);
    assert_eq!(LossKind::from_str("JSD", true).unwrap(), LossKind::Jsd);
    assert_eq!(LossKind::from_str("MSE", true).unwrap(), LossKind::Mse);
    assert_eq!(
        LossKind::from_str("l1", true).unwrap_err(),
        "invalid variant: l1"
    );
    for kind in LossKind::value_variants() {
        let name = kind.to_possible_value().unwrap().get_name().to_string();
        assert_eq!(kind.to_string(), name);
    }
}

const DIVERGENCES: [LossKind; 3] = [LossKind::Kl, LossKind::Rkl, LossKind::Jsd];

fn loss_of(kind: LossKind, temperature: f64, alpha: f64) -> DistillLoss {
    DistillLoss {
        kind,
        temperature,
        alpha,
        sparse_tail: SparseTail::Bucket,
        jsd_beta: DEFAULT_JSD_BETA,
    }
}

fn max_abs(t: &Tensor) -> f64 {
    value(&t.abs().max())
}

fn all_finite(t: &Tensor) -> bool {
    value(&t.isfinite().all()) == 1.0
}

/// A [1, 3, 3] sequence whose last position is padding (label -100) holding NaN and
/// infinite teacher values; T = 2, alpha = 0.5. At T = 2:
///
/// - token 0: student [0, 0, 0] → q = (1/3, 1/3, 1/3); teacher [2 ln 2, 0, 0] →
///   p = (1/2, 1/4, 1/4); label 0, CE = −log(1/3) = ln 3.
/// - token 1: student [2 ln 4, 0, 0] → q = (2/3, 1/6, 1/6) (at T = 1: (16, 1, 1)/18);
///   teacher [0, 0, 0] → p = (1/3, 1/3, 1/3); label 1, CE = −log(1/18) = ln 18.
#[test]
fn masked_token_kd_by_hand() {
    let ln = f64::ln;
    let (l2, l4) = ((2.0f32).ln(), (4.0f32).ln());
    let student =
        Tensor::from_slice(&[0.0f32, 0.0, 0.0, 2.0 * l4, 0.0, 0.0, 7.0, -3.0, 5.0]).view([1, 3, 3]);
    let teacher = Tensor::from_slice(&[
        2.0 * l2,
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
    ])
    .view([1, 3, 3]);
    let labels = Tensor::from_slice(&[0i64, 1, -100]).view([1, 3]);
    // The same teacher as top-2 + tail (bucket): the tail at T = 2 is the log-sum-exp of one
    // teacher logit 0, i.e. 0; the padded position holds out-of-range indices and NaN.
    let sparse = SoftTargets::Sparse {
        indices: Tensor::from_slice(&[0i64, 1, 0, 1, 99, -5]).view([1, 3, 2]),
        values: Tensor::from_slice(&[2.0 * l2, 0.0, 0.0, 0.0, f32::NAN, f32::NAN]).view([1, 3, 2]),
        tail_logsumexp: Tensor::from_slice(&[0.0f32, 0.0, f32::INFINITY]).view([1, 3]),
    };
    // D(p ‖ q) of each real token, by hand.
    let kl = [0.5 * ln(9.0 / 8.0), ln(2.0) / 3.0];
    let rkl = [
        ln(2.0 / 3.0) / 3.0 + 2.0 / 3.0 * ln(4.0 / 3.0),
        ln(2.0) / 3.0,
    ];
    // β = ½: token 0, m = (5/12, 7/24, 7/24); token 1, m = (1/2, 1/4, 1/4).
    let jsd = [
        0.5 * (0.5 * ln(6.0 / 5.0) + 0.5 * ln(6.0 / 7.0))
            + 0.5 * (ln(4.0 / 5.0) / 3.0 + 2.0 / 3.0 * ln(8.0 / 7.0)),
        ln(2.0 / 3.0) / 3.0 + 2.0 / 3.0 * ln(4.0 / 3.0),
    ];
    let ce = [ln(3.0), ln(18.0)];
    for (kind, d) in [
        (LossKind::Kl, kl),
        (LossKind::Rkl, rkl),
        (LossKind::Jsd, jsd),
    ] {
        let loss = loss_of(kind, 2.0, 0.5);
        // Per token ½·T²·D + ½·CE, over the 2 real tokens.
        let want = ((0.5 * 4.0 * d[0] + 0.5 * ce[0]) + (0.5 * 4.0 * d[1] + 0.5 * ce[1])) / 2.0;
        for targets in [
            SoftTargets::Dense(teacher.shallow_clone()),
            sparse.shallow_clone(),
        ] {
            let s = student.copy().set_requires_grad(true);
            let parts = loss.compute_targets(&s, &targets, &labels, None).unwrap();
            close(value(&parts.total), want, &format!("{kind} loss"));
            close(
                parts.soft,
                4.0 * (d[0] + d[1]) / 2.0,
                &format!("{kind} soft"),
            );
            close(parts.hard, (ce[0] + ce[1]) / 2.0, &format!("{kind} hard"));
            assert_eq!(parts.tokens, 2);
            parts.total.backward();
            let g = s.grad();
            assert!(all_finite(&g), "{kind}: {g:?}");
            assert_eq!(max_abs(&g.select(1, 2)), 0.0, "{kind}: padded gradient");
            assert!(max_abs(&g.select(1, 0)) > 0.0 && max_abs(&g.select(1, 1)) > 0.0);
        }
    }
}

/// Sparse top-k targets of dense logits `[B, S, V]` (flattened through [`top_k`]).
fn top_k_seq(teacher: &Tensor, k: i64, t: f64) -> SoftTargets {
    let size = teacher.size();
    let SoftTargets::Sparse {
        indices,
        values,
        tail_logsumexp,
    } = top_k(&teacher.flatten(0, 1), k, t)
    else {
        unreachable!()
    };
    SoftTargets::Sparse {
        indices: indices.view([size[0], size[1], k]),
        values: values.view([size[0], size[1], k]),
        tail_logsumexp: tail_logsumexp.view([size[0], size[1]]),
    }
}

/// `rows` real positions, then `pad` padded ones whose teacher values are `garbage` and
/// whose student logits are large (or NaN); returns (student, teacher, labels) of one
/// sequence, `[len, V]`, `[len, V]`, `[len]`.
fn padded(s: &Tensor, t: &Tensor, y: &Tensor, pad: i64, garbage: f64) -> (Tensor, Tensor, Tensor) {
    let v = s.size()[1];
    let s_pad = Tensor::full([pad, v], garbage, tch::kind::FLOAT_CPU);
    let t_pad = Tensor::full([pad, v], garbage, tch::kind::FLOAT_CPU);
    let y_pad = Tensor::full([pad], IGNORE_INDEX, (Kind::Int64, tch::Device::Cpu));
    (
        Tensor::cat(&[s, &s_pad], 0),
        Tensor::cat(&[t, &t_pad], 0),
        Tensor::cat(&[y, &y_pad], 0),
    )
}

/// Sequence X (4 real tokens) and Y (6) in a batch of length 6 and in one of length 9 with
/// other garbage: the same loss and the same gradients, zero gradients on padding, and the
/// same value as the `[B, C]` loss over the 10 real rows.
#[test]
fn padding_and_garbage_change_neither_loss_nor_gradients() {
    tch::manual_seed(21);
    let v = 7;
    let (sx, tx) = (
        Tensor::randn([4, v], tch::kind::FLOAT_CPU) * 2.0,
        Tensor::randn([4, v], tch::kind::FLOAT_CPU) * 3.0,
    );
    let (sy, ty) = (
        Tensor::randn([6, v], tch::kind::FLOAT_CPU) * 2.0,
        Tensor::randn([6, v], tch::kind::FLOAT_CPU) * 3.0,
    );
    let yx = Tensor::from_slice(&[0i64, 3, 6, 2]);
    let yy = Tensor::from_slice(&[1i64, 1, 5, 4, 0, 6]);
    let batch = |pad_x: i64, pad_y: i64, garbage: f64| {
        let (s0, t0, y0) = padded(&sx, &tx, &yx, pad_x, garbage);
        let (s1, t1, y1) = padded(&sy, &ty, &yy, pad_y, garbage);
        (
            Tensor::stack(&[s0, s1], 0),
            Tensor::stack(&[t0, t1], 0),
            Tensor::stack(&[y0, y1], 0),
        )
    };
    let short = batch(2, 0, 1e4);
    let long = batch(5, 3, f64::NAN);
    let rows_s = Tensor::cat(&[&sx, &sy], 0);
    let rows_t = Tensor::cat(&[&tx, &ty], 0);
    let rows_y = Tensor::cat(&[&yx, &yy], 0);
    let mut cases: Vec<(DistillLoss, Option<i64>)> = Vec::new();
    for kind in DIVERGENCES {
        for sparse_tail in TAILS {
            cases.push((
                DistillLoss {
                    sparse_tail,
                    jsd_beta: 0.3,
                    ..loss_of(kind, 2.0, 0.7)
                },
                Some(3),
            ));
        }
        cases.push((loss_of(kind, 2.0, 0.7), None));
    }
    cases.push((loss_of(LossKind::Mse, 1.0, 0.7), None));
    for (loss, k) in cases {
        let what = format!("{} {} k={k:?}", loss.kind, loss.sparse_tail);
        let targets = |t: &Tensor| match k {
            Some(k) => {
                let mut sparse = top_k_seq(&t.nan_to_num(0.0, None, None), k, 2.0);
                // Garbage in the padded positions of the sparse targets too.
                if let SoftTargets::Sparse {
                    indices,
                    values,
                    tail_logsumexp,
                } = &mut sparse
                {
                    let pad = t
                        .select(2, 0)
                        .isfinite()
                        .logical_not()
                        .logical_or(&t.select(2, 0).abs().ge(1e4));
                    *indices = indices.masked_fill(&pad.unsqueeze(-1), 1000);
                    *values = values.masked_fill(&pad.unsqueeze(-1), f64::NAN);
                    *tail_logsumexp = tail_logsumexp.masked_fill(&pad, f64::INFINITY);
                }
                sparse
            }
            None => SoftTargets::Dense(t.shallow_clone()),
        };
        let run = |(s, t, y): &(Tensor, Tensor, Tensor)| {
            let s = s.copy().set_requires_grad(true);
            let parts = loss.compute_targets(&s, &targets(t), y, None).unwrap();
            parts.total.backward();
            (parts, s.grad())
        };
        let (a, ga) = run(&short);
        let (b, gb) = run(&long);
        assert_eq!((a.tokens, b.tokens), (10, 10), "{what}");
        let (va, vb) = (value(&a.total), value(&b.total));
        assert!(
            va.is_finite() && (va - vb).abs() <= 1e-6 * va.abs(),
            "{what}: {va} vs {vb}"
        );
        assert!((a.soft - b.soft).abs() <= 1e-6 * a.soft.abs(), "{what}");
        assert!((a.hard - b.hard).abs() <= 1e-6 * a.hard.abs(), "{what}");
        // The same gradients on the real tokens, exactly zero on padding.
        assert!(
            all_finite(&ga) && all_finite(&gb),
            "{what}: non-finite gradient"
        );
        let real =
            |g: &Tensor| Tensor::cat(&[g.get(0).narrow(0, 0, 4), g.get(1).narrow(0, 0, 6)], 0);
        let d = max_abs(&(real(&ga) - real(&gb)));
        assert!(d <= 1e-7, "{what}: gradients differ by {d}");
        assert!(max_abs(&real(&ga)) > 0.0, "{what}");
        assert_eq!(max_abs(&ga.get(0).narrow(0, 4, 2)), 0.0, "{what}");
        assert_eq!(max_abs(&gb.get(0).narrow(0, 4, 5)), 0.0, "{what}");
        assert_eq!(max_abs(&gb.get(1).narrow(0, 6, 3)), 0.0, "{what}");
        // The [B, C] loss over the real rows.
        let rows_targets = match k {
            Some(k) => top_k(&rows_t, k, 2.0),
            None => SoftTargets::Dense(rows_t.shallow_clone()),
        };
        let flat = loss
            .compute_targets(&rows_s, &rows_targets, &rows_y, None)
            .unwrap();
        let vf = value(&flat.total);
        assert!(
            (va - vf).abs() <= 1e-6 * vf.abs(),
            "{what}: {va} vs rows {vf}"
        );
    }
}

#[test]
fn a_batch_without_real_tokens_has_zero_loss() {
    let s = Tensor::randn([2, 3, 5], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let t = Tensor::full([2, 3, 5], f64::NAN, tch::kind::FLOAT_CPU);
    let y = Tensor::full([2, 3], IGNORE_INDEX, (Kind::Int64, tch::Device::Cpu));
    for kind in [LossKind::Kl, LossKind::Rkl, LossKind::Jsd, LossKind::Mse] {
        let parts = loss_of(kind, 2.0, 0.5).compute(&s, &t, &y, None).unwrap();
        assert_eq!(value(&parts.total), 0.0, "{kind}");
        assert_eq!((parts.soft, parts.hard, parts.tokens), (0.0, 0.0, 0));
        parts.total.backward();
        assert_eq!(max_abs(&s.grad()), 0.0, "{kind}");
        assert!(all_finite(&s.grad()));
    }
}

#[test]
fn labelled_per_sequence_equals_labelled_per_token() {
    tch::manual_seed(4);
    let s = Tensor::randn([2, 3, 5], tch::kind::FLOAT_CPU);
    let t = Tensor::randn([2, 3, 5], tch::kind::FLOAT_CPU);
    let y = Tensor::from_slice(&[1i64, 2, -100, 0, 4, 3]).view([2, 3]);
    let loss = loss_of(LossKind::Kl, 2.0, 0.6);
    let per_seq = Tensor::from_slice(&[true, false]);
    let per_token = Tensor::from_slice(&[true, true, true, false, false, false]).view([2, 3]);
    let a = loss.compute(&s, &t, &y, Some(&per_seq)).unwrap();
    let b = loss.compute(&s, &t, &y, Some(&per_token)).unwrap();
    assert_eq!(value(&a.total), value(&b.total));
    // Per token by hand: the first sequence's 2 real tokens at alpha, the second's 3 at 1.
    let mut want = 0.0;
    let mut ce = 0.0;
    for (bi, si, w) in [
        (0, 0, 0.6),
        (0, 1, 0.6),
        (1, 0, 1.0),
        (1, 1, 1.0),
        (1, 2, 1.0),
    ] {
        let row = |x: &Tensor| x.get(bi).narrow(0, si, 1);
        let label = y.get(bi).narrow(0, si, 1);
        let soft = 4.0 * value(&kl_batchmean(&row(&s), &row(&t), 2.0));
        let h = value(&cross_entropy(&row(&s), &label));
        if w < 1.0 {
            ce += h / 2.0;
        }
        want += (w * soft + (1.0 - w) * h) / 5.0;
    }
    close(value(&a.total), want, "per-sequence labelled");
    close(a.hard, ce, "hard over labelled tokens");
    assert_eq!(a.tokens, 5);
    let bad = Tensor::from_slice(&[true, false, true]);
    let e = loss
        .compute(&s, &t, &y, Some(&bad))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[2]") && e.contains("[2, 3]") && e.contains("[3]"),
        "{e}"
    );
}

#[test]
fn with_k_equal_to_the_vocabulary_rkl_and_jsd_are_their_dense_loss() {
    tch::manual_seed(8);
    let s2 = Tensor::randn([5, 6], tch::kind::FLOAT_CPU) * 2.0;
    let t2 = Tensor::randn([5, 6], tch::kind::FLOAT_CPU) * 3.0;
    let y2 = Tensor::from_slice(&[0i64, 1, 2, 3, 4]);
    let s3 = Tensor::randn([2, 4, 6], tch::kind::FLOAT_CPU) * 2.0;
    let t3 = Tensor::randn([2, 4, 6], tch::kind::FLOAT_CPU) * 3.0;
    let y3 = Tensor::from_slice(&[0i64, 5, 2, -100, 1, 1, -100, -100]).view([2, 4]);
    for kind in DIVERGENCES {
        for sparse_tail in TAILS {
            for beta in [0.1, 0.5, 0.9] {
                let loss = DistillLoss {
                    sparse_tail,
                    jsd_beta: beta,
                    ..loss_of(kind, 1.5, 0.8)
                };
                let what = format!("{kind} {sparse_tail} beta={beta}");
                let dense = loss.compute(&s2, &t2, &y2, None).unwrap();
                let sparse = loss
                    .compute_targets(&s2, &top_k(&t2, 6, 1.5), &y2, None)
                    .unwrap();
                assert!(
                    relative(value(&sparse.total), value(&dense.total)) <= 1e-6,
                    "{what}: {} vs {}",
                    value(&sparse.total),
                    value(&dense.total)
                );
                let dense = loss.compute(&s3, &t3, &y3, None).unwrap();
                let sparse = loss
                    .compute_targets(&s3, &top_k_seq(&t3, 6, 1.5), &y3, None)
                    .unwrap();
                assert!(
                    relative(value(&sparse.total), value(&dense.total)) <= 1e-6,
                    "{what} (sequences)"
                );
                assert!(relative(sparse.soft, dense.soft) <= 1e-6, "{what}");
                assert_eq!(sparse.tokens, 5);
            }
        }
    }
}

/// Float64 references, in plain Rust (no libtorch).
fn softmax64(x: &[f64], t: f64) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |a, b| a.max(*b)) / t;
    let e: Vec<f64> = x.iter().map(|v| (v / t - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.iter().map(|v| v / z).collect()
}

fn kl64(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .filter(|(a, _)| **a > 0.0)
        .map(|(a, b)| a * (a / b).ln())
        .sum()
}

fn divergence64(kind: LossKind, beta: f64, p: &[f64], q: &[f64]) -> f64 {
    match kind {
        LossKind::Kl => kl64(p, q),
        LossKind::Rkl => kl64(q, p),
        LossKind::Jsd => {
            let m: Vec<f64> = p
                .iter()
                .zip(q)
                .map(|(p, q)| beta * p + (1.0 - beta) * q)
                .collect();
            beta * kl64(p, &m) + (1.0 - beta) * kl64(q, &m)
        }
        LossKind::Mse => unreachable!(),
    }
}

/// The teacher's and the student's distributions on the support of `mode` (dense: `None`)
/// for one row, with the teacher's top `k` found by sorting.
fn supports64(
    mode: Option<SparseTail>,
    s: &[f64],
    t: &[f64],
    k: usize,
    temp: f64,
) -> (Vec<f64>, Vec<f64>) {
    let (p, q) = (softmax64(t, temp), softmax64(s, temp));
    let Some(mode) = mode else { return (p, q) };
    let mut order: Vec<usize> = (0..t.len()).collect();
    order.sort_by(|a, b| t[*b].total_cmp(&t[*a]));
    let (top, rest) = order.split_at(k);
    let r: f64 = rest.iter().map(|c| p[*c]).sum();
    let q_rest: f64 = rest.iter().map(|c| q[*c]).sum();
    let pk: Vec<f64> = top.iter().map(|c| p[*c]).collect();
    let qk: Vec<f64> = top.iter().map(|c| q[*c]).collect();
    match mode {
        SparseTail::Bucket => (
            pk.iter().copied().chain([r]).collect(),
            qk.iter().copied().chain([q_rest]).collect(),
        ),
        SparseTail::Uniform => {
            let mut full = vec![r / rest.len() as f64; t.len()];
            for (i, c) in top.iter().enumerate() {
                full[*c] = pk[i];
            }
            (full, q)
        }
        SparseTail::Renorm => {
            let (zp, zq): (f64, f64) = (pk.iter().sum(), qk.iter().sum());
            (
                pk.iter().map(|x| x / zp).collect(),
                qk.iter().map(|x| x / zq).collect(),
            )
        }
    }
}

fn rows64(t: &Tensor) -> Vec<Vec<f64>> {
    let t = t.to_kind(Kind::Double);
    (0..t.size()[0])
        .map(|i| Vec::<f64>::try_from(&t.get(i)).unwrap())
        .collect()
}

#[test]
fn rkl_and_jsd_match_a_float64_reference() {
    tch::manual_seed(13);
    let (b, c, k, temp) = (6, 9, 3usize, 2.0);
    let s = Tensor::randn([b, c], tch::kind::FLOAT_CPU) * 2.0;
    let t = Tensor::randn([b, c], tch::kind::FLOAT_CPU) * 3.0;
    let y = Tensor::zeros([b], (Kind::Int64, tch::Device::Cpu));
    let (s64, t64) = (rows64(&s), rows64(&t));
    let modes = [
        None,
        Some(SparseTail::Bucket),
        Some(SparseTail::Uniform),
        Some(SparseTail::Renorm),
    ];
    for kind in DIVERGENCES {
        for beta in [0.01, 0.3, 0.5, 0.99] {
            for mode in modes {
                let loss = DistillLoss {
                    sparse_tail: mode.unwrap_or_default(),
                    jsd_beta: beta,
                    ..loss_of(kind, temp, 1.0)
                };
                let targets = match mode {
                    Some(_) => top_k(&t, k as i64, temp),
                    None => SoftTargets::Dense(t.shallow_clone()),
                };
                let got = loss.compute_targets(&s, &targets, &y, None).unwrap();
                let want = (0..b as usize)
                    .map(|i| {
                        let (p, q) = supports64(mode, &s64[i], &t64[i], k, temp);
                        temp * temp * divergence64(kind, beta, &p, &q)
                    })
                    .sum::<f64>()
                    / b as f64;
                let what = format!("{kind} beta={beta} {mode:?}");
                assert!(
                    (got.soft - want).abs() <= 2e-5 * want + 1e-6,
                    "{what}: {} vs {want}",
                    got.soft
                );
                close(value(&got.total), got.soft, &what);
            }
        }
    }
}

#[test]
fn jsd_tends_to_scaled_forward_and_reverse_kl() {
    tch::manual_seed(17);
    let s = Tensor::randn([6, 9], tch::kind::FLOAT_CPU) * 2.0;
    let t = Tensor::randn([6, 9], tch::kind::FLOAT_CPU) * 2.0;
    let y = Tensor::zeros([6], (Kind::Int64, tch::Device::Cpu));
    let soft = |kind, beta| {
        DistillLoss {
            jsd_beta: beta,
            ..loss_of(kind, 1.5, 1.0)
        }
        .compute(&s, &t, &y, None)
        .unwrap()
        .soft
    };
    let (kl, rkl) = (soft(LossKind::Kl, 0.5), soft(LossKind::Rkl, 0.5));
    assert!(relative(kl, rkl) > 0.01, "the test needs asymmetric pairs");
    // β → 0: D/β → KL(p ‖ q); β → 1: D/(1 − β) → KL(q ‖ p). The error is O(β) (resp.
    // O(1 − β)) plus f32 rounding.
    let eps = 1e-3;
    assert!(relative(soft(LossKind::Jsd, eps) / eps, kl) < 1e-2);
    assert!(relative(soft(LossKind::Jsd, 1.0 - eps) / eps, rkl) < 1e-2);
    // ... and it is a limit: not the case at β = 0.2.
    assert!(relative(soft(LossKind::Jsd, 0.2) / 0.2, kl) > 2e-2);
    // The same limits of the float64 reference, much closer.
    let (p, q) = (
        softmax64(&[1.0, -0.5, 2.0, 0.0], 1.0),
        softmax64(&[0.3, 0.2, -1.0, 1.5], 1.0),
    );
    let jsd = |beta| divergence64(LossKind::Jsd, beta, &p, &q);
    assert!(relative(jsd(1e-6) / 1e-6, kl64(&p, &q)) < 1e-5);
    assert!(relative(jsd(1.0 - 1e-6) / 1e-6, kl64(&q, &p)) < 1e-5);
    // β = ½ is the symmetric JSD, at most ln 2.
    assert!((jsd(0.5) - divergence64(LossKind::Jsd, 0.5, &q, &p)).abs() < 1e-15);
    assert!(jsd(0.5) < 2f64.ln());
}

#[test]
fn bad_beta_and_sequence_shapes_are_errors() {
    let s = Tensor::zeros([2, 3], tch::kind::FLOAT_CPU);
    let y = Tensor::zeros([2], (Kind::Int64, tch::Device::Cpu));
    for beta in [0.0, 1.0, -0.1, 1.5, f64::NAN] {
        let loss = DistillLoss {
            jsd_beta: beta,
            ..loss_of(LossKind::Jsd, 1.0, 0.5)
        };
        let e = loss.compute(&s, &s, &y, None).unwrap_err().to_string();
        assert!(
            e.contains("0 < beta < 1") && e.contains("--loss rkl"),
            "{e}"
        );
        // Only jsd reads beta.
        let kl = DistillLoss {
            kind: LossKind::Kl,
            ..loss
        };
        assert!(kl.compute(&s, &s, &y, None).is_ok());
    }
    assert!(check_jsd_beta(0.5).is_ok());

    let loss = loss_of(LossKind::Kl, 1.0, 0.5);
    let s3 = Tensor::zeros([2, 4, 5], tch::kind::FLOAT_CPU);
    let y3 = Tensor::zeros([2, 4], (Kind::Int64, tch::Device::Cpu));
    let e = loss
        .compute(
            &s3,
            &Tensor::zeros([2, 4, 6], tch::kind::FLOAT_CPU),
            &y3,
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("[2, 4, 5]") && e.contains("[2, 4, 6]"), "{e}");
    let e = loss
        .compute(
            &s3,
            &s3,
            &Tensor::zeros([2, 3], (Kind::Int64, tch::Device::Cpu)),
            None,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("[2, 4]") && e.contains("[2, 3]"), "{e}");
    let sparse = |k: i64, tail: &[i64]| SoftTargets::Sparse {
        indices: Tensor::zeros([2, 4, k], (Kind::Int64, tch::Device::Cpu)),
        values: Tensor::zeros([2, 4, k], tch::kind::FLOAT_CPU),
        tail_logsumexp: Tensor::zeros(tail, tch::kind::FLOAT_CPU),
    };
    assert!(
        loss.compute_targets(&s3, &sparse(2, &[2, 4]), &y3, None)
            .is_ok()
    );
    for bad in [sparse(6, &[2, 4]), sparse(2, &[8]), sparse(0, &[2, 4])] {
        let e = loss
            .compute_targets(&s3, &bad, &y3, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[batch, seq, k]"), "{e}");
    }
    let mse = loss_of(LossKind::Mse, 1.0, 0.5);
    let e = mse
        .compute_targets(&s3, &sparse(2, &[2, 4]), &y3, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("MSE"), "{e}");
    // A label outside the vocabulary at a real position is libtorch's error.
    let y_bad = Tensor::from_slice(&[0i64, 9, 0, 0, 0, 0, 0, 0]).view([2, 4]);
    let e = loss
        .compute(&s3, &s3, &y_bad, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Target 9 is out of bounds"), "{e}");
}

/// `T² ·` the mean divergence `kind` of the rows of `s` and `t` at `T`, in float64.
fn soft64(kind: LossKind, s: &Tensor, t: &Tensor, temperature: f64) -> f64 {
    let (s, t) = (rows64(s), rows64(t));
    let sum: f64 = s
        .iter()
        .zip(&t)
        .map(|(s, t)| {
            let (p, q) = (softmax64(t, temperature), softmax64(s, temperature));
            divergence64(kind, DEFAULT_JSD_BETA, &p, &q)
        })
        .sum();
    temperature * temperature * sum / s.len() as f64
}

#[test]
fn at_both_temperature_bounds_the_loss_is_finite_and_non_zero() {
    let s = t2(&[&[0.0, 1.0, 2.0], &[0.5, -0.5, 0.0]]);
    let t = t2(&[&[2.0, 0.0, -1.0], &[0.0, 0.0, 1.0]]);
    let y = Tensor::from_slice(&[0i64, 2]);
    for temperature in [MIN_TEMPERATURE, MAX_TEMPERATURE] {
        for kind in [LossKind::Kl, LossKind::Rkl, LossKind::Jsd] {
            let loss = loss_of(kind, temperature, 1.0);
            let want = soft64(kind, &s, &t, temperature);
            let dense = loss.compute(&s, &t, &y, None).unwrap();
            let sparse = loss
                .compute_targets(&s, &top_k(&t, 2, temperature), &y, None)
                .unwrap();
            for (what, got) in [("dense", value(&dense.total)), ("top-2", sparse.soft)] {
                assert!(
                    got.is_finite() && got > 0.0,
                    "{kind} T={temperature} {what}: {got}"
                );
                if what == "dense" {
                    assert!(
                        relative(got, want) < 1e-2,
                        "{kind} T={temperature}: {got} vs float64 {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_largest_logits_the_wire_carries_stay_finite_at_the_smallest_temperature() {
    // f32's extremes: divided by T = 0.01 before the shift, they overflowed to ±inf. (The
    // teacher computes the top-k tail at T in f32, so the logits outside the top k stay small
    // enough for it to be finite or -inf.)
    let t = t2(&[&[3e38, -3e38, 0.0], &[-1e38, 2e38, 1.0]]);
    let s = t2(&[&[0.0, 1.0, 2.0], &[0.5, -0.5, 0.0]]).set_requires_grad(true);
    let y = Tensor::from_slice(&[0i64, 2]);
    for kind in [LossKind::Kl, LossKind::Jsd] {
        let loss = loss_of(kind, MIN_TEMPERATURE, 1.0);
        for targets in [
            SoftTargets::Dense(t.shallow_clone()),
            top_k(&t, 1, MIN_TEMPERATURE),
            top_k(&t, 2, MIN_TEMPERATURE),
        ] {
            let parts = loss.compute_targets(&s, &targets, &y, None).unwrap();
            let got = value(&parts.total);
            assert!(got.is_finite() && got > 0.0, "{kind}: {got}");
            let grad = tch::Tensor::run_backward(&[&parts.total], &[&s], false, false);
            assert!(all_finite(&grad[0]), "{kind}: gradients {:?}", grad[0]);
        }
    }
    // The forward KL by hand: the teacher is one-hot on classes 0 and 1, so
    // T² · KL = T² · mean(−log q_a) with log q = log_softmax(s / T).
    let want = MIN_TEMPERATURE * (2.0 + (0.5 + 0.5)) / 2.0;
    let got = value(
        &loss_of(LossKind::Kl, MIN_TEMPERATURE, 1.0)
            .compute(&s, &t, &y, None)
            .unwrap()
            .total,
    );
    assert!(relative(got, want) < 1e-4, "{got} vs {want}");
}

#[test]
fn temperatures_outside_the_bounds_are_refused() {
    let s = t2(&[&[0.0, 1.0, 2.0]]);
    let y = Tensor::from_slice(&[0i64]);
    for temperature in [1e-30, MIN_TEMPERATURE / 2.0, MAX_TEMPERATURE * 2.0, 1e30] {
        let e = loss_of(LossKind::Kl, temperature, 0.9)
            .compute(&s, &s, &y, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("temperature must lie in [0.01, 100]")
                && e.contains(&format!("got {temperature:e}")),
            "{e}"
        );
    }
}

// On-policy distillation: completions sampled by the student, prompt and padding ignored.

/// The labels of an on-policy batch `[2, 6]` (V = 7), the label at position `s` being the token
/// at `s + 1`: sequence 0 is a prompt of 3 tokens and a completion of 3 (positions 0 and 1
/// predict prompt tokens: ignored; positions 2 to 4 predict the completion; position 5 has no
/// next token: ignored); sequence 1 a prompt of 2, a completion of 3 (positions 1 to 3) and 2
/// padding positions. 6 real tokens.
fn on_policy_labels() -> Tensor {
    Tensor::from_slice(&[-100i64, -100, 3, 0, 6, -100, -100, 5, 1, 1, -100, -100]).view([2, 6])
}

/// The real (completion) positions of [`on_policy_labels`].
fn on_policy_real() -> Tensor {
    on_policy_labels().ne(IGNORE_INDEX)
}

/// `t` with `fill` at the ignored positions of [`on_policy_labels`] (`t` is `[2, 6]` or
/// `[2, 6, ...]`).
fn at_ignored(t: &Tensor, fill: f64) -> Tensor {
    let mut ignored = on_policy_real().logical_not();
    while ignored.dim() < t.dim() {
        ignored = ignored.unsqueeze(-1);
    }
    t.masked_fill(&ignored.expand_as(t), fill)
}

/// Asserts the gradient `g` (`[2, 6, 7]`) is exactly 0.0 at every ignored position of
/// [`on_policy_labels`] and non-zero at every real one.
fn assert_masked_gradient(g: &Tensor, what: &str) {
    let real = on_policy_real();
    for b in 0..2 {
        for s in 0..6 {
            let row = g.get(b).get(s);
            let m = max_abs(&row);
            if real.int64_value(&[b, s]) != 0 {
                assert!(m > 0.0 && m.is_finite(), "{what}: real ({b}, {s}): {m}");
            } else {
                // Bitwise: every element is +0.0 or -0.0, nothing approximately 0.
                let bits: Vec<f32> = Vec::try_from(&row).unwrap();
                assert!(
                    bits.iter().all(|x| *x == 0.0),
                    "{what}: ({b}, {s}) {bits:?}"
                );
            }
        }
    }
}

#[test]
fn on_policy_prompt_and_padding_get_exactly_zero_gradient() {
    tch::manual_seed(31);
    let student = Tensor::randn([2, 6, 7], tch::kind::FLOAT_CPU) * 2.0;
    let teacher = Tensor::randn([2, 6, 7], tch::kind::FLOAT_CPU) * 3.0;
    let labels = on_policy_labels();
    let mut cases: Vec<(DistillLoss, Option<i64>)> = Vec::new();
    for kind in DIVERGENCES {
        let betas: &[f64] = if kind == LossKind::Jsd {
            &[0.5, 0.2]
        } else {
            &[0.5]
        };
        for &jsd_beta in betas {
            for alpha in [1.0, 0.7] {
                let dense = DistillLoss {
                    jsd_beta,
                    ..loss_of(kind, 1.5, alpha)
                };
                cases.push((dense, None));
                for sparse_tail in TAILS {
                    cases.push((
                        DistillLoss {
                            sparse_tail,
                            ..dense
                        },
                        Some(3),
                    ));
                }
            }
        }
    }
    for (loss, k) in cases {
        let what = format!(
            "{} beta={} alpha={} {:?}",
            loss.kind,
            loss.jsd_beta,
            loss.alpha,
            k.map(|_| loss.sparse_tail)
        );
        // Ordinary values at the ignored positions, then NaN, +inf and -inf (and, for top-k
        // targets, out-of-range indices).
        let targets = |fill: Option<f64>| -> SoftTargets {
            let clean = match k {
                Some(k) => top_k_seq(&teacher, k, loss.temperature),
                None => SoftTargets::Dense(teacher.shallow_clone()),
            };
            let Some(fill) = fill else { return clean };
            match clean {
                SoftTargets::Dense(t) => SoftTargets::Dense(at_ignored(&t, fill)),
                SoftTargets::Sparse {
                    indices,
                    values,
                    tail_logsumexp,
                } => SoftTargets::Sparse {
                    indices: at_ignored(&indices, 1000.0),
                    values: at_ignored(&values, fill),
                    tail_logsumexp: at_ignored(&tail_logsumexp, fill),
                },
            }
        };
        let run = |fill: Option<f64>| {
            let s = student.copy().set_requires_grad(true);
            let parts = loss
                .compute_targets(&s, &targets(fill), &labels, None)
                .unwrap();
            parts.total.backward();
            (value(&parts.total), parts.tokens, s.grad())
        };
        let (clean, tokens, g) = run(None);
        assert!(clean.is_finite() && clean > 0.0, "{what}: {clean}");
        assert_eq!(tokens, 6, "{what}");
        assert_masked_gradient(&g, &what);
        for fill in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let (got, _, g_fill) = run(Some(fill));
            assert_eq!(got, clean, "{what}: {fill} at ignored positions");
            assert!(g_fill.equal(&g), "{what}: {fill} changed the gradients");
        }
    }
}

#[test]
fn k1_prompt_and_padding_get_exactly_zero_gradient() {
    tch::manual_seed(32);
    let student = Tensor::randn([2, 6, 7], tch::kind::FLOAT_CPU) * 2.0;
    let labels = on_policy_labels();
    let teacher = Tensor::randn([2, 6, 7], tch::kind::FLOAT_CPU) * 3.0;
    // The teacher's log-probabilities of the labels (clamped to 0 at ignored positions).
    let teacher_logp = (teacher / 1.5)
        .log_softmax(-1, Kind::Float)
        .gather(2, &labels.clamp_min(0).unsqueeze(-1), false)
        .squeeze_dim(-1);
    let run = |teacher_logp: &Tensor| {
        let s = student.copy().set_requires_grad(true);
        let parts = k1_sampled_loss(&s, &labels, teacher_logp, 1.5).unwrap();
        parts.total.backward();
        (value(&parts.total), parts.k1, parts.tokens, s.grad())
    };
    let (clean, k1, tokens, g) = run(&teacher_logp);
    assert!(clean.is_finite() && clean != 0.0, "{clean}");
    assert!(k1.is_finite() && k1 != 0.0, "{k1}");
    assert_eq!(tokens, 6);
    assert_masked_gradient(&g, "k1");
    for fill in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let (got, got_k1, _, g_fill) = run(&at_ignored(&teacher_logp, fill));
        assert_eq!((got, got_k1), (clean, k1), "{fill} at ignored positions");
        assert!(g_fill.equal(&g), "{fill} changed the gradients");
    }
    // Garbage student logits at ignored positions change nothing either.
    let s = at_ignored(&student, 1e30).set_requires_grad(true);
    let parts = k1_sampled_loss(&s, &labels, &teacher_logp, 1.5).unwrap();
    assert_eq!(value(&parts.total), clean);
    parts.total.backward();
    assert!(s.grad().equal(&g));
}

/// `log_softmax(x / t)` of one row, in float64.
fn log_softmax64(x: &[f64], t: f64) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |a, b| a.max(*b / t));
    let lse = m + x.iter().map(|v| (v / t - m).exp()).sum::<f64>().ln();
    x.iter().map(|v| v / t - lse).collect()
}

fn close6(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

#[test]
fn k1_matches_a_float64_hand_computation() {
    tch::manual_seed(33);
    let temperature = 1.5;
    let student = Tensor::randn([2, 6, 7], tch::kind::FLOAT_CPU) * 2.0;
    let labels = on_policy_labels();
    // Teacher log-probabilities of arbitrary (not necessarily normalised) values: k1 uses
    // them as given; NaN at the ignored positions.
    let teacher_logp = at_ignored(
        &(Tensor::rand([2, 6], tch::kind::FLOAT_CPU) * -4.0),
        f64::NAN,
    );
    let s = student.copy().set_requires_grad(true);
    let parts = k1_sampled_loss(&s, &labels, &teacher_logp, temperature).unwrap();
    parts.total.backward();
    let grad = s.grad();

    let real: Vec<(i64, i64)> = (0..2)
        .flat_map(|b| (0..6).map(move |p| (b, p)))
        .filter(|(b, p)| labels.int64_value(&[*b, *p]) != IGNORE_INDEX)
        .collect();
    let n = real.len() as f64;
    let (mut loss, mut k1_sum) = (0.0, 0.0);
    for &(b, p) in &real {
        let x = labels.int64_value(&[b, p]) as usize;
        let row: Vec<f64> = Vec::try_from(&student.get(b).get(p).to_kind(Kind::Double)).unwrap();
        let log_q = log_softmax64(&row, temperature);
        let k1 = log_q[x] - teacher_logp.double_value(&[b, p]);
        loss += k1 * log_q[x] / n;
        k1_sum += k1;
        // d loss / d s = (1/|R|) · k1 · (onehot(x) − q) / T.
        for (c, lq) in log_q.iter().enumerate() {
            let onehot = if c == x { 1.0 } else { 0.0 };
            let want = k1 * (onehot - lq.exp()) / temperature / n;
            let got = grad.double_value(&[b, p, c as i64]);
            close6(got, want, &format!("gradient ({b}, {p}, {c})"));
        }
    }
    close6(value(&parts.total), loss, "loss");
    close6(parts.k1, k1_sum / n, "mean k1");
    assert_eq!(parts.tokens, 6);
}

/// One position, every token `x` of the vocabulary with weight `q(x)`: the q-weighted mean of
/// `k1` is `KL(q ‖ p)`, and the q-weighted mean of the estimator's gradient is the gradient of
/// the exact reverse KL `∇_s KL(softmax(s/T) ‖ p)` (no `T²`; `LossKind::Rkl`'s soft term is
/// `T² · KL`, so its gradient is `T²` times this).
#[test]
fn k1_is_unbiased_for_the_reverse_kl_and_its_gradient() {
    let temperature = 1.5;
    let s_row = [0.3f32, -1.2, 2.0, 0.7, -0.4, 1.1, -2.5];
    let t_row = [1.0f32, 0.5, -0.8, 2.2, 0.0, -1.5, 0.9];
    let v = s_row.len();
    let s64: Vec<f64> = s_row.iter().map(|x| f64::from(*x)).collect();
    let t64: Vec<f64> = t_row.iter().map(|x| f64::from(*x)).collect();
    let (log_q, log_p) = (
        log_softmax64(&s64, temperature),
        log_softmax64(&t64, temperature),
    );
    let q: Vec<f64> = log_q.iter().map(|l| l.exp()).collect();
    let rkl: f64 = (0..v).map(|c| q[c] * (log_q[c] - log_p[c])).sum();
    // ∇_s KL(q ‖ p) = (1/T) · q ⊙ (log q − log p − KL).
    let rkl_grad: Vec<f64> = (0..v)
        .map(|c| q[c] * (log_q[c] - log_p[c] - rkl) / temperature)
        .collect();

    let student = Tensor::from_slice(&s_row).view([1, 1, v as i64]);
    let (mut mean_k1, mut mean_grad) = (0.0, vec![0.0; v]);
    for x in 0..v {
        let s = student.copy().set_requires_grad(true);
        let labels = Tensor::from_slice(&[x as i64]).view([1, 1]);
        let logp = Tensor::from_slice(&[log_p[x] as f32]).view([1, 1]);
        let parts = k1_sampled_loss(&s, &labels, &logp, temperature).unwrap();
        assert_eq!(parts.tokens, 1);
        parts.total.backward();
        let g: Vec<f64> = Vec::try_from(&s.grad().view([-1]).to_kind(Kind::Double)).unwrap();
        mean_k1 += q[x] * parts.k1;
        for c in 0..v {
            mean_grad[c] += q[x] * g[c];
        }
    }
    close6(mean_k1, rkl, "E_q[k1] vs KL(q ‖ p)");
    for c in 0..v {
        close6(
            mean_grad[c],
            rkl_grad[c],
            &format!("E_q[gradient] class {c}"),
        );
    }
    assert!(rkl > 0.1, "the test needs distributions that differ: {rkl}");

    // The same gradient from autograd through the exact reverse KL (`rkl`, T² · KL).
    let s = Tensor::from_slice(&s_row)
        .view([1, v as i64])
        .set_requires_grad(true);
    let t = Tensor::from_slice(&t_row).view([1, v as i64]);
    let y = Tensor::from_slice(&[0i64]);
    let exact = loss_of(LossKind::Rkl, temperature, 1.0)
        .compute(&s, &t, &y, None)
        .unwrap();
    close(exact.soft, temperature * temperature * rkl, "rkl soft term");
    exact.total.backward();
    let g: Vec<f64> = Vec::try_from(&s.grad().view([-1]).to_kind(Kind::Double)).unwrap();
    for c in 0..v {
        let want = mean_grad[c] * temperature * temperature;
        assert!(
            (g[c] - want).abs() <= 1e-5 * want.abs().max(1e-2),
            "class {c}: rkl autograd {} vs T² · E_q[k1 gradient] {want}",
            g[c]
        );
    }
}

/// Samples `x ~ q` through libtorch and one batch of them: the batch's mean k1 is within a few
/// standard errors of `KL(q ‖ p)`.
#[test]
fn k1_of_sampled_tokens_estimates_the_reverse_kl() {
    tch::manual_seed(34);
    let (n, v, temperature) = (20_000i64, 7i64, 1.0);
    let s_row = Tensor::from_slice(&[0.3f32, -1.2, 2.0, 0.7, -0.4, 1.1, -2.5]);
    let t_row = Tensor::from_slice(&[1.0f32, 0.5, -0.8, 2.2, 0.0, -1.5, 0.9]);
    let q = s_row.softmax(-1, Kind::Double);
    let log_p = t_row.log_softmax(-1, Kind::Double);
    let rkl = value(&(&q * (q.log() - &log_p)).sum(Kind::Double));
    let x = q.multinomial(n, true).view([1, n]);
    let student = s_row.view([1, 1, v]).expand([1, n, v], false);
    let teacher_logp = log_p.index_select(0, &x.view([-1])).view([1, n]);
    let parts = k1_sampled_loss(&student, &x, &teacher_logp, temperature).unwrap();
    assert_eq!(parts.tokens, n);
    let k1 = q.log().index_select(0, &x.view([-1])) - log_p.index_select(0, &x.view([-1]));
    let std_err = value(&k1.std(true)) / (n as f64).sqrt();
    assert!(
        (parts.k1 - rkl).abs() <= 5.0 * std_err,
        "mean k1 {} vs KL {rkl} (standard error {std_err})",
        parts.k1
    );
}

#[test]
fn k1_without_real_tokens_is_zero_and_bad_inputs_are_errors() {
    let s = Tensor::randn([2, 3, 5], tch::kind::FLOAT_CPU).set_requires_grad(true);
    let nan = Tensor::full([2, 3], f64::NAN, tch::kind::FLOAT_CPU);
    let ignored = Tensor::full([2, 3], IGNORE_INDEX, (Kind::Int64, tch::Device::Cpu));
    let parts = k1_sampled_loss(&s, &ignored, &nan, 1.0).unwrap();
    assert_eq!(value(&parts.total), 0.0);
    assert_eq!(
        value(&parts.total).to_bits(),
        0.0f64.to_bits(),
        "not -0.0 or NaN"
    );
    assert_eq!((parts.k1, parts.tokens), (0.0, 0));
    parts.total.backward();
    assert_eq!(max_abs(&s.grad()), 0.0);
    assert!(all_finite(&s.grad()));

    let y = Tensor::zeros([2, 3], (Kind::Int64, tch::Device::Cpu));
    let lp = Tensor::zeros([2, 3], tch::kind::FLOAT_CPU);
    let err = |s: &Tensor, y: &Tensor, lp: &Tensor, t: f64| {
        k1_sampled_loss(s, y, lp, t).unwrap_err().to_string()
    };
    let e = err(&s.view([6, 5]), &y, &lp, 1.0);
    assert!(
        e.contains("[batch, seq, vocab]") && e.contains("[6, 5]"),
        "{e}"
    );
    let e = err(&s, &y.view([3, 2]), &lp, 1.0);
    assert!(e.contains("[2, 3]") && e.contains("[3, 2]"), "{e}");
    let e = err(&s, &y, &Tensor::zeros([2, 3, 5], tch::kind::FLOAT_CPU), 1.0);
    assert!(e.contains("[2, 3]") && e.contains("[2, 3, 5]"), "{e}");
    for t in [0.0, f64::NAN, MAX_TEMPERATURE * 2.0] {
        let e = err(&s, &y, &lp, t);
        assert!(e.contains("temperature"), "{e}");
    }
    // A label outside the vocabulary at a real position is libtorch's error.
    let bad = Tensor::from_slice(&[0i64, 9, 0, -100, -100, -100]).view([2, 3]);
    assert!(k1_sampled_loss(&s, &bad, &lp, 1.0).is_err());
}
