"""``kerasopt demo`` end to end, in a reduced form (one epoch on part of the data)."""

from __future__ import annotations

import re

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from kerasopt.cli import demo  # noqa: E402
from kerasopt.cli.main import main  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_bundled_digits_load_without_scikit_learn():
    images, labels = demo.load_digits()
    assert images.shape == (1797, 64) and images.dtype == np.float32
    assert labels.shape == (1797,) and labels.dtype == np.int64
    assert images.min() == 0.0 and images.max() == 1.0
    assert sorted(np.unique(labels)) == list(range(10))
    x_train, y_train, x_test, y_test = demo.split_digits(images, labels)
    assert len(x_train) + len(x_test) == 1797
    assert 0.19 < len(x_test) / 1797 < 0.21
    # The split is fixed: the same on every call.
    again = demo.split_digits(images, labels)
    assert np.array_equal(again[3], y_test) and np.array_equal(again[0], x_train)


def test_demo_prints_table_and_writes_png(tmp_path, capsys):
    out = tmp_path / "demo-out"
    status = main(
        ["demo", "--epochs", "2", "--train-samples", "400", "--output", str(out), "--seed", "3"]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err

    lines = captured.out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("optimizer"))
    assert "final train loss" in lines[header]
    assert "test accuracy" in lines[header]
    assert "wall time" in lines[header]
    rows = {}
    for line in lines[header + 2 : header + 6]:
        match = re.fullmatch(r"(\S+)\s+([0-9.]+)\s+([0-9.]+)%\s+([0-9.]+) s", line)
        assert match, f"malformed table row: {line!r}\n{captured.out}"
        rows[match[1]] = (float(match[2]), float(match[3]), float(match[4]))
    assert list(rows) == list(demo.OPTIMIZERS)
    for name, (loss, accuracy, seconds) in rows.items():
        assert 0 < loss < 2.3, name  # below chance level (ln 10 = 2.30) after two epochs
        assert accuracy > 50, name
        assert seconds >= 0, name
    # Adamax from kerasopt and from torch differ only in where epsilon goes: almost the same.
    assert rows["kerasopt-adamax"][0] == pytest.approx(rows["torch-adamax"][0], rel=0.02)

    png = out / demo.PLOT_NAME
    assert f"Plot of the loss curves: {png.resolve()}" in captured.out
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
    assert sorted(p.name for p in out.iterdir()) == [
        demo.PLOT_NAME
    ]  # no temporary file left behind
    # The progress bars went to stderr.
    assert "kerasopt-adam" in captured.err and "step" in captured.err


def test_demo_same_start_and_batches_for_every_run(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    kwargs = dict(epochs=1, train_samples=200, output=tmp_path, progress=False, seed=5)
    first = demo.run_demo(optimizers=["torch-adam", "kerasopt-adam"], **kwargs)
    assert torch.get_num_threads() == threads  # the demo's thread setting is undone
    second = demo.run_demo(optimizers=["kerasopt-adam"], **kwargs)
    capsys.readouterr()
    # Same initial weights: the epoch-0 losses agree exactly.
    assert first[0].train_loss[0] == first[1].train_loss[0] == second[0].train_loss[0]
    # Same seed, same batches: a kerasopt run is reproducible.
    assert first[1].train_loss == second[0].train_loss
    assert [r.name for r in first] == ["torch-adam", "kerasopt-adam"]


def test_make_optimizer_steps_every_kind():
    import torch

    for name in demo.OPTIMIZERS:
        model = demo.build_model(0)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer = demo.make_optimizer(name, model, 0.01)
        optimizer.zero_grad()
        model(torch.ones(4, 64)).sum().backward()
        optimizer.step()
        assert all(
            not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True)
        ), name
        optimizer.zero_grad()
        assert all(p.grad is None or not p.grad.any() for p in model.parameters()), name
    with pytest.raises(ValueError, match="sgd"):
        demo.make_optimizer("sgd", demo.build_model(0), 0.01)


def test_help_explains_the_demo(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--epochs", "--optimizers", "--output", "--seed", "--learning-rate"):
        assert option in text
    assert "kerasopt-adamax" in text and "torch-adam" in text
    assert "digits" in text


def test_top_level_help_lists_demo(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "demo" in capsys.readouterr().out
    assert main([]) == 2  # no command: prints the help, exits non-zero


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--optimizers", "kerasopt-adam,sgd"], "unknown optimizer 'sgd'"),
        (["--epochs", "0"], "expected a number >= 1"),
        (["--learning-rate", "-1"], "expected a finite number > 0"),
    ],
)
def test_bad_arguments_are_named(arguments, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_dependency_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(demo, "_missing_dependencies", lambda: ["tqdm", "matplotlib"])
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "tqdm, matplotlib" in err and 'pip install "kerasopt[demo]"' in err
