"""Convolutions as register-blocked implicit GEMMs (kernels/gemm_implicit.cl).

The host side plans the GEMM: which output pixels form a *phase*, which filter
taps each phase uses and where each tap reads its source.  The forward conv is
one phase; the input gradient (conv2d_transpose) is one phase per stride
residue, each a dense stride-1 convolution with a sub-filter, so no work goes
to the zeros a stride would insert.  A 3-D conv (ConvGeometry.depth) is the same
with depth taps and, for the input gradient, depth residues too.  A ConvPlan
prepares the tables and kernels once (GemmLaunch); each call packs the filter
into panels contiguous per tile, unless the caller packed it once with
``prepare_filters``.
"""

from __future__ import annotations

import functools
import itertools
import threading
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import pyopencl as cl

from clconv import column_merge, tensors
from clconv.cpu_vectors import vector_registers, vector_width
from clconv.device_select import DeviceInfo
from clconv.programs import INDEX, TypedKernel, launch_range
from clconv.registry import Algorithm, Setup, register
from clconv.shapes import ConvGeometry

# float16 is storage: loaded with vload_half, packed and accumulated in float.
GEMM_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
PACKED_DTYPE = {np.dtype(np.float16): np.dtype(np.float32)}  # else the tensor's own


@dataclass(frozen=True)
class GemmPlan:
    """Phases and taps of one GEMM (see the comment at the top of the kernel)."""

    phases: tuple[tuple[int, ...], ...]  # rows, cols, row_start, row_step, col_start, col_step,
    #                                      tap_begin, tap_count, depths, d_start, d_step
    taps: tuple[tuple[int, ...], ...]  # off_h, off_w, a, b, phase tap_begin, phase tap_count,
    #                                    off_d
    src_mul_h: int
    src_mul_w: int
    src_mul_d: int = 0  # a phase's j-th depth reads source depth j * src_mul_d + off_d

    def max_pixels(self, batch: int) -> int:
        return max((batch * p[0] * p[1] * p[8] for p in self.phases), default=0)


def _tables(phase_taps: list[list[tuple[int, ...]]]) -> tuple[list, list]:
    """Concatenate per-phase tap lists, (off_h, off_w, a, b[, off_d]) each, into
    tap-table rows; return them and each phase's (tap_begin, tap_count)."""
    taps, spans = [], []
    for plist in phase_taps:
        begin = len(taps)
        taps.extend(tap[:4] + (begin, len(plist), tap[4] if len(tap) > 4 else 0)
                    for tap in plist)
        spans.append((begin, len(plist)))
    return taps, spans


@functools.lru_cache(maxsize=512)
def forward_plan(g: ConvGeometry) -> GemmPlan:
    """conv2d: one phase over all output pixels; tap (a, b) reads row
    oh*stride - pad + a*dilation.  A 3-D conv (g.depth) has kd x kh x kw taps, depth
    tap e reading depth od*stride - pad + e*dilation; the kernel sees the filter
    [kd, kh, kw, ...] as [kd * kh, kw, ...], so its row tap is e * kh + a.  The depth
    taps are innermost: the packed panels then hold K in the order of a 2-D conv over
    the depth-stacked input (clconv.depth), whose tuning the plan shares."""
    d = g.depth
    depth_taps = [(-d.pad_front + e * d.dil_d, e) for e in range(d.k_d)] if d else [(0, 0)]
    taps = [(-g.pad_top + a * g.dil_h, -g.pad_left + b * g.dil_w, e * g.k_h + a, b, off_d)
            for a in range(g.k_h) for b in range(g.k_w) for off_d, e in depth_taps]
    rows, spans = _tables([taps])
    phase = (g.out_h, g.out_w, 0, 1, 0, 1) + spans[0] + (g.out_planes, 0, 1)
    return GemmPlan((phase,), tuple(rows), g.stride_h, g.stride_w, d.stride_d if d else 0)


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
    """Input gradient: one phase per stride residue (ph, pw) of the dx pixels, and for
    a 3-D conv (g.depth) per residue pd of the dx depths too: its depths pd + j*stride
    read dy depth j + off_d through depth tap e (row tap e * kh + a, as forward_plan)."""
    d = g.depth
    depth_residues = range(min(d.stride_d, d.in_d)) if d else [0]
    phase_rows, phase_taps, depth_fields = [], [], []
    for pd in depth_residues:
        taps_d = _residue_taps(pd, d.pad_front, d.k_d, d.dil_d, d.stride_d) if d else [(0, 0)]
        depths = -(-(d.in_d - pd) // d.stride_d) if d else 1
        for ph in range(min(g.stride_h, g.in_h)):
            taps_h = _residue_taps(ph, g.pad_top, g.k_h, g.dil_h, g.stride_h)
            for pw in range(min(g.stride_w, g.in_w)):
                taps_w = _residue_taps(pw, g.pad_left, g.k_w, g.dil_w, g.stride_w)
                rows = -(-(g.in_h - ph) // g.stride_h)
                cols = -(-(g.in_w - pw) // g.stride_w)
                phase_rows.append((rows, cols, ph, g.stride_h, pw, g.stride_w))
                phase_taps.append([(oh, ow, e * g.k_h + a, b, od) for od, e in taps_d
                                   for oh, a in taps_h for ow, b in taps_w])
                depth_fields.append((depths, pd, d.stride_d if d else 1))
    taps, spans = _tables(phase_taps)
    phases = tuple(p + s + f for p, s, f in zip(phase_rows, spans, depth_fields))
    return GemmPlan(phases, tuple(taps), 1, 1, 1)


def _fits_registers(tm: int, tn: int, vec: int, info: DeviceInfo) -> bool:
    """TM*TN/VEC accumulators, TN/VEC filter vectors and one broadcast input in the
    register file (the rule of configs/gemm_implicit.yaml's accumulators_in_registers)."""
    return tm * (tn // vec) + tn // vec + 1 <= vector_registers(info)


_NOT_PROBED = "not probed"


def _chain_speedup(info: DeviceInfo) -> Any:
    """clconv.fma_probe's 6-chain / 12-chain time on ``info``'s device (None if the probe
    could not run; probed once per process), or _NOT_PROBED where it does not concern
    the device: only CPUs with 16-wide vectors, judged on the real device (a DeviceInfo
    edited by a caller does not start a probe on a simulator)."""
    if info.kind != "CPU" or vector_width(info) < 16:
        return _NOT_PROBED
    from clconv import fma_probe
    from clconv.device_select import enumerated

    pair = enumerated(info.spec)  # the same lookup as cpu_vectors.compiled_width
    if pair is None or pair[1].kind != "CPU" or vector_width(pair[1]) < 16:
        return _NOT_PROBED
    return fma_probe.chain_speedup(pair[0], info.spec)


def _two_wide_fma_pipes(info: DeviceInfo) -> bool:
    """Whether ``info``'s device is a CPU with 16-wide vectors whose cores need more than
    six FMA chains."""
    from clconv.fma_probe import TWO_PIPES_RATIO

    ratio = _chain_speedup(info)
    return isinstance(ratio, float) and ratio >= TWO_PIPES_RATIO


def tile_rule(info: DeviceInfo) -> Optional[str]:
    """One line on which default GEMM tile this CPU device gets and why (for reports),
    or None for devices the FMA probe does not concern."""
    from clconv.fma_probe import TWO_PIPES_RATIO

    ratio = _chain_speedup(info)
    if ratio is _NOT_PROBED:
        return None
    if ratio is None:
        return "FMA chains: not measured (the probe did not run); 6 x 16 GEMM tiles"
    return (f"FMA chains: 12 independent chains ran {ratio:.2f}x as fast as 6 "
            f"(clconv.fma_probe; >= {TWO_PIPES_RATIO} means two 512-bit pipes): "
            + ("6 x 32 GEMM tiles for 17-32 channels and multiples of 32, 6 x 48 for other "
               f"multiples of 48, 4 x 64 for multiples of 64 from <= {FEW_SOURCE_CHANNELS} "
               "channels"
               if _two_wide_fma_pipes(info) else "6 x 16 GEMM tiles"))


# Source channels per tap up to which a GEMM with few channels gets 4 x 64 tiles (see
# tile_for).
FEW_SOURCE_CHANNELS = 16
# Source channels up to which a 1x1 conv on an AVX2 core gets 2 x 32 tiles (tile_for).
POINTWISE_FEW_CHANNELS = 32
# ... and on an AVX-512 core with one 512-bit FMA pipe, 4 x 64 or 4 x 48 tiles.
POINTWISE_AVX512_CHANNELS = 64


def _tm_for_three_vectors(config: dict[str, Any], info: DeviceInfo) -> int:
    """TM for a tile of three 8-wide vectors: the configuration's, or 6 where 6 x 24
    fits the vector registers (AVX-512) and 4 where it does not (AVX2)."""
    if config.get("TM", "auto") != "auto":
        return int(config["TM"])
    return 6 if _fits_registers(6, 24, 8, info) else 4


def tile_for(config: dict[str, Any], n_out: int, info: DeviceInfo,
             ch_count: Optional[int] = None, pointwise: bool = False,
             reduction: Optional[int] = None, pixels: Optional[int] = None
             ) -> dict[str, Any]:
    """Fill TM/TN/VEC left as "auto" for a GEMM of ``n_out`` output channels that reads
    ``ch_count`` source channels per tap (None: not known), over one tap if
    ``pointwise`` (a 1x1 filter), with a reduction of ``reduction`` (taps x channels
    of a stride phase, on average) over ``pixels`` output pixels a phase (None: not
    known).

    On cores with two 512-bit FMA pipes, 4 x 64 for multiples of 64 read from at most
    FEW_SOURCE_CHANNELS channels per tap; on AVX2 cores, 2 x 32 for 1x1 convs over at
    most POINTWISE_FEW_CHANNELS channels to multiples of 32; on other AVX-512 cores,
    4 x 64 / 4 x 48 for 1x1 convs over at most POINTWISE_AVX512_CHANNELS channels to
    multiples of 64 / 48.  Otherwise TN: the
    narrowest tile that wastes little on n_out channels, or on such cores 32 (48 for
    multiples of 48 that are not of 32); VEC: the device's vector width
    (``vector_width``), never wider than TN; TM: 6 pixels (4 for tiles of three 8-wide
    vectors on AVX2; 12 for 32-wide tiles on two-pipe cores over a reduction of
    DEEP_REDUCTION or more and DEEP_MIN_PIXELS pixels a phase, where shorter known
    reductions to multiples of 64 take 6 x 64).  Measured by the tuner
    over the suite on both PoCL builds: TM=6 beat TM=12 by 1.4-1.7x on narrow layers
    (Cout = 3) and was the most frequent winner elsewhere.
    """
    config = dict(config)
    width = vector_width(info)
    whole_tile_auto = all(config.get(key, "auto") == "auto" for key in ("TM", "TN", "VEC"))
    if (whole_tile_auto
            and ch_count is not None and ch_count <= FEW_SOURCE_CHANNELS and n_out % 64 == 0
            and width >= 16 and _two_wide_fma_pipes(info)):
        # Few channels per tap (a stem over RGB, an early layer): each tap's channel
        # loop is short, so what a tile pays per tap (a row pointer and bounds for each
        # of its TM pixels) and per channel step (TM broadcasts for TM x TN/VEC FMAs)
        # weighs.  4 x 64 halves both per FMA against 6 x 32.  Zen 5, Debian PoCL,
        # prepared filters, ten alternated rounds, time relative to 6 x 32: a 7x7 s2 stem
        # 3 -> 64 0.59-0.62, 3x3 3 -> 64 0.57, 4 -> 128 0.76, 8 -> 64 0.72, 16 -> 64 0.83,
        # a 1x1 8 -> 64 0.62; from 32 source channels on 0.96-0.98 (and 0.65-1.61 from one
        # run to the next in an earlier sweep: no rule there).
        config.update(TM=4, TN=64, VEC=16)
        return config
    if (whole_tile_auto
            and pointwise and ch_count is not None and ch_count <= POINTWISE_FEW_CHANNELS
            and n_out % 32 == 0 and info.kind == "CPU" and width == 8):
        # A 1x1 conv over few channels on an AVX2 core (16 vector registers): a short
        # K loop, so a tile's set-up (a row pointer and bounds per pixel) weighs, and
        # 2 x 32 pays it for 64 outputs where 6 x 16 pays three times as much for 96.
        # Zen 3, prepared filters, seven alternated rounds, time relative to 6 x 16
        # (Debian PoCL; pip PoCL): 16 -> 96 0.67; 0.56, 32 -> 64 0.84; 0.92, 32 -> 128
        # 0.79; 0.76, 32 -> 192 0.79; 0.77; from 64 channels 0.90-1.03, and 3x3 convs
        # over 16-64 channels 1.03-1.18 (their K loop is long enough).
        config.update(TM=2, TN=32, VEC=8)
        return config
    if (whole_tile_auto
            and pointwise and ch_count is not None and ch_count <= POINTWISE_AVX512_CHANNELS
            and (n_out % 64 == 0 or n_out % 48 == 0) and info.kind == "CPU" and width >= 16
            and not _two_wide_fma_pipes(info)):
        # The same on an AVX-512 core with one 512-bit FMA a cycle (Zen 4): a 1x1 conv
        # over few channels runs fastest with the widest tile row that leaves no channel
        # padded, 4 x 64 (21 registers of 32) or 4 x 48.  Zen 4, Debian PoCL, prepared
        # filters, seven alternated rounds, time relative to 6 x 16: 32 -> 192 0.79,
        # 32 -> 128 0.88, 32 -> 64 0.89, 64 -> 128 0.86, 16 -> 96 (4 x 48) 0.64, 24 -> 144
        # (4 x 48) 0.79; 128 -> 256 0.98 and a 3x3 over 32 channels 0.95 (no rule there),
        # and a 64-wide tile on 96 or 144 channels 1.12-1.17 (padding).
        config.update(TM=4, TN=64 if n_out % 64 == 0 else 48, VEC=16)
        return config
    if config.get("TN", "auto") == "auto":
        three_vectors_tm = _tm_for_three_vectors(config, info)
        if n_out <= 4:
            config["TN"] = 4
        elif (n_out % 32 == 0 or 16 < n_out < 32) and config.get("VEC", "auto") == "auto" \
                and _two_wide_fma_pipes(info):
            # Twelve accumulators (6 x 32) where six (6 x 16) keep only three quarters of
            # two 512-bit FMA pipes busy (clconv.fma_probe).  Zen 5, Debian PoCL, time
            # relative to 6 x 16 on the 14 suite and unseen layers with such channel
            # counts: 0.67-0.80, one at 0.96; 21 channels (fcn8s_up8) 0.69, where
            # TN 24 / VEC 8 ran 0.92 (docs/cpu-performance.md).
            config["TN"] = 32
            twenty_four = (n_out % 32 == 0 and reduction is not None
                           and (pixels or 0) >= DEEP_MIN_PIXELS
                           and config.get("TM", "auto") == "auto")
            if twenty_four and reduction >= DEEP_REDUCTION and _fits_registers(12, 32, 16, info):
                # A long reduction: 12 x 32, 24 accumulators, each filter load feeding
                # twice the FMAs.  Intel Xeon with AMX (family 6 model 167), time against
                # 6 x 32, five alternated rounds, Debian PoCL; pip PoCL: K 1024-4800 (six
                # suite and unseen layers) 0.91-0.96; 0.93-1.04; K 576 0.95-1.02, and from
                # 512 down 0.98-1.19 (a transpose's 1x1 phases over 512 channels 1.16);
                # gan_tiny_b1 (16 pixels a phase, K 2048) 1.51.
                config["TM"] = 12
            elif (twenty_four and reduction < DEEP_REDUCTION and n_out % 64 == 0
                    and _fits_registers(6, 64, 16, info)):
                # Shorter reductions to multiples of 64: 6 x 64, also 24 accumulators,
                # each input broadcast feeding four FMAs.  The same Xeon, time against
                # 6 x 32, five alternated rounds, Debian PoCL; pip PoCL, the 13 suite and
                # unseen layers with K 32-576: geometric mean 0.94; 0.94, range 0.84-1.02;
                # 0.90-1.01.  Over K 2304 (deeplab, vgg_conv3) it ran 1.08-1.14x the time
                # of 12 x 32, over gan_tiny_b1's 16 pixels a phase 1.87x that of 6 x 32.
                config["TN"] = 64
        elif n_out % 48 == 0 and config.get("VEC", "auto") == "auto" and width >= 16 \
                and _two_wide_fma_pipes(info):
            # 48, 144, 240 ... channels (multiples of 16, not of 32): 6 x 48, eighteen
            # accumulators and no channel padding, where 6 x 16 kept six and read each
            # input row three times.  Zen 5, Debian PoCL, time relative to 6 x 16: a 1x1
            # 32 -> 48 0.67-0.92, a 1x1 144 -> 48 0.48, a 3x3 64 -> 48 0.66, a k4 s2
            # transpose to 48 0.70.
            config["TN"] = 48
        elif 16 < n_out < 32 and width >= 8 and config.get("VEC", "auto") == "auto" \
                and _fits_registers(three_vectors_tm, -(-n_out // 8) * 8, 8, info):
            # A few more channels than a 16-wide tile: one tile of 8-wide vectors covers
            # them (fcn8s_up8's 21 channels: TN 24 / VEC 8 ran 1.35-1.66x faster than
            # TN 8 on both PoCLs of a Zen 4), each input value feeding TN/8 FMAs.  With 16
            # vector registers (AVX2) 4 pixels a tile, not 6: a 1x1 96 -> 24 on a Zen 3
            # ran 0.63x the time of 6 x 8 and 6 x 16 on both PoCLs.
            config["TN"], config["VEC"] = -(-n_out // 8) * 8, 8
            config["TM"] = three_vectors_tm
        elif n_out <= 8 or (n_out % 16 and n_out % 16 <= 8 and n_out < 64):
            config["TN"] = 8
        else:
            config["TN"] = 16
    vec = config.get("VEC", "auto")
    config["VEC"] = min(width if vec == "auto" else int(vec), int(config["TN"]))
    if config.get("TM", "auto") == "auto":
        config["TM"] = 6
    return config


# A GEMM reduction (taps x channels a phase) from which, on cores with two 512-bit FMA
# pipes, tiles of 32 channels are 12 pixels deep (tile_for).
DEEP_REDUCTION = 1024
# ... over this many output pixels a phase or more: a deeper tile pads a phase's last
# tile and halves the work-items the cores share.
DEEP_MIN_PIXELS = 256


def uses_channel_index_loop(kind: str, tn: int, vec: int) -> bool:
    """Whether a GEMM build gets the shared channel-index inner loop (see the kernel).

    Not on GPUs: on AMD gfx90a the second loop cost 62 -> 84 VGPRs for nothing a GPU
    needs.  On CPUs, not for tiles of three vectors a row, the one shape where it lost,
    on a Zen 4 and a Zen 5 alike (loop / old loop, prepared filters, Debian PoCL, Zen 5):
    TN 24 / VEC 8 1.11-1.21 (fcn8s_up8) and 1.16 (a 1x1 over 48 channels), TN 48 /
    VEC 16 1.09; elsewhere it is what TM 8 and above need not to spill, and measured
    TN 4 / VEC 4 0.93-0.96 (dcgan_g4), TN 8 and 16 / VEC 8 0.92-1.05, TN 32 / VEC 16
    1.00-1.02."""
    return kind != "GPU" and tn // vec != 3


# A GEMM asks for its tile's output lines before computing it (the kernel's
# PREFETCH_OUTPUT) where a phase's pixels lie this many apart along the output row or
# more, a stride no CPU prefetcher of ours followed, ...
PREFETCH_MIN_SPACING = 4
# ... and a phase's reduction (taps x channels, on average) is at least this long:
# below it the prefetches' own instructions, a fixed few a pixel, cost more than the
# wait they save.
PREFETCH_MIN_REDUCTION = 64


def prefetches_output(kind: str, plan: GemmPlan, ch_count: int, channel_tiles: int) -> bool:
    """Whether a GEMM build prefetches its tiles' output (see the kernel).

    In-process A/B on a Zen 4 (family 25 model 17), Debian PoCL, two plans per shape
    (one without the prefetch), seven to eleven alternated rounds, old/new time:
    fcn8s_up8 (stride 8, K = 84, one channel tile) 1.26-1.38 and 1.24 on pip PoCL; an
    8x8 s4 transpose 1x128x128x21 -> 21 (K = 84) 1.08-1.16.  Left out by the rule:
    outputs of several channel tiles (a CPU group usually holds every channel tile of
    its pixels, so their lines are written in order, which the prefetchers follow:
    segnet_up4 and an 8x8 s4 transpose to 64 channels 0.98-1.01, the HiFi-GAN s8
    upsamplers 0.96-1.02, 0.96 twice on pip PoCL; where a filter past a core's cache
    gives groups of one channel tile (programs.cpu_local_size), an Intel Xeon of family
    6 model 167 ran 0.94-1.01 with the prefetch, not measured elsewhere), stride 2
    (fourteen transposes 0.96-1.06, no pattern beyond this machine's noise), forward
    convs (adjacent pixels: 0.98-0.99) and an 8x8 s8 transpose to 8 channels (K = 32:
    0.93).  Not on GPUs, which have no such prefetch.
    """
    phases = [p for p in plan.phases if p[7] > 0]  # p[5]: col_step, p[7]: tap_count
    if kind != "CPU" or channel_tiles != 1 or not phases:
        return False
    reduction = sum(p[7] for p in phases) * ch_count / len(phases)
    return (min(p[5] for p in phases) >= PREFETCH_MIN_SPACING
            and reduction >= PREFETCH_MIN_REDUCTION)


# Argument types of the two kernels (None: a buffer), in their signatures' order.
_I = np.int32
_VIEW = [INDEX] * 5  # TENSOR_ARGS: offset and four strides
PACK_ARGS = [None, *_VIEW, None, None, _I, _I, _I, None, _I]
GEMM_ARGS = [None, *_VIEW, _I, _I, _I, None, None, None, *_VIEW, _I, _I, _I, _I, _I, _I, _I,
             _I, None, None]
CAREFUL_ARGS = [*GEMM_ARGS, None, _I]
SCRATCH_KEEP_BYTES = 64 << 20  # larger packed filters are not kept between calls
SCRATCH_KEEP_COUNT = 2  # packed-filter buffers a plan keeps for reuse


def _pack_local(ch_count: int, info: DeviceInfo) -> Optional[tuple[int, int, int]]:
    """Work-groups of many consecutive channels, so that the filter lines each
    work-item touches are shared by its neighbours (OpenCL 1.2: it must divide)."""
    size = 1
    while size < 64 and ch_count % (size * 2) == 0 and size * 2 <= info.max_work_group_size:
        size *= 2
    return (size, 1, 1) if size > 1 else None


@dataclass(frozen=True)
class Packing:
    """A packed-filter buffer and its non-finite flag (see the kernel's header)."""

    buffer: cl.Buffer
    flag: cl.Buffer  # pack_filter raises it to the stamp of a packing with Inf or NaN


@dataclass(frozen=True)
class PackedFilters:
    """A filter packed for one GEMM plan (``ConvPlan.prepare_filters``)."""

    packing: Packing
    stamp: int
    plan_key: tuple  # what the packing depends on: the GEMM's tables and tile
    finite: bool  # no Inf or NaN in it: the gradient needs no careful pass


class _ScratchPool:
    """The packed-filter buffers of one plan.

    A call takes a buffer, packs into it, runs its GEMM and gives it back.  A
    buffer given back on an in-order queue can be taken again at once by a call
    on that same queue (the queue orders the next packing after this GEMM); on
    any other queue only once that GEMM has finished.  So concurrent calls never
    share a buffer they could both be using, and a busy loop reuses one buffer
    instead of touching fresh memory each time.
    """

    def __init__(self, context: cl.Context, nbytes: int) -> None:
        self.context, self.nbytes = context, nbytes
        self._free: list[tuple[Packing, cl.CommandQueue, cl.Event]] = []
        self._lock = threading.Lock()

    def new(self) -> Packing:
        flags = cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR
        return Packing(cl.Buffer(self.context, cl.mem_flags.READ_WRITE, self.nbytes),
                       cl.Buffer(self.context, flags, hostbuf=np.zeros(1, np.int32)))

    def take(self, queue: cl.CommandQueue) -> Packing:
        done = cl.command_execution_status.COMPLETE
        with self._lock:
            for i, (packing, owner, event) in enumerate(self._free):
                if (owner.int_ptr == queue.int_ptr and _in_order(owner)) or \
                        event.command_execution_status == done:
                    del self._free[i]
                    return packing
        return self.new()

    def give(self, packing: Packing, queue: cl.CommandQueue, event: cl.Event) -> None:
        if self.nbytes > SCRATCH_KEEP_BYTES:
            return
        with self._lock:
            if len(self._free) < SCRATCH_KEEP_COUNT:
                self._free.append((packing, queue, event))


def _in_order(queue: cl.CommandQueue) -> bool:
    return not (queue.properties & cl.command_queue_properties.OUT_OF_ORDER_EXEC_MODE_ENABLE)


class GemmLaunch:
    """The prepared launches of one GEMM plan: tables, typed kernels, NDRanges.

    The tables and the packing are shared with the tiled family (clconv.tiled), which
    brings its own main kernel and careful pass: ``_prepare_packing`` then ``gemm``,
    ``gemm_range`` and ``careful_range``.
    """

    def __init__(self, setup: Setup) -> None:
        tn, tm = int(setup.defines["TN"]), int(setup.defines["TM"])
        self._prepare_packing(setup, tn, setup.defines)
        source, name = setup.space.kernel
        defines = dict(setup.defines)
        if uses_channel_index_loop(setup.info.kind, tn, int(defines["VEC"])):
            defines["CH_INDEX_LOOP"] = 1
        if prefetches_output(setup.info.kind, self.plan, self.ch_count, self.n_padded // tn):
            defines["PREFETCH_OUTPUT"] = 1
        if self.n_out % tn:  # the last channel tile's stores, known at build (the kernel)
            defines["OUT_TAIL"] = self.n_out % tn
        if not self.forward:  # a gradient skips the taps that land outside dy (the kernel)
            defines["SKIP_OUTSIDE_TAPS"] = 1
        if self.g.groups > 1:  # each tile reads its group's input channels
            defines["GROUP_OUT"] = self.g.out_c // self.g.groups
        self.gemm = TypedKernel(setup.context, source, name, defines, GEMM_ARGS)
        pixels = self.plan.max_pixels(self.g.batch)
        # One channel tile's panel of one phase, on average over the phases: whether a
        # CPU group's filter stays in a core's cache (programs.cpu_local_size).
        slice_bytes = (self.total_k * tn * self.packed_itemsize
                       // max(1, len(self.plan.phases)))
        self.gemm_range = launch_range(
            setup.info, (self.n_padded // tn, -(-pixels // tm), len(self.plan.phases)),
            setup.local, axis=1, slice_bytes=slice_bytes)
        self.careful_range = self.gemm_range

    @property
    def kernels(self) -> tuple:
        """The main kernel first (the one whose built limits a plan checks)."""
        return ((self.gemm, self.packer) + ((self.careful,) if self.careful else ())
                + ((self.columns.kernel,) if self.columns else ()))

    def _prepare_packing(self, setup: Setup, tn: int, pack_defines: dict[str, Any],
                         careful_defines: Optional[dict[str, Any]] = None) -> None:
        """Tables, the filter packing into panels ``tn`` wide (built with
        ``pack_defines``), its scratch pool, the gradient's careful pass (built with
        ``careful_defines``, default the plan's own) and a few-channel conv's column
        padding."""
        g, info, context = setup.geometry, setup.info, setup.context
        self.forward = setup.op == "conv2d"
        # A few-channel forward conv reads its width taps as one run of channels from a
        # column-padded copy (clconv.column_merge): the GEMM runs the virtual conv; the
        # filter is packed with the conv's own taps, into the same panels.
        merged = column_merge.merged_geometry(g, info) if self.forward else None
        self.columns = None
        if merged is not None:
            self.columns = column_merge.ColumnPadding(
                setup, setup.space.helper_kernels["pad_columns"],
                column_merge.pad_defines(setup.defines, setup.dtype), g, merged)
        kernel_g = merged or g
        pack_plan = forward_plan(g) if self.forward else backprop_plan(g)
        self.plan = forward_plan(merged) if merged is not None else pack_plan
        self.g = g
        # GEMM shape: source (x or dy), its channels, and the N (output channels) side.
        self.src_hw = (kernel_g.in_h, kernel_g.in_w) if self.forward else (g.out_h, g.out_w)
        self.src_out_depths = (g.in_planes, g.out_planes) if self.forward \
            else (g.out_planes, g.in_planes)
        self.ch_count = kernel_g.in_c // g.groups if self.forward else g.out_c
        pack_ch_count = g.in_c // g.groups if self.forward else g.out_c
        self.n_out = g.out_c if self.forward else g.in_c
        self.n_padded = -(-self.n_out // tn) * tn
        self.total_k = len(self.plan.taps) * self.ch_count

        flags = cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR

        def tap_table(plan: GemmPlan) -> cl.Buffer:
            return cl.Buffer(context, flags, hostbuf=np.array(
                plan.taps or [(0,) * 7], np.int32).reshape(-1))

        self.phases = cl.Buffer(context, flags,
                                hostbuf=np.array(self.plan.phases, np.int32).reshape(-1))
        self.taps = tap_table(self.plan)
        self.pack_taps = self.taps if pack_plan is self.plan else tap_table(pack_plan)
        self.pack_ch_count = pack_ch_count
        self.zero = cl.Buffer(context, flags, hostbuf=np.zeros(max(4, self.ch_count), setup.dtype))
        packed_dtype = PACKED_DTYPE.get(setup.dtype, setup.dtype)
        self.packed_itemsize = packed_dtype.itemsize
        self.scratch = _ScratchPool(context, max(1, self.total_k * self.n_padded)
                                    * packed_dtype.itemsize)
        self.key = (self.plan, tn, self.n_padded, setup.dtype.str)
        self._stamps = itertools.count()

        # TF's conv2d multiplies its zero padding; its input gradient skips outside taps,
        # which matters only for a filter with Inf or NaN: a second, careful pass.
        self.careful = None
        if not self.forward:
            careful_source, careful_name = setup.space.helper_kernels["careful"]
            self.careful = TypedKernel(context, careful_source, careful_name,
                                       careful_defines or setup.defines, CAREFUL_ARGS)
        pack_source, pack_name = setup.space.helper_kernels["pack"]
        self.packer = TypedKernel(context, pack_source, pack_name, pack_defines, PACK_ARGS)
        self.pack_range = launch_range(
            info, (pack_ch_count, self.n_padded // tn, len(pack_plan.taps)),
            _pack_local(pack_ch_count, info))

    def _filter_view(self, filters: tensors.DeviceTensor) -> list[int]:
        if self.g.depth is not None:
            filters = filters.merged(0)  # [kd, kh, ...] as [kd * kh, ...]: see forward_plan
        offset, s_a, s_b, s_in, s_out = filters.filter_view()
        # The input gradient reads the filter with in/out swapped:
        # B[k=(tap, co), n=ci] = w[a, b, ci, co].
        return [offset, s_a, s_b, s_in, s_out] if self.forward else [offset, s_a, s_b, s_out,
                                                                      s_in]

    def _stamp(self) -> int:
        """A number no earlier packing into any of this plan's buffers used (2^31 - 1
        packings per plan before one comes round again)."""
        return next(self._stamps) % tensors.INT32_LIMIT + 1

    def _pack_into(self, queue: cl.CommandQueue, filters: tensors.DeviceTensor,
                   packing: Packing, stamp: int) -> Optional[cl.Event]:
        if not self.total_k:
            return None
        return self.packer.enqueue(queue, *self.pack_range, [
            filters.buffer, *self._filter_view(filters), self.pack_taps, packing.buffer,
            self.pack_ch_count, self.n_out, self.n_padded, packing.flag, stamp])

    def pack(self, queue: cl.CommandQueue, filters: tensors.DeviceTensor) -> PackedFilters:
        """Pack once, and find out (one read of the flag) whether the careful pass will
        ever be needed with this packing."""
        packing, stamp = self.scratch.new(), self._stamp()
        self._pack_into(queue, filters, packing, stamp)
        flag = np.zeros(1, np.int32)
        cl.enqueue_copy(queue, flag, packing.flag)  # blocking: the packing is done
        return PackedFilters(packing, stamp, self.key, finite=int(flag[0]) != stamp)

    def enqueue(self, queue: cl.CommandQueue, src: tensors.DeviceTensor, filters: Any,
                out: tensors.DeviceTensor, timeline: Optional[list] = None) -> cl.Event:
        if isinstance(filters, PackedFilters):
            if filters.plan_key != self.key:
                raise ValueError("these filters were packed by another plan (another shape, "
                                 "algorithm or configuration): pack them with this plan's "
                                 "prepare_filters")
            packing, stamp, scratch = filters.packing, filters.stamp, None
            needs_care = not filters.finite
        else:
            needs_care = True  # unknown until the packing has run: the pass checks
            packing = scratch = self.scratch.take(queue)
            stamp = self._stamp()
            event = self._pack_into(queue, filters, packing, stamp)
            if timeline is not None and event is not None:
                timeline.append(("pack filter", event))
        layout, g = self.g.data_format, self.g
        src_layout = layout
        if g.depth is not None:  # images of depth planes seen as a batch of planes
            src, out = src.merged(0), out.merged(0)
        if self.columns is not None:
            src, src_layout = self.columns.pad(queue, src, timeline), "NHWC"
        args = [src.buffer, *src.activation_view(src_layout), *self.src_hw, self.ch_count,
                packing.buffer, self.zero, out.buffer, *out.activation_view(layout),
                g.batch, self.n_out, self.n_padded, self.plan.src_mul_h,
                self.plan.src_mul_w, *self.src_out_depths, self.plan.src_mul_d,
                self.phases, self.taps]
        event = self.gemm.enqueue(queue, *self.gemm_range, args)
        if timeline is not None:
            timeline.append(("gemm", event))
        if self.careful is not None and needs_care:
            event = self.careful.enqueue(queue, *self.careful_range,
                                         [*args, packing.flag, stamp])
            if timeline is not None:
                timeline.append(("inf/nan pass", event))
        if scratch is not None:
            self.scratch.give(scratch, queue, event)
        return event


def unsupported_by_gemms(op: str, dtype: np.dtype, g: ConvGeometry, info: DeviceInfo
                         ) -> Optional[str]:
    """What the GEMM families (gemm and tiled) cannot compute, or None."""
    if dtype not in GEMM_DTYPES:
        return f"the GEMM kernels compute float16/32/64 only (got {dtype.name})"
    if g.groups != 1 and not _grouped_gemm(op, g):
        return (f"the GEMM kernels compute ungrouped convolutions, and gemm conv2d's of at "
                f"least {GROUPED_MIN_OUTPUTS} output channels a group (got {g.groups} groups "
                f"of {g.out_c // g.groups})")
    if g.depth is not None and g.data_format != "NHWC":
        return "the GEMM reads depth taps of channels-last tensors only"
    return None


# A grouped conv2d runs as one GEMM whose tiles each lie inside one group (the
# kernel's GROUP_OUT) from this many output channels a group.
GROUPED_MIN_OUTPUTS = 16
GROUP_TILES = (64, 48, 32, 16)  # TN for a grouped conv2d: the widest dividing a group


def _grouped_gemm(op: str, g: ConvGeometry) -> bool:
    per_group = g.out_c // g.groups
    return (op == "conv2d" and g.depth is None and per_group >= GROUPED_MIN_OUTPUTS
            and per_group % GROUP_TILES[-1] == 0)


def _resolve(config: dict[str, Any], op: str, g: ConvGeometry, info: DeviceInfo
             ) -> dict[str, Any]:
    forward = op == "conv2d"
    if g.groups > 1:
        per_group, auto = g.out_c // g.groups, config.get("TN", "auto") == "auto"
        config = tile_for(config, per_group, info, g.in_c // g.groups)
        if auto and per_group % int(config["TN"]):
            config["TN"] = next(tn for tn in GROUP_TILES if per_group % tn == 0)
            config["VEC"] = min(int(config["VEC"]), config["TN"])
        return config
    ch_count = g.in_c if forward else g.out_c
    # A gradient's taps are shared out among its stride phases.
    phases = 1 if forward else g.stride_h * g.stride_w
    pixels = g.batch * (g.out_h * g.out_w if forward else g.in_h * g.in_w) // phases
    return tile_for(config, g.out_c if forward else g.in_c, info, ch_count,
                    pointwise=g.k_h == g.k_w == 1 and g.depth is None,
                    reduction=g.k_h * g.k_w * ch_count // phases, pixels=pixels)


def kernel_defines(role: str, defines: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """The column padding is built without the tile (one program for every
    configuration); the other kernels with the plan's defines."""
    return column_merge.pad_defines(defines, dtype) if role == "pad_columns" else defines


ALGORITHM = register(Algorithm(
    name="gemm", prepare=GemmLaunch, unsupported=unsupported_by_gemms, resolve=_resolve,
    fallback="grouped", depth_taps=True, kernel_defines=kernel_defines,
    doc="per stride phase, a register-blocked implicit GEMM over the taps that land on "
        "real input pixels"))
