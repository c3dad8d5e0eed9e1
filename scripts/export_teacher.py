#!/usr/bin/env python3
"""Exports small TorchScript CNN teachers for teacher-server tests and demos.

Each model is saved with ``torch.jit.save`` (scripted, so a module saved in training mode keeps
its dropout switchable by ``eval()``), together with a sidecar ``FILE.json``::

    {"input_shape": [1, 28, 28], "input_dtype": "f32", "num_logits": 10}

Usage:
    export_teacher.py --out teacher.pt [--seed 0] [--train-mode]
    export_teacher.py --out-dir DIR    # teacher.pt, teacher_train.pt (training mode, dropout),
                                       # teacher_other.pt (other weights)

Run with the project's torch: PYTHONPATH=$HOME/.cache/distill/torch-2.11.0 python3 ...
"""
import argparse
import json
import os

import torch
from torch import nn

INPUT_SHAPE = [1, 28, 28]
NUM_LOGITS = 10


class SmallCnn(nn.Module):
    """conv(1→8, 3×3) → ReLU → max-pool 2 → conv(8→16, 3×3) → ReLU → max-pool 2 → dropout(0.5)
    → linear(400 → 10). Input f32 [batch, 1, 28, 28], output logits f32 [batch, 10]."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3)
        self.c2 = nn.Conv2d(8, 16, 3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16 * 5 * 5, NUM_LOGITS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.c1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.c2(x)), 2)
        return self.fc(self.drop(torch.flatten(x, 1)))


def export(path: str, seed: int, train_mode: bool) -> None:
    torch.manual_seed(seed)
    model = SmallCnn()
    model.train(train_mode)
    scripted = torch.jit.script(model)
    tmp = path + ".tmp"
    torch.jit.save(scripted, tmp)
    os.replace(tmp, path)
    sidecar = {"input_shape": INPUT_SHAPE, "input_dtype": "f32", "num_logits": NUM_LOGITS}
    with open(path + ".json.tmp", "w") as f:
        json.dump(sidecar, f)
    os.replace(path + ".json.tmp", path + ".json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", help="the .pt file to write (its sidecar is FILE.json)")
    g.add_argument("--out-dir", help="write the test fixtures into this directory")
    p.add_argument("--seed", type=int, default=0, help="weights seed (with --out)")
    p.add_argument("--train-mode", action="store_true", help="save in training mode (with --out)")
    a = p.parse_args()
    if a.out:
        export(a.out, a.seed, a.train_mode)
        return
    os.makedirs(a.out_dir, exist_ok=True)
    export(os.path.join(a.out_dir, "teacher.pt"), 0, False)
    export(os.path.join(a.out_dir, "teacher_train.pt"), 0, True)
    export(os.path.join(a.out_dir, "teacher_other.pt"), 1, False)


if __name__ == "__main__":
    main()
