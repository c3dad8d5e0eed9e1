#!/usr/bin/env bash
# `make demo`: a real knowledge distillation across two processes, on Fashion-MNIST.
#
#   1. train the CNN teacher (reused from runs/teacher when already trained that far);
#   2. serve it with teacher-server on a free local port;
#   3. train the MLP student on 1,000 labelled images only (the baseline);
#   4. distill the same MLP from the served teacher on all 60,000 images, with labels for only
#      those 1,000 (soft targets alone for the rest), and print the report;
#   5. draw both students' training curves into runs/report.png (`student-trainer plot`);
#   6. stop the server.
#
# Runs after `make setup` and `cargo build --release --bins`. Tunables (environment):
#   DEMO_RUNS (runs)  DEMO_TEACHER_EPOCHS (4)  DEMO_BASELINE_EPOCHS (30)  DEMO_DISTILL_EPOCHS (4)
#   DEMO_THREADS (number of CPUs)  DEMO_PRECISION (bf16 where the CPU has native bf16, else f32)
#   STUDENT_DATA_DIR (data/fashion-mnist)  BIN (target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=demo-common.sh
source scripts/demo-common.sh

bin=${BIN:-target/release}
runs=${DEMO_RUNS:-runs}
data=${STUDENT_DATA_DIR:-data/fashion-mnist}
teacher_epochs=${DEMO_TEACHER_EPOCHS:-4}
baseline_epochs=${DEMO_BASELINE_EPOCHS:-30}
distill_epochs=${DEMO_DISTILL_EPOCHS:-4}
threads=${DEMO_THREADS:-$(nproc)}
labelled=1000

export STUDENT_DATA_DIR=$data STUDENT_DEVICE=${STUDENT_DEVICE:-cpu}
export RUST_LOG=${RUST_LOG:-info}
demo_start demo "$data"

# 1. Teacher. --resume makes this step idempotent: a checkpoint already at the target epoch is
# reused as is, an interrupted one is continued.
stamp "1/5 teacher: cnn, $teacher_epochs epochs on 60,000 labelled images -> $runs/teacher"
"$bin/student-trainer" train --arch cnn --epochs "$teacher_epochs" --out "$runs/teacher" \
  --resume --threads "$threads" --no-epoch-eval

# 2. Serve it. Its first stdout line is `listening on HOST:PORT`. A bf16 teacher only where the
# CPU computes bf16 natively (avx512_bf16 or AMX): on an AVX2-only CPU bf16 is ~10x slower than f32.
precision=${DEMO_PRECISION:-}
if [ -z "$precision" ]; then
  if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then precision=bf16; else precision=f32; fi
fi
stamp "2/5 starting teacher-server (--precision $precision) on a free local port"
start_teacher "$runs/teacher-server" --model "$runs/teacher" --precision "$precision"
addr=$teacher_addr
stamp "teacher-server listening on $addr (log: $server_log)"

# 3. Baseline: the student on the 1,000 labelled images alone.
stamp "3/5 baseline: mlp on $labelled labelled images, $baseline_epochs epochs -> $runs/baseline"
rm -rf "$runs/baseline"
"$bin/student-trainer" train --arch mlp --limit "$labelled" --epochs "$baseline_epochs" \
  --out "$runs/baseline" --threads "$threads"

# 4. Distillation from the served teacher: all 60,000 images, labels for the first 1,000 only.
# The teacher's forward passes dominate: give the student one thread, the server the rest.
# Epoch 1 asks the teacher and fills a logit cache (keyed by the teacher's fingerprint and
# precision, the wire format and the dataset's hash); epochs 2.. read the cache, not the teacher.
# Dense soft targets in f16 keep the distilled accuracy of dense f32 (10 classes: 20 bytes/sample).
stamp "4/5 distill: mlp from $teacher, $distill_epochs epochs, labels for $labelled images -> $runs/distilled"
rm -rf "$runs/distilled"
"$bin/student-trainer" distill --teacher "$teacher" --arch mlp --labels "$labelled" \
  --epochs "$distill_epochs" --out "$runs/distilled" --baseline "$runs/baseline" --threads 1 \
  --wire f16 --logit-cache "$runs/logit-cache"

# 5. The students' training curves (both evaluate the test split after every epoch for it: a
# second or two for the MLP): loss, test accuracy, samples/s, final accuracies with the teacher's.
stamp "5/5 plot: training curves of $runs/baseline and $runs/distilled -> $runs/report.png"
"$bin/student-trainer" plot "$runs/baseline" "$runs/distilled" --output "$runs/report.png"

stamp "done: report in $runs/distilled/report.json, curves in $runs/report.png; total $(( $(date +%s) - t_start )) s"
