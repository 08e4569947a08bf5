"""3-D convolutions through the 2-D ones (the front ends' 3-D path).

The forward conv is one 2-D conv over a batch of N x D_out planes whose channels
are the input depths each depth tap reads, stacked (see ``forward``).  The input
gradient is one 2-D input gradient per depth phase (input depths of one residue
modulo the depth stride), its taps' dy depths stacked the same way (see
``backprop_input``), so the zeros a depth stride would insert cost nothing.  Each
is a 2-D plan (clconv.plans), so every 2-D algorithm, the stride-phase
decomposition of the planes and the tuning carry over; the stacking is host-side
numpy.  Operands are NDHWC host arrays; filters are ``[kd, kh, kw, C_in / groups,
C_out]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from clconv import plans
from clconv.device_select import DeviceSpec, runtime
from clconv.ops import check_device_dtype
from clconv.shapes import ConvGeometry


@dataclass(frozen=True)
class Geometry3d:
    """The forward 3-D conv x[N, D, H, W, C_in] (*) w[kd, kh, kw, C_in/g, C_out]."""

    batch: int
    in_size: tuple[int, int, int]
    in_c: int
    kernel: tuple[int, int, int]
    out_size: tuple[int, int, int]
    out_c: int
    strides: tuple[int, int, int]
    dilations: tuple[int, int, int]
    pads: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]  # (before, after) per axis
    groups: int = 1

    def plane(self, batch: int) -> ConvGeometry:
        """The 2-D conv of one depth tap over ``batch`` images."""
        (_, h, w), (_, kh, kw), (_, ho, wo) = self.in_size, self.kernel, self.out_size
        (_, sh, sw), (_, dh, dw), (_, ph, pw) = self.strides, self.dilations, self.pads
        return ConvGeometry("NHWC", batch, h, w, self.in_c, kh, kw, ho, wo, self.out_c, sh, sw,
                            dh, dw, ph[0], ph[1], pw[0], pw[1], self.groups)

    def tap_depths(self, tap: int) -> tuple[np.ndarray, np.ndarray]:
        """(output depths, input depths) that depth tap ``tap`` connects."""
        out = np.arange(self.out_size[0])
        read = out * self.strides[0] - self.pads[0][0] + tap * self.dilations[0]
        real = (read >= 0) & (read < self.in_size[0])
        return out[real], read[real]


def forward_plane(g: Geometry3d) -> ConvGeometry:
    """The one 2-D conv ``forward`` runs: N x D_out planes whose channels are the
    input depths of every depth tap, stacked."""
    return dataclasses.replace(g.plane(g.batch * g.out_size[0]), in_c=g.in_c * g.kernel[0])


def backprop_phases(g: Geometry3d) -> list[tuple[np.ndarray, list[int], ConvGeometry]]:
    """The 2-D input gradients ``backprop_input`` runs, one per depth phase with any
    tap: (its input depths, its depth taps, the 2-D conv whose input gradient it is)."""
    depth, stride, pad, dilation = g.in_size[0], g.strides[0], g.pads[0][0], g.dilations[0]
    phases = []
    for residue in range(min(stride, depth)):
        in_depths = np.arange(residue, depth, stride)
        taps = [a for a in range(g.kernel[0]) if (residue + pad - a * dilation) % stride == 0]
        if taps and g.out_size[0]:  # else no tap reaches these depths: they stay 0
            plane = dataclasses.replace(g.plane(g.batch * len(in_depths)),
                                        out_c=len(taps) * g.out_c)
            phases.append((in_depths, taps, plane))
    return phases


def output_size(size: int, kernel: int, stride: int, dilation: int, pads: Sequence[int]) -> int:
    return (size + pads[0] + pads[1] - (kernel - 1) * dilation - 1) // stride + 1


def _accumulator(dtype: np.dtype) -> np.dtype:
    return np.dtype(np.float32) if dtype == np.float16 else dtype


def forward(x: np.ndarray, w: np.ndarray, g: Geometry3d, device: DeviceSpec,
            algorithm: Optional[str]) -> np.ndarray:
    """y[N, Do, Ho, Wo, C_out] = conv3d(x, w), as ONE 2-D conv: the input depths each
    depth tap reads are stacked along the channels (zeros where a tap reads padding),
    so the depth taps become part of the 2-D conv's reduction and the device does the
    whole sum (one GEMM of K = kd * kh * kw * C_in / groups).  Channels stay grouped:
    group g's stacked channels are contiguous, [g][tap][its channels]."""
    dtype = x.dtype
    rt = runtime(device)
    check_device_dtype(rt, dtype)
    n, (d_out, h_out, w_out) = g.batch, g.out_size
    if not n * d_out * h_out * w_out * g.out_c:
        return np.zeros((n, *g.out_size, g.out_c), dtype)
    taps, groups = g.kernel[0], g.groups
    per_group = g.in_c // groups
    stacked = np.zeros((n, d_out, *g.in_size[1:], groups, taps, per_group), dtype)
    grouped = x.reshape(n, *g.in_size, groups, per_group)
    for tap in range(taps):
        out_depths, in_depths = g.tap_depths(tap)
        tap_view = stacked[:, :, :, :, :, tap]  # a view: then one advanced index only
        tap_view[:, out_depths] = grouped[:, in_depths]
    # The filter [kd, kh, kw, C_in/g, C_out] as [kh, kw, kd * C_in/g, C_out], in the
    # stacked order (tap-major within a group's input channels).
    w2 = np.ascontiguousarray(w.transpose(1, 2, 0, 3, 4)).reshape(
        g.kernel[1], g.kernel[2], taps * per_group, g.out_c)
    plan = plans.get_plan(rt, "conv2d", forward_plane(g), dtype, algorithm)
    y = plan.execute(stacked.reshape(n * d_out, *g.in_size[1:], g.in_c * taps), w2)
    return y.reshape(n, *g.out_size, g.out_c)


def backprop_input(dy: np.ndarray, w: np.ndarray, g: Geometry3d, device: DeviceSpec,
                   algorithm: Optional[str]) -> np.ndarray:
    """dx[N, D, H, W, C_in] of the conv ``g`` from dy[N, Do, Ho, Wo, C_out], one 2-D
    input gradient per depth phase: the input depths id = r (mod stride) receive
    exactly the depth taps a with (r + pad - a * dilation) divisible by the stride,
    from dy depth (id + pad - a * dilation) / stride; those dy depths are stacked along
    the channels (zeros past dy's ends), so the device sums all of a phase's taps and
    no work goes to the zeros a depth stride would insert."""
    dtype = dy.dtype
    rt = runtime(device)
    check_device_dtype(rt, dtype)
    n, d_out = g.batch, g.out_size[0]
    stride, pad, dilation = g.strides[0], g.pads[0][0], g.dilations[0]
    groups = g.groups
    per_out = g.out_c // groups
    dx = np.zeros((n, *g.in_size, g.in_c), dtype)
    if not dx.size:
        return dx
    dy_grouped = dy.reshape(n, *g.out_size, groups, per_out)
    for in_depths, taps, plane in backprop_phases(g):
        stacked = np.zeros((n, len(in_depths), *g.out_size[1:], groups, len(taps), per_out),
                           dtype)
        for t, tap in enumerate(taps):
            read = (in_depths + pad - tap * dilation) // stride
            real = (read >= 0) & (read < d_out)
            tap_view = stacked[:, :, :, :, :, t]  # a view: then one advanced index only
            tap_view[:, np.flatnonzero(real)] = dy_grouped[:, read[real]]
        # The taps' filter planes [T, kh, kw, C_in/g, C_out] as [kh, kw, C_in/g, T * C_out]
        # in the stacked order: [group][tap][its output channels].
        planes = w[taps].reshape(len(taps), *g.kernel[1:], g.in_c // groups, groups, per_out)
        w2 = np.ascontiguousarray(planes.transpose(1, 2, 3, 4, 0, 5)).reshape(
            *g.kernel[1:], g.in_c // groups, len(taps) * g.out_c)
        plan = plans.get_plan(rt, "conv2d_backprop_input", plane, dtype, algorithm)
        part = plan.execute(stacked.reshape(n * len(in_depths), *g.out_size[1:],
                                            len(taps) * g.out_c), w2)
        dx[:, in_depths] = part.reshape(n, len(in_depths), *g.in_size[1:], g.in_c)
    return dx


def _channels_last(x: Any) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(host(x), 1, -1))


def _channels_first(y: np.ndarray, bias: Any) -> np.ndarray:
    y = np.moveaxis(y, -1, 1)
    if bias is not None:
        wide = _accumulator(y.dtype)
        y = (y.astype(wide) + host(bias).astype(wide).reshape(1, -1, 1, 1, 1)).astype(y.dtype)
    return np.ascontiguousarray(y)


def conv_ncdhw(x: Any, w: Any, bias: Any, strides: Sequence[int],
               pads: Sequence[tuple[int, int]], dilations: Sequence[int], groups: int,
               device: DeviceSpec, algorithm: Optional[str]) -> np.ndarray:
    """A channels-first conv3d (PyTorch's and ONNX's): x [N, C, D, H, W], w
    [C_out, C / groups, kd, kh, kw], bias [C_out] or None; pads (before, after) per
    axis."""
    x5 = _channels_last(x)
    w5 = np.ascontiguousarray(host(w).transpose(2, 3, 4, 1, 0))
    size, kernel = x5.shape[1:4], w5.shape[:3]
    outs = [output_size(n, k, s, d, p)
            for n, k, s, d, p in zip(size, kernel, strides, dilations, pads)]
    g = Geometry3d(x5.shape[0], tuple(size), x5.shape[4], tuple(kernel), tuple(outs),
                   w5.shape[4], tuple(strides), tuple(dilations), tuple(pads), groups)
    return _channels_first(forward(x5, w5, g, device, algorithm), bias)


def conv_transpose_ncdhw(x: Any, w: Any, bias: Any, strides: Sequence[int],
                         pads: Sequence[tuple[int, int]], outs: Sequence[int],
                         dilations: Sequence[int], groups: int, device: DeviceSpec,
                         algorithm: Optional[str]) -> np.ndarray:
    """A channels-first transposed conv3d: x [N, C_in, D, H, W], w [C_in, C_out / groups,
    kd, kh, kw]; output [N, C_out, *outs], output o receiving input i through tap a where
    o = i * stride - pads_before + a * dilation."""
    dy5 = _channels_last(x)
    w5 = np.ascontiguousarray(host(w).transpose(2, 3, 4, 1, 0))
    g = Geometry3d(dy5.shape[0], tuple(outs), w5.shape[3] * groups, tuple(w5.shape[:3]),
                   tuple(dy5.shape[1:4]), dy5.shape[4], tuple(strides), tuple(dilations),
                   tuple(pads), groups)
    return _channels_first(backprop_input(dy5, w5, g, device, algorithm), bias)


def host(value: Any) -> np.ndarray:
    """Any operand as a host array (a pyopencl array is read back: the 3-D path runs
    its depth bookkeeping on the host)."""
    if hasattr(value, "get") and hasattr(value, "queue"):
        return value.get()
    return np.asarray(value)
