"""Argument normalisation and TensorFlow's shape rules for 2-D convolutions.

Everything here is pure Python on shapes: it turns the many argument forms TF
accepts (int or length-1/2/4 strides, "SAME"/"VALID"/explicit padding, output
shapes of length 2 or 4) into one ConvGeometry that describes the *forward*
convolution, and raises TF's error classes with TF's message text (plus the
offending value) for whatever TF rejects.  The three ops share it: conv2d
computes that forward conv; conv2d_backprop_input and conv2d_transpose compute
its input gradient.
"""

from __future__ import annotations

import collections.abc
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from clconv.errors import InvalidArgumentError, UnimplementedError

DATA_FORMATS = ("NHWC", "NCHW")


@dataclass(frozen=True)
class DepthAxis:
    """The depth of a 3-D conv whose depth taps a kernel reads itself (ConvGeometry.depth):
    output depth o reads input depth o * stride - pad_front + tap * dilation."""

    in_d: int
    out_d: int
    k_d: int
    stride_d: int
    dil_d: int
    pad_front: int
    pad_back: int


@dataclass(frozen=True)
class ConvGeometry:
    """The forward conv  x[N,H,W,Cin] (*) w[kh,kw,Cin,Cout] -> y[N,Ho,Wo,Cout].

    With ``depth`` (NHWC only) it is the 3-D conv x[N,D,H,W,Cin] (*)
    w[kd,kh,kw,Cin,Cout] -> y[N,Do,Ho,Wo,Cout]: the other fields keep their 2-D
    meaning (batch N, one depth plane's height and width, the channels), and the
    shapes, sizes and multiply-adds below are the 3-D ones.  Only algorithms that
    declare depth taps (registry.Algorithm.depth_taps) compute such a geometry.
    """

    data_format: str
    batch: int
    in_h: int
    in_w: int
    in_c: int
    k_h: int
    k_w: int
    out_h: int
    out_w: int
    out_c: int
    stride_h: int
    stride_w: int
    dil_h: int
    dil_w: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    groups: int = 1
    depth: Optional[DepthAxis] = None
    # An input gradient that multiplies every tap, a dy pixel that padding or the stride
    # leave out counting as 0 (TF's depthwise gradient: an infinite weight on such a tap
    # gives NaN), where Conv2DBackpropInput and the other front ends' transposed convs
    # multiply real dy pixels only.
    padded_products: bool = False

    @property
    def k_eff_h(self) -> int:
        return (self.k_h - 1) * self.dil_h + 1

    @property
    def k_eff_w(self) -> int:
        return (self.k_w - 1) * self.dil_w + 1

    @property
    def in_planes(self) -> int:
        """Input depth planes per image (1 for a 2-D conv)."""
        return self.depth.in_d if self.depth else 1

    @property
    def out_planes(self) -> int:
        """Output depth planes per image (1 for a 2-D conv)."""
        return self.depth.out_d if self.depth else 1

    @property
    def depth_taps(self) -> int:
        return self.depth.k_d if self.depth else 1

    def x_shape(self) -> tuple[int, ...]:
        if self.depth:
            return (self.batch, self.depth.in_d, self.in_h, self.in_w, self.in_c)
        return to_format((self.batch, self.in_h, self.in_w, self.in_c), self.data_format)

    def y_shape(self) -> tuple[int, ...]:
        if self.depth:
            return (self.batch, self.depth.out_d, self.out_h, self.out_w, self.out_c)
        return to_format((self.batch, self.out_h, self.out_w, self.out_c), self.data_format)

    def w_shape(self) -> tuple[int, ...]:
        """The filter's shape, TF's layout ([kd,] kh, kw, C_in / groups, C_out)."""
        plane = (self.k_h, self.k_w, self.in_c // max(self.groups, 1), self.out_c)
        return (self.depth.k_d, *plane) if self.depth else plane

    def x_size(self) -> int:
        return self.batch * self.in_planes * self.in_h * self.in_w * self.in_c

    def y_size(self) -> int:
        return self.batch * self.out_planes * self.out_h * self.out_w * self.out_c

    def macs(self) -> int:
        """Multiply-adds of the forward conv (padding taps included)."""
        return (self.batch * self.out_planes * self.out_h * self.out_w * self.depth_taps
                * self.k_h * self.k_w * (self.in_c // self.groups) * self.out_c)


def to_format(nhwc: Sequence[int], data_format: str) -> tuple[int, int, int, int]:
    n, h, w, c = nhwc
    return (n, h, w, c) if data_format == "NHWC" else (n, c, h, w)


def from_format(shape: Sequence[int], data_format: str) -> tuple[int, int, int, int]:
    """(N, H, W, C) of a 4-d shape given in ``data_format`` order."""
    if data_format == "NHWC":
        n, h, w, c = shape
    else:
        n, c, h, w = shape
    return int(n), int(h), int(w), int(c)


def check_data_format(data_format: Any) -> str:
    if data_format is None:
        return "NHWC"
    if data_format not in DATA_FORMATS:
        raise InvalidArgumentError(
            f"Value for attr 'data_format' of \"{data_format}\" is not in the list of allowed "
            'values: "NHWC", "NCHW"'
        )
    return data_format


def _as_int(value: Any, name: str) -> int:
    """TF's _MakeInt for an integer attribute element: ``int(value)`` for anything but a
    string, so 2.5 truncates to 2 and True is 1, as in TF."""
    if not isinstance(value, (str, bytes)):
        try:
            return int(value)
        except (TypeError, ValueError, OverflowError):
            pass
    raise TypeError(f"Expected int for argument {name!r} not {value!r}.")


def window_sequence(value: Any, spatial: int, channels_first: bool, name: str) -> list[Any]:
    """TF's nn_ops._get_sequence: None, an int, or ``spatial``, 1 or ``spatial + 2``
    values -> the full attribute, batch and channel entries 1.

    The elements are not converted yet: TF checks the length in Python and converts
    the elements to ints later, with the other attributes (see parse_attrs).
    """
    if value is None:
        return [1] * (spatial + 2)
    if isinstance(value, list):
        seq = value
    elif isinstance(value, tuple):
        seq = list(value)
    elif isinstance(value, int) or not isinstance(value, collections.abc.Sized):
        seq = [value]
    else:
        seq = list(value)  # a scalar tensor raises TypeError here, as in TF
    if len(seq) == spatial + 2:
        return seq
    if len(seq) == 1:
        seq = seq * spatial
    elif len(seq) != spatial:
        raise ValueError(f"{name} should be of length 1, {spatial} or {spatial + 2}. "
                         f"Received: {name}={seq} of length {len(seq)}")
    return [1, 1, *seq] if channels_first else [1, *seq, 1]


def expand_window_attr(value: Any, name: str, data_format: str) -> list[Any]:
    """The four-element strides/dilations of a 2-D op (window_sequence)."""
    return window_sequence(value, 2, data_format != "NHWC", name)


@dataclass(frozen=True)
class Padding:
    kind: str  # "SAME", "VALID" or "EXPLICIT"
    pairs: tuple[tuple[int, int], ...] = ()  # four (before, after) pairs in data_format order


@dataclass(frozen=True)
class ConvAttrs:
    """The op attributes after TF's Python-side and attribute checks."""

    data_format: str
    strides: list[int]
    dilations: list[int]
    padding: Padding


def parse_padding(padding: Any) -> tuple[Any, list[Any]]:
    """TF's convert_padding: (the padding attribute, the unconverted explicit pairs).

    Only the Python-side structure is checked here (ValueError): each element a
    pair first, then four of them, as TF does.  The string's value and the pads'
    types are attribute checks, made later by parse_attrs.
    """
    if isinstance(padding, str) and padding == "EXPLICIT":
        raise ValueError(
            "'EXPLICIT' is not a valid value for `padding`. To use explicit padding, "
            "`padding` must be a list."
        )
    if isinstance(padding, np.ndarray):  # clconv also takes an array of pairs
        padding = padding.tolist()
    if not isinstance(padding, (list, tuple)):
        return padding, []
    pairs = []
    for index, pair in enumerate(padding):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            what = f"size {len(pair)}" if isinstance(pair, (list, tuple)) else f"type {type(pair)}"
            raise ValueError(
                "When `padding` is a list, each element of `padding` must be a list/tuple "
                f"of size 2. Received: padding={padding} with element at index {index} of {what}"
            )
        pairs.append(pair)
    if len(padding) != 4:
        raise ValueError(
            f"When padding is a list, it must be of size 4. Received: padding={padding} "
            f"of size {len(padding)}"
        )
    return "EXPLICIT", pairs


def parse_attrs(strides: Any, padding: Any, data_format: Any, dilations: Any) -> ConvAttrs:
    """TF's checks in TF's order: Python-side lengths and padding structure (ValueError),
    conversion of the attributes to ints and strings (TypeError), then the op-def's
    allowed values (IAE).  The dtype attribute is checked by the op, after this."""
    format_name = data_format if data_format in DATA_FORMATS else "NHWC"
    strides_seq = expand_window_attr(strides, "strides", format_name)
    dilations_seq = expand_window_attr(dilations, "dilations", format_name)
    padding_value, raw_pairs = parse_padding(padding)
    strides4 = [_as_int(v, "strides") for v in strides_seq]
    if not isinstance(padding_value, str):
        raise TypeError(f"Expected string for argument 'padding' not {padding_value!r}.")
    pairs = tuple((_as_int(before, "explicit_paddings"), _as_int(after, "explicit_paddings"))
                  for before, after in raw_pairs)
    dilations4 = [_as_int(v, "dilations") for v in dilations_seq]
    if padding_value not in ("SAME", "VALID", "EXPLICIT"):
        raise InvalidArgumentError(
            f"Value for attr 'padding' of \"{padding_value}\" is not in the list of allowed "
            'values: "SAME", "VALID", "EXPLICIT" (padding is case-sensitive)'
        )
    return ConvAttrs(check_data_format(data_format), strides4, dilations4,
                     Padding(padding_value, pairs))


def _check_int32_attr(values: list[int], name: str) -> None:
    """TF's kernels read strides and dilations as int32."""
    for value in values:
        if not -2**31 <= value < 2**31:
            raise InvalidArgumentError(
                f"Attr {name} has value {value} out of range for an int32 ({name}={values})"
            )


def kernel_attr_checks(attrs: ConvAttrs) -> tuple[int, int, int, int]:
    """TF's kernel-side checks on strides, dilations and explicit padding, in TF's order.

    Returns (stride_h, stride_w, dil_h, dil_w).
    """
    fmt = attrs.data_format
    _check_int32_attr(attrs.strides, "strides")
    _check_int32_attr(attrs.dilations, "dilations")
    n, stride_h, stride_w, c = from_format(attrs.strides, fmt)
    if n != 1 or c != 1:
        raise UnimplementedError(
            "Current implementation does not yet support strides in the batch and depth "
            f"dimensions. Received strides={attrs.strides} ({fmt}); expected 1 for N and C"
        )
    if stride_h <= 0 or stride_w <= 0:
        raise InvalidArgumentError(
            f"Row and column strides should be larger than 0. Received strides={attrs.strides}"
        )
    n, dil_h, dil_w, c = from_format(attrs.dilations, fmt)
    if n != 1 or c != 1:
        raise UnimplementedError(
            "Current implementation does not yet support dilations in the batch and depth "
            f"dimensions. Received dilations={attrs.dilations} ({fmt}); expected 1 for N and C"
        )
    if dil_h <= 0 or dil_w <= 0:
        raise InvalidArgumentError(
            f"Dilated rates should be larger than 0. Received dilations={attrs.dilations}"
        )
    if attrs.padding.kind == "EXPLICIT":
        pairs = attrs.padding.pairs
        if any(v < 0 for pair in pairs for v in pair):
            raise InvalidArgumentError(
                "All elements of explicit_paddings must be nonnegative. "
                f"Received padding={[list(p) for p in pairs]}"
            )
        pn, _, _, pc = from_format(range(4), fmt)
        if pairs[pn] != (0, 0) or pairs[pc] != (0, 0):
            raise InvalidArgumentError(
                "Nonzero explicit padding in the batch or depth dimensions is not supported. "
                f"Received padding={[list(p) for p in pairs]} ({fmt})"
            )
    return stride_h, stride_w, dil_h, dil_w


def _explicit_pads(padding: Padding, data_format: str, axis: str) -> tuple[int, int]:
    _, ph, pw, _ = from_format(range(4), data_format)
    return padding.pairs[ph if axis == "h" else pw]


def _trunc_div(a: int, b: int) -> int:
    """C++ integer division (towards zero), which TF's shape code uses."""
    q = abs(a) // b
    return q if a >= 0 else -q


def windowed_output_size(size: int, k: int, dil: int, stride: int, padding: Padding,
                         axis: str, data_format: str = "NHWC") -> tuple[int, int, int]:
    """TF's GetWindowedOutputSizeVerbose: (output size, pad before, pad after)."""
    k_eff = (k - 1) * dil + 1
    if padding.kind == "VALID":
        out, before, after = _trunc_div(size - k_eff + stride, stride), 0, 0
    elif padding.kind == "SAME":
        out = _trunc_div(size + stride - 1, stride)
        needed = max(0, (out - 1) * stride + k_eff - size)
        before, after = needed // 2, needed - needed // 2
    else:
        before, after = _explicit_pads(padding, data_format, axis)
        out = _trunc_div(size + before + after - k_eff + stride, stride)
    if out < 0:
        raise InvalidArgumentError(
            f"Computed output size would be negative: {out} [input_size: {size}, "
            f"effective_filter_size: {k_eff}, stride: {stride}]"
        )
    return out, before, after


def _tf_shape(shape: Sequence[int]) -> str:
    """A shape as TF's messages print it: [5,5,2]."""
    return "[" + ",".join(str(int(v)) for v in shape) + "]"


def check_rank4(shape: Sequence[int], message: str) -> None:
    if len(shape) != 4:
        raise InvalidArgumentError(message)


def conv2d_geometry(x_shape: Sequence[int], w_shape: Sequence[int],
                    attrs: ConvAttrs) -> ConvGeometry:
    """tf.nn.conv2d's kernel checks, in TF's order; the geometry of the conv."""
    stride_h, stride_w, dil_h, dil_w = kernel_attr_checks(attrs)
    fmt = attrs.data_format
    check_rank4(x_shape, f"convolution input must be 4-dimensional: {_tf_shape(x_shape)}")
    check_rank4(w_shape, f"convolution filter must be 4-dimensional: {_tf_shape(w_shape)}")
    batch, in_h, in_w, in_c = from_format(x_shape, fmt)
    k_h, k_w, f_in, out_c = (int(v) for v in w_shape)
    if f_in <= 0:
        raise InvalidArgumentError(
            f"filter depth must be stricly positive, got {f_in} (filter shape {list(w_shape)})"
        )
    if in_c % f_in != 0:
        raise InvalidArgumentError(
            f"input depth must be evenly divisible by filter depth: {in_c} vs {f_in}"
        )
    groups = max(1, in_c // f_in)  # in_c == 0: nothing to group (and the output is zeros)
    out_h, top, bottom = windowed_output_size(in_h, k_h, dil_h, stride_h, attrs.padding, "h", fmt)
    out_w, left, right = windowed_output_size(in_w, k_w, dil_w, stride_w, attrs.padding, "w", fmt)
    geometry = ConvGeometry(fmt, batch, in_h, in_w, in_c, k_h, k_w, out_h, out_w, out_c,
                            stride_h, stride_w, dil_h, dil_w, top, bottom, left, right, groups)
    # TF returns early for an empty output, then (zeros) for an empty input; only then
    # does it check the filter's size and, in its CPU launcher, the groups.
    if geometry.y_size() == 0 or geometry.x_size() == 0:
        return geometry
    if k_h == 0 or k_w == 0:
        raise InvalidArgumentError(
            "filter must not have zero elements (i.e. all dimensions must be non-zero); "
            f"filter shape {list(w_shape)}"
        )
    if out_c % groups != 0:
        raise InvalidArgumentError(
            f"output depth must be evenly divisible by number of groups: {out_c} vs {groups}"
        )
    return geometry


def is_tf_tensor(value: Any) -> bool:
    """A TensorFlow tensor (recognised without importing TF)."""
    return not isinstance(value, np.ndarray) and hasattr(getattr(value, "dtype", None),
                                                          "as_numpy_dtype")


def convert_input_sizes(input_sizes: Any) -> np.ndarray:
    """TF's conversion of input_sizes / output_shape to an int32 tensor.

    A NumPy array is cast as C casts (4.7 -> 4, 2**32 + 4 -> 4); Python numbers
    must be integers (wrapping to int32 like TF); a TF tensor must already be int32.
    """
    if is_tf_tensor(input_sizes):
        dtype = np.dtype(input_sizes.dtype.as_numpy_dtype)
        if dtype != np.int32:
            raise InvalidArgumentError(
                "cannot compute Conv2DBackpropInput as input #0(zero-based) was expected to be "
                f"a int32 tensor but is a {dtype_name(dtype)} tensor (output_shape="
                f"{np.asarray(input_sizes).tolist()})"
            )
        return np.asarray(input_sizes)
    if isinstance(input_sizes, np.ndarray):
        try:
            return input_sizes.astype(np.int32)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"Cannot convert {input_sizes!r} to EagerTensor of dtype int32"
            ) from exc
    if input_sizes is None:
        raise ValueError(
            "Attempt to convert a value (None) with an unsupported type (<class 'NoneType'>) "
            "to a Tensor (output_shape=None; expected a vector of int32)"
        )
    try:
        array = np.asarray(input_sizes)
    except ValueError as exc:  # ragged nesting
        raise ValueError(
            f"Can't convert Python sequence with mixed types to Tensor: {input_sizes!r}"
        ) from exc
    if array.size == 0 and array.dtype.kind in "fiub":
        return array.astype(np.int32)
    if array.dtype.kind not in "iub":
        raise TypeError(
            f"Cannot convert {input_sizes!r} to EagerTensor of dtype int32 (output_shape must "
            "hold integers)"
        )
    return ((array.astype(np.int64) + 2**31) % 2**32 - 2**31).astype(np.int32)


def dtype_name(dtype: np.dtype) -> str:
    """TF's name of a dtype, as its messages spell it (float, double, half)."""
    return {"float16": "half", "float32": "float", "float64": "double"}.get(dtype.name,
                                                                            dtype.name)


def parse_input_sizes(array: np.ndarray, dy_shape: Sequence[int], w_shape: Sequence[int],
                      data_format: str) -> tuple[int, int, int, int]:
    """TF's reading of the converted input_sizes: length 4, or [H, W] (N, C implied)."""
    if array.ndim != 1:
        raise InvalidArgumentError(
            f"Conv2DBackpropInput: input_sizes input must be 1-dim, not {array.ndim} "
            f"(output_shape={array.tolist()})"
        )
    values = [int(v) for v in array.tolist()]
    if len(values) == 4:
        for v in values:
            if v < 0:
                raise InvalidArgumentError(
                    f"Dimension {v} must be >= 0 (output_shape={values})"
                )
        return from_format(values, data_format)
    if len(values) == 2:
        if any(v < 0 for v in values):
            raise InvalidArgumentError(
                f"Conv2DBackpropInput: elements of input_sizes must be >= 0, not {values}"
            )
        batch = int(dy_shape[0]) if len(dy_shape) == 4 else 0
        channels = int(w_shape[2]) if len(w_shape) >= 3 else 0
        return batch, values[0], values[1], channels
    raise InvalidArgumentError(
        "Conv2DBackpropInput requires input_sizes to contain 4 values or 2 values, but got: "
        f"{len(values)} (output_shape={values})"
    )


def backprop_input_geometry(input_sizes: Any, w_shape: Sequence[int], dy_shape: Sequence[int],
                            attrs: ConvAttrs) -> ConvGeometry:
    """Validate Conv2DBackpropInput's arguments (conv2d_transpose passes output_shape as
    input_sizes and its input as dy); return the forward conv's geometry.

    TF's order: input_sizes' conversion to int32, the kernel's attribute checks, the
    rank of out_backprop, input_sizes' shape and values, the rank of the filter, then
    batch, depths and spatial sizes.
    """
    sizes = convert_input_sizes(input_sizes)
    stride_h, stride_w, dil_h, dil_w = kernel_attr_checks(attrs)
    data_format, pad = attrs.data_format, attrs.padding
    check_rank4(dy_shape, f"Conv2DBackpropInput: input_sizes must be 4-dimensional, got: "
                          f"{len(dy_shape)} (out_backprop, the input of conv2d_transpose, has "
                          f"shape {list(dy_shape)}; expected rank 4)")
    batch, in_h, in_w, in_c = parse_input_sizes(sizes, dy_shape, w_shape, data_format)
    check_rank4(w_shape, f"Conv2DBackpropInput: filter must be 4-dimensional, got filter shape "
                         f"{list(w_shape)}")
    k_h, k_w, f_in, f_out = (int(v) for v in w_shape)
    dy_batch, dy_h, dy_w, dy_c = from_format(dy_shape, data_format)
    if batch != dy_batch:
        raise InvalidArgumentError(
            "Conv2DBackpropInput: input and out_backprop must have the same batch size, "
            f"input batch: {batch} outbackprop batch: {dy_batch}"
        )
    if f_in == 0:
        raise InvalidArgumentError(
            "Conv2DBackpropInput: filter depth must be strictly greated than zero "
            f"(filter shape {list(w_shape)})"
        )
    if in_c % f_in != 0:
        raise InvalidArgumentError(
            "Conv2DBackpropInput: input depth must be evenly divisible by filter depth: "
            f"input depth {in_c}, filter depth {f_in}"
        )
    if dy_c != f_out:
        raise InvalidArgumentError(
            "Conv2DBackpropInput: filter and out_backprop must have the same out_depth: "
            f"filter out_depth {f_out}, out_backprop depth {dy_c}"
        )
    hw_axes = (1, 2) if data_format == "NHWC" else (2, 3)
    dims = []
    for axis, size, k, dil, stride, actual in (
        ("h", in_h, k_h, dil_h, stride_h, dy_h), ("w", in_w, k_w, dil_w, stride_w, dy_w)
    ):
        computed, before, after = windowed_output_size(size, k, dil, stride, pad, axis,
                                                       data_format)
        if computed != actual:
            raise InvalidArgumentError(
                "Conv2DCustomBackpropInput: Size of out_backprop doesn't match computed: "
                f"actual = {actual}, computed = {computed} spatial_dim: "
                f"{hw_axes[0 if axis == 'h' else 1]} input: {size} filter: {k} output: {actual} "
                f"stride: {stride} dilation: {dil}"
            )
        dims.append((before, after))
    if in_c != f_in:
        raise InvalidArgumentError(
            "Conv2DBackpropInput: Gradients for grouped convolutions are not supported on CPU "
            f"(input depth {in_c}, filter depth {f_in}); expected equal depths"
        )
    (top, bottom), (left, right) = dims
    return ConvGeometry(data_format, batch, in_h, in_w, in_c, k_h, k_w, dy_h, dy_w, f_out,
                        stride_h, stride_w, dil_h, dil_w, top, bottom, left, right)
