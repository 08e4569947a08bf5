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

import numbers
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from clconv.errors import InvalidArgumentError, UnimplementedError

DATA_FORMATS = ("NHWC", "NCHW")


@dataclass(frozen=True)
class ConvGeometry:
    """The forward conv  x[N,H,W,Cin] (*) w[kh,kw,Cin,Cout] -> y[N,Ho,Wo,Cout]."""

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

    @property
    def k_eff_h(self) -> int:
        return (self.k_h - 1) * self.dil_h + 1

    @property
    def k_eff_w(self) -> int:
        return (self.k_w - 1) * self.dil_w + 1

    def x_shape(self) -> tuple[int, int, int, int]:
        return to_format((self.batch, self.in_h, self.in_w, self.in_c), self.data_format)

    def y_shape(self) -> tuple[int, int, int, int]:
        return to_format((self.batch, self.out_h, self.out_w, self.out_c), self.data_format)

    def x_size(self) -> int:
        return self.batch * self.in_h * self.in_w * self.in_c

    def y_size(self) -> int:
        return self.batch * self.out_h * self.out_w * self.out_c

    def macs(self) -> int:
        """Multiply-adds of the forward conv (padding taps included)."""
        return (self.batch * self.out_h * self.out_w * self.k_h * self.k_w
                * (self.in_c // self.groups) * self.out_c)


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
    """An integer attribute element; whole floats pass (TF accepts 2.0), 2.5 does not."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Expected int for argument {name!r} not {value!r}.")
    if isinstance(value, (numbers.Integral, np.integer)):
        return int(value)
    if isinstance(value, (numbers.Real, np.floating)) and float(value).is_integer():
        return int(value)
    raise TypeError(f"Expected int for argument {name!r} not {value!r}.")


def expand_window_attr(value: Any, name: str, data_format: str) -> list[int]:
    """TF's _get_sequence: None, an int, or length 1/2/4 -> the four-element attribute."""
    if value is None:
        return [1, 1, 1, 1]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        seq = [_as_int(v, name) for v in value]
    else:
        seq = [_as_int(value, name)]
    if len(seq) == 1:
        seq = seq * 2
    if len(seq) == 2:
        return [1, seq[0], seq[1], 1] if data_format == "NHWC" else [1, 1, seq[0], seq[1]]
    if len(seq) == 4:
        return seq
    raise ValueError(
        f"{name} should be of length 1, 2 or 4. Received: {name}={value} of length {len(seq)}"
    )


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


def parse_padding(padding: Any) -> Padding:
    """"SAME", "VALID", or four [before, after] pairs (checked later, as TF's kernel does)."""
    if isinstance(padding, str):
        if padding in ("SAME", "VALID"):
            return Padding(padding)
        if padding == "EXPLICIT":
            raise ValueError(
                "'EXPLICIT' is not a valid value for `padding`. To use explicit padding, "
                "`padding` must be a list."
            )
        raise InvalidArgumentError(
            f"Value for attr 'padding' of \"{padding}\" is not in the list of allowed values: "
            '"SAME", "VALID", "EXPLICIT" (padding is case-sensitive)'
        )
    if isinstance(padding, np.ndarray):
        padding = padding.tolist()
    if isinstance(padding, (list, tuple)):
        if len(padding) != 4:
            raise ValueError(
                f"When padding is a list, it must be of size 4. Received: padding={padding} "
                f"of size {len(padding)}"
            )
        pairs = []
        for index, pair in enumerate(padding):
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                what = f"size {len(pair)}" if isinstance(pair, (list, tuple)) else f"type {type(pair)}"
                raise ValueError(
                    "When `padding` is a list, each element of `padding` must be a list/tuple "
                    f"of size 2. Received: padding={padding} with element at index {index} of {what}"
                )
            pairs.append((_as_int(pair[0], "padding"), _as_int(pair[1], "padding")))
        return Padding("EXPLICIT", tuple(pairs))
    raise TypeError(f"Expected string for argument 'padding' not {padding!r}.")


def parse_attrs(strides: Any, padding: Any, data_format: Any, dilations: Any) -> ConvAttrs:
    """TF's Python-side checks (ValueError/TypeError), then its attribute checks (IAE)."""
    format_name = data_format if data_format in DATA_FORMATS else "NHWC"
    strides4 = expand_window_attr(strides, "strides", format_name)
    dilations4 = expand_window_attr(dilations, "dilations", format_name)
    parsed_padding = parse_padding(padding)
    return ConvAttrs(check_data_format(data_format), strides4, dilations4, parsed_padding)


def kernel_attr_checks(attrs: ConvAttrs) -> tuple[int, int, int, int]:
    """TF's kernel-side checks on strides, dilations and explicit padding, in TF's order.

    Returns (stride_h, stride_w, dil_h, dil_w).
    """
    fmt = attrs.data_format
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


def check_rank4(shape: Sequence[int], message: str) -> None:
    if len(shape) != 4:
        raise InvalidArgumentError(message)


def conv2d_geometry(x_shape: Sequence[int], w_shape: Sequence[int],
                    attrs: ConvAttrs) -> ConvGeometry:
    """tf.nn.conv2d's kernel checks, in TF's order; the geometry of the conv."""
    stride_h, stride_w, dil_h, dil_w = kernel_attr_checks(attrs)
    fmt = attrs.data_format
    check_rank4(x_shape, f"convolution input must be 4-dimensional: {list(x_shape)}")
    check_rank4(w_shape, f"convolution filter must be 4-dimensional: {list(w_shape)}")
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
    groups = in_c // f_in
    if out_c % groups != 0:
        raise InvalidArgumentError(
            f"output depth must be evenly divisible by number of groups: {out_c} vs {groups}"
        )
    out_h, top, bottom = windowed_output_size(in_h, k_h, dil_h, stride_h, attrs.padding, "h", fmt)
    out_w, left, right = windowed_output_size(in_w, k_w, dil_w, stride_w, attrs.padding, "w", fmt)
    geometry = ConvGeometry(fmt, batch, in_h, in_w, in_c, k_h, k_w, out_h, out_w, out_c,
                            stride_h, stride_w, dil_h, dil_w, top, bottom, left, right, groups)
    if geometry.y_size() > 0 and (k_h == 0 or k_w == 0):
        raise InvalidArgumentError(
            "filter must not have zero elements (i.e. all dimensions must be non-zero); "
            f"filter shape {list(w_shape)}"
        )
    return geometry


def parse_input_sizes(input_sizes: Any, dy_shape: Sequence[int], w_shape: Sequence[int],
                      data_format: str) -> tuple[int, int, int, int]:
    """TF's reading of input_sizes / output_shape: length 4, or [H, W] (N, C implied)."""
    if isinstance(input_sizes, np.ndarray):
        array = input_sizes
    else:
        try:
            array = np.asarray(input_sizes)
        except Exception as exc:  # noqa: BLE001
            raise TypeError(f"output_shape must be a vector of int32, got {input_sizes!r}") from exc
    if array.dtype.kind not in "iu":
        if array.dtype.kind == "f" or array.dtype == object:
            raise TypeError(
                f"output_shape must hold integers (int32), got {input_sizes!r} of dtype {array.dtype}"
            )
        raise InvalidArgumentError(
            f"output_shape must be an int32 vector, got {input_sizes!r} of dtype {array.dtype}"
        )
    if array.ndim != 1:
        raise InvalidArgumentError(
            f"input_sizes input must be 1-dim, not {array.ndim} (output_shape={input_sizes!r})"
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
        channels = int(w_shape[2]) if len(w_shape) == 4 else 0
        return batch, values[0], values[1], channels
    raise InvalidArgumentError(
        "Conv2DBackpropInput: requires input_sizes to contain 4 values or 2 values, but got: "
        f"{len(values)} (output_shape={values})"
    )


def backprop_input_geometry(input_sizes: Any, w_shape: Sequence[int], dy_shape: Sequence[int],
                            attrs: ConvAttrs) -> ConvGeometry:
    """Validate Conv2DBackpropInput's arguments (conv2d_transpose passes output_shape as
    input_sizes and its input as dy); return the forward conv's geometry."""
    stride_h, stride_w, dil_h, dil_w = kernel_attr_checks(attrs)
    data_format, pad = attrs.data_format, attrs.padding
    batch, in_h, in_w, in_c = parse_input_sizes(input_sizes, dy_shape, w_shape, data_format)
    check_rank4(dy_shape, f"Conv2DBackpropInput: input_sizes must be 4-dimensional, got: "
                          f"{len(dy_shape)} (out_backprop, the input of conv2d_transpose, has "
                          f"shape {list(dy_shape)}; expected rank 4)")
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
