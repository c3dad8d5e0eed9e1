//! `eval`: accuracy (overall and per class) of a checkpoint, or of served teachers, on the test
//! split; a language model's perplexity and next-token accuracy.

use super::dataset::{is_text_corpus, load_text, load_text_files};
use super::error::AppError;
use super::output::{outln, write_stdout};
use super::student::{load_script, script_request};
use super::teachers::{
    batch_size_for, connect, evaluate_pool, sequences_per_message, total_params,
};
use crate::config::{EvalConfig, EvalTarget, TeacherConfig};
use crate::data::{self, DataError, Dataset, Split, TextOptions};
use crate::eval::{self, Accuracy};
use crate::teachers::Expect;
use distill_models::{Checkpoint, Model};
use distill_text::{CorpusRecord, FilesOptions, RECORD_FILE};
use std::path::Path;
use tch::Device;

/// `eval`: accuracy overall and per class on the test split, as a table or JSON.
///
/// # Errors
/// Any [`AppError`].
pub async fn eval(cfg: EvalConfig) -> Result<(), AppError> {
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n as i32);
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
        } => {
            let device = cfg.device.resolve()?;
            let req = script_request(file, logits_output.as_deref(), &test, test.num_classes)?;
            let (vs, module) = load_script(file, &req, device)?;
            let params = distill_models::arch::param_count(&vs);
            let acc = eval::evaluate(&Model::Script(module), &test, device, 1000)?;
            (
                format!("{} ({}, {params} parameters)", file.display(), req.module),
                acc,
                Some(params),
            )
        }
        EvalTarget::Teachers(teachers) => {
            evaluate_teachers(teachers, &test, cfg.batch_size).await?
        }
    };
    print(&cfg, &title, &acc, params)
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
    let acc = evaluate_pool(&mut pool, test, batch_size, 1.0).await?;
    let refs = pool.references();
    let names: Vec<&str> = refs.iter().map(|i| i.name.as_str()).collect();
    let urls: Vec<&str> = teachers
        .groups
        .iter()
        .flat_map(|g| g.urls.iter().map(String::as_str))
        .collect();
    Ok((
        format!("teacher {} ({})", urls.join(", "), names.join("+")),
        acc,
        total_params(refs),
    ))
}

/// Prints the result: JSON, a language model's perplexity line, or the accuracy table.
fn print(
    cfg: &EvalConfig,
    title: &str,
    acc: &Accuracy,
    params: Option<i64>,
) -> Result<(), AppError> {
    if cfg.json {
        let mut v = acc.to_json();
        v["params"] = serde_json::json!(params);
        v["model"] = serde_json::json!(title);
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
    } else {
        write_stdout(format_args!(
            "{}",
            acc.table(&format!("test accuracy of {title}"))
        ))
    }
}
