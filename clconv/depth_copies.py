"""Copies of depth slices between channels-last 3-D tensors on the device.

The 3-D path (clconv.depth) stacks depth slices of one tensor along the channels
of another and scatters a depth phase's result into every stride-th depth of the
output.  Both are strided copies of contiguous runs, which OpenCL's rectangular
buffer copy does without a kernel of clconv's own: a "row" is one run of
channels (or one whole depth slice), a "slice" one step along the depths or the
batch.  Every tensor here is a C-contiguous pyopencl array seen as
``[batch, depth, pixels, channels]`` (pixels = H * W).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyopencl as cl
import pyopencl.array as cl_array

from clconv.errors import InvalidArgumentError


@dataclass(frozen=True)
class Depths:
    """Depths ``first, first + step, ...`` of a ``[batch, depth, pixels, channels]``
    tensor, and the channels ``channel, channel + 1, ...`` of each of their pixels."""

    array: cl_array.Array
    depth: int  # the tensor's depth extent
    pixels: int
    channels: int  # the tensor's channel extent
    first: int
    step: int = 1
    channel: int = 0

    @property
    def batch(self) -> int:
        per_item = self.depth * self.pixels * self.channels
        return self.array.size // per_item if per_item else 0

    def byte_offset(self, batch: int, depth: int, pixel: int = 0) -> int:
        item = self.array.dtype.itemsize
        return (self.array.offset
                + (((batch * self.depth + depth) * self.pixels + pixel) * self.channels
                   + self.channel) * item)


def copy_depths(queue: cl.CommandQueue, dst: Depths, src: Depths, count: int,
                channels: int) -> None:
    """``dst[n, dst.first + j * dst.step, p, dst.channel + c] =
    src[n, src.first + j * src.step, p, src.channel + c]`` for every batch n, j <
    ``count``, pixel p and c < ``channels`` (both tensors have the same batch and
    pixels)."""
    item = src.array.dtype.itemsize
    batch, pixels = src.batch, src.pixels
    if not (batch and count and pixels and channels):
        return
    whole = channels == src.channels == dst.channels
    if whole:
        # Whole depth slices: a row is one slice, rows step through the depths and
        # slices through the batch -- in one copy where each depth extent is a
        # multiple of its step (OpenCL wants a slice pitch that is a multiple of the
        # row pitch), else one copy per batch item.
        run = pixels * channels * item
        in_one = batch == 1 or all(t.depth % t.step == 0 for t in (src, dst))

        def slice_pitch(t: Depths) -> int:
            return (t.depth if batch > 1 else count * t.step) * run

        for n in ([0] if in_one else range(batch)):
            cl.enqueue_copy(queue, dst.array.base_data, src.array.base_data,
                            src_origin=(src.byte_offset(n, src.first), 0, 0),
                            dst_origin=(dst.byte_offset(n, dst.first), 0, 0),
                            region=(run, count, batch if in_one else 1),
                            src_pitches=(src.step * run,
                                         slice_pitch(src) if in_one else count * src.step * run),
                            dst_pitches=(dst.step * run,
                                         slice_pitch(dst) if in_one else count * dst.step * run))
        return
    run = channels * item
    src_pixel, dst_pixel = src.channels * item, dst.channels * item
    if src.step == dst.step == 1:
        # Consecutive depths are consecutive pixels: rows run through all of them.
        cl.enqueue_copy(queue, dst.array.base_data, src.array.base_data,
                        src_origin=(src.byte_offset(0, src.first), 0, 0),
                        dst_origin=(dst.byte_offset(0, dst.first), 0, 0),
                        region=(run, count * pixels, batch),
                        src_pitches=(src_pixel, src.depth * pixels * src_pixel),
                        dst_pitches=(dst_pixel, dst.depth * pixels * dst_pixel))
        return
    for n in range(batch):  # rows: a slice's pixels; slices: the depths
        cl.enqueue_copy(queue, dst.array.base_data, src.array.base_data,
                        src_origin=(src.byte_offset(n, src.first), 0, 0),
                        dst_origin=(dst.byte_offset(n, dst.first), 0, 0),
                        region=(run, pixels, count),
                        src_pitches=(src_pixel, src.step * pixels * src_pixel),
                        dst_pitches=(dst_pixel, dst.step * pixels * dst_pixel))


def contiguous_copy(queue: cl.CommandQueue, view: cl_array.Array,
                    out: cl_array.Array) -> None:
    """Copy a strided pyopencl view into ``out``, a C-contiguous array of its shape and
    dtype (pyopencl copies contiguous arrays only).  The view's last axis must be
    contiguous and its strides positive: rows are runs of that axis, and each
    rectangular copy takes the two axes before it, once per index of the others."""
    item = view.dtype.itemsize
    if not view.size:
        return
    shape, strides = tuple(view.shape), tuple(view.strides)
    if (shape[-1] > 1 and strides[-1] != item) or any(
            s <= 0 for n, s in zip(shape, strides) if n > 1):
        raise InvalidArgumentError(
            f"a strided pyopencl view with strides {list(strides)} (bytes) cannot be read "
            f"here: the 3-D ops take views whose last axis is contiguous and whose strides "
            f"are positive")
    shape = (1, 1) + shape  # at least three axes: a row, its rows, their slices
    strides = (0, 0) + strides
    row = shape[-1] * item
    rows, slices = shape[-2], shape[-3]
    row_pitch = strides[-2] if rows > 1 else row
    slice_pitch = strides[-3] if slices > 1 else row_pitch * rows
    one_copy = slice_pitch % row_pitch == 0 and slice_pitch >= rows * row_pitch
    dst_offset = out.offset
    for lead in np.ndindex(*shape[:-3]):
        src_offset = view.offset + sum(i * s for i, s in zip(lead, strides[:-3]))
        for k in ([0] if one_copy else range(slices)):  # else one 2-D copy per slice
            count = slices if one_copy else 1
            cl.enqueue_copy(queue, out.base_data, view.base_data,
                            src_origin=(src_offset + k * slice_pitch, 0, 0),
                            dst_origin=(dst_offset, 0, 0),
                            region=(row, rows, count),
                            src_pitches=(row_pitch, slice_pitch if one_copy else row_pitch * rows),
                            dst_pitches=(row, row * rows))
            dst_offset += row * rows * count
