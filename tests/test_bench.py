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


def _parse(*argv):
    from kerasopt.cli.main import build_parser

    return build_parser().parse_args(["bench", *argv])


@pytest.mark.parametrize("repeats", ["0", "-2"])
def test_repeats_below_one_are_refused(repeats, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse("--repeats", repeats)
    assert exit_info.value.code == 2
    assert "--repeats" in capsys.readouterr().err


def test_unwritable_output_is_refused_before_measuring(tmp_path, capsys, monkeypatch):
    from kerasopt.cli import bench

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(bench, "measure_roofline",
                        lambda *a: pytest.fail("measured before checking --output"))
    assert bench.run(_parse("--quick", "--output", str(blocker / "results"))) == 2
    err = capsys.readouterr().err
    assert f"--output {blocker / 'results'}" in err and "cannot write there" in err


def test_table_has_a_legend_that_states_each_ratio_direction(tmp_path):
    from kerasopt.cli import bench

    rows = [bench.Row("w", bench.ANCHOR_FUSED, 2.0, 1000),
            bench.Row("w", bench.ANCHOR_FOREACH, 4.0, 1000),
            bench.Row("w", "kerasopt fused (numpy) Adamax", 1.0, 1000)]
    bench._add_ratios(rows)
    table = bench.format_table(rows, {}, 1e10)
    ours = next(line for line in table.splitlines() if "kerasopt fused" in line)
    assert "| 0.50 | 0.25 |" in ours  # its time / the anchor's: half and a quarter
    assert "time ratio" in table.splitlines()[0]
    legend = " ".join(bench.LEGEND.split())
    assert "below 1.00 the row is faster" in legend
    assert "this row's time / that anchor's time" in legend


def test_chart_labels_are_not_cut_off():
    pytest.importorskip("matplotlib")
    from kerasopt.cli import bench

    long_name = "kerasopt fused (numpy) Adamax all features, per call of an accumulation cycle"
    rows = [bench.Row("(a) one tensor", name, ms, 1000) for name, ms in
            [(long_name, 0.5), (bench.ANCHOR_FUSED, 1.0), ("x" * 120, 2.0)]]
    rows.append(bench.Row("sparse", "kerasopt.Adamax IndexedSlices 1% rows", 0.2, 1000))
    figure = bench.chart_figure(rows)
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    box = figure.bbox
    labels = [label for ax in figure.axes for label in ax.get_yticklabels() if label.get_text()]
    assert len(labels) == 4
    for label in labels:
        extent = label.get_window_extent(renderer)
        assert extent.x0 >= box.x0 - 0.5 and extent.x1 <= box.x1 + 0.5, label.get_text()
        assert all(len(line) <= bench.LABEL_WIDTH for line in label.get_text().splitlines())
