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


def test_gpu_rows_run_their_contenders_on_any_device():
    """The GPU section of the bench (``cuda_rows``), run on the CPU: every contender steps
    and the rows carry the anchors' names, so the table can compare them (on a GPU machine
    the same code runs with ``device="cuda"``)."""
    from kerasopt.cli import bench

    rows = bench.cuda_rows("(t) tiny", [100, 7, 300], repeats=2, device="cpu",
                           triad_elements=1000)
    names = {row.name for row in rows}
    assert {bench.ANCHOR_FUSED, bench.ANCHOR_FOREACH, bench.CUDA_TRIAD,
            "kerasopt.torch.Adam.step (Triton)"} <= names
    assert all(row.ms > 0 and row.workload == "(t) tiny on CUDA" for row in rows)
