"""Few-channel forward convs: the width taps read as one run of channels.

The GEMM (clconv.gemm) loops over taps, and for each tap over the input channels
(K = taps x channels).  An RGB stem (7x7 over 3 channels) or the first conv of a
waveform model (one channel) gives every tap a few channel steps, so the work per
tap (its row pointers, bounds and loop set-up) outweighs its FMAs.  In a
channels-last input the k_w taps of one tap row read k_w neighbouring pixels: k_w
x C consecutive floats, once the input's columns are padded.  So such a conv runs
as the conv of a *virtual* input whose pixel j is that run for output column j:

    x_v[n, h, j, b * C + c] = x_padded[n, h, j * stride_w + b, c]

one view of the padded copy (pixel stride stride_w * C, overlapping where the taps
do), with k_w = 1 and C_v = k_w * C.  The filter is packed as before (K runs tap
row, tap column, channel in both; clconv.gemm packs with the conv's own taps, so any
filter view still reads through its strides) and the panels are those the virtual
conv reads.  The rows' padding stays the kernel's zero row; the columns' is in the
copy (kernels/pad_columns.cl).

Merged / as before, padding included, best of five alternated rounds, prepared
filters, a 2-core Zen 5 with Debian PoCL: the 7x7 s2 ResNet stem over 4x224x224x3
0.72-0.88, a 3x3 over 2x224x224x3 0.86, a k7 conv1d over 8 x 16,000 samples of
one channel 0.64-0.68 (k15: 0.44), 5x5 over one channel 0.59, 7x7 over 8 channels
0.68, 3x3 over 2-8 channels 0.82-1.06.  Not on GPUs: the loop overhead this removes
is a CPU loop's (the tiled GPU kernel stages K through local memory), and nothing
was measured there.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
import pyopencl as cl

from clconv import tensors
from clconv.programs import INDEX, TypedKernel, dtype_defines, launch_range
from clconv.registry import Setup
from clconv.shapes import ConvGeometry

# Where a forward conv's width taps are merged: up to MAX_CHANNELS input channels
# (12 and 16 ran 1.09-1.23x slower merged; 1-8 0.44-0.92x with 3-15 taps a row), and
# at least MIN_MACS multiply-adds (the padding is one more launch, 20-30 us: a 1x32x32x3
# conv ran 71 -> 93 us merged, a 3M-MAC conv1d 0.24 -> 0.28 ms, while 19M MACs over
# two channels gained 0.87x).  Zen 5, Debian PoCL, prepared filters, best of 5 rounds.
MAX_CHANNELS = 8
MIN_MACS = 1 << 24
PAD_PIXELS = 32  # padded pixels one work-item writes (the kernel's default)
PAD_ARGS = [None, *[INDEX] * 5, np.int32, np.int32, np.int32, None, np.int32, np.int32,
            np.int32]


def merged_geometry(g: ConvGeometry, info: Any) -> Optional[ConvGeometry]:
    """The conv of the virtual input (see the module's docstring), or None where the
    width taps are not merged: many channels per tap already, one tap column, dilated
    taps (not one run), groups or depth taps (no such kernel geometry), or too little
    work to pay for the padding's launch, or a GPU (``info``: the DeviceInfo)."""
    if (info.kind == "GPU" or g.in_c > MAX_CHANNELS or g.k_w < 2 or g.dil_w != 1 or g.groups != 1
            or g.depth is not None or not g.out_w or g.macs() < MIN_MACS):
        return None
    return dataclasses.replace(g, data_format="NHWC", in_w=g.out_w, in_c=g.k_w * g.in_c,
                               k_w=1, stride_w=1, pad_left=0, pad_right=0)


def pad_defines(defines: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """What the padding kernel is built with: the dtype's macros and the index width
    of the plan's ``defines`` (not its tile: one program serves every configuration)."""
    wide = {"INDEX_64": 1} if defines.get("INDEX_64") else {}
    return {**dtype_defines(dtype), **wide, "PAD_PIXELS": PAD_PIXELS}


def padded_width(g: ConvGeometry) -> int:
    """Columns of the padded copy: what the last output column's taps reach."""
    return (g.out_w - 1) * g.stride_w + g.k_w


class ColumnPadding:
    """One plan's column-padded copy of the input (kernels/pad_columns.cl) and the
    virtual view of it."""

    def __init__(self, setup: Setup, source: tuple[str, str], defines: dict[str, Any],
                 g: ConvGeometry, virtual: ConvGeometry) -> None:
        """``defines``: what the family's kernel_defines gives role "pad_columns"."""
        self.g, self.virtual = g, virtual
        self.width = padded_width(g)
        self.padded_shape = (g.batch, g.in_h, self.width, g.in_c)
        self.kernel = TypedKernel(setup.context, *source, defines, PAD_ARGS)
        self.range = launch_range(setup.info, (-(-self.width // PAD_PIXELS),
                                               g.batch * g.in_h), None)
        self.dtype, self.info = setup.dtype, setup.info

    def pad(self, queue: cl.CommandQueue, src: tensors.DeviceTensor,
            timeline: Optional[list] = None) -> tensors.DeviceTensor:
        """The virtual input, a view of a new padded copy of ``src``."""
        g, c = self.g, self.g.in_c
        padded = tensors.empty_output(self.padded_shape, self.dtype, queue, self.info,
                                      zero=False)
        event = self.kernel.enqueue(queue, *self.range, [
            src.buffer, *src.activation_view(g.data_format), g.in_h, g.in_w, c,
            padded.buffer, self.width, g.pad_left, g.batch * g.in_h])
        if timeline is not None:
            timeline.append(("pad columns", event))
        v = self.virtual
        return tensors.DeviceTensor(padded.buffer, (g.batch, v.in_h, v.in_w, v.in_c), self.dtype,
                                    0, (g.in_h * self.width * c, self.width * c,
                                        g.stride_w * c, 1))
