"""What the subcommands share: argument types and the early check of an output directory."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1, else a message naming the value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def check_output_directory(directory: Path | str) -> str | None:
    """Why files cannot be written into ``directory`` (None when they can), found by
    creating the directory and a probe file in it. Commands call it before any long work,
    so a run never ends in results that cannot be saved."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        return f"cannot write there ({error.strerror or error})"
    return None
