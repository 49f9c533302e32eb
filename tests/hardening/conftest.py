"""Shared helpers for the hardening suites (tests/hardening).

Every suite counts what it tried (cases, faults injected, resumes checked) with the
``hardening_count`` fixture; the session prints the totals at the end and writes them to
``$KERASOPT_HARDENING_REPORT`` (default ``/tmp/kerasopt_hardening.json``), so the counts in
docs/reliability.md can be refreshed from a CI run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPORT = Path(os.environ.get("KERASOPT_HARDENING_REPORT", "/tmp/kerasopt_hardening.json"))
_totals: dict[str, int] = {}


@pytest.fixture
def hardening_count(request):
    """``count(name, n=1)``: add ``n`` to the session total ``name``."""
    collected: dict[str, int] = {}
    request.node.user_properties.append(("kerasopt_hardening", collected))

    def count(name: str, n: int = 1) -> None:
        collected[name] = collected.get(name, 0) + int(n)

    return count


def pytest_runtest_logreport(report):
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name == "kerasopt_hardening":
            for key, n in value.items():
                _totals[key] = _totals.get(key, 0) + n


def pytest_terminal_summary(terminalreporter):
    if not _totals:
        return
    terminalreporter.section("kerasopt hardening: counts")
    for key, n in sorted(_totals.items()):
        terminalreporter.write_line(f"{key:<45} {n:>8}")
    try:
        REPORT.write_text(json.dumps(dict(sorted(_totals.items())), indent=1))
    except OSError:  # pragma: no cover - report only
        pass
