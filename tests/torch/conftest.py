"""Setup for the kerasopt.torch tests: Keras on its torch backend, and the parity table.

Every parity test records its largest normalized error per feature through the
``torch_parity`` fixture; the session prints the table at the end and writes it to
``$KERASOPT_TORCH_PARITY_REPORT`` (default ``/tmp/kerasopt_torch_parity.json``).
normalized = max over steps and elements of |ours - reference| / (1e-6 + 1e-5*(|w| + travel)),
so <= 1 passes.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPORT = Path(
    os.environ.get("KERASOPT_TORCH_PARITY_REPORT", "/tmp/kerasopt_torch_parity.json")
)
_results: dict[str, dict[str, float]] = {}


@pytest.fixture
def torch_parity(request):
    """``record(reference, feature, normalized_error, max_abs_error, steps)``."""
    collected: dict[str, dict[str, float]] = {}
    request.node.user_properties.append(("kerasopt_torch_parity", collected))

    def record(reference: str, feature: str, normalized: float, abs_error: float, steps: int):
        key = f"{reference}: {feature}"
        row = collected.setdefault(key, {"normalized": 0.0, "abs": 0.0, "steps": 0})
        row["normalized"] = max(row["normalized"], float(normalized))
        row["abs"] = max(row["abs"], float(abs_error))
        row["steps"] += int(steps)

    return record


def pytest_runtest_logreport(report):
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name != "kerasopt_torch_parity":
            continue
        for key, row in value.items():
            current = _results.setdefault(key, {"normalized": 0.0, "abs": 0.0, "steps": 0})
            current["normalized"] = max(current["normalized"], row["normalized"])
            current["abs"] = max(current["abs"], row["abs"])
            current["steps"] += row["steps"]


def pytest_terminal_summary(terminalreporter):
    if not _results:
        return
    rows = sorted(_results.items())
    write = terminalreporter.write_line
    terminalreporter.section("kerasopt.torch parity: largest error per feature")
    write("normalized = |diff| / (1e-6 + 1e-5*(|w| + travel)), <= 1 passes")
    width = max(len(k) for k, _ in rows)
    write(f"{'reference: feature':<{width}}  {'steps':>6}  {'normalized':>10}  {'max |diff|':>10}")
    for key, row in rows:
        write(f"{key:<{width}}  {row['steps']:>6}  {row['normalized']:>10.3g}  {row['abs']:>10.3g}")
    try:
        REPORT.write_text(json.dumps(dict(rows), indent=1, sort_keys=True))
        write(f"(written to {REPORT})")
    except OSError as error:  # pragma: no cover - report only
        write(f"(could not write {REPORT}: {error})")
