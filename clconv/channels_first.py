"""The common path of the channels-first front ends (clconv.pytorch, clconv.onnx).

Their operands are NC* tensors of any kind (CPU torch tensors, numpy, pyopencl
arrays); a 1-D conv runs as the 2-D conv of height 1; a call is one plan
(clconv.plans) on a ConvGeometry the front end built, plus the bias.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from clconv import plans, tensors
from clconv.device_select import DeviceSpec
from clconv.errors import UnimplementedError
from clconv.ops import check_device_dtype, choose_runtime
from clconv.programs import TypedKernel, dtype_defines
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


_BIAS_ARGS = [None, np.int32, np.int32, np.int32, None]


def _add_bias_on_device(rt: Any, y: Any, bias: Any, dtype: np.dtype) -> None:
    """kernels/bias.cl on the plan's fresh, contiguous NCHW output."""
    bias_dev = tensors.to_device(bias, dtype, y.queue, rt.info, "bias")
    out = tensors.DeviceTensor.of_array(y)
    kernel = TypedKernel(rt.context, "bias.cl", "add_bias", dtype_defines(dtype), _BIAS_ARGS)
    if y.size:
        kernel.enqueue(y.queue, (int(y.size),), None, [
            out.buffer, out.offset, int(y.shape[1]), int(np.prod(y.shape[2:])),
            bias_dev.buffer])


def as_4d(x: Any, spatial: int, batched: bool) -> Any:
    if not batched:
        x = x.reshape(1, *x.shape)
    if spatial == 1:
        x = x.reshape(x.shape[0], x.shape[1], 1, x.shape[2])
    return x


def from_4d(y: Any, spatial: int, batched: bool) -> Any:
    if spatial == 1:
        y = y.reshape(y.shape[0], y.shape[1], y.shape[3])
    if not batched:
        y = y.reshape(*y.shape[1:])
    return y
