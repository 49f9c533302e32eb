#!/usr/bin/env bash
# The main job on a fresh machine: creates .venv if needed, installs kerasopt with the demo
# extra (PyTorch CPU 2.13.0, numba for the fused kernels, tqdm, matplotlib) and runs
# `kerasopt demo`. Arguments go to it.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[demo]"
exec .venv/bin/kerasopt demo "$@"
