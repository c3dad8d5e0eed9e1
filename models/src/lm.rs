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
//! For sampling, [`KvCache`] holds each block's attention keys and values of the positions
//! decoded so far, so that each new token costs one forward of that token (see
//! [`crate::generate`]).
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

/// Scaled dot-product attention (Vaswani et al. 2017, eq. 1) of `q` over `k`, `v` (each
/// `[B, heads, ·, d/heads]`): with `mask` (bool, true = may attend) or, when `causal`, the lower
/// triangle; neither: every key.
fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    causal: bool,
) -> Result<Tensor, ModelError> {
    Ok(Tensor::f_scaled_dot_product_attention(
        q,
        k,
        v,
        mask,
        0.0,
        causal && mask.is_none(),
        None::<f64>,
        false,
    )?)
}

/// The keys and values of the positions a language model has already decoded, for
/// incremental decoding ([`crate::Network::forward_cached`]): per block, keys and values
/// `[B, heads, t, d/heads]` (the model's dtype, on its device) of the `t` = [`KvCache::len`]
/// positions seen so far. Start each batch of sequences with an empty cache
/// ([`KvCache::new`]); each cached step appends its new positions. Memory: `2 · L · B · t · d`
/// values.
#[derive(Debug, Default)]
pub struct KvCache {
    /// Per block: (keys, values), each `[B, heads, t, d/heads]`; empty before the first step.
    layers: Vec<(Tensor, Tensor)>,
    /// Positions cached, `t`: the next token ids take positions `t..`.
    len: i64,
    /// Rows `B` of the cached sequences (meaningful once `len > 0`).
    batch: i64,
}

impl KvCache {
    /// An empty cache: the next step starts at position 0.
    pub fn new() -> KvCache {
        KvCache::default()
    }

    /// Positions already cached, `t`.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether no position is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
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

/// The decoder. `forward` maps token ids `i64 [B, S]` (S ≤ `max_len`) to logits `f32 [B, S, V]`;
/// `forward_cached` does the same a few positions at a time, keeping the earlier positions' keys
/// and values in a [`KvCache`].
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
        let x = self.embed(ids, 0)?;
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
        self.decode(x, |_, q, k, v| {
            attention(&q, &k, &v, attend.as_ref(), attend.is_none())
        })
    }

    /// One step of incremental decoding: the logits `f32 [B, n, V]` of `n` new token ids `ids`
    /// (`i64 [B, n]`, n ≥ 1) at positions `t..t+n`, where `t` = [`KvCache::len`] positions are
    /// already in `cache`; appends their keys and values to it. New token `i` attends to the
    /// cached keys and to new tokens `0..=i` (keys `0..=t+i`), so the logits are those
    /// [`Lm::forward`] gives at positions `t..t+n` of the whole sequence (every token real), up
    /// to floating-point rounding (the cached step runs other attention kernels).
    ///
    /// # Errors
    /// [`ModelError::InputShape`] for a rank other than 2, `n < 1`, `t + n > max_len`, a batch
    /// other than the cache's, or a cache filled by a model with another number of blocks;
    /// libtorch errors (e.g. a token id ≥ V). On error the cache is unchanged.
    pub(crate) fn forward_cached(
        &self,
        ids: &Tensor,
        cache: &mut KvCache,
    ) -> Result<Tensor, ModelError> {
        let size = ids.size();
        let [b, n] = size[..] else {
            return Err(self.shape_error(size));
        };
        let t = cache.len;
        if n < 1 || t + n > self.max_len {
            return Err(ModelError::InputShape {
                arch: self.name(),
                expected: format!(
                    "new token ids [batch, n] with n >= 1 and at most max_len = {} positions in \
                     all: {t} cached + {n} new = {}",
                    self.max_len,
                    t + n
                ),
                got: size,
            });
        }
        if t > 0 && (cache.batch != b || cache.layers.len() != self.blocks.len()) {
            return Err(ModelError::InputShape {
                arch: self.name(),
                expected: format!(
                    "new token ids for the cache's {} rows (a cache of {} blocks; this model has {})",
                    cache.batch,
                    cache.layers.len(),
                    self.blocks.len()
                ),
                got: size,
            });
        }
        let x = self.embed(ids, t)?;
        // n = 1: the new token attends to every key, no mask. t = 0: plain causal attention.
        // Otherwise new token i (row i) attends to keys 0..=t+i: the lower triangle from t.
        let mask = if n > 1 && t > 0 {
            Some(Tensor::f_ones([n, t + n], (Kind::Bool, ids.device()))?.f_tril(t)?)
        } else {
            None
        };
        let causal = n > 1 && t == 0;
        let mut fresh: Vec<(Tensor, Tensor)> = Vec::with_capacity(self.blocks.len());
        let logits = self.decode(x, |i, q, k, v| {
            let (k, v) = match cache.layers.get(i).filter(|_| t > 0) {
                Some((ck, cv)) => (Tensor::f_cat(&[ck, &k], 2)?, Tensor::f_cat(&[cv, &v], 2)?),
                None => (k.f_contiguous()?, v.f_contiguous()?),
            };
            let a = attention(&q, &k, &v, mask.as_ref(), causal)?;
            fresh.push((k, v));
            Ok(a)
        })?;
        cache.layers = fresh;
        cache.len = t + n;
        cache.batch = b;
        Ok(logits)
    }

    /// The device of the weights.
    pub(crate) fn device(&self) -> tch::Device {
        self.tok.ws.device()
    }

    /// Token plus position embeddings `f32 [B, n, d]` of `ids` (`i64 [B, n]`) at positions
    /// `start..start + n`.
    fn embed(&self, ids: &Tensor, start: i64) -> Result<Tensor, ModelError> {
        let n = ids.size()[1];
        let positions = Tensor::f_arange_start(start, start + n, (Kind::Int64, ids.device()))?;
        let embed = |w: &Tensor, i: &Tensor| Tensor::f_embedding(w, i, -1, false, false);
        Ok(embed(&self.tok.ws, ids)?.f_add(&embed(&self.pos.ws, &positions)?.f_unsqueeze(0)?)?)
    }

    /// The blocks, final LayerNorm and tied output layer over embeddings `x` (`f32 [B, n, d]`):
    /// logits `f32 [B, n, V]`. `attend(block, q, k, v)` computes each block's attention from
    /// the new positions' queries, keys and values (each `[B, heads, n, d/heads]`) and returns
    /// `[B, heads, n, d/heads]`.
    fn decode(
        &self,
        mut x: Tensor,
        mut attend: impl FnMut(usize, Tensor, Tensor, Tensor) -> Result<Tensor, ModelError>,
    ) -> Result<Tensor, ModelError> {
        let size = x.size();
        let (b, s) = (size[0], size[1]);
        let (h, dh) = (self.cfg.heads, self.cfg.d / self.cfg.heads);
        for (i, blk) in self.blocks.iter().enumerate() {
            let y = x.apply(&blk.norm1);
            let qkv = y
                .f_matmul(&blk.in_proj_weight.f_tr()?)?
                .f_add(&blk.in_proj_bias)?;
            let heads = |t: &Tensor| -> Result<Tensor, tch::TchError> {
                t.f_view([b, s, h, dh])?.f_transpose(1, 2)
            };
            let parts = qkv.f_chunk(3, -1)?;
            let a = attend(i, heads(&parts[0])?, heads(&parts[1])?, heads(&parts[2])?)?
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
