"""3-D convolutions through the 2-D ones (the front ends' 3-D path).

The forward conv is one 2-D conv over a batch of N x D_out planes whose channels
are the input depths each depth tap reads, stacked (see ``forward``).  The input
gradient is one 2-D input gradient per depth phase (input depths of one residue
modulo the depth stride), its taps' dy depths stacked the same way (see
``backprop_input``), so the zeros a depth stride would insert cost nothing.  The
GEMMs compute both reading those depths in place (one plan of a geometry with depth
taps: clconv.gemm's phases and taps carry the depths), with the algorithm and
configuration the 2-D plane would get; the other algorithms read the stacks.  Each
is a 2-D plan (clconv.plans), so every 2-D algorithm, the stride-phase
decomposition of the planes and the tuning carry over.  The stacking and the
scattering of a phase's result into every stride-th depth are copies on the device
(clconv.depth_copies), or no copy at all where a plane is a view of the tensor (a
phase with one tap reading all of dy; a phase's depths written in place through a
strided view).  Activations are NDHWC, host or pyopencl arrays (the result is of
the same kind); filters are ``[kd, kh, kw, C_in / groups, C_out]`` host arrays.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pyopencl.array as cl_array

from clconv import buffer_pool, plans, tensors
from clconv.depth_copies import Depths, contiguous_copy, copy_depths
from clconv.device_select import DeviceSpec, Runtime
from clconv.errors import InvalidArgumentError
from clconv.ops import check_device_dtype, choose_runtime
from clconv.registry import unsupported
from clconv.shapes import ConvGeometry, DepthAxis


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
    """The 2-D conv ``forward`` computes: N x D_out planes whose channels are the input
    depths of every depth tap, stacked (what decides its algorithm and tuning)."""
    return dataclasses.replace(g.plane(g.batch * g.out_size[0]), in_c=g.in_c * g.kernel[0])


def depth_geometry(g: Geometry3d) -> ConvGeometry:
    """The 3-D conv as a geometry with depth taps, for the algorithms that read them."""
    (d, _, _), (d_out, _, _), (kd, _, _) = g.in_size, g.out_size, g.kernel
    return dataclasses.replace(g.plane(g.batch), depth=DepthAxis(
        d, d_out, kd, g.strides[0], g.dilations[0], g.pads[0][0], g.pads[0][1]))


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


def _contiguous(array: cl_array.Array) -> cl_array.Array:
    """A C-contiguous pyopencl array of ``array``'s values on its queue: the array itself,
    or for a strided view a copy made on the device (pyopencl copies and reads back
    contiguous arrays only)."""
    if array.flags.c_contiguous:
        return array
    copy = cl_array.empty(array.queue, array.shape, array.dtype,
                          allocator=buffer_pool.allocator(array.queue))
    contiguous_copy(array.queue, array, copy)
    return copy


def _on_device(value: Any, rt: Runtime) -> cl_array.Array:
    """A C-contiguous pyopencl array of ``value`` (the array itself if it is one; a
    strided view copied on the device)."""
    if tensors.is_device_array(value):
        return _contiguous(value)
    return cl_array.to_device(rt.queue, np.ascontiguousarray(value))


def _new(rt: Runtime, shape: tuple[int, ...], dtype: np.dtype, what: str,
         zero: bool) -> cl_array.Array:
    elements = int(np.prod(shape))
    tensors.check_fits(elements * dtype.itemsize, what, rt.info)
    array = cl_array.empty(rt.queue, shape, dtype, allocator=buffer_pool.allocator(rt.queue))
    if zero and elements:  # the runtime's own fill: 7-20x pyopencl's fill kernel on PoCL
        tensors.DeviceTensor.of_array(array).fill(rt.queue, 0)
    return array


class _Padding:
    """Zeroes the slices of a depth stack where a tap reads padding: copies from one
    small zeroed tensor, made at the first need and shared by every band of the stack,
    instead of zeroing the whole stack before the copies overwrite most of it (the 25 MB
    stack of unet3d_conv_b1 took 2.5-2.9 ms to zero, longer than its copies)."""

    def __init__(self, rt: Runtime, stack: Depths, most: int, channels: int) -> None:
        self.rt, self.stack, self.most, self.channels = rt, stack, most, channels
        self.zeros: Optional[Depths] = None

    def zero(self, first: int, count: int, channel: int) -> None:
        """``count`` depths from ``first`` of the stack's band from ``channel``."""
        if count <= 0:
            return
        if self.zeros is None:
            stack = self.stack
            array = _new(self.rt, (stack.batch, self.most, stack.pixels, self.channels),
                         stack.array.dtype, "the padding of a depth stack", True)
            self.zeros = Depths(array, self.most, stack.pixels, self.channels, 0)
        copy_depths(self.rt.queue, dataclasses.replace(self.stack, first=first,
                                                       channel=channel),
                    self.zeros, count, self.channels)


def _taps_filter(w: Any) -> Any:
    """A filter as the depth-tap GEMMs read it: a pyopencl array in place where its depth
    and height taps read as one axis (any C-contiguous array, or a view of some output
    channels), else a contiguous copy; a host array as it is."""
    if not tensors.is_device_array(w):
        return w
    try:
        tensors.DeviceTensor.of_array(w).merged(0)
        return w
    except InvalidArgumentError:
        return _contiguous(w)


def _in_place_plan(rt: Runtime, op: str, plane: ConvGeometry, g: Geometry3d, dtype: Any,
                   algorithm: Optional[str]) -> Optional[plans.ConvPlan]:
    """The plan of ``g`` with depth taps, read in place, with the algorithm and
    configuration ``plane`` (the stacked 2-D conv) would get; None where that
    algorithm reads no depth taps (it gets the stacks)."""
    decided = plans.decide(rt, op, plane, dtype, algorithm)
    in_place = depth_geometry(g)
    if unsupported(decided.algorithm, op, dtype, in_place, rt.info) is not None:
        return None
    return plans.get_plan(rt, op, in_place, dtype, decided.algorithm, decided.config)


def _returned(result: cl_array.Array, like: Any) -> Any:
    return result if tensors.is_device_array(like) else result.get()


def _stacked_filter(rt: Runtime, w: Any, g: Geometry3d) -> Any:
    """The filter [kd, kh, kw, C_in/g, C_out] as [kh, kw, kd * C_in/g, C_out], in the
    stacked order (tap-major within a group's input channels): on the host, or for a
    pyopencl filter on the device, one band copy per depth tap (no read-back)."""
    taps, (kh, kw) = g.kernel[0], g.kernel[1:]
    per_group = g.in_c // g.groups
    if not tensors.is_device_array(w):
        return np.ascontiguousarray(w.transpose(1, 2, 0, 3, 4)).reshape(
            kh, kw, taps * per_group, g.out_c)
    source = _on_device(w, rt)
    stacked = _new(rt, (kh, kw, taps * per_group, g.out_c), w.dtype, "the stacked filter",
                   False)
    band = per_group * g.out_c  # one tap's [C_in/g, C_out] at each of the kh x kw taps
    for tap in range(taps):
        copy_depths(rt.queue, Depths(stacked, 1, kh * kw, taps * band, 0, channel=tap * band),
                    Depths(source, taps, kh * kw, band, tap), 1, band)
    return stacked


def forward(x: Any, w: Any, g: Geometry3d, device: DeviceSpec,
            algorithm: Optional[str]) -> Any:
    """y[N, Do, Ho, Wo, C_out] = conv3d(x, w), as ONE 2-D conv (``forward_plane``): the
    input depths each depth tap reads stacked along the channels (zeros where a tap
    reads padding), so the depth taps become part of the 2-D conv's reduction and the
    device does the whole sum (one GEMM of K = kd * kh * kw * C_in / groups).  Where
    the plane's algorithm reads depth taps itself (the GEMMs), it runs on x in place
    with that algorithm and configuration; else the stack is made: channels stay
    grouped, group g's stacked channels contiguous, [g][tap][its channels]."""
    dtype = x.dtype
    rt = choose_runtime([x], device)
    check_device_dtype(rt, dtype)
    n, (d_out, h_out, w_out) = g.batch, g.out_size
    if not n * d_out * h_out * w_out * g.out_c:
        return _returned(_new(rt, (n, *g.out_size, g.out_c), dtype, "the output", True), x)
    taps, groups = g.kernel[0], g.groups
    per_group = g.in_c // groups
    pixels = g.in_size[1] * g.in_size[2]
    source = _on_device(x, rt)
    plane = forward_plane(g)
    # The same GEMM, reading x where the stack would have copied it from (a stack is
    # taps x the input: 12 MB and 1.5-4 ms for a 3x3x3 conv over 2x16x32x32x32).
    in_place = _in_place_plan(rt, "conv2d", plane, g, dtype, algorithm)
    if in_place is not None:
        return _returned(in_place.execute(source, _taps_filter(w)), x)
    plan = plans.get_plan(rt, "conv2d", plane, dtype, algorithm)
    reads = [g.tap_depths(tap) for tap in range(taps)]
    if taps == 1 and g.strides[0] == 1 and g.pads[0] == (0, 0):
        stacked = source  # the one tap reads every depth: x is the plane batch
    else:
        stacked = _new(rt, (n, d_out, *g.in_size[1:], taps * g.in_c), dtype,
                       "the depth-stacked input", False)
        padding = _Padding(rt, Depths(stacked, d_out, pixels, taps * g.in_c, 0), d_out,
                           per_group)
        for tap, (out_depths, in_depths) in enumerate(reads):
            # A tap reads real depths for one run of output depths (the read depth grows
            # with the output depth); before and after it, padding.
            first = int(out_depths[0]) if len(out_depths) else d_out
            end = first + len(out_depths)
            for group in range(groups):
                band = (group * taps + tap) * per_group
                padding.zero(0, first, band)
                padding.zero(end, d_out - end, band)
                if len(out_depths):
                    copy_depths(rt.queue,
                                Depths(stacked, d_out, pixels, taps * g.in_c, first,
                                       channel=band),
                                Depths(source, g.in_size[0], pixels, g.in_c, int(in_depths[0]),
                                       g.strides[0], group * per_group),
                                len(out_depths), per_group)
    w2 = _stacked_filter(rt, w, g)
    y = plan.execute(stacked.reshape(plane.x_shape()), w2)
    return _returned(y.reshape(n, *g.out_size, g.out_c), x)


def _phase_filter(w: Any, taps: list[int], g: Geometry3d) -> Any:
    """The taps' filter planes [T, kh, kw, C_in/g, C_out] as [kh, kw, C_in/g, T * C_out]
    in the stacked order: [group][tap][its output channels].  For one tap that is its
    plane itself, a view (of a pyopencl filter too: no round trip through the host)."""
    if len(taps) == 1:
        return w[taps[0]]
    per_out = g.out_c // g.groups
    planes = w[taps].reshape(len(taps), *g.kernel[1:], g.in_c // g.groups, g.groups, per_out)
    return np.ascontiguousarray(planes.transpose(1, 2, 3, 4, 0, 5)).reshape(
        *g.kernel[1:], g.in_c // g.groups, len(taps) * g.out_c)


def backprop_input(dy: Any, w: Any, g: Geometry3d, device: DeviceSpec,
                   algorithm: Optional[str]) -> Any:
    """dx[N, D, H, W, C_in] of the conv ``g`` from dy[N, Do, Ho, Wo, C_out], one 2-D
    input gradient per depth phase: the input depths id = r (mod stride) receive
    exactly the depth taps a with (r + pad - a * dilation) divisible by the stride,
    from dy depth (id + pad - a * dilation) / stride; those dy depths are stacked along
    the channels (zeros past dy's ends), so the device sums all of a phase's taps and
    no work goes to the zeros a depth stride would insert.  The GEMMs read the phases'
    dy depths in place instead (one plan for all of them).  ``w`` is a host array, or
    a pyopencl array on dy's queue (read back only where a stacked phase has several
    taps)."""
    dtype = dy.dtype
    rt = choose_runtime([dy], device)
    check_device_dtype(rt, dtype)
    n, depth, d_out = g.batch, g.in_size[0], g.out_size[0]
    stride, pad, dilation = g.strides[0], g.pads[0][0], g.dilations[0]
    groups = g.groups
    per_out = g.out_c // groups
    phases = backprop_phases(g)
    if phases and g.out_size[0]:
        # The GEMMs read each phase's dy depths in place (clconv.gemm.backprop_plan),
        # with the algorithm and configuration of the phase with the most depth taps.
        _, _, plane = max(phases, key=lambda phase: len(phase[1]))
        in_place = _in_place_plan(rt, "conv2d_backprop_input", plane, g, dtype, algorithm)
        if in_place is not None:
            return _returned(in_place.execute(_on_device(dy, rt), _taps_filter(w)), dy)
    if tensors.is_device_array(w) and any(len(taps) > 1 for _, taps, _ in phases):
        w = host(w)  # stacked taps need their planes rearranged (on the host)
    reached = sum(len(in_depths) for in_depths, _, _ in phases) == depth
    dx = _new(rt, (n, *g.in_size, g.in_c), dtype, "the output", not reached)
    if not dx.size:
        return _returned(dx, dy)
    source = _on_device(dy, rt)
    out_pixels, in_pixels = g.out_size[1] * g.out_size[2], g.in_size[1] * g.in_size[2]
    planes_in_place = n == 1 or depth % stride == 0  # dx's phase depths: one batch stride
    for in_depths, taps, plane in phases:
        count, residue = len(in_depths), int(in_depths[0])
        # Tap a reads dy depth j + shift[a] for the phase's j-th depth.
        shifts = [(residue + pad - tap * dilation) // stride for tap in taps]
        first = [max(0, -shift) for shift in shifts]
        last = [min(count, d_out - shift) for shift in shifts]
        if (len(taps) == 1 and first[0] == 0 and last[0] == count
                and (n == 1 or (shifts[0] == 0 and count == d_out))):
            # One tap reading consecutive dy depths: a view of dy is the plane batch.
            flat = source.reshape(n * d_out, *g.out_size[1:], g.out_c)
            src = flat[shifts[0]:shifts[0] + n * count]
        else:
            stacked = _new(rt, (n, count, *g.out_size[1:], len(taps) * g.out_c), dtype,
                           "the depth-stacked out_backprop", False)
            padding = _Padding(rt, Depths(stacked, count, out_pixels, len(taps) * g.out_c, 0),
                               count, per_out)
            for t, (shift, lo, hi) in enumerate(zip(shifts, first, last)):
                lo = min(lo, count)
                hi = max(lo, hi)  # a tap past dy's ends reads nothing: all padding
                for group in range(groups):
                    band = (group * len(taps) + t) * per_out
                    padding.zero(0, lo, band)
                    padding.zero(hi, count - hi, band)
                    if hi > lo:
                        copy_depths(rt.queue,
                                    Depths(stacked, count, out_pixels, len(taps) * g.out_c,
                                           lo, channel=band),
                                    Depths(source, d_out, out_pixels, g.out_c, lo + shift,
                                           channel=group * per_out),
                                    hi - lo, per_out)
            src = stacked.reshape(plane.y_shape())
        w2 = _phase_filter(w, taps, g)
        plan = plans.get_plan(rt, "conv2d_backprop_input", plane, dtype, algorithm)
        if planes_in_place:  # the phase's dx depths, written through a strided view
            flat = dx.reshape(n * depth, *g.in_size[1:], g.in_c)
            plan.execute(src, w2, out=flat[residue::stride])
        else:
            part = plan.execute(src, w2)
            copy_depths(rt.queue, Depths(dx, depth, in_pixels, g.in_c, residue, stride),
                        Depths(part, count, in_pixels, g.in_c, 0), count, g.in_c)
    return _returned(dx, dy)


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
    """Any operand as a host array (a pyopencl array is read back: filters and the
    channels-first layouts are rearranged on the host)."""
    if tensors.is_device_array(value):
        return _contiguous(value).get()
    return np.asarray(value)
