"""The direct algorithms: the fallback every op and dtype has.

- ``direct`` for conv2d (kernels/conv2d_direct.cl): each work-item sums
  CO_BLOCK output channels of one pixel over the taps that land inside x;
  grouped convolutions included.
- ``direct`` for the input gradient (kernels/backprop_direct.cl): the gather
  form; each dx pixel sums only the taps that land on real dy pixels.
- ``via_forward`` for the input gradient: dilate dy by the stride, pad it
  fully (kernels/backprop_via_forward.cl), then the forward direct kernel with
  a 180-degree-rotated, in/out-swapped *view* of the filter (negative strides,
  no copy).

Each is prepared once per plan (typed kernels, NDRange); a call binds its
buffers and enqueues.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
import pyopencl as cl

from clconv import tensors
from clconv.device_select import DeviceInfo
from clconv.programs import INDEX, TypedKernel, launch_range
from clconv.registry import Algorithm, Setup, register
from clconv.shapes import ConvGeometry

_I = np.int32
_VIEW = [INDEX] * 5  # TENSOR_ARGS: offset and four strides
CONV2D_ARGS = [None, *_VIEW, _I, _I, _I, None, *_VIEW, _I, _I, None, *_VIEW, _I, _I, _I,
               _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I]
BACKPROP_ARGS = [None, *_VIEW, _I, _I, _I, None, *_VIEW, _I, _I, None, *_VIEW, _I, _I, _I,
                 _I, _I, _I, _I, _I, _I, _I, _I]
DILATE_ARGS = [None, *_VIEW, _I, _I, _I, None, _I, _I, _I, _I, _I, _I, _I]


def window_args(g: ConvGeometry, x: tensors.DeviceTensor, x_view: list,
                w: tensors.DeviceTensor, w_view: list, y: tensors.DeviceTensor,
                y_view: list) -> list:
    """The arguments the direct-style kernels (conv2d_direct, backprop_direct,
    grouped_direct) share, in their order: the conv's input side x (dx for an input
    gradient), the filter, the output side y (dy), then the window of ``g``."""
    return [x.buffer, *x_view, g.in_h, g.in_w, g.in_c, w.buffer, *w_view, g.k_h, g.k_w,
            y.buffer, *y_view, g.out_h, g.out_w, g.out_c,
            g.batch, g.stride_h, g.stride_w, g.dil_h, g.dil_w, g.pad_top, g.pad_left, g.groups]


class Conv2dDirect:
    """conv2d_direct.cl over the conv ``g``: y in g's layout, x in ``x_format``."""

    def __init__(self, setup: Setup, g: Optional[ConvGeometry] = None,
                 x_format: Optional[str] = None, lattice: Optional[tuple] = None) -> None:
        g = g or setup.geometry
        self.g, self.x_format = g, x_format or g.data_format
        # (pad_products, lattice_h, lattice_w, before_h, before_w, rows, cols): see the
        # kernel.  A plain conv2d: every pixel of x is real, padded taps add 0 * w.
        self.lattice = lattice or (1, 1, 1, 0, 0, g.in_h, g.in_w)
        source, name = setup.space.kernel
        self.kernel = TypedKernel(setup.context, source, name, setup.defines, CONV2D_ARGS)
        self.kernels = (self.kernel,)
        blocks = g.groups * -(-(g.out_c // g.groups) // int(setup.defines["CO_BLOCK"]))
        self.range = launch_range(setup.info, (blocks, g.batch * g.out_h * g.out_w),
                                  setup.local, axis=1)

    def pack(self, queue: cl.CommandQueue, filters: tensors.DeviceTensor) -> Any:
        return filters

    def enqueue(self, queue: cl.CommandQueue, x: tensors.DeviceTensor, w: tensors.DeviceTensor,
                y: tensors.DeviceTensor, timeline: Optional[list] = None,
                w_view: Optional[list] = None) -> cl.Event:
        g = self.g
        event = self.kernel.enqueue(queue, *self.range, [
            *window_args(g, x, x.activation_view(self.x_format), w, w_view or w.filter_view(),
                         y, y.activation_view(g.data_format)),
            *self.lattice])
        if timeline is not None:
            timeline.append(("conv2d direct", event))
        return event


class BackpropDirect:
    """backprop_direct.cl: dx of the conv ``g`` from dy, gathering real taps only."""

    def __init__(self, setup: Setup) -> None:
        g = self.g = setup.geometry
        source, name = setup.space.kernel
        self.kernel = TypedKernel(setup.context, source, name, setup.defines, BACKPROP_ARGS)
        self.kernels = (self.kernel,)
        blocks = g.groups * -(-(g.in_c // g.groups) // int(setup.defines["CI_BLOCK"]))
        # Groups along the pixels, one channel block each, where the filter outweighs dy
        # (programs.cpu_local_size).
        weights = g.k_h * g.k_w * (g.in_c // g.groups) * g.out_c
        self.range = launch_range(setup.info, (blocks, g.batch * g.in_h * g.in_w),
                                  setup.local, axis=1, weight_major=weights > g.y_size())

    def pack(self, queue: cl.CommandQueue, filters: tensors.DeviceTensor) -> Any:
        return filters

    def enqueue(self, queue: cl.CommandQueue, dy: tensors.DeviceTensor,
                w: tensors.DeviceTensor, dx: tensors.DeviceTensor,
                timeline: Optional[list] = None) -> cl.Event:
        g = self.g
        event = self.kernel.enqueue(queue, *self.range, window_args(
            g, dx, dx.activation_view(g.data_format), w, w.filter_view(),
            dy, dy.activation_view(g.data_format)))
        if timeline is not None:
            timeline.append(("backprop direct", event))
        return event


def via_forward_geometry(g: ConvGeometry) -> ConvGeometry:
    """The stride-1 VALID forward conv that computes dx of ``g`` from the dilated,
    fully padded dy: input [N, H + k_eff_h - 1, W + k_eff_w - 1, C_out] (NHWC),
    filter rotated 180 degrees with in/out swapped, output dx."""
    return ConvGeometry(
        "NHWC", g.batch, g.in_h + g.k_eff_h - 1, g.in_w + g.k_eff_w - 1, g.out_c,
        g.k_h, g.k_w, g.in_h, g.in_w, g.in_c, 1, 1, g.dil_h, g.dil_w, 0, 0, 0, 0)


class BackpropViaForward:
    """dx of the conv ``g`` as dilate + full pad + stride-1 conv with the rotated filter.
    The padded dy is a buffer of each call's own, so concurrent calls never share it."""

    def __init__(self, setup: Setup) -> None:
        g = self.g = setup.geometry
        fg = self.fg = via_forward_geometry(g)
        # The padded input is NHWC; dx keeps g's data format.  Only dy's own pixels in
        # it are real: the inserted zeros and the padding add nothing (TF's gradient).
        self.before = (g.k_eff_h - 1 - g.pad_top, g.k_eff_w - 1 - g.pad_left)
        lattice = (0, g.stride_h, g.stride_w, *self.before, g.out_h, g.out_w)
        self.conv = Conv2dDirect(setup, dataclasses.replace(fg, data_format=g.data_format),
                                 x_format="NHWC", lattice=lattice)
        source, name = setup.space.helper_kernels["dilate_pad"]
        self.dilate = TypedKernel(setup.context, source, name, setup.defines, DILATE_ARGS)
        self.kernels = (self.conv.kernel, self.dilate)
        self.padded_shape = (g.batch, fg.in_h, fg.in_w, g.out_c)
        self.range = launch_range(setup.info, (int(np.prod(self.padded_shape)),), None)
        self.dtype, self.info = setup.dtype, setup.info

    def pack(self, queue: cl.CommandQueue, filters: tensors.DeviceTensor) -> Any:
        return filters

    def enqueue(self, queue: cl.CommandQueue, dy: tensors.DeviceTensor,
                w: tensors.DeviceTensor, dx: tensors.DeviceTensor,
                timeline: Optional[list] = None) -> cl.Event:
        g, fg = self.g, self.fg
        padded = tensors.empty_output(self.padded_shape, self.dtype, queue, self.info,
                                      zero=False)
        event = self.dilate.enqueue(queue, *self.range, [
            dy.buffer, *dy.activation_view(g.data_format), g.out_h, g.out_w, g.out_c,
            padded.buffer, fg.in_h, fg.in_w, g.batch, g.stride_h, g.stride_w, *self.before])
        if timeline is not None:
            timeline.append(("dilate + pad", event))
        # The rotated, in/out-swapped filter is a view: start at w[kh-1, kw-1] and walk
        # the spatial axes backwards; "in" of the view is the forward filter's "out".
        offset, s_a, s_b, s_in, s_out = w.filter_view()
        w_view = [offset + (g.k_h - 1) * s_a + (g.k_w - 1) * s_b, -s_a, -s_b, s_out, s_in]
        return self.conv.enqueue(queue, padded, w, dx, timeline, w_view=w_view)


def _prepare_direct(setup: Setup) -> Any:
    return Conv2dDirect(setup) if setup.op == "conv2d" else BackpropDirect(setup)


def _via_forward_kernel_geometry(op: str, g: ConvGeometry) -> ConvGeometry:
    return via_forward_geometry(g)


def _via_forward_unsupported(op: str, dtype: np.dtype, g: ConvGeometry, info: DeviceInfo
                             ) -> Optional[str]:
    if g.groups != 1:
        # The rotated, in/out-swapped filter of a grouped conv is no strided view.
        return f"via_forward computes ungrouped convolutions only (got {g.groups} groups)"
    if g.pad_top < 0 or g.pad_left < 0:
        # An output larger than the full transposed conv (ONNX's output_shape may ask for
        # one) would place dy past the padded buffer.
        return "via_forward needs non-negative leading padding"
    padded = g.batch * (g.in_h + g.k_eff_h - 1) * (g.in_w + g.k_eff_w - 1) * g.out_c
    if padded * dtype.itemsize > info.max_mem_alloc_size:
        return (f"via_forward's dilated, padded dy needs {padded * dtype.itemsize} bytes, more "
                f"than the device's largest buffer ({info.max_mem_alloc_size})")
    return None


def _resolve_direct(config: dict, op: str, g: ConvGeometry, info: DeviceInfo) -> dict:
    """CI_BLOCK "auto": the fewest channels a work-item computes that cover a group's dx
    channels, at most AUTO_CI_BLOCK (a transpose to 3 channels computes 4, not 8)."""
    if config.get("CI_BLOCK") == "auto":
        per_group = g.in_c // max(g.groups, 1)
        config = {**config, "CI_BLOCK": next(
            (n for n in (1, 2, 4) if n >= per_group), AUTO_CI_BLOCK)}
    return config


AUTO_CI_BLOCK = 8

DIRECT = register(Algorithm(
    name="direct", prepare=_prepare_direct, resolve=_resolve_direct,
    doc="the gather form: each output sums only the taps that land on real input pixels"))
VIA_FORWARD = register(Algorithm(
    name="via_forward", prepare=BackpropViaForward, unsupported=_via_forward_unsupported,
    kernel_geometry=_via_forward_kernel_geometry, fallback="direct",
    doc="dilate, pad fully, then the forward kernel with the rotated filter"))
