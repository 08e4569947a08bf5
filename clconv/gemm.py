"""Convolutions as register-blocked implicit GEMMs (kernels/gemm_implicit.cl).

The host side plans the GEMM: which output pixels form a *phase*, which filter
taps each phase uses and where each tap reads its source.  The forward conv is
one phase; the input gradient (conv2d_transpose) is one phase per stride
residue, each a dense stride-1 convolution with a sub-filter, so no work goes
to the zeros a stride would insert.  Plans and their device tables are cached
per context and geometry; the filter is packed once per call into panels
contiguous per tile.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyopencl as cl

from clconv import tensors
from clconv.devices import DeviceInfo, Runtime
from clconv.config import split_config
from clconv.programs import dtype_defines, enqueue, get_kernel
from clconv.shapes import ConvGeometry

SOURCE = "gemm_implicit.cl"
FAMILY = "gemm_implicit"


@dataclass(frozen=True)
class GemmPlan:
    """Phases and taps of one GEMM (see the comment at the top of the kernel)."""

    phases: tuple[tuple[int, ...], ...]  # rows, cols, row_start, row_step, col_start, col_step,
    #                                      tap_begin, tap_count
    taps: tuple[tuple[int, ...], ...]  # off_h, off_w, a, b, phase tap_begin, phase tap_count
    src_mul_h: int
    src_mul_w: int

    def max_pixels(self, batch: int) -> int:
        return max((batch * p[0] * p[1] for p in self.phases), default=0)


def _tables(phase_taps: list[list[tuple[int, int, int, int]]]) -> tuple[list, list]:
    """Concatenate per-phase tap lists into tap-table rows; return them and each
    phase's (tap_begin, tap_count)."""
    taps, spans = [], []
    for plist in phase_taps:
        begin = len(taps)
        taps.extend(tap + (begin, len(plist)) for tap in plist)
        spans.append((begin, len(plist)))
    return taps, spans


@functools.lru_cache(maxsize=512)
def forward_plan(g: ConvGeometry) -> GemmPlan:
    """conv2d: one phase over all output pixels; tap (a, b) reads row
    oh*stride - pad + a*dilation."""
    taps = [(-g.pad_top + a * g.dil_h, -g.pad_left + b * g.dil_w, a, b)
            for a in range(g.k_h) for b in range(g.k_w)]
    rows, spans = _tables([taps])
    phase = (g.out_h, g.out_w, 0, 1, 0, 1) + spans[0]
    return GemmPlan((phase,), tuple(rows), g.stride_h, g.stride_w)


def _residue_taps(residue: int, pad: int, k: int, dil: int, stride: int) -> list[tuple[int, int]]:
    """(offset, tap) of the taps whose reads land on real dy pixels for output rows
    R = residue + stride*r: dy row = (R + pad - tap*dil) / stride = r + offset."""
    found = []
    for tap in range(k):
        shifted = residue + pad - tap * dil
        if shifted % stride == 0:
            found.append((shifted // stride, tap))
    return found


@functools.lru_cache(maxsize=512)
def backprop_plan(g: ConvGeometry) -> GemmPlan:
    """Input gradient: one phase per stride residue (ph, pw) of the dx pixels."""
    phase_rows, phase_taps = [], []
    for ph in range(min(g.stride_h, g.in_h)):
        taps_h = _residue_taps(ph, g.pad_top, g.k_h, g.dil_h, g.stride_h)
        for pw in range(min(g.stride_w, g.in_w)):
            taps_w = _residue_taps(pw, g.pad_left, g.k_w, g.dil_w, g.stride_w)
            rows = -(-(g.in_h - ph) // g.stride_h)
            cols = -(-(g.in_w - pw) // g.stride_w)
            phase_rows.append((rows, cols, ph, g.stride_h, pw, g.stride_w))
            phase_taps.append([(oh, ow, a, b) for oh, a in taps_h for ow, b in taps_w])
    taps, spans = _tables(phase_taps)
    phases = tuple(p + s for p, s in zip(phase_rows, spans))
    return GemmPlan(phases, tuple(taps), 1, 1)


def tile_for(config: dict[str, Any], n_out: int, info: DeviceInfo) -> dict[str, Any]:
    """Fill TM/TN/VEC left as "auto".

    TN: the narrowest tile that wastes little on n_out channels; VEC: 8 unless
    configured (16 on AVX-512 builds, see configs/defaults.yaml), never wider
    than TN; TM: 6 pixels.  Measured by the tuner over the suite on both PoCL
    builds: TM=6 beat TM=12 by 1.4-1.7x on narrow layers (Cout = 3) and was the
    most frequent winner elsewhere; VEC=16 won 9 of 11 layers on the AVX-512 build.
    """
    config = dict(config)
    if config.get("TN", "auto") == "auto":
        if n_out <= 4:
            config["TN"] = 4
        elif n_out <= 8 or (n_out % 16 and n_out % 16 <= 8 and n_out < 64):
            config["TN"] = 8
        else:
            config["TN"] = 16
    vec = config.get("VEC", "auto")
    config["VEC"] = min(8 if vec == "auto" else int(vec), int(config["TN"]))
    if config.get("TM", "auto") == "auto":
        config["TM"] = 6
    return config


class _Tables:
    """Device copies of a plan's tables, one per (context, plan)."""

    _lock = threading.Lock()
    _cache: dict[tuple, tuple[cl.Buffer, cl.Buffer]] = {}
    _zeros: dict[tuple, cl.Buffer] = {}

    @classmethod
    def get(cls, rt: Runtime, plan: GemmPlan) -> tuple[cl.Buffer, cl.Buffer]:
        key = (rt.context.int_ptr, plan)
        with cls._lock:
            found = cls._cache.get(key)
        if found is None:
            flags = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR
            phases = np.array(plan.phases, dtype=np.int32).reshape(-1)
            taps = np.array(plan.taps or [(0,) * 6], dtype=np.int32).reshape(-1)
            found = (cl.Buffer(rt.context, flags, hostbuf=phases),
                     cl.Buffer(rt.context, flags, hostbuf=taps))
            with cls._lock:
                if len(cls._cache) > 256:  # plans are small, but shapes can be many
                    cls._cache.clear()
                cls._cache[key] = found
        return found

    _scratch: dict[tuple, tensors.DeviceTensor] = {}

    @classmethod
    def scratch(cls, rt: Runtime, elements: int, dtype: np.dtype) -> tensors.DeviceTensor:
        """The packed-filter buffer, reused by every call on an in-order queue: the next
        call's packing cannot start before this call's GEMM has read it, and reusing
        memory saves the page faults of touching a fresh allocation."""
        in_order = not (rt.queue.properties
                        & cl.command_queue_properties.OUT_OF_ORDER_EXEC_MODE_ENABLE)
        key = (rt.queue.int_ptr, np.dtype(dtype).str)
        with cls._lock:
            found = cls._scratch.get(key) if in_order else None
            if found is None or found.size < elements:
                found = tensors.empty_output((elements,), np.dtype(dtype), rt.queue, rt.info,
                                             zero=False)
                if in_order:
                    cls._scratch[key] = found
        return found

    @classmethod
    def zero(cls, rt: Runtime, dtype: np.dtype) -> cl.Buffer:
        """A one-element zero buffer that rows outside the source read instead."""
        key = (rt.context.int_ptr, np.dtype(dtype).str)
        with cls._lock:
            buf = cls._zeros.get(key)
            if buf is None:
                buf = cl.Buffer(rt.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
                                hostbuf=np.zeros(4, dtype=dtype))
                cls._zeros[key] = buf
        return buf


def _pack_local(ch_count: int, info: DeviceInfo) -> Optional[tuple[int, int, int]]:
    """Work-groups of many consecutive channels, so that the filter lines each
    work-item touches are shared by its neighbours (OpenCL 1.2: it must divide)."""
    size = 1
    while size < 64 and ch_count % (size * 2) == 0 and size * 2 <= info.max_work_group_size:
        size *= 2
    return (size, 1, 1) if size > 1 else None


def run_gemm(rt: Runtime, plan: GemmPlan, src: tensors.DeviceTensor, src_format: str,
             src_hw: tuple[int, int], ch_count: int, filt: tensors.DeviceTensor,
             filt_view: list, y: tensors.DeviceTensor, y_format: str, batch: int, n_out: int,
             config: dict[str, Any], timeline: Optional[list] = None) -> cl.Event:
    """Pack the filter for ``plan`` and run the implicit GEMM into ``y``.

    ``timeline``, if given, receives (phase name, cl.Event) pairs for profiling.
    """
    config = tile_for(config, n_out, rt.info)
    defines, local = split_config(config)
    defines.update(dtype_defines(src.dtype))
    tn = int(defines["TN"])
    tm = int(defines["TM"])
    n_padded = -(-n_out // tn) * tn
    phases_buf, taps_buf = _Tables.get(rt, plan)
    total_k = len(plan.taps) * ch_count
    i32 = np.int32

    packed = _Tables.scratch(rt, max(1, total_k * n_padded), src.dtype)
    if total_k:
        pack = get_kernel(rt.context, SOURCE, "pack_filter", defines)
        event = enqueue(rt.queue, pack, (ch_count, n_padded // tn, len(plan.taps)),
                        _pack_local(ch_count, rt.info),
                        [filt.buffer, *filt_view, taps_buf, packed.buffer, i32(ch_count),
                         i32(n_out), i32(n_padded)])
        if timeline is not None:
            timeline.append(("pack filter", event))

    gemm = get_kernel(rt.context, SOURCE, "gemm_implicit", defines)
    event = enqueue(rt.queue, gemm,
                    (n_padded // tn, -(-plan.max_pixels(batch) // tm), len(plan.phases)), local,
                    [src.buffer, *src.activation_view(src_format), i32(src_hw[0]),
                     i32(src_hw[1]), i32(ch_count), packed.buffer, _Tables.zero(rt, src.dtype),
                     y.buffer, *y.activation_view(y_format), i32(batch), i32(n_out),
                     i32(n_padded), i32(plan.src_mul_h), i32(plan.src_mul_w), phases_buf,
                     taps_buf])
    if timeline is not None:
        timeline.append(("gemm", event))
    return event


def conv2d_gemm(rt: Runtime, x: tensors.DeviceTensor, w: tensors.DeviceTensor,
                y: tensors.DeviceTensor, g: ConvGeometry, config: dict[str, Any],
                timeline: Optional[list] = None) -> cl.Event:
    """y = conv2d(x, w) for ungrouped g."""
    return run_gemm(rt, forward_plan(g), x, g.data_format, (g.in_h, g.in_w), g.in_c, w,
                    w.filter_view(), y, g.data_format, g.batch, g.out_c, config,
                    timeline)


def backprop_gemm(rt: Runtime, dy: tensors.DeviceTensor, w: tensors.DeviceTensor,
                  dx: tensors.DeviceTensor, g: ConvGeometry,
                  config: Optional[dict[str, Any]], timeline: Optional[list] = None) -> cl.Event:
    """dx of the conv g: per stride phase, a GEMM over the taps that reach real dy pixels.
    The filter view swaps in/out: B[k=(tap, co), n=ci] = w[a, b, ci, co]."""
    offset, s_a, s_b, s_in, s_out = w.filter_view()
    swapped = [offset, s_a, s_b, s_out, s_in]
    return run_gemm(rt, backprop_plan(g), dy, g.data_format, (g.out_h, g.out_w), g.out_c, w,
                    swapped, dx, g.data_format, g.batch, g.in_c, config or {}, timeline)
