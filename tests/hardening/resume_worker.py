"""Training runs for the exact-resume tests, identical in the test process and in a fresh
process: ``python resume_worker.py SPEC.json`` loads the checkpoint named in the spec with
``kerasopt.load`` into a newly built optimizer, trains the remaining steps, and writes the
final weights and optimizer state to the spec's ``out`` (.npz, no pickle).

A spec: ``{"frontend": "numpy"|"torch"|"optax", "algo": "adam"|"adamax", "kwargs": {...},
"wrap": null | {"initial_scale", "dynamic_growth_steps"}, "seed", "total", "save_step",
"bad_steps": [...], "checkpoint", "out"}``. ``kwargs["learning_rate"]`` may be a serialized
``kerasopt.schedules`` schedule.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from optimizer_db import core_class, optax_factory, torch_class

SHAPES = [(3, 4), (5,)]


def gradients(spec: dict, step: int) -> list[np.ndarray]:
    """The gradients of ``step``: random normals; non-finite on the spec's bad steps."""
    rng = np.random.default_rng([spec["seed"], step])
    grads = [rng.normal(scale=3.0, size=s).astype(np.float32) for s in SHAPES]
    if step in spec["bad_steps"]:
        grads[step % 2].flat[0] = np.nan if step % 3 else np.inf
    return grads


def _kwargs(spec: dict) -> dict:
    import kerasopt

    kwargs = dict(spec["kwargs"])
    if isinstance(kwargs.get("learning_rate"), dict):
        kwargs["learning_rate"] = kerasopt.schedules.deserialize(kwargs["learning_rate"])
    return kwargs


def _initial() -> list[np.ndarray]:
    return [np.linspace(-1.0, 1.0, int(np.prod(s)), dtype=np.float32).reshape(s)
            for s in SHAPES]


class Run:
    """A model (the weights) and its optimizer on one frontend."""

    def __init__(self, spec: dict) -> None:
        self.spec = spec
        frontend, algo, kwargs = spec["frontend"], spec["algo"], _kwargs(spec)
        wrap = spec.get("wrap")
        if frontend == "numpy":
            import kerasopt

            self.weights = [kerasopt.Variable(w, name=f"w{i}") for i, w in enumerate(_initial())]
            opt = core_class(algo)(**kwargs)
            self.opt = kerasopt.LossScaleOptimizer(opt, **wrap) if wrap else opt
            self.opt.build(self.weights)
        elif frontend == "torch":
            import torch

            import kerasopt.torch as kt

            self.weights = [torch.tensor(w, requires_grad=True) for w in _initial()]
            opt = torch_class(algo)(self.weights, **kwargs)
            self.opt = kt.LossScaleOptimizer(opt, **wrap) if wrap else opt
        else:
            import jax
            import jax.numpy as jnp

            import kerasopt.optax as ko

            tx = optax_factory(algo)(**kwargs)
            self.tx = ko.loss_scale(tx, **wrap) if wrap else tx
            self.weights = [jnp.asarray(w) for w in _initial()]
            self.state = self.tx.init(self.weights)
            self.update = jax.jit(self.tx.update)

    def scale(self) -> np.float32:
        if not self.spec.get("wrap"):
            return np.float32(1.0)
        if self.spec["frontend"] == "optax":
            import jax.numpy as jnp

            import kerasopt.optax as ko

            return np.float32(ko.scale_loss(jnp.float32(1.0), self.state))
        return np.float32(self.opt.scale_loss(1.0))

    def train(self, start: int, stop: int) -> None:
        import warnings

        frontend = self.spec["frontend"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for step in range(start, stop):
                grads = [g * self.scale() for g in gradients(self.spec, step)]
                if frontend == "numpy":
                    self.opt.apply(grads, self.weights)
                elif frontend == "torch":
                    import torch

                    for p, g in zip(self.weights, grads):
                        p.grad = torch.from_numpy(g)
                    self.opt.step()
                else:
                    import jax.numpy as jnp
                    import optax

                    updates, self.state = self.update(
                        [jnp.asarray(g) for g in grads], self.state, self.weights
                    )
                    self.weights = optax.apply_updates(self.weights, updates)

    def save(self, path: str) -> None:
        import kerasopt

        if self.spec["frontend"] == "optax":
            kerasopt.save(path, (self.weights, self.state))
        else:
            kerasopt.save(path, self.opt)

    def load(self, path: str) -> None:
        import kerasopt

        if self.spec["frontend"] == "optax":
            self.weights, self.state = kerasopt.load(path, (self.weights, self.state))
        else:
            kerasopt.load(path, self.opt)

    def arrays(self) -> dict[str, np.ndarray]:
        """Weights, every state array and the counters, by a stable name."""
        frontend = self.spec["frontend"]
        out: dict[str, np.ndarray] = {}
        if frontend == "numpy":
            for i, w in enumerate(self.weights):
                out[f"w{i}"] = w.numpy()
            for i, v in enumerate(self.opt.variables):
                out[f"s{i}"] = v.numpy()
            out["skipped"] = np.array(self.opt.skipped_steps)
        elif frontend == "torch":
            inner = getattr(self.opt, "inner_optimizer", self.opt)
            for i, p in enumerate(self.weights):
                out[f"w{i}"] = p.detach().numpy().copy()
                for slot, value in sorted(inner.state[p].items()):
                    out[f"s{i}_{slot}"] = value.numpy().copy()
            out["iterations"] = np.array(inner.raw_iterations)
            out["skipped"] = np.array(inner.skipped_steps)
            out["lr"] = np.array(inner.param_groups[0]["lr"])
            if inner is not self.opt:
                out["scale"] = np.array([self.opt.dynamic_scale, self.opt.step_counter])
        else:
            import jax

            for i, w in enumerate(self.weights):
                out[f"w{i}"] = np.asarray(w)
            for i, leaf in enumerate(jax.tree_util.tree_leaves(self.state)):
                out[f"s{i}"] = np.asarray(leaf)
        return out


def main(spec_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    run = Run(spec)  # a fresh optimizer, built for fresh weights
    run.load(spec["checkpoint"])
    run.train(spec["save_step"], spec["total"])
    np.savez(spec["out"], allow_pickle=False, **run.arrays())


if __name__ == "__main__":
    main(sys.argv[1])
