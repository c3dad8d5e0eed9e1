//! Sampling from a language model ([`Model::sample`]) and the built-in decoder's key/value cache
//! ([`Model::forward_cached`]), on a tiny `lm` whose weights are a pure function of a seed.
//!
//! These tests live in their own binary (not beside the unit tests) because they seed
//! libtorch's process-wide generator and expect its draws: unit tests on other threads draw
//! from it (weight initialisation, `randn`) at any time. Here every test holds [`torch_rng`]
//! for its whole run.

use distill_models::{ArchSpec, KvCache, Model, ModelError, Network, SampleOptions};
use std::sync::{Mutex, MutexGuard};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 20;
const MAX_LEN: i64 = 16;

/// Exclusive use of libtorch's global random generator, until the guard is dropped.
fn torch_rng() -> MutexGuard<'static, ()> {
    static RNG: Mutex<()> = Mutex::new(());
    // A test that panicked while holding it left the generator in a valid state.
    RNG.lock().unwrap_or_else(|e| e.into_inner())
}

/// splitmix64 (Steele et al. 2014): the next uniform `f32` in `[0, 1)`.
fn uniform(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

/// `lm:layers=2,d=16,heads=2` over 20 tokens and 16 positions, on the CPU, its weights drawn
/// from splitmix64 seeded with `seed`: uniform in ±1 (LayerNorm weights 1 ± 1), the token
/// embeddings rescaled to norm 3 each. Weights this large make the blocks outweigh the token's
/// own embedding in the residual stream, so greedy decoding does not just repeat the last token,
/// and spread the logits over a few units: no near-ties, and sampling at temperature 1 far from
/// uniform. Call with [`torch_rng`] held: building the network draws its initial weights.
fn tiny_lm(seed: u64) -> (VarStore, Model) {
    let vs = VarStore::new(Device::Cpu);
    let spec = ArchSpec {
        arch: "lm:layers=2,d=16,heads=2".parse().unwrap(),
        input_shape: vec![MAX_LEN],
        num_classes: VOCAB,
    };
    let net = Network::new(&vs.root(), &spec).unwrap();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut state = seed;
    tch::no_grad(|| {
        for (name, mut v) in vars {
            let base = if name.contains("norm") && name.ends_with("weight") {
                1.0
            } else {
                0.0
            };
            let values: Vec<f32> = (0..v.numel())
                .map(|_| base + 2.0 * uniform(&mut state) - 1.0)
                .collect();
            let mut w = Tensor::from_slice(&values).view(v.size().as_slice());
            if name == "tok.weight" {
                w = &w / w.norm_scalaropt_dim(2, [1], true) * 3.0;
            }
            v.copy_(&w);
        }
    });
    (vs, Model::Builtin(net))
}

/// Token ids `i64 [rows, cols]` in `0..VOCAB` from splitmix64 seeded with `seed`.
fn ids(rows: i64, cols: i64, seed: u64) -> Tensor {
    let mut state = seed;
    let v: Vec<i64> = (0..rows * cols)
        .map(|_| (uniform(&mut state) * VOCAB as f32) as i64)
        .collect();
    Tensor::from_slice(&v).view([rows, cols])
}

fn row(t: &Tensor, b: i64) -> Vec<i64> {
    Vec::<i64>::try_from(&t.get(b)).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

fn opts(temperature: f64, top_p: f64, eos: i64, max_new_tokens: i64) -> SampleOptions {
    SampleOptions {
        max_new_tokens,
        temperature,
        top_p,
        eos,
        pad: 0,
        kv_cache: true,
    }
}

/// Prompts of lengths 3, 5 and 1 in a `[3, 5]` tensor whose padding is garbage ids.
fn ragged_prompts() -> (Tensor, Vec<i64>) {
    (ids(3, 5, 77), vec![3, 5, 1])
}

/// Checks what every [`distill_models::Generated`] promises: prompts copied unchanged,
/// `pad` after each row's completion, `S` the longest row.
fn check_layout(g: &distill_models::Generated, prompts: &Tensor, pad: i64) {
    let s = g.tokens.size()[1];
    let lens: Vec<i64> = g
        .prompt_lens
        .iter()
        .zip(&g.completion_lens)
        .map(|(p, c)| p + c)
        .collect();
    assert_eq!(s, *lens.iter().max().unwrap());
    assert_eq!(g.tokens.kind(), Kind::Int64);
    assert_eq!(g.tokens.device(), Device::Cpu);
    for (b, &p) in g.prompt_lens.iter().enumerate() {
        let got = row(&g.tokens, b as i64);
        assert_eq!(
            got[..p as usize],
            row(prompts, b as i64)[..p as usize],
            "row {b}"
        );
        assert!(got[lens[b] as usize..].iter().all(|&t| t == pad), "{got:?}");
    }
}

#[test]
fn the_kv_cache_gives_the_full_forwards_logits() {
    let _rng = torch_rng();
    let (_vs, model) = tiny_lm(1);
    assert!(model.has_kv_cache());
    assert_eq!(model.device(), Some(Device::Cpu));
    let _g = tch::no_grad_guard();
    let x = ids(2, 10, 5);
    let full = model.forward(&x, false).unwrap();
    let mut cache = KvCache::new();
    // Prefill of 4, a chunk of 3 after them (explicit mask), then single tokens.
    let mut start = 0;
    for n in [4, 3, 1, 1, 1] {
        let got = model
            .forward_cached(&x.narrow(1, start, n), &mut cache)
            .unwrap();
        assert_eq!(got.size(), vec![2, n, VOCAB]);
        let d = max_diff(&got, &full.narrow(1, start, n));
        assert!(d < 1e-5, "positions {start}..{}: {d}", start + n);
        start += n;
        assert_eq!(cache.len(), start);
    }
    // Logits differ between positions (the test could fail), and the cache is the sequence's:
    // a fresh cache fed the last token alone gives other logits.
    let alone = model
        .forward_cached(&x.narrow(1, 9, 1), &mut KvCache::new())
        .unwrap();
    assert!(max_diff(&alone, &full.narrow(1, 9, 1)) > 1e-3);
    // Too many positions: refused, naming them, the cache unchanged.
    let e = model
        .forward_cached(&ids(2, 7, 6), &mut cache)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("at most max_len = 16 positions in all: 10 cached + 7 new = 17"),
        "{e}"
    );
    assert_eq!(cache.len(), 10);
    let e = model.forward_cached(&ids(3, 1, 6), &mut cache).unwrap_err();
    assert!(e.to_string().contains("2 rows"), "{e}");
    // Up to max_len exactly is fine.
    let last = model.forward_cached(&ids(2, 6, 6), &mut cache).unwrap();
    assert_eq!(last.size(), vec![2, 6, VOCAB]);
    assert_eq!(cache.len(), MAX_LEN);
    // A feed-forward network has none.
    let vs = VarStore::new(Device::Cpu);
    let spec = ArchSpec {
        arch: "mlp".parse().unwrap(),
        input_shape: vec![4],
        num_classes: 3,
    };
    let mlp = Model::Builtin(Network::new(&vs.root(), &spec).unwrap());
    assert!(!mlp.has_kv_cache());
    let e = mlp.forward_cached(&ids(1, 1, 0), &mut KvCache::new());
    assert!(matches!(e, Err(ModelError::Unsupported(_))), "{e:?}");
}

#[test]
fn the_cache_changes_no_token() {
    let _rng = torch_rng();
    let (_vs, model) = tiny_lm(2);
    let (prompts, lens) = ragged_prompts();
    let mut o = opts(1.0, 0.9, 3, 9);
    tch::manual_seed(11);
    let cached = model.sample(&prompts, &lens, &o).unwrap();
    o.kv_cache = false;
    tch::manual_seed(11);
    let full = model.sample(&prompts, &lens, &o).unwrap();
    assert_eq!(cached.tokens.size(), full.tokens.size());
    assert!(
        cached.tokens.equal(&full.tokens),
        "{}\n{}",
        cached.tokens,
        full.tokens
    );
    assert_eq!(cached.completion_lens, full.completion_lens);
    assert_eq!(cached.ended, full.ended);
    assert_eq!(cached.prompt_lens, lens);
    check_layout(&cached, &prompts, 0);
    assert!(cached.completion_lens.iter().all(|&c| (1..=9).contains(&c)));
    for (b, (&c, &ended)) in cached.completion_lens.iter().zip(&cached.ended).enumerate() {
        let r = row(&cached.tokens, b as i64);
        let last = r[(lens[b] + c - 1) as usize];
        assert_eq!(ended, last == 3, "row {b}: {r:?}");
        assert!(ended || c == 9, "row {b}: {r:?}");
    }
}

#[test]
fn a_seed_fixes_the_tokens_and_another_seed_changes_them() {
    let _rng = torch_rng();
    let (_vs, model) = tiny_lm(3);
    let prompts = ids(4, 2, 8);
    let lens = [2, 2, 1, 2];
    // No EOS (an id outside the vocabulary): 4 rows × 12 drawn tokens.
    let o = opts(1.0, 1.0, -1, 12);
    let draw = |seed: i64| {
        tch::manual_seed(seed);
        model.sample(&prompts, &lens, &o).unwrap()
    };
    let (a, b, c) = (draw(1), draw(1), draw(2));
    assert!(a.tokens.equal(&b.tokens), "{}\n{}", a.tokens, b.tokens);
    assert!(!a.tokens.equal(&c.tokens), "{}\n{}", a.tokens, c.tokens);
    assert_eq!(a.completion_lens, [12, 12, 12, 12]);
    assert_eq!(a.ended, [false; 4]);
    assert_eq!(a.tokens.size(), vec![4, 14]);
    check_layout(&a, &prompts, 0);
    // Not greedy: the draws differ from the argmax somewhere.
    let greedy = model
        .sample(&prompts, &lens, &opts(0.0, 1.0, -1, 12))
        .unwrap();
    assert!(!a.tokens.equal(&greedy.tokens));
}

/// Greedy decoding of one prompt by full forward passes, a token at a time: the reference.
fn greedy_alone(model: &Model, prompt: &[i64], eos: i64, max_new: i64) -> Vec<i64> {
    let _g = tch::no_grad_guard();
    let mut seq = prompt.to_vec();
    for _ in 0..max_new {
        let x = Tensor::from_slice(&seq).view([1, seq.len() as i64]);
        let logits = model.forward(&x, false).unwrap();
        let next = logits.get(0).get(-1).argmax(-1, false).int64_value(&[]);
        seq.push(next);
        if next == eos {
            break;
        }
    }
    seq
}

#[test]
fn temperature_zero_and_a_tiny_temperature_are_greedy() {
    let _rng = torch_rng();
    let (_vs, model) = tiny_lm(4);
    let (prompts, lens) = ragged_prompts();
    let want: Vec<Vec<i64>> = (0..3)
        .map(|b| {
            greedy_alone(
                &model,
                &row(&prompts, b)[..lens[b as usize] as usize],
                -1,
                10,
            )
        })
        .collect();
    for (temperature, kv_cache) in [(0.0, true), (0.0, false), (1e-4, true)] {
        let o = SampleOptions {
            kv_cache,
            ..opts(temperature, 1.0, -1, 10)
        };
        tch::manual_seed(9);
        let g = model.sample(&prompts, &lens, &o).unwrap();
        check_layout(&g, &prompts, 0);
        for (b, w) in want.iter().enumerate() {
            let got = row(&g.tokens, b as i64);
            assert_eq!(
                &got[..w.len()],
                w,
                "row {b} at {temperature} (cache {kv_cache})"
            );
        }
    }
}

/// `completion` up to and including its first `eos`, if any.
fn until_eos(completion: &[i64], eos: i64) -> &[i64] {
    let end = completion
        .iter()
        .position(|&t| t == eos)
        .map_or(completion.len(), |i| i + 1);
    &completion[..end]
}

#[test]
fn eos_ends_a_row_with_padding_while_the_others_go_on() {
    let _rng = torch_rng();
    let (_vs, model) = tiny_lm(5);
    let prompts = ids(2, 4, 22);
    let lens = [2, 4];
    let free = model
        .sample(&prompts, &lens, &opts(0.0, 1.0, -1, 6))
        .unwrap();
    let free0 = row(&free.tokens, 0)[2..8].to_vec();
    let free1 = row(&free.tokens, 1)[4..10].to_vec();
    // EOS: a token of row 0's greedy completion that row 1 does not start with, so row 1 goes
    // on after row 0 has ended.
    let eos = (0..6)
        .map(|j| free0[j])
        .find(|t| !free1[..2].contains(t))
        .expect("a token of row 0 that row 1 does not start with");
    let pad = 19;
    let o = SampleOptions {
        pad,
        ..opts(0.0, 1.0, eos, 6)
    };
    let g = model.sample(&prompts, &lens, &o).unwrap();
    check_layout(&g, &prompts, pad);
    let (want0, want1) = (until_eos(&free0, eos), until_eos(&free1, eos));
    assert!(want0.len() < 6 && want1.len() >= 2, "{want0:?} {want1:?}");
    assert_eq!(g.completion_lens, [want0.len() as i64, want1.len() as i64]);
    assert_eq!(g.ended, [true, want1.last() == Some(&eos)]);
    let (r0, r1) = (row(&g.tokens, 0), row(&g.tokens, 1));
    assert_eq!(&r0[2..2 + want0.len()], want0);
    assert!(r0[2 + want0.len()..].iter().all(|&t| t == pad), "{r0:?}");
    assert_eq!(&r1[4..4 + want1.len()], want1);
    assert_eq!(
        g.tokens.size(),
        vec![2, (2 + want0.len()).max(4 + want1.len()) as i64]
    );
}

#[test]
fn requests_that_do_not_fit_are_refused_with_both_numbers() {
    let _rng = torch_rng();
    let (_vs, model) = tiny_lm(6);
    let prompts = ids(2, 10, 3);
    let e = model
        .sample(&prompts, &[10, 4], &opts(1.0, 1.0, 1, 7))
        .unwrap_err();
    assert!(matches!(e, ModelError::Sample(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains("longest prompt (10 tokens)")
            && e.contains("max_new_tokens (7)")
            && e.contains("= 17")
            && e.contains("maximum sequence length 16"),
        "{e}"
    );
    // One fewer fits exactly.
    let g = model
        .sample(&prompts, &[10, 4], &opts(1.0, 1.0, -1, 6))
        .unwrap();
    assert_eq!(g.tokens.size(), vec![2, 16]);
    for (lens, o, words) in [
        (vec![10], opts(1.0, 1.0, 1, 2), "prompt_lens"),
        (vec![0, 4], opts(1.0, 1.0, 1, 2), "prompt_lens"),
        (vec![11, 4], opts(1.0, 1.0, 1, 2), "prompt_lens"),
        (vec![2, 4], opts(1.0, 1.0, 1, 0), "max_new_tokens 0"),
        (vec![2, 4], opts(-1.0, 1.0, 1, 2), "temperature -1"),
        (vec![2, 4], opts(1.0, 0.0, 1, 2), "top_p 0"),
        (
            vec![2, 4],
            SampleOptions {
                pad: VOCAB,
                ..opts(1.0, 1.0, 1, 2)
            },
            "pad id 20",
        ),
    ] {
        let e = model.sample(&prompts, &lens, &o).unwrap_err().to_string();
        assert!(e.contains(words), "{words}: {e}");
    }
    let floats = prompts.to_kind(Kind::Float);
    let e = model.sample(&floats, &[2, 4], &opts(1.0, 1.0, 1, 2));
    assert!(e.unwrap_err().to_string().contains("integer token ids"));
    let vs = VarStore::new(Device::Cpu);
    let spec = ArchSpec {
        arch: "mlp".parse().unwrap(),
        input_shape: vec![4],
        num_classes: 3,
    };
    let mlp = Model::Builtin(Network::new(&vs.root(), &spec).unwrap());
    let e = mlp.sample(&prompts, &[2, 4], &opts(1.0, 1.0, 1, 2));
    assert!(e.unwrap_err().to_string().contains("not a language model"));
}
