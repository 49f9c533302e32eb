#!/usr/bin/env bash
# The checks that need a GPU, for a machine with a CUDA device, a CUDA build of torch and
# triton (CI has none and skips them): the CUDA tests (Triton kernels against the numba
# kernels and the reference; kerasopt.torch on CUDA parameters), then `kerasopt bench`, whose
# GPU section (kerasopt with Triton vs torch's fused and foreach Adam and a device triad)
# runs only when torch sees a device. Uses $PYTHON (default python3) as it is: it installs
# nothing. Usage: bash scripts/gpu_check.sh [OUTPUT_DIR]   (default: gpu-results)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
out="${1:-gpu-results}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
"$python" - <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device")
import triton

print(f"gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
      f"triton {triton.__version__}")
PY
# With a device present none of these skip for want of one (-rs lists any skip).
"$python" -m pytest -rs -p no:cacheprovider tests/torch/test_cuda_kernel.py \
    tests/torch/test_torch_cuda_frontend.py tests/torch/test_torch_api.py \
    tests/torch/test_torch_state.py tests/torch/test_torch_plan.py
"$python" -m kerasopt.cli.main bench --no-subprocess --repeats 30 --output "$out"
