"""clconv.onnx against onnx's reference evaluator (onnx.reference.ReferenceEvaluator)
in the same process, and against the float64 result of that evaluator: every
auto_pad mode, asymmetric pads, groups, dilations, output_padding and output_shape,
1-D, 2-D and 3-D; the errors.  Skipped where onnx is not installed."""

from __future__ import annotations

import numpy as np
import pytest

import clconv
import clconv.onnx as co
from helpers import assert_close

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402


def _reference(op, X, W, B=None, **attributes):
    """The operator run by onnx's reference evaluator, in X's precision.

    Two of its ConvTranspose paths are worked around with the specification's own
    equivalents (both fail inside the evaluator, onnx 1.23): output_shape becomes the
    pads the specification derives from it, and a grouped ConvTranspose runs group by
    group."""
    if op == "ConvTranspose" and "output_shape" in attributes:
        attributes = dict(attributes)
        outs = attributes.pop("output_shape")
        spatial = X.ndim - 2
        strides = attributes.get("strides", [1] * spatial)
        dilations = attributes.get("dilations", [1] * spatial)
        extra = attributes.get("output_padding", [0] * spatial)
        totals = [s * (n - 1) + e + (k - 1) * d + 1 - o for s, n, e, k, d, o in
                  zip(strides, X.shape[2:], extra, W.shape[2:], dilations, outs)]
        upper = attributes.pop("auto_pad", "NOTSET") == "SAME_UPPER"
        begins = [t // 2 if upper else t - t // 2 for t in totals]
        attributes["pads"] = begins + [t - b for t, b in zip(totals, begins)]
    group = attributes.get("group", 1)
    if op == "ConvTranspose" and group > 1:
        single = dict(attributes, group=1)
        step_in, parts = X.shape[1] // group, []
        for i in range(group):
            parts.append(_reference(op, X[:, i * step_in:(i + 1) * step_in],
                                    W[i * step_in:(i + 1) * step_in], **single))
        joined = np.concatenate(parts, axis=1)
        return joined if B is None else joined + B.reshape(1, -1, *([1] * (X.ndim - 2)))
    kind = TensorProto.DOUBLE if X.dtype == np.float64 else TensorProto.FLOAT
    names = ["X", "W"] + (["B"] if B is not None else [])
    node = helper.make_node(op, names, ["Y"], **attributes)
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info(n, kind, None) for n in names],
                              [helper.make_tensor_value_info("Y", kind, None)])
    feeds = {"X": X, "W": W, **({"B": B} if B is not None else {})}
    return ReferenceEvaluator(helper.make_model(graph)).run(None, feeds)[0]


def _random(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


CASES = {  # name -> (op, X shape, W shape, bias?, attributes)
    "conv_asymmetric_pads": ("Conv", (1, 3, 7, 7), (4, 3, 3, 3), True,
                             dict(pads=[1, 0, 2, 1], strides=[2, 1])),
    "conv_same_upper": ("Conv", (1, 3, 7, 8), (4, 3, 2, 3), False,
                        dict(auto_pad="SAME_UPPER", strides=[2, 2])),
    "conv_same_lower": ("Conv", (1, 3, 7, 8), (4, 3, 2, 3), False,
                        dict(auto_pad="SAME_LOWER", strides=[2, 3])),
    "conv_valid_grouped_dilated": ("Conv", (1, 4, 7, 8), (4, 2, 3, 3), False,
                                   dict(group=2, dilations=[2, 1], auto_pad="VALID")),
    "conv_depthwise_kernel_shape": ("Conv", (2, 4, 6, 6), (4, 1, 3, 3), True,
                                    dict(group=4, kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    "conv_1d": ("Conv", (2, 3, 11), (4, 3, 3), True, dict(pads=[2, 1], strides=[2])),
    "transpose_pads_output_padding": ("ConvTranspose", (1, 3, 4, 4), (3, 2, 3, 3), True,
                                      dict(strides=[2, 2], pads=[1, 0, 1, 2],
                                           output_padding=[1, 1])),
    "transpose_output_shape": ("ConvTranspose", (1, 3, 4, 4), (3, 2, 3, 3), False,
                               dict(strides=[2, 2], output_shape=[8, 7])),
    # past the full transposed conv: a negative leading padding, dx pixels no tap reaches
    "transpose_output_shape_past_full": ("ConvTranspose", (1, 3, 4, 4), (3, 2, 3, 3), False,
                                         dict(strides=[2, 2], output_shape=[12, 11])),
    "transpose_negative_pads": ("ConvTranspose", (1, 3, 4, 4), (3, 2, 3, 3), False,
                                dict(strides=[2, 2], pads=[-2, -1, -1, -1])),
    "transpose_output_shape_same_upper": ("ConvTranspose", (1, 3, 4, 4), (3, 2, 3, 3), False,
                                          dict(strides=[2, 2], output_shape=[8, 8],
                                               auto_pad="SAME_UPPER")),
    "transpose_same_upper": ("ConvTranspose", (1, 3, 4, 4), (3, 2, 4, 4), False,
                             dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "transpose_same_lower": ("ConvTranspose", (1, 3, 5, 4), (3, 2, 3, 4), False,
                             dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "transpose_depthwise_dilated": ("ConvTranspose", (1, 4, 5, 5), (4, 1, 3, 3), False,
                                    dict(strides=[2, 2], group=4, dilations=[2, 2])),
    "transpose_grouped_1d_x8": ("ConvTranspose", (1, 8, 6), (8, 2, 16), True,
                                dict(strides=[8], pads=[4, 4], group=2)),
    "conv_3d_asymmetric": ("Conv", (1, 3, 5, 6, 4), (4, 3, 3, 2, 3), True,
                           dict(pads=[1, 0, 1, 0, 1, 2], strides=[2, 1, 1])),
    "conv_3d_same_lower_grouped": ("Conv", (2, 4, 5, 5, 5), (4, 2, 3, 3, 3), False,
                                   dict(auto_pad="SAME_LOWER", strides=[2, 2, 1], group=2)),
    "transpose_3d_unet_x2": ("ConvTranspose", (1, 4, 3, 4, 2), (4, 2, 2, 2, 2), True,
                             dict(strides=[2, 2, 2])),
    "transpose_3d_output_shape": ("ConvTranspose", (1, 2, 3, 3, 3), (2, 3, 3, 3, 3), False,
                                  dict(strides=[2, 2, 2], output_shape=[6, 5, 6],
                                       dilations=[1, 1, 1])),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_cases_match_the_reference_evaluator(device, spec, case):
    op, x_shape, w_shape, has_bias, attributes = CASES[case]
    X, W = _random(x_shape, 1), _random(w_shape, 2)
    out_channels = w_shape[0] if op == "Conv" else w_shape[1] * attributes.get("group", 1)
    B = _random((out_channels,), 3) if has_bias else None
    run = co.conv if op == "Conv" else co.conv_transpose
    got = run(X, W, B, **attributes, device=spec)
    want = _reference(op, X, W, B, **attributes)
    exact = _reference(op, X.astype(np.float64), W.astype(np.float64),
                       None if B is None else B.astype(np.float64), **attributes)
    assert got.shape == want.shape and got.dtype == want.dtype
    taps = int(np.prod(w_shape[2:]))
    reduction = taps * (w_shape[1] if op == "Conv" else w_shape[0])
    assert_close(got, exact, np.float32, reduction)


ERRORS = {  # name -> (function, X shape, W shape, attributes, message pattern)
    "bad_auto_pad": (co.conv, (1, 3, 5, 5), (2, 3, 3, 3), dict(auto_pad="SAME"), "auto_pad"),
    "channels": (co.conv, (1, 4, 5, 5), (2, 3, 3, 3), {}, "input channels"),
    "kernel_shape": (co.conv, (1, 3, 5, 5), (2, 3, 3, 3), dict(kernel_shape=[2, 2]),
                     "kernel_shape"),
    "pads_length": (co.conv, (1, 3, 5, 5), (2, 3, 3, 3), dict(pads=[1, 1]), "pads"),
    "empty_output": (co.conv, (1, 3, 2, 2), (2, 3, 3, 3), {}, "empty"),
    "group": (co.conv, (1, 3, 5, 5), (2, 1, 3, 3), dict(group=2), "group"),
    "transpose_channels": (co.conv_transpose, (1, 4, 5, 5), (3, 2, 3, 3), {},
                           "input channels"),
    "four_d": (co.conv, (1, 1, 3, 3, 3, 3), (1, 1, 2, 2, 2, 2), {}, "1, 2 or 3 spatial"),
}


@pytest.mark.parametrize("case", list(ERRORS), ids=list(ERRORS))
def test_errors_name_the_value(case, spec):
    run, x_shape, w_shape, attributes, pattern = ERRORS[case]
    with pytest.raises(clconv.InvalidArgumentError, match=pattern):
        run(_random(x_shape, 4), _random(w_shape, 5), **attributes, device=spec)
