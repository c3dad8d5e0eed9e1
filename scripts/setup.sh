#!/usr/bin/env bash
# Project set-up: libtorch (from PyPI's torch wheel) into one cache folder outside the clone,
# and Fashion-MNIST into the project's data dir. Idempotent: each step is skipped when done.
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
