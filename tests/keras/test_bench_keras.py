"""``kerasopt.cli.bench_keras`` runs tiny on every backend and prints its table (no timing is
checked: the machine is shared)."""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("keras")

from kerasopt.cli import bench_keras  # noqa: E402


def test_tiny_bench_prints_a_row_per_backend(capsys):
    backends = [b for b in bench_keras.BACKENDS if importlib.util.find_spec(b) is not None]
    rows = bench_keras.measure(backends, workloads=["a"], algorithms=["Adamax"],
                               features=["on"], repeats=1, quick=True, timeout=600)
    assert [r for r in rows if "error" in r] == []
    expected = set(backends) | ({"tensorflow (XLA)"} if "tensorflow" in backends else set())
    assert {r["backend"] for r in rows} == expected
    for row in rows:
        assert row["keras_ms"] > 0 and row["kerasopt_ms"] > 0, row
        assert row["workload"] == "(a) one tensor of 65,536", row
    bench_keras.print_table(rows)
    out = capsys.readouterr().out
    assert "| backend | workload | algorithm | features | Keras 3 ms/step |" in out
    assert "load average" in out and out.count("| Adamax | on |") == len(rows)
