#!/usr/bin/env bash
# `make demo-lm`: token-level knowledge distillation of a language model across two processes,
# on a real English corpus (the GCIDE dictionary, Debian's dict-gcide, fetched by `make setup`).
#
#   1. tokenize: a byte-level BPE tokenizer (8,192 tokens) trained once on the corpus's training
#      split, the text packed into sequences of 128 tokens (every 20th entry held out);
#   2. the teacher: a 4-block, d=256 decoder trained on the next-token labels (reused from
#      runs/lm-teacher when already trained);
#   3. serve it with teacher-server on a free local port;
#   4. the baseline: a 2-block, d=128 student on the next-token labels alone;
#   5. the same student distilled from the served teacher (top-32 per position with the tail's
#      log-sum-exp, T = 2, alpha = 0.5), with the same token budget;
#   6. a table of perplexity and next-token top-1 accuracy on the held-out split (evaluated after
#      each run's last epoch), parameters and training tokens/s.
#
# Runs after `make setup` and `cargo build --release --bins`. Tunables (environment):
#   DEMO_RUNS (runs)  DEMO_LM_SEQUENCES (training sequences, 1024)  DEMO_LM_TEACHER_EPOCHS (2)
#   DEMO_LM_EPOCHS (student epochs, 2)  DEMO_THREADS (number of CPUs)  LM_DATA_DIR (data/gcide)
#   BIN (target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=demo-common.sh
source scripts/demo-common.sh

bin=${BIN:-target/release}
runs=${DEMO_RUNS:-runs}
data=${LM_DATA_DIR:-data/gcide}
sequences=${DEMO_LM_SEQUENCES:-1024}
teacher_epochs=${DEMO_LM_TEACHER_EPOCHS:-2}
epochs=${DEMO_LM_EPOCHS:-2}
threads=${DEMO_THREADS:-$(nproc)}
teacher_arch=lm:layers=4,d=256,heads=4
student_arch=lm:layers=2,d=128,heads=4
common=(--data-dir "$data" --seq-len 128 --vocab-size 8192 --limit "$sequences" --batch-size 16
        --device cpu --optimizer adamw --lr-schedule cosine --warmup-steps 20 --clip-grad-norm 1
        --no-epoch-eval)

export RUST_LOG=${RUST_LOG:-info}
demo_start demo-lm "$data/gcide.dict.dz"

# Every run: AdamW, linear warm-up then cosine decay, gradient norm clipped at 1; the held-out
# split is evaluated after the last epoch only. `train` prints the parameter count.
# 1 + 2. Teacher (the first run also trains the tokenizer and packs the corpus, about a minute).
# --resume makes this step idempotent: a checkpoint already at the target epoch is reused.
stamp "1-2/6 teacher: $teacher_arch, $teacher_epochs epochs on $sequences sequences of 128 tokens -> $runs/lm-teacher"
"$bin/student-trainer" train --arch "$teacher_arch" "${common[@]}" --epochs "$teacher_epochs" \
  --lr 1e-3 --out "$runs/lm-teacher" --resume --threads "$threads" | tee "$runs/lm-teacher.out"

# 3. Serve it. Its first stdout line is `listening on HOST:PORT`.
stamp "3/6 starting teacher-server on a free local port"
start_teacher "$runs/lm-teacher-server" --model "$runs/lm-teacher" --max-batch-size 64
stamp "teacher-server listening at $teacher (log: $server_log)"

# 4. Baseline: the student on the next-token labels alone.
stamp "4/6 baseline: $student_arch, $epochs epochs, labels only -> $runs/lm-baseline"
rm -rf "$runs/lm-baseline"
"$bin/student-trainer" train --arch "$student_arch" "${common[@]}" --epochs "$epochs" \
  --lr 2e-3 --out "$runs/lm-baseline" --threads "$threads" | tee "$runs/lm-baseline.out"

# 5. Distillation: the same student, the same sequences and epochs, with the teacher's top-32
# per position. The teacher's forward passes share the CPU with the student.
stamp "5/6 distill: $student_arch from $teacher, $epochs epochs, top-32 at T=2 -> $runs/lm-distilled"
rm -rf "$runs/lm-distilled"
"$bin/student-trainer" distill --teacher "$teacher" --arch "$student_arch" "${common[@]}" \
  --epochs "$epochs" --lr 2e-3 --top-k 32 --temperature 2 --alpha 0.5 --wire bf16 \
  --out "$runs/lm-distilled" --threads "$(( threads > 1 ? threads / 2 : 1 ))" \
  | tee "$runs/lm-distilled.out"

# 6. The table, from each run's metrics.jsonl (its last epoch's held-out evaluation and
# training throughput) and the parameter counts the commands printed.
stamp "6/6 results"
python3 - "$runs" <<'EOF'
import json, re, sys
runs = sys.argv[1]
print()
print(f"{'model':<10} {'arch':<26} {'params':>10} {'perplexity':>11} {'top-1':>8} {'train tokens/s':>15}")
for name, run in [("teacher", "lm-teacher"), ("baseline", "lm-baseline"), ("distilled", "lm-distilled")]:
    lines = [json.loads(l) for l in open(f"{runs}/{run}/metrics.jsonl") if l.strip()]
    last = lines[-1]
    tps = sum(l.get("tokens", 0) for l in lines) / max(1e-9, sum(l["wall_s"] for l in lines))
    out = open(f"{runs}/{run}.out").read()
    m = re.search(r"(lm:\S+) \((\d+) parameters\)", out)
    arch, params = (m.group(1), m.group(2)) if m else ("?", "?")
    print(f"{name:<10} {arch:<26} {params:>10} {last['test_perplexity']:>11.2f} "
          f"{100 * last['test_accuracy']:>7.2f}% {tps:>15.0f}")
print()
EOF
stamp "done: report in $runs/lm-distilled/report.json; total $(( $(date +%s) - t_start )) s"
