#!/usr/bin/env bash
# Project set-up: libtorch (from PyPI's torch wheel) and Python's tokenizers and safetensors into one cache folder
# outside the clone, and Fashion-MNIST and GCIDE (Debian packages) into the project's data dir.
# Idempotent: each step is skipped when done.
#
# Environment:
#   DISTILL_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/distill)
#   LIBTORCH       a user's own libtorch; when set, the torch install is skipped
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
TORCH_VERSION=2.11.0
cache=${DISTILL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/distill}
pydir="$cache/torch-$TORCH_VERSION"
py=${PYTHON:-python3}

if [ -n "${LIBTORCH:-}" ]; then
  echo "setup: using LIBTORCH=$LIBTORCH"
elif [ -f "$pydir/.complete" ]; then
  echo "setup: torch $TORCH_VERSION already in $pydir"
else
  echo "setup: installing torch==$TORCH_VERSION into $pydir (about 4.6 GB, once)"
  rm -rf "$pydir.partial"
  mkdir -p "$cache"
  "$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$pydir.partial" "torch==$TORCH_VERSION" numpy
  rm -rf "$pydir"
  mv "$pydir.partial" "$pydir"
  touch "$pydir/.complete"
fi
# .cargo/config.toml points LIBTORCH at this link; a user's own LIBTORCH wins over it.
target=${LIBTORCH:-$pydir/torch}
[ "$(readlink "$here/.libtorch" 2>/dev/null)" = "$target" ] || ln -sfn "$target" "$here/.libtorch"

# Fashion-MNIST: the system copy if installed, else Debian's package unpacked into data/ (no root).
data="$here/data/fashion-mnist"
sys=/usr/share/datasets/fashion-mnist
if [ -f "$data/train-images-idx3-ubyte.gz" ]; then
  echo "setup: Fashion-MNIST already in $data"
elif [ -f "$sys/train-images-idx3-ubyte.gz" ]; then
  mkdir -p "$(dirname "$data")"; ln -sfn "$sys" "$data"
  echo "setup: Fashion-MNIST linked from $sys"
else
  echo "setup: fetching Debian package dataset-fashion-mnist"
  tmp=$(mktemp -d)
  ( cd "$tmp" && { apt-get download dataset-fashion-mnist 2>/dev/null || { apt-get update -qq >/dev/null 2>&1 || true; apt-get download dataset-fashion-mnist; }; } )
  dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/root"
  mkdir -p "$data"
  cp "$tmp/root$sys"/*.gz "$data/"
  rm -rf "$tmp"
  echo "setup: Fashion-MNIST unpacked into $data"
fi

# GCIDE (the Collaborative International Dictionary of English, GPL), the language-model corpus:
# the system copy under /usr/share/dictd if installed, else Debian's dict-gcide unpacked into
# data/gcide (no root). Its gcide.dict.dz is dictzip, which reads as gzip.
data="$here/data/gcide"
sys=/usr/share/dictd
if [ -f "$data/gcide.dict.dz" ] && [ -f "$data/gcide.index" ]; then
  echo "setup: GCIDE already in $data"
elif [ -f "$sys/gcide.dict.dz" ] && [ -f "$sys/gcide.index" ]; then
  mkdir -p "$data"; ln -sfn "$sys/gcide.dict.dz" "$data/gcide.dict.dz"; ln -sfn "$sys/gcide.index" "$data/gcide.index"
  echo "setup: GCIDE linked from $sys"
else
  echo "setup: fetching Debian package dict-gcide"
  tmp=$(mktemp -d)
  ( cd "$tmp" && { apt-get download dict-gcide 2>/dev/null || { apt-get update -qq >/dev/null 2>&1 || true; apt-get download dict-gcide; }; } )
  dpkg -x "$tmp"/dict-gcide_*.deb "$tmp/root"
  mkdir -p "$data"
  cp "$tmp/root$sys/gcide.dict.dz" "$tmp/root$sys/gcide.index" "$data/"
  rm -rf "$tmp"
  echo "setup: GCIDE unpacked into $data"
fi

# Python's tokenizers (the same 0.23 family as the Rust crate) into the cache next to torch, for
# the test that loads the Rust-trained tokenizer.json in Python; `.pytokenizers` links to it.
# --no-deps: Tokenizer.from_file needs none of its dependencies (huggingface_hub is for downloads).
PY_TOKENIZERS_VERSION=0.23.2
tokdir="$cache/py-tokenizers-$PY_TOKENIZERS_VERSION"
if [ -f "$tokdir/.complete" ]; then
  echo "setup: Python tokenizers $PY_TOKENIZERS_VERSION already in $tokdir"
else
  echo "setup: installing Python tokenizers==$PY_TOKENIZERS_VERSION into $tokdir"
  rm -rf "$tokdir.partial"
  mkdir -p "$cache"
  "$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --no-deps \
    --target "$tokdir.partial" "tokenizers==$PY_TOKENIZERS_VERSION"
  rm -rf "$tokdir"
  mv "$tokdir.partial" "$tokdir"
  touch "$tokdir/.complete"
fi
[ "$(readlink "$here/.pytokenizers" 2>/dev/null)" = "$tokdir" ] || ln -sfn "$tokdir" "$here/.pytokenizers"

# Python's safetensors into the cache next to torch, for the tests that load a TorchScript
# student's model.<hash>.safetensors with safetensors.torch.load_file into its PyTorch class
# (load_state_dict(..., strict=True)); `.pysafetensors` links to it. --no-deps: its torch
# loader needs torch (the cache's) and `packaging`, installed beside it.
PY_SAFETENSORS_VERSION=0.7.0
stdir="$cache/py-safetensors-$PY_SAFETENSORS_VERSION"
if [ -f "$stdir/.complete" ]; then
  echo "setup: Python safetensors $PY_SAFETENSORS_VERSION already in $stdir"
else
  echo "setup: installing Python safetensors==$PY_SAFETENSORS_VERSION into $stdir"
  rm -rf "$stdir.partial"
  mkdir -p "$cache"
  "$py" -m pip install --quiet --disable-pip-version-check --no-warn-script-location --no-deps \
    --target "$stdir.partial" "safetensors==$PY_SAFETENSORS_VERSION" "packaging==24.2"
  rm -rf "$stdir"
  mv "$stdir.partial" "$stdir"
  touch "$stdir/.complete"
fi
[ "$(readlink "$here/.pysafetensors" 2>/dev/null)" = "$stdir" ] || ln -sfn "$stdir" "$here/.pysafetensors"
