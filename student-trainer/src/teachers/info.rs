//! Who a teacher is and whether it fits: its `ModelInfo` as domain values ([`TeacherInfo`]), what
//! the data and the student expect of it ([`Expect`]: checked once, where a replica is admitted
//! to the pool), and what makes a replica unfit to stand in for its group's reference.

use super::error::ClientError;
use distill_proto::codec;
use distill_proto::v1;

/// What every group's teacher must fit: the data and the student.
#[derive(Debug, Clone, PartialEq)]
pub struct Expect {
    /// Per-sample input shape of the data (`[S]` for token sequences).
    pub sample_shape: Vec<i64>,
    /// Number of classes of the data and the student (a language model's vocabulary size).
    pub num_classes: i64,
    /// Samples per batch.
    pub batch_size: usize,
    /// The data is token sequences (`i64 [N, S]`): the teachers must be sequence models
    /// taking `S` tokens, and their logits come per position.
    pub tokens: bool,
    /// Hex SHA-256 of the data's tokenizer file, when known: a teacher announcing another one is
    /// refused.
    pub tokenizer_fingerprint: Option<String>,
    /// A named output every teacher must serve (`distill --hint`).
    pub hint_output: Option<String>,
    /// The top-k soft targets the run asks for (`--top-k`; 0: dense rows): every teacher must
    /// have at least this many logits.
    pub top_k: u32,
    /// The data is an image folder whose views are made for each teacher: a classifier taking
    /// any `f32 [C, H, W]` input is accepted here, and the caller makes its view (or says why
    /// it cannot, naming both shapes).
    pub image_views: bool,
}

impl Expect {
    /// Positions per sample in the teachers' logits: `Some(S)` for token sequences.
    pub(crate) fn positions(&self) -> Option<i64> {
        self.tokens
            .then(|| self.sample_shape.first().copied().unwrap_or(0))
    }
}

/// The teacher's `ModelInfo`, as domain values.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherInfo {
    /// Model name (architecture name for checkpoints, e.g. `cnn`).
    pub name: String,
    /// Model version string.
    pub version: String,
    /// Hex SHA-256 of the teacher's weights.
    pub fingerprint: String,
    /// Expected input dtype.
    pub input_dtype: v1::DType,
    /// Per-sample input shape, no batch dimension.
    pub input_shape: Vec<i64>,
    /// Logits per sample.
    pub num_logits: i64,
    /// Largest batch one request may carry (0: not announced).
    pub max_batch_size: u32,
    /// Device the teacher runs on.
    pub device: String,
    /// Largest gRPC message the teacher accepts (bytes; 0: not announced).
    pub max_message_bytes: u64,
    /// Random id of the serving process (hex; empty from servers that predate it): two URLs
    /// with the same id reach one server.
    pub instance_id: String,
    /// Precision of the teacher's forward pass (`teacher-server --precision`): `F32`, `Bf16`
    /// or `F16`; `F32` from servers that predate the field (they send `DTYPE_UNSPECIFIED`).
    pub precision: v1::DType,
    /// A sequence model (causal LM): token ids `i64 [batch, seq]` in, logits per position out.
    pub sequence_model: bool,
    /// A sequence model's longest sequence (0 otherwise).
    pub max_seq_len: i64,
    /// Hex SHA-256 of the teacher's tokenizer file (empty: not announced).
    pub tokenizer_fingerprint: String,
    /// The model's named outputs with their per-sample shapes (`ModelInfo.outputs`; empty from
    /// servers that predate them), the logits among them.
    pub outputs: Vec<(String, Vec<i64>)>,
}

impl From<v1::ModelInfo> for TeacherInfo {
    fn from(m: v1::ModelInfo) -> Self {
        // Destructured so that a new field cannot be ignored silently.
        let v1::ModelInfo {
            name,
            version,
            fingerprint,
            input_dtype,
            input_shape,
            num_logits,
            max_batch_size,
            device,
            max_message_bytes,
            precision,
            instance_id,
            sequence_model,
            max_seq_len,
            tokenizer_fingerprint,
            outputs,
            // Which output holds the logits is the server's business: they come as logits.
            logits_output: _,
        } = m;
        TeacherInfo {
            name,
            version,
            fingerprint,
            input_dtype: v1::DType::try_from(input_dtype).unwrap_or_default(),
            input_shape,
            num_logits,
            max_batch_size,
            device,
            max_message_bytes,
            instance_id,
            // Servers without a --precision flag compute in f32 and leave the field unset.
            precision: match v1::DType::try_from(precision) {
                Ok(v1::DType::DtypeUnspecified) => v1::DType::F32,
                Ok(d) => d,
                // A number this client does not know: kept distinct from every known one.
                Err(_) => v1::DType::DtypeUnspecified,
            },
            sequence_model,
            max_seq_len,
            tokenizer_fingerprint,
            outputs: outputs.into_iter().map(|o| (o.name, o.shape)).collect(),
        }
    }
}

impl TeacherInfo {
    /// The precision of the teacher's forward pass as `teacher-server --precision` spells it
    /// (`f32`, `bf16`, `f16`).
    pub fn precision_name(&self) -> &'static str {
        codec::dtype_name(self.precision)
    }

    /// The first 12 hex digits of the weights' fingerprint (for messages).
    pub fn short_fingerprint(&self) -> &str {
        &self.fingerprint[..self.fingerprint.len().min(12)]
    }

    /// Checks the teacher against our data and student, before any training: input dtype and
    /// per-sample shape (the data is `f32`; token sequences `i64 [S]` need a sequence model
    /// taking S tokens), number of logits = classes (a language model's vocabulary), the batch
    /// size, for token data the tokenizer (both fingerprints known and different: refused), a
    /// `--hint` output, and at least `--top-k` logits.
    ///
    /// # Errors
    /// [`ClientError::Incompatible`] naming the first mismatch, with both values.
    pub fn check(&self, url: &str, expect: &Expect) -> Result<(), ClientError> {
        let bad = |what, teacher: String, side, ours: String| ClientError::Incompatible {
            url: url.to_string(),
            what,
            teacher,
            side,
            ours,
        };
        self.check_input(&bad, expect)?;
        if self.num_logits != expect.num_classes {
            return Err(bad(
                if expect.tokens {
                    "vocabulary size (logits)"
                } else {
                    "number of classes (logits)"
                },
                self.num_logits.to_string(),
                "the data and student",
                expect.num_classes.to_string(),
            ));
        }
        if self.max_batch_size > 0 && expect.batch_size > self.max_batch_size as usize {
            return Err(bad(
                "maximum batch size",
                self.max_batch_size.to_string(),
                "--batch-size",
                expect.batch_size.to_string(),
            ));
        }
        if let Some(name) = &expect.hint_output
            && !self.outputs.iter().any(|(n, _)| n == name)
        {
            let have: Vec<String> = self
                .outputs
                .iter()
                .map(|(n, shape)| format!("{n} {shape:?}"))
                .collect();
            return Err(bad(
                "named outputs",
                if have.is_empty() {
                    "none (a classifier with one output, or a server older than named outputs)"
                        .into()
                } else {
                    have.join(", ")
                },
                "--hint",
                format!("an output named {name}"),
            ));
        }
        if i64::from(expect.top_k) > self.num_logits {
            return Err(bad(
                "number of logits (--top-k must not exceed it)",
                self.num_logits.to_string(),
                "--top-k",
                expect.top_k.to_string(),
            ));
        }
        Ok(())
    }

    /// The input half of [`TeacherInfo::check`]: a sequence model taking the data's token
    /// sequences (with the data's tokenizer), or a classifier of its `f32` samples.
    fn check_input(
        &self,
        bad: &dyn Fn(&'static str, String, &'static str, String) -> ClientError,
        expect: &Expect,
    ) -> Result<(), ClientError> {
        let sample_shape = expect.sample_shape.as_slice();
        if expect.tokens {
            if !self.sequence_model {
                return Err(bad(
                    "kind of model",
                    format!(
                        "a classifier of {:?} {} inputs",
                        self.input_shape,
                        codec::dtype_name(self.input_dtype)
                    ),
                    "the data",
                    format!("token sequences {sample_shape:?} (a sequence model is needed)"),
                ));
            }
            let seq = sample_shape.first().copied().unwrap_or(0);
            if seq > self.max_seq_len {
                return Err(bad(
                    "longest sequence (max_seq_len)",
                    self.max_seq_len.to_string(),
                    "the data's sequence length",
                    seq.to_string(),
                ));
            }
            if let Some(ours) = &expect.tokenizer_fingerprint
                && !self.tokenizer_fingerprint.is_empty()
                && *ours != self.tokenizer_fingerprint
            {
                return Err(bad(
                    "tokenizer fingerprint (SHA-256 of tokenizer.json)",
                    self.tokenizer_fingerprint.clone(),
                    "the data's tokenizer",
                    ours.clone(),
                ));
            }
        } else if self.sequence_model {
            return Err(bad(
                "kind of model",
                format!(
                    "a sequence model (token ids up to {} long)",
                    self.max_seq_len
                ),
                "the data",
                format!("{sample_shape:?} f32 samples (a classifier is needed)"),
            ));
        } else {
            if self.input_dtype != v1::DType::F32 {
                return Err(bad(
                    "input dtype",
                    codec::dtype_name(self.input_dtype).into(),
                    "the data",
                    "f32".into(),
                ));
            }
            if self.input_shape != sample_shape
                && !(expect.image_views && self.input_shape.len() == 3)
            {
                return Err(bad(
                    "per-sample input shape",
                    format!("{:?}", self.input_shape),
                    "the data",
                    format!("{sample_shape:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// The first difference between a replica's `ModelInfo` (`got`) and its group's reference that
/// makes the replica unfit to stand in for it, if any: the weights fingerprint, the input shape
/// and dtype, the number of logits, the precision of the forward pass (a bf16 replica's logits
/// differ from an f32 one's in the third significant digit). The message names both values.
///
/// Not compared, by design: the name and version (labels), and what differs per process or
/// machine (`max_batch_size`, `device`, `max_message_bytes`, `instance_id`).
pub(crate) fn inconsistency(reference: &TeacherInfo, got: &TeacherInfo) -> Option<String> {
    // Destructured so that a new field has to be sorted into compared or not compared.
    let TeacherInfo {
        name: _,
        version: _,
        fingerprint,
        input_dtype,
        input_shape,
        num_logits,
        max_batch_size: _,
        device: _,
        max_message_bytes: _,
        instance_id: _,
        precision,
        sequence_model,
        max_seq_len,
        tokenizer_fingerprint,
        // What the model returns besides its logits follows from the weights (fingerprint).
        outputs: _,
    } = got;
    if *fingerprint != reference.fingerprint {
        return Some(format!(
            "fingerprint {fingerprint} differs from the group's {}",
            reference.fingerprint
        ));
    }
    if *input_shape != reference.input_shape || *input_dtype != reference.input_dtype {
        return Some(format!(
            "input {input_shape:?} {} differs from the group's {:?} {} (fingerprints {fingerprint} and {})",
            codec::dtype_name(*input_dtype),
            reference.input_shape,
            codec::dtype_name(reference.input_dtype),
            reference.fingerprint
        ));
    }
    if *num_logits != reference.num_logits {
        return Some(format!(
            "{num_logits} logits differ from the group's {} (fingerprints {fingerprint} and {})",
            reference.num_logits, reference.fingerprint
        ));
    }
    if *precision != reference.precision {
        return Some(format!(
            "precision {} differs from the group's {} (teacher-server --precision; same fingerprint {fingerprint})",
            known_precision_name(*precision),
            known_precision_name(reference.precision)
        ));
    }
    if (*sequence_model, *max_seq_len) != (reference.sequence_model, reference.max_seq_len) {
        return Some(format!(
            "sequence model {sequence_model} (max_seq_len {max_seq_len}) differs from the group's {} ({})",
            reference.sequence_model, reference.max_seq_len
        ));
    }
    if *tokenizer_fingerprint != reference.tokenizer_fingerprint {
        return Some(format!(
            "tokenizer fingerprint {tokenizer_fingerprint:?} differs from the group's {:?}",
            reference.tokenizer_fingerprint
        ));
    }
    None
}

/// `f32`, `bf16`, ... as `--precision` spells it; `unknown` for a dtype number this client does
/// not know.
fn known_precision_name(d: v1::DType) -> &'static str {
    match d {
        v1::DType::DtypeUnspecified => "unknown",
        d => codec::dtype_name(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> TeacherInfo {
        TeacherInfo {
            name: "cnn".into(),
            version: "1".into(),
            fingerprint: "ab".into(),
            input_dtype: v1::DType::F32,
            input_shape: vec![1, 28, 28],
            num_logits: 10,
            max_batch_size: 256,
            device: "cpu".into(),
            max_message_bytes: 0,
            instance_id: String::new(),
            precision: v1::DType::F32,
            sequence_model: false,
            max_seq_len: 0,
            tokenizer_fingerprint: String::new(),
            outputs: vec![("0".into(), vec![10]), ("1".into(), vec![64])],
        }
    }

    fn expect(sample_shape: &[i64], num_classes: i64, batch_size: usize) -> Expect {
        Expect {
            sample_shape: sample_shape.to_vec(),
            num_classes,
            batch_size,
            tokens: false,
            tokenizer_fingerprint: None,
            hint_output: None,
            top_k: 0,
            image_views: false,
        }
    }

    #[test]
    fn a_language_model_checks_kind_length_vocabulary_and_tokenizer() {
        let lm = TeacherInfo {
            input_dtype: v1::DType::I64,
            input_shape: vec![256],
            num_logits: 8192,
            sequence_model: true,
            max_seq_len: 256,
            tokenizer_fingerprint: "aa".into(),
            ..info()
        };
        let tokens = |seq: i64, vocab: i64, tok: Option<&str>| Expect {
            tokens: true,
            tokenizer_fingerprint: tok.map(str::to_string),
            hint_output: None,
            ..expect(&[seq], vocab, 16)
        };
        lm.check("u", &tokens(128, 8192, Some("aa"))).unwrap();
        lm.check("u", &tokens(256, 8192, None)).unwrap();
        let e = lm
            .check("u", &tokens(128, 8192, Some("bb")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tokenizer") && e.contains("aa") && e.contains("bb"),
            "{e}"
        );
        let e = lm
            .check("u", &tokens(257, 8192, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_seq_len") && e.contains("257"), "{e}");
        let e = lm
            .check("u", &tokens(128, 4096, None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vocabulary") && e.contains("8192") && e.contains("4096"),
            "{e}"
        );
        let e = info()
            .check("u", &tokens(128, 10, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a sequence model is needed"), "{e}");
        let e = lm
            .check("u", &expect(&[256], 8192, 16))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a classifier is needed"), "{e}");
    }

    #[test]
    fn model_info_check_names_the_mismatch() {
        let i = info();
        i.check("u", &expect(&[1, 28, 28], 10, 128)).unwrap();
        let e = i
            .check("u", &expect(&[1, 28, 28], 5, 128))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("number of classes") && e.contains("10") && e.contains('5'),
            "{e}"
        );
        let e = i
            .check("u", &expect(&[784], 10, 128))
            .unwrap_err()
            .to_string();
        assert!(e.contains("input shape"), "{e}");
        let e = i
            .check("u", &expect(&[1, 28, 28], 10, 512))
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch size"), "{e}");
        let mut f16 = info();
        f16.input_dtype = v1::DType::F16;
        assert!(
            f16.check("u", &expect(&[1, 28, 28], 10, 1))
                .unwrap_err()
                .to_string()
                .contains("dtype")
        );
    }

    #[test]
    fn a_top_k_above_the_teachers_logits_is_refused_naming_both() {
        let i = info();
        let k = |top_k| Expect {
            top_k,
            ..expect(&[1, 28, 28], 10, 128)
        };
        i.check("u", &k(10)).unwrap();
        let e = i.check("u", &k(11)).unwrap_err().to_string();
        assert_eq!(
            e,
            "teacher at u does not fit: number of logits (--top-k must not exceed it): teacher \
             has 10, --top-k has 11"
        );
    }

    #[test]
    fn inconsistency_names_both_fingerprints_and_ignores_per_process_fields() {
        let fp = |f: &str| TeacherInfo {
            fingerprint: f.into(),
            ..info()
        };
        assert_eq!(inconsistency(&fp("aa"), &fp("aa")), None);
        let why = inconsistency(&fp("aa"), &fp("bb")).unwrap();
        assert!(why.contains("aa") && why.contains("bb"), "{why}");
        let other = TeacherInfo {
            num_logits: 5,
            ..fp("aa")
        };
        assert!(inconsistency(&fp("aa"), &other).unwrap().contains("logits"));
        let other = TeacherInfo {
            input_shape: vec![784],
            ..fp("aa")
        };
        assert!(inconsistency(&fp("aa"), &other).unwrap().contains("input"));
        // Replicas differ in these by design.
        let other = TeacherInfo {
            instance_id: "another-process".into(),
            device: "cuda:1".into(),
            max_batch_size: 64,
            max_message_bytes: 1 << 20,
            ..fp("aa")
        };
        assert_eq!(inconsistency(&fp("aa"), &other), None);
    }

    #[test]
    fn a_replica_of_another_precision_is_refused_naming_both() {
        let bf16 = TeacherInfo {
            precision: v1::DType::Bf16,
            ..info()
        };
        let why = inconsistency(&info(), &bf16).unwrap();
        assert!(
            why.contains("precision bf16") && why.contains("group's f32"),
            "{why}"
        );
        let why = inconsistency(&bf16, &info()).unwrap();
        assert!(
            why.contains("precision f32") && why.contains("group's bf16"),
            "{why}"
        );
        assert_eq!(inconsistency(&bf16, &bf16.clone()), None);
    }

    #[test]
    fn precision_from_model_info_defaults_to_f32_for_old_servers() {
        let wire = |precision: i32| v1::ModelInfo {
            precision,
            ..v1::ModelInfo::default()
        };
        let old = TeacherInfo::from(wire(v1::DType::DtypeUnspecified as i32));
        assert_eq!(old.precision, v1::DType::F32);
        assert_eq!(inconsistency(&info(), &old.clone().with_basics()), None);
        assert_eq!(
            TeacherInfo::from(wire(v1::DType::Bf16 as i32)).precision,
            v1::DType::Bf16
        );
        assert_eq!(
            TeacherInfo::from(wire(v1::DType::F16 as i32)).precision,
            v1::DType::F16
        );
        let future = TeacherInfo::from(wire(99));
        let why = inconsistency(&info(), &future.with_basics()).unwrap();
        assert!(why.contains("precision unknown"), "{why}");
    }

    impl TeacherInfo {
        /// This info with [`info()`]'s fingerprint, shapes and logits, keeping its precision.
        fn with_basics(self) -> TeacherInfo {
            TeacherInfo {
                precision: self.precision,
                ..info()
            }
        }
    }
}
