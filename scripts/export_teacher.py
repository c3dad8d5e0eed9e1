#!/usr/bin/env python3
"""Exports small TorchScript CNN teachers for teacher-server tests and demos.

Each model is saved with ``torch.jit.save`` (scripted, so a module saved in training mode keeps
its dropout switchable by ``eval()``), together with a sidecar ``FILE.json``::

    {"input_shape": [1, 28, 28], "input_dtype": "f32", "num_logits": 10}

A small causal language model (the family of scripts/reference/kd_lm_pytorch.py) is exported
the same way, with the signature of a Hugging Face causal LM wrapped to return its logits alone::

    forward(input_ids: i64 [batch, seq], attention_mask: i64 [batch, seq]) -> f32 [batch, seq, vocab]
    {"input_shape": [16], "input_dtype": "i64", "num_logits": 64, "sequence_model": true,
     "tokenizer": "lm_tokenizer.json"}

Teachers with several outputs, as distillation code often writes them (a ``Linear(784, 64)``
feature layer with a ReLU and a ``Linear(64, 10)`` head; same weights in each file), and two that
a server must refuse at load::

    multi_tuple.pt      forward(x) -> (head(f), f)
    multi_dict.pt       forward(x) -> {"logits": head(f), "features": f}
    multi_batchless.pt  forward(x) -> (head(f), f.mean(0))     # [64]: no batch dimension
    multi_int.pt        forward(x) -> (head(f), x.size(0))     # not a tensor

Usage:
    export_teacher.py --out teacher.pt [--seed 0] [--train-mode]
    export_teacher.py --out-dir DIR    # teacher.pt, teacher_train.pt (training mode, dropout),
                                       # teacher_other.pt (other weights), lm.pt (causal LM),
                                       # multi_*.pt (several outputs)

Run with the project's torch: PYTHONPATH=$HOME/.cache/distill/torch-2.11.0 python3 ...
"""
import argparse
import json
import os

from typing import Dict, Tuple

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


class TupleTeacher(nn.Module):
    """Features f = relu(Linear(784 -> 64)(flatten(x))), logits Linear(64 -> 10)(f)."""

    def __init__(self) -> None:
        super().__init__()
        self.feature = nn.Linear(784, 64)
        self.head = nn.Linear(64, NUM_LOGITS)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.feature(torch.flatten(x, 1)))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.head(f), f


class DictTeacher(TupleTeacher):
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:  # type: ignore[override]
        f = self.features(x)
        return {"logits": self.head(f), "features": f}


class BatchlessTeacher(TupleTeacher):
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return self.head(f), f.mean(0)


class IntTeacher(TupleTeacher):
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, int]:  # type: ignore[override]
        f = self.features(x)
        return self.head(f), x.size(0)


def export_multi(folder: str) -> None:
    for name, cls in [("multi_tuple", TupleTeacher), ("multi_dict", DictTeacher),
                      ("multi_batchless", BatchlessTeacher), ("multi_int", IntTeacher)]:
        torch.manual_seed(0)
        path = os.path.join(folder, name + ".pt")
        torch.jit.save(torch.jit.script(cls().eval()), path + ".tmp")
        os.replace(path + ".tmp", path)
        sidecar = {"input_shape": INPUT_SHAPE, "input_dtype": "f32", "num_logits": NUM_LOGITS}
        with open(path + ".json.tmp", "w") as f:
            json.dump(sidecar, f)
        os.replace(path + ".json.tmp", path + ".json")


LM_VOCAB, LM_MAX_LEN, LM_LAYERS, LM_D, LM_HEADS = 64, 16, 2, 32, 4


class CausalLm(nn.Module):
    """The reference loop's decoder: token + learned position embeddings, pre-norm
    TransformerEncoderLayers (GELU, ffn 4d, no dropout) under a causal mask, a final LayerNorm,
    and an output layer tied to the token embedding."""

    def __init__(self, vocab: int, layers: int, d: int, heads: int, max_len: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        s = input_ids.shape[1]
        x = self.tok(input_ids) + self.pos(torch.arange(s, device=input_ids.device))[None]
        causal = torch.ones(s, s, dtype=torch.bool, device=input_ids.device).triu(1)
        pad = attention_mask == 0
        x = self.blocks(x, mask=causal, src_key_padding_mask=pad, is_causal=True)
        return self.norm(x) @ self.tok.weight.T


def export_lm(path: str, seed: int) -> None:
    torch.manual_seed(seed)
    model = CausalLm(LM_VOCAB, LM_LAYERS, LM_D, LM_HEADS, LM_MAX_LEN).eval()
    # Larger weights than the N(0, 0.02) start, so that the logits differ visibly between tokens.
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    scripted = torch.jit.script(model)
    tmp = path + ".tmp"
    torch.jit.save(scripted, tmp)
    os.replace(tmp, path)
    folder = os.path.dirname(path) or "."
    with open(os.path.join(folder, "lm_tokenizer.json"), "w") as f:
        json.dump({"model": {"type": "test", "vocab": LM_VOCAB}}, f)
    sidecar = {"input_shape": [LM_MAX_LEN], "input_dtype": "i64", "num_logits": LM_VOCAB,
               "sequence_model": True, "tokenizer": "lm_tokenizer.json"}
    with open(path + ".json.tmp", "w") as f:
        json.dump(sidecar, f)
    os.replace(path + ".json.tmp", path + ".json")


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
    export_lm(os.path.join(a.out_dir, "lm.pt"), 0)
    export_multi(a.out_dir)


if __name__ == "__main__":
    main()
