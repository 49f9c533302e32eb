"""Installing: the extras, the install hints (from where kerasopt came from, never a bare
torch), ``scripts/demo.sh``'s choice of PyTorch build, the warning on the slow path, and
``python -m kerasopt``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kerasopt import _install

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
EXTRAS = PYPROJECT["project"]["optional-dependencies"]


def test_interop_extra_is_in_all_and_demo_has_keras():
    assert any(r.startswith("h5py") for r in EXTRAS["interop"])
    (everything,) = EXTRAS["all"]
    included = re.fullmatch(r"kerasopt\[([\w,]+)\]", everything)[1].split(",")
    assert {"torch", "jax", "fast", "interop", "demo", "bench"} <= set(included)
    assert set(included) <= set(EXTRAS)
    assert "keras==3.15.1" in EXTRAS["demo"]


def test_numba_stays_optional_at_the_documented_cost():
    # The decision of issue 17 item 2: numba (with llvmlite, ~200 MB installed, and an upper
    # bound on NumPy) stays an extra; the slow path warns instead (next test).
    core = PYPROJECT["project"]["dependencies"]
    assert not any(r.startswith(("numba", "llvmlite")) for r in core)
    assert any(r.startswith("numba") for r in EXTRAS["fast"])


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def test_the_slow_path_warns_once_with_the_reason_and_the_fix():
    pytest.importorskip("torch")
    done = _run(
        """
        import sys, warnings
        sys.modules["numba"] = None          # numba cannot be imported
        import numpy as np, torch
        import kerasopt, kerasopt.torch as kt
        warnings.simplefilter("always")
        with warnings.catch_warnings(record=True) as caught:
            v = kerasopt.Variable(np.zeros(3, np.float32))
            opt = kerasopt.Adamax(learning_rate=0.1)
            for _ in range(3):
                opt.apply([np.ones(3, np.float32)], [v])
            p = torch.nn.Parameter(torch.zeros(3))
            torch_opt = kt.Adam([p], learning_rate=0.1)
            for _ in range(3):
                p.grad = torch.ones(3)
                torch_opt.step()
        for w in caught:
            print(w.category.__name__, "|", w.message)
        print("weights", [round(float(x), 4) for x in v.numpy()],
              [round(float(x), 4) for x in p.detach()])
        """)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if "|" in line]
    assert len(lines) == 1, done.stdout  # once per process, not per step or per frontend
    category, message = lines[0].split(" | ")
    assert category == "UserWarning"
    assert "reference path" in message and "numba is not installed" in message
    assert "-m pip install" in message and "[fast]" in message
    # The steps still happened, on the reference path: 3 steps of lr (Adam and Adamax move
    # by lr per step under a constant gradient).
    assert "weights [-0.3, -0.3, -0.3] [-0.3, -0.3, -0.3]" in done.stdout


def test_no_warning_on_the_fast_path():
    pytest.importorskip("numba")
    done = _run(
        """
        import warnings
        import numpy as np, kerasopt
        warnings.simplefilter("error")
        v = kerasopt.Variable(np.zeros(3, np.float32))
        kerasopt.Adamax().apply([np.ones(3, np.float32)], [v])
        print("ok")
        """)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


class _Dist:
    def __init__(self, direct_url):
        self.direct_url = direct_url

    def read_text(self, name):
        assert name == "direct_url.json"
        return None if self.direct_url is None else json.dumps(self.direct_url)


@pytest.mark.parametrize(
    "direct_url, expected",
    [
        ({"url": "file:///opt/src/kerasopt", "dir_info": {"editable": True}},
         "-e '/opt/src/kerasopt[torch]'"),
        ({"url": "file:///opt/src/kerasopt", "dir_info": {}}, "'/opt/src/kerasopt[torch]'"),
        ({"url": "file:///tmp/dist/kerasopt-0.1.0-py3-none-any.whl", "archive_info": {}},
         "'/tmp/dist/kerasopt-0.1.0-py3-none-any.whl[torch]'"),
        (None, "'kerasopt[torch]'"),  # from an index
    ],
)
def test_requirement_follows_where_kerasopt_came_from(direct_url, expected, monkeypatch,
                                                      tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_install.metadata, "distribution", lambda name: _Dist(direct_url))
    assert _install.requirement("torch") == expected


def test_requirement_from_inside_the_checkout_is_relative(monkeypatch):
    checkout = ROOT
    url = {"url": checkout.as_uri(), "dir_info": {"editable": True}}
    monkeypatch.setattr(_install.metadata, "distribution", lambda name: _Dist(url))
    monkeypatch.chdir(checkout)
    assert _install.requirement("demo") == "-e '.[demo]'"
    monkeypatch.chdir(checkout / "docs")  # outside it: the absolute path
    assert _install.requirement("demo") == f"-e '{checkout}[demo]'"


def test_requirement_when_kerasopt_is_imported_from_a_checkout(monkeypatch):
    def not_installed(name):
        raise _install.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(_install.metadata, "distribution", not_installed)
    monkeypatch.chdir(ROOT)
    assert _install.requirement("fast") == "-e '.[fast]'"


def test_torch_hint_is_pinned_and_cpu_only_on_linux(monkeypatch):
    monkeypatch.setattr(_install.sys, "platform", "linux")
    command = _install.torch_command()
    assert "torch==2.13.0" in command and f"--index-url {_install.TORCH_CPU_INDEX}" in command
    hint = _install.install_hint("torch", packages=["torch"])
    assert hint.splitlines()[1].strip() == command
    monkeypatch.setattr(_install.sys, "platform", "darwin")  # PyPI's macOS wheels: CPU
    assert _install.torch_command().endswith("-m pip install torch==2.13.0")


def _fake_venv(root: Path, report_names: list[str], have_torch: bool) -> Path:
    """A checkout whose .venv/bin/python logs its arguments; ``pip --dry-run --report``
    resolves torch to ``report_names``."""
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "demo.sh").write_text((ROOT / "scripts" / "demo.sh").read_text())
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = root / "log"
    report = root / "report.json"
    report.write_text(json.dumps(
        {"install": [{"metadata": {"name": n}} for n in report_names]}, indent=2))
    (bin_dir / "python").write_text(textwrap.dedent(f"""\
        #!/usr/bin/env bash
        echo "python $*" >> {log}
        if [ "$1" = -c ]; then exit {0 if have_torch else 1}; fi
        case "$*" in *--dry-run*) cat {report};; esac
        exit 0
        """))
    (bin_dir / "kerasopt").write_text(f'#!/usr/bin/env bash\necho "kerasopt $*" >> {log}\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return log


@pytest.mark.parametrize(
    "resolved, have_torch, index",
    [
        (["torch", "nvidia-cublas-cu12", "filelock"], False, True),  # PyPI on Linux: CUDA
        (["torch", "filelock"], False, False),  # a CPU build is what pip would take
        ([], True, None),  # torch is already there: not touched
    ],
)
def test_demo_script_installs_a_cpu_build_of_torch(tmp_path, resolved, have_torch, index):
    log = _fake_venv(tmp_path, resolved, have_torch)
    done = subprocess.run(["bash", str(tmp_path / "scripts" / "demo.sh"), "--epochs", "1"],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "TORCH_INDEX_URL"})
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    torch_installs = [c for c in calls if "install -q torch==2.13.0" in c]
    if index is None:
        assert not torch_installs and not any("--dry-run" in c for c in calls)
    else:
        (call,) = torch_installs
        assert ("--index-url https://download.pytorch.org/whl/cpu" in call) is index
    assert any(c.endswith("-m pip install -q -e .[demo]") for c in calls), calls
    assert calls[-1] == "kerasopt demo --epochs 1"


def test_python_dash_m_kerasopt_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "kerasopt", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: kerasopt ")
    for command in ("demo", "bench", "verify"):
        assert command in done.stdout
