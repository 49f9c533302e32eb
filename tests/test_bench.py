"""``kerasopt bench --quick`` completes and prints its table (no timing is checked)."""

from __future__ import annotations

import argparse
import json

import numpy as np
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
    assert "| of roofline | vs triad |" in out
    assert (tmp_path / "bench.md").exists()
    assert (tmp_path / "bench.json").exists()
    rows = {r["name"]: r for r in json.loads((tmp_path / "bench.json").read_text())["rows"]
            if r["workload"].startswith("(c)")}
    passes = {name: row["ms"] for name, row in rows.items() if name.startswith("roofline: ")}
    assert set(passes) == {bench.roofline_label(p) for p in bench.ROOFLINE_PASSES}
    # a contender's roofline is the sum of its passes' medians (per optimizer call)
    everything = rows[f"kerasopt fused (numpy) {bench.ALL_FEATURES}"]
    assert everything["passes"] == ["update +acc +EMA", "norm +acc"]
    assert everything["roofline_ms"] == pytest.approx(
        passes["roofline: update +acc +EMA pass"] + passes["roofline: norm +acc pass"])
    cycle = rows[f"kerasopt fused (numpy) {bench.ALL_FEATURES_CYCLE}"]
    assert cycle["calls"] == 2 and cycle["roofline_ms"] == pytest.approx(
        sum(passes[bench.roofline_label(p)] for p in cycle["passes"]) / 2)
    assert rows["torch Adam fused"]["passes"] == ["update"]


def test_roofline_passes_touch_the_steps_arrays():
    """Each streaming pass reads and writes the arrays of the fused step's pass it stands
    for (checked on its trivial arithmetic), on every chunk of every tensor."""
    from kerasopt.kernels import fused, layout

    sizes = [3, layout.CHUNK + 5, 0, 700]
    rng = np.random.default_rng(0)

    def fresh():
        return {k: [rng.random(s, dtype=np.float32) for s in sizes]
                for k in ("w", "g", "m", "v", "acc", "avg")}

    for kind, acc, ema in [("update", False, False), ("update", True, True),
                           ("micro", True, False), ("micro", True, True), ("norm", True, False),
                           ("triad", False, False)]:
        a = fresh()
        before = {k: [x.copy() for x in v] for k, v in a.items()}
        fused.roofline_pass(kind, a["w"], a["g"], a["m"], a["v"],
                            accumulators=a["acc"] if acc else None,
                            ema_averages=a["avg"] if ema else None)()
        for i in range(len(sizes)):
            b = {k: v[i] for k, v in before.items()}
            want = dict(b)
            if kind == "update":
                want["m"] = b["m"] + b["g"] + (b["acc"] if acc else 0)
                want["v"] = b["v"] + b["g"]
                want["w"] = want["w"] + want["m"] + want["v"]
                if acc:
                    want["acc"] = np.zeros_like(b["acc"])
                if ema:
                    want["avg"] = b["avg"] + want["w"]
            elif kind == "micro":
                want["acc"] = b["acc"] + b["g"]
                if ema:
                    want["avg"] = b["avg"] + b["w"]
            elif kind == "triad":
                want["w"] = b["g"] + np.float32(3) * b["m"]
            for k in want:
                np.testing.assert_array_equal(a[k][i], want[k], err_msg=f"{kind} {k}")


def test_cold_start_rows():
    """The cold start runs in fresh processes: with an empty numba cache the first step
    compiles (and says so), with the filled cache it does not."""
    from kerasopt.cli import bench

    rows = bench.cold_start_rows(runs=1)
    names = [row.name for row in rows]
    assert names == [f"{bench.COLD_STARTS[kind]} ({state})" for kind in ("torch", "numpy")
                     for state in ("empty numba cache", "numba cache filled")]
    assert all(row.ms > 0 for row in rows)
    assert "compile notice shown 1/1" in rows[0].note and "compile notice" not in rows[1].note


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
