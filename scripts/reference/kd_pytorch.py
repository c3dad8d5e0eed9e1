"""Reference: in-process knowledge distillation in plain PyTorch on Fashion-MNIST.

The anchor a user would pick instead of the project: same teacher/student shapes,
teacher in the same process. Prints accuracies and distillation throughput.
Usage: python kd_pytorch.py [--teacher-epochs N] [--student-epochs N] [--hidden H] [--threads N] [--limit N]

The project's own copy of the plain-PyTorch reference loop, run by `make bench`
(tests/src/bin/bench.rs); nothing outside the clone is read. One change from the original:
`--limit N` trains on the first N training samples only (as `student-trainer --limit N`); without
it the script is unchanged.
"""
import argparse, gzip, time, os, numpy as np, torch, torch.nn as nn, torch.nn.functional as F

D = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")

def idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)

def load(split):
    p = "train" if split == "train" else "t10k"
    x = torch.from_numpy(idx(f"{D}/{p}-images-idx3-ubyte.gz").copy()).float().div_(255.0)
    x = ((x - 0.2860) / 0.3530).unsqueeze(1)
    y = torch.from_numpy(idx(f"{D}/{p}-labels-idx1-ubyte.gz").copy()).long()
    return x, y

class Teacher(nn.Module):
    def __init__(s):
        super().__init__()
        s.c1 = nn.Conv2d(1, 32, 3); s.c2 = nn.Conv2d(32, 64, 3)
        s.f1 = nn.Linear(9216, 128); s.f2 = nn.Linear(128, 10); s.d = nn.Dropout(0.25)
    def forward(s, x):
        x = F.max_pool2d(F.relu(s.c2(F.relu(s.c1(x)))), 2)
        x = s.d(x.flatten(1))
        return s.f2(s.d(F.relu(s.f1(x))))

class Student(nn.Module):
    def __init__(s, h=32):
        super().__init__(); s.f1 = nn.Linear(784, h); s.f2 = nn.Linear(h, 10)
    def forward(s, x):
        return s.f2(F.relu(s.f1(x.flatten(1))))

def acc(m, x, y):
    m.eval()
    with torch.no_grad():
        return sum((m(x[i:i+1000]).argmax(1) == y[i:i+1000]).sum().item() for i in range(0, len(x), 1000)) / len(x)

def kd_loss(s, t, y, T, alpha):
    soft = F.kl_div(F.log_softmax(s / T, 1), F.log_softmax(t / T, 1), reduction="batchmean", log_target=True) * T * T
    return alpha * soft + (1 - alpha) * F.cross_entropy(s, y)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--teacher-epochs", type=int, default=2)
    ap.add_argument("--student-epochs", type=int, default=5)
    ap.add_argument("--bs", type=int, default=128)
    ap.add_argument("--T", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N training samples")
    a = ap.parse_args()
    torch.set_num_threads(a.threads); torch.manual_seed(a.seed)
    xtr, ytr = load("train"); xte, yte = load("test")
    if a.limit is not None:
        xtr, ytr = xtr[:a.limit], ytr[:a.limit]
    t = Teacher(); opt = torch.optim.Adam(t.parameters(), 1e-3)
    t0 = time.time()
    for ep in range(a.teacher_epochs):
        t.train(); perm = torch.randperm(len(xtr))
        for i in range(0, len(xtr), a.bs):
            b = perm[i:i+a.bs]; opt.zero_grad(); F.cross_entropy(t(xtr[b]), ytr[b]).backward(); opt.step()
    print(f"teacher acc={acc(t, xte, yte):.4f} train_s={time.time()-t0:.1f}")
    t.eval()
    for mode in ["baseline", "kd"]:
        torch.manual_seed(a.seed)
        s = Student(a.hidden); opt = torch.optim.Adam(s.parameters(), 1e-3); n = 0; t0 = time.time()
        for ep in range(a.student_epochs):
            s.train(); perm = torch.randperm(len(xtr))
            for i in range(0, len(xtr), a.bs):
                b = perm[i:i+a.bs]; opt.zero_grad()
                out = s(xtr[b])
                if mode == "kd":
                    with torch.no_grad():
                        tl = t(xtr[b])
                    loss = kd_loss(out, tl, ytr[b], a.T, a.alpha)
                else:
                    loss = F.cross_entropy(out, ytr[b])
                loss.backward(); opt.step(); n += len(b)
        dt = time.time() - t0
        print(f"student[{mode}] acc={acc(s, xte, yte):.4f} samples_per_s={n/dt:.0f} wall_s={dt:.1f}")

if __name__ == "__main__":
    main()
