//! `student-trainer plot` end to end, through the binary: run directories written here (a
//! baseline with per-epoch test accuracy, a distilled run with a report.json) become a PNG of
//! the requested size with all four panels drawn; bad run directories give one clear error
//! line and no PNG.
//!
//! Everything lives under Cargo's per-test scratch directory in `target/`; nothing outside the
//! repository is read.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Colours of the first two runs and of the teacher's bar (`student_trainer::outputs::plot`).
const FIRST: [u8; 3] = [31, 119, 180];
const SECOND: [u8; 3] = [255, 127, 14];
const TEACHER: [u8; 3] = [110, 110, 110];
const WHITE: [u8; 3] = [255, 255, 255];

/// A fresh, empty scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("plot-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One metrics.jsonl line, as `train` and `distill` write it.
fn epoch_line(epoch: u64, loss: f64, test_accuracy: Option<f64>, samples_per_s: f64) -> String {
    serde_json::json!({
        "epoch": epoch,
        "step": 8 * epoch,
        "samples": 1000,
        "loss": loss,
        "soft_loss": 0.0,
        "hard_loss": loss,
        "train_accuracy": 0.9,
        "test_accuracy": test_accuracy,
        "samples_per_s": samples_per_s,
        "wall_s": 0.1,
    })
    .to_string()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A baseline of 30 epochs on few labels and a distilled run of 4 epochs with a report.
fn demo_like_runs(root: &Path) -> (PathBuf, PathBuf) {
    let baseline = root.join("baseline");
    let lines: Vec<String> = (1..=30)
        .map(|e| {
            let f = e as f64;
            epoch_line(e, 2.0 / f, Some(0.6 + 0.2 * f / 30.0), 40_000.0 + 100.0 * f)
        })
        .collect();
    write(&baseline.join("metrics.jsonl"), &(lines.join("\n") + "\n"));
    let distilled = root.join("distilled");
    let lines: Vec<String> = (1..=4)
        .map(|e| {
            let f = e as f64;
            let speed = if e == 1 { 1000.0 } else { 30_000.0 };
            epoch_line(e, 1.5 / f, Some(0.8 + 0.015 * f), speed)
        })
        .collect();
    write(&distilled.join("metrics.jsonl"), &(lines.join("\n") + "\n"));
    let report = serde_json::json!({
        "teacher": {"accuracy": 0.9135, "params": 1_199_882, "name": "cnn", "per_class": []},
        "student": {"accuracy": 0.8691, "params": 101_770, "name": "mlp", "per_class": []},
        "baseline": {"accuracy": 0.7992, "params": 101_770, "name": "mlp", "per_class": []},
        "teacher_fingerprint": "ab12",
        "samples_per_s": 5000.0,
    });
    write(&distilled.join("report.json"), &report.to_string());
    (baseline, distilled)
}

fn plot(args: &[&Path], extra: &[&str]) -> Output {
    Command::new(distill_tests::binary("student-trainer"))
        .arg("plot")
        .args(args)
        .args(extra)
        .output()
        .expect("student-trainer runs")
}

/// A decoded RGB image.
struct Image {
    width: usize,
    height: usize,
    rgb: Vec<u8>,
}

impl Image {
    fn decode(path: &Path) -> Image {
        let file = std::fs::File::open(path).unwrap();
        let mut reader = png::Decoder::new(std::io::BufReader::new(file))
            .read_info()
            .expect("a PNG header");
        let mut rgb = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut rgb).expect("PNG image data");
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        rgb.truncate(info.buffer_size());
        Image {
            width: info.width as usize,
            height: info.height as usize,
            rgb,
        }
    }

    /// The pixels of the rectangle [x0, x1) × [y0, y1).
    fn pixels(&self, x0: usize, x1: usize, y0: usize, y1: usize) -> Vec<[u8; 3]> {
        let mut out = Vec::new();
        for y in y0..y1 {
            for x in x0..x1 {
                let i = 3 * (y * self.width + x);
                out.push([self.rgb[i], self.rgb[i + 1], self.rgb[i + 2]]);
            }
        }
        out
    }
}

#[test]
fn baseline_and_distilled_make_a_png_with_four_drawn_panels() {
    let root = scratch("two-runs");
    let (baseline, distilled) = demo_like_runs(&root);
    let png_path = root.join("report.png");
    let out = plot(
        &[&baseline, &distilled],
        &[
            "-o",
            png_path.to_str().unwrap(),
            "--width",
            "1000",
            "--height",
            "760",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&png_path.display().to_string())
            && stdout.contains("baseline (30 epochs)")
            && stdout.contains("distilled (4 epochs)"),
        "{stdout}"
    );

    let img = Image::decode(&png_path);
    assert_eq!((img.width, img.height), (1000, 760));
    let all = img.pixels(0, img.width, 0, img.height);
    assert_eq!(all[0], WHITE, "the background is white");

    // The title strip: anti-aliased glyphs of the embedded font, in several shades.
    let title = img.pixels(0, img.width, 0, 30);
    let shades: HashSet<[u8; 3]> = title.iter().copied().filter(|p| *p != WHITE).collect();
    assert!(shades.len() >= 5, "title has {} shades", shades.len());

    // Quadrants below the title: loss, test accuracy, throughput, final accuracy.
    let (w, h) = (img.width, img.height);
    let (mx, my) = (w / 2, 30 + (h - 30) / 2);
    let quadrants = [
        ("loss", img.pixels(0, mx, 30, my)),
        ("test accuracy", img.pixels(mx, w, 30, my)),
        ("throughput", img.pixels(0, mx, my, h)),
        ("final accuracy", img.pixels(mx, w, my, h)),
    ];
    for (name, px) in &quadrants {
        let ink = px.iter().filter(|p| **p != WHITE).count();
        let colours: HashSet<[u8; 3]> = px.iter().copied().collect();
        assert!(
            ink * 50 > px.len(),
            "{name}: only {ink} of {} pixels drawn",
            px.len()
        );
        assert!(
            colours.len() > 20,
            "{name}: only {} distinct colours",
            colours.len()
        );
    }
    // Both runs in each line panel, in their own colours.
    for (name, px) in &quadrants[..3] {
        for (run, c) in [("baseline", FIRST), ("distilled", SECOND)] {
            let n = px.iter().filter(|p| **p == c).count();
            assert!(n > 20, "{name}: {run}'s colour on {n} pixels");
        }
    }
    // The bars: the teacher (from report.json) and both runs.
    let bars = &quadrants[3].1;
    for (bar, c) in [
        ("teacher", TEACHER),
        ("baseline", FIRST),
        ("distilled", SECOND),
    ] {
        let n = bars.iter().filter(|p| **p == c).count();
        assert!(
            n > 50,
            "final accuracy: the {bar} bar's outline on {n} pixels"
        );
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn default_size_and_a_run_without_per_epoch_accuracy() {
    let root = scratch("no-eval");
    let run = root.join("student");
    let lines: Vec<String> = (1..=3)
        .map(|e| epoch_line(e, 1.0 / e as f64, None, 5000.0))
        .collect();
    write(&run.join("metrics.jsonl"), &lines.join("\n"));
    let png_path = root.join("curves.png");
    let out = plot(&[&run], &["--output", png_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let img = Image::decode(&png_path);
    assert_eq!((img.width, img.height), (1280, 960));
    // The loss panel has the run's line; the accuracy panel explains why it has none (text only).
    let loss = img.pixels(0, 640, 30, 495);
    assert!(loss.iter().filter(|p| **p == FIRST).count() > 20);
    let accuracy = img.pixels(640, 1280, 30, 495);
    let ink = accuracy.iter().filter(|p| **p != WHITE).count();
    assert!(ink > 500, "the accuracy panel's note: {ink} pixels");
    assert_eq!(accuracy.iter().filter(|p| **p == FIRST).count(), 0);
    std::fs::remove_dir_all(&root).unwrap();
}

/// Runs `plot` expecting failure: exit status 1, exactly one `error:` line, no PNG.
fn one_error(args: &[&Path], png_path: &Path) -> String {
    let out = plot(args, &["-o", png_path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(!png_path.exists(), "a PNG was written despite the error");
    errors[0].to_string()
}

#[test]
fn bad_run_directories_are_named_with_what_was_expected() {
    let root = scratch("errors");
    let (baseline, _) = demo_like_runs(&root);
    let png_path = root.join("out.png");

    let missing = root.join("no-such-run");
    let e = one_error(&[&baseline, &missing], &png_path);
    assert!(
        e.contains(&missing.display().to_string()) && e.contains("no such run directory"),
        "{e}"
    );

    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = one_error(&[&empty], &png_path);
    assert!(
        e.contains(&empty.display().to_string())
            && e.contains("no metrics.jsonl")
            && e.contains("one JSON line per epoch"),
        "{e}"
    );

    let torn = root.join("torn");
    write(
        &torn.join("metrics.jsonl"),
        &format!("{}\n{{\"epoch\": 2, \"lo", epoch_line(1, 1.0, None, 1.0)),
    );
    let e = one_error(&[&torn], &png_path);
    assert!(
        e.contains("metrics.jsonl, line 2") && e.contains("expected one JSON object per epoch"),
        "{e}"
    );

    let bad_report = root.join("bad-report");
    write(
        &bad_report.join("metrics.jsonl"),
        &epoch_line(1, 1.0, None, 1.0),
    );
    write(&bad_report.join("report.json"), "[1, 2]");
    let e = one_error(&[&bad_report], &png_path);
    assert!(
        e.contains("report.json") && e.contains("expected the report that `distill` writes"),
        "{e}"
    );

    let e = one_error(&[&baseline], &root.join("missing-dir").join("out.png"));
    assert!(e.contains("missing-dir"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}
