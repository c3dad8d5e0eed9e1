//! `plot`: the training curves of one or more run directories, drawn into one PNG.
//!
//! Input, per run directory (the `--out` of `train` or `distill`):
//! - `metrics.jsonl` (required): one JSON line per completed epoch ([`super::metrics`]); a
//!   resumed run that wrote an epoch twice keeps the last line;
//! - `report.json` (optional, written by `distill` at the end): the final test accuracy of the
//!   distilled student and of its teacher ([`super::report`]).
//!
//! Output: a PNG of four panels, one colour per run in all of them, each run named by its
//! directory (its last component, or the whole path when two runs share it):
//! - **training loss**: mean training loss of each epoch (distill: the weighted soft + hard
//!   objective; train: cross-entropy), against the epoch;
//! - **test accuracy**: test-split accuracy after each epoch, in %, for runs trained without
//!   `--no-epoch-eval`;
//! - **throughput**: training samples per second of each epoch (wall time, evaluation excluded);
//! - **final test accuracy**: one bar per run, in % (`report.json`'s student accuracy, else the
//!   last epoch's), plus the teacher's from `report.json`: baseline against distilled when both
//!   runs are given;
//! - with an on-policy distillation run among them (`distill --on-policy`), two more: the
//!   **held-out reverse KL** (teacher-scored, of the student's own samples, nats per token) and
//!   the **held-out completion length** (tokens), after each epoch.
//!
//! Text is drawn with DejaVu Sans, embedded in the binary (`assets/fonts`, with its licence):
//! no system font or fontconfig is needed. Plotters draws into an RGB buffer, which the `png`
//! crate encodes; the file is written to a temporary name and renamed into place.

use super::metrics::{EpochMetrics, METRICS_FILE};
use super::report::REPORT_FILE;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Default image width, in pixels.
pub(crate) const DEFAULT_WIDTH: u32 = 1280;
/// Default image height, in pixels.
pub(crate) const DEFAULT_HEIGHT: u32 = 960;
/// Smallest width or height accepted, in pixels (below it the panels' text overlaps).
pub(crate) const MIN_SIDE: u32 = 320;
/// Largest width or height accepted, in pixels.
pub(crate) const MAX_SIDE: u32 = 8192;

/// The font of every text in the plot (DejaVu Sans; licence in `assets/fonts/LICENSE`).
const FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
/// The family the font is registered under: plotters' default for charts.
const FAMILY: &str = "sans-serif";

/// Run colours (a colour-blind-aware categorical palette), used in turn.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];
/// Colour of the teacher's bar.
const TEACHER: RGBColor = RGBColor(110, 110, 110);

/// Why a plot could not be made, each with the one message the user sees.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    /// A run directory that does not exist.
    #[error(
        "{}: no such run directory (expected the --out directory of `train` or `distill`, \
         holding {METRICS_FILE})",
        dir.display()
    )]
    NoRunDir {
        /// The directory given.
        dir: PathBuf,
    },
    /// A run path that is not a directory.
    #[error(
        "{}: not a directory (expected the --out directory of `train` or `distill`, holding \
         {METRICS_FILE})",
        dir.display()
    )]
    NotADir {
        /// The path given.
        dir: PathBuf,
    },
    /// A run directory without `metrics.jsonl`.
    #[error(
        "{}: no {METRICS_FILE} in this run directory (expected the per-epoch metrics that \
         `train` and `distill` write into their --out directory, one JSON line per epoch)",
        dir.display()
    )]
    NoMetrics {
        /// The run directory.
        dir: PathBuf,
    },
    /// A `metrics.jsonl` with no epoch in it.
    #[error(
        "{}: no epoch recorded (expected one JSON line per completed epoch)",
        path.display()
    )]
    NoEpochs {
        /// The file.
        path: PathBuf,
    },
    /// A line of `metrics.jsonl` that is not an epoch's metrics.
    #[error(
        "{}, line {line}: {source} (expected one JSON object per epoch with epoch, step, \
         samples, loss, soft_loss, hard_loss, train_accuracy, test_accuracy, samples_per_s and \
         wall_s, as `train` and `distill` write)",
        path.display()
    )]
    BadMetrics {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A `report.json` that is not a distillation report.
    #[error(
        "{}: {source} (expected the report that `distill` writes, with teacher and student \
         objects)",
        path.display()
    )]
    BadReport {
        /// The file.
        path: PathBuf,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// A file that could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The embedded font was refused by the text renderer.
    #[error("the embedded font (DejaVu Sans) could not be loaded")]
    Font,
    /// Drawing or encoding the image failed.
    #[error("drawing the plot: {0}")]
    Draw(String),
}

/// The part of `report.json` that the plot shows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ReportAccuracy {
    teacher: ModelAccuracy,
    student: ModelAccuracy,
    #[serde(default)]
    teacher_fingerprint: String,
}

/// A model's entry in `report.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
struct ModelAccuracy {
    /// Test accuracy in [0, 1]; null when not evaluated.
    accuracy: Option<f64>,
    /// Architecture name.
    name: String,
}

/// One run directory, read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Run {
    /// The directory given on the command line.
    dir: PathBuf,
    /// Its name in the legends.
    label: String,
    /// Its epochs, sorted by epoch number, one per number.
    epochs: Vec<EpochMetrics>,
    /// Its `report.json`, when it has one.
    report: Option<ReportAccuracy>,
}

impl Run {
    /// Reads `dir/metrics.jsonl` and, when present, `dir/report.json`.
    ///
    /// # Errors
    /// A missing directory or `metrics.jsonl`, a malformed line, a file without any epoch, a
    /// malformed `report.json`, or a read error: each names the file and what was expected.
    pub(crate) fn load(dir: &Path) -> Result<Run, PlotError> {
        match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PlotError::NoRunDir { dir: dir.into() });
            }
            Err(source) => {
                return Err(PlotError::Io {
                    path: dir.into(),
                    source,
                });
            }
            Ok(m) if !m.is_dir() => return Err(PlotError::NotADir { dir: dir.into() }),
            Ok(_) => {}
        }
        let path = dir.join(METRICS_FILE);
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(PlotError::NoMetrics { dir: dir.into() });
            }
            other => other.map_err(|source| PlotError::Io {
                path: path.clone(),
                source,
            })?,
        };
        let mut by_epoch = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let m: EpochMetrics =
                serde_json::from_str(line).map_err(|source| PlotError::BadMetrics {
                    path: path.clone(),
                    line: i + 1,
                    source,
                })?;
            by_epoch.insert(m.epoch, m);
        }
        if by_epoch.is_empty() {
            return Err(PlotError::NoEpochs { path });
        }
        let report_path = dir.join(REPORT_FILE);
        let report = match std::fs::read_to_string(&report_path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(PlotError::Io {
                    path: report_path,
                    source,
                });
            }
            Ok(text) => {
                Some(
                    serde_json::from_str(&text).map_err(|source| PlotError::BadReport {
                        path: report_path.clone(),
                        source,
                    })?,
                )
            }
        };
        Ok(Run {
            dir: dir.into(),
            label: short_name(dir),
            epochs: by_epoch.into_values().collect(),
            report,
        })
    }

    /// Its name in the legends.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    /// Number of epochs recorded.
    pub(crate) fn epochs(&self) -> usize {
        self.epochs.len()
    }

    /// The final test accuracy, in [0, 1]: the report's student accuracy, else the last epoch's
    /// test accuracy; `None` when the run has neither.
    fn final_accuracy(&self) -> Option<f64> {
        self.report
            .as_ref()
            .and_then(|r| r.student.accuracy)
            .or_else(|| self.epochs.iter().rev().find_map(|e| e.test_accuracy))
            .filter(|a| a.is_finite())
    }
}

/// The last component of `dir` (the whole path when it has none, e.g. `.`).
fn short_name(dir: &Path) -> String {
    dir.file_name().map_or_else(
        || dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Reads every run directory, in order, naming each run by its directory's last component, or
/// by the whole path when two runs would share a name.
///
/// # Errors
/// The first run that cannot be read (see [`Run::load`]).
pub(crate) fn load_runs(dirs: &[PathBuf]) -> Result<Vec<Run>, PlotError> {
    let mut runs = dirs
        .iter()
        .map(|d| Run::load(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mut count = HashMap::new();
    for r in &runs {
        *count.entry(r.label.clone()).or_insert(0usize) += 1;
    }
    for r in &mut runs {
        if count[&r.label] > 1 {
            r.label = r.dir.display().to_string();
        }
    }
    Ok(runs)
}

/// Registers the embedded font with plotters, once per process.
fn register_font() -> Result<(), PlotError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if ok { Ok(()) } else { Err(PlotError::Font) }
}

/// Draws the four panels of `runs` into a `width` × `height` RGB image and returns it encoded
/// as PNG.
///
/// # Errors
/// [`PlotError::Font`] or [`PlotError::Draw`].
pub(crate) fn render_png(runs: &[Run], width: u32, height: u32) -> Result<Vec<u8>, PlotError> {
    register_font()?;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        draw(&root, runs).map_err(|e| PlotError::Draw(e.to_string()))?;
        root.present().map_err(|e| PlotError::Draw(e.to_string()))?;
    }
    let mut png_bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut png_bytes, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let encode = |e: png::EncodingError| PlotError::Draw(format!("PNG encoding: {e}"));
    let mut writer = encoder.write_header().map_err(encode)?;
    writer.write_image_data(&rgb).map_err(encode)?;
    writer.finish().map_err(encode)?;
    Ok(png_bytes)
}

/// Reads the run directories, draws them and writes the PNG to `output` (through a temporary
/// file in the same directory, renamed into place).
///
/// # Errors
/// Any [`PlotError`]: a run directory that cannot be read, or `output` that cannot be written.
pub(crate) fn plot(
    dirs: &[PathBuf],
    output: &Path,
    width: u32,
    height: u32,
) -> Result<Vec<Run>, PlotError> {
    let runs = load_runs(dirs)?;
    let png = render_png(&runs, width, height)?;
    let io = |source| PlotError::Io {
        path: output.into(),
        source,
    };
    let name = output
        .file_name()
        .map_or_else(|| "plot.png".into(), |n| n.to_string_lossy().into_owned());
    let tmp = output.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(&png)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, output)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(runs)
}

type DrawResult<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// Text style of `size` pixels in the embedded font.
fn font(size: u32) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size))
}

fn colour(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One line of a panel: a run's points.
struct Series<'a> {
    label: &'a str,
    colour: RGBColor,
    points: Vec<(u64, f64)>,
}

/// Everything a line panel needs.
struct LinePanel<'a> {
    title: &'a str,
    y_desc: &'a str,
    series: Vec<Series<'a>>,
    /// Lowest and highest y shown.
    y_range: (f64, f64),
    legend: SeriesLabelPosition,
    /// Shown under the title when there is nothing to draw, or below the legend otherwise.
    note: Option<String>,
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, runs: &[Run]) -> DrawResult<DB> {
    root.fill(&WHITE)?;
    let (w, _) = root.dim_in_pixel();
    let title = format!(
        "Training curves: {}",
        runs.iter()
            .map(|r| r.label.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let body = root.titled(&title, font((w / 48).clamp(14, 32)))?;
    let reverse_kl = reverse_kl_panel(runs);
    let on_policy = reverse_kl.series.iter().any(|s| !s.points.is_empty());
    let panels = body.split_evenly(if on_policy { (3, 2) } else { (2, 2) });
    let max_epoch = runs
        .iter()
        .filter_map(|r| r.epochs.last().map(|e| e.epoch))
        .max()
        .unwrap_or(1);
    line_panel(&panels[0], &loss_panel(runs), max_epoch)?;
    line_panel(&panels[1], &accuracy_panel(runs), max_epoch)?;
    line_panel(&panels[2], &throughput_panel(runs), max_epoch)?;
    bar_panel(&panels[3], runs)?;
    if on_policy {
        line_panel(&panels[4], &reverse_kl, max_epoch)?;
        line_panel(&panels[5], &completion_panel(runs), max_epoch)?;
    }
    Ok(())
}

/// The points of `value` of each run, finite values only.
fn series<'a>(runs: &'a [Run], value: impl Fn(&EpochMetrics) -> Option<f64>) -> Vec<Series<'a>> {
    runs.iter()
        .enumerate()
        .map(|(i, r)| Series {
            label: &r.label,
            colour: colour(i),
            points: r
                .epochs
                .iter()
                .filter_map(|e| value(e).filter(|v| v.is_finite()).map(|v| (e.epoch, v)))
                .collect(),
        })
        .collect()
}

fn max_of(series: &[Series<'_>]) -> Option<f64> {
    series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .reduce(f64::max)
}

fn min_of(series: &[Series<'_>]) -> Option<f64> {
    series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .reduce(f64::min)
}

/// From 0 (or the lowest value, if negative) to 5 % above the highest.
fn from_zero(series: &[Series<'_>]) -> (f64, f64) {
    let lo = min_of(series).unwrap_or(0.0).min(0.0);
    let hi = max_of(series).unwrap_or(1.0);
    let hi = if hi > lo {
        hi + 0.05 * (hi - lo)
    } else {
        lo + 1.0
    };
    (lo, hi)
}

fn loss_panel(runs: &[Run]) -> LinePanel<'_> {
    let series = series(runs, |e| Some(e.loss));
    LinePanel {
        title: "Training loss per epoch",
        y_desc: "mean training loss",
        y_range: from_zero(&series),
        series,
        legend: SeriesLabelPosition::UpperRight,
        note: None,
    }
}

fn accuracy_panel(runs: &[Run]) -> LinePanel<'_> {
    let series = series(runs, |e| e.test_accuracy.map(|a| 100.0 * a));
    let without: Vec<&str> = runs
        .iter()
        .zip(&series)
        .filter(|(_, s)| s.points.is_empty())
        .map(|(r, _)| r.label.as_str())
        .collect();
    let note = (!without.is_empty()).then(|| {
        format!(
            "no per-epoch test accuracy (--no-epoch-eval): {}",
            without.join(", ")
        )
    });
    // Whole multiples of 5 % around the values, within [0, 100].
    let lo = min_of(&series).map_or(0.0, |v| ((v - 1.0) / 5.0).floor() * 5.0);
    let hi = max_of(&series).map_or(100.0, |v| ((v + 1.0) / 5.0).ceil() * 5.0);
    let (lo, hi) = (lo.clamp(0.0, 95.0), hi.clamp(5.0, 100.0));
    LinePanel {
        title: "Test accuracy per epoch",
        y_desc: "test accuracy (%)",
        series,
        y_range: (lo.min(hi - 5.0), hi),
        legend: SeriesLabelPosition::LowerRight,
        note,
    }
}

fn throughput_panel(runs: &[Run]) -> LinePanel<'_> {
    let series = series(runs, |e| Some(e.samples_per_s));
    LinePanel {
        title: "Training throughput per epoch",
        y_desc: "samples/s",
        y_range: from_zero(&series),
        series,
        legend: SeriesLabelPosition::LowerRight,
        note: None,
    }
}

/// On-policy distillation's held-out reverse KL after each epoch.
fn reverse_kl_panel(runs: &[Run]) -> LinePanel<'_> {
    let series = series(runs, |e| e.on_policy.as_ref()?.heldout_reverse_kl);
    LinePanel {
        title: "Held-out reverse KL (teacher-scored samples)",
        y_desc: "KL(student ‖ teacher), nats/token",
        y_range: from_zero(&series),
        series,
        legend: SeriesLabelPosition::UpperRight,
        note: None,
    }
}

/// On-policy distillation's held-out completion length after each epoch.
fn completion_panel(runs: &[Run]) -> LinePanel<'_> {
    let series = series(runs, |e| e.on_policy.as_ref()?.heldout_completion_len);
    LinePanel {
        title: "Held-out completion length",
        y_desc: "tokens",
        y_range: from_zero(&series),
        series,
        legend: SeriesLabelPosition::LowerRight,
        note: None,
    }
}

/// Labels of a y axis: at most 4 significant digits, thousands as `k`.
fn short_number(v: f64) -> String {
    let a = v.abs();
    if a >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if a >= 1000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if a >= 10.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn line_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    p: &LinePanel<'_>,
    max_epoch: u64,
) -> DrawResult<DB> {
    let (w, h) = area.dim_in_pixel();
    let text = (h / 30).clamp(10, 18);
    let caption = font((h / 24).clamp(12, 22));
    if p.series.iter().all(|s| s.points.is_empty()) {
        let inner = area.titled(p.title, caption)?;
        let msg = p.note.as_deref().unwrap_or("no data");
        let (_, ih) = inner.dim_in_pixel();
        return inner.draw_text(msg, &font(text), (w as i32 / 20, ih as i32 / 2));
    }
    let mut chart = ChartBuilder::on(area)
        .caption(p.title, caption)
        .margin(text)
        .x_label_area_size(text * 3)
        .y_label_area_size(text * 4)
        .build_cartesian_2d(1u64..max_epoch.max(2), p.y_range.0..p.y_range.1)?;
    let y_fmt = |v: &f64| short_number(*v);
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(p.y_desc)
        .x_labels(max_epoch.clamp(2, 10) as usize)
        .y_labels(6)
        .y_label_formatter(&y_fmt)
        .label_style(font(text))
        .axis_desc_style(font(text))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()?;
    for s in p.series.iter().filter(|s| !s.points.is_empty()) {
        let style = ShapeStyle {
            color: s.colour.to_rgba(),
            filled: true,
            stroke_width: 2,
        };
        let c = s.colour;
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), style).point_size(3))?
            .label(s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(p.legend.clone())
        .label_font(font(text))
        .background_style(WHITE.mix(0.85).filled())
        .border_style(RGBColor(160, 160, 160))
        .draw()?;
    if let Some(note) = &p.note {
        let plot = chart.plotting_area().strip_coord_spec();
        let (_, ph) = plot.dim_in_pixel();
        plot.draw_text(
            note,
            &font(text),
            (text as i32 / 2, ph as i32 - 2 * text as i32),
        )?;
    }
    Ok(())
}

/// One bar of the final-accuracy panel.
struct Bar {
    label: String,
    colour: RGBColor,
    /// Test accuracy in %.
    percent: f64,
}

/// The bars: the teachers of the reports (one per distinct teacher), then each run with a
/// final accuracy.
fn bars(runs: &[Run]) -> Vec<Bar> {
    let mut teachers: Vec<(String, &Run, f64)> = Vec::new();
    for r in runs {
        let Some(rep) = &r.report else { continue };
        let Some(a) = rep.teacher.accuracy.filter(|a| a.is_finite()) else {
            continue;
        };
        if !teachers.iter().any(|t| t.0 == rep.teacher_fingerprint) {
            teachers.push((rep.teacher_fingerprint.clone(), r, a));
        }
    }
    let several = teachers.len() > 1;
    let mut bars: Vec<Bar> = teachers
        .into_iter()
        .map(|(_, r, a)| {
            let name = &r
                .report
                .as_ref()
                .map_or("", |rep| rep.teacher.name.as_str());
            Bar {
                label: if several {
                    format!("teacher of {} ({name})", r.label)
                } else {
                    format!("teacher ({name})")
                },
                colour: TEACHER,
                percent: 100.0 * a,
            }
        })
        .collect();
    bars.extend(runs.iter().enumerate().filter_map(|(i, r)| {
        r.final_accuracy().map(|a| Bar {
            label: match &r.report {
                Some(rep) => format!("{} ({})", r.label, rep.student.name),
                None => r.label.clone(),
            },
            colour: colour(i),
            percent: 100.0 * a,
        })
    }));
    bars
}

fn bar_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, runs: &[Run]) -> DrawResult<DB> {
    let (w, h) = area.dim_in_pixel();
    let text = (h / 30).clamp(10, 18);
    let caption = font((h / 24).clamp(12, 22));
    let title = "Final test accuracy";
    let bars = bars(runs);
    if bars.is_empty() {
        let inner = area.titled(title, caption)?;
        let (_, ih) = inner.dim_in_pixel();
        return inner.draw_text(
            "no test accuracy: no report.json and no per-epoch evaluation",
            &font(text),
            (w as i32 / 20, ih as i32 / 2),
        );
    }
    let n = bars.len() as f64;
    let mut chart = ChartBuilder::on(area)
        .caption(title, caption)
        .margin(text)
        .x_label_area_size(text * 3)
        .y_label_area_size(text)
        .build_cartesian_2d(0f64..100f64, 0f64..n)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .disable_y_axis()
        .x_desc("test accuracy (%)")
        .x_labels(11)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .label_style(font(text))
        .axis_desc_style(font(text))
        .light_line_style(WHITE)
        .draw()?;
    // Top to bottom in the order of `bars`.
    for (i, b) in bars.iter().enumerate() {
        let top = n - i as f64 - 0.15;
        let bottom = n - i as f64 - 0.85;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, bottom), (b.percent.clamp(0.0, 100.0), top)],
            b.colour.mix(0.45).filled(),
        )))?;
        chart.draw_series(std::iter::once(Rectangle::new(
            [(0.0, bottom), (b.percent.clamp(0.0, 100.0), top)],
            b.colour.stroke_width(2),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{}  {:.2} %", b.label, b.percent),
            (1.5, n - i as f64 - 0.5),
            font(text).pos(plotters::style::text_anchor::Pos::new(
                plotters::style::text_anchor::HPos::Left,
                plotters::style::text_anchor::VPos::Center,
            )),
        )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: u64, loss: f64, test_accuracy: Option<f64>) -> EpochMetrics {
        EpochMetrics {
            epoch,
            step: 10 * epoch,
            samples: 1000,
            loss,
            soft_loss: 0.0,
            hard_loss: loss,
            train_accuracy: 0.5,
            test_accuracy,
            samples_per_s: 1000.0 * epoch as f64,
            wall_s: 1.0,
            tokens: None,
            tokens_per_s: None,
            test_perplexity: None,
            hint_loss: None,
            on_policy: None,
        }
    }

    fn write_run(dir: &Path, lines: &[EpochMetrics], report: Option<&str>) {
        std::fs::create_dir_all(dir).unwrap();
        let text: String = lines
            .iter()
            .map(|m| serde_json::to_string(m).unwrap() + "\n")
            .collect();
        std::fs::write(dir.join(METRICS_FILE), text).unwrap();
        if let Some(r) = report {
            std::fs::write(dir.join(REPORT_FILE), r).unwrap();
        }
    }

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("student-plot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_repeated_epoch_keeps_its_last_line_and_epochs_are_sorted() {
        let root = tmp("repeat");
        let dir = root.join("run");
        write_run(
            &dir,
            &[
                epoch(2, 0.5, None),
                epoch(1, 0.9, None),
                epoch(2, 0.4, Some(0.8)),
            ],
            None,
        );
        let run = Run::load(&dir).unwrap();
        assert_eq!(run.label(), "run");
        assert_eq!(run.epochs(), 2);
        assert_eq!(run.epochs[0].epoch, 1);
        assert_eq!(run.epochs[1].loss, 0.4);
        assert_eq!(run.final_accuracy(), Some(0.8));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_report_gives_the_final_accuracy_and_the_teacher_bar() {
        let root = tmp("report");
        let distilled = root.join("distilled");
        let report = r#"{"teacher": {"accuracy": 0.91, "params": 5, "name": "cnn"},
            "student": {"accuracy": 0.87, "params": 1, "name": "mlp"},
            "teacher_fingerprint": "ab", "extra": 1}"#;
        write_run(&distilled, &[epoch(1, 0.5, Some(0.85))], Some(report));
        let baseline = root.join("baseline");
        write_run(&baseline, &[epoch(1, 0.5, Some(0.8))], None);
        let runs = load_runs(&[baseline, distilled]).unwrap();
        let b = bars(&runs);
        let labels: Vec<&str> = b.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels, ["teacher (cnn)", "baseline", "distilled (mlp)"]);
        let percents: Vec<f64> = b
            .iter()
            .map(|b| (b.percent * 100.0).round() / 100.0)
            .collect();
        assert_eq!(percents, [91.0, 80.0, 87.0]);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn runs_with_the_same_name_are_named_by_their_path() {
        let root = tmp("names");
        let a = root.join("a").join("student");
        let b = root.join("b").join("student");
        write_run(&a, &[epoch(1, 0.5, None)], None);
        write_run(&b, &[epoch(1, 0.5, None)], None);
        let runs = load_runs(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(runs[0].label(), a.display().to_string());
        assert_eq!(runs[1].label(), b.display().to_string());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn bad_inputs_name_the_file_and_what_was_expected() {
        let root = tmp("bad");
        let missing = root.join("missing");
        let e = Run::load(&missing).unwrap_err().to_string();
        assert!(
            e.contains("no such run directory") && e.contains("missing"),
            "{e}"
        );

        let empty_dir = root.join("empty");
        std::fs::create_dir_all(&empty_dir).unwrap();
        let e = Run::load(&empty_dir).unwrap_err().to_string();
        assert!(
            e.contains("no metrics.jsonl") && e.contains("one JSON line per epoch"),
            "{e}"
        );

        std::fs::write(empty_dir.join(METRICS_FILE), "\n").unwrap();
        let e = Run::load(&empty_dir).unwrap_err().to_string();
        assert!(e.contains("no epoch recorded"), "{e}");

        let bad = root.join("bad");
        write_run(&bad, &[epoch(1, 0.5, None)], None);
        let mut text = std::fs::read_to_string(bad.join(METRICS_FILE)).unwrap();
        text.push_str("{\"epoch\": 2}\n");
        std::fs::write(bad.join(METRICS_FILE), text).unwrap();
        let e = Run::load(&bad).unwrap_err().to_string();
        assert!(
            e.contains("metrics.jsonl, line 2") && e.contains("missing field"),
            "{e}"
        );

        let bad_report = root.join("bad-report");
        write_run(&bad_report, &[epoch(1, 0.5, None)], Some("{}"));
        let e = Run::load(&bad_report).unwrap_err().to_string();
        assert!(e.contains("report.json") && e.contains("teacher"), "{e}");

        let file = root.join("file");
        std::fs::write(&file, "x").unwrap();
        let e = Run::load(&file).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn axis_numbers_stay_short() {
        assert_eq!(short_number(32_500.0), "32k");
        assert_eq!(short_number(1500.0), "1.5k");
        assert_eq!(short_number(250.0), "250");
        assert_eq!(short_number(2.5), "2.5");
        assert_eq!(short_number(0.25), "0.25");
        assert_eq!(short_number(0.0), "0");
    }

    #[test]
    fn on_policy_runs_add_the_reverse_kl_and_completion_curves() {
        let root = tmp("on-policy");
        let dir = root.join("opd");
        let lines: Vec<EpochMetrics> = [(1, 0.9), (2, 0.5), (3, 0.3)]
            .into_iter()
            .map(|(e, kl)| EpochMetrics {
                on_policy: Some(crate::outputs::metrics::OnPolicyMetrics {
                    lambda: 1.0,
                    heldout_reverse_kl: Some(kl),
                    heldout_completion_len: Some(10.0 + e as f64),
                    ..Default::default()
                }),
                ..epoch(e, 1.0, None)
            })
            .collect();
        write_run(&dir, &lines, None);
        let off = root.join("off");
        write_run(&off, &[epoch(1, 1.0, None)], None);
        let runs = load_runs(&[dir, off]).unwrap();
        let kl = reverse_kl_panel(&runs);
        assert_eq!(kl.series[0].points, [(1, 0.9), (2, 0.5), (3, 0.3)]);
        assert!(kl.series[1].points.is_empty());
        assert_eq!(completion_panel(&runs).series[0].points[2], (3, 13.0));
        let png = render_png(&runs, 640, 480).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
