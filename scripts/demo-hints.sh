#!/usr/bin/env bash
# `make demo-hints`: hint distillation (FitNets, Romero et al. 2015) against KD alone, for a thin
# and deep student on Fashion-MNIST, as in `make demo` (1,000 labelled images, soft targets for
# all 60,000).
#
#   1. the CNN teacher of `make demo` (reused from runs/teacher when already trained that far);
#   2. serve it with teacher-server on a free local port;
#   3. KD alone: the thin deep student mlp:48,48,48,48,48 (5 hidden layers of 48 units against
#      the demo student's one of 128), DEMO_DISTILL_EPOCHS epochs;
#   4. hints + KD: the same student, its middle layer h3 guided by the teacher's penultimate
#      features (128 values, through a learned linear regressor): DEMO_HINT_STAGE_EPOCHS epochs
#      of hints alone (FitNets' stage 1), then the same KD epochs with the hint at weight
#      DEMO_HINT_WEIGHT;
#   5. KD alone for as many epochs as 4 takes in all (the same passes over the data);
#   6. a table of test accuracy per run, from each run's report.json.
#
# Runs after `make setup` and `cargo build --release --bins`. Tunables (environment):
#   DEMO_RUNS (runs)  DEMO_TEACHER_EPOCHS (4)  DEMO_DISTILL_EPOCHS (4)  DEMO_HINT_STAGE_EPOCHS (1)
#   DEMO_HINT_WEIGHT (0.1)  DEMO_THREADS (number of CPUs)  STUDENT_DATA_DIR (data/fashion-mnist)
#   BIN (target/release)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=demo-common.sh
source scripts/demo-common.sh

bin=${BIN:-target/release}
runs=${DEMO_RUNS:-runs}
data=${STUDENT_DATA_DIR:-data/fashion-mnist}
teacher_epochs=${DEMO_TEACHER_EPOCHS:-4}
epochs=${DEMO_DISTILL_EPOCHS:-4}
stage=${DEMO_HINT_STAGE_EPOCHS:-1}
weight=${DEMO_HINT_WEIGHT:-0.1}
threads=${DEMO_THREADS:-$(nproc)}
student=mlp:48,48,48,48,48
labelled=1000

export STUDENT_DATA_DIR=$data STUDENT_DEVICE=${STUDENT_DEVICE:-cpu}
export RUST_LOG=${RUST_LOG:-warn}
demo_start demo-hints "$data"

stamp "1/6 teacher: cnn, $teacher_epochs epochs -> $runs/teacher"
"$bin/student-trainer" train --arch cnn --epochs "$teacher_epochs" --out "$runs/teacher" \
  --resume --threads "$threads" --no-epoch-eval

stamp "2/6 starting teacher-server on a free local port"
start_teacher "$runs/hints-teacher-server" --model "$runs/teacher"
stamp "teacher-server listening at $teacher (log: $server_log)"

# Every student: the same seed, data, labels and KD loss (T = 4, alpha = 0.9, the defaults).
# The teacher's forward passes share the CPU with the student.
distill() {
  local out=$1
  shift
  rm -rf "$runs/$out"
  "$bin/student-trainer" distill --teacher "$teacher" --arch "$student" --labels "$labelled" \
    --no-epoch-eval --seed 1 --out "$runs/$out" --threads "$(( threads > 1 ? threads / 2 : 1 ))" \
    "$@" | tee "$runs/$out.out"
}
stamp "3/6 KD alone: $student, $epochs epochs -> $runs/hints-kd"
distill hints-kd --epochs "$epochs"
stamp "4/6 hints + KD: features=h3, $stage hint-stage epochs, then $epochs KD epochs with the hint at weight $weight -> $runs/hints-fitnets"
distill hints-fitnets --epochs "$epochs" --hint features=h3 --hint-stage-epochs "$stage" \
  --hint-weight "$weight"
stamp "5/6 KD alone for $(( epochs + stage )) epochs (as many passes as 4) -> $runs/hints-kd-long"
distill hints-kd-long --epochs "$(( epochs + stage ))"

stamp "6/6 results"
python3 - "$runs" <<'PY'
import json, sys
runs = sys.argv[1]
print()
print(f"{'run':<16} {'epochs':>6} {'test accuracy':>14}  hints")
for run in ["hints-kd", "hints-fitnets", "hints-kd-long"]:
    r = json.load(open(f"{runs}/{run}/report.json"))
    print(f"{run:<16} {r['epochs']:>6} {100 * r['student']['accuracy']:>13.2f}%  {r.get('hint') or '-'}")
t = json.load(open(f"{runs}/hints-kd/report.json"))["teacher"]
print(f"{'teacher (cnn)':<16} {'':>6} {100 * t['accuracy']:>13.2f}%")
print()
PY
stamp "done: total $(( $(date +%s) - t_start )) s"
