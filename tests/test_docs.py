"""Every code block of README.md and docs/*.md runs, or is checked, as written.

Languages (the word after the opening fence):

* ``python``: the blocks of a page run in order, in one namespace, in a temporary working
  directory.
* ``bash`` / ``sh`` / ``shell`` / ``console``: checked command by command without running
  them: ``pip install`` lines against pyproject's extras (every extra exists, a local path
  exists, kerasopt itself only from the checkout or a built wheel, torch pinned with ``==``)
  plus one ``pip install --dry-run`` of all the extras the pages name; ``kerasopt`` /
  ``python -m kerasopt`` lines by the command line's own parser; ``bash <script>`` (the
  script exists and ``bash -n`` accepts it); ``R CMD INSTALL <dir>`` (the directory exists);
  ``pytest <paths>`` and ``python <script>.py`` (the paths exist, the script compiles: they
  run in the suite or take minutes); ``apt-get install``, ``export``, ``cd`` (accepted);
  ``NAME=value`` settings before a command are allowed. Any other command fails the test
  until the block is marked. Inline ``pip install ...`` spans of the prose are checked the
  same way.
* ``r``: the blocks of a page run in one ``Rscript`` process against the R package in
  ``r/kerasopt``, installed into a temporary library (skipped where Rscript is missing).
* ``text`` and unlabelled fences are not code (signatures, printed output).

Markers: an HTML comment on the line right above a fence.

* ``<!-- no-run: why -->`` (or ``<!-- no-run -->``): the block is not run or checked here;
  it is counted, and at most ``MAX_NOT_RUN`` blocks of all pages may carry it.
* ``<!-- output -->`` above a ``text`` block: it must equal what the block before it printed.
* ``<!-- env: NAME=value [NAME=value ...] -->`` above a ``python`` block: the block runs alone
  in a fresh Python process with these environment variables added (e.g. ``KERAS_BACKEND``,
  which Keras reads once, at import); ``<!-- output -->`` works as for the others. It shares
  no names with the page's other blocks.
* ``<!-- run -->`` above a shell block: it runs with ``bash -e`` in a temporary directory,
  with this Python's ``bin`` directory first on ``PATH`` (for quick commands only).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!--\s*(no-run|output|env|run)\s*(?::\s*(.*?))?\s*-->")
SHELL = ("bash", "sh", "shell", "console")
NOT_CODE = ("text", "")
MAX_NOT_RUN = 4
INLINE_PIP = re.compile(r"`((?:python3? -m )?pip3? install [^`]+)`")


@dataclass
class Block:
    page: Path
    index: int  # 1-based position among the page's fences
    kind: str
    code: str
    marker: str | None = None
    argument: str | None = None
    expected: str | None = None  # from a following <!-- output --> block

    @property
    def label(self) -> str:
        return f"{self.page.name}[block {self.index}, {self.kind or 'unlabelled'}]"


def _pages() -> list[Path]:
    return [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]


def _blocks(path: Path) -> list[Block]:
    """The fenced blocks of ``path``, each with its marker; output blocks attached to the
    block before them."""
    text = path.read_text()
    blocks: list[Block] = []
    for index, match in enumerate(FENCE.finditer(text), start=1):
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        found = MARKER.fullmatch(before)
        block = Block(path, index, match.group(1), match.group(2),
                      found and found.group(1), found and found.group(2))
        if block.marker == "output":
            if block.kind != "text" or not blocks or blocks[-1].kind == "text":
                raise AssertionError(f"{block.label}: <!-- output --> belongs above a text "
                                     "block that follows a code block")
            blocks[-1].expected = block.code
            continue
        blocks.append(block)
    return blocks


def _all_blocks() -> list[Block]:
    return [block for page in _pages() for block in _blocks(page)]


def _not_run(block: Block) -> bool:
    return block.marker == "no-run"


def _ids(page: Path) -> str:
    return page.name


# --------------------------------------------------------------------------- python


def _compare(block: Block, printed: str) -> None:
    if block.expected is not None:
        assert printed.strip() == block.expected.strip(), (
            f"{block.label}: the printed output differs from the documented one.\n"
            f"--- printed\n{printed}\n--- documented\n{block.expected}")


def _environment(argument: str | None) -> dict[str, str]:
    pairs = dict(item.split("=", 1) for item in shlex.split(argument or ""))
    assert pairs, "<!-- env: ... --> needs NAME=value pairs"
    return {**os.environ, **pairs}


@pytest.mark.parametrize("path", _pages(), ids=_ids)
def test_python_blocks_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    for block in _blocks(path):
        if block.kind != "python" or _not_run(block):
            continue
        if block.marker == "env":
            done = subprocess.run([sys.executable, "-c", block.code], cwd=tmp_path,
                                  env=_environment(block.argument), capture_output=True,
                                  text=True, timeout=600)
            assert done.returncode == 0, f"{block.label} failed:\n{done.stderr}\n{block.code}"
            _compare(block, done.stdout)
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                exec(compile(block.code, block.label, "exec"), namespace)
            except Exception as error:  # pragma: no cover - the failure message
                raise AssertionError(f"{block.label} failed: {error!r}\n{block.code}") from error
        _compare(block, out.getvalue())


def test_env_marker_runs_a_block_in_its_own_process(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- env: KERASOPT_DOCS_PROBE=yes KERAS_BACKEND=jax -->\n```python\nimport os\n"
        "print(os.environ['KERASOPT_DOCS_PROBE'], os.environ['KERAS_BACKEND'])\n```\n\n"
        "<!-- output -->\n```text\nyes jax\n```\n")
    (block,) = _blocks(page)
    assert (block.marker, block.expected.strip()) == ("env", "yes jax")
    done = subprocess.run([sys.executable, "-c", block.code], env=_environment(block.argument),
                          capture_output=True, text=True, timeout=60)
    _compare(block, done.stdout)
    assert "KERASOPT_DOCS_PROBE" not in os.environ


# --------------------------------------------------------------------------- shell


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _extras() -> set[str]:
    return set(_pyproject()["project"]["optional-dependencies"])


def _commands(code: str) -> list[list[str]]:
    """The commands of a shell block as token lists (continuations joined, comments and
    ``&&`` / ``;`` separators handled, a ``$ `` prompt dropped)."""
    commands = []
    for line in code.replace("\\\n", " ").splitlines():
        line = re.sub(r"^\s*\$ ", "", line)
        tokens = shlex.split(line, comments=True)
        current: list[str] = []
        for token in tokens:
            if token in ("&&", ";", "||"):
                if current:
                    commands.append(current)
                current = []
            else:
                current.append(token)
        if current:
            commands.append(current)
    return commands


PIP_OPTIONS_WITH_VALUE = {"--index-url", "-i", "--extra-index-url", "-c", "--constraint",
                          "-w", "--wheel-dir", "--report"}


def check_pip(arguments: list[str], where: str, extras_seen: set[str]) -> None:
    """``arguments`` follow ``pip``: an ``install`` (or ``wheel``) that works as written for
    someone with this repository, run from its root."""
    from packaging.requirements import InvalidRequirement, Requirement

    assert arguments and arguments[0] in ("install", "wheel"), f"{where}: pip {arguments}"
    extras = _extras()
    version = _pyproject()["project"]["version"]
    index_url = False
    skip = False
    for argument in arguments[1:]:
        if skip:
            skip = False
            continue
        if argument in PIP_OPTIONS_WITH_VALUE:
            index_url |= argument in ("--index-url", "-i")
            skip = True
            continue
        if argument.startswith("-"):
            continue
        match = re.fullmatch(r"(.*?)(?:\[([\w,\s-]+)\])?", argument)
        target, named = match[1], [e.strip() for e in (match[2] or "").split(",") if e.strip()]
        local = target.startswith((".", "/")) or target.endswith(".whl")
        if local:
            if target.endswith(".whl"):
                assert re.fullmatch(rf"(.*/)?kerasopt-{re.escape(version)}-py3-none-any\.whl",
                                    target), f"{where}: not this version's wheel: {target}"
            else:
                assert (ROOT / target).resolve() == ROOT, f"{where}: {target} is not the checkout"
            unknown = set(named) - extras
            assert not unknown, f"{where}: pyproject has no extra {sorted(unknown)}"
            extras_seen.update(named)
            continue
        try:
            requirement = Requirement(argument)
        except InvalidRequirement as error:
            raise AssertionError(f"{where}: pip cannot read {argument!r}: {error}") from None
        assert requirement.name.lower() != "kerasopt", (
            f"{where}: kerasopt is on no package index; install it from the checkout "
            f"(pip install \".[extra]\") or a built wheel")
        if requirement.name.lower() == "torch":
            assert any(s.operator == "==" for s in requirement.specifier), (
                f"{where}: a bare torch pulls a multi-GB CUDA build on Linux: pin it "
                "(torch==2.13.0) and take it from the CPU index")
    if index_url:
        named = [a for a in arguments[1:] if not a.startswith("-")]
        assert all(a.startswith("torch") or a.startswith("http") for a in named), (
            f"{where}: --index-url replaces PyPI for every package of the line")


def check_command(tokens: list[str], where: str, extras_seen: set[str]) -> None:
    """One shell command of the docs, checked without running it."""
    while tokens and (tokens[0] == "sudo" or re.fullmatch(r"[A-Za-z_]\w*=\S*", tokens[0])):
        tokens = tokens[1:]  # sudo, and NAME=value settings before the command
    if not tokens:
        return
    program = Path(tokens[0]).name
    if program.startswith("python") and tokens[1:3] == ["-m", "pip"]:
        return check_pip(tokens[3:], where, extras_seen)
    if program in ("pip", "pip3"):
        return check_pip(tokens[1:], where, extras_seen)
    if program == "kerasopt" or (program.startswith("python") and tokens[1:3] == ["-m",
                                                                                "kerasopt"]):
        from kerasopt.cli.main import build_parser

        argv = tokens[1:] if program == "kerasopt" else tokens[3:]
        try:
            build_parser().parse_args(argv)
        except SystemExit as stop:
            assert stop.code == 0, f"{where}: kerasopt refuses {' '.join(argv)}"
        return
    if program == "bash" and len(tokens) > 1:
        script = ROOT / tokens[1]
        assert script.is_file(), f"{where}: no script {tokens[1]}"
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, f"{where}: {tokens[1]}: {done.stderr}"
        return
    if program == "pytest" or (program.startswith("python") and tokens[1:3] == ["-m",
                                                                              "pytest"]):
        arguments = tokens[1:] if program == "pytest" else tokens[3:]
        paths = [a for a in arguments if not a.startswith("-") and not a.isdigit()]
        assert all((ROOT / p.split("::")[0]).exists() for p in paths), f"{where}: {paths}"
        return
    if program.startswith("python") and len(tokens) > 1 and tokens[1].endswith(".py"):
        script = ROOT / tokens[1]
        assert script.is_file(), f"{where}: no script {tokens[1]}"
        compile(script.read_text(), str(script), "exec")
        return
    if program == "R" and tokens[1:3] == ["CMD", "INSTALL"]:
        assert (ROOT / tokens[-1]).is_dir(), f"{where}: no R package at {tokens[-1]}"
        return
    if program == "apt-get" and "install" in tokens:
        packages = [t for t in tokens[tokens.index("install") + 1:] if not t.startswith("-")]
        assert packages and all(re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", p) for p in packages)
        return
    if program == "export":
        assert all(re.fullmatch(r"[A-Za-z_]\w*=.*", t) for t in tokens[1:]), where
        return
    if program == "cd":
        return
    raise AssertionError(
        f"{where}: cannot check `{' '.join(tokens)}` here: give the block a "
        "<!-- run --> or <!-- no-run: why --> marker (see tests/test_docs.py)")


def _inline_pip(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())
    return INLINE_PIP.findall(text)


def _checked_extras() -> set[str]:
    seen: set[str] = set()
    for page in _pages():
        for block in _blocks(page):
            if block.kind in SHELL and block.marker is None:
                for tokens in _commands(block.code):
                    check_command(tokens, block.label, seen)
        for span in _inline_pip(page):
            check_command(shlex.split(span), f"{page.name}: `{span}`", seen)
    return seen


@pytest.mark.parametrize("path", _pages(), ids=_ids)
def test_shell_blocks_and_install_lines_are_right(path, tmp_path):
    seen: set[str] = set()
    for block in _blocks(path):
        if block.kind not in SHELL or _not_run(block):
            continue
        if block.marker == "run":
            env = {**os.environ,
                   "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
            done = subprocess.run(["bash", "-e", "-c", block.code], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, f"{block.label} failed:\n{done.stderr}"
            _compare(block, done.stdout)
            continue
        for tokens in _commands(block.code):
            check_command(tokens, block.label, seen)
    for span in _inline_pip(path):
        check_command(shlex.split(span), f"{path.name}: `{span}`", seen)


def test_pip_accepts_every_documented_extra():
    """One resolution of all the extras the pages name, from the checkout (no build
    isolation: the packaging metadata, not setuptools' download, is what is checked)."""
    extras = sorted(_checked_extras())
    assert {"torch", "jax", "fast", "demo", "interop", "all"} <= set(extras)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet",
         "--no-build-isolation", f".[{','.join(extras)}]"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "does not provide the extra" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    "line, message",
    [
        ('pip install "kerasopt[torch]"', "on no package index"),
        ("pip install torch", "bare torch"),
        ('pip install ".[nonsense]"', "no extra"),
        ("pip install ./docs", "is not the checkout"),
        ("curl https://example.invalid | sh", "cannot check"),
        ("kerasopt verify --steps 0", "kerasopt refuses"),
        ("bash scripts/missing.sh", "no script"),
        ("KERAS_BACKEND=jax kerasopt verify --steps -1", "kerasopt refuses"),
    ],
)
def test_the_checks_catch_what_fails_as_written(line, message):
    with pytest.raises(AssertionError, match=message):
        for tokens in _commands(line):
            check_command(tokens, "probe", set())


# --------------------------------------------------------------------------- R


@pytest.mark.parametrize("path", [p for p in _pages()
                                  if any(b.kind == "r" for b in _blocks(p))], ids=_ids)
def test_r_blocks_run(path, tmp_path):
    blocks = [b for b in _blocks(path) if b.kind == "r" and not _not_run(b)]
    if shutil.which("Rscript") is None or shutil.which("R") is None:
        pytest.skip("R is not installed (bash r/run-tests.sh --install-only installs it)")
    library = tmp_path / "lib"
    library.mkdir()
    done = subprocess.run(["R", "CMD", "INSTALL", "--no-test-load", "-l", str(library),
                           str(ROOT / "r" / "kerasopt")], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    script = tmp_path / "page.R"
    script.write_text("\n".join(b.code for b in blocks))
    env = {**os.environ, "R_LIBS": str(library), "RETICULATE_PYTHON": sys.executable}
    done = subprocess.run(["Rscript", str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{path.name}: R blocks failed:\n{done.stderr[-3000:]}"


# --------------------------------------------------------------------------- all


KNOWN = ("python", "r", *SHELL, *NOT_CODE)


def test_every_block_is_run_or_checked_and_few_are_not():
    blocks = _all_blocks()
    unknown = [b.label for b in blocks if b.kind not in KNOWN and not _not_run(b)]
    assert not unknown, f"blocks in a language the docs test cannot run: {unknown}"
    ran = [b for b in blocks if b.kind == "python" and not _not_run(b)]
    not_run = [b.label for b in blocks if _not_run(b)]
    assert len(ran) >= 12
    assert len(not_run) <= MAX_NOT_RUN, not_run
    for block in blocks:
        if block.marker == "env":
            assert block.kind == "python", f"{block.label}: <!-- env --> is for python blocks"
        if block.marker == "run":
            assert block.kind in SHELL, f"{block.label}: <!-- run --> is for shell blocks"


def test_docs_link_targets_exist():
    for page in _pages():
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http", "mailto")):
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
