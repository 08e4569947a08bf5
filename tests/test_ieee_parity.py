"""Inf and NaN: clconv gives TensorFlow's pattern of Inf and NaN, on every algorithm.

TF's conv2d multiplies its zero padding, so an infinite weight on a padded tap
gives NaN; its input gradient (conv2d_transpose, Conv2DBackpropInput) only ever
multiplies real dy pixels, so the zeros of padding and stride add nothing.  Each
case puts Inf or NaN in the input or the filter at seeded places and compares,
element for element, where TF has NaN, +Inf and -Inf; the finite elements
within the usual tolerance.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import DEVICES
from helpers import algorithms_computing, assert_same_specials, call_op

import clconv

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
for _device in DEVICES:  # a first build before TF loads (see test_tensorflow.py)
    clconv.conv2d(np.ones((1, 2, 2, 1), np.float32), np.ones((1, 1, 1, 1), np.float32), 1,
                  "SAME", device=_device.spec)
tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tensorflow

# op, input shape, filter shape, output shape (backprop ops), strides, padding
CASES = [
    ("conv2d", (1, 6, 6, 3), (3, 3, 3, 4), None, 1, "SAME"),
    ("conv2d", (2, 7, 5, 2), (3, 3, 2, 3), None, 2, "SAME"),
    ("conv2d", (1, 6, 6, 2), (2, 2, 2, 2), None, 1, [[0, 0], [1, 2], [2, 1], [0, 0]]),
    ("conv2d_transpose", (1, 5, 5, 3), (3, 3, 2, 3), (1, 5, 5, 2), 1, "SAME"),
    ("conv2d_transpose", (2, 3, 4, 3), (3, 3, 2, 3), (2, 6, 8, 2), 2, "SAME"),
    ("conv2d_transpose", (1, 3, 3, 2), (4, 4, 3, 2), (1, 8, 8, 3), 2, "VALID"),
    ("conv2d_backprop_input", (1, 3, 3, 2), (3, 3, 3, 2), (1, 7, 7, 3), 2, "VALID"),
    ("conv2d_backprop_input", (1, 4, 4, 2), (3, 3, 2, 2), (1, 4, 4, 2), 1, "SAME"),
]
SPECIALS = {"inf_filter": ("w", np.inf), "neg_inf_filter": ("w", -np.inf),
            "nan_filter": ("w", np.nan), "inf_input": ("x", np.inf),
            "nan_input": ("x", np.nan)}


def _tf(op, x, w, out_shape, strides, padding):
    if op == "conv2d":
        return tf.nn.conv2d(x, w, strides, padding).numpy()
    if op == "conv2d_transpose":
        return tf.nn.conv2d_transpose(x, w, out_shape, strides, padding).numpy()
    return tf.raw_ops.Conv2DBackpropInput(input_sizes=list(out_shape), filter=w,
                                          out_backprop=x, strides=[1, strides, strides, 1],
                                          padding=padding).numpy()


@pytest.mark.parametrize("special", sorted(SPECIALS))
@pytest.mark.parametrize("index", range(len(CASES)))
def test_inf_and_nan_land_where_tensorflow_puts_them(device, spec, index, special):
    op, x_shape, w_shape, out_shape, strides, padding = CASES[index]
    rng = np.random.default_rng(index)
    x = rng.uniform(-1, 1, x_shape).astype(np.float32)
    w = rng.uniform(-1, 1, w_shape).astype(np.float32)
    target, value = SPECIALS[special]
    array = w if target == "w" else x
    for flat in rng.choice(array.size, size=2, replace=False):  # corners included by seed
        array.reshape(-1)[flat] = value
    array.reshape(-1)[0] = value  # a corner tap: the one padding meets first
    expected = _tf(op, x, w, out_shape, strides, padding)
    reduction = int(np.prod(w_shape[:2])) * w_shape[-1]
    for algorithm in algorithms_computing(op, info=device):
        got = call_op(op, x, w, out_shape, strides, padding, spec, algorithm)
        assert_same_specials(got, expected, np.float32, reduction,
                             where=f"{op} {algorithm} {special}: ")
