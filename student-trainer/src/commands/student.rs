//! Which student a run trains, checked against the data before anything is written: a built-in
//! architecture (`--arch`), a TorchScript module (`--student FILE.pt` and its sidecar), or
//! `--init DIR`'s checkpoint, whose weights a fresh run starts from.

use super::dataset::Source;
use super::error::AppError;
use super::teachers::params_of;
use crate::data::Dataset;
use crate::training::TrainConfig;
use distill_models::script::{kind_name, kind_of_name};
use distill_models::{Arch, ArchSpec, Checkpoint, ScriptModule, ScriptRequest};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, nn};

/// The student of a run, resolved and checked.
#[derive(Debug)]
pub(crate) struct StudentPlan {
    /// Its architecture for the data (a TorchScript student's with the outputs its warm-up
    /// found).
    pub(crate) spec: ArchSpec,
    /// Trainable parameters.
    pub(crate) params: i64,
}

/// What the data gives a student: the per-sample shape (`[C, H, W]`, `[features]`, or `[seq]`
/// for token sequences), whether the samples are token sequences, and the classes (the
/// vocabulary for token sequences).
#[derive(Debug, Clone)]
pub(crate) struct DataShape {
    pub(crate) sample: Vec<i64>,
    pub(crate) tokens: bool,
    pub(crate) classes: i64,
}

impl DataShape {
    /// The shape of `data` (one split) with `classes` classes.
    pub(crate) fn of(data: &Dataset, classes: i64) -> DataShape {
        DataShape {
            sample: data.sample_shape(),
            tokens: data.is_tokens(),
            classes,
        }
    }

    /// The shape of `source`'s training split (its classes counted over both splits).
    pub(crate) fn of_source(source: &Source) -> DataShape {
        let spec = source.spec(&Arch::Mlp { hidden: Vec::new() });
        DataShape {
            sample: spec.input_shape,
            tokens: source.tokens().0,
            classes: spec.num_classes,
        }
    }
}

/// A TorchScript student's sidecar, `FILE.pt.json` (or `FILE.json`): what the module takes and
/// returns, as for teachers. The data gives what it leaves out.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    input_shape: Option<Vec<i64>>,
    input_dtype: Option<String>,
    num_logits: Option<i64>,
    sequence_model: Option<bool>,
    logits_output: Option<String>,
    /// A teacher sidecar's tokenizer: accepted, unused (the data's tokenizer is the run's).
    #[allow(dead_code)]
    tokenizer: Option<PathBuf>,
}

/// The sidecar of `file`: `FILE.pt.json` when it exists (it wins), else `FILE.json` (the file
/// name's extension replaced, the teachers' other convention), else none.
pub(crate) fn sidecar_of(file: &Path) -> Option<PathBuf> {
    let mut long = file.as_os_str().to_owned();
    long.push(".json");
    let long = PathBuf::from(long);
    if long.is_file() {
        return Some(long);
    }
    let short = file.with_extension("json");
    (short != file && short.is_file()).then_some(short)
}

/// The module's name: its file's stem.
fn module_name(file: &Path) -> String {
    file.file_stem()
        .map_or_else(|| "student".into(), |s| s.to_string_lossy().into_owned())
}

/// The sidecar of `file` ([`sidecar_of`]; empty when there is none) and its path as text.
///
/// # Errors
/// [`AppError::Io`] / [`AppError::Mismatch`] for an unreadable or malformed sidecar.
fn read_sidecar(file: &Path) -> Result<(Sidecar, String), AppError> {
    let Some(p) = sidecar_of(file) else {
        return Ok((Sidecar::default(), String::new()));
    };
    let text = std::fs::read_to_string(&p).map_err(|source| AppError::Io {
        path: p.clone(),
        source,
    })?;
    let side = serde_json::from_str(&text).map_err(|e| {
        AppError::Mismatch(format!("{}: malformed student sidecar: {e}", p.display()))
    })?;
    Ok((side, p.display().to_string()))
}

/// What the TorchScript student `file` is asked to take and return: its sidecar (if any),
/// `logits_output` (the flag, over the sidecar), and the data (its sample shape, whether it
/// holds token sequences, and its classes). A sidecar contradicting the data is an error
/// naming both.
///
/// # Errors
/// [`AppError::Mismatch`] for a sidecar that contradicts the data or is malformed.
pub(crate) fn script_request(
    file: &Path,
    logits_output: Option<&str>,
    data: &DataShape,
) -> Result<ScriptRequest, AppError> {
    let DataShape {
        sample: shape,
        tokens,
        classes,
    } = data.clone();
    if !file.is_file() {
        return Err(AppError::Mismatch(format!(
            "--student {}: no such file",
            file.display()
        )));
    }
    let (side, side_name) = read_sidecar(file)?;
    let what_data = if tokens {
        format!(
            "token sequences of {} ids",
            shape.first().copied().unwrap_or(0)
        )
    } else {
        format!("samples of shape {shape:?}")
    };
    let contradiction = |field: &str, says: String, data_says: String| {
        AppError::Mismatch(format!(
            "--student {}: its sidecar {side_name} says {field} {says}, the data has {data_says}",
            file.display()
        ))
    };
    if let Some(seq) = side.sequence_model
        && seq != tokens
    {
        return Err(contradiction("sequence_model", seq.to_string(), what_data));
    }
    if let Some(s) = &side.input_shape
        && !(s == &shape || tokens && s.len() == 1 && s[0] >= shape[0])
    {
        return Err(contradiction("input_shape", format!("{s:?}"), what_data));
    }
    if let Some(n) = side.num_logits
        && n != classes
    {
        return Err(contradiction(
            "num_logits",
            n.to_string(),
            if tokens {
                format!("a vocabulary of {classes} token ids")
            } else {
                format!("{classes} classes")
            },
        ));
    }
    let input_dtype = match side.input_dtype.as_deref() {
        Some(name) => kind_of_name(name)
            .map_err(|e| AppError::Mismatch(format!("{side_name}: input_dtype: {e}")))?,
        None if tokens => Kind::Int64,
        None => Kind::Float,
    };
    let fits = if tokens {
        input_dtype == Kind::Int64
    } else {
        matches!(
            input_dtype,
            Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
        )
    };
    if !fits {
        return Err(contradiction(
            "input_dtype",
            kind_name(input_dtype).into(),
            if tokens {
                format!("{what_data}, which a sequence model takes as i64")
            } else {
                format!("f32 {what_data} (a floating-point input_dtype takes them)")
            },
        ));
    }
    Ok(ScriptRequest {
        module: module_name(file),
        input_shape: shape,
        input_dtype,
        num_classes: classes,
        sequence_model: tokens,
        logits_output: logits_output.map(str::to_string).or(side.logits_output),
    })
}

/// Loads the TorchScript student of `req` from `file` onto `device` (its warm-up checks it) and
/// warns when it has no `distill_state_dict()` (its checkpoint's safetensors will then hold its
/// parameters only).
///
/// # Errors
/// [`AppError::Model`] with the module's one-line error.
pub(crate) fn load_script(
    file: &Path,
    req: &ScriptRequest,
    device: Device,
) -> Result<(nn::VarStore, ScriptModule), AppError> {
    let vs = nn::VarStore::new(device);
    let module = ScriptModule::load(file, None, &vs.root(), req)?;
    if !module.has_state_dict_method() {
        tracing::warn!(
            student = %file.display(),
            "the module has no distill_state_dict() method (export it with \
             scripts/export_student.py): its buffers (e.g. BatchNorm running statistics) are \
             saved in student.<hash>.pt but not in model.<hash>.safetensors, which holds its \
             parameters only"
        );
    }
    Ok((vs, module))
}

/// The student of `cfg`'s run on `data`: `--student`'s module (its sidecar and warm-up checked
/// against the data), `--arch`'s network, or, with `--init DIR` alone, the checkpoint's; with
/// `--init`, the checkpoint must hold the same architecture.
///
/// # Errors
/// [`AppError::Mismatch`] / [`AppError::Model`]: one line naming both sides.
pub(crate) fn plan(cfg: &TrainConfig, source: &Source) -> Result<StudentPlan, AppError> {
    let data = DataShape::of_source(source);
    let init = cfg.init.as_deref().map(Checkpoint::open).transpose()?;
    if let Some(file) = &cfg.student {
        let req = script_request(file, cfg.student_logits_output.as_deref(), &data)?;
        let (vs, module) = load_script(file, &req, Device::Cpu)?;
        if let Some(ck) = &init {
            if !ck.meta.arch.arch.is_torchscript() {
                return Err(init_mismatch(ck, module.spec()));
            }
            let from_vs = nn::VarStore::new(Device::Cpu);
            let from = ck.load_script(&from_vs.root())?;
            module.copy_state_from(&from.state_dict()?, &format!("--init {}", ck.dir.display()))?;
        }
        return Ok(StudentPlan {
            spec: module.spec().clone(),
            params: distill_models::arch::param_count(&vs),
        });
    }
    if let (Some(ck), false) = (&init, cfg.arch_given) {
        // The student is the checkpoint's.
        let spec = ck.meta.arch.clone();
        let want = source.spec(&spec.arch);
        if spec != want || spec.arch.is_sequence_model() != data.tokens {
            return Err(AppError::Mismatch(format!(
                "--init {}: it holds {} for input {:?} and {} classes, the data has {:?} and {} \
                 classes",
                ck.dir.display(),
                spec.arch,
                spec.input_shape,
                spec.num_classes,
                want.input_shape,
                want.num_classes
            )));
        }
        let (vs, _) = ck.load_model(Device::Cpu)?;
        return Ok(StudentPlan {
            params: distill_models::arch::param_count(&vs),
            spec,
        });
    }
    let spec = source.spec(&cfg.arch);
    if let Some(ck) = &init
        && ck.meta.arch != spec
    {
        return Err(init_mismatch(ck, &spec));
    }
    Ok(StudentPlan {
        params: params_of(&spec)?,
        spec,
    })
}

/// `--init` from a checkpoint of another architecture, naming both.
fn init_mismatch(ck: &Checkpoint, spec: &ArchSpec) -> AppError {
    let arch_of = |a: &Arch| match a {
        Arch::TorchScript(s) => format!("the TorchScript student {}", s.module),
        other => other.to_string(),
    };
    AppError::Mismatch(format!(
        "--init {}: it holds {} for input {:?} and {} classes, this run trains {} for {:?} and {} \
         classes",
        ck.dir.display(),
        arch_of(&ck.meta.arch.arch),
        ck.meta.arch.input_shape,
        ck.meta.arch.num_classes,
        arch_of(&spec.arch),
        spec.input_shape,
        spec.num_classes
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_long_sidecar_name_wins_over_the_short_one() {
        let dir = std::env::temp_dir().join(format!("student-sidecar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pt = dir.join("student.pt");
        std::fs::write(&pt, b"x").unwrap();
        assert_eq!(sidecar_of(&pt), None);
        std::fs::write(dir.join("student.json"), b"{}").unwrap();
        assert_eq!(sidecar_of(&pt), Some(dir.join("student.json")));
        std::fs::write(dir.join("student.pt.json"), b"{}").unwrap();
        assert_eq!(sidecar_of(&pt), Some(dir.join("student.pt.json")));
        assert_eq!(module_name(&pt), "student");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
