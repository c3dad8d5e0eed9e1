#!/usr/bin/env python3
"""The PyTorch side of `make bench`'s TorchScript-student row.

  export --out-dir DIR
      writes DIR/mlp.pt and DIR/cnn.pt (scripts/export_student.py, scripted, seed 0): the
      students `student-trainer train --student` trains.
  train --model mlp|cnn --pt FILE --data-dir DIR [--limit N] [--batch-size 128] [--threads 1]
      one epoch of the same module in a plain PyTorch loop: the eager nn.Module with the
      file's initial weights, Adam (lr 1e-3), cross-entropy, shuffled batches of the IDX
      training split normalised as student-trainer does; prints `samples_per_s=N` (the whole
      epoch, the first batch included, as student-trainer's metrics.jsonl counts it).
"""

import argparse
import gzip
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_student  # noqa: E402

MEAN, STD = 0.2860, 0.3530


class Mlp(nn.Module):
    """784-256-128-10 with dropout."""

    def __init__(self):
        super().__init__()
        self.f1 = nn.Linear(784, 256)
        self.f2 = nn.Linear(256, 128)
        self.f3 = nn.Linear(128, 10)
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        x = x.flatten(1)
        x = self.drop(F.relu(self.f1(x)))
        x = self.drop(F.relu(self.f2(x)))
        return self.f3(x)


class Cnn(nn.Module):
    """Two 3x3 convolutions (16 and 32 channels) with BatchNorm and pooling, dropout, a linear
    head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 16, 3)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 3)
        self.bn2 = nn.BatchNorm2d(32)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(32 * 5 * 5, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.c1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.c2(x))), 2)
        return self.fc(self.drop(x.flatten(1)))


MODELS = {"mlp": Mlp, "cnn": Cnn}


def read_idx(path):
    for candidate in (path + ".gz", path):
        if os.path.exists(candidate):
            opener = gzip.open if candidate.endswith(".gz") else open
            with opener(candidate, "rb") as f:
                data = f.read()
            ndim = data[3]
            dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
            return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)
    raise SystemExit(f"no {path}[.gz]")


def train(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    images = read_idx(os.path.join(a.data_dir, "train-images-idx3-ubyte"))[: a.limit]
    labels = read_idx(os.path.join(a.data_dir, "train-labels-idx1-ubyte"))[: a.limit].long()
    x = ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1).contiguous()
    model = MODELS[a.model]()
    model.load_state_dict(torch.jit.load(a.pt).state_dict(), strict=True)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = x.shape[0]
    order = torch.randperm(n)
    t0 = time.perf_counter()
    for start in range(0, n, a.batch_size):
        idx = order[start:start + a.batch_size]
        xb, yb = x[idx], labels[idx]
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    dt = time.perf_counter() - t0
    print(f"samples_per_s={n / dt:.1f} samples={n} seconds={dt:.3f}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("--out-dir", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", choices=sorted(MODELS), required=True)
    t.add_argument("--pt", required=True)
    t.add_argument("--data-dir", required=True)
    t.add_argument("--limit", type=int, default=12000)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    if a.cmd == "export":
        for name, cls in MODELS.items():
            torch.manual_seed(0)
            export_student.export(cls(), os.path.join(a.out_dir, f"{name}.pt"),
                                  input_shape=[1, 28, 28])
    else:
        train(a)


if __name__ == "__main__":
    main()
