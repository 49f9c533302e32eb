#!/usr/bin/env bash
# The main job on a fresh machine: creates .venv if needed, installs kerasopt with the demo
# extra (PyTorch 2.13.0's CPU build, numba for the fused kernels, Keras 3.15.1 as the
# reference, tqdm, matplotlib) and runs `kerasopt demo`. Arguments go to it.
#
# PyTorch: where pip would pick a build that pulls CUDA libraries (several GB; PyPI's Linux
# wheels do), torch comes from PyTorch's CPU index instead ($TORCH_INDEX_URL overrides it).
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip)
"${pip[@]}" install -q --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    torch_index=()
    if "${pip[@]}" install --dry-run --quiet --report - "torch==2.13.0" 2>/dev/null \
            | grep -Eq '"name": *"nvidia-'; then
        torch_index=(--index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
    fi
    "${pip[@]}" install -q "torch==2.13.0" ${torch_index[@]+"${torch_index[@]}"}
fi
"${pip[@]}" install -q -e ".[demo]"
exec .venv/bin/kerasopt demo "$@"
