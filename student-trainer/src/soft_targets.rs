//! The hand-off between the teachers and training: what a run asks the teachers for
//! ([`TargetRequest`], [`WireDType`]) and what comes back for each batch ([`TeacherBatch`] with its
//! [`SoftTargets`]: dense logit rows, or the top-k of each row with the log-sum-exp of the rest, a
//! compact form that stays exact at any temperature; see `SparseLogits` in
//! `proto/distill/v1/teacher.proto`).
//!
//! One row per sample, so a batch's targets can be cut into rows ([`SoftTargets::select`]) and
//! put back together ([`SoftTargets::cat`]) whatever their form. Nothing here knows gRPC: the
//! conversion to and from wire messages is `teachers::wire`'s.

use tch::{Device, Tensor};

/// The dtype the teacher's logits travel in (`distill --wire`); the student converts them to
/// `f32` on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum WireDType {
    /// 4 bytes per logit, exact.
    #[default]
    F32,
    /// IEEE half precision: 2 bytes, about 3 significant digits, largest value 65504.
    F16,
    /// bfloat16: 2 bytes, about 2–3 significant digits, the range of f32.
    Bf16,
}

impl std::fmt::Display for WireDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WireDType::F32 => "f32",
            WireDType::F16 => "f16",
            WireDType::Bf16 => "bf16",
        })
    }
}

/// What a run asks the teacher for.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetRequest {
    /// The logits' dtype on the wire.
    pub wire: WireDType,
    /// `0`: dense rows; `k > 0`: the top k of each row with the tail's log-sum-exp.
    pub top_k: u32,
    /// Softmax temperature `T` (> 0) at which the teacher computes the tail of top-k rows.
    pub temperature: f64,
    /// A named teacher output wanted beside the logits (`distill --hint`), in the same wire
    /// dtype.
    pub hint_output: Option<String>,
}

impl TargetRequest {
    /// Dense `f32` logits (the tail's temperature is then unused; sent as 1).
    pub fn dense_f32() -> TargetRequest {
        TargetRequest {
            wire: WireDType::F32,
            top_k: 0,
            temperature: 1.0,
            hint_output: None,
        }
    }
}

/// Teacher soft targets for one scheduled batch, as the client hands them to the training loop.
#[derive(Debug)]
pub struct TeacherBatch {
    /// Id of the request on the teacher stream that produced these logits.
    pub batch_id: u64,
    /// Epoch of the batch.
    pub epoch: u64,
    /// Position of the batch within its epoch.
    pub index: usize,
    /// Dataset indices of the samples, in the order of the rows of `targets`.
    pub indices: Vec<i64>,
    /// The soft targets, one row per sample, on the CPU: dense `f32 [indices.len(),
    /// num_classes]` logits (for a mixed ensemble: the mixture's `T · log p`, see
    /// `ensemble::mix`) or top-k rows.
    pub targets: SoftTargets,
    /// The teacher's hint feature for `distill --hint`, `f32 [indices.len(), ...]` on the CPU.
    pub hint: Option<Tensor>,
    /// The teacher's log-probabilities at `T` of the ids the batch's
    /// [`crate::schedule::ViewedBatch::gather_ids`] named, `f32 [indices.len(), S, m]` on the
    /// CPU (exact whatever the wire dtype).
    pub gathered: Option<Tensor>,
    /// Names of the groups that answered (one when an ensemble samples).
    pub groups: Vec<String>,
    /// URL of the replica that answered (for a mixed ensemble: one per group, joined by `+`).
    pub replica: String,
    /// The batch's `batch` span, opened at its first send; the training loop enters it for the
    /// step that uses these targets, and it closes when the batch is dropped after that step.
    pub span: tracing::Span,
}

/// Soft targets of `B` samples.
#[derive(Debug)]
pub enum SoftTargets {
    /// Teacher logits, `f32 [B, C]` (for a mixed ensemble: `T · log p`, see
    /// [`crate::ensemble`]).
    Dense(Tensor),
    /// The teacher's top-k logits of each row and the log-sum-exp of the rest at the run's
    /// temperature `T`.
    Sparse {
        /// `i64 [B, k]`: class indices of the k largest logits.
        indices: Tensor,
        /// `f32 [B, k]`: the raw logits (not divided by `T`) at `indices`.
        values: Tensor,
        /// `f32 [B]`: `log Σ_{c ∉ indices} exp(z_c / T)`; `-inf` when k = C.
        tail_logsumexp: Tensor,
    },
}

impl SoftTargets {
    /// Number of rows (samples).
    pub fn rows(&self) -> i64 {
        let t = match self {
            SoftTargets::Dense(t) => t,
            SoftTargets::Sparse { values, .. } => values,
        };
        t.size().first().copied().unwrap_or(0)
    }

    /// Whether these are top-k targets.
    pub fn is_sparse(&self) -> bool {
        matches!(self, SoftTargets::Sparse { .. })
    }

    /// The rows named by `rows` (`i64 [n]`, on the targets' device), in that order.
    ///
    /// # Errors
    /// libtorch's error for an index out of range.
    pub fn select(&self, rows: &Tensor) -> Result<SoftTargets, tch::TchError> {
        Ok(match self {
            SoftTargets::Dense(t) => SoftTargets::Dense(t.f_index_select(0, rows)?),
            SoftTargets::Sparse {
                indices,
                values,
                tail_logsumexp,
            } => SoftTargets::Sparse {
                indices: indices.f_index_select(0, rows)?,
                values: values.f_index_select(0, rows)?,
                tail_logsumexp: tail_logsumexp.f_index_select(0, rows)?,
            },
        })
    }

    /// The rows of `parts`, one after the other. `None` for no parts.
    ///
    /// # Errors
    /// [`tch::TchError::Shape`] when dense and sparse parts are mixed; libtorch's error for
    /// parts of different widths.
    pub fn cat(parts: &[SoftTargets]) -> Result<Option<SoftTargets>, tch::TchError> {
        let Some(first) = parts.first() else {
            return Ok(None);
        };
        if parts.iter().any(|p| p.is_sparse() != first.is_sparse()) {
            return Err(tch::TchError::Shape(
                "cannot concatenate dense and sparse soft targets".into(),
            ));
        }
        let cat = |ts: Vec<&Tensor>| Tensor::f_cat(&ts, 0);
        let mut dense = Vec::new();
        let (mut indices, mut values, mut tails) = (Vec::new(), Vec::new(), Vec::new());
        for p in parts {
            match p {
                SoftTargets::Dense(t) => dense.push(t),
                SoftTargets::Sparse {
                    indices: i,
                    values: v,
                    tail_logsumexp: t,
                } => {
                    indices.push(i);
                    values.push(v);
                    tails.push(t);
                }
            }
        }
        Ok(Some(if first.is_sparse() {
            SoftTargets::Sparse {
                indices: cat(indices)?,
                values: cat(values)?,
                tail_logsumexp: cat(tails)?,
            }
        } else {
            SoftTargets::Dense(cat(dense)?)
        }))
    }

    /// The same targets on `device`.
    ///
    /// # Errors
    /// libtorch's error if the copy fails.
    pub fn to_device(&self, device: Device) -> Result<SoftTargets, tch::TchError> {
        Ok(match self {
            SoftTargets::Dense(t) => SoftTargets::Dense(t.f_to_device(device)?),
            SoftTargets::Sparse {
                indices,
                values,
                tail_logsumexp,
            } => SoftTargets::Sparse {
                indices: indices.f_to_device(device)?,
                values: values.f_to_device(device)?,
                tail_logsumexp: tail_logsumexp.f_to_device(device)?,
            },
        })
    }

    /// Dense targets of `f32` logits `[B, C]`.
    pub fn dense(logits: Tensor) -> SoftTargets {
        SoftTargets::Dense(logits)
    }

    /// The dense logits, if these are dense.
    pub fn as_dense(&self) -> Option<&Tensor> {
        match self {
            SoftTargets::Dense(t) => Some(t),
            SoftTargets::Sparse { .. } => None,
        }
    }

    /// A copy sharing storage (tensors are reference-counted).
    pub fn shallow_clone(&self) -> SoftTargets {
        match self {
            SoftTargets::Dense(t) => SoftTargets::Dense(t.shallow_clone()),
            SoftTargets::Sparse {
                indices,
                values,
                tail_logsumexp,
            } => SoftTargets::Sparse {
                indices: indices.shallow_clone(),
                values: values.shallow_clone(),
                tail_logsumexp: tail_logsumexp.shallow_clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn sparse(rows: i64) -> SoftTargets {
        SoftTargets::Sparse {
            indices: Tensor::arange(rows * 2, (Kind::Int64, Device::Cpu)).reshape([rows, 2]),
            values: Tensor::arange(rows * 2, (Kind::Float, Device::Cpu)).reshape([rows, 2]),
            tail_logsumexp: Tensor::arange(rows, (Kind::Float, Device::Cpu)),
        }
    }

    fn flat(t: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
    }

    #[test]
    fn select_and_cat_act_on_every_part() {
        let s = sparse(3);
        let picked = s.select(&Tensor::from_slice(&[2i64, 0])).unwrap();
        let SoftTargets::Sparse {
            indices,
            values,
            tail_logsumexp,
        } = &picked
        else {
            panic!("sparse stays sparse")
        };
        assert_eq!(flat(indices), [4.0, 5.0, 0.0, 1.0]);
        assert_eq!(flat(values), [4.0, 5.0, 0.0, 1.0]);
        assert_eq!(flat(tail_logsumexp), [2.0, 0.0]);
        let joined = SoftTargets::cat(&[picked, sparse(1)]).unwrap().unwrap();
        assert_eq!(joined.rows(), 3);
        let SoftTargets::Sparse { tail_logsumexp, .. } = &joined else {
            panic!("sparse")
        };
        assert_eq!(flat(tail_logsumexp), [2.0, 0.0, 0.0]);
        let d = SoftTargets::dense(Tensor::ones([2, 3], (Kind::Float, Device::Cpu)));
        assert_eq!(
            SoftTargets::cat(&[d.shallow_clone(), d.shallow_clone()])
                .unwrap()
                .unwrap()
                .rows(),
            4
        );
        let e = SoftTargets::cat(&[d, sparse(1)]).unwrap_err().to_string();
        assert!(
            e.contains("cannot concatenate dense and sparse soft targets"),
            "{e}"
        );
        assert!(SoftTargets::cat(&[]).unwrap().is_none());
    }
}
