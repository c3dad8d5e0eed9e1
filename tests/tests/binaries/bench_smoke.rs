//! `bench --quick` (`make bench` in a few seconds: one short round, rows 3 and 5 on 256 samples
//! of a small synthetic dataset, without the PyTorch reference and the in-process loop) runs end to end and writes `bench.json` with every
//! row, the ratios between them with their targets, and the CPU's description. Timings are not
//! checked (a smoke test of the benchmark, not a timing test); the deterministic rows are: the
//! wire sizes against the byte counts of the encoding, and exact dense f32 against itself; the
//! on-policy row's token counts and its time split are checked against each other.

use distill_tests::*;

#[test]
fn quick_bench_writes_every_row() {
    let dir = TempDir::new("bench-smoke");
    let out = dir.path().join("bench.json");
    let run = command("bench")
        .arg("--quick")
        .arg("--out")
        .arg(&out)
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "bench failed ({}):\n{stdout}\n{}",
        run.status,
        String::from_utf8_lossy(&run.stderr)
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("bench.json written"))
            .expect("bench.json is JSON");
    let ids: Vec<&str> = json["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| r["id"].as_str().expect("row id"))
        .collect();
    let mut want = vec![];
    for p in ["f32", "bf16"] {
        for b in [16, 256] {
            want.push(format!("raw_forward_{p}_b{b}"));
        }
    }
    want.extend([
        "teacher_kd_error_bf16".into(),
        "teacher_kd_error_f16".into(),
    ]);
    for mode in ["batched", "unbatched"] {
        for s in [1, 4, 16] {
            want.push(format!("server_{mode}_s{s}"));
        }
    }
    want.extend(
        [
            "distill_remote_s1_tdefault",
            "cache_online_epoch",
            "cache_cached_epochs",
            "cache_bytes_per_sample",
        ]
        .map(String::from),
    );
    for (c, ks) in [("10", &[0, 8][..]), ("32k", &[0, 8, 32][..])] {
        for k in ks {
            let wires: &[&str] = if *k == 0 {
                &["f32", "f16", "bf16"]
            } else {
                &["f32", "bf16"]
            };
            let form = if *k == 0 {
                "dense".into()
            } else {
                format!("top{k}")
            };
            for w in wires {
                want.push(format!("wire_c{c}_{form}_{w}"));
                want.push(format!("wire_c{c}_{form}_{w}_kd_error"));
            }
        }
    }
    for payload in ["images_u8", "logits_f32"] {
        want.push(format!("compression_{payload}_none"));
        for c in ["gzip", "deflate", "zstd"] {
            want.push(format!("compression_{payload}_{c}"));
            want.push(format!("compression_{payload}_{c}_rate"));
        }
    }
    for vocab in [8192, 152064] {
        want.push(format!("lm_wire_v{vocab}_dense_f32"));
        want.push(format!("lm_wire_v{vocab}_top32_bf16"));
    }
    want.push("lm_distill_remote".into());
    for m in ["mlp", "cnn"] {
        want.push(format!("script_student_{m}_trainer"));
        want.push(format!("script_student_{m}_pytorch"));
    }
    want.extend(
        [
            "opd_generate_kv",
            "opd_generate_full",
            "opd_remote",
            "opd_remote_generate",
            "opd_remote_score",
            "opd_remote_train",
        ]
        .map(String::from),
    );
    assert_eq!(ids, want, "rows in order");
    let row = |id: &str| -> &serde_json::Value {
        json["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .unwrap()
    };
    for row in json["rows"].as_array().unwrap() {
        let id = row["id"].as_str().unwrap();
        let median = row["median"].as_f64().expect("median");
        if id.ends_with("_kd_error") {
            assert!(median.is_finite() && median >= 0.0, "{row}");
        } else {
            assert!(median > 0.0, "{row}");
        }
        assert_eq!(
            row["rounds"].as_array().map(Vec::len),
            Some(1),
            "--quick: one round"
        );
        if !id.starts_with("wire_") && !id.starts_with("compression_") {
            assert!(stdout.contains(&format!("`{id}`")), "{stdout}");
        }
    }
    // Dense f32 is the reference of the KD-loss errors: exactly 0 against itself.
    assert_eq!(row("wire_c32k_dense_f32_kd_error")["median"], 0.0);
    // Dense rows: 4 or 2 bytes per logit plus a few bytes of framing (shape, dtype, timing),
    // spread over the batch of 128.
    for (id, per_logit, logits) in [
        ("wire_c32k_dense_f32", 4.0, 32_000.0),
        ("wire_c32k_dense_bf16", 2.0, 32_000.0),
        ("wire_c10_dense_f16", 2.0, 10.0),
    ] {
        let bytes = row(id)["median"].as_f64().unwrap();
        let payload = per_logit * logits;
        assert!(
            bytes >= payload && bytes < payload + 1.0,
            "{id}: {bytes} bytes/sample for a payload of {payload}"
        );
    }
    // Top-k 32 in bf16: 32 × (2-byte value + 8-byte I64 index) + 2 × 4-byte F32 log-sum-exps.
    let topk = row("wire_c32k_top32_bf16")["median"].as_f64().unwrap();
    assert!(
        (328.0..329.5).contains(&topk),
        "top-32 bf16: {topk} bytes/sample"
    );
    // Per token, top-32 bf16: the same 328 bytes as per sample above; dense f32 at 8,192: 4 bytes
    // per logit. Framing spread over 64 positions.
    let per_token = row("lm_wire_v8192_top32_bf16")["median"].as_f64().unwrap();
    assert!((328.0..330.0).contains(&per_token), "{per_token}");
    let dense = row("lm_wire_v8192_dense_f32")["median"].as_f64().unwrap();
    assert!((32768.0..32770.0).contains(&dense), "{dense}");
    let names: Vec<&str> = json["ratios"]
        .as_array()
        .expect("ratios")
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 13, "{json}");
    for r in json["ratios"].as_array().unwrap() {
        assert!(r["value"].as_f64().is_some_and(f64::is_finite), "{r}");
    }
    assert!(
        stdout.contains("| `LogitsResponse` (batch 128) |"),
        "{stdout}"
    );
    assert!(stdout.contains("skips the PyTorch reference"), "{stdout}");
    // Row 9: one on-policy epoch of 32 prompts (2 steps of 16), completions of 1 to 64 tokens
    // each; the generate / score / train split fits in the loop's wall time.
    let opd = &row("opd_remote")["params"];
    let completion = opd["completion_tokens"].as_f64().unwrap();
    assert!((32.0..=32.0 * 64.0).contains(&completion), "{opd}");
    assert_eq!(opd["generated_tokens"].as_f64(), Some(completion), "{opd}");
    let split = &opd["split_s"];
    let parts: f64 = ["generate", "score", "train"]
        .iter()
        .map(|k| split[k].as_f64().unwrap())
        .sum();
    assert!(
        parts > 0.0 && parts <= split["wall"].as_f64().unwrap() + 1e-6,
        "{opd}"
    );
    assert!(stdout.contains("load average"), "{stdout}");
    let cpu = &json["cpu"];
    assert!(cpu["cores"].as_u64().is_some_and(|c| c >= 1), "{cpu}");
    let this = distill_models::CpuInfo::read();
    assert_eq!(cpu["model_name"], this.model_name.as_str());
    assert_eq!(
        cpu["flags"].as_array().map(Vec::len),
        Some(this.flags.len())
    );
    assert_eq!(cpu["native_bf16"], this.native_bf16());
    assert!(stdout.contains("| ratio |"), "{stdout}");
    // Row 6: u8 images compress (the synthetic images' background is low noise), f32 logits
    // hardly do; every compression shows in its table.
    assert!(
        stdout.contains("| gRPC compression (batch 128) |"),
        "{stdout}"
    );
    let bytes = |id: &str| row(id)["median"].as_f64().unwrap();
    assert!(
        bytes("compression_images_u8_zstd") < bytes("compression_images_u8_none"),
        "{stdout}"
    );
    assert!(
        bytes("compression_logits_f32_gzip") > 0.5 * bytes("compression_logits_f32_none"),
        "{stdout}"
    );
}
