"""``kerasopt demo``: Keras, kerasopt.torch and torch.optim on one model, in a reduced form
(two epochs on part of the data)."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")

from kerasopt.cli import demo  # noqa: E402
from kerasopt.cli.main import main  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HAVE_KERAS = demo.importlib.util.find_spec("keras") is not None
needs_keras = pytest.mark.skipif(not HAVE_KERAS, reason="Keras 3 is not installed")
ROW = re.compile(
    r"(\S+)\s+([0-9.]+)\s+([0-9.]+)%\s+(\(reference\)|0 \(identical\)|[0-9.]+e[-+][0-9]+|-)"
    r"\s+([0-9]+)\s+([0-9.]+) s"
)


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


def _table(out: str) -> dict[str, tuple]:
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("run "))
    for column in demo.TABLE_HEADER:
        assert column in lines[header]
    rows = {}
    for line in lines[header + 2:]:
        if not line.strip():
            continue
        match = ROW.fullmatch(line)
        if not match:
            break
        difference = match[4]
        rows[match[1]] = (
            float(match[2]), float(match[3]),
            None if difference in ("(reference)", "-") else
            0.0 if difference.startswith("0 ") else float(difference),
            int(match[5]), float(match[6]),
        )
    return rows


@needs_keras
def test_demo_compares_keras_kerasopt_and_torch_optim(tmp_path, capsys):
    out = tmp_path / "demo-out"
    status = main(["demo", "--epochs", "2", "--train-samples", "400", "--output", str(out),
                   "--seed", "3"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    rows = _table(captured.out)
    assert list(rows) == list(demo.OPTIMIZERS), captured.out
    for name, (loss, accuracy, difference, microseconds, seconds) in rows.items():
        assert 0 < loss < math.log(10), name  # below chance level after two epochs
        assert accuracy > 25, name  # chance: 10%
        assert microseconds > 0 and seconds > 0, name
        assert (difference is None) == name.startswith("keras-"), name
    for algorithm in demo.ALGORITHMS:
        ours, theirs = rows[f"kerasopt-{algorithm}"][2], rows[f"torch-{algorithm}"][2]
        # kerasopt follows Keras to float32 rounding of the weights (|w| < 1), torch.optim
        # does not.
        assert ours < 1e-5, captured.out
        assert theirs > 1e-3 and theirs > 100 * ours, captured.out
        assert rows[f"kerasopt-{algorithm}"][0] == pytest.approx(
            rows[f"keras-{algorithm}"][0], abs=1e-3)
    assert "Keras 3." in captured.out and "torch backend" in captured.out
    png = out / demo.PLOT_NAME
    assert f"{png.resolve()}" in captured.out
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    import matplotlib.image

    image = matplotlib.image.imread(png)
    assert image.ndim == 3 and image.shape[0] > 600 and image.shape[1] > 800
    assert sorted(p.name for p in out.iterdir()) == [demo.PLOT_NAME]  # no temporary file
    assert "Total wall time" in captured.out
    # One progress bar per run, on stderr.
    for name in demo.OPTIMIZERS:
        assert name in captured.err
    assert "batch" in captured.err


@needs_keras
def test_divergence_is_measured_against_the_keras_trajectory(tmp_path, capsys):
    results = demo.run_demo(optimizers=["keras-adam", "kerasopt-adam", "torch-adam"],
                            epochs=1, train_samples=160, output=tmp_path, progress=False,
                            seed=1)
    capsys.readouterr()
    by_name = {r.name: r for r in results}
    keras_run, ours, theirs = (by_name[n] for n in ("keras-adam", "kerasopt-adam", "torch-adam"))
    assert keras_run.divergence is None and keras_run.final_difference is None
    steps = ours.steps
    assert ours.divergence.shape == theirs.divergence.shape == (steps,)
    # The first batch only accumulates (gradient_accumulation_steps=2): no run moved yet.
    assert ours.divergence[0] == theirs.divergence[0] == 0
    assert np.all(ours.divergence < 1e-5)
    assert theirs.divergence[-1] > 1e-3


def test_without_keras_the_other_runs_go_ahead(tmp_path, capsys):
    status = demo.KerasStatus(None, "Keras is not installed, so the keras-* runs are skipped.")
    results = demo.run_demo(epochs=1, train_samples=96, output=tmp_path, progress=False,
                            keras_status=status)
    out = capsys.readouterr().out
    assert [r.name for r in results] == [n for n in demo.OPTIMIZERS if not n.startswith("keras-")]
    assert "Skipped: keras-adamax, keras-adam" in out
    assert "Keras is not installed" in out
    assert all(r.final_difference is None and r.divergence is None for r in results)
    rows = _table(out)
    assert all(row[2] is None for row in rows.values())
    assert (tmp_path / demo.PLOT_NAME).exists()


def test_import_keras_reports_a_missing_keras(monkeypatch):
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    real = demo.importlib.util.find_spec
    monkeypatch.setattr(demo.importlib.util, "find_spec",
                        lambda name, *a: None if name == "keras" else real(name, *a))
    status = demo.import_keras()
    assert status.module is None
    assert "Keras is not installed" in status.message
    assert '"demo" extra' in status.message and "pip install" in status.message


def _python(code: str, **env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    environment.update(env)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environment,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


@needs_keras
def test_keras_backend_choice_is_overridden_for_the_process_only_and_said(tmp_path):
    out = _python(
        """
        import os
        from kerasopt.cli import demo
        status = demo.import_keras()
        print(status.message)
        print("backend", status.module.backend.backend())
        print("env", os.environ.get("KERAS_BACKEND"))
        """,
        KERAS_BACKEND="jax", KERAS_HOME=str(tmp_path))
    assert "your KERAS_BACKEND=jax is overridden for this process only" in out
    assert "backend torch" in out
    assert "env jax" in out  # the process environment is restored for child processes


@needs_keras
def test_keras_imported_on_another_backend_is_left_alone(tmp_path):
    pytest.importorskip("jax")
    out = _python(
        """
        import keras
        from kerasopt.cli import demo
        status = demo.import_keras()
        print(status.module is None, status.message)
        print("backend", keras.backend.backend())
        """,
        KERAS_BACKEND="jax", KERAS_HOME=str(tmp_path), JAX_PLATFORMS="cpu")
    assert out.startswith("True Keras is already imported in this process with its 'jax'")
    assert "backend jax" in out


def test_keras_json_backend_is_read(tmp_path, monkeypatch):
    (tmp_path / "keras.json").write_text('{"backend": "tensorflow", "floatx": "float32"}')
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert demo._configured_keras_backend() == "tensorflow"
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "missing"))
    assert demo._configured_keras_backend() is None


def test_same_start_and_batches_for_every_run(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    kwargs = dict(epochs=1, train_samples=200, output=tmp_path, progress=False, seed=5,
                  keras_status=demo.KerasStatus(None, "no Keras in this test"))
    first = demo.run_demo(optimizers=["torch-adam", "kerasopt-adam"], **kwargs)
    assert torch.get_num_threads() == threads  # the demo's thread setting is undone
    second = demo.run_demo(optimizers=["kerasopt-adam"], **kwargs)
    capsys.readouterr()
    # Same initial weights: the epoch-0 losses agree exactly.
    assert first[0].train_loss[0] == first[1].train_loss[0] == second[0].train_loss[0]
    # Same seed, same batches: a kerasopt run is reproducible.
    assert first[1].train_loss == second[0].train_loss
    assert [r.name for r in first] == ["torch-adam", "kerasopt-adam"]


def _initial_state():
    return {k: v.clone() for k, v in demo.build_model(0).state_dict().items()}


def test_every_run_kind_steps_once_per_accumulated_update():
    import torch

    recipe = demo.Recipe()
    names = [n for n in demo.OPTIMIZERS if HAVE_KERAS or not n.startswith("keras-")]
    keras = demo.import_keras().module if HAVE_KERAS else None
    x, y = torch.rand(8, 64), torch.arange(8) % 10
    for name in names:
        run = demo.make_run(name, recipe, _initial_state(), 100, 0, keras)
        start = run.flat_weights(torch.empty(demo._parameter_count())).clone()
        run.backward(x, y)
        run.step()  # the first of two accumulated batches: nothing moves
        after_one = run.flat_weights(torch.empty(demo._parameter_count()))
        assert torch.equal(after_one, start), name
        run.backward(x, y)
        run.step()
        after_two = run.flat_weights(torch.empty(demo._parameter_count()))
        assert not torch.equal(after_two, start), name
    with pytest.raises(ValueError, match="sgd"):
        demo.make_run("sgd", recipe, _initial_state(), 100, 0)


def test_torch_optim_run_is_configured_as_described():
    import torch

    recipe = demo.Recipe()
    adamax = demo.make_run("torch-adamax", recipe, _initial_state(), 100, 0)
    assert type(adamax.optimizer) is torch.optim.Adamax
    adamw = demo.make_run("torch-adam", recipe, _initial_state(), 100, 0)
    assert type(adamw.optimizer) is torch.optim.AdamW
    for run in (adamax, adamw):
        decayed, plain = run.optimizer.param_groups
        assert decayed["weight_decay"] == recipe.weight_decay and plain["weight_decay"] == 0
        assert all(p.ndim == 2 for p in decayed["params"])  # the kernels
        assert all(p.ndim == 1 for p in plain["params"])  # the biases
        assert decayed["eps"] == 1e-7
    assert adamw.optimizer.defaults["amsgrad"] is True


@needs_keras
def test_kerasopt_gets_the_arguments_keras_gets():
    recipe = demo.Recipe()
    keras = demo.import_keras().module
    for algorithm in demo.ALGORITHMS:
        theirs = demo.make_run(f"keras-{algorithm}", recipe, _initial_state(), 100, 0, keras)
        ours = demo.make_run(f"kerasopt-{algorithm}", recipe, _initial_state(), 100, 0)
        config = theirs.optimizer.get_config()
        group = ours.optimizer.param_groups[0]
        for key, value in recipe.optimizer_arguments(algorithm).items():
            assert config[key] == value, key
            assert group.get(key, getattr(ours.optimizer, key, None)) == value, key
        assert config["learning_rate"]["class_name"] == "CosineDecay"
        assert type(group["learning_rate"]).__name__ == "CosineDecay"


def test_help_explains_the_demo(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--epochs", "--optimizers", "--output", "--seed", "--learning-rate"):
        assert option in text
    for name in ("keras-adamax", "kerasopt-adamax", "torch-adam", "KERAS_BACKEND",
                 "AveragedModel", "clip_grad_norm_"):
        assert name in text
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


def test_unwritable_output_is_refused_before_training(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setattr(demo, "run_demo", lambda **_: pytest.fail("trained anyway"))
    assert main(["demo", "--output", str(blocker / "plots")]) == 2
    err = capsys.readouterr().err
    assert f"--output {blocker / 'plots'}" in err and "cannot write there" in err


def test_missing_dependency_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(demo, "_missing_dependencies", lambda: ["torch", "matplotlib"])
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "torch, matplotlib" in err and '"demo" extra' in err
    assert "[demo]" in err and "-m pip install" in err
    # Never a bare torch (a multi-GB CUDA build on Linux): the tested version, CPU build.
    assert "torch==2.13.0" in err
    for line in err.splitlines():
        if "pip install" in line:
            for token in line.split():
                assert not re.fullmatch(r"torch([<>~!].*|=[^=].*)?", token), line
