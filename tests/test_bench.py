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
