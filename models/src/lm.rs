//! The built-in decoder-only language model (`lm:layers=L,d=D,heads=H`).
//!
//! The family of the reference loop `kd_lm_pytorch.py` (GPT-2-style, Radford et al. 2019):
//! learned token and position embeddings, `L` pre-norm blocks as PyTorch's
//! `nn.TransformerEncoderLayer(d, heads, 4·d, dropout=0, norm_first=True, activation="gelu")`
//!
//! ```text
//! x = x + SelfAttention(LayerNorm₁(x))      causal, `heads` heads of d/heads each
//! x = x + Linear₂(GELU(Linear₁(LayerNorm₂(x))))
//! ```
//!
//! a final LayerNorm, and an output layer tied to the token embedding (`logits = h · Eᵀ`, no
//! bias; Press & Wolf 2017). There is no dropout, so training is deterministic on the CPU and a
//! resumed run is exact.
//!
//! Variable names are those of the reference module's `state_dict()` (`tok.weight`,
//! `pos.weight`, `blocks.layers.{i}.self_attn.in_proj_weight`, `…linear1.weight`, `…norm1.bias`,
//! `norm.weight`, …), so its weights load here and ours load there. Initialisation follows
//! PyTorch's: embeddings N(0, 0.02²), the attention's input projection Xavier-uniform with zero
//! biases, linear layers Kaiming-uniform, LayerNorms ones and zeros.

use crate::ModelError;
use tch::nn::{self, Init};
use tch::{Kind, Tensor};

/// Hyper-parameters of the decoder (`lm:layers=L,d=D,heads=H`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LmConfig {
    /// Number of blocks `L` (≥ 1).
    pub layers: i64,
    /// Model width `d` (≥ 1, a multiple of `heads`).
    pub d: i64,
    /// Attention heads (≥ 1).
    pub heads: i64,
}

impl LmConfig {
    /// The configuration when `lm` is given without parameters: 2 blocks of width 128, 4 heads.
    pub const DEFAULT: LmConfig = LmConfig {
        layers: 2,
        d: 128,
        heads: 4,
    };
}

/// One pre-norm block.
#[derive(Debug)]
struct Block {
    norm1: nn::LayerNorm,
    in_proj_weight: Tensor,
    in_proj_bias: Tensor,
    out_proj: nn::Linear,
    norm2: nn::LayerNorm,
    linear1: nn::Linear,
    linear2: nn::Linear,
}

/// The decoder. `forward` maps token ids `i64 [B, S]` (S ≤ `max_len`) to logits `f32 [B, S, V]`.
#[derive(Debug)]
pub(crate) struct Lm {
    cfg: LmConfig,
    vocab: i64,
    max_len: i64,
    tok: nn::Embedding,
    pos: nn::Embedding,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
}

impl Lm {
    /// Builds the variables under `p` for a vocabulary of `vocab` tokens and sequences of at
    /// most `max_len` tokens.
    ///
    /// # Errors
    /// [`ModelError::InputShape`] if `d` is not a multiple of `heads` or a size is < 1.
    pub(crate) fn new(
        p: &nn::Path<'_>,
        cfg: LmConfig,
        vocab: i64,
        max_len: i64,
    ) -> Result<Lm, ModelError> {
        if cfg.layers < 1 || cfg.d < 1 || cfg.heads < 1 || cfg.d % cfg.heads != 0 {
            return Err(ModelError::UnknownArch {
                got: format!(
                    "lm:layers={},d={},heads={} (expected layers, d, heads >= 1 and d a multiple of heads)",
                    cfg.layers, cfg.d, cfg.heads
                ),
            });
        }
        if vocab < 1 || max_len < 1 {
            return Err(ModelError::InputShape {
                arch: "lm".into(),
                expected: "[max_seq_len >= 1] and a vocabulary of >= 1 tokens".into(),
                got: vec![max_len, vocab],
            });
        }
        let d = cfg.d;
        let emb = nn::EmbeddingConfig {
            ws_init: Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
            ..Default::default()
        };
        let tok = nn::embedding(p / "tok", vocab, d, emb);
        let pos = nn::embedding(p / "pos", max_len, d, emb);
        let layers = p / "blocks" / "layers";
        // Xavier-uniform bound of a [3d, d] matrix: sqrt(6 / (fan_in + fan_out)).
        let xavier = (6.0 / (d + 3 * d) as f64).sqrt();
        let blocks = (0..cfg.layers)
            .map(|i| {
                let b = &layers / i;
                let attn = &b / "self_attn";
                Block {
                    norm1: nn::layer_norm(&b / "norm1", vec![d], Default::default()),
                    in_proj_weight: attn.var(
                        "in_proj_weight",
                        &[3 * d, d],
                        Init::Uniform {
                            lo: -xavier,
                            up: xavier,
                        },
                    ),
                    in_proj_bias: attn.zeros("in_proj_bias", &[3 * d]),
                    out_proj: nn::linear(
                        &attn / "out_proj",
                        d,
                        d,
                        nn::LinearConfig {
                            bs_init: Some(Init::Const(0.0)),
                            ..Default::default()
                        },
                    ),
                    norm2: nn::layer_norm(&b / "norm2", vec![d], Default::default()),
                    linear1: nn::linear(&b / "linear1", d, 4 * d, Default::default()),
                    linear2: nn::linear(&b / "linear2", 4 * d, d, Default::default()),
                }
            })
            .collect();
        let norm = nn::layer_norm(p / "norm", vec![d], Default::default());
        Ok(Lm {
            cfg,
            vocab,
            max_len,
            tok,
            pos,
            blocks,
            norm,
        })
    }

    /// Logits `f32 [B, S, V]` of token ids `ids` (`i64 [B, S]`, 1 ≤ S ≤ max_len, each in
    /// `0..V`). `mask` (`[B, S]`, any integer or bool kind, nonzero = real token) hides padding
    /// from attention; without it every token is real. Position `i` attends to the real
    /// positions `j ≤ i` (and always to itself, so a padded row stays finite): with right
    /// padding, a real position's logits do not depend on the padding at all.
    ///
    /// # Errors
    /// [`ModelError::InputShape`] for a rank other than 2, a sequence longer than `max_len`, or
    /// a mask of another shape; libtorch errors (e.g. a token id ≥ V).
    pub(crate) fn forward(
        &self,
        ids: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let size = ids.size();
        let [b, s] = size[..] else {
            return Err(self.shape_error(size));
        };
        if s < 1 || s > self.max_len {
            return Err(self.shape_error(size));
        }
        if let Some(m) = mask
            && m.size() != size
        {
            return Err(ModelError::InputShape {
                arch: self.name(),
                expected: format!("an attention mask of the inputs' shape {size:?}"),
                got: m.size(),
            });
        }
        let device = ids.device();
        let positions = Tensor::f_arange(s, (Kind::Int64, device))?;
        let embed = |w: &Tensor, i: &Tensor| Tensor::f_embedding(w, i, -1, false, false);
        let mut x =
            embed(&self.tok.ws, ids)?.f_add(&embed(&self.pos.ws, &positions)?.f_unsqueeze(0)?)?;
        // bool [B, 1, S, S], true = may attend: causal, real keys, and always the diagonal.
        let attend = match mask {
            None => None,
            Some(m) => {
                let causal = Tensor::f_ones([s, s], (Kind::Bool, device))?.f_tril(0)?;
                let eye = Tensor::f_eye(s, (Kind::Bool, device))?;
                let keys = m.f_ne(0)?.f_view([b, 1, 1, s])?;
                Some(keys.f_logical_or(&eye)?.f_logical_and(&causal)?)
            }
        };
        let (h, dh) = (self.cfg.heads, self.cfg.d / self.cfg.heads);
        for blk in &self.blocks {
            let y = x.apply(&blk.norm1);
            let qkv = y
                .f_matmul(&blk.in_proj_weight.f_tr()?)?
                .f_add(&blk.in_proj_bias)?;
            let heads = |t: &Tensor| -> Result<Tensor, tch::TchError> {
                t.f_view([b, s, h, dh])?.f_transpose(1, 2)
            };
            let parts = qkv.f_chunk(3, -1)?;
            let (q, k, v) = (heads(&parts[0])?, heads(&parts[1])?, heads(&parts[2])?);
            let a = Tensor::f_scaled_dot_product_attention(
                &q,
                &k,
                &v,
                attend.as_ref(),
                0.0,
                attend.is_none(),
                None::<f64>,
                false,
            )?
            .f_transpose(1, 2)?
            .f_contiguous()?
            .f_view([b, s, self.cfg.d])?;
            x = x.f_add(&a.apply(&blk.out_proj))?;
            let f = x
                .apply(&blk.norm2)
                .apply(&blk.linear1)
                .f_gelu("none")?
                .apply(&blk.linear2);
            x = x.f_add(&f)?;
        }
        Ok(x.apply(&self.norm).f_matmul(&self.tok.ws.f_tr()?)?)
    }

    /// `lm:layers=L,d=D,heads=H`.
    fn name(&self) -> String {
        format!(
            "lm:layers={},d={},heads={}",
            self.cfg.layers, self.cfg.d, self.cfg.heads
        )
    }

    fn shape_error(&self, got: Vec<i64>) -> ModelError {
        ModelError::InputShape {
            arch: self.name(),
            expected: format!(
                "token ids [batch, seq] with 1 <= seq <= {} (vocabulary {})",
                self.max_len, self.vocab
            ),
            got,
        }
    }
}
