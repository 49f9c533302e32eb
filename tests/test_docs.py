"""Every ```python block of docs/*.md and README.md runs as written.

Blocks of one file run in order in one namespace (a page may build on its earlier blocks), in
a temporary working directory. A block right after an ``<!-- no-run -->`` line is
illustrative and skipped; a ```text block right after an ``<!-- output -->`` line must equal
what the python block before it printed (the numbers in the migration guides come from
these runs). README.md is not marked up: its illustrative PyTorch/JAX block is listed in
``README_ILLUSTRATIVE`` instead.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
NO_RUN = "<!-- no-run -->"
OUTPUT = "<!-- output -->"
# README blocks that use names defined elsewhere (model, loss, evaluate): first line.
README_ILLUSTRATIVE = ("import kerasopt.torch as kt",)
MAX_SKIPPED = 6


def _blocks(path: Path):
    """``(kind, code, marker)`` per fenced block; marker is the HTML comment just above."""
    text = path.read_text()
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        yield match.group(1), match.group(2), before


def _pages():
    return [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]


def _plan(path: Path):
    """The python blocks to run, each with the expected output (or None), and the count of
    skipped ones."""
    runs, skipped = [], 0
    for kind, code, marker in _blocks(path):
        if kind == "text" and marker == OUTPUT:
            if not runs:
                raise AssertionError(f"{path.name}: an output block without a python block")
            runs[-1][1] = code
            continue
        if kind != "python":
            continue
        illustrative = path.name == "README.md" and code.lstrip().startswith(README_ILLUSTRATIVE)
        if marker == NO_RUN or illustrative:
            skipped += 1
            continue
        runs.append([code, None])
    return runs, skipped


@pytest.mark.parametrize("path", _pages(), ids=lambda p: p.name)
def test_snippets_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs, _ = _plan(path)
    namespace: dict = {"__name__": "__main__"}
    for i, (code, expected) in enumerate(runs):
        out = io.StringIO()
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                exec(compile(code, f"{path.name}[python block {i + 1}]", "exec"), namespace)
            except Exception as error:  # pragma: no cover - the failure message
                raise AssertionError(
                    f"{path.name}, python block {i + 1} failed: {error!r}\n{code}") from error
        if expected is not None:
            assert out.getvalue().strip() == expected.strip(), (
                f"{path.name}, python block {i + 1}: the printed output differs from the "
                f"documented one.\n--- printed\n{out.getvalue()}\n--- documented\n{expected}")


def test_few_blocks_are_skipped():
    counts = {p.name: _plan(p) for p in _pages()}
    ran = sum(len(r) for r, _ in counts.values())
    skipped = sum(s for _, s in counts.values())
    assert ran >= 12, counts
    assert skipped <= MAX_SKIPPED, {k: s for k, (_, s) in counts.items() if s}


def test_docs_link_targets_exist():
    for page in _pages():
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http", "mailto")):
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
