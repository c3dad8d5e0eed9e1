#!/usr/bin/env python3
"""`make bench` row 1's PyTorch side: the forward pass of the demo CNN teacher as a user's
PyTorch code runs it (the eager `nn.Module` of scripts/reference/kd_pytorch.py, `eval()`,
`torch.no_grad()`, default memory format), f32 and bf16, at each batch size, with random
weights and inputs (its speed does not depend on them).

Each setting: one warm-up pass, then whole passes for --seconds (at least one); prints one JSON
line {"precision": ..., "batch": ..., "samples_per_s": ...} per setting.

  python3 scripts/bench_forward_pytorch.py --threads 2 --seconds 1.5 --batches 16,256
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
from kd_pytorch import Teacher  # noqa: E402


def measure(model, x, seconds):
    with torch.no_grad():
        model(x)
        start, samples = time.perf_counter(), 0
        while samples == 0 or time.perf_counter() - start < seconds:
            model(x)
            samples += x.shape[0]
        return samples / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--batches", default="16,256")
    ap.add_argument("--precisions", default="f32,bf16")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16}
    for name in a.precisions.split(","):
        model = Teacher().eval().to(dtypes[name])
        for batch in (int(b) for b in a.batches.split(",")):
            x = torch.randn(batch, 1, 28, 28).to(dtypes[name])
            rate = measure(model, x, a.seconds)
            print(json.dumps({"precision": name, "batch": batch, "samples_per_s": rate}), flush=True)


if __name__ == "__main__":
    main()
