"""clconv's errors against TensorFlow's error table; no TensorFlow needed.

Each row of ``ERRORS`` is one row of docs/tf-semantics.md section 4 (conv2d_transpose
and Conv2DBackpropInput; both ops are called for every backprop row) or of
notes/tf-conv2d-forward.md (forward conv2d).  A row asserts the exception class
(clconv.InvalidArgumentError is a ValueError, clconv.UnimplementedError a
NotImplementedError), that the message holds TF's text, and that it names the
offending value.  The errors are raised before any device work, so these tests
take no device.

Rows where clconv deliberately differs from TF's CPU kernels:

* NCHW and dilations > 1 are computed (as TF does on GPU): ``test_computes``
  checks the values on one device instead of an error.  Dilation 0 is an
  InvalidArgumentError with the forward op's text "Dilated rates should be larger
  than 0." (TF's CPU backprop says "...do not yet support dilation rates larger
  than 1.", which would be wrong for a clconv that computes dilations).
* int32 and bfloat16, which TF accepts, give clconv.UnimplementedError; int64 is
  TF's op-def error (InvalidArgumentError).
* Forward grouped convolution is computed and checked against
  clconv.reference.conv2d_reference; grouped backprop stays TF's CPU error.
* An int64 *tensor* output_shape is TF's error; an int64 NumPy array is accepted
  (as in TF).  The tensor is faked here (``_Int64Tensor``) so no TF is needed;
  tests/test_tensorflow.py checks it against a real tf.Tensor.
"""

from __future__ import annotations

import numpy as np
import pytest

import clconv
from clconv.reference import backprop_input_reference, conv2d_reference
from conftest import DEVICES, is_simulator
from helpers import (
    assert_close,
    backprop_case,
    conv2d_case,
    random_array,
    reduction_length,
)

IAE = clconv.InvalidArgumentError
UNIMPL = clconv.UnimplementedError


def z(*shape, dtype=np.float32) -> np.ndarray:
    return np.zeros(shape, dtype)


class _FakeTensor:
    """Enough of a tf.Tensor for clconv to recognise a typed tensor (no TF needed)."""

    def __init__(self, values, dtype):
        self._values = np.asarray(values, dtype)
        self.shape = self._values.shape
        self.dtype = type("DType", (), {"as_numpy_dtype": np.dtype(dtype).type,
                                        "name": np.dtype(dtype).name})()

    def __array__(self, dtype=None, copy=None):
        return self._values if dtype is None else self._values.astype(dtype)

    def numpy(self):
        return self._values


def _Int64Tensor(values):  # noqa: N802 - reads as the tensor it stands for
    return _FakeTensor(values, np.int64)


def conv(x, w, strides=1, padding="VALID", **kw):
    return lambda: clconv.conv2d(x, w, strides, padding, **kw)


def transpose(dy, w, output_shape, strides=1, padding="SAME", **kw):
    return lambda: clconv.conv2d_transpose(dy, w, output_shape, strides, padding, **kw)


def backprop(input_sizes, w, dy, strides=1, padding="SAME", **kw):
    return lambda: clconv.conv2d_backprop_input(input_sizes, w, dy, strides, padding, **kw)


def both(name, output_shape, w, dy, exc, tf_text, value, strides=1, padding="SAME", **kw):
    """One backprop row as two cases: conv2d_transpose and conv2d_backprop_input."""
    return [
        pytest.param(transpose(dy, w, output_shape, strides, padding, **kw), exc, tf_text, value,
                     id=f"transpose-{name}"),
        pytest.param(backprop(output_shape, w, dy, strides, padding, **kw), exc, tf_text, value,
                     id=f"backprop-{name}"),
    ]


def forward(name, call, exc, tf_text, value):
    return pytest.param(call, exc, tf_text, value, id=f"conv2d-{name}")


# out_backprop [1,4,4,3] (the transpose's input), filter [3,3,out=2,in=3], result [1,4,4,2]
DY, WT, OUT = z(1, 4, 4, 3), z(3, 3, 2, 3), [1, 4, 4, 2]
# forward: input [1,5,5,2], filter [3,3,2,3]
X, W = z(1, 5, 5, 2), z(3, 3, 2, 3)
PAD1 = [[0, 0], [1, 1], [1, 1], [0, 0]]

BACKPROP_ROWS = [
    *both("spatial-mismatch-h", [1, 5, 4, 2], WT, DY, IAE,
          "Conv2DCustomBackpropInput: Size of out_backprop doesn't match computed: actual = 4, "
          "computed = 5 spatial_dim: 1 input: 5 filter: 3 output: 4 stride: 1 dilation: 1",
          "actual = 4, computed = 5"),
    *both("spatial-mismatch-w", [1, 4, 5, 2], WT, DY, IAE,
          "Size of out_backprop doesn't match computed: actual = 4, computed = 5 spatial_dim: 2",
          "input: 5"),
    *both("spatial-mismatch-valid-s2", [1, 12, 9, 2], WT, DY, IAE,
          "Size of out_backprop doesn't match computed: actual = 4, computed = 5 spatial_dim: 1 "
          "input: 12 filter: 3 output: 4 stride: 2 dilation: 1", "input: 12", strides=2,
          padding="VALID"),
    *both("batch-mismatch", [2, 4, 4, 2], WT, DY, IAE,
          "input and out_backprop must have the same batch size", "input batch: 2"),
    *both("cin-vs-filter-out-depth", OUT, z(3, 3, 2, 5), DY, IAE,
          "filter and out_backprop must have the same out_depth", "5"),
    *both("cout-not-multiple", [1, 4, 4, 3], WT, DY, IAE,
          "input depth must be evenly divisible by filter depth", "input depth 3"),
    *both("grouped", [1, 4, 4, 4], WT, DY, IAE,
          "Gradients for grouped convolutions are not supported on CPU", "input depth 4"),
    *both("filter-depth-0", OUT, z(3, 3, 0, 3), DY, IAE,
          "filter depth must be strictly greated than zero", "[3, 3, 0, 3]"),
    *both("input-rank-3", OUT, WT, z(4, 4, 3), IAE,
          "input_sizes must be 4-dimensional, got: 3", "[4, 4, 3]"),
    *both("filter-rank-3", OUT, z(3, 3, 2), DY, IAE, "filter must be 4-dimensional",
          "[3, 3, 2]"),
    *both("output-shape-length-3", [1, 4, 4], WT, DY, IAE,
          "requires input_sizes to contain 4 values or 2 values, but got: 3", "[1, 4, 4]"),
    *both("output-shape-2d", [[1, 4], [4, 2]], WT, DY, IAE,
          "input_sizes input must be 1-dim, not 2", "[[1, 4], [4, 2]]"),
    *both("output-shape-negative", [1, -8, 4, 2], WT, DY, IAE, "Dimension -8 must be >= 0",
          "[1, -8, 4, 2]"),
    *both("output-shape-negative-len2", [-8, 4], WT, DY, IAE,
          "elements of input_sizes must be >= 0", "-8"),
    *both("output-shape-int64-tensor", _Int64Tensor(OUT), WT, DY, IAE,
          "expected to be a int32 tensor but is a int64 tensor", "[1, 4, 4, 2]"),
    *both("output-shape-float", [1, 4.0, 4, 2], WT, DY, TypeError,
          "to EagerTensor of dtype int32", "[1, 4.0, 4, 2]"),
    *both("output-shape-string", "abcd", WT, DY, TypeError,
          "Cannot convert 'abcd' to EagerTensor of dtype int32", "'abcd'"),
    *both("output-shape-none", None, WT, DY, ValueError,
          "Attempt to convert a value (None) with an unsupported type", "None"),
    *both("output-shape-ragged", [1, [4], 4, 2], WT, DY, ValueError,
          "Can't convert Python sequence with mixed types to Tensor", "[1, [4], 4, 2]"),
    # TF's order: converting output_shape comes before the kernel's stride check
    *both("order-float-output-shape-before-stride0", [1, 4.0, 4, 2], WT, DY, TypeError,
          "to EagerTensor of dtype int32", "[1, 4.0, 4, 2]", strides=0),
    *both("order-int64-tensor-before-stride0", _Int64Tensor(OUT), WT, DY, IAE,
          "expected to be a int32 tensor but is a int64 tensor", "[1, 4, 4, 2]", strides=0),
    *both("stride-batch", OUT, WT, DY, UNIMPL,
          "does not yet support strides in the batch and depth dimensions", "[2, 1, 1, 1]",
          strides=[2, 1, 1, 1]),
    *both("stride-depth", OUT, WT, DY, UNIMPL,
          "does not yet support strides in the batch and depth dimensions", "[1, 1, 1, 2]",
          strides=[1, 1, 1, 2]),
    *both("stride-0", OUT, WT, DY, IAE, "Row and column strides should be larger than 0.",
          "[1, 0, 0, 1]", strides=0),
    *both("stride-negative", OUT, WT, DY, IAE, "Row and column strides should be larger than 0.",
          "[1, -1, 1, 1]", strides=[-1, 1]),
    *both("stride-length-3", OUT, WT, DY, ValueError,
          "strides should be of length 1, 2 or 4. Received: strides=[1, 1, 1] of length 3",
          "[1, 1, 1]", strides=[1, 1, 1]),
    *both("dilation-depth", OUT, WT, DY, UNIMPL,
          "does not yet support dilations in the batch and depth dimensions", "[1, 1, 1, 2]",
          dilations=[1, 1, 1, 2]),
    # deliberate: TF's CPU backprop says "dilation rates larger than 1" (clconv computes those)
    *both("dilation-0", OUT, WT, DY, IAE, "Dilated rates should be larger than 0.",
          "[1, 0, 0, 1]", dilations=0),
    *both("padding-lowercase", OUT, WT, DY, IAE,
          "Value for attr 'padding' of \"same\" is not in the list of allowed values", '"same"',
          padding="same"),
    *both("padding-FULL", OUT, WT, DY, IAE,
          "Value for attr 'padding' of \"FULL\" is not in the list of allowed values", '"FULL"',
          padding="FULL"),
    *both("padding-EXPLICIT-string", OUT, WT, DY, ValueError,
          "'EXPLICIT' is not a valid value for `padding`", "EXPLICIT", padding="EXPLICIT"),
    *both("padding-3-pairs", OUT, WT, DY, ValueError,
          "When padding is a list, it must be of size 4", "of size 3",
          padding=[[0, 0], [1, 1], [1, 1]]),
    *both("padding-negative", OUT, WT, DY, IAE,
          "All elements of explicit_paddings must be nonnegative", "[0, 0], [-1, 1]",
          padding=[[0, 0], [-1, 1], [1, 1], [0, 0]]),
    *both("padding-batch", OUT, WT, DY, IAE,
          "Nonzero explicit padding in the batch or depth dimensions is not supported",
          "[[1, 0], [1, 1]", padding=[[1, 0], [1, 1], [1, 1], [0, 0]]),
    *both("dtype-int64", OUT, WT.astype(np.int64), DY.astype(np.int64), IAE,
          "Value for attr 'T' of int64 is not in the list of allowed values: half, bfloat16, "
          "float, double, int32", "int64"),
    *both("data-format", OUT, WT, DY, IAE,
          "Value for attr 'data_format' of \"NHCW\" is not in the list of allowed values",
          "NHCW", data_format="NHCW"),
    # deliberate: TF computes int32; clconv does not
    *both("dtype-int32", OUT, WT.astype(np.int32), DY.astype(np.int32), UNIMPL,
          "int32", "int32"),
    # TF's order: the stride check comes first, then the (CPU) dilation check
    *both("order-stride0-dilation0", OUT, WT, DY, IAE,
          "Row and column strides should be larger than 0.", "[1, 0, 0, 1]", strides=0,
          dilations=0),
    *both("order-batch-stride-before-dilation0", OUT, WT, DY, UNIMPL,
          "does not yet support strides in the batch and depth dimensions", "[2, 1, 1, 1]",
          strides=[2, 1, 1, 1], dilations=0),
    *both("order-rank-before-output-shape", [1, -4, 4, 2], WT, z(4, 4, 3), IAE,
          "input_sizes must be 4-dimensional, got: 3", "[4, 4, 3]"),
    *both("order-output-shape-before-filter-rank", [1, 4, 4], z(3, 3, 2), DY, IAE,
          "requires input_sizes to contain 4 values or 2 values, but got: 3", "[1, 4, 4]"),
    *both("order-cin-before-spatial", [1, 5, 4, 2], z(3, 3, 2, 5), DY, IAE,
          "filter and out_backprop must have the same out_depth", "5"),
    *both("order-spatial-before-grouped", [1, 5, 4, 4], WT, DY, IAE,
          "Size of out_backprop doesn't match computed", "actual = 4, computed = 5"),
    *both("negative-computed-size", [1, 1, 1, 2], WT, z(1, 1, 1, 3), IAE,
          "Computed output size would be negative: -1 [input_size: 1, effective_filter_size: 3, "
          "stride: 1]", "input_size: 1", padding="VALID"),
    # Mixed dtypes fail only between typed tensors (NumPy operands are cast to T, which
    # TF takes from the filter, input #1); TF then reports out_backprop, input #2.
    *both("mixed-dtypes-tensors", OUT, _FakeTensor(WT, np.float64), _FakeTensor(DY, np.float32),
          IAE, "input #2(zero-based) was expected to be a double tensor but is a float tensor",
          "double"),
]

FORWARD_ROWS = [
    forward("input-rank-3", conv(z(5, 5, 2), W), IAE,
            "convolution input must be 4-dimensional: [5,5,2]", "[5,5,2]"),
    forward("input-rank-2", conv(z(5, 2), W), IAE,
            "convolution input must be 4-dimensional: [5,2]", "[5,2]"),
    forward("filter-rank-3", conv(X, z(3, 3, 2)), IAE,
            "convolution filter must be 4-dimensional: [3,3,2]", "[3,3,2]"),
    forward("filter-rank-5", conv(X, z(3, 3, 2, 3, 1)), IAE,
            "convolution filter must be 4-dimensional: [3,3,2,3,1]", "[3,3,2,3,1]"),
    forward("grouped-out-not-multiple", conv(z(1, 5, 5, 4), z(3, 3, 2, 3)), IAE,
            "output depth must be evenly divisible by number of groups: 3 vs 2", "3 vs 2"),
    forward("input-depth-not-multiple", conv(z(1, 5, 5, 3), z(3, 3, 2, 3)), IAE,
            "input depth must be evenly divisible by filter depth: 3 vs 2", "3 vs 2"),
    forward("filter-depth-larger", conv(X, z(3, 3, 4, 3)), IAE,
            "input depth must be evenly divisible by filter depth: 2 vs 4", "2 vs 4"),
    forward("filter-depth-0", conv(X, z(3, 3, 0, 3)), IAE,
            "filter depth must be stricly positive, got 0", "got 0"),
    forward("channels-0", conv(z(1, 5, 5, 0), z(3, 3, 0, 3)), IAE,
            "filter depth must be stricly positive, got 0", "got 0"),
    forward("strides-length-3", conv(X, W, [1, 1, 1]), ValueError,
            "strides should be of length 1, 2 or 4. Received: strides=[1, 1, 1] of length 3",
            "[1, 1, 1]"),
    forward("strides-0", conv(X, W, 0), IAE, "Row and column strides should be larger than 0.",
            "[1, 0, 0, 1]"),
    forward("strides-negative", conv(X, W, -1), IAE,
            "Row and column strides should be larger than 0.", "[1, -1, -1, 1]"),
    forward("strides-0-1", conv(X, W, [0, 1]), IAE,
            "Row and column strides should be larger than 0.", "[1, 0, 1, 1]"),
    forward("strides-batch", conv(X, W, [2, 1, 1, 1]), UNIMPL,
            "Current implementation does not yet support strides in the batch and depth "
            "dimensions.", "[2, 1, 1, 1]"),
    forward("strides-string", conv(X, W, "2"), TypeError,
            "Expected int for argument 'strides' not '2'.", "'2'"),
    forward("strides-int32-range", conv(X, W, 2**40), IAE,
            "Attr strides has value 1099511627776 out of range for an int32", "1099511627776"),
    forward("dilations-0", conv(X, W, dilations=0), IAE, "Dilated rates should be larger than 0.",
            "[1, 0, 0, 1]"),
    forward("dilations-negative", conv(X, W, dilations=-1), IAE,
            "Dilated rates should be larger than 0.", "[1, -1, -1, 1]"),
    forward("dilations-depth", conv(X, W, dilations=[1, 1, 1, 2]), UNIMPL,
            "Current implementation does not yet support dilations in the batch and depth "
            "dimensions.", "[1, 1, 1, 2]"),
    forward("dilations-length-3", conv(X, W, dilations=[1, 1, 1]), ValueError,
            "dilations should be of length 1, 2 or 4. Received: dilations=[1, 1, 1] of length 3",
            "[1, 1, 1]"),
    forward("padding-same", conv(X, W, 1, "same"), IAE,
            "Value for attr 'padding' of \"same\" is not in the list of allowed values: \"SAME\", "
            "\"VALID\", \"EXPLICIT\"", '"same"'),
    forward("padding-valid", conv(X, W, 1, "valid"), IAE,
            "Value for attr 'padding' of \"valid\" is not in the list of allowed values",
            '"valid"'),
    forward("padding-FULL", conv(X, W, 1, "FULL"), IAE,
            "Value for attr 'padding' of \"FULL\" is not in the list of allowed values", '"FULL"'),
    forward("padding-EXPLICIT-string", conv(X, W, 1, "EXPLICIT"), ValueError,
            "'EXPLICIT' is not a valid value for `padding`. To use explicit padding, `padding` "
            "must be a list.", "'EXPLICIT'"),
    forward("padding-3-pairs", conv(X, W, 1, [[0, 0], [1, 1], [1, 1]]), ValueError,
            "When padding is a list, it must be of size 4. Received: padding=[[0, 0], [1, 1], "
            "[1, 1]] of size 3", "of size 3"),
    forward("padding-flat-8", conv(X, W, 1, [0, 0, 1, 1, 1, 1, 0, 0]), ValueError,
            "When `padding` is a list, each element of `padding` must be a list/tuple of size 2. "
            "Received: padding=[0, 0, 1, 1, 1, 1, 0, 0] with element at index 0 of type "
            "<class 'int'>", "index 0"),
    forward("padding-pairs-of-3", conv(X, W, 1, [[0, 0, 0], [1, 1, 1], [1, 1, 1], [0, 0, 0]]),
            ValueError, "each element of `padding` must be a list/tuple of size 2", "of size 3"),
    forward("padding-int", conv(X, W, 1, 1), TypeError,
            "Expected string for argument 'padding' not 1.", "not 1."),
    forward("padding-none", conv(X, W, 1, None), TypeError,
            "Expected string for argument 'padding' not None.", "None"),
    forward("padding-negative", conv(X, W, 1, [[0, 0], [-1, 1], [1, 1], [0, 0]]), IAE,
            "All elements of explicit_paddings must be nonnegative", "-1"),
    forward("padding-depth", conv(X, W, 1, [[0, 0], [1, 1], [1, 1], [0, 1]]), IAE,
            "Nonzero explicit padding in the batch or depth dimensions is not supported",
            "[0, 1]"),
    forward("padding-nchw-form-with-nhwc", conv(X, W, 1, [[0, 0], [0, 0], [1, 1], [1, 1]]), IAE,
            "Nonzero explicit padding in the batch or depth dimensions is not supported",
            "[[0, 0], [0, 0], [1, 1], [1, 1]]"),
    forward("data-format-NHCW", conv(X, W, data_format="NHCW"), IAE,
            "Value for attr 'data_format' of \"NHCW\" is not in the list of allowed values: "
            "\"NHWC\", \"NCHW\"", "NHCW"),
    forward("data-format-lowercase", conv(X, W, data_format="nhwc"), IAE,
            "Value for attr 'data_format' of \"nhwc\" is not in the list of allowed values",
            "nhwc"),
    forward("dtype-int64", conv(X.astype(np.int64), W.astype(np.int64)), IAE,
            "Value for attr 'T' of int64 is not in the list of allowed values: half, bfloat16, "
            "float, double, int32", "int64"),
    forward("dtype-uint8", conv(X.astype(np.uint8), W.astype(np.uint8)), IAE,
            "Value for attr 'T' of uint8 is not in the list of allowed values", "uint8"),
    # deliberate: TF computes int32 and bfloat16; clconv does not
    forward("mixed-dtypes-tensors", conv(_FakeTensor(X, np.float32), _FakeTensor(W, np.float64)),
            IAE, "cannot compute Conv2D as input #1(zero-based) was expected to be a float "
            "tensor but is a double tensor", "double"),
    forward("dtype-int32", conv(X.astype(np.int32), W.astype(np.int32)), UNIMPL, "int32",
            "int32"),
    forward("negative-size-valid", conv(z(1, 1, 1, 3), z(5, 5, 3, 3)), IAE,
            "Computed output size would be negative: -3 [input_size: 1, effective_filter_size: 5, "
            "stride: 1]", "input_size: 1"),
    forward("negative-size-dilated", conv(z(1, 3, 3, 3), z(2, 2, 3, 3), dilations=4), IAE,
            "Computed output size would be negative: -1 [input_size: 3, effective_filter_size: 5, "
            "stride: 1]", "effective_filter_size: 5"),
    forward("negative-size-explicit",
            conv(z(1, 3, 3, 3), z(5, 5, 3, 3), 1, [[0, 0], [0, 0], [0, 0], [0, 0]]), IAE,
            "Computed output size would be negative: -1 [input_size: 3, effective_filter_size: 5, "
            "stride: 1]", "input_size: 3"),
    forward("negative-size-h0", conv(z(1, 0, 5, 3), z(3, 3, 3, 3)), IAE,
            "Computed output size would be negative: -2 [input_size: 0, effective_filter_size: 3, "
            "stride: 1]", "input_size: 0"),
    forward("negative-size-h0-batch0", conv(z(0, 0, 5, 3), z(3, 3, 3, 3)), IAE,
            "Computed output size would be negative: -2", "input_size: 0"),
    forward("filter-zero-elements", conv(z(1, 5, 5, 3), z(0, 0, 3, 3)), IAE,
            "filter must not have zero elements (i.e. all dimensions must be non-zero)",
            "[0, 0, 3, 3]"),
    # TF's order of checks
    forward("order-stride0-before-rank", conv(z(5, 5, 2), W, 0), IAE,
            "Row and column strides should be larger than 0.", "[1, 0, 0, 1]"),
    forward("order-dilation0-before-rank", conv(z(5, 5, 2), W, dilations=0), IAE,
            "Dilated rates should be larger than 0.", "[1, 0, 0, 1]"),
    forward("order-negative-pad-before-rank",
            conv(z(5, 5, 2), W, 1, [[0, 0], [-1, 0], [0, 0], [0, 0]]), IAE,
            "All elements of explicit_paddings must be nonnegative", "-1"),
    forward("order-stride0-before-filter-rank", conv(X, z(3, 3, 2), 0), IAE,
            "Row and column strides should be larger than 0.", "[1, 0, 0, 1]"),
    forward("order-rank-before-channels", conv(z(5, 5, 3), W), IAE,
            "convolution input must be 4-dimensional: [5,5,3]", "[5,5,3]"),
    forward("order-channels-before-size", conv(z(1, 1, 1, 3), z(5, 5, 2, 3)), IAE,
            "input depth must be evenly divisible by filter depth: 3 vs 2", "3 vs 2"),
    forward("order-padding-attr-before-stride0", conv(X, W, 0, "same"), IAE,
            "Value for attr 'padding' of \"same\"", '"same"'),
    forward("order-dtype-before-stride0", conv(X.astype(np.int64), W.astype(np.int64), 0), IAE,
            "Value for attr 'T' of int64", "int64"),
    forward("order-strides-length-before-padding-attr", conv(X, W, [1, 1, 1], "same"),
            ValueError, "strides should be of length 1, 2 or 4", "[1, 1, 1]"),
    forward("order-strides-type-before-padding-attr", conv(X, W, "x", "same"), TypeError,
            "Expected int for argument 'strides' not 'x'.", "'x'"),
]


@pytest.mark.parametrize("call, exc, tf_text, value", BACKPROP_ROWS + FORWARD_ROWS)
def test_error(call, exc, tf_text, value) -> None:
    with pytest.raises(exc) as info:
        call()
    assert type(info.value) is exc or exc in (ValueError, TypeError), (
        f"raised {type(info.value).__name__}, expected exactly {exc.__name__}"
    )
    if exc in (ValueError, TypeError):  # TF's plain Python errors, not clconv's subclasses
        assert not isinstance(info.value, (IAE, UNIMPL)), type(info.value)
    message = str(info.value)
    assert tf_text in message, f"TF's text {tf_text!r} missing from {message!r}"
    assert value in message, f"offending value {value!r} missing from {message!r}"


def test_error_classes_are_builtin_subclasses() -> None:
    assert issubclass(IAE, ValueError) and issubclass(UNIMPL, NotImplementedError)


def test_bfloat16_is_unimplemented() -> None:
    ml_dtypes = pytest.importorskip("ml_dtypes")
    bf16 = ml_dtypes.bfloat16
    for call in (conv(X.astype(bf16), W.astype(bf16)),
                 transpose(DY.astype(bf16), WT.astype(bf16), OUT),
                 backprop(OUT, WT.astype(bf16), DY.astype(bf16))):
        with pytest.raises(UNIMPL, match="bfloat16"):
            call()


# --------------------------------------------------------------------------- computed instead

def _fast_device() -> str:
    """The one device the 'computes instead of raising' checks run on."""
    if not DEVICES:
        pytest.skip("no OpenCL device")
    fast = [d for d in DEVICES if not is_simulator(d)]
    return (fast or DEVICES)[0].spec


def _check_conv2d(x_shape, w_shape, strides, padding, data_format="NHWC", dilations=None,
                  seed=0) -> None:
    x, w = random_array(x_shape, seed=seed), random_array(w_shape, seed=seed + 1)
    g = conv2d_case(x_shape, w_shape, strides, padding, data_format, dilations)
    got = clconv.conv2d(x, w, strides, padding, data_format, dilations, device=_fast_device())
    assert_close(got, conv2d_reference(x, w, g), np.float32, reduction_length(g))


def _check_backprop(out_shape, w_shape, dy_shape, strides, padding, data_format="NHWC",
                    dilations=None, seed=0) -> None:
    dy, w = random_array(dy_shape, seed=seed), random_array(w_shape, seed=seed + 1)
    g = backprop_case(out_shape, w_shape, dy_shape, strides, padding, data_format, dilations)
    want = backprop_input_reference(dy, w, g)
    spec = _fast_device()
    got = clconv.conv2d_backprop_input(out_shape, w, dy, strides, padding, data_format,
                                       dilations, device=spec)
    assert_close(got, want, np.float32, reduction_length(g, transpose=True))
    # conv2d_transpose(dy, w, out_shape) is Conv2DBackpropInput(out_shape, w, dy)
    got = clconv.conv2d_transpose(dy, w, out_shape, strides, padding, data_format, dilations,
                                  device=spec)
    assert_close(got, want, np.float32, reduction_length(g, transpose=True))


COMPUTES = [
    pytest.param(lambda: _check_conv2d((1, 3, 6, 5), (3, 3, 3, 4), 1, "SAME", "NCHW"),
                 id="conv2d-NCHW"),
    pytest.param(lambda: _check_conv2d((1, 2, 7, 6), (3, 2, 2, 3), [2, 1], "VALID", "NCHW",
                                       dilations=[1, 2]), id="conv2d-NCHW-dilated-strided"),
    pytest.param(lambda: _check_conv2d((1, 9, 9, 2), (3, 3, 2, 3), 2, "SAME", dilations=2),
                 id="conv2d-dilation2-stride2"),
    pytest.param(lambda: _check_conv2d((2, 6, 5, 4), (3, 3, 2, 6), 1, "SAME"),
                 id="conv2d-grouped-2"),
    pytest.param(lambda: _check_conv2d((1, 5, 6, 6), (2, 3, 2, 3), [1, 2], PAD1, dilations=[2, 1]),
                 id="conv2d-grouped-3-explicit-dilated"),
    # TF checks out % groups only when the output is not empty
    pytest.param(lambda: _check_conv2d((0, 5, 5, 4), (3, 3, 2, 3), 1, "VALID"),
                 id="conv2d-grouped-uneven-empty-batch"),
    pytest.param(lambda: _check_conv2d((1, 2, 2, 4), (3, 3, 2, 3), 1, "VALID"),
                 id="conv2d-grouped-uneven-empty-output"),
    # ... nor for an empty input (the output is zeros, padding only), nor the filter's size
    pytest.param(lambda: _check_conv2d((1, 0, 4, 4), (3, 3, 2, 3), 1,
                                       [[0, 0], [2, 2], [1, 1], [0, 0]]),
                 id="conv2d-grouped-uneven-empty-input"),
    pytest.param(lambda: _check_conv2d((2, 6, 0, 1), (0, 0, 1, 2), [2, 1], "VALID",
                                       dilations=[1, 3]), id="conv2d-0x0-filter-empty-input"),
    pytest.param(lambda: _check_backprop([1, 2, 7, 7], (3, 3, 2, 3), (1, 3, 4, 4), 2, "SAME",
                                         "NCHW"), id="backprop-NCHW"),
    pytest.param(lambda: _check_backprop([1, 8, 8, 2], (3, 3, 2, 3), (1, 4, 4, 3), 2, "SAME",
                                         dilations=2), id="backprop-dilation2-stride2"),
    pytest.param(lambda: _check_backprop([1, 9, 8, 2], (3, 2, 2, 3), (1, 5, 5, 3), 1, "VALID",
                                         dilations=[2, 3]), id="backprop-dilation-2x3"),
    # TF's conversions: float strides truncate, NumPy output shapes are cast, Python ints wrap
    pytest.param(lambda: _check_conv2d((1, 9, 9, 2), (3, 3, 2, 2), 2.7, "VALID"),
                 id="conv2d-float-strides"),
    pytest.param(lambda: _check_backprop(np.array([1, 4.7, 4, 2]), (3, 3, 2, 3), (1, 4, 4, 3), 1,
                                         "SAME"), id="backprop-float-ndarray-output-shape"),
    pytest.param(lambda: _check_backprop([1, 2**32 + 4, 4, 2], (3, 3, 2, 3), (1, 4, 4, 3), 1,
                                         "SAME"), id="backprop-output-shape-wraps-to-int32"),
    pytest.param(lambda: _check_backprop(np.array([1, 4, 4, 2], np.int64), (3, 3, 2, 3),
                                         (1, 4, 4, 3), 1, "SAME"),
                 id="backprop-int64-ndarray-output-shape"),
]


@pytest.mark.parametrize("check", COMPUTES)
def test_computes(check) -> None:
    check()


def test_rank5_input_folds_batch() -> None:
    x, w = random_array((2, 3, 5, 5, 2)), random_array((3, 3, 2, 4), seed=1)
    got = clconv.conv2d(x, w, 1, "VALID", device=_fast_device())
    flat = clconv.conv2d(x.reshape(6, 5, 5, 2), w, 1, "VALID", device=_fast_device())
    assert got.shape == (2, 3, 3, 3, 4)
    np.testing.assert_array_equal(got.reshape(flat.shape), flat)

