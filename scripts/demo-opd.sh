#!/usr/bin/env bash
# `make demo-opd`: on-policy distillation (GKD, Agarwal et al. 2024) of a language model against
# off-policy KD, on the GCIDE dictionary (`make setup` fetches it), at the same budget.
#
#   1. the teacher: a 4-block, d=256 decoder trained on the next-token labels of 20,480
#      sequences of 128 tokens, one epoch (2.6 M tokens, ten times make demo-lm's teacher;
#      reused from runs/opd-teacher when already trained: 30 minutes once on a busy 2-core
#      machine); it also trains the byte-level BPE tokenizer (8,192 tokens);
#   2. the student's starting point: a 2-block, d=128 decoder on the labels of 1,024 sequences,
#      2 epochs, as make demo-lm's baseline (reused from runs/opd-baseline);
#   3. the prompts file, written once by the gcide_prompts example (text/examples): one line per
#      dictionary entry that fits (a prompt of at most 128 - 48 tokens, a completion of at most
#      48 with <|endoftext|>: 77,597 of 126,236 entries), its first 4 words (headword,
#      pronunciation, part of speech) the prompt and the rest of the entry the completion;
#      GCIDE's held-out entries are the lines that distill holds out (one in 20);
#   4. serve the teacher with teacher-server on a free local port;
#   5. four students, each started from the baseline (--init) and evaluated on the same
#      held-out prompts with the same sampling seed:
#      - the initial student: one batch at learning rate 0 (the first step of the linear
#        warm-up), so its weights stay the baseline's; distill has no evaluation before training;
#      - off-policy KD (--on-policy 0): the prompt + reference completion of each entry, the loss
#        on the completion only;
#      - on-policy (--on-policy 1): the student's own completions of the same prompts, sampled
#        with its current weights, scored by the teacher;
#      - mixed (--on-policy 0.5): each batch one or the other;
#      all with the reverse KL at T = 1 against the teacher's dense logits (bf16 on the wire;
#      the top 32 with the tail's bucket would leave how the student spreads its mass outside
#      them, which is where its samples go wrong, unpenalised) and no cross-entropy on the
#      references (--alpha 1); the same prompts, batches, optimizer steps and learning-rate
#      schedule: one teacher call per training batch in every run;
#   6. a table: the teacher-scored reverse KL of each student's own samples on the held-out
#      prompts (nats per completion token), perplexity and next-token top-1 on the corpus's
#      held-out split, the share of held-out completions that ended with <|endoftext|>, and
#      training tokens (completion tokens trained on) per second of the run.
#
# About 10 minutes on 2 cores after `make setup`, `cargo build --release --bins` and the teacher
# (the prompts file needs cargo once more, for the example). Tunables (environment):
#   DEMO_RUNS (runs)  LM_DATA_DIR (data/gcide)  BIN (target/release)  DEMO_THREADS (CPUs)
#   DEMO_OPD_PROMPTS (training prompts, 4800)  DEMO_OPD_EPOCHS (1)  DEMO_OPD_MAX_NEW_TOKENS (48)
#   DEMO_OPD_EVAL_PROMPTS (256)  DEMO_OPD_LR (1e-3)
#   DEMO_OPD_TEACHER_SEQUENCES (20480)  DEMO_OPD_TEACHER_EPOCHS (1)
#   DEMO_OPD_BASELINE_SEQUENCES (1024)  DEMO_OPD_BASELINE_EPOCHS (2)
#   DEMO_OPD_TEACHER_ARCH  DEMO_OPD_STUDENT_ARCH  DEMO_OPD_SEQ_LEN (128)  DEMO_OPD_VOCAB (8192)
#   DEMO_OPD_PROMPTS_FILE (runs/opd-prompts-S-M.jsonl; written when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=demo-common.sh
source scripts/demo-common.sh

bin=${BIN:-target/release}
runs=${DEMO_RUNS:-runs}
data=${LM_DATA_DIR:-data/gcide}
threads=${DEMO_THREADS:-$(nproc)}
train_prompts=${DEMO_OPD_PROMPTS:-4800}
epochs=${DEMO_OPD_EPOCHS:-1}
max_new=${DEMO_OPD_MAX_NEW_TOKENS:-48}
eval_prompts=${DEMO_OPD_EVAL_PROMPTS:-256}
lr=${DEMO_OPD_LR:-1e-3}
teacher_sequences=${DEMO_OPD_TEACHER_SEQUENCES:-20480}
teacher_epochs=${DEMO_OPD_TEACHER_EPOCHS:-1}
baseline_sequences=${DEMO_OPD_BASELINE_SEQUENCES:-1024}
baseline_epochs=${DEMO_OPD_BASELINE_EPOCHS:-2}
teacher_arch=${DEMO_OPD_TEACHER_ARCH:-lm:layers=4,d=256,heads=4}
student_arch=${DEMO_OPD_STUDENT_ARCH:-lm:layers=2,d=128,heads=4}
seq_len=${DEMO_OPD_SEQ_LEN:-128}
vocab=${DEMO_OPD_VOCAB:-8192}
prompts=${DEMO_OPD_PROMPTS_FILE:-$runs/opd-prompts-$seq_len-$max_new.jsonl}
batch=16
common=(--data-dir "$data" --seq-len "$seq_len" --vocab-size "$vocab" --device cpu
        --optimizer adamw --lr-schedule cosine --clip-grad-norm 1 --no-epoch-eval)

export RUST_LOG=${RUST_LOG:-info}
demo_start demo-opd "$data"

# 1. The teacher, trained once (--resume reuses a checkpoint already at the target epoch).
stamp "1/6 teacher: $teacher_arch, $teacher_epochs epochs on $teacher_sequences sequences of $seq_len tokens -> $runs/opd-teacher"
"$bin/student-trainer" train --arch "$teacher_arch" "${common[@]}" --limit "$teacher_sequences" \
  --epochs "$teacher_epochs" --batch-size 32 --lr 1.5e-3 --warmup-steps 50 \
  --out "$runs/opd-teacher" --resume --threads "$threads" | tee "$runs/opd-teacher.out"

# 2. The student's starting point, on the labels alone (reused the same way).
stamp "2/6 baseline: $student_arch, $baseline_epochs epochs on $baseline_sequences sequences -> $runs/opd-baseline"
"$bin/student-trainer" train --arch "$student_arch" "${common[@]}" --limit "$baseline_sequences" \
  --epochs "$baseline_epochs" --batch-size "$batch" --lr 2e-3 --warmup-steps 20 \
  --out "$runs/opd-baseline" --resume --threads "$threads" | tee "$runs/opd-baseline.out"

# 3. The prompts, tokenized with the teacher's tokenizer to keep the entries that fit: a prompt
# of at most seq_len - max_new tokens, a completion (with <|endoftext|>) of at most max_new.
if [ ! -s "$prompts" ]; then
  stamp "3/6 prompts: GCIDE entries split after 4 words -> $prompts"
  ${CARGO:-cargo} run --release -q -p distill-text --example gcide_prompts -- "$data" "$prompts.tmp" \
    --tokenizer "$runs/opd-teacher/tokenizer.json" --seq-len "$seq_len" --max-new-tokens "$max_new"
  mv "$prompts.tmp" "$prompts"
else
  stamp "3/6 prompts: reusing $prompts"
fi

# 4. Serve the teacher. A batch's dense logits (at most batch x seq_len x vocab in f32, 64 MiB
# here) exceed the default message limit, which is sized for top-k answers: raise it.
stamp "4/6 starting teacher-server on a free local port"
start_teacher "$runs/opd-teacher-server" --model "$runs/opd-teacher" --max-batch-size 64 \
  --threads "$threads" --max-message-bytes $(( batch * seq_len * vocab * 4 + (1 << 20) ))
stamp "teacher-server listening at $teacher (log: $server_log)"

# 5. The students. The on-policy phases (the student samples, the teacher scores, the student
# steps) take turns on the CPU, so each process may use every core.
distill() {
  local out=$1
  shift
  rm -rf "${runs:?}/$out"
  "$bin/student-trainer" distill --teacher "$teacher" --init "$runs/opd-baseline" "${common[@]}" \
    --prompts "$prompts" --completion-field completion --max-new-tokens "$max_new" \
    --eval-prompts "$eval_prompts" --batch-size "$batch" --loss rkl --temperature 1 --alpha 1 \
    --top-k 0 --wire bf16 --seed 1 --out "$runs/$out" --threads "$threads" "$@" \
    | tee "$runs/$out.out"
}
steps=$(( (train_prompts + batch - 1) / batch * epochs ))
stamp "5/6 initial student: one batch at learning rate 0 -> $runs/opd-initial"
distill opd-initial --on-policy 0 --limit "$batch" --epochs 1 --lr "$lr" --warmup-steps 1
budget=(--limit "$train_prompts" --epochs "$epochs" --lr "$lr" --warmup-steps 20)
stamp "5/6 off-policy KD: $steps steps of $batch prompts + reference completions -> $runs/opd-off-policy"
distill opd-off-policy --on-policy 0 "${budget[@]}"
stamp "5/6 on-policy: $steps steps of $batch prompts + the student's completions -> $runs/opd-on-policy"
distill opd-on-policy --on-policy 1 "${budget[@]}"
stamp "5/6 mixed: $steps steps, each batch on-policy with probability 0.5 -> $runs/opd-mixed"
distill opd-mixed --on-policy 0.5 "${budget[@]}"

# 6. The table, from each run's metrics.jsonl (its last epoch).
stamp "6/6 results"
python3 - "$runs" <<'EOF'
import json, sys
runs = sys.argv[1]

def metrics(run):
    return [json.loads(l) for l in open(f"{runs}/{run}/metrics.jsonl") if l.strip()]

teacher = metrics("opd-teacher")[-1]
print()
print(f"{'model':<16} {'lambda':>6} {'steps':>6} {'on-policy':>9} {'held-out RKL':>13} "
      f"{'perplexity':>11} {'top-1':>7} {'EOS rate':>9} {'length':>7} {'tokens/s':>9}")
print(f"{'teacher':<16} {'':>6} {teacher['step']:>6} {'':>9} {'':>13} "
      f"{teacher['test_perplexity']:>11.2f} {100 * teacher['test_accuracy']:>6.2f}%")
rows = {}
for name, run in [("initial student", "opd-initial"), ("off-policy KD", "opd-off-policy"),
                  ("on-policy", "opd-on-policy"), ("mixed", "opd-mixed")]:
    lines = metrics(run)
    m, op = lines[-1], lines[-1]["on_policy"]
    rows[name] = m
    if run == "opd-initial":
        lam = steps = on = tps = "-"
    else:
        lam, steps = f"{op['lambda']:g}", m["step"]
        on = sum(l["on_policy"]["on_policy_batches"] for l in lines)
        tps = f"{sum(l['tokens'] for l in lines) / sum(l['wall_s'] for l in lines):.0f}"
    print(f"{name:<16} {lam:>6} {steps:>6} {on:>9} {op['heldout_reverse_kl']:>13.4f} "
          f"{m['test_perplexity']:>11.2f} {100 * m['test_accuracy']:>6.2f}% "
          f"{100 * op['heldout_eos_share']:>8.1f}% {op['heldout_completion_len']:>7.1f} {tps:>9}")
init = rows["initial student"]
off, on = rows["off-policy KD"], rows["on-policy"]
kl = lambda m: m["on_policy"]["heldout_reverse_kl"]
print()
print(f"Teacher against the initial student: perplexity {teacher['test_perplexity']:.1f} against "
      f"{init['test_perplexity']:.1f} ({init['test_perplexity'] / teacher['test_perplexity']:.1f}x "
      f"lower), top-1 {100 * teacher['test_accuracy']:.2f}% against {100 * init['test_accuracy']:.2f}%; "
      f"the initial student's own completions are {kl(init):.3f} nats per token from the teacher.")
print(f"On-policy against off-policy KD, same steps and teacher calls: held-out reverse KL "
      f"{kl(on):.4f} against {kl(off):.4f} ({'lower' if kl(on) < kl(off) else 'NOT lower'}, "
      f"{100 * (kl(on) - kl(off)) / kl(off):+.1f} %); completion tokens trained "
      f"{sum(l['tokens'] for l in metrics('opd-on-policy'))} against "
      f"{sum(l['tokens'] for l in metrics('opd-off-policy'))}.")
print("held-out RKL: teacher-scored reverse KL of each student's own completions (T = 1, the same "
      "seed) of the held-out prompts, nats per token; perplexity, top-1: the corpus's held-out "
      "split; EOS rate, length: those completions ending with <|endoftext|>, their mean tokens; "
      "on-policy: batches the student sampled; tokens/s: completion tokens trained per second, "
      "sampling and scoring included.")
print()
EOF
stamp "done: samples in $runs/opd-on-policy/samples.jsonl; total $(( $(date +%s) - t_start )) s"
