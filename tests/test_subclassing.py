"""A user-defined optimizer, written the Keras way (``build`` + ``update_step`` +
``get_config``), gets the whole base-class pipeline: checked against a hand-written loop."""

from __future__ import annotations

import numpy as np

import kerasopt


class MomentumSGD(kerasopt.Optimizer):
    """The SGD example of Keras's base-class docstring: ``m = momentum * m - lr * g; w += m``."""

    def __init__(self, learning_rate=0.01, momentum=0.9, name="momentum_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum = momentum

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        m = self.momentums[self._get_variable_index(variable)]
        m.assign(m.value * np.float32(self.momentum) - gradient * np.float32(learning_rate))
        variable.assign_add(m.value)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}


def test_subclass_runs_the_base_pipeline():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(4).astype(np.float32)
    grads = [rng.standard_normal(4).astype(np.float32) * 5 for _ in range(6)]
    var = kerasopt.Variable(w0.copy(), name="w")
    opt = MomentumSGD(learning_rate=0.1, clipvalue=1.0, gradient_accumulation_steps=2,
                      weight_decay=0.5)
    for g in grads:
        opt.apply([g], [var])

    # The same, by hand: accumulate pairs, average, clip to [-1, 1], decay, momentum step.
    w, m = w0.copy(), np.zeros(4, np.float32)
    lr = np.float32(0.1)
    for a, b in zip(grads[::2], grads[1::2]):
        g = np.clip((b + a) / 2, -1, 1)
        w = w * (np.float32(1) - np.float32(0.5) * lr)
        m = m * np.float32(0.9) - g * lr
        w = w + m
    np.testing.assert_allclose(var.numpy(), w, rtol=1e-6)
    assert int(opt.iterations) == 3
    assert [v.name for v in opt.variables] == [
        "momentum_sgd/iteration",
        "momentum_sgd/learning_rate",
        "momentum_sgd/w_gradient_accumulator",
        "momentum_sgd/w_momentum",
    ]
    restored = MomentumSGD.from_config(opt.get_config())
    assert restored.get_config() == opt.get_config()
