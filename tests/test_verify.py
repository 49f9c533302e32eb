"""``kerasopt verify``: passes for kerasopt, fails (exit code 1) for deliberately wrong
optimizers, and says how to install Keras when it is missing (exit code 2)."""

from __future__ import annotations

import pytest

import kerasopt
from kerasopt.cli import main as cli
from kerasopt.cli import verify as V

pytest.importorskip("keras")


def _args(*argv):
    return cli.build_parser().parse_args(["verify", "--no-progress", *argv])


def test_kerasopt_matches_keras_on_every_backend(capsys):
    backends = ",".join(V.installed_backends())
    code = V.run(_args("--quick", "--steps", "6", "--backends", backends,
                       "--features", "defaults,LossScaleOptimizer,ema+overwrite"))
    out = capsys.readouterr().out
    assert code == 0, out
    assert "FAIL" not in out
    for backend in V.installed_backends():
        assert f" {backend} " in out
    assert "max |diff|" in out and "err/tol" in out


class EpsilonAdam(kerasopt.Adam):
    """Adam with a different epsilon than it reports: a subtle numerical bug."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = 1e-3


def _wrong_numpy(algo, kwargs):
    if algo == "Adam":
        return EpsilonAdam(**kwargs)
    rate = kwargs["learning_rate"]
    return kerasopt.Adamax(**{**kwargs, "learning_rate": rate * 1.001})  # 0.1% lr error


def _wrong_torch(algo, params, kwargs):
    import kerasopt.torch as kt

    return getattr(kt, algo)(params, **{**kwargs, "beta_1": 0.899})


def _wrong_jax(algo, kwargs):
    import kerasopt.optax as ko

    return getattr(ko, algo.lower())(**{**kwargs, "learning_rate": kwargs["learning_rate"] * 1.01})


def test_wrong_optimizers_fail(capsys):
    factories = {"numpy": _wrong_numpy, "torch": _wrong_torch, "jax": _wrong_jax}
    backends = ",".join(V.installed_backends())
    code = V.run(_args("--steps", "8", "--backends", backends, "--features", "defaults"),
                 factories=factories)
    out = capsys.readouterr().out
    assert code == 1, out
    results = [line for line in out.splitlines() if line.startswith(("Adam ", "Adamax "))]
    assert len(results) == 2 * len(V.installed_backends())
    assert all(line.rstrip().endswith("FAIL") for line in results), out
    assert "|diff|" in out and "> tolerance" in out


def test_verify_core_reports_failure_rows():
    results = V.verify(["clipvalue"], ["numpy"], steps=4, factories={"numpy": _wrong_numpy})
    assert [r.passed for r in results] == [False, False]
    assert all(r.normalized > 1 and r.failures for r in results)


def test_without_keras_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(V, "keras_available", lambda: False)
    assert cli.main(["verify", "--quick"]) == 2
    err = capsys.readouterr().err
    assert 'pip install "kerasopt[test]"' in err and "pip install keras==3.15.1" in err


def test_bad_options_are_rejected(capsys):
    with pytest.raises(SystemExit):
        cli.main(["verify", "--features", "nope"])
    assert "unknown feature ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["verify", "--backends", "tensorflow"])
    assert "choose from: numpy, torch, jax" in capsys.readouterr().err


def test_every_feature_has_cases():
    assert {c.feature for c in V.cases_for(V.FEATURES)} == set(V.FEATURES)
    assert set(V.QUICK_FEATURES) <= set(V.FEATURES)
