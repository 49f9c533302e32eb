"""Errors a person can act on: the message names the thing, the value and the fix."""

from __future__ import annotations

import numpy as np
import pytest

import kerasopt


def test_torch_and_optax_spellings_point_to_keras_names():
    with pytest.raises(TypeError, match=r"`lr`=0\.1.*Did you mean `learning_rate` for `lr`"):
        kerasopt.Adam(lr=0.1)
    with pytest.raises(TypeError, match=r"`epsilon` for `eps`"):
        kerasopt.Adamax(eps=1e-8)


def test_read_only_array_is_refused_with_the_fix():
    frozen = np.ones(3, np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match=r"read-only.*kerasopt\.Variable\(np\.array\(value\)\)"):
        kerasopt.Variable(frozen, name="frozen")


def test_shape_mismatch_names_variable_shapes_and_fix():
    a = kerasopt.Variable(np.zeros(3, np.float32), name="a")
    b = kerasopt.Variable(np.zeros((2, 2), np.float32), name="b")
    opt = kerasopt.Adam()
    with pytest.raises(ValueError, match=r"'a' has shape \(2, 2\); expected .* \(3,\)\. Pass the "
                       r"gradients in the same order"):
        opt.apply([np.zeros((2, 2), np.float32), np.zeros(3, np.float32)], [a, b])


def test_state_count_mismatch_says_what_differs():
    v = kerasopt.Variable(np.zeros(3, np.float32), name="v")
    saved = {}
    with_ema = kerasopt.Adam(use_ema=True)
    with_ema.build([v])
    with_ema.save_own_variables(saved)
    plain = kerasopt.Adam()
    plain.build([v])
    with pytest.raises(ValueError, match=r"has 5 variables but this optimizer has 4\. .*use_ema"):
        plain.load_own_variables(saved)
