#!/usr/bin/env python3
"""Writes kd_sparse.json: sparse (top-k) distillation loss cases computed in float64 with plain
Python, independently of the Rust code under test.

Per sample, teacher logits z (C classes), the top-k classes K (largest first), values v = z[K],
tail = log sum_{c not in K} exp(z_c / T); student logits s, q = softmax(s / T):

  lse_T = logaddexp(logsumexp(v / T), tail);  p_i = exp(v_i / T - lse_T);  r = exp(tail - lse_T)
  bucket:  KL = sum_i p_i log(p_i / q_i) + r log(r / q_rest),    q_rest = sum_{c not in K} q_c
  uniform: KL = sum_i p_i log(p_i / q_i) + sum_{c not in K} u log(u / q_c),  u = r / (C - k)
  renorm:  KL = sum_i pt_i log(pt_i / qt_i),  pt = p / sum_K p,  qt = q_K / sum_K q
  loss = mean_i [ w_i T^2 KL_i + (1 - w_i) CE_i ],  w_i = alpha if labelled else 1
  (Hinton, Vinyals & Dean 2015, section 2.)

Run: python3 student-trainer/tests/data/kd_sparse.py (writes kd_sparse.json next to it).
"""
import json
import math
import os
import random
import struct


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def lse(xs):
    m = max(xs)
    if m == -math.inf:
        return -math.inf
    return m + math.log(sum(math.exp(x - m) for x in xs))


def kl(p, logp, logq):
    return sum(pi * (lp - lq) for pi, lp, lq in zip(p, logp, logq) if pi > 0)


def sample_kl(s, z, k, t, mode):
    c = len(z)
    top = sorted(range(c), key=lambda j: -z[j])[:k]
    rest = [j for j in range(c) if j not in top]
    v = [z[j] / t for j in top]
    tail = lse([z[j] / t for j in rest]) if rest else -math.inf
    lse_t = lse(v + [tail])
    logp = [x - lse_t for x in v]
    p = [math.exp(x) for x in logp]
    st = [x / t for x in s]
    ls = lse(st)
    logq = [x - ls for x in st]
    logq_k = [logq[j] for j in top]
    if mode == "renorm":
        lv = lse(v)
        logpt = [x - lv for x in v]
        lq = lse(logq_k)
        logqt = [x - lq for x in logq_k]
        return kl([math.exp(x) for x in logpt], logpt, logqt)
    head = kl(p, logp, logq_k)
    if not rest:
        return head
    log_r = tail - lse_t
    r = math.exp(log_r)
    if mode == "bucket":
        log_q_rest = lse([logq[j] for j in rest])
        return head + r * (log_r - log_q_rest)
    # uniform
    u = r / len(rest)
    return head + sum(u * (math.log(u) - logq[j]) for j in rest)


def ce(s, y):
    return lse(s) - s[y]


def case(name, rng, b, c, k, t, alpha, labelled=None, scale=3.0):
    students = [[f32(rng.gauss(0, scale)) for _ in range(c)] for _ in range(b)]
    teachers = [[f32(rng.gauss(0, scale)) for _ in range(c)] for _ in range(b)]
    labels = [rng.randrange(c) for _ in range(b)]
    out = {
        "name": name,
        "student_logits": students,
        "teacher_logits": teachers,
        "labels": labels,
        "top_k": k,
        "temperature": t,
        "alpha": alpha,
    }
    if labelled is not None:
        out["labelled"] = labelled
    # The sparse targets as a teacher-server sends them (f32): top-k indices and raw values,
    # and the tail's log-sum-exp at T, computed here in float64 and stored as f32.
    idx, vals, tails = [], [], []
    for z in teachers:
        top = sorted(range(c), key=lambda j: -z[j])[:k]
        rest = [j for j in range(c) if j not in top]
        idx.append(top)
        vals.append([z[j] for j in top])
        tails.append(f32(lse([z[j] / t for j in rest])) if rest else None)
    out["indices"] = idx
    out["values"] = vals
    out["tail_logsumexp"] = tails  # null: -inf (k = C)
    for mode in ("bucket", "uniform", "renorm"):
        total, soft = 0.0, 0.0
        for i in range(b):
            w = alpha if (labelled is None or labelled[i]) else 1.0
            kd = t * t * sample_kl(students[i], teachers[i], k, t, mode)
            soft += kd
            total += w * kd
            if w < 1.0:
                total += (1.0 - w) * ce(students[i], labels[i])
        out[mode] = {"loss": total / b, "soft": soft / b}
    return out


def main():
    rng = random.Random(20151)
    cases = [
        case("k3_of_10_t1", rng, 4, 10, 3, 1.0, 1.0),
        case("k3_of_10_t2_5_alpha", rng, 4, 10, 3, 2.5, 0.7),
        case("k1_of_5_t4", rng, 3, 5, 1, 4.0, 0.9),
        case("k8_of_32_t2_unlabelled", rng, 5, 32, 8, 2.0, 0.5, labelled=[True, False, True, False, False]),
        case("k2_of_6_t0_5_wide", rng, 3, 6, 2, 0.5, 1.0, scale=8.0),
    ]
    doc = {
        "about": __doc__.strip().splitlines()[0]
        + " Inputs are f32 values; expected values are float64. Compare to a relative "
        "tolerance of 1e-5. tail_logsumexp null means -inf.",
        "cases": cases,
    }
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kd_sparse.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
