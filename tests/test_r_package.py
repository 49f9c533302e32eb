"""The R package in r/ (optimizer_adam(), optimizer_adamax(), optimizer_adam_w(), the
schedules) passes its testthat tests against this Python's kerasopt: training R arrays,
the Keras optimizers of ``keras = TRUE`` in a Keras model built through reticulate (this
Python's keras, torch backend), the message for a Python without kerasopt, and the R
examples of README.md and docs/keras.md.

r/run-tests.sh installs R, reticulate and testthat from Debian's packages when they are
missing (which needs root), installs the R package into a temporary library and runs the
tests with RETICULATE_PYTHON set to this interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "r" / "run-tests.sh"


def _can_install_r() -> bool:
    """run-tests.sh can apt-get R itself: we are root, or have password-less sudo."""
    if os.geteuid() == 0:
        return True
    if shutil.which("sudo") is None:
        return False
    return subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="the R tests run on POSIX systems")
def test_r_package() -> None:
    if shutil.which("Rscript") is None and not _can_install_r():
        pytest.skip(
            "Rscript is not installed and this user cannot install it (not root): run "
            "`sudo apt-get install r-base-core r-cran-reticulate r-cran-testthat`, or "
            "`sudo bash r/run-tests.sh --install-only`."
        )
    proc = subprocess.run(
        ["bash", str(SCRIPT), sys.executable],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"r/run-tests.sh exited with {proc.returncode}:\n{output}"
    assert "R tests:" in proc.stdout and " 0 failed" in proc.stdout, output
