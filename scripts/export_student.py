#!/usr/bin/env python3
"""Export a PyTorch module as a TorchScript student for `student-trainer --student FILE.pt`.

The module is compiled with torch.jit.script (the default) or torch.jit.trace (--trace), given a
method `distill_state_dict()` that returns every `state_dict()` entry by its key (buffers such as
BatchNorm's running statistics included, which libtorch cannot list by itself), and saved with
torch.jit.save beside a sidecar FILE.pt.json saying what it takes and returns. The weights it
holds are the student's initial weights.

From the command line, with a class or factory importable as MODULE:NAME (called with no
arguments, or with --kwargs JSON):

    python scripts/export_student.py mypackage.models:SmallCnn --input-shape 1,28,28 \
        --out student.pt
    python scripts/export_student.py mylm:build --sequence-model --seq-len 128 --vocab 8192 \
        --trace --out lm_student.pt

From Python:

    import export_student
    export_student.export(model, "student.pt", input_shape=[1, 28, 28])

Script or trace: torch.jit.script keeps the module's Python control flow and its train/eval
switch (dropout, BatchNorm), so student-trainer trains it in training mode and evaluates it in
eval mode as PyTorch does. torch.jit.trace records the operations of one call in the mode the
module was in: a traced module keeps that mode's behaviour (trace Hugging Face decoders in eval
mode, dropout off, as their docs show). A causal LM is traced with (input_ids, attention_mask).
"""

import argparse
import copy
import importlib
import json
import os
import sys
from typing import Dict, List, Optional

import torch

STATE_DICT_METHOD = "distill_state_dict"


def _accessor(key: str) -> str:
    """TorchScript for `self.<key>` where parts may be digits (`layers.0.weight`)."""
    expr = "self"
    for part in key.split("."):
        expr = f'getattr({expr}, "{part}")'
    return expr


def state_dict_source(keys: List[str]) -> str:
    """The `distill_state_dict()` method: each state_dict entry by its key (Optional buffers,
    such as BatchNorm's running statistics, refined to Tensor when present)."""
    lines = [
        f"def {STATE_DICT_METHOD}(self) -> Dict[str, Tensor]:",
        "    d: Dict[str, Tensor] = {}",
    ]
    for i, key in enumerate(keys):
        lines += [
            f"    v{i} = {_accessor(key)}",
            f"    if v{i} is not None:",
            f"        d[{json.dumps(key)}] = v{i}",
        ]
    lines.append("    return d")
    return "\n".join(lines) + "\n"


def add_state_dict_method(scripted: torch.jit.ScriptModule, keys: List[str]) -> None:
    """Defines `distill_state_dict()` on a scripted or traced module."""
    scripted.define(state_dict_source(keys))


def export(
    model: torch.nn.Module,
    out: str,
    input_shape: Optional[List[int]] = None,
    trace: bool = False,
    sequence_model: bool = False,
    seq_len: int = 16,
    vocab: Optional[int] = None,
    input_dtype: str = "f32",
    logits_output: Optional[str] = None,
    num_logits: Optional[int] = None,
) -> torch.jit.ScriptModule:
    """Compiles `model` (script, or trace on example inputs), adds `distill_state_dict()`, saves
    it to `out` and writes the sidecar `out + ".json"`. Returns the compiled module.

    A classifier takes `input_shape` (per sample, no batch) of `input_dtype`; a sequence model
    (`sequence_model=True`) takes `forward(input_ids, attention_mask)`, i64 `[batch, seq]`, and
    is traced on sequences of `seq_len` ids below `vocab`.
    """
    keys = list(model.state_dict().keys())
    if trace:
        # Tracing runs the module; its running statistics must not move.
        saved = copy.deepcopy(model.state_dict())
        if sequence_model:
            ids = torch.randint(0, vocab or 2, (2, seq_len), dtype=torch.long)
            example = (ids, torch.ones_like(ids))
        else:
            if input_shape is None:
                raise SystemExit("export_student: --trace needs --input-shape")
            dtype = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
                     "f64": torch.float64}[input_dtype]
            example = (torch.zeros([2] + list(input_shape), dtype=dtype),)
        with torch.no_grad():
            compiled = torch.jit.trace(model, example, check_trace=False, strict=False)
        compiled.load_state_dict(saved)
    else:
        compiled = torch.jit.script(model)
    add_state_dict_method(compiled, keys)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    torch.jit.save(compiled, out)
    sidecar: Dict[str, object] = {"input_dtype": "i64" if sequence_model else input_dtype}
    if sequence_model:
        sidecar["sequence_model"] = True
    if input_shape is not None and not sequence_model:
        sidecar["input_shape"] = list(input_shape)
    if num_logits is not None:
        sidecar["num_logits"] = num_logits
    if logits_output is not None:
        sidecar["logits_output"] = logits_output
    with open(out + ".json", "w") as f:
        json.dump(sidecar, f, indent=2)
        f.write("\n")
    return compiled


def _load_factory(spec: str):
    if ":" not in spec:
        raise SystemExit(f"export_student: expected MODULE:NAME, got {spec!r}")
    module_name, name = spec.split(":", 1)
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    try:
        return getattr(module, name)
    except AttributeError:
        raise SystemExit(f"export_student: {module_name} has no {name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("factory", help="MODULE:NAME of an nn.Module class or a function returning one")
    p.add_argument("--out", required=True, help="the .pt file to write (and OUT.json)")
    p.add_argument("--kwargs", default="{}", help="JSON keyword arguments for the factory")
    p.add_argument("--input-shape", help="per-sample input shape, e.g. 1,28,28")
    p.add_argument("--input-dtype", default="f32", choices=["f32", "f16", "bf16", "f64"])
    p.add_argument("--trace", action="store_true", help="torch.jit.trace instead of script")
    p.add_argument("--sequence-model", action="store_true",
                   help="a causal LM: forward(input_ids, attention_mask)")
    p.add_argument("--seq-len", type=int, default=16, help="tokens per traced example sequence")
    p.add_argument("--vocab", type=int, help="vocabulary of the traced example ids")
    p.add_argument("--logits-output", help="the output holding the logits (several outputs)")
    p.add_argument("--num-logits", type=int, help="recorded in the sidecar (checked by the trainer)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed before building")
    p.add_argument("--mode", choices=["train", "eval"], default="train",
                   help="the mode the module is compiled in (a traced module keeps it)")
    a = p.parse_args()
    torch.manual_seed(a.seed)
    model = _load_factory(a.factory)(**json.loads(a.kwargs))
    model.train(a.mode == "train")
    shape = [int(d) for d in a.input_shape.split(",")] if a.input_shape else None
    export(model, a.out, input_shape=shape, trace=a.trace, sequence_model=a.sequence_model,
           seq_len=a.seq_len, vocab=a.vocab, input_dtype=a.input_dtype,
           logits_output=a.logits_output, num_logits=a.num_logits)
    print(f"exported {a.factory} to {a.out} ({'traced' if a.trace else 'scripted'}), "
          f"sidecar {a.out}.json")


if __name__ == "__main__":
    main()
