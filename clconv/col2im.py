"""The input gradient as one GEMM into columns and a sum over taps: algorithm "col2im"
(kernels/col2im.cl).

conv2d_transpose and conv2d_backprop_input only.  The GEMM is a 1x1 conv of dy through
gemm_implicit.cl (its tile, its tuning): every dy pixel times every tap's filter slice,
k_h * k_w * C_dx columns a pixel; col2im.cl then adds, for each dx value, the columns of
the (dy pixel, tap) pairs that land on it.  A transpose to few channels (an RGB output
layer, N = 3 in the per-phase GEMM) thereby becomes a GEMM whose N is every tap's
channels, and the columns cost one write and one read of memory.
"""

from __future__ import annotations

import itertools
from typing import Any, Optional

import numpy as np
import pyopencl as cl

from clconv import tensors
from clconv.device_select import DeviceInfo
from clconv.gemm import (GEMM_ARGS, PackedFilters, Packing, _ScratchPool, forward_plan,
                         tile_for, uses_channel_index_loop)
from clconv.programs import INDEX, TypedKernel, launch_range, ndrange
from clconv.registry import Algorithm, Setup, register
from clconv.shapes import ConvGeometry

COLUMN_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_I = np.int32
_VIEW = [INDEX] * 5
PACK_ARGS = [None, *_VIEW, None, _I, _I, _I, _I, _I]
SUM_ARGS = [None, None, *_VIEW, *[_I] * 9]
SUM_BLOCK = 8  # dx channels a work-item of the sum adds (col2im.cl's CB)
SUM_GROUP = 64  # work-items of a col2im group along its first dimension


def columns_geometry(g: ConvGeometry) -> ConvGeometry:
    """The GEMM as the 1x1 conv it is: dy [N, Ho, Wo, C_dy] -> columns
    [N, Ho, Wo, k_h * k_w * C_dx] (what the search space's constraints read)."""
    return ConvGeometry(g.data_format, g.batch, g.out_h, g.out_w, g.out_c, 1, 1, g.out_h,
                        g.out_w, g.k_h * g.k_w * g.in_c, 1, 1, 1, 1, 0, 0, 0, 0)


def columns_elements(g: ConvGeometry) -> int:
    return g.batch * g.out_h * g.out_w * g.k_h * g.k_w * g.in_c


def _unsupported(op: str, dtype: np.dtype, g: ConvGeometry, info: DeviceInfo
                 ) -> Optional[str]:
    if dtype not in COLUMN_DTYPES:
        # float16 columns would round each tap's sum before the taps are added.
        return f"col2im computes float32 and float64 only (got {dtype.name})"
    if g.groups != 1:
        return f"col2im computes ungrouped convolutions only (got {g.groups} groups)"
    elements = columns_elements(g)
    if elements > tensors.INT32_LIMIT:
        return f"col2im's columns would hold {elements} elements, more than 2^31 - 1"
    if elements * dtype.itemsize > info.max_mem_alloc_size:
        return (f"col2im's columns need {elements * dtype.itemsize} bytes, more than the "
                f"device's largest buffer ({info.max_mem_alloc_size})")
    return None


def _resolve(config: dict[str, Any], op: str, g: ConvGeometry, info: DeviceInfo
             ) -> dict[str, Any]:
    columns = columns_geometry(g)
    return tile_for(config, columns.out_c, info, columns.in_c, pointwise=True)


def kernel_defines(role: str, defines: dict[str, Any], dtype: Any,
                   g: Optional[ConvGeometry] = None) -> dict[str, Any]:
    """The sum is built for its geometry (see col2im.cl); with no geometry (an offline
    compile) for a k4 s2 transpose to 3 channels.  The other kernels: the plan's."""
    if role != "sum":
        return defines
    if g is None:
        g = ConvGeometry("NHWC", 1, 8, 8, 3, 4, 4, 4, 4, 8, 2, 2, 1, 1, 1, 1, 1, 1)
    built = {**defines, "CO": g.in_c, "K_H": g.k_h, "K_W": g.k_w, "S_H": g.stride_h,
             "S_W": g.stride_w}
    if g.dil_h == g.dil_w == 1:
        built["UNIT_DILATION"] = 1
    return built


class Col2imLaunch:
    """The prepared launches of one col2im plan: the filter packing, the GEMM into
    columns and the sum over taps."""

    def __init__(self, setup: Setup) -> None:
        g, info, context = setup.geometry, setup.info, setup.context
        self.g, self.info = g, info
        columns = columns_geometry(g)
        tn, tm = int(setup.defines["TN"]), int(setup.defines["TM"])
        self.n_out = columns.out_c
        self.n_padded = -(-self.n_out // tn) * tn
        self.plan = forward_plan(columns)  # one phase, one tap
        flags = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
        self.phases = cl.Buffer(context, flags,
                                hostbuf=np.array(self.plan.phases, np.int32).reshape(-1))
        self.taps = cl.Buffer(context, flags,
                              hostbuf=np.array(self.plan.taps, np.int32).reshape(-1))
        self.zero = cl.Buffer(context, flags, hostbuf=np.zeros(max(4, g.out_c), setup.dtype))

        defines = dict(setup.defines)
        if uses_channel_index_loop(info.kind, tn, int(defines["VEC"])):
            defines["CH_INDEX_LOOP"] = 1
        source, name = setup.space.kernel
        self.gemm = TypedKernel(context, source, name, defines, GEMM_ARGS)
        pixels = self.plan.max_pixels(g.batch)
        self.gemm_range = launch_range(info, (self.n_padded // tn, -(-pixels // tm), 1),
                                       setup.local, axis=1)
        pack_source, pack_name = setup.space.helper_kernels["pack"]
        self.packer = TypedKernel(context, pack_source, pack_name, setup.defines, PACK_ARGS)
        self.pack_range = launch_range(info, (g.out_c, self.n_padded // tn), None)
        sum_source, sum_name = setup.space.helper_kernels["sum"]
        self.summer = TypedKernel(context, sum_source, sum_name,
                                  kernel_defines("sum", setup.defines, setup.dtype, g),
                                  SUM_ARGS)
        blocks = -(-g.in_c // SUM_BLOCK)
        work = (blocks * -(-g.in_w // g.stride_w), -(-g.in_h // g.stride_h),
                g.batch * g.stride_h * g.stride_w)
        self.sum_range = ndrange(work, (max(1, min(SUM_GROUP, info.group_limit(0))), 1, 1),
                                 info.kind)
        itemsize = setup.dtype.itemsize
        self.packs = _ScratchPool(context, max(1, g.out_c * self.n_padded) * itemsize)
        self.columns = _ScratchPool(context, max(1, columns_elements(g)) * itemsize)
        self.key = ("col2im", self.plan, tn, self.n_padded, setup.dtype.str)
        self._stamps = itertools.count()

    @property
    def kernels(self) -> tuple:
        """The main kernel first (the one whose built limits a plan checks)."""
        return (self.gemm, self.packer, self.summer)

    def _pack_into(self, queue: cl.CommandQueue, filters: tensors.DeviceTensor,
                   packing: Packing) -> Optional[cl.Event]:
        g = self.g
        if not g.out_c or not self.n_padded:
            return None
        # The filter in TF's layout [k_h, k_w, C_dx, C_dy]: "in" is dx's channels.
        return self.packer.enqueue(queue, *self.pack_range, [
            filters.buffer, *filters.filter_view(), packing.buffer, g.out_c, g.k_w,
            g.in_c, self.n_out, self.n_padded])

    def pack(self, queue: cl.CommandQueue, filters: tensors.DeviceTensor) -> PackedFilters:
        packing = self.packs.new()
        self._pack_into(queue, filters, packing)
        return PackedFilters(packing, next(self._stamps), self.key, finite=True)

    def enqueue(self, queue: cl.CommandQueue, dy: tensors.DeviceTensor, filters: Any,
                dx: tensors.DeviceTensor, timeline: Optional[list] = None) -> cl.Event:
        g = self.g
        if isinstance(filters, PackedFilters):
            if filters.plan_key != self.key:
                raise ValueError("these filters were packed by another plan (another shape, "
                                 "algorithm or configuration): pack them with this plan's "
                                 "prepare_filters")
            packing, scratch = filters.packing, None
        else:
            packing = scratch = self.packs.take(queue)
            event = self._pack_into(queue, filters, packing)
            if timeline is not None and event is not None:
                timeline.append(("pack filter", event))
        columns = self.columns.take(queue)
        n = self.n_out
        column_view = [0, g.out_h * g.out_w * n, g.out_w * n, n, 1]
        event = self.gemm.enqueue(queue, *self.gemm_range, [
            dy.buffer, *dy.activation_view(g.data_format), g.out_h, g.out_w, g.out_c,
            packing.buffer, self.zero, columns.buffer, *column_view, g.batch, n,
            self.n_padded, 1, 1, 1, 1, 0, self.phases, self.taps])
        if timeline is not None:
            timeline.append(("gemm", event))
        event = self.summer.enqueue(queue, *self.sum_range, [
            columns.buffer, dx.buffer, *dx.activation_view(g.data_format), g.in_h, g.in_w,
            g.out_h, g.out_w, g.dil_h, g.dil_w, g.pad_top, g.pad_left, g.batch])
        if timeline is not None:
            timeline.append(("col2im", event))
        self.columns.give(columns, queue, event)
        if scratch is not None:
            self.packs.give(scratch, queue, event)
        return event


ALGORITHM = register(Algorithm(
    name="col2im", prepare=Col2imLaunch, unsupported=_unsupported, resolve=_resolve,
    kernel_geometry=lambda op, g: columns_geometry(g), fallback="direct",
    kernel_defines=kernel_defines,
    doc="one GEMM of dy by every tap's filter slice into columns, then each dx value "
        "adds the columns that land on it (transposes to few channels)"))
