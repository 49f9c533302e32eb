"""Install hints that work from where this kerasopt came from.

kerasopt is not on a package index: a hint names the extra and installs it from the same
source as the running copy (the checkout it was installed from, editable or not; the wheel
file; or the checkout it is imported from), with the running interpreter's pip. PyTorch is
never left to a bare ``torch`` requirement on Linux, where the default wheel pulls several
GB of CUDA libraries: the hint installs the CPU build first.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

TORCH_VERSION = "2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _source() -> tuple[str, bool] | None:
    """``(path, editable)`` of the checkout or wheel this kerasopt was installed from, or
    None when it came from an index (or its origin is unknown)."""
    try:
        dist = metadata.distribution("kerasopt")
        text = dist.read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        text = None
        dist = None
    if text:
        try:
            info = json.loads(text)
        except ValueError:
            info = {}
        url = info.get("url", "")
        if url.startswith("file:"):
            path = unquote(urlparse(url).path)
            return path, bool(info.get("dir_info", {}).get("editable"))
        return None
    if dist is not None:
        return None  # installed from an index: "kerasopt[extra]" is right
    # Not installed: imported from a checkout (PYTHONPATH=src).
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():
        return str(root), True
    return None


def _shown(path: str) -> str:
    """``path`` relative to the working directory when it lies inside it."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    if relative == ".":
        return "."
    return relative if not relative.startswith("..") else path


def _python() -> str:
    return _shown(sys.executable) if sys.executable else "python"


def requirement(extra: str) -> str:
    """The pip argument that installs kerasopt with ``extra`` from this copy's source."""
    source = _source()
    if source is None:
        return shlex.quote(f"kerasopt[{extra}]")
    path, editable = source
    shown = _shown(path)
    if shown != "." and not os.path.isabs(shown) and not shown.startswith("."):
        shown = "./" + shown  # pip needs a path-looking argument for a directory
    target = shlex.quote(f"{shown}[{extra}]")
    return f"-e {target}" if editable else target


def torch_command() -> str:
    """The command that installs the tested PyTorch without CUDA libraries."""
    base = f"{_python()} -m pip install torch=={TORCH_VERSION}"
    if sys.platform.startswith("linux"):
        return f"{base} --index-url {TORCH_CPU_INDEX}"
    return base


def install_hint(extra: str, packages: list[str] | tuple[str, ...] = ()) -> str:
    """What to run to get ``packages`` through kerasopt's ``extra``, as one message."""
    lines = [f"To install {', '.join(packages) or 'them'}, use kerasopt's \"{extra}\" extra:"]
    if "torch" in packages:
        lines.append(f"    {torch_command()}")
    lines.append(f"    {fix_command(extra)}")
    if "torch" in packages and sys.platform.startswith("linux"):
        lines.append(
            "(the first line gets PyTorch's CPU build; a bare `torch` from PyPI on Linux "
            "pulls several GB of CUDA libraries)"
        )
    return "\n".join(lines)


def fix_command(extra: str) -> str:
    """The one command that installs kerasopt's ``extra`` from where it came from."""
    return f"{_python()} -m pip install {requirement(extra)}"
