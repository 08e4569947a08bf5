"""TensorFlow tensors go straight into clconv (in the process that imported TF)
and numpy arrays come back, equal to what numpy inputs give."""

from __future__ import annotations

import os

import numpy as np
import pytest

import clconv
from helpers import random_array

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")


def test_tf_tensors_as_inputs(device, spec):
    x, w = random_array((1, 6, 6, 3), seed=1), random_array((3, 3, 3, 4), seed=2)
    y = clconv.conv2d(tf.constant(x), tf.constant(w), 2, "SAME", device=spec)
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, clconv.conv2d(x, w, 2, "SAME", device=spec))

    dy = random_array(y.shape, seed=3)
    shape = tf.constant([1, 6, 6, 3], dtype=tf.int32)
    dx = clconv.conv2d_transpose(tf.constant(dy), tf.Variable(w), shape, 2, "SAME", device=spec)
    assert isinstance(dx, np.ndarray) and dx.shape == (1, 6, 6, 3)
    np.testing.assert_array_equal(dx, clconv.conv2d_transpose(dy, w, [1, 6, 6, 3], 2, "SAME",
                                                              device=spec))
    expected = tf.nn.conv2d_transpose(dy, w, [1, 6, 6, 3], 2, "SAME").numpy()
    np.testing.assert_allclose(dx, expected, rtol=1e-5, atol=1e-5)


def test_int64_tf_tensor_output_shape_is_rejected_as_tf_does():
    dy, w = random_array((1, 3, 3, 4)), random_array((3, 3, 3, 4))
    shape = tf.constant([1, 6, 6, 3], dtype=tf.int64)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.nn.conv2d_transpose(dy, w, shape, 2, "SAME")
    with pytest.raises(clconv.InvalidArgumentError, match="int32 tensor but is a int64"):
        clconv.conv2d_transpose(dy, w, shape, 2, "SAME")
