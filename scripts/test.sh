#!/usr/bin/env bash
# The whole test suite on a fresh machine: creates .venv if needed, installs kerasopt with
# every extra the tests use (PyTorch CPU 2.13.0, JAX/optax, Keras 3.15.1 as the oracle),
# installs R + reticulate + testthat from Debian's packages when missing (for the R package's
# tests), checks lint, and runs pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[test,jax,demo]"
bash r/run-tests.sh --install-only
.venv/bin/ruff check src tests
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
