"""``kerasopt bench --quick`` completes and prints its table (no timing is checked)."""

from __future__ import annotations

import argparse

import pytest

pytest.importorskip("torch")


def test_quick_bench_prints_a_table(tmp_path, capsys):
    from kerasopt.cli import bench

    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["bench", "--quick", "--repeats", "2", "--workloads", "c,sparse",
         "--output", str(tmp_path)]
    )
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    assert "| workload | implementation | ms/step |" in out
    assert "torch Adam fused" in out
    assert "kerasopt.Adamax IndexedSlices 1% rows" in out
    assert "machine:" in out
    assert (tmp_path / "bench.md").exists()
    assert (tmp_path / "bench.json").exists()


def test_unknown_workload_is_refused(tmp_path, capsys):
    from kerasopt.cli import bench

    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers())
    args = parser.parse_args(["bench", "--workloads", "z", "--output", str(tmp_path)])
    assert bench.run(args) == 2
