"""Reference: on-policy distillation (GKD) of a causal LM in plain PyTorch, teacher in-process.

The loop a user would write from GKD (Agarwal et al. 2024, "On-Policy Distillation of Language Models:
Learning from Self-Generated Mistakes", arXiv:2306.13649, Algorithm 1; TRL's GKDTrainer): each step, with
probability --lmbda the completions are sampled by the student itself (temperature, top-p, at most
--max-new-tokens, stopping at --eos), otherwise they are the data's own continuation (supervised KD). The
in-process teacher scores every completion token, and the student is trained on the completion tokens only
(prompt and padding positions carry label -100). Same models as kd_lm_pytorch.py (pre-norm decoder blocks,
causal self-attention, learned positions, tied output layer); the student's generation can use a per-layer
KV cache (--kv-cache, the default) or a full forward pass of the prefix per token (--no-kv-cache).

Losses per completion token (p = softmax(teacher / T), q = softmax(student / T), as student-trainer's loss.rs):
  kl   T^2 KL(p || q)                      forward KL (Hinton et al. 2015)
  rkl  T^2 KL(q || p)                      reverse KL
  jsd  T^2 [b KL(p || m) + (1 - b) KL(q || m)],  m = b p + (1 - b) q   (GKD Eq. (1), TRL >= 0.16)
  k1   sg(log q(x) - log p(x)) * log q(x)  the sampled-token estimator of the reverse KL's gradient
       (REINFORCE with k1 as a negative advantage; Tinker cookbook, slime --use-opd): only the teacher's
       log-probability of the sampled token x is used; needs --lmbda 1 (x must come from q).
averaged over the completion tokens of the batch.

Prints, one line each, key=value: the teacher's size; then `opd: ...` with gen_tokens_per_s (generated tokens
per second of generation), score_tokens_per_s (completion tokens per second of teacher scoring: its forward
pass and log-softmax), train_tokens_per_s (completion tokens per second of the student's forward, loss,
backward and optimizer step), the totals gen_s / score_s / train_s and their means per step (ms), and
tokens_per_s (completion tokens trained per second of the whole loop, wall clock).

Input: a file of token ids (one int per line or a .npy int array) or, with --synthetic, random ids; each row of
--seq tokens gives a prompt (its first --prompt-tokens) and, for off-policy steps, its continuation.
Usage: python opd_pytorch.py [--tokens FILE | --synthetic] [--vocab 8192] [--seq 128] [--bs 16] [--steps 20]
       [--teacher L,D,H] [--student L,D,H] [--T 1] [--threads 2] [--seed 0] [--lmbda 1] [--prompt-tokens 64]
       [--max-new-tokens 64] [--sample-temperature 1] [--top-p 1] [--eos ID] [--loss rkl|jsd|kl|k1]
       [--jsd-beta 0.5] [--kv-cache | --no-kv-cache] [--check-cache]
"""
import argparse, math, random, sys, time, numpy as np, torch, torch.nn as nn, torch.nn.functional as F


class KVCache:
    """Keys and values of every layer, [B, heads, max_len, head_dim] each, filled up to `len` positions."""

    def __init__(self, layers, batch, heads, head_dim, max_len):
        shape = (batch, heads, max_len, head_dim)
        self.kv = [(torch.empty(shape), torch.empty(shape)) for _ in range(layers)]
        self.len = 0


class LM(nn.Module):
    def __init__(self, vocab, layers, d, heads, max_len):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True, norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.heads, self.max_len = heads, max_len
        nn.init.normal_(self.tok.weight, std=0.02); nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, ids, mask=None):
        s = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(s, device=ids.device))[None]
        causal = torch.ones(s, s, dtype=torch.bool, device=ids.device).triu(1)
        pad = None if mask is None else ~mask.bool()
        x = self.blocks(x, mask=causal, src_key_padding_mask=pad, is_causal=True)
        return self.norm(x) @ self.tok.weight.T  # tied output layer

    def new_cache(self, batch, max_len):
        d = self.tok.weight.shape[1]
        return KVCache(len(self.blocks.layers), batch, self.heads, d // self.heads, max_len)

    def decode(self, ids, cache):
        """Logits [B, t, V] of ids [B, t] placed after the cache's positions, appending their keys and values.

        The same computation as forward() (TransformerEncoderLayer with norm_first: x + SA(LN1(x)), then
        x + FF(LN2(x))), from the layers' own weights. t > 1 only into an empty cache (the prompt).
        """
        b, t = ids.shape
        start = cache.len
        assert start == 0 or t == 1, "several tokens only into an empty cache"
        d = self.tok.weight.shape[1]
        h, hd = self.heads, d // self.heads
        x = self.tok(ids) + self.pos(torch.arange(start, start + t, device=ids.device))[None]
        for layer, (keys, values) in zip(self.blocks.layers, cache.kv):
            attn = layer.self_attn
            q, k, v = F.linear(layer.norm1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, -1)
            q, k, v = (z.view(b, t, h, hd).transpose(1, 2) for z in (q, k, v))
            keys[:, :, start:start + t] = k; values[:, :, start:start + t] = v
            a = F.scaled_dot_product_attention(q, keys[:, :, :start + t], values[:, :, :start + t], is_causal=t > 1)
            x = x + attn.out_proj(a.transpose(1, 2).reshape(b, t, d))
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm2(x))))
        cache.len = start + t
        return self.norm(x) @ self.tok.weight.T


def top_p_filter(logits, top_p):
    """Nucleus sampling (Holtzman et al. 2020): keep the smallest set of tokens whose probability reaches
    top_p (at least one), as transformers' TopPLogitsWarper."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(-1)
    drop = sorted_logits.softmax(-1).cumsum(-1) <= 1.0 - top_p
    drop[..., -1] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def sample(logits, temperature, top_p):
    if temperature == 0:
        return logits.argmax(-1)
    probs = top_p_filter(logits / temperature, top_p).softmax(-1)
    return torch.multinomial(probs, 1).squeeze(-1)


@torch.no_grad()
def generate(model, prompt, a):
    """The student's completions of prompt [B, P]: tokens [B, n] (n <= max_new_tokens; after a row's EOS,
    filler) and each row's length [B] (its EOS included)."""
    b, p = prompt.shape
    out = prompt.new_zeros(b, a.max_new_tokens)
    lengths = torch.zeros(b, dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool)
    cache = model.new_cache(b, p + a.max_new_tokens) if a.kv_cache else None
    logits = (model(prompt) if cache is None else model.decode(prompt, cache))[:, -1]
    for t in range(a.max_new_tokens):
        tok = sample(logits, a.sample_temperature, a.top_p).masked_fill(done, 0)
        out[:, t] = tok
        lengths += (~done).long()
        if a.eos is not None:
            done |= tok == a.eos
        if t + 1 == a.max_new_tokens or bool(done.all()):
            break
        if cache is not None:
            logits = model.decode(tok[:, None], cache)[:, -1]
        else:
            logits = model(torch.cat([prompt, out[:, : t + 1]], 1))[:, -1]
    return out[:, : t + 1], lengths


def kl_rows(log_a, log_b):
    """KL(a || b) per row of log-probabilities [N, V] -> [N]."""
    return F.kl_div(log_b, log_a, reduction="none", log_target=True).sum(-1)


def opd_loss(kind, s_rows, t_logp, labels, T, beta):
    """The loss over N completion tokens: student logits s_rows [N, V], teacher log_softmax(t / T) [N, V],
    the completion tokens labels [N]. Returns (loss, mean k1 = log q(x) - log p(x), detached)."""
    log_q = F.log_softmax(s_rows / T, -1)
    log_q_x = log_q.gather(-1, labels[:, None]).squeeze(-1)
    k1 = (log_q_x - t_logp.gather(-1, labels[:, None]).squeeze(-1)).detach()
    if kind == "k1":
        return (k1 * log_q_x).mean(), k1.mean().item()
    if kind == "kl":
        d = kl_rows(t_logp, log_q)
    elif kind == "rkl":
        d = kl_rows(log_q, t_logp)
    else:  # jsd, the paper's beta: m = beta p + (1 - beta) q
        log_m = torch.logaddexp(t_logp + math.log(beta), log_q + math.log1p(-beta))
        d = beta * kl_rows(t_logp, log_m) + (1 - beta) * kl_rows(log_q, log_m)
    return T * T * d.mean(), k1.mean().item()


def check_cache(model, a):
    """The largest difference between the cached decode's logits and the full forward's, token by token."""
    with torch.no_grad():
        ids = torch.randint(0, a.vocab, (2, a.seq), generator=torch.Generator().manual_seed(a.seed))
        full = model(ids)
        cache = model.new_cache(2, a.seq)
        parts = [model.decode(ids[:, : a.prompt_tokens], cache)]
        parts += [model.decode(ids[:, i : i + 1], cache) for i in range(a.prompt_tokens, a.seq)]
        return (torch.cat(parts, 1) - full).abs().max().item()


def parse():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens"); ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--vocab", type=int, default=8192); ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--bs", type=int, default=16); ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--teacher", default="4,256,4"); ap.add_argument("--student", default="2,128,4")
    ap.add_argument("--T", type=float, default=1.0, help="temperature of the loss")
    ap.add_argument("--threads", type=int, default=2); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lmbda", type=float, default=1.0, help="probability that a step's completions are the student's")
    ap.add_argument("--prompt-tokens", type=int, default=64, help="prompt = the first P tokens of each row")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default: seq - prompt-tokens")
    ap.add_argument("--sample-temperature", type=float, default=1.0, help="0: greedy")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--eos", type=int, default=None, help="token id that ends a completion (default: none)")
    ap.add_argument("--loss", choices=["rkl", "jsd", "kl", "k1"], default="rkl")
    ap.add_argument("--jsd-beta", type=float, default=0.5)
    ap.add_argument("--kv-cache", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--check-cache", action="store_true", help="print the cached decode's largest logit error first")
    a = ap.parse_args()
    if a.max_new_tokens is None:
        a.max_new_tokens = a.seq - a.prompt_tokens
    if not (1 <= a.prompt_tokens and 1 <= a.max_new_tokens and a.prompt_tokens + a.max_new_tokens <= a.seq):
        ap.error(f"need 1 <= --prompt-tokens, 1 <= --max-new-tokens and their sum <= --seq, got "
                 f"{a.prompt_tokens} + {a.max_new_tokens} > {a.seq}")
    if not 0.0 <= a.lmbda <= 1.0 or not 0.0 < a.top_p <= 1.0 or a.sample_temperature < 0:
        ap.error("need 0 <= --lmbda <= 1, 0 < --top-p <= 1 and --sample-temperature >= 0")
    if a.loss == "jsd" and not 0.0 < a.jsd_beta < 1.0:
        ap.error("--jsd-beta must lie in (0, 1); use --loss kl or --loss rkl for the endpoints")
    if a.loss == "k1" and a.lmbda != 1.0:
        ap.error("--loss k1 estimates the reverse KL from the student's own samples: it needs --lmbda 1")
    if a.loss == "k1" and (a.sample_temperature != a.T or a.top_p != 1.0):
        print("note: k1 is unbiased only for samples from q = softmax(student / T): "
              "--sample-temperature = --T and --top-p 1", file=sys.stderr)
    return a


def load(a):
    if a.tokens:
        ids = np.load(a.tokens) if a.tokens.endswith(".npy") else np.loadtxt(a.tokens, dtype=np.int64)
        ids = torch.from_numpy(ids.astype(np.int64))
    else:
        ids = torch.randint(0, a.vocab, (a.bs * a.steps * a.seq,))
    n = len(ids) // a.seq
    return ids[: n * a.seq].view(n, a.seq)


def main():
    a = parse()
    torch.set_num_threads(a.threads); torch.manual_seed(a.seed)
    data = load(a)
    tl, td, th = map(int, a.teacher.split(",")); sl, sd, sh = map(int, a.student.split(","))
    teacher = LM(a.vocab, tl, td, th, a.seq).eval()
    print(f"teacher params={sum(p.numel() for p in teacher.parameters())}")
    torch.manual_seed(a.seed)
    student = LM(a.vocab, sl, sd, sh, a.seq); opt = torch.optim.Adam(student.parameters(), 3e-4)
    if a.check_cache:
        print(f"cache_check: max_abs_logit_diff={check_cache(student, a):.3e}")
    coin = random.Random(a.seed)
    P = a.prompt_tokens
    clock = {"gen": 0.0, "score": 0.0, "train": 0.0}
    generated = trained = on_policy = 0; k1_sum = 0.0
    t0 = time.time()
    for step in range(a.steps):
        rows = data[torch.randint(0, len(data), (a.bs,))]
        prompt = rows[:, :P]
        t = time.time()
        sampled = coin.random() < a.lmbda
        if sampled:  # on-policy: the student's samples
            student.eval()
            completion, lengths = generate(student, prompt, a)
            student.train()
            generated += int(lengths.sum()); on_policy += 1
        else:  # off-policy: the data's continuation
            completion = rows[:, P : P + a.max_new_tokens]
            lengths = torch.full((a.bs,), completion.shape[1])
        clock["gen"] += time.time() - t
        full = torch.cat([prompt, completion], 1)
        x, y = full[:, :-1], full[:, 1:]
        # Position s predicts token s + 1: the completion's i-th token at s = P - 1 + i, for i < length.
        i = torch.arange(x.shape[1])[None] - (P - 1)
        real = (i >= 0) & (i < lengths[:, None])
        labels = y[real]
        t = time.time()
        with torch.no_grad():
            t_logp = F.log_softmax(teacher(x)[real] / a.T, -1)
        clock["score"] += time.time() - t
        t = time.time()
        loss, k1 = opd_loss(a.loss, student(x)[real], t_logp, labels, a.T, a.jsd_beta)
        opt.zero_grad(); loss.backward(); opt.step()
        clock["train"] += time.time() - t
        trained += int(real.sum())
        if sampled:  # k1 estimates KL(q || p) only on the student's own samples
            k1_sum += k1
    wall = time.time() - t0
    per = lambda n, s: n / s if s > 0 else 0.0
    ms = {k: 1000 * v / a.steps for k, v in clock.items()}
    print(f"opd: student params={sum(p.numel() for p in student.parameters())} loss_kind={a.loss} "
          f"lmbda={a.lmbda} kv_cache={int(a.kv_cache)} steps={a.steps} on_policy_steps={on_policy} "
          f"generated_tokens={generated} completion_tokens={trained} loss={loss.item():.4f} "
          f"k1={k1_sum / max(on_policy, 1):.4f} gen_tokens_per_s={per(generated, clock['gen']):.0f} "
          f"score_tokens_per_s={per(trained, clock['score']):.0f} "
          f"train_tokens_per_s={per(trained, clock['train']):.0f} "
          f"gen_s={clock['gen']:.2f} score_s={clock['score']:.2f} train_s={clock['train']:.2f} "
          f"gen_ms_per_step={ms['gen']:.1f} score_ms_per_step={ms['score']:.1f} "
          f"train_ms_per_step={ms['train']:.1f} tokens_per_s={per(trained, wall):.0f} wall_s={wall:.1f}")


if __name__ == "__main__":
    main()
