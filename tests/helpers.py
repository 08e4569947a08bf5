"""Shared test helpers: random data, the reference, and the tolerance rule of
clconv.tolerance."""

from __future__ import annotations

import numpy as np

from clconv.reference import backprop_input_reference, conv2d_reference
from clconv.shapes import (
    ConvGeometry,
    backprop_input_geometry,
    conv2d_geometry,
    parse_attrs,
)
from clconv.tolerance import max_relative_error, tolerance

__all__ = ["call_op", "assert_close", "random_array", "tolerance", "max_relative_error",
           "conv2d_case", "backprop_case", "conv2d_reference", "backprop_input_reference",
           "algorithms_computing"]


def algorithms_computing(op: str, groups: int = 1, info=None, dtype=np.float32) -> list:
    """The registered algorithms that compute ``op`` for a small ``dtype`` conv with
    ``groups`` groups of 2 channels (on ``info``'s device, else the first one): what
    a test may force.  ``grouped`` takes only grouped convs, the GEMMs only ungrouped
    ones, ``col2im`` no float16; the registry says so, not the test."""
    import clconv
    from clconv import registry

    info = info if info is not None else clconv.devices()[0]
    g = ConvGeometry("NHWC", 1, 4, 4, 2 * groups, 3, 3, 4, 4, 2 * groups, 1, 1, 1, 1, 1, 1,
                     1, 1, groups)
    return [name for name in registry.algorithms_for(op)
            if registry.unsupported(name, op, np.dtype(dtype), g, info) is None]


def call_op(op, x, w, out_shape, strides, padding, spec, algorithm=None):
    """One of clconv's three ops, by name: ``x`` is conv2d's input, or the input /
    out_backprop of the other two; ``out_shape`` their output_shape / input_sizes."""
    import clconv

    if op == "conv2d":
        return clconv.conv2d(x, w, strides, padding, device=spec, algorithm=algorithm)
    if op == "conv2d_transpose":
        return clconv.conv2d_transpose(x, w, out_shape, strides, padding, device=spec,
                                       algorithm=algorithm)
    return clconv.conv2d_backprop_input(out_shape, w, x, strides, padding, device=spec,
                                        algorithm=algorithm)


def random_array(shape, dtype=np.float32, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, size=shape).astype(dtype)


def assert_close(actual, expected, dtype, reduction: int, rtol=None, atol=None) -> None:
    """Shape, dtype, then values within the tolerance of dtype and reduction length."""
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    assert actual.dtype == np.dtype(dtype), f"dtype {actual.dtype} != expected {np.dtype(dtype)}"
    default_rtol, default_atol = tolerance(dtype, reduction)
    np.testing.assert_allclose(
        actual.astype(np.float64), expected,
        rtol=default_rtol if rtol is None else rtol,
        atol=default_atol if atol is None else atol,
    )


def conv2d_case(x_shape, w_shape, strides, padding, data_format="NHWC",
                dilations=None) -> ConvGeometry:
    return conv2d_geometry(x_shape, w_shape, parse_attrs(strides, padding, data_format, dilations))


def backprop_case(input_sizes, w_shape, dy_shape, strides, padding, data_format="NHWC",
                  dilations=None) -> ConvGeometry:
    return backprop_input_geometry(input_sizes, w_shape, dy_shape,
                                   parse_attrs(strides, padding, data_format, dilations))


def reduction_length(g: ConvGeometry, transpose: bool = False) -> int:
    if transpose:
        return g.k_h * g.k_w * g.out_c
    return g.k_h * g.k_w * (g.in_c // g.groups)


def tf_message(exc: BaseException) -> str:
    """The first line of an error, without TF's "{{function_node ...}}" prefix and
    " [Op:...]" suffix; TF 2.21's CPU gradient kernel calls itself
    Conv2DCustomBackpropInput in some messages only, clconv always names the op."""
    import re

    text = str(exc).splitlines()[0]
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\].*$", "", text).strip()
    return text.replace("Conv2DCustomBackpropInput", "Conv2DBackpropInput")


def assert_raises_like_tensorflow(call, tf_module, clconv_module) -> None:
    """``call(module)`` raises with TF and with clconv: corresponding classes (TF's
    InvalidArgumentError / UnimplementedError are clconv's), and clconv's message is
    TF's, sometimes followed by the offending value."""
    import pytest

    with pytest.raises(Exception) as theirs:
        call(tf_module)
    with pytest.raises(Exception) as ours:
        call(clconv_module)
    kinds = {"InvalidArgumentError": clconv_module.InvalidArgumentError,
             "UnimplementedError": clconv_module.UnimplementedError}
    expected = kinds.get(type(theirs.value).__name__, type(theirs.value))
    assert isinstance(ours.value, expected), (ours.value, theirs.value)
    assert tf_message(ours.value).startswith(tf_message(theirs.value)), (ours.value,
                                                                        theirs.value)


def nan_filled_outputs(monkeypatch) -> None:
    """Every device tensor a plan makes without zeroing it (outputs, and temporaries
    such as the column-padded copy) full of NaN, as a reused buffer may be: whatever a
    kernel reads must have been written."""
    from clconv import tensors

    new_output = tensors.empty_output

    def output(shape, dtype, queue, info, zero, checked=False):
        tensor = new_output(shape, dtype, queue, info, zero, checked)
        if not zero and tensor.size:
            tensor.fill(queue, np.nan)
        return tensor

    monkeypatch.setattr(tensors, "empty_output", output)


SPECIALS = (("NaN", np.isnan), ("+Inf", np.isposinf), ("-Inf", np.isneginf))


def assert_same_specials(got, want, dtype, reduction: int, where: str = "") -> None:
    """NaN, +Inf and -Inf at the very elements of ``got`` where ``want`` has them; the
    finite elements within assert_close's tolerance."""
    for name, mask in SPECIALS:
        assert np.array_equal(mask(got), mask(want)), (
            f"{where}{name} at {np.argwhere(mask(got)).tolist()}, expected at "
            f"{np.argwhere(mask(want)).tolist()}")
    finite = np.isfinite(want)
    assert_close(got[finite], want[finite], dtype, reduction)
