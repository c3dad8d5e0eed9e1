#!/usr/bin/env python3
"""TorchScript students for the integration tests, and their checks in PyTorch.

Export (with scripts/export_student.py):
  export cnn OUT          SmallCnn (conv, BatchNorm, dropout; 10 classes), scripted
  export cnn5 OUT         SmallCnn with 5 classes (for the output-shape error)
  export multi OUT        MultiOut: {"logits": [B, 10], "features": [B, 32]}, scripted
  export twoargs OUT      forward(x, y): a module taking other arguments
  export noparams OUT     a module without parameters
  export mlp OUT          SmallMlp (784-64-10, dropout), scripted
  export lm OUT V S       TinyLm, a causal LM over V token ids, traced on S tokens
  export lmbig OUT V S    TinyLm of V + 7 ids (for the vocabulary error)

Data:
  lmdata OUT.npz V S      token sequences (arithmetic progressions mod V) of S ids: OUT.npz
                          (400 sequences) and OUT_test.npz (100), next-token labels

Check (prints one JSON line):
  check-cnn CKDIR DATA INITIAL.pt   accuracy of the checkpoint's student.<hash>.pt (torch.jit.load)
                                    and of SmallCnn loaded from model.<hash>.safetensors with
                                    strict=True on DATA's IDX test split; whether the BatchNorm
                                    running statistics differ from INITIAL.pt's
  check-cnn-folder CKDIR FOLDER INITIAL.pt
                                    the same on an image folder's FOLDER/test/CLASS/*.png (8-bit
                                    gray PNGs; classes are the sorted folder names)
  check-lm CKDIR TEST.npz           perplexity and next-token accuracy of both on TEST.npz
  check-lm-text CKDIR CORPUS TOKENIZER SEQ
                                    the same on the held-out documents of CORPUS's .jsonl files
                                    (document i when i % 20 == 0), encoded by Python's tokenizers
                                    with TOKENIZER and packed as the README says
"""

import glob
import gzip
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "scripts"))
import export_student  # noqa: E402

MEAN, STD = 0.2860, 0.3530


class SmallCnn(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, stride=2)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(8 * 13 * 13, classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return self.fc(self.drop(x.flatten(1)))


class SmallMlp(nn.Module):
    def __init__(self, hidden: int = 64, classes: int = 10):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(),
                                    nn.Dropout(0.2), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.layers(x)


class MultiOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.feature = nn.Linear(784, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        f = F.relu(self.feature(x.flatten(1)))
        return {"logits": self.head(f), "features": f}


class TwoArgs(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x, y):
        return self.fc(x.flatten(1)) + y


class NoParams(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10]


class TinyLm(nn.Module):
    """A causal LM: each position sees the running mean of the embeddings up to it."""

    def __init__(self, vocab: int, d: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.mix = nn.Linear(2 * d, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, input_ids, attention_mask):
        e = self.embed(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)
        count = torch.cumsum(attention_mask.to(torch.float32), dim=1).clamp(min=1.0)
        ctx = torch.cumsum(e, dim=1) / count.unsqueeze(-1)
        h = torch.tanh(self.mix(torch.cat([e, ctx], dim=-1)))
        return self.head(self.norm(h))


def export(kind, out, *rest):
    torch.manual_seed(0)
    if kind in ("cnn", "cnn5"):
        m = SmallCnn(10 if kind == "cnn" else 5)
        export_student.export(m, out, input_shape=[1, 28, 28])
    elif kind == "mlp":
        export_student.export(SmallMlp(), out, input_shape=[1, 28, 28])
    elif kind == "multi":
        export_student.export(MultiOut(), out, input_shape=[1, 28, 28])
    elif kind == "twoargs":
        torch.jit.save(torch.jit.script(TwoArgs()), out)
    elif kind == "noparams":
        torch.jit.save(torch.jit.script(NoParams()), out)
    elif kind in ("lm", "lmbig"):
        vocab, seq = int(rest[0]), int(rest[1])
        m = TinyLm(vocab + (7 if kind == "lmbig" else 0)).eval()
        export_student.export(m, out, trace=True, sequence_model=True, seq_len=seq, vocab=vocab)
    else:
        raise SystemExit(f"unknown kind {kind}")


def read_idx(path):
    for candidate in (path + ".gz", path):
        if os.path.exists(candidate):
            opener = gzip.open if candidate.endswith(".gz") else open
            with opener(candidate, "rb") as f:
                data = f.read()
            ndim = data[3]
            dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
            return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).reshape(dims)
    raise SystemExit(f"no {path}")


def only(pattern):
    found = glob.glob(pattern)
    if len(found) != 1:
        raise SystemExit(f"expected one {pattern}, found {found}")
    return found[0]


def read_png_gray(path):
    """The pixels of an 8-bit grayscale, non-interlaced PNG as a uint8 tensor [H, W]."""
    import struct
    import zlib
    with open(path, "rb") as f:
        data = f.read()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"{path}: not a PNG")
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if (depth, color, interlace) != (8, 0, 0):
                raise SystemExit(f"{path}: expected an 8-bit gray PNG")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, rows, prev = zlib.decompress(idat), [], bytearray(width)
    for r in range(height):
        line = raw[r * (width + 1):(r + 1) * (width + 1)]
        kind, cur = line[0], bytearray(line[1:])
        for i in range(width):
            left, up = cur[i - 1] if i else 0, prev[i]
            upleft = prev[i - 1] if i else 0
            if kind == 1:
                cur[i] = (cur[i] + left) & 255
            elif kind == 2:
                cur[i] = (cur[i] + up) & 255
            elif kind == 3:
                cur[i] = (cur[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - upleft
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
                pred = left if pa <= pb and pa <= pc else (up if pb <= pc else upleft)
                cur[i] = (cur[i] + pred) & 255
        rows.append(bytes(cur))
        prev = cur
    return torch.frombuffer(bytearray(b"".join(rows)), dtype=torch.uint8).reshape(height, width)


def read_test_folder(folder):
    """An image folder's test split: pixels [N, H, W] and labels (sorted class folders)."""
    root = os.path.join(folder, "test")
    classes = sorted(c for c in os.listdir(root) if not c.startswith("."))
    images, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted(os.listdir(os.path.join(root, name))):
            images.append(read_png_gray(os.path.join(root, name, f)))
            labels.append(label)
    return torch.stack(images), torch.tensor(labels)


def check_cnn(ckdir, data, initial):
    images = read_idx(os.path.join(data, "t10k-images-idx3-ubyte"))
    labels = read_idx(os.path.join(data, "t10k-labels-idx1-ubyte")).long()
    check_cnn_on(ckdir, images, labels, initial)


def check_cnn_folder(ckdir, folder, initial):
    images, labels = read_test_folder(folder)
    check_cnn_on(ckdir, images, labels, initial)


def check_cnn_on(ckdir, images, labels, initial):
    from safetensors.torch import load_file
    x = ((images.float() / 255.0 - MEAN) / STD).unsqueeze(1)
    jit = torch.jit.load(only(os.path.join(ckdir, "student.*.pt")), map_location="cpu").eval()
    py = SmallCnn()
    state = load_file(only(os.path.join(ckdir, "model.*.safetensors")))
    py.load_state_dict(state, strict=True)
    py.eval()
    first = torch.jit.load(initial, map_location="cpu")
    with torch.no_grad():
        a = (jit(x).argmax(-1) == labels).float().mean().item()
        b = (py(x).argmax(-1) == labels).float().mean().item()
        same_logits = torch.equal(jit(x), py(x))
    moved = not torch.equal(first.bn.running_mean, py.bn.running_mean) and \
        not torch.equal(first.bn.running_var, py.bn.running_var)
    print(json.dumps({
        "jit_accuracy": a,
        "state_dict_accuracy": b,
        "same_logits": same_logits,
        "running_stats_moved": moved,
        "num_batches_tracked": int(py.bn.num_batches_tracked.item()),
        "keys": sorted(state.keys()),
    }))


def check_lm(ckdir, test):
    import numpy as np
    arrays = np.load(test)
    ids = torch.from_numpy(arrays["inputs"]).long()
    labels = torch.from_numpy(arrays["labels"]).long()
    vocab = int(arrays["vocab_size"]) if "vocab_size" in arrays else int(ids.max()) + 1
    print(json.dumps(lm_scores(ckdir, ids, labels, vocab)))


def lm_scores(ckdir, ids, labels, vocab):
    """Perplexity and next-token accuracy of the checkpoint's student.<hash>.pt and of TinyLm
    loaded from its model.<hash>.safetensors, over the labels that are not -100."""
    from safetensors.torch import load_file
    jit = torch.jit.load(only(os.path.join(ckdir, "student.*.pt")), map_location="cpu").eval()
    py = TinyLm(vocab)
    py.load_state_dict(load_file(only(os.path.join(ckdir, "model.*.safetensors"))), strict=True)
    py.eval()
    out = {}
    with torch.no_grad():
        for name, model in (("jit", jit), ("state_dict", py)):
            logits = model(ids, torch.ones_like(ids))
            flat, y = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
            nll = F.cross_entropy(flat, y, ignore_index=-100, reduction="sum").item()
            real = (y != -100)
            n = int(real.sum())
            hits = int(((flat.argmax(-1) == y) & real).sum())
            out[name + "_perplexity"] = math.exp(nll / n)
            out[name + "_accuracy"] = hits / n
    return out


def held_out_windows(corpus, tokenizer, seq):
    """The test split of the .jsonl files under `corpus` as student-trainer makes it: files in
    the byte order of their relative paths, document i held out when i % 20 == 0, each encoded
    without special tokens and followed by the end-of-document token (</s>), the stream cut into
    windows of SEQ + 1 tokens at a stride of SEQ, the short last one padded with </s> and its
    labels -100."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(tokenizer)
    eos = tok.token_to_id("</s>")
    files = []
    for dirpath, dirnames, filenames in os.walk(corpus):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [os.path.relpath(os.path.join(dirpath, f), corpus) for f in filenames
                  if f.endswith(".jsonl") and not f.startswith(".")]
    docs = []
    for rel in sorted(files, key=lambda p: p.encode()):
        with open(os.path.join(corpus, rel), encoding="utf-8") as f:
            docs += [json.loads(line)["text"] for line in f if line.strip()]
    stream = []
    for i, doc in enumerate(docs):
        if i % 20 == 0 and doc.strip():
            stream += tok.encode(doc, add_special_tokens=False).ids + [eos]
    seq = int(seq)
    n = (len(stream) - 2) // seq + 1
    ids = [[stream[t] if t < len(stream) else eos for t in range(k * seq, (k + 1) * seq)]
           for k in range(n)]
    labels = [[stream[t + 1] if t + 1 < len(stream) else -100
               for t in range(k * seq, (k + 1) * seq)] for k in range(n)]
    return torch.tensor(ids), torch.tensor(labels), tok.get_vocab_size(with_added_tokens=True)


def check_lm_text(ckdir, corpus, tokenizer, seq):
    ids, labels, vocab = held_out_windows(corpus, tokenizer, seq)
    print(json.dumps(lm_scores(ckdir, ids, labels, vocab)))


def lmdata(out, vocab, seq):
    import numpy as np
    vocab, seq = int(vocab), int(seq)
    rng = np.random.default_rng(1)

    def make(n):
        start = rng.integers(0, vocab, n)[:, None]
        step = rng.integers(1, 4, n)[:, None]
        ids = (start + step * np.arange(seq)[None, :]) % vocab
        labels = np.concatenate([ids[:, 1:], np.full((n, 1), -100)], axis=1)
        return ids.astype(np.int64), labels.astype(np.int64)

    for path, n in ((out, 400), (out[:-len(".npz")] + "_test.npz", 100)):
        ids, labels = make(n)
        np.savez(path, inputs=ids, labels=labels, vocab_size=np.array(vocab))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "lmdata":
        lmdata(*args)
    elif cmd == "export":
        export(*args)
    elif cmd == "check-cnn":
        check_cnn(*args)
    elif cmd == "check-cnn-folder":
        check_cnn_folder(*args)
    elif cmd == "check-lm":
        check_lm(*args)
    elif cmd == "check-lm-text":
        check_lm_text(*args)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
