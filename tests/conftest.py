"""Shared test setup: Keras runs on its torch backend; parity errors are collected and
summarised at the end of the session (and written to ``/tmp/kerasopt_parity_errors.json``)."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

PARITY_REPORT = Path(os.environ.get("KERASOPT_PARITY_REPORT", "/tmp/kerasopt_parity_errors.json"))

_parity_results: dict[str, dict[str, float]] = {}


def _merge(feature: str, stats: dict[str, float]) -> None:
    current = _parity_results.get(feature)
    if current is None:
        _parity_results[feature] = dict(stats)
        return
    for key, value in stats.items():
        current[key] = current[key] + value if key == "steps" else max(current[key], value)


@pytest.fixture(autouse=True)
def _fresh_optimizer_names():
    """Each test names its optimizers from scratch (``adam``, ``adam_1``...), as after
    Keras's ``clear_session``, so a test does not depend on which ran before it."""
    from kerasopt.optimizer import reset_names

    reset_names()


@pytest.fixture
def parity_record(request):
    """``record(feature, stats)``: keep the largest errors per feature for the summary.

    Results travel on the test report's ``user_properties``, so they reach the summary
    under pytest-xdist too.
    """
    collected: dict[str, dict[str, float]] = {}
    request.node.user_properties.append(("kerasopt_parity", collected))

    def record(feature: str, stats) -> None:
        values = stats.as_dict() if hasattr(stats, "as_dict") else dict(stats)
        current = collected.get(feature)
        if current is None:
            collected[feature] = values
        else:
            for key, value in values.items():
                current[key] = (
                    current[key] + value if key == "steps" else max(current[key], value)
                )

    return record


def pytest_runtest_logreport(report):
    if report.when != "call":
        return
    for name, value in report.user_properties:
        if name == "kerasopt_parity":
            for feature, stats in value.items():
                _merge(feature, stats)


def pytest_terminal_summary(terminalreporter):
    if not _parity_results:
        return
    rows = sorted(_parity_results.items())
    write = terminalreporter.write_line
    terminalreporter.section("kerasopt vs Keras: largest error per feature")
    write("normalized = max |diff| / (atol + rtol*(|w| + travel)); <= 1 passes "
          "(float32 1e-6/1e-5, float64 1e-12/1e-12)")
    width = max(len(f) for f, _ in rows)
    write(f"{'feature':<{width}}  {'steps':>6}  {'w norm':>9}  {'w abs':>9}  "
          f"{'state norm':>10}  {'state abs':>9}")
    for feature, s in rows:
        write(f"{feature:<{width}}  {int(s['steps']):>6}  {s['weight_norm']:>9.3g}  "
              f"{s['weight_abs']:>9.3g}  {s['state_norm']:>10.3g}  {s['state_abs']:>9.3g}")
    try:
        PARITY_REPORT.write_text(json.dumps(dict(rows), indent=1, sort_keys=True))
        write(f"(written to {PARITY_REPORT})")
    except OSError as error:  # pragma: no cover - report only
        write(f"(could not write {PARITY_REPORT}: {error})")
