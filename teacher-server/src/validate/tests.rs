//! Tests of [`super::validate`] and of [`super::InvalidRequest`]'s messages.

use super::*;

fn limits() -> Limits {
    Limits {
        input_shape: vec![1, 4, 4],
        input_dtype: v1::DType::F32,
        num_logits: 10,
        max_batch_size: 8,
        max_seq_len: None,
        max_message_bytes: 4 << 20,
        outputs: vec![
            OutputLimit {
                name: "features".into(),
                elements: 128,
                per_position: false,
            },
            OutputLimit {
                name: "conv".into(),
                elements: 64 * 12 * 12,
                per_position: false,
            },
        ],
        logits_output: "logits".into(),
    }
}

/// A sequence model: vocabulary 50, sequences up to 6 tokens, 4 KiB messages.
fn lm_limits() -> Limits {
    Limits {
        input_shape: vec![6],
        input_dtype: v1::DType::I64,
        num_logits: 50,
        max_batch_size: 8,
        max_seq_len: Some(6),
        max_message_bytes: 4096,
        outputs: vec![OutputLimit {
            name: "hidden".into(),
            elements: 16,
            per_position: true,
        }],
        logits_output: "0".into(),
    }
}

fn ids(shape: Vec<i64>, values: &[i64]) -> v1::Tensor {
    v1::Tensor {
        dtype: v1::DType::I64 as i32,
        shape,
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn lm_request(inputs: v1::Tensor, mask: Option<v1::Tensor>, top_k: u32) -> v1::LogitsRequest {
    v1::LogitsRequest {
        batch_id: 1,
        inputs: Some(inputs),
        output_dtype: 0,
        top_k,
        temperature: 0.0,
        attention_mask: mask,
        outputs: Vec::new(),
        gather_ids: None,
        gathered_only: false,
    }
}

#[test]
fn sequence_batches_of_any_length_with_masks_are_accepted() {
    let l = lm_limits();
    // Two sequences of 3 tokens, the second padded after 2; dense logits 2·3·50·4 = 1200 B
    // (+ 1 KiB for framing).
    let mask = v1::Tensor {
        dtype: v1::DType::U8 as i32,
        shape: vec![2, 3],
        data: vec![1, 1, 1, 1, 1, 0],
    };
    let v = validate(
        &lm_request(ids(vec![2, 3], &[1, 2, 3, 4, 5, 0]), Some(mask), 0),
        &l,
    )
    .unwrap();
    assert_eq!(v.inputs.size(), vec![2, 3]);
    let m = v.mask.unwrap();
    assert_eq!(m.kind(), Kind::Int64);
    assert_eq!(
        Vec::<i64>::try_from(m.flatten(0, -1)).unwrap(),
        [1, 1, 1, 1, 1, 0]
    );
    let v = validate(&lm_request(ids(vec![1, 6], &[49; 6]), None, 4), &l).unwrap();
    assert!(v.mask.is_none());
}

#[test]
fn sequence_errors_name_the_position_and_what_was_expected() {
    let l = lm_limits();
    let msg = |r: v1::LogitsRequest| validate(&r, &l).unwrap_err().to_string();
    let e = msg(lm_request(ids(vec![1, 7], &[0; 7]), None, 4));
    assert!(
        e.contains("between 1 and 6 tokens") && e.contains("got 7"),
        "{e}"
    );
    let e = msg(lm_request(ids(vec![2, 3], &[1, 2, 3, 4, 50, 60]), None, 4));
    assert!(
        e.contains("token ids in 0..50")
            && e.contains("got 2 outside")
            && e.contains("first: 50 at batch row 1, position 1"),
        "{e}"
    );
    let e = msg(lm_request(ids(vec![1, 2], &[-1, 0]), None, 4));
    assert!(e.contains("first: -1 at batch row 0, position 0"), "{e}");
    let e = msg(lm_request(
        ids(vec![1, 2], &[1, 2]),
        Some(ids(vec![2, 1], &[1, 1])),
        4,
    ));
    assert!(
        e.contains("expected the inputs' shape [1, 2], got [2, 1]"),
        "{e}"
    );
    let f32_mask = v1::Tensor {
        dtype: v1::DType::F32 as i32,
        shape: vec![1, 2],
        data: vec![0; 8],
    };
    let e = msg(lm_request(ids(vec![1, 2], &[1, 2]), Some(f32_mask), 4));
    assert!(e.contains("expected U8 or I64, got F32"), "{e}");
    let e = msg(lm_request(
        ids(vec![1, 2], &[1, 2]),
        Some(ids(vec![1, 2], &[1, 2])),
        4,
    ));
    assert!(e.contains("got 2 at batch row 0, position 1"), "{e}");
    // Dense: 4 · 6 · 50 · 4 = 4800 B > 4096; top-k 4 (4 · 6 · (4 · 12 + 8) B) fits.
    let e = msg(lm_request(ids(vec![4, 6], &[0; 24]), None, 0));
    assert!(
        e.contains("dense F32 logits [4, 6, 50]")
            && e.contains("above the message limit of 4096 bytes")
            && e.contains("request top_k"),
        "{e}"
    );
    validate(&lm_request(ids(vec![4, 6], &[0; 24]), None, 4), &l).unwrap();
    // A mask sent to a classifier.
    let mut r = ok(1);
    r.attention_mask = Some(ids(vec![1, 16], &[1; 16]));
    let e = validate(&r, &limits()).unwrap_err().to_string();
    assert!(e.contains("not a sequence model"), "{e}");
}

fn request(dtype: i32, shape: Vec<i64>, data: Vec<u8>) -> v1::LogitsRequest {
    v1::LogitsRequest {
        batch_id: 7,
        inputs: Some(v1::Tensor { dtype, shape, data }),
        output_dtype: 0,
        top_k: 0,
        temperature: 0.0,
        attention_mask: None,
        outputs: Vec::new(),
        gather_ids: None,
        gathered_only: false,
    }
}

fn floats(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn ok(n: i64) -> v1::LogitsRequest {
    request(1, vec![n, 1, 4, 4], floats(&vec![0.5; 16 * n as usize]))
}

fn message(req: &v1::LogitsRequest) -> String {
    validate(req, &limits()).unwrap_err().to_string()
}

#[test]
fn named_outputs_are_checked_by_name_and_counted_in_the_response_size() {
    let mut r = ok(2);
    r.outputs = vec!["conv".into(), "features".into()];
    assert_eq!(
        validate(&r, &limits()).unwrap().outputs,
        ["conv", "features"]
    );
    for bad in ["feature", "logits"] {
        r.outputs = vec!["features".into(), bad.into()];
        let m = message(&r);
        assert!(
            m.contains(&format!("unknown output \"{bad}\""))
                && m.contains("(features, conv)")
                && m.contains("output logits"),
            "{m}"
        );
    }
    // 8 samples of conv in f32: 8 · 9216 · 4 = 294,912 bytes, above a 256 KiB limit that
    // their logits alone fit.
    let small = Limits {
        max_message_bytes: 256 << 10,
        ..limits()
    };
    let mut r = ok(8);
    assert!(validate(&r, &small).is_ok());
    r.outputs = vec!["conv".into()];
    let m = validate(&r, &small).unwrap_err().to_string();
    assert!(
        m.contains("with outputs conv") && m.contains("fewer outputs"),
        "{m}"
    );
    r.output_dtype = v1::DType::Bf16 as i32;
    assert!(validate(&r, &small).is_ok(), "half the bytes in bf16");
    // A per-position output counts every position: 2 sequences · 6 tokens · 16 · 4 bytes.
    let l = lm_limits();
    let mut r = lm_request(ids(vec![2, 6], &[1; 12]), None, 4);
    r.outputs = vec!["hidden".into()];
    assert!(validate(&r, &l).is_ok());
    let tight = Limits {
        max_message_bytes: 2 * 6 * (4 * 12 + 8) + 1024 + 64 + 2 * 6 * 16 * 4 - 1,
        ..lm_limits()
    };
    assert!(validate(&r, &tight).is_err());
    let fits = Limits {
        max_message_bytes: tight.max_message_bytes + 1,
        ..lm_limits()
    };
    assert!(validate(&r, &fits).is_ok());
}

#[test]
fn accepts_a_valid_batch() {
    let v = validate(&ok(3), &limits()).unwrap();
    assert_eq!(v.inputs.size(), vec![3, 1, 4, 4]);
    assert_eq!(
        v.output,
        OutputSpec {
            kind: Kind::Float,
            top_k: 0,
            temperature: 1.0,
        }
    );
    let mut r = ok(1);
    r.output_dtype = v1::DType::Bf16 as i32;
    r.top_k = 10;
    r.temperature = 2.5;
    let v = validate(&r, &limits()).unwrap();
    assert_eq!(
        v.output,
        OutputSpec {
            kind: Kind::BFloat16,
            top_k: 10,
            temperature: 2.5,
        }
    );
}

#[test]
fn every_message_names_expected_and_got() {
    let mut missing = ok(1);
    missing.inputs = None;
    let cases: Vec<(v1::LogitsRequest, &[&str])> = vec![
        (missing, &["missing", "[1, 4, 4]"]),
        (
            request(0, vec![1, 1, 4, 4], vec![0; 64]),
            &["expected F32", "got DTYPE_UNSPECIFIED"],
        ),
        (
            request(5, vec![1, 1, 4, 4], vec![0; 16]),
            &["expected F32", "got U8"],
        ),
        (
            request(99, vec![1, 1, 4, 4], vec![0; 64]),
            &["expected F32", "got 99"],
        ),
        (
            request(1, vec![1, 4, 4], floats(&[0.0; 16])),
            &["expected 4", "got 3"],
        ),
        (
            request(1, vec![1, 1, 4, 5], floats(&[0.0; 20])),
            &["expected [1, 4, 4]", "got [1, 4, 5]"],
        ),
        (
            request(1, vec![1, 1, -4, 4], vec![]),
            &["negative dimension -4"],
        ),
        (
            request(1, vec![1 << 40, 1, 1 << 20, 4], vec![]),
            &["[1099511627776, 1, 1048576, 4]", "more than"],
        ),
        (
            request(1, vec![2, 1, 4, 4], floats(&[0.0; 31])),
            &["expected 128 bytes", "124"],
        ),
        (
            request(1, vec![0, 1, 4, 4], vec![]),
            &["expected between 1 and 8", "got 0"],
        ),
        (ok(9), &["expected at most 8", "got 9"]),
    ];
    for (req, needles) in cases {
        let msg = message(&req);
        for n in needles {
            assert!(msg.contains(n), "{msg:?} should contain {n:?}");
        }
    }
    let mut nan = floats(&[0.0; 32]);
    nan[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
    nan[40..44].copy_from_slice(&f32::INFINITY.to_le_bytes());
    let msg = message(&request(1, vec![2, 1, 4, 4], nan));
    assert!(
        msg.contains("expected finite") && msg.contains("got 2") && msg.contains("index 5"),
        "{msg}"
    );
    let mut r = ok(1);
    r.output_dtype = v1::DType::I64 as i32;
    assert!(message(&r).contains("got I64"));
    r.output_dtype = 1234;
    assert!(message(&r).contains("got 1234"));
    let mut r = ok(1);
    r.top_k = 11;
    let msg = message(&r);
    assert!(
        msg.contains("between 1 and 10") && msg.contains("got 11"),
        "{msg}"
    );
    for (bad, got) in [
        (-1.0, "got -1"),
        (f32::NAN, "got NaN"),
        (f32::INFINITY, "got inf"),
        (f32::NEG_INFINITY, "got -inf"),
    ] {
        let mut r = ok(1);
        r.temperature = bad;
        let msg = message(&r);
        assert!(
            msg.contains("temperature: expected > 0 (or 0 for 1)") && msg.contains(got),
            "{msg}"
        );
    }
}

#[test]
fn dtype_labels() {
    assert_eq!(InvalidRequest::dtype_label(0), "DTYPE_UNSPECIFIED");
    assert_eq!(InvalidRequest::dtype_label(1), "F32");
    assert_eq!(InvalidRequest::dtype_label(42), "42 (not a DType)");
}

#[test]
fn gathered_log_probs_count_in_the_response_size_and_replace_the_logits_when_alone() {
    // 2 sequences of 3 tokens: 6 rows. m = 100 gathered f32 values per row are 2,400 bytes.
    let inputs = ids(vec![2, 3], &[1, 2, 3, 4, 5, 6]);
    let many = ids(vec![2, 3, 100], &vec![7; 600]);
    let mut req = lm_request(inputs, None, 4);
    req.gather_ids = Some(many);
    // Top-4 (6 × (4 × 12 + 8) = 336 bytes), 2,400 gathered and 1,024 of framing: within 4 KiB.
    let valid = validate(&req, &lm_limits()).unwrap();
    assert_eq!(valid.gather.unwrap().size(), vec![2, 3, 100]);
    // Dense logits (6 × 50 × 4 = 1,200 bytes) instead: 4,624 bytes, over the limit, and said so.
    req.top_k = 0;
    let e = validate(&req, &lm_limits()).unwrap_err();
    assert!(
        matches!(&e, InvalidRequest::ResponseTooLarge { what, bytes: 4624, .. }
            if what.contains("dense") && what.contains("100 gathered log-probabilities per row")),
        "{e}"
    );
    // The gathered values alone (no logits) fit: 3,424 bytes.
    req.gathered_only = true;
    assert!(validate(&req, &lm_limits()).unwrap().gathered_only);
    // Wrong dtype and a missing m are refused, naming what was expected.
    req.gather_ids = Some(v1::Tensor {
        dtype: v1::DType::F32 as i32,
        shape: vec![2, 3, 1],
        data: vec![0; 24],
    });
    assert_eq!(
        validate(&req, &lm_limits()).unwrap_err().to_string(),
        "gather_ids dtype: expected I64 token ids, got F32"
    );
    req.gather_ids = Some(ids(vec![2, 3], &[0; 6]));
    assert!(
        validate(&req, &lm_limits())
            .unwrap_err()
            .to_string()
            .starts_with("gather_ids shape: expected [batch, seq, m]")
    );
}
