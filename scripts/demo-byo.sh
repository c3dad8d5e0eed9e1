#!/usr/bin/env bash
# `make demo-byo`: distillation on your own image folder, with a teacher that sees the images
# in another shape than the student. Fashion-MNIST stands in for your data:
#
#   1. write Fashion-MNIST as an image folder (ROOT/train/CLASS/*.png, ROOT/test/CLASS/*.png;
#      scripts/idx_to_image_folder.py), the layout torchvision's ImageFolder reads;
#   2. train a CNN teacher on it in RGB, 3 x 28 x 28 (the gray images converted);
#   3. serve it with teacher-server on a free local port;
#   4. export your own PyTorch student (scripts/demo_students.py's GrayCnn: convolutions,
#      BatchNorm, dropout) as TorchScript with scripts/export_student.py, and distill it; it sees
#      the same images in gray at 20 x 20 (1 x 20 x 20): each batch is cropped and flipped
#      (--augment), and the teacher gets the same crop of each image in its own 3 x 28 x 28 view
#      (its shape from its ModelInfo);
#   5. evaluate the student's checkpoint, per class by name (the classes it recorded);
#   6. load the trained student back in PyTorch, both ways (torch.jit.load of student.<hash>.pt,
#      and GrayCnn().load_state_dict of model.<hash>.safetensors), and compare their logits.
#
# Runs after `make setup` and `cargo build --release --bins`. Tunables (environment):
#   DEMO_RUNS (runs)  DEMO_BYO_IMAGES (data/fashion-mnist-images)  DEMO_BYO_PER_CLASS (0: all)
#   DEMO_BYO_TEACHER_EPOCHS (2)  DEMO_BYO_DISTILL_EPOCHS (4)  DEMO_BYO_AUGMENT (crop,flip)
#   DEMO_THREADS (number of CPUs)  STUDENT_DATA_DIR (data/fashion-mnist, the IDX files)
#   BIN (target/release)  LIBTORCH (.libtorch: the torch package Python imports is beside it)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=demo-common.sh
source scripts/demo-common.sh

bin=${BIN:-target/release}
runs=${DEMO_RUNS:-runs}
idx=${STUDENT_DATA_DIR:-data/fashion-mnist}
images=${DEMO_BYO_IMAGES:-data/fashion-mnist-images}
per_class=${DEMO_BYO_PER_CLASS:-0}
teacher_epochs=${DEMO_BYO_TEACHER_EPOCHS:-2}
distill_epochs=${DEMO_BYO_DISTILL_EPOCHS:-4}
augment=${DEMO_BYO_AUGMENT:-crop,flip}
threads=${DEMO_THREADS:-$(nproc)}
# Fashion-MNIST's statistics: both models normalize with them.
norm=(--mean 0.2860 --std 0.3530)

# Python with the project's torch (the wheel `make setup` installed), and safetensors.
torch_site=$(dirname "$(readlink -f "${LIBTORCH:-.libtorch}")")
export PYTHONPATH="$PWD/scripts:$PWD/.pysafetensors:$torch_site${PYTHONPATH:+:$PYTHONPATH}"

unset STUDENT_DATA_DIR
export STUDENT_DEVICE=${STUDENT_DEVICE:-cpu}
export RUST_LOG=${RUST_LOG:-info}
demo_start demo-byo "$idx"

stamp "1/6 image folder: $idx -> $images (class folders 0_t-shirt_top ... 9_ankle_boot)"
python3 scripts/idx_to_image_folder.py --idx "$idx" --out "$images" --per-class "$per_class"

# 2. The teacher sees RGB 3 x 28 x 28 (--channels 3 converts the gray files). --resume reuses a
# teacher already trained that far.
stamp "2/6 teacher: cnn on $images in RGB 3x28x28, $teacher_epochs epochs -> $runs/byo-teacher"
"$bin/student-trainer" train --data-dir "$images" --arch cnn --channels 3 --image-size 28,28 \
  "${norm[@]}" --epochs "$teacher_epochs" --out "$runs/byo-teacher" --resume \
  --threads "$threads" --no-epoch-eval

stamp "3/6 starting teacher-server on a free local port"
start_teacher "$runs/byo-teacher-server" --model "$runs/byo-teacher"
stamp "teacher-server listening on $teacher_addr (log: $server_log)"

# 4. Your student: exported from PyTorch with its initial weights, then distilled. It sees gray
# 1 x 20 x 20; the teacher its own 3 x 28 x 28 view of the same crops.
stamp "4/6 student: scripts/demo_students.py:GrayCnn exported to $runs/byo-student.pt, distilled on gray 1x20x20 (teacher: RGB 3x28x28), --augment $augment, $distill_epochs epochs -> $runs/byo-distilled"
mkdir -p "$runs"
python3 scripts/export_student.py demo_students:GrayCnn --input-shape 1,20,20 \
  --out "$runs/byo-student.pt"
rm -rf "$runs/byo-distilled"
"$bin/student-trainer" distill --teacher "$teacher" --data-dir "$images" \
  --student "$runs/byo-student.pt" --channels 1 --image-size 20,20 "${norm[@]}" \
  --augment "$augment" --epochs "$distill_epochs" --out "$runs/byo-distilled" --threads 1

stamp "5/6 eval: the distilled student per class"
"$bin/student-trainer" eval --checkpoint "$runs/byo-distilled" --data-dir "$images"

stamp "6/6 the trained student back in PyTorch"
python3 - "$runs/byo-distilled" <<'EOF'
import glob, json, sys
import safetensors.torch, torch
from demo_students import GrayCnn
run = sys.argv[1]
(module_file,) = glob.glob(f"{run}/student.*.pt")
(weights,) = glob.glob(f"{run}/model.*.safetensors")
jit = torch.jit.load(module_file, map_location="cpu").eval()
model = GrayCnn()
model.load_state_dict(safetensors.torch.load_file(weights), strict=True)
model.eval()
x = torch.randn(4, 1, 20, 20, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    same = torch.allclose(jit(x), model(x), atol=1e-6)
accuracy = json.load(open(f"{run}/report.json"))["student"]["accuracy"]
print(f"torch.jit.load({module_file}) and GrayCnn().load_state_dict({weights}, strict=True) "
      f"give {'the same' if same else 'DIFFERENT'} logits; the student's test accuracy: "
      f"{100 * accuracy:.2f} %")
sys.exit(0 if same else 1)
EOF

stamp "done: report in $runs/byo-distilled/report.json; total $(( $(date +%s) - t_start )) s"
