"""``kerasopt verify``: passes for kerasopt, fails (exit code 1) for deliberately wrong
optimizers, and says how to install Keras when it is missing (exit code 2)."""

from __future__ import annotations

import pytest

import kerasopt
from kerasopt.cli import main as cli
from kerasopt.cli import verify as V
from optimizer_db import AMSGRAD, KERAS_NAMES, SPECS, spec

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
    for name in KERAS_NAMES:  # every registered algorithm has its rows (AdamW too)
        rows = [line for line in out.splitlines() if line.startswith(f"{name} ")]
        assert len(rows) == 3 * len(V.installed_backends()), (name, out)
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
    return getattr(kerasopt, algo)(**{**kwargs, "learning_rate": rate * 1.001})  # 0.1% off


def _wrong_torch(algo, params, kwargs):
    import kerasopt.torch as kt

    return getattr(kt, algo)(params, **{**kwargs, "beta_1": 0.899})


def _wrong_jax(algo, kwargs):
    import kerasopt.optax as ko

    factory = ko.FACTORIES[spec(algo).name]
    return factory(**{**kwargs, "learning_rate": kwargs["learning_rate"] * 1.01})


def test_wrong_optimizers_fail(capsys):
    factories = {"numpy": _wrong_numpy, "torch": _wrong_torch, "jax": _wrong_jax}
    backends = ",".join(V.installed_backends())
    code = V.run(_args("--steps", "8", "--backends", backends, "--features", "defaults"),
                 factories=factories)
    out = capsys.readouterr().out
    assert code == 1, out
    results = [line for line in out.splitlines()
               if line.startswith(tuple(f"{name} " for name in KERAS_NAMES))]
    assert len(results) == len(KERAS_NAMES) * len(V.installed_backends())
    assert all(line.rstrip().endswith("FAIL") for line in results), out
    assert "|diff|" in out and "> tolerance" in out


def test_verify_core_reports_failure_rows():
    results = V.verify(["clipvalue"], ["numpy"], steps=4, factories={"numpy": _wrong_numpy})
    assert [r.algo for r in results] == KERAS_NAMES
    assert [r.passed for r in results] == [False] * len(KERAS_NAMES)
    assert all(r.normalized > 1 and r.failures for r in results)


def test_without_keras_says_how_to_install(monkeypatch, capsys):
    monkeypatch.setattr(V, "keras_available", lambda: False)
    assert cli.main(["verify", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "-m pip install keras==3.15.1" in err
    assert "kerasopt[test]" not in err  # kerasopt is on no index: that line would fail


@pytest.mark.parametrize("steps", ["0", "-3", "two"])
def test_steps_must_be_a_positive_whole_number(steps, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["verify", "--steps", steps])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--steps" in err
    assert "expected a number >= 1" in err or "expected a whole number" in err


def test_a_backend_left_out_for_lack_of_its_framework_is_counted_as_skipped(
        monkeypatch, capsys):
    monkeypatch.setattr(V, "installed_backends", lambda: ["numpy", "torch"])
    ran = []

    def fake_verify(features, backends, steps, factories, progress):
        ran.append(list(backends))
        return [V.Result(c.feature, c.algo, b, steps) for b in backends
                for c in V.cases_for(features)]

    monkeypatch.setattr(V, "verify", fake_verify)
    assert V.run(_args("--features", "defaults,float64", "--steps", "2")) == 0
    out = capsys.readouterr().out
    assert ran == [["numpy", "torch"]]
    # defaults and float64 on every algorithm; JAX cannot run float64 (already a row).
    n = len(KERAS_NAMES)
    jax_runs = len([c for c in V.cases_for(["defaults", "float64"])
                    if ("jax", c.feature) not in V.UNSUPPORTED])
    assert jax_runs == n
    assert f"{4 * n}/{4 * n} runs match Keras ({n} skipped; backend jax not installed)" in out
    assert (f"Skipped the jax backend (kerasopt.optax, {n} runs): jax and optax not "
            "installed") in out
    assert "-m pip install" in out and "[jax]" in out


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


def test_cases_come_from_the_registry():
    """Every registered algorithm is verified on every feature, amsgrad on those whose spec
    has the flag that adds its slot."""
    cases = V.cases_for(V.FEATURES)
    assert {c.algo for c in cases} == set(KERAS_NAMES)
    assert "AdamW" in KERAS_NAMES
    for feature in V.FEATURES:
        algos = [c.algo for c in cases if c.feature == feature]
        expected = AMSGRAD if feature == "amsgrad" else tuple(KERAS_NAMES)
        assert tuple(algos) == tuple(expected), feature
    assert [c.algo for c in V.cases_for(["amsgrad"])] == [
        s.keras_name for s in SPECS if "velocity_hat" in s.optional_slots]


def test_a_newly_registered_algorithm_is_verified(monkeypatch):
    """An algorithm added to the registry is run by verify without naming it there: a copy
    of Adamax's spec under another name gets its own rows (and Keras is asked for it)."""
    import dataclasses

    from kerasopt import specs

    twin = dataclasses.replace(spec("adamax"), name="adamax_twin", keras_name="AdamaxTwin")
    monkeypatch.setitem(specs.REGISTRY, twin.name, twin)
    assert "AdamaxTwin" in V.algorithm_names()
    cases = V.cases_for(["defaults", "amsgrad"])
    assert [c.key for c in cases if c.algo == "AdamaxTwin"] == ["AdamaxTwin:defaults"]
    assert V.Case("defaults", "AdamaxTwin").as_json()["algo"] == "AdamaxTwin"
