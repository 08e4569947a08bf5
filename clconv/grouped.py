"""The grouped algorithm: grouped and depthwise convolutions (kernels/grouped_direct.cl).

One work-item computes VEC consecutive channels (one vector: VEC groups of a
depthwise conv with multiplier 1, or for conv2d VEC output channels of one group;
else one channel) at TW consecutive pixels of a row (see
the kernel's header for why neither the GEMMs, which take groups of 16 or more output
channels only (clconv.gemm.GROUPED_MIN_OUTPUTS), nor the direct kernels, which block
channels of one group, suit it).  conv2d runs
``grouped_forward``; the input gradient (and conv2d_transpose) ``grouped_backprop``,
which gathers, per stride phase of the columns, only the taps that land on real
dy pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
import pyopencl as cl

from clconv import tensors
from clconv.device_select import DeviceInfo
from clconv.direct import BACKPROP_ARGS, window_args
from clconv.errors import InvalidArgumentError
from clconv.programs import TypedKernel, launch_range
from clconv.registry import Algorithm, Setup, register
from clconv.shapes import ConvGeometry

# Both kernels take backprop_direct's arguments (direct.window_args).
ARGS = BACKPROP_ARGS

# The most input channels per group this algorithm takes: past them one work-item's
# TW pixels reuse each filter value but no input value, and the direct kernel's
# blocks of output channels (each input value serving CO_BLOCK of them) win.
MAX_CHANNELS_PER_GROUP = 16
MAX_VECTOR_BYTES = 32  # see configs/grouped_direct.yaml, vector_of_32_bytes
# The most input pixels window_forward unrolls a row of taps over ((TW - 1) x
# stride + (k_w - 1) x dilation + 1); wider windows run grouped_forward.
WINDOW_MAX_SPAN = 32


class GroupedLaunch:
    """grouped_forward (conv2d) or grouped_backprop (the input gradient) over ``g``: the
    configured build (VEC channels per work-item) and, when VEC > 1, a VEC = 1 build
    for operands whose channels are not contiguous (NCHW, strided views)."""

    def __init__(self, setup: Setup) -> None:
        g = self.g = setup.geometry
        self.forward = setup.op == "conv2d"
        source, name = (setup.space.kernel if self.forward
                        else setup.space.helper_kernels["backprop"])
        tw = int(setup.defines["TW"])
        # At most 32 bytes a vector (the search space's vector_of_32_bytes): the
        # shipped "auto" is sized in floats, so a float64 plan halves it.
        vec = min(int(setup.defines["VEC"]), MAX_VECTOR_BYTES // max(setup.dtype.itemsize, 4))
        window = bool(int(setup.defines.get("WINDOW", 0))) \
            and window_applies(g, vec, tw, self.forward)
        if not vectorisable(g, vec, self.forward, window):
            # A caller's explicit configuration (the tuner only tries what the search
            # space's constraints keep): a vector would mix channels of other groups.
            raise InvalidArgumentError(
                f"config for grouped_direct: VEC={vec} needs a depthwise conv with "
                f"multiplier 1 whose channels it divides, or a conv2d whose output "
                f"channels per group it divides (with WINDOW=1, where window_forward "
                f"runs: or 2 or 4 groups' outputs); got {g.in_c} input channels, "
                f"{g.out_c} output channels, {g.groups} groups (VEC=1 computes any)")
        group_vec = {"GROUP_VEC": 1} if vec > 1 and not depthwise_vectors(g, vec) else {}
        span = groups_spanned(g, vec)
        if span > 1 and group_vec:  # window_forward only (vectorisable said so)
            group_vec.update(GROUP_SPAN=span, GROUP_OPG=g.out_c // g.groups)
        channels = g.out_c if self.forward else g.in_c
        if self.forward:
            runs = g.batch * g.out_h * -(-g.out_w // tw)
        else:
            per_phase = -(-g.in_w // g.stride_w)  # the pixels of column phase 0
            runs = g.batch * g.in_h * g.stride_w * -(-per_phase // tw)
        self.builds = []  # (kernel, NDRange), the vector build first
        # The input gradient through window_forward: the forward conv it is over dy
        # (gradient_conv), or None.
        self.window_g: Optional[ConvGeometry] = None
        # An input gradient of every tap (TF's depthwise): padded taps add 0 * w.
        all_taps = {"ALL_TAPS": 1} if g.padded_products and not self.forward else {}
        if window:
            if not self.forward:
                self.window_g = gradient_conv(g)
            self.builds.append(_window_build(setup, self.window_g or g, vec, tw, group_vec,
                                             real_only=not self.forward and not all_taps))
        for width in dict.fromkeys((vec, 1)):
            if width > 1 and self.builds:
                continue  # window_forward is this plan's vector build
            kernel = TypedKernel(setup.context, source, name,
                                 {**setup.defines, "VEC": width, **all_taps,
                                  **(group_vec if width > 1 else {})}, ARGS)
            local = setup.local if width == vec else None
            self.builds.append((kernel, launch_range(setup.info, (channels // width, runs),
                                                      local, axis=1)))
        self.kernels = tuple(kernel for kernel, _ in self.builds)

    def pack(self, queue: cl.CommandQueue, filters: tensors.DeviceTensor) -> Any:
        return filters

    def enqueue(self, queue: cl.CommandQueue, src: tensors.DeviceTensor,
                w: tensors.DeviceTensor, out: tensors.DeviceTensor,
                timeline: Optional[list] = None) -> cl.Event:
        g = self.g
        x, y = (src, out) if self.forward else (out, src)
        views = [x.activation_view(g.data_format), w.filter_view(),
                 y.activation_view(g.data_format)]
        # The vector build reads whole vectors of channels: only where they are contiguous.
        contiguous = all(view[4] == 1 for view in views)
        kernel, work = self.builds[0] if contiguous else self.builds[-1]
        if contiguous and self.window_g is not None:
            # dx = the forward conv over dy with the filter turned 180 degrees: its
            # view starts at the last tap and steps back along both tap axes.
            offset, s_h, s_w, s_in, s_out = views[1]
            turned = [offset + (g.k_h - 1) * s_h + (g.k_w - 1) * s_w, -s_h, -s_w, s_in, s_out]
            args = window_args(self.window_g, y, views[2], w, turned, x, views[0])
        else:
            args = window_args(g, x, views[0], w, views[1], y, views[2])
        event = kernel.enqueue(queue, *work, args)
        if timeline is not None:
            timeline.append(("grouped forward" if self.forward else "grouped backprop", event))
        return event


def window_applies(g: ConvGeometry, vec: int, tw: int, forward: bool = True) -> bool:
    """Whether ``window_forward`` can compute this call (WINDOW 1): a vector build (VEC
    > 1 groups of a depthwise conv, or for conv2d VEC output channels of one group or
    of 2 or 4 whole groups), a run's window of input pixels short enough to unroll (at
    most WINDOW_MAX_SPAN), no depth taps; an input gradient also needs a depthwise conv
    of stride 1 (it is then the forward conv over dy that ``gradient_conv`` describes)."""
    stride_w = g.stride_w if forward else 1
    span = (tw - 1) * stride_w + (g.k_w - 1) * g.dil_w + 1
    return vec > 1 and vectorisable(g, vec, forward, window=True) and g.depth is None \
        and span <= WINDOW_MAX_SPAN \
        and (forward or (g.stride_h == g.stride_w == 1 and depthwise_vectors(g, vec)))


def gradient_conv(g: ConvGeometry) -> ConvGeometry:
    """The input gradient of a depthwise conv of stride 1 as a forward conv over dy:
    dx[ih, iw] sums dy[ih + pad_top - a * dil_h, ...] * w[a, b], which with the taps
    turned (a' = k_h - 1 - a) reads dy at ih - (k_eff_h - 1 - pad_top) + a' * dil_h:
    a stride-1 conv with that leading padding (negative where the original padding is
    wider than the filter), dx's size out of dy's."""
    return dataclasses.replace(
        g, in_h=g.out_h, in_w=g.out_w, out_h=g.in_h, out_w=g.in_w,
        pad_top=g.k_eff_h - 1 - g.pad_top, pad_bottom=g.k_eff_h - 1 - g.pad_bottom,
        pad_left=g.k_eff_w - 1 - g.pad_left, pad_right=g.k_eff_w - 1 - g.pad_right)


def _window_build(setup: Setup, g: ConvGeometry, vec: int, tw: int, group_vec: dict,
                  real_only: bool) -> tuple:
    """window_forward over the forward conv ``g``, built for its filter width, column
    stride and dilation, over (channel vectors, runs of a row, batch x rows); a
    LOCAL_SIZE (channels x runs) lays its runs along the row.  ``real_only``: an input
    gradient's that multiplies real dy pixels only (WIN_REAL_ONLY: taps off dy add
    nothing, as in Conv2DBackpropInput); else padded taps add 0 * w (a forward conv,
    TF's depthwise gradient)."""
    source, name = setup.space.helper_kernels["window"]
    defines = {**setup.defines, "VEC": vec, **group_vec, "WIN_KW": g.k_w,
               "WIN_SW": g.stride_w, "WIN_DW": g.dil_w}
    if real_only:
        defines["WIN_REAL_ONLY"] = 1
    kernel = TypedKernel(setup.context, source, name, defines, ARGS)
    work = (g.out_c // vec, -(-g.out_w // tw), g.batch * g.out_h)
    local = (*setup.local, 1) if setup.local else None
    return kernel, launch_range(setup.info, work, local, axis=2)


def depthwise_vectors(g: ConvGeometry, vec: int) -> bool:
    """A depthwise conv with multiplier 1 (channel c reads channel c only) whose
    channels VEC divides: a vector of VEC groups."""
    return g.in_c == g.groups == g.out_c and g.in_c % vec == 0


def vectorisable(g: ConvGeometry, vec: int, forward: bool, window: bool = False) -> bool:
    """Whether VEC consecutive channels can be one vector: VEC groups of a depthwise
    conv with multiplier 1, or (conv2d; the kernel's GROUP_VEC) VEC output channels of
    one group, which read the same input channels, or with ``window`` (window_forward
    runs; GROUP_SPAN) the outputs of 2 or 4 whole groups of at least 2."""
    return vec == 1 or depthwise_vectors(g, vec) or (
        forward and ((g.out_c // g.groups) % vec == 0
                     or (window and groups_spanned(g, vec) in (2, 4))))


def groups_spanned(g: ConvGeometry, vec: int) -> int:
    """How many groups' outputs VEC lanes hold where they hold whole groups of at
    least 2 outputs (and not a depthwise conv's one each) and the output channels fill
    whole vectors, else 1."""
    per_group = g.out_c // g.groups
    if per_group < 2 or vec <= per_group or vec % per_group or g.out_c % vec:
        return 1
    return vec // per_group


def _resolve(config: dict[str, Any], op: str, g: ConvGeometry, info: DeviceInfo
             ) -> dict[str, Any]:
    """VEC "auto": the device's float vector width (clconv.cpu_vectors.vector_width), at most 8
    (see MAX_VECTOR_BYTES), narrowed until it divides the channels, where the conv is
    vectorisable; else 1.  WINDOW "auto" (or absent): window_forward where it can
    run and the column stride is 1 (configs/defaults.yaml says why not 2)."""
    config = dict(config)
    forward = op == "conv2d"
    if config.get("VEC", "auto") == "auto":
        from clconv.cpu_vectors import vector_width

        # Vectors of several groups' outputs where window_forward will run them (a
        # WINDOW left to the rule below, or 1): a ResNeXt 3x3 of 32 groups of 4 over
        # 8x56x56x128, Zen 5, alternated: vectors of 8 (two groups) 0.56-0.66x the time
        # of vectors of 4; groups of 2 over 8x56x56x64, vectors of 8 (four groups)
        # 0.53-0.78x the time of vectors of 2.
        window = config.get("WINDOW", "auto") == 1 or (
            config.get("WINDOW", "auto") == "auto" and g.stride_w == 1)
        tw = int(config["TW"])
        widths = [v for v in (8, 4, 2) if v <= vector_width(info)]
        config["VEC"] = next((v for v in widths if vectorisable(g, v, forward) or (
            window and window_applies(g, v, tw, forward))), 1)
    if config.get("WINDOW", "auto") == "auto":  # absent: a configuration from before it
        config["WINDOW"] = int(g.stride_w == 1 and window_applies(
            g, int(config["VEC"]), int(config["TW"]), op == "conv2d"))
    return config


def _unsupported(op: str, dtype: np.dtype, g: ConvGeometry, info: DeviceInfo) -> Optional[str]:
    if g.groups == 1:
        return "grouped computes grouped convolutions only (ungrouped ones run as GEMMs)"
    if g.in_c // g.groups > MAX_CHANNELS_PER_GROUP:
        return (f"grouped takes at most {MAX_CHANNELS_PER_GROUP} input channels per group "
                f"(got {g.in_c // g.groups}); the direct kernel reuses each input value "
                "across a block of output channels")
    return None


GROUPED = register(Algorithm(
    name="grouped", prepare=GroupedLaunch, unsupported=_unsupported, resolve=_resolve,
    fallback="direct", padded_products=True,
    doc="grouped and depthwise convs: one channel at TW pixels per work-item, channels "
        "fastest"))
