#!/usr/bin/env python3
"""The built-in architectures of student-trainer as PyTorch classes, whose state_dict() keys are
the checkpoints' tensor names: a built-in checkpoint's model.<hash>.safetensors loads into them
with load_state_dict(..., strict=True).

  cnn                 Cnn(in_channels, height, width, classes)  c1, c2, f1, f2
  mlp / mlp:H1,...    Mlp(inputs, [H1, ...], classes)            f1, f2, ...
  lm:layers=L,d=D,... LM(vocab, L, D, heads, max_len)            tok, pos, blocks.layers.N..., norm
                      (scripts/reference/kd_lm_pytorch.py's class)

From Python:

    from builtin_students import load
    model = load("runs/student")          # the class, with the checkpoint's weights, eval mode

From the command line, a built-in checkpoint as a TorchScript file (for torch.jit.load, or as a
`student-trainer --student` of a later run; scripts/export_student.py's format, sidecar
included):

    python scripts/builtin_students.py runs/student --export student.pt
"""

import argparse
import glob
import json
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "reference"))
sys.path.insert(0, HERE)
from kd_lm_pytorch import LM  # noqa: E402


class Cnn(nn.Module):
    """`cnn`: two valid 3x3 convolutions (32, 64), 2x2 max-pool, dropout 0.25, 128 units,
    dropout, the output layer."""

    def __init__(self, in_channels=1, height=28, width=28, classes=10):
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 32, 3)
        self.c2 = nn.Conv2d(32, 64, 3)
        flat = 64 * ((height - 4) // 2) * ((width - 4) // 2)
        self.f1 = nn.Linear(flat, 128)
        self.f2 = nn.Linear(128, classes)
        self.d = nn.Dropout(0.25)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.c2(F.relu(self.c1(x)))), 2)
        x = self.d(x.flatten(1))
        return self.f2(self.d(F.relu(self.f1(x))))


class Mlp(nn.Module):
    """`mlp:H1,...,Hn`: linear layers f1 ... f(n+1) with ReLU between them."""

    def __init__(self, inputs=784, hidden=(128,), classes=10):
        super().__init__()
        widths = [inputs] + list(hidden) + [classes]
        for i in range(len(widths) - 1):
            setattr(self, f"f{i + 1}", nn.Linear(widths[i], widths[i + 1]))
        self.n = len(widths) - 1

    def forward(self, x):
        x = x.flatten(1)
        for i in range(1, self.n + 1):
            x = getattr(self, f"f{i}")(x)
            if i < self.n:
                x = F.relu(x)
        return x


def build(arch, input_shape, num_classes):
    """The class for a checkpoint.json's `arch` (its `arch` object, input shape and classes)."""
    name = arch["name"]
    if name == "cnn":
        c, h, w = input_shape
        return Cnn(c, h, w, num_classes)
    if name == "mlp":
        inputs = 1
        for d in input_shape:
            inputs *= d
        return Mlp(inputs, arch["hidden"], num_classes)
    if name == "lm":
        return LM(num_classes, arch["layers"], arch["d"], arch["heads"], input_shape[0])
    raise SystemExit(f"{name}: not a built-in architecture (a TorchScript student's checkpoint "
                     "holds its own module: torch.jit.load its student.<hash>.pt)")


def load(ckdir):
    """The built-in student of the checkpoint directory `ckdir` with its weights (strict), in
    eval mode."""
    from safetensors.torch import load_file
    with open(os.path.join(ckdir, "checkpoint.json")) as f:
        meta = json.load(f)
    spec = meta["arch"]
    model = build(spec["arch"], spec["input_shape"], spec["num_classes"])
    name = (meta.get("files") or {}).get("weights", {}).get("name", "model.safetensors")
    model.load_state_dict(load_file(os.path.join(ckdir, name)), strict=True)
    return model.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="a built-in student's checkpoint directory")
    p.add_argument("--export", metavar="FILE.pt", help="write it as a TorchScript student")
    p.add_argument("--logits", metavar="N", type=int,
                   help="print the sum of the logits of N fixed inputs (a test's check)")
    a = p.parse_args()
    model = load(a.checkpoint)
    with open(os.path.join(a.checkpoint, "checkpoint.json")) as f:
        spec = json.load(f)["arch"]
    if a.logits:
        shape = [a.logits] + spec["input_shape"]
        numel = 1
        for d in shape:
            numel *= d
        if spec["arch"]["name"] == "lm":
            x = (torch.arange(numel) % spec["num_classes"]).reshape(shape)
            y = model(x)
        else:
            x = (torch.arange(numel, dtype=torch.float32) / numel).reshape(shape)
            y = model(x)
        print(json.dumps({"sum": y.double().sum().item(), "shape": list(y.shape)}))
    if a.export:
        import export_student
        if spec["arch"]["name"] == "lm":
            raise SystemExit("export an lm checkpoint by tracing LM yourself: "
                             "export_student.export(model, out, trace=True, sequence_model=True, "
                             "vocab=V)")
        model.train()
        # mlp has no dropout and a variable number of layers: traced; cnn: scripted, so its
        # dropout switches with the mode.
        export_student.export(model, a.export, input_shape=spec["input_shape"],
                              num_logits=spec["num_classes"],
                              trace=spec["arch"]["name"] == "mlp")
        print(f"exported {a.checkpoint} to {a.export}")


if __name__ == "__main__":
    main()
