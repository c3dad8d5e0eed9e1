//! `eval`: accuracy (overall and per class) of a checkpoint, or of served teachers, on the test
//! split; a language model's perplexity and next-token accuracy.

use super::dataset::{is_text_corpus, load_text, load_text_files, not_an_image_folder};
use super::error::AppError;
use super::output::{outln, write_stdout};
use super::student::{DataShape, load_script, script_request};
use super::teachers::{
    batch_size_for, connect, evaluate_pool, sequences_per_message, total_params,
};
use crate::config::{EvalConfig, EvalTarget, TeacherConfig};
use crate::data::{self, DataError, Dataset, Split, TextOptions};
use crate::eval::{self, Accuracy};
use crate::images::options::per_channel;
use crate::images::{self, Geometry, ImageFolder, ImageOptions, ImageRecord, ViewSpec};
use crate::teachers::Expect;
use distill_models::{Checkpoint, Model};
use distill_text::{CorpusRecord, FilesOptions, RECORD_FILE};
use std::fmt::Write as _;
use std::path::Path;
use tch::Device;

/// `eval`: accuracy overall and per class on the test split, as a table or JSON.
///
/// # Errors
/// Any [`AppError`].
pub async fn eval(cfg: EvalConfig) -> Result<(), AppError> {
    // The evaluation runs on this (the main) thread.
    distill_models::threads::compute_thread(cfg.threads);
    if images::is_image_folder(&cfg.data_dir) {
        return eval_images(&cfg).await;
    }
    if let Some(flag) = cfg.images.any_given() {
        return Err(not_an_image_folder(flag, &cfg.data_dir));
    }
    let test = test_split(&cfg)?;
    let (title, acc, params) = match &cfg.target {
        EvalTarget::Checkpoint(dir) => {
            let device = cfg.device.resolve()?;
            let (acc, params, name) = evaluate_checkpoint(dir, &test, device)?;
            (
                format!("{} ({name}, {params} parameters)", dir.display()),
                acc,
                Some(params),
            )
        }
        EvalTarget::Student {
            file,
            logits_output,
        } => evaluate_student(file, logits_output.as_deref(), &test, cfg.device.resolve()?)?,
        EvalTarget::Teachers(teachers) => {
            evaluate_teachers(teachers, &test, cfg.batch_size).await?
        }
    };
    print(&cfg, &title, &acc, params, None)
}

/// `eval` on an image folder's test split: a checkpoint sees it in the view it recorded (image
/// flags override), with its classes checked against the folder's; served teachers see it in
/// their own shape (`ModelInfo`), normalized with `--teacher-mean`/`--teacher-std` (else
/// `--mean`/`--std`).
///
/// # Errors
/// [`AppError::Mismatch`] when the checkpoint's classes differ from the folder's; the
/// [`images::ImageError`]s of the folder; those of the evaluation.
async fn eval_images(cfg: &EvalConfig) -> Result<(), AppError> {
    let folder = ImageFolder::open(&cfg.data_dir, &cfg.images)?;
    let classes = folder.classes().to_vec();
    let (title, acc, params) = match &cfg.target {
        EvalTarget::Checkpoint(dir) => {
            let device = cfg.device.resolve()?;
            let record = recorded_images(dir)?;
            if let Some(r) = record.as_ref().filter(|r| r.classes != classes) {
                return Err(AppError::Mismatch(format!(
                    "checkpoint {} was trained on the classes [{}], and {} holds [{}]",
                    dir.display(),
                    r.classes.join(", "),
                    cfg.data_dir.display(),
                    classes.join(", ")
                )));
            }
            let view = checkpoint_view(&folder, &cfg.images, record.as_ref())?;
            let test = decode_test(folder, &cfg.images, view).await?;
            let (acc, params, name) = evaluate_checkpoint(dir, &test, device)?;
            let title = format!("{} ({name}, {params} parameters)", dir.display());
            (title, acc, Some(params))
        }
        EvalTarget::Student {
            file,
            logits_output,
        } => {
            // The exported module sees the folder in the view the image flags give.
            let view = checkpoint_view(&folder, &cfg.images, None)?;
            let test = decode_test(folder, &cfg.images, view).await?;
            evaluate_student(file, logits_output.as_deref(), &test, cfg.device.resolve()?)?
        }
        EvalTarget::Teachers(teachers) => {
            let expect = Expect {
                sample_shape: folder.first.shape(),
                num_classes: classes.len() as i64,
                batch_size: 1,
                tokens: false,
                tokenizer_fingerprint: None,
                hint_output: None,
                top_k: 0,
                image_views: true,
            };
            let mut pool = connect(teachers, expect, None).await?;
            let shape = pool.references()[0].input_shape.clone();
            let view = teacher_only_view(&shape, &cfg.images)?;
            let test = decode_test(folder, &cfg.images, view).await?;
            let batch_size = batch_size_for(&pool, cfg.batch_size);
            let acc = evaluate_pool(&mut pool, &test, batch_size, 1.0, None).await?;
            pool_title(teachers, &pool, acc)
        }
    };
    print(cfg, &title, &acc, params, Some(&classes))
}

/// The accuracy of the TorchScript student in `file` as it was exported (its sidecar checked
/// against `test`), with the title of the result and its parameters.
///
/// # Errors
/// [`AppError::Mismatch`] / [`AppError::Model`] for a module that does not fit `test`.
fn evaluate_student(
    file: &Path,
    logits_output: Option<&str>,
    test: &Dataset,
    device: Device,
) -> Result<(String, Accuracy, Option<i64>), AppError> {
    let req = script_request(file, logits_output, &DataShape::of(test, test.num_classes))?;
    let (vs, module) = load_script(file, &req, device)?;
    let params = distill_models::arch::param_count(&vs);
    let acc = eval::evaluate(&Model::Script(module), test, device, 1000)?;
    Ok((
        format!("{} ({}, {params} parameters)", file.display(), req.module),
        acc,
        Some(params),
    ))
}

/// The image record of the checkpoint in `dir`, if it was trained on an image folder.
fn recorded_images(dir: &Path) -> Result<Option<ImageRecord>, AppError> {
    let ck = Checkpoint::open(dir)?;
    Ok(ck
        .meta
        .trainer
        .get("images")
        .and_then(|v| serde_json::from_value(v.clone()).ok()))
}

/// The view a checkpoint sees the images in: each image flag given, else what the checkpoint
/// recorded, else the folder's defaults.
fn checkpoint_view(
    folder: &ImageFolder,
    opts: &ImageOptions,
    record: Option<&ImageRecord>,
) -> Result<ViewSpec, AppError> {
    let Some(r) = record else {
        return Ok(folder.student_view(opts)?);
    };
    let g = r.view.geometry;
    let (height, width) = opts.size.unwrap_or((g.height, g.width));
    let geometry = Geometry {
        channels: opts.channels.unwrap_or(g.channels),
        height,
        width,
    };
    let pick = |given: &[f64], recorded: &[f64], default: f64, flag: &str| {
        let values = if given.is_empty() { recorded } else { given };
        per_channel(values, geometry.channels, default, flag, &geometry.shape())
    };
    Ok(ViewSpec {
        geometry,
        mean: pick(&opts.mean, &r.view.mean, 0.0, "--mean")?,
        std: pick(&opts.std, &r.view.std, 1.0, "--std")?,
    })
}

/// The view of a served teacher taking `shape`, the only model `eval --teacher` evaluates.
fn teacher_only_view(shape: &[i64], opts: &ImageOptions) -> Result<ViewSpec, AppError> {
    let geometry = Geometry::from_shape(shape).ok_or_else(|| {
        AppError::Mismatch(format!(
            "the teacher takes inputs {shape:?}: an image folder needs a teacher taking [C, H, W] \
             with 1 or 3 channels"
        ))
    })?;
    let mean = opts.teacher_mean.as_deref().unwrap_or(&opts.mean);
    let std = opts.teacher_std.as_deref().unwrap_or(&opts.std);
    Ok(ViewSpec {
        geometry,
        mean: per_channel(mean, geometry.channels, 0.0, "--teacher-mean", shape)?,
        std: per_channel(std, geometry.channels, 1.0, "--teacher-std", shape)?,
    })
}

/// The test split of `folder` decoded in `view`, on loader threads off the async runtime.
async fn decode_test(
    folder: ImageFolder,
    opts: &ImageOptions,
    view: ViewSpec,
) -> Result<Dataset, AppError> {
    let opts = opts.clone();
    Ok(
        tokio::task::spawn_blocking(move || folder.load_test(&opts, &view))
            .await
            .map_err(|e| AppError::Mismatch(format!("image loader: {e}")))??,
    )
}

/// The test split of `cfg`'s data; a text corpus is packed with the checkpoint's own sequence
/// length and vocabulary, or the flags' for served teachers.
fn test_split(cfg: &EvalConfig) -> Result<Dataset, AppError> {
    if !cfg.data_dir.exists() {
        return Err(DataError::MissingFile {
            path: cfg.data_dir.clone(),
        }
        .into());
    }
    if let Some(test) = text_files_test_split(cfg)? {
        return Ok(test);
    }
    if !is_text_corpus(&cfg.data_dir) {
        return Ok(data::load(&cfg.data_dir, Split::Test)?);
    }
    let text = match &cfg.target {
        EvalTarget::Checkpoint(dir) => {
            let arch = Checkpoint::open(dir)?.meta.arch;
            TextOptions {
                seq_len: checkpoint_seq_len(&arch),
                vocab_size: arch.num_classes.max(0) as usize,
                ..TextOptions::default()
            }
        }
        EvalTarget::Teachers(_) | EvalTarget::Student { .. } => cfg.text.clone(),
    };
    Ok(load_text(&cfg.data_dir, text)?.1)
}

/// The sequence length a checkpoint's network takes (at least 2).
fn checkpoint_seq_len(arch: &distill_models::ArchSpec) -> usize {
    arch.input_shape.first().copied().unwrap_or(0).max(2) as usize
}

/// The test split of a corpus of text files, or `None` when the data is not one: read as the
/// checkpoint's `corpus.json` says (with the `tokenizer.json` beside it, the flags given must
/// agree and the files must be those it lists), or as the flags say (`--tokenizer`).
fn text_files_test_split(cfg: &EvalConfig) -> Result<Option<Dataset>, AppError> {
    let checkpoint = match &cfg.target {
        EvalTarget::Checkpoint(dir) => Some(dir.as_path()),
        EvalTarget::Teachers(_) | EvalTarget::Student { .. } => None,
    };
    let record_path = checkpoint
        .map(|d| d.join(RECORD_FILE))
        .filter(|p| p.is_file());
    let seq_len = || -> Result<usize, AppError> {
        Ok(match checkpoint {
            Some(dir) => checkpoint_seq_len(&Checkpoint::open(dir)?.meta.arch),
            None => cfg.text.seq_len,
        })
    };
    if let (Some(dir), Some(record_path)) = (checkpoint, record_path) {
        let record = CorpusRecord::load(&record_path)?;
        let spec =
            cfg.text
                .files
                .spec_from_record(&record, &record_path, &dir.join("tokenizer.json"))?;
        let expected = Some((&record, record_path.as_path()));
        let data = load_text_files(&cfg.data_dir, &spec, seq_len()?, expected)?;
        return Ok(Some(data.test));
    }
    match (cfg.text.files.spec(), checkpoint) {
        (Some(spec), _) => Ok(Some(
            load_text_files(&cfg.data_dir, &spec, seq_len()?, None)?.test,
        )),
        (None, Some(dir)) if cfg.text.files != FilesOptions::default() => {
            Err(AppError::Mismatch(format!(
                "{} has no {RECORD_FILE} (it was not trained on text files): give --tokenizer \
                 FILE to read --data-dir as text files",
                dir.display()
            )))
        }
        (None, _) => Ok(None),
    }
}

/// Test accuracy, parameter count and architecture name of the checkpoint in `dir`.
///
/// # Errors
/// [`AppError::Model`] for an unreadable checkpoint; [`AppError::Mismatch`] when it takes other
/// inputs than `test` has.
pub(crate) fn evaluate_checkpoint(
    dir: &Path,
    test: &Dataset,
    device: Device,
) -> Result<(Accuracy, i64, String), AppError> {
    let ck = Checkpoint::open(dir)?;
    if ck.meta.arch.input_shape != test.sample_shape() {
        return Err(AppError::Mismatch(format!(
            "checkpoint {} takes inputs {:?}, the data has {:?}",
            dir.display(),
            ck.meta.arch.input_shape,
            test.sample_shape()
        )));
    }
    let (vs, net) = ck.load_model(device)?;
    let acc = eval::evaluate(&net, test, device, 1000)?;
    Ok((
        acc,
        distill_models::arch::param_count(&vs),
        ck.meta.arch.arch.to_string(),
    ))
}

/// The served teachers' accuracy on `test` (dense f32 logits, through the pool), with the
/// title of the result and their parameters when known.
async fn evaluate_teachers(
    teachers: &TeacherConfig,
    test: &Dataset,
    wanted_batch: usize,
) -> Result<(String, Accuracy, Option<i64>), AppError> {
    let expect = Expect {
        sample_shape: test.sample_shape(),
        num_classes: test.num_classes,
        batch_size: 1,
        tokens: test.is_tokens(),
        tokenizer_fingerprint: test.tokenizer_fingerprint.clone(),
        hint_output: None,
        top_k: 0,
        image_views: false,
    };
    let mut pool = connect(teachers, expect, None).await?;
    let mut batch_size = batch_size_for(&pool, wanted_batch);
    if test.is_tokens() {
        // Dense f32 logits at every position (perplexity needs the full rows): as many
        // sequences per request as fit the teacher's message limit.
        batch_size = batch_size.min(sequences_per_message(
            &pool,
            test.sample_shape().first().copied().unwrap_or(1),
        ));
    }
    let acc = evaluate_pool(&mut pool, test, batch_size, 1.0, None).await?;
    Ok(pool_title(teachers, &pool, acc))
}

/// The title, accuracy and parameters of the served teachers of `pool`.
fn pool_title(
    teachers: &TeacherConfig,
    pool: &crate::teachers::Pool,
    acc: Accuracy,
) -> (String, Accuracy, Option<i64>) {
    let refs = pool.references();
    let names: Vec<&str> = refs.iter().map(|i| i.name.as_str()).collect();
    let urls: Vec<&str> = teachers
        .groups
        .iter()
        .flat_map(|g| g.urls.iter().map(String::as_str))
        .collect();
    (
        format!("teacher {} ({})", urls.join(", "), names.join("+")),
        acc,
        total_params(refs),
    )
}

/// Prints the result: JSON, a language model's perplexity line, or the accuracy table (with
/// an image folder's class names).
fn print(
    cfg: &EvalConfig,
    title: &str,
    acc: &Accuracy,
    params: Option<i64>,
    classes: Option<&[String]>,
) -> Result<(), AppError> {
    if cfg.json {
        let mut v = acc.to_json();
        v["params"] = serde_json::json!(params);
        v["model"] = serde_json::json!(title);
        if let Some(classes) = classes {
            v["classes"] = serde_json::json!(classes);
        }
        if let Some(ppl) = acc.perplexity() {
            v["perplexity"] = serde_json::json!(ppl);
            v["tokens"] = serde_json::json!(acc.total);
        }
        outln!("{v}")
    } else if let Some(ppl) = acc.perplexity() {
        outln!(
            "test split of {title}: perplexity {ppl:.2}, next-token top-1 accuracy {:.2} % over {} tokens",
            100.0 * acc.fraction(),
            acc.total
        )
    } else if let Some(classes) = classes {
        write_stdout(format_args!(
            "{}",
            named_table(acc, &format!("test accuracy of {title}"), classes)
        ))
    } else {
        write_stdout(format_args!(
            "{}",
            acc.table(&format!("test accuracy of {title}"))
        ))
    }
}

/// [`Accuracy::table`] with each class's name beside its index.
fn named_table(acc: &Accuracy, title: &str, classes: &[String]) -> String {
    let width = classes.iter().map(String::len).max().unwrap_or(0).max(3);
    let mut s = format!(
        "{title}\n  class {:<width$}   correct   total   accuracy\n",
        "name"
    );
    for (c, &(k, t)) in acc.per_class.iter().enumerate() {
        let f = if t == 0 { 0.0 } else { k as f64 / t as f64 };
        let name = classes.get(c).map_or("?", String::as_str);
        let _ = writeln!(
            s,
            "  {c:>5} {name:<width$}  {k:>8}  {t:>6}   {:>7.2} %",
            100.0 * f
        );
    }
    let _ = writeln!(
        s,
        "  {:>5} {:<width$}  {:>8}  {:>6}   {:>7.2} %",
        "all",
        "",
        acc.correct,
        acc.total,
        100.0 * acc.fraction()
    );
    s
}
