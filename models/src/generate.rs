//! Autoregressive sampling from a student language model ([`Model::sample`]): the student
//! continues prompts with its current weights, without gradient, as on-policy distillation
//! needs (the teacher then scores the student's own continuations).
//!
//! Rows whose prompts differ in length are decoded in lockstep by position, so right padding and
//! absolute positions stay exact: the common prefix `0..min(prompt_lens)` is fed in one call,
//! then at each next position `t` a row whose prompt is longer than `t` takes its prompt token
//! (forced), a row still generating takes a sampled token, and a row that has ended takes `pad`.
//! Decoding stops when every row has ended (EOS or `max_new_tokens`).
//!
//! Cost, for a batch that ends at `S` positions:
//! - with a key/value cache (the built-in `lm`, [`SampleOptions::kv_cache`]): one forward of
//!   the prefix, then one forward of one token per row and step, each attending over the `t`
//!   cached positions: `O(S)` forwards, `O(S²)` attention work in all;
//! - without (a TorchScript student, or `kv_cache: false`): a full forward over the whole prefix
//!   for every new token, the last position's logits kept: `O(S)` forwards over up to `S`
//!   positions each, `O(S²)` token-positions and `O(S³)` attention work in all.
//!
//! Sampling (temperature and nucleus, Holtzman et al. 2020, "The Curious Case of Neural Text
//! Degeneration", §3.1) runs in `f32` on the model's device, drawing from libtorch's global
//! generator of that device: the caller seeds it with `tch::manual_seed` for reproducible draws.

use crate::{KvCache, Model, ModelError};
use tch::{Device, Kind, Tensor};

/// How to sample ([`Model::sample`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleOptions {
    /// Most tokens to generate per row (≥ 1), EOS included.
    pub max_new_tokens: i64,
    /// Softmax temperature (≥ 0): tokens are drawn from `softmax(logits / temperature)`; `0`
    /// takes the argmax (greedy decoding, no draw).
    pub temperature: f64,
    /// Nucleus sampling's `p`, in `(0, 1]`: only the smallest set of most probable tokens whose
    /// probability reaches `top_p` is kept (always ≥ 1 token), renormalised ([`top_p_filter`]);
    /// `1` keeps every token.
    pub top_p: f64,
    /// End-of-sequence id: a row stops after sampling it (the EOS is part of its completion).
    /// An id outside the vocabulary is never sampled, so rows then run to `max_new_tokens`.
    pub eos: i64,
    /// The id written after a row's end (right padding); in the vocabulary, as it is fed to the
    /// model for rows that have ended while others go on.
    pub pad: i64,
    /// Use the model's key/value cache when it has one ([`Model::has_kv_cache`]); `false`: a
    /// full forward over the prefix per new token (slower, the same tokens).
    pub kv_cache: bool,
}

/// What [`Model::sample`] generated.
#[derive(Debug)]
pub struct Generated {
    /// `i64 [B, S]` on the CPU: each row's prompt then its completion, right-padded with
    /// [`SampleOptions::pad`]; `S = max_b(prompt_lens[b] + completion_lens[b])`.
    pub tokens: Tensor,
    /// Each row's prompt length (as given).
    pub prompt_lens: Vec<i64>,
    /// Tokens generated per row, EOS included (`1..=max_new_tokens`): row `b`'s completion is
    /// `tokens[b, prompt_lens[b]..prompt_lens[b] + completion_lens[b]]`.
    pub completion_lens: Vec<i64>,
    /// Whether the row's completion ended with EOS (`false`: it hit `max_new_tokens`).
    pub ended: Vec<bool>,
}

/// Checks a temperature (finite, ≥ 0) and a nucleus `p` (in `(0, 1]`).
fn check_sampling(temperature: f64, top_p: f64) -> Result<(), ModelError> {
    if !(temperature.is_finite() && temperature >= 0.0) {
        return Err(ModelError::Sample(format!(
            "temperature {temperature}: expected a finite number >= 0 (0 = greedy)"
        )));
    }
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ModelError::Sample(format!(
            "top_p {top_p}: expected a number in (0, 1] (1 = every token)"
        )));
    }
    Ok(())
}

/// Nucleus (top-p) filtering (Holtzman et al. 2020, §3.1, eq. 2): along the last dimension of
/// `probs` (`[..., V]`, floating point, each row summing to 1), keeps the smallest set of most
/// probable tokens whose probability reaches `p` — token `i` in descending order is kept while
/// the mass of the tokens before it is `< p`, so the most probable token always is, and ties are
/// broken by the lower id — zeroes the others and renormalises. Same shape and dtype as
/// `probs`; `p = 1` returns `probs` unchanged. Masses are summed in `f64`.
///
/// # Errors
/// [`ModelError::Sample`] for `p` outside `(0, 1]`; libtorch errors.
pub fn top_p_filter(probs: &Tensor, p: f64) -> Result<Tensor, ModelError> {
    check_sampling(0.0, p)?;
    if p >= 1.0 {
        return Ok(probs.shallow_clone());
    }
    let (sorted, order) = probs.f_sort_stable(true, -1, true)?;
    let sorted64 = sorted.f_to_kind(Kind::Double)?;
    let before = sorted64.f_cumsum(-1, Kind::Double)?.f_sub(&sorted64)?;
    let keep_sorted = before.f_lt(p)?.f_to_kind(probs.kind())?;
    let keep = probs.f_zeros_like()?.f_scatter(-1, &order, &keep_sorted)?;
    let kept = probs.f_mul(&keep)?;
    Ok(kept.f_div(&kept.f_sum_dim_intlist(-1, true, probs.kind())?)?)
}

/// One token per row from `logits` (`[B, V]`, any floating dtype, computed in `f32`): the
/// argmax when `temperature` is 0 (the lowest id among ties), else a draw from
/// `softmax(logits / temperature)` filtered by [`top_p_filter`] with `top_p`, from libtorch's
/// global generator of `logits`' device. Returns `i64 [B]` on `logits`' device.
///
/// # Errors
/// [`ModelError::Sample`] for a temperature < 0 or not finite, `top_p` outside `(0, 1]`, or
/// logits of another rank; libtorch errors (e.g. NaN logits).
pub fn next_tokens(logits: &Tensor, temperature: f64, top_p: f64) -> Result<Tensor, ModelError> {
    check_sampling(temperature, top_p)?;
    if logits.dim() != 2 {
        return Err(ModelError::Sample(format!(
            "logits {:?}: expected [batch, vocab]",
            logits.size()
        )));
    }
    let logits = logits.f_to_kind(Kind::Float)?;
    if temperature == 0.0 {
        return Ok(logits.f_argmax(-1, false)?);
    }
    let probs = logits
        .f_div_scalar(temperature)?
        .f_softmax(-1, Kind::Float)?;
    let probs = top_p_filter(&probs, top_p)?;
    Ok(probs.f_multinomial(1, false)?.f_squeeze_dim(-1)?)
}

/// A checked sampling request: the prompts on the CPU.
struct Request {
    /// Row `b`'s prompt, `prompt_lens[b]` ids.
    prompts: Vec<Vec<i64>>,
    /// The shortest prompt's length: the prefix fed in one call.
    min_len: i64,
}

impl Request {
    /// Checks `model`, the prompts and `opts` (see [`Model::sample`]) and reads the prompts.
    fn new(
        model: &Model,
        prompts: &Tensor,
        prompt_lens: &[i64],
        opts: &SampleOptions,
    ) -> Result<Request, ModelError> {
        let spec = model.spec();
        let bad = |what: String| Err(ModelError::Sample(what));
        if !spec.arch.is_sequence_model() {
            return bad(format!("{} is not a language model", spec.arch));
        }
        check_sampling(opts.temperature, opts.top_p)?;
        if opts.max_new_tokens < 1 {
            return bad(format!(
                "max_new_tokens {}: expected >= 1",
                opts.max_new_tokens
            ));
        }
        if !(0..spec.num_classes).contains(&opts.pad) {
            return bad(format!(
                "pad id {} is outside the vocabulary 0..{}",
                opts.pad, spec.num_classes
            ));
        }
        let size = prompts.size();
        let [b, p] = size[..] else {
            return bad(format!("prompts {size:?}: expected [batch, prompt_len]"));
        };
        if b < 1 || prompts.is_floating_point() {
            return bad(format!(
                "prompts {size:?} of {:?}: expected integer token ids [batch >= 1, prompt_len]",
                prompts.kind()
            ));
        }
        if prompt_lens.len() as i64 != b || prompt_lens.iter().any(|&l| l < 1 || l > p) {
            return bad(format!(
                "prompt_lens {prompt_lens:?}: expected {b} lengths in 1..={p} (prompts {size:?})"
            ));
        }
        let longest = prompt_lens.iter().copied().max().unwrap_or(0);
        let max_len = spec.input_shape.first().copied().unwrap_or(0);
        if longest + opts.max_new_tokens > max_len {
            return bad(format!(
                "the longest prompt ({longest} tokens) + max_new_tokens ({}) = {} positions \
                 exceed the model's maximum sequence length {max_len}",
                opts.max_new_tokens,
                longest + opts.max_new_tokens
            ));
        }
        let flat = prompts
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Int64)?
            .f_contiguous()?
            .f_view([-1])?;
        let flat = Vec::<i64>::try_from(&flat)?;
        let prompts = flat
            .chunks(p as usize)
            .zip(prompt_lens)
            .map(|(row, &l)| row[..l as usize].to_vec())
            .collect();
        Ok(Request {
            prompts,
            min_len: prompt_lens.iter().copied().min().unwrap_or(0),
        })
    }
}

/// One row's decoding state.
struct Row<'a> {
    /// The prompt's ids.
    prompt: &'a [i64],
    /// The tokens sampled so far.
    completion: Vec<i64>,
    /// Whether the last sampled token was EOS.
    ended: bool,
}

impl Row<'_> {
    /// Whether the row needs no more tokens: it sampled EOS or `max_new` tokens.
    fn done(&self, max_new: i64) -> bool {
        self.ended || self.completion.len() as i64 == max_new
    }

    /// The row's token at position `t` (the next one): its prompt's while the prompt lasts,
    /// `sampled` while it is generating (recorded), `pad` once it is done.
    fn take(&mut self, t: usize, sampled: i64, opts: &SampleOptions) -> i64 {
        if let Some(&forced) = self.prompt.get(t) {
            forced
        } else if self.done(opts.max_new_tokens) {
            opts.pad
        } else {
            self.completion.push(sampled);
            self.ended = sampled == opts.eos;
            sampled
        }
    }
}

/// The model's next-token logits, step by step: through its key/value cache, or a full forward
/// over the whole prefix.
enum Decoder<'a> {
    /// [`Model::forward_cached`].
    Cached(&'a Model, KvCache),
    /// [`Model::forward`] over the prefix so far (`i64 [B, t]` on the model's device).
    Full(&'a Model, Option<Tensor>),
}

impl Decoder<'_> {
    /// Feeds the next token ids `ids` (`i64 [B, n]` on the model's device) and returns the
    /// logits `f32 [B, V]` at the last position.
    fn step(&mut self, ids: &Tensor) -> Result<Tensor, ModelError> {
        let logits = match self {
            Decoder::Cached(model, cache) => model.forward_cached(ids, cache)?,
            Decoder::Full(model, prefix) => {
                let whole = match prefix.take() {
                    Some(p) => Tensor::f_cat(&[&p, ids], 1)?,
                    None => ids.shallow_clone(),
                };
                let logits = model.forward(&whole, false)?;
                *prefix = Some(whole);
                logits
            }
        };
        Ok(logits.f_select(1, -1)?.f_to_kind(Kind::Float)?)
    }
}

impl Model {
    /// Samples a continuation of each prompt (see [`crate::generate`] for the lockstep
    /// decoding and its cost). `prompts` is `[B, P]` integer token ids, right-padded: row `b`'s
    /// prompt is its first `prompt_lens[b]` ids (`1 ≤ prompt_lens[b] ≤ P`), the rest is
    /// ignored. Runs under no-grad in eval mode (`forward(xs, false)`), on the model's device
    /// (the prompts are moved there), and draws from libtorch's global generator: seed it with
    /// `tch::manual_seed` for the same tokens again (on the same device and kernels).
    ///
    /// # Errors
    /// [`ModelError::Sample`] for a model that is not a language model, invalid options
    /// (`max_new_tokens < 1`, a negative temperature, `top_p` outside `(0, 1]`, a pad id outside
    /// the vocabulary), prompts that are not `[B, P]` integer ids or lengths outside `1..=P`,
    /// and `max(prompt_lens) + max_new_tokens` beyond the model's maximum sequence length
    /// (`input_shape[0]`); libtorch errors (e.g. a prompt id outside the vocabulary).
    pub fn sample(
        &self,
        prompts: &Tensor,
        prompt_lens: &[i64],
        opts: &SampleOptions,
    ) -> Result<Generated, ModelError> {
        let _no_grad = tch::no_grad_guard();
        let req = Request::new(self, prompts, prompt_lens, opts)?;
        let device = self.device().unwrap_or(prompts.device());
        let b = req.prompts.len() as i64;
        let mut rows: Vec<Row<'_>> = req
            .prompts
            .iter()
            .map(|prompt| Row {
                prompt,
                completion: Vec::new(),
                ended: false,
            })
            .collect();
        let mut decoder = if opts.kv_cache && self.has_kv_cache() {
            Decoder::Cached(self, KvCache::new())
        } else {
            Decoder::Full(self, None)
        };
        let prefix: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.prompt[..req.min_len as usize].iter().copied())
            .collect();
        let ids = Tensor::from_slice(&prefix).f_view([b, req.min_len])?;
        let mut logits = decoder.step(&ids.f_to_device(device)?)?;
        for t in req.min_len as usize.. {
            let sampled = next_tokens(&logits, opts.temperature, opts.top_p)?;
            let sampled = Vec::<i64>::try_from(&sampled.f_to_device(Device::Cpu)?)?;
            let column: Vec<i64> = rows
                .iter_mut()
                .zip(sampled)
                .map(|(row, s)| row.take(t, s, opts))
                .collect();
            if rows.iter().all(|r| r.done(opts.max_new_tokens)) {
                break;
            }
            let ids = Tensor::from_slice(&column).f_view([b, 1])?;
            logits = decoder.step(&ids.f_to_device(device)?)?;
        }
        Ok(generated(&rows, opts.pad)?)
    }
}

/// The [`Generated`] of rows that are done: prompts then completions, right-padded with `pad`.
fn generated(rows: &[Row<'_>], pad: i64) -> Result<Generated, tch::TchError> {
    let width = rows
        .iter()
        .map(|r| r.prompt.len() + r.completion.len())
        .max()
        .unwrap_or(0);
    let mut flat = vec![pad; rows.len() * width];
    for (out, r) in flat.chunks_mut(width.max(1)).zip(rows) {
        let (head, tail) = out.split_at_mut(r.prompt.len());
        head.copy_from_slice(r.prompt);
        tail[..r.completion.len()].copy_from_slice(&r.completion);
    }
    Ok(Generated {
        tokens: Tensor::from_slice(&flat).f_view([rows.len() as i64, width as i64])?,
        prompt_lens: rows.iter().map(|r| r.prompt.len() as i64).collect(),
        completion_lens: rows.iter().map(|r| r.completion.len() as i64).collect(),
        ended: rows.iter().map(|r| r.ended).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probs(values: &[f32]) -> Tensor {
        Tensor::from_slice(values).view([1, values.len() as i64])
    }

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&t.view([-1])).unwrap()
    }

    fn assert_close(got: &Tensor, want: &[f32]) {
        let got = values(got);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?} != {want:?}");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_that_reaches_p_and_renormalises() {
        let p = probs(&[0.15, 0.5, 0.05, 0.3]);
        // 0.5 + 0.3 reaches 0.8: exactly the first two (in probability order) are kept.
        assert_close(
            &top_p_filter(&p, 0.8).unwrap(),
            &[0.0, 0.5 / 0.8, 0.0, 0.3 / 0.8],
        );
        // 0.8 does not reach 0.81: the third joins.
        assert_close(
            &top_p_filter(&p, 0.81).unwrap(),
            &[0.15 / 0.95, 0.5 / 0.95, 0.0, 0.3 / 0.95],
        );
        assert_close(&top_p_filter(&p, 1.0).unwrap(), &[0.15, 0.5, 0.05, 0.3]);
        assert_close(&top_p_filter(&p, 0.96).unwrap(), &[0.15, 0.5, 0.05, 0.3]);
        // A tiny p keeps the argmax alone; between equal maxima, the lower id.
        assert_close(&top_p_filter(&p, 1e-9).unwrap(), &[0.0, 1.0, 0.0, 0.0]);
        let tie = probs(&[0.1, 0.4, 0.1, 0.4]);
        assert_close(&top_p_filter(&tie, 0.3).unwrap(), &[0.0, 1.0, 0.0, 0.0]);
        assert_close(&top_p_filter(&tie, 0.5).unwrap(), &[0.0, 0.5, 0.0, 0.5]);
        // Rows are filtered independently.
        let two = Tensor::cat(&[probs(&[0.5, 0.3, 0.15, 0.05]), tie], 0);
        let f = top_p_filter(&two, 0.5).unwrap();
        assert_eq!(f.size(), vec![2, 4]);
        assert_close(&f, &[1.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.5]);
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            let e = top_p_filter(&p, bad).unwrap_err().to_string();
            assert!(e.contains("top_p") && e.contains("(0, 1]"), "{e}");
        }
    }

    #[test]
    fn next_tokens_is_the_argmax_at_temperature_zero_and_near_it() {
        let logits =
            Tensor::from_slice(&[0.1f32, 2.0, -1.0, 1.9, 5.0, 3.0, 5.0, -2.0]).view([2, 4]);
        let greedy = next_tokens(&logits, 0.0, 1.0).unwrap();
        assert_eq!(Vec::<i64>::try_from(&greedy).unwrap(), [1, 0]);
        // bf16 logits are sampled in f32.
        let bf16 = next_tokens(&logits.to_kind(Kind::BFloat16), 0.0, 1.0).unwrap();
        assert_eq!(Vec::<i64>::try_from(&bf16).unwrap(), [1, 0]);
        // At temperature 1e-4 the 0.1 gap is a factor e^-1000: always the argmax (row 1 ties
        // between ids 0 and 2, both equally likely, so only row 0 is checked).
        for _ in 0..20 {
            let t = Vec::<i64>::try_from(&next_tokens(&logits, 1e-4, 1.0).unwrap()).unwrap();
            assert_eq!(t[0], 1);
            assert!(t[1] == 0 || t[1] == 2, "{t:?}");
        }
        // A tiny top_p keeps the argmax alone whatever the temperature.
        for _ in 0..20 {
            let t = next_tokens(&logits, 10.0, 1e-6).unwrap();
            assert_eq!(Vec::<i64>::try_from(&t).unwrap(), [1, 0]);
        }
        // At temperature 1 every token is drawn sometimes (p >= 0.03 each).
        let row = Tensor::from_slice(&[0.0f32, 1.0, -0.5, 0.5]).view([1, 4]);
        let many = row.expand([400, 4], false).contiguous();
        let drawn = next_tokens(&many, 1.0, 1.0)
            .unwrap()
            .bincount::<Tensor>(None, 4);
        assert!(
            values(&drawn.to_kind(Kind::Float)).iter().all(|&c| c > 0.0),
            "{drawn}"
        );
        for (t, p) in [(-1.0, 1.0), (f64::INFINITY, 1.0), (1.0, 0.0)] {
            assert!(next_tokens(&logits, t, p).is_err(), "{t} {p}");
        }
        assert!(next_tokens(&logits.view([8]), 1.0, 1.0).is_err());
    }
}
