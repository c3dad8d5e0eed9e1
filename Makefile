# Two commands do everything on a fresh Debian/Ubuntu machine with Rust, Python 3 and pip:
#   make demo   train a teacher on Fashion-MNIST, serve it, distill a student, print the report
#   make test   the test suite
# Both run `setup` first, which skips whatever is already done.

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: setup build test demo demo-byo demo-lm demo-opd demo-hints soak bench fmt lint ci clean-runs

## setup: libtorch (PyPI torch==2.11.0) and Python tokenizers into ~/.cache/distill; Fashion-MNIST
## and GCIDE (Debian packages) into data/
setup:
	@bash scripts/setup.sh

## build: release binaries in target/release/
build: setup
	$(CARGO) build --release --bins

## test: the whole suite (unit + integration against the real binaries). One test at a time by
## default: each integration test starts real servers and students whose timings (batch
## timeouts, stalls, merged forward passes) assume they have the machine's cores; on 2 cores two
## at once cost them that and save about 30 s. TEST_THREADS=2 runs two at a time.
TEST_THREADS ?= 1
test: setup
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=$(TEST_THREADS)

## demo: the main job, end to end, on real data
demo: build
	bash scripts/demo.sh

## demo-byo: distillation on an image folder (Fashion-MNIST written as ROOT/train/CLASS/*.png):
## an RGB 3x28x28 CNN teacher trained on it, a gray 1x20x20 student distilled from it with
## augmented crops (the teacher sees the same crops in its own view)
demo-byo: build
	bash scripts/demo-byo.sh

## demo-lm: token-level distillation of a language model on the GCIDE dictionary (under 15
## minutes on 2 cores after setup and the build)
demo-lm: build
	bash scripts/demo-lm.sh

## demo-opd: on-policy distillation (GKD) of a language model on GCIDE entries against off-policy
## KD at the same budget: held-out teacher-scored reverse KL, perplexity, top-1, EOS rate (about
## 10 minutes on 2 cores after setup and the build; the teacher, trained once into
## runs/opd-teacher and reused, about 30 more)
demo-opd: build
	bash scripts/demo-opd.sh

## demo-hints: hint distillation (FitNets) against KD alone for a thin deep student on
## Fashion-MNIST, with make demo's teacher (about 25 minutes on 2 cores after setup and the build,
## 12 of them training the teacher when make demo has not)
demo-hints: build
	bash scripts/demo-hints.sh

## soak: teacher-server's resident memory under load, not a test (32 streams of batch 8 for
## 10 minutes, RSS every 10 s; fails above 5 % growth over the second half). Two cores busy.
## Options go in SOAK_ARGS (e.g. SOAK_ARGS="--minutes 2"); SOAK_PROFILE=dev for a debug build.
SOAK_PROFILE ?= release
SOAK_ARGS ?=
soak: setup
	$(CARGO) build --profile $(SOAK_PROFILE) -p teacher-server -p distill-tests --bins
	RUST_LOG=info target/$(if $(filter dev,$(SOAK_PROFILE)),debug,$(SOAK_PROFILE))/soak $(SOAK_ARGS)

## bench: distillation throughput on this machine, not a test: in-process cnn forward
## f32/bf16; teacher-server over loopback, 1/4/16 streams of batch 16, with and without dynamic
## batching; one epoch of online distillation (12,000 Fashion-MNIST samples) against the PyTorch
## reference loop scripts/reference/kd_pytorch.py and the same loop in process; wire bytes per
## sample and KD-loss error (dense f32/f16/bf16, top-k 8/32; 10 and 32,000 logits); cached
## against online epochs; a TorchScript MLP and CNN student trained by student-trainer against the
## same modules in a PyTorch loop (scripts/bench_torchscript_student.py); on-policy distillation
## (the student's sampling with and without its KV cache; distill --on-policy 1 against the
## served teacher versus scripts/reference/opd_pytorch.py). Alternating rounds, medians. Prints markdown tables, writes
## runs/bench/bench.json with the CPU's model, flags, cores and load average. About 8 minutes on 2 idle
## cores. Options in BENCH_ARGS (e.g. --quick, --only distill_,cache_, --only opd, --limit N).
BENCH_ARGS ?=
bench: setup
	$(CARGO) build --release -p teacher-server -p student-trainer -p distill-tests --bins
	target/release/bench $(BENCH_ARGS)

fmt:
	$(CARGO) fmt --all

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## ci: what .ci/run does
ci: lint test

clean-runs:
	rm -rf runs
