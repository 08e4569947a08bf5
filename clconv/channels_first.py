"""The common path of the channels-first front ends (clconv.pytorch, clconv.onnx).

Their operands are NC* tensors of any kind (CPU torch tensors, numpy, pyopencl
arrays); ``conv_nc`` and ``conv_transpose_nc`` take batched operands of any rank and
per-axis parameters: a 1-D conv runs as the 2-D conv of height 1, a 2-D one as one
plan (clconv.plans) plus the bias, a 3-D one through clconv.depth.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence

import numpy as np

from clconv import depth, plans, tensors
from clconv.device_select import DeviceSpec
from clconv.errors import UnimplementedError
from clconv.ops import check_device_dtype, choose_runtime
from clconv.programs import INDEX, TypedKernel, dtype_defines
from clconv.shapes import ConvGeometry


def is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def host_operand(value: Any, name: str) -> Any:
    """A torch tensor as a numpy view (CPU only), a pyopencl array as it is, anything
    else through np.asarray."""
    if is_torch(value):
        if str(value.device) != "cpu":
            raise TypeError(f"clconv.pytorch takes CPU tensors; {name} is on {value.device}")
        try:
            return value.detach().numpy()
        except TypeError as exc:  # bfloat16 and other dtypes numpy lacks
            raise UnimplementedError(f"{name} has dtype {value.dtype}, which clconv does not "
                                     "compute (float16, float32 and float64 only)") from exc
    if tensors.is_device_array(value):
        return value
    return tensors.as_host_array(value, name)


def returned_as(result: Any, like: Any) -> Any:
    if tensors.is_device_array(like) and not tensors.is_device_array(result):
        import pyopencl.array as cl_array

        return cl_array.to_device(like.queue, np.ascontiguousarray(result))
    if is_torch(like):
        import torch  # the caller passed a tensor, so torch is installed

        return torch.from_numpy(np.ascontiguousarray(result))
    return result


def run(op: str, x: Any, w_tf: Any, g: ConvGeometry, bias: Any, dtype: np.dtype,
         device: DeviceSpec, algorithm: Optional[str]) -> Any:
    """One plan call (clconv.plans) on NCHW operands, plus the bias."""
    rt = choose_runtime([x, w_tf], device)
    check_device_dtype(rt, dtype)
    plan = plans.get_plan(rt, op, g, dtype, algorithm)
    twin = _channels_last_twin(rt, plan, x, algorithm)
    if twin is not None:
        # Host NCHW -> NHWC and back: the grouped kernels read channels as vectors only
        # where they are contiguous (a 3x3 depthwise conv, 1x32x112x112, Zen 4: 5.5 ms
        # on the NCHW operand, about 1 ms with both transposes).
        src = np.ascontiguousarray(np.moveaxis(np.asarray(x), 1, -1))
        y = np.ascontiguousarray(np.moveaxis(twin.execute(src, w_tf), -1, 1))
    else:
        y = plan.execute(x, w_tf)
    if bias is None:
        return y
    if tensors.is_device_array(y):
        _add_bias_on_device(rt, y, bias, dtype)
        return y
    bias = bias.get() if tensors.is_device_array(bias) else np.asarray(bias)
    # In float, rounded once: what torch's CPU kernels do for half too.
    summed = y.astype(np.float32 if dtype == np.float16 else dtype) + bias.reshape(
        1, -1, 1, 1).astype(np.float32 if dtype == np.float16 else dtype)
    return summed.astype(dtype)


def _channels_last_twin(rt: Any, plan: plans.ConvPlan, x: Any,
                        algorithm: Optional[str]) -> Optional[plans.ConvPlan]:
    """The NHWC plan of a host NCHW call that the grouped kernels compute a vector of
    channels at a time (a depthwise conv with multiplier 1), else None."""
    from clconv.grouped import GROUPED

    if plan.algorithm != GROUPED.name or tensors.is_device_array(x):
        return None
    twin = plans.get_plan(rt, plan.op, dataclasses.replace(plan.geometry, data_format="NHWC"),
                          plan.dtype, algorithm)
    vector = twin.algorithm == GROUPED.name and int(twin.config.get("VEC", 1)) > 1
    return twin if vector else None


_BIAS_ARGS = [None, INDEX, np.int32, np.int32, None]


@functools.lru_cache(maxsize=32)
def _bias_kernel(context: Any, dtype_str: str, wide: bool) -> TypedKernel:
    """One typed add_bias kernel per context, dtype and index width, built once."""
    defines = {**dtype_defines(np.dtype(dtype_str)), **({"INDEX_64": 1} if wide else {})}
    return TypedKernel(context, "bias.cl", "add_bias", defines, _BIAS_ARGS)


def _add_bias_on_device(rt: Any, y: Any, bias: Any, dtype: np.dtype) -> None:
    """kernels/bias.cl on the plan's fresh, contiguous NCHW output."""
    bias_dev = tensors.to_device(bias, dtype, y.queue, rt.info, "bias")
    out = tensors.DeviceTensor.of_array(y)
    kernel = _bias_kernel(rt.context, np.dtype(dtype).str,
                          out.offset + int(y.size) > tensors.WIDE_INDEX_ABOVE)
    if y.size:
        kernel.enqueue(y.queue, (int(y.size),), None, [
            out.buffer, out.offset, int(y.shape[1]), int(np.prod(y.shape[2:])),
            bias_dev.buffer])


def batch_of_one(x: Any) -> Any:
    """An unbatched operand as a batch of one."""
    return x.reshape(1, *x.shape)


def unbatched(y: Any) -> Any:
    return y.reshape(*y.shape[1:])


def _as_4d(x: Any) -> Any:
    """A batched 1-D operand (or a 1-D weight) as 2-D of height 1."""
    return x.reshape(x.shape[0], x.shape[1], 1, x.shape[2]) if len(x.shape) == 3 else x


def _plane(batch: int, in_size: Sequence[int], in_c: int, kernel: Sequence[int],
           out_size: Sequence[int], out_c: int, strides: Sequence[int],
           dilations: Sequence[int], pads: Sequence[tuple[int, int]], groups: int
           ) -> ConvGeometry:
    """The 2-D forward conv of 1-D or 2-D per-axis parameters (1-D: height 1)."""
    if len(in_size) == 1:
        in_size, kernel, out_size = [1, *in_size], [1, *kernel], [1, *out_size]
        strides, dilations, pads = [1, *strides], [1, *dilations], [(0, 0), *pads]
    return ConvGeometry("NCHW", batch, in_size[0], in_size[1], in_c, kernel[0], kernel[1],
                        out_size[0], out_size[1], out_c, strides[0], strides[1],
                        dilations[0], dilations[1], pads[0][0], pads[0][1], pads[1][0],
                        pads[1][1], groups)


def conv_nc(x: Any, w: Any, bias: Any, strides: Sequence[int],
            pads: Sequence[tuple[int, int]], dilations: Sequence[int], groups: int,
            device: DeviceSpec, algorithm: Optional[str]) -> Any:
    """A batched channels-first conv of any rank: x [N, C, *size], w [C_out, C/groups,
    *kernel], bias [C_out] or None, pads (before, after) per axis.  1-D and 2-D run one
    2-D plan; 3-D runs clconv.depth."""
    if len(x.shape) == 5:
        return depth.conv_ncdhw(x, w, bias, strides, pads, dilations, groups, device,
                                algorithm)
    size, kernel = [int(n) for n in x.shape[2:]], [int(k) for k in w.shape[2:]]
    outs = [depth.output_size(n, k, s, d, p)
            for n, k, s, d, p in zip(size, kernel, strides, dilations, pads)]
    g = _plane(int(x.shape[0]), size, int(x.shape[1]), kernel, outs, int(w.shape[0]),
               strides, dilations, pads, groups)
    y = run("conv2d", _as_4d(x), _as_4d(w).transpose((2, 3, 1, 0)), g, bias, x.dtype,
            device, algorithm)
    return y.reshape(*y.shape[:2], *outs)


def conv_transpose_nc(x: Any, w: Any, bias: Any, strides: Sequence[int],
                      pads: Sequence[tuple[int, int]], outs: Sequence[int],
                      dilations: Sequence[int], groups: int, device: DeviceSpec,
                      algorithm: Optional[str]) -> Any:
    """A batched channels-first transposed conv of any rank: x [N, C_in, *size], w
    [C_in, C_out/groups, *kernel], output [N, C_out, *outs], output o receiving input i
    through tap a where o = i * stride - pads_before + a * dilation.  It is the input
    gradient of the forward conv [N, C_out, *outs] -> x, whose after-padding only
    completes that geometry (it may be negative)."""
    if len(x.shape) == 5:
        return depth.conv_transpose_ncdhw(x, w, bias, strides, pads, outs, dilations, groups,
                                          device, algorithm)
    size, kernel = [int(n) for n in x.shape[2:]], [int(k) for k in w.shape[2:]]
    g = _plane(int(x.shape[0]), list(outs), int(w.shape[1]) * groups, kernel, size,
               int(x.shape[1]), strides, dilations, pads, groups)
    y = run("conv2d_backprop_input", _as_4d(x), _as_4d(w).transpose((2, 3, 1, 0)), g, bias,
            x.dtype, device, algorithm)
    return y.reshape(*y.shape[:2], *outs)
