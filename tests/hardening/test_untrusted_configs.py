"""Untrusted configs and checkpoints are data, never code: hostile configs fuzzed through
``kerasopt.deserialize``, ``get``, ``Adam/Adamax/LossScaleOptimizer.from_config``,
``schedules.deserialize`` and ``kerasopt.load`` never import a module (spied on
``builtins.__import__``, ``importlib.import_module``, ``sys.modules`` and an audit hook) nor
run unregistered code, and fail with a clear ValueError/TypeError (never a RecursionError,
KeyError, OverflowError... from deep inside). tests/test_state.py holds the fixed table;
this suite fuzzes."""

from __future__ import annotations

import builtins
import importlib
import sys
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kerasopt
from kerasopt import checkpoint, schedules
from kerasopt.optimizer import Optimizer

# --------------------------------------------------------------------------- the spy

_EVENTS = ("import", "exec", "compile", "os.system", "os.exec", "os.posix_spawn",
           "subprocess.Popen", "ctypes.dlopen", "ctypes.call_function", "pickle.find_class",
           "marshal.loads", "code.__new__", "function.__new__", "builtins.input")
_watch = threading.local()


def _audit(event, args):
    if getattr(_watch, "events", None) is not None and event in _EVENTS:
        _watch.events.append((event, str(args)[:200]))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only while watching


class Spy:
    """Records imports, imported modules and code-execution audit events while active."""

    def __enter__(self):
        self.attempted: list[str] = []
        self.modules_before = set(sys.modules)
        self._import, self._import_module = builtins.__import__, importlib.import_module

        def spy_import(name, *args, **kwargs):
            self.attempted.append(name)
            return self._import(name, *args, **kwargs)

        def spy_import_module(name, *args, **kwargs):
            self.attempted.append(name)
            return self._import_module(name, *args, **kwargs)

        builtins.__import__, importlib.import_module = spy_import, spy_import_module
        _watch.events = []
        return self

    def __exit__(self, *exc):
        builtins.__import__, importlib.import_module = self._import, self._import_module
        self.events, _watch.events = _watch.events, None
        self.new_modules = set(sys.modules) - self.modules_before
        return False

    def assert_clean(self):
        assert not self.new_modules, f"modules imported: {sorted(self.new_modules)}"
        foreign = [n for n in self.attempted if n not in self.modules_before]
        assert not foreign, f"imports attempted: {foreign}"
        assert not self.events, f"code-execution events: {self.events}"


HOSTILE_MODULES = ["os", "subprocess", "builtins", "ctypes", "pickle", "shutil", "socket",
                   "antigravity", "this", "webbrowser", "http.server", "kerasopt_evil_xyz",
                   "keras.src.backend.torch.optimizers.torch_adam", "__main__", "importlib"]
HOSTILE_NAMES = ["system", "Popen", "__import__", "eval", "exec", "open", "getattr",
                 "os.system", "builtins.eval", "Custom>evil", "kerasopt>Adam", "Optimizer",
                 "Variable", "IndexedSlices", "object", "type", "function", "lambda",
                 "LearningRateSchedule", "__class__", "mro", "adam", "ADAMAX"]
KNOWN = ["Adam", "Adamax", "LossScaleOptimizer", "ExponentialDecay", "PiecewiseConstantDecay",
         "PolynomialDecay", "InverseTimeDecay", "CosineDecay", "CosineDecayRestarts"]
KEYS = ["learning_rate", "beta_1", "beta_2", "epsilon", "amsgrad", "weight_decay", "clipnorm",
        "clipvalue", "global_clipnorm", "use_ema", "ema_momentum", "ema_overwrite_frequency",
        "loss_scale_factor", "gradient_accumulation_steps", "name", "inner_optimizer",
        "initial_scale", "dynamic_growth_steps", "initial_learning_rate", "decay_steps",
        "decay_rate", "staircase", "boundaries", "values", "end_learning_rate", "power",
        "cycle", "alpha", "warmup_target", "warmup_steps", "first_decay_steps", "t_mul",
        "m_mul", "skip_nonfinite", "__class__", "__init__", "module", "registered_name"]

SCALARS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([10**400, -(10**400), 2**63, 2**64 + 1, 1e308, 5e-324, 0, 1, 2, 0.5]),
    st.integers(),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(HOSTILE_NAMES + HOSTILE_MODULES),
)


def _serialized(children):
    return st.fixed_dictionaries(
        {"class_name": st.sampled_from(KNOWN + HOSTILE_NAMES) | st.text(max_size=6)},
        optional={
            "module": st.sampled_from(HOSTILE_MODULES + ["keras.optimizers", None]),
            "registered_name": st.sampled_from(HOSTILE_NAMES + KNOWN + [None]) | st.integers(),
            "config": st.one_of(
                st.dictionaries(st.sampled_from(KEYS), children, max_size=6),
                st.sampled_from(HOSTILE_NAMES),
                children,
            ),
        },
    )


CONFIGS = st.recursive(
    SCALARS | st.lists(SCALARS, max_size=4),
    lambda children: _serialized(children) | st.dictionaries(st.sampled_from(KEYS), children,
                                                             max_size=5),
    max_leaves=25,
)

ENTRY_POINTS = {
    "deserialize": kerasopt.deserialize,
    "get": kerasopt.get,
    "Adam.from_config": lambda c: kerasopt.Adam.from_config(c.get("config", c)
                                                            if isinstance(c, dict) else c),
    "Adamax.from_config": lambda c: kerasopt.Adamax.from_config(c),
    "LossScaleOptimizer.from_config": lambda c: kerasopt.LossScaleOptimizer.from_config(c),
    "schedules.deserialize": schedules.deserialize,
}


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(entry=st.sampled_from(sorted(ENTRY_POINTS)), config=CONFIGS)
def test_fuzz_hostile_configs(entry, config, hardening_count):
    hardening_count("hostile configs tried")
    with Spy() as spy:
        try:
            result = ENTRY_POINTS[entry](config)
        except (ValueError, TypeError) as error:
            assert str(error), "an error without a message"
            result = None
            hardening_count("hostile configs refused with ValueError/TypeError")
    spy.assert_clean()
    if result is not None:  # a valid config: only kerasopt's own classes come out
        assert isinstance(result, (Optimizer, schedules.LearningRateSchedule)), result
        assert type(result).__module__.startswith("kerasopt."), type(result)
        hardening_count("hostile-looking configs that were valid kerasopt configs")


def _nest(depth, make):
    config = {"class_name": "Adam", "config": {}}
    for _ in range(depth):
        config = make(config)
    return config


BOMBS = {
    "learning_rate": lambda c: {"class_name": "Adam", "config": {"learning_rate": c}},
    "beta_1": lambda c: {"class_name": "Adamax", "config": {"beta_1": c}},
    "inner_optimizer": lambda c: {"class_name": "LossScaleOptimizer",
                                  "config": {"inner_optimizer": c}},
    "schedule_in_schedule": lambda c: {"class_name": "ExponentialDecay",
                                       "config": {"initial_learning_rate": c}},
    "list_nesting": lambda c: {"class_name": "Adam", "config": {"learning_rate": [[c]]}},
}


@pytest.mark.parametrize("depth", [40, 5000, 50_000])
@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_recursion_depth_bombs_are_refused(bomb, depth, hardening_count):
    config = _nest(depth, BOMBS[bomb])
    for name, entry in ENTRY_POINTS.items():
        with Spy() as spy:
            with pytest.raises((ValueError, TypeError)):
                entry(config)
        spy.assert_clean()
        hardening_count("recursion-depth bombs refused")
        del name


def test_shallow_nesting_still_works():
    inner = kerasopt.Adam(learning_rate=kerasopt.schedules.ExponentialDecay(0.1, 10, 0.5))
    config = kerasopt.serialize(kerasopt.LossScaleOptimizer(inner))
    restored = kerasopt.deserialize(config)
    assert isinstance(restored.inner_optimizer.learning_rate, np.floating | float)


# --------------------------------------------------------------------------- checkpoints


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(meta=st.dictionaries(st.sampled_from(["class", "inner_class", "config", "kind",
                                             "version", "state_names", "skipped_steps",
                                             "param_groups", "state_index", "treedef",
                                             "loss_scale", "format"]),
                            CONFIGS, max_size=8),
       kind=st.sampled_from(["numpy", "torch", "jax", None]),
       version=st.sampled_from([1, 1, 2, "1", None]))
def test_hostile_checkpoint_metadata_is_refused(tmp_path_factory, meta, kind, version,
                                               hardening_count):
    """An attacker can write any metadata and a matching SHA-256: loading must still refuse
    it cleanly (the stored config is never deserialized) and import nothing."""
    meta = dict(meta)
    if kind is not None:
        meta["kind"] = kind
    meta["version"] = version
    path = tmp_path_factory.mktemp("ckpt") / "hostile.ckpt"
    arrays = [("state/0", "int64", (), np.int64(5).tobytes())]
    try:
        blob = checkpoint._encode(arrays, meta)
    except (TypeError, ValueError):  # not JSON-serializable (e.g. NaN keys): skip
        return
    path.write_bytes(blob)
    var = kerasopt.Variable(np.ones(3, np.float32))
    opt = kerasopt.Adam()
    opt.build([var])
    before = [v.numpy().copy() for v in opt.variables]
    with Spy() as spy:
        with pytest.raises(kerasopt.CheckpointError):
            kerasopt.load(path, opt)
    spy.assert_clean()
    assert all(np.array_equal(a, b.numpy()) for a, b in zip(before, opt.variables))
    hardening_count("hostile checkpoint metadata refused")


def test_load_never_unpickles(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "pickle.ckpt"
    path.write_bytes(pickle.dumps(Boom()))
    opt = kerasopt.Adam()
    opt.build([kerasopt.Variable(np.ones(2, np.float32))])
    with Spy() as spy:
        with pytest.raises(kerasopt.CheckpointError):
            kerasopt.load(path, opt)
    spy.assert_clean()


@pytest.mark.parametrize("key,value", [("lr", "fast"), ("beta_1", 5.0), ("iterations", -1),
                                       ("skipped_steps", 1.5), ("epsilon", None),
                                       ("use_ema", "yes"), ("kerasopt", "Adamax")])
def test_hostile_torch_param_groups_are_refused(tmp_path, key, value):
    import torch

    import kerasopt.torch as kt

    p = torch.ones(3, requires_grad=True)
    opt = kt.Adam([p])
    p.grad = torch.ones(3)
    opt.step()
    path = tmp_path / "t.ckpt"
    kerasopt.save(path, opt)
    meta, arrays = checkpoint._decode(path)
    meta["param_groups"][0][key] = value  # an attacker rewrites it and the hash
    path.write_bytes(checkpoint._encode(
        [(name, *entry) for name, entry in arrays.items()], meta))
    before = (p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()},
              dict(opt.param_groups[0]))
    with Spy() as spy:
        with pytest.raises(kerasopt.CheckpointError):
            kerasopt.load(path, opt)
    spy.assert_clean()
    assert torch.equal(before[0], p.detach())
    assert all(torch.equal(v, opt.state[p][k]) for k, v in before[1].items())
    assert {k: v for k, v in before[2].items() if k != "params"} == {
        k: v for k, v in opt.param_groups[0].items() if k != "params"}
