//! `bench --quick` (the skeleton of `make bench`) runs end to end and writes `bench.json` with
//! every row, the ratios between them, and the CPU's description. Numbers are not checked: this
//! is a smoke test of the benchmark, not a timing test.

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
    for mode in ["batched", "unbatched"] {
        for s in [1, 4, 16] {
            want.push(format!("server_{mode}_s{s}"));
        }
    }
    assert_eq!(ids, want, "rows in order");
    for row in json["rows"].as_array().unwrap() {
        let median = row["median"].as_f64().expect("median");
        assert!(median > 0.0, "{row}");
        assert_eq!(
            row["rounds"].as_array().map(Vec::len),
            Some(1),
            "--quick: one round"
        );
        assert!(
            stdout.contains(&format!("`{}`", row["id"].as_str().unwrap())),
            "{stdout}"
        );
    }
    assert_eq!(json["ratios"].as_array().map(Vec::len), Some(3), "{json}");
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
}
