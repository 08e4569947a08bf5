"""clconv: convolutions as OpenCL kernels for any device, with TensorFlow's, PyTorch's
(clconv.pytorch) and ONNX's (clconv.onnx) semantics."""

# Before anything can open an OpenCL runtime: register a pip-installed Intel CPU
# runtime (see pip_icd), and load PoCL/Oclgrind so that their LLVM cannot bind to
# TensorFlow's (see llvm_guard for why).
from clconv.pip_icd import register_pip_intel_cpu_runtime
from clconv.llvm_guard import protect_opencl_runtimes

register_pip_intel_cpu_runtime()
protect_opencl_runtimes()

# ruff: noqa: E402

from clconv.buffer_pool import free_held as release_memory
from clconv.device_select import (
    DeviceInfo,
    device,
    device_problem,
    devices,
    runtime,
    set_default_device,
)
from clconv.errors import (
    DeviceNotFoundError,
    DeviceUnusableError,
    ForkedProcessError,
    InvalidArgumentError,
    KernelBuildError,
    UnimplementedError,
)
from clconv.ops import conv2d, conv2d_backprop_input, conv2d_transpose, plan
from clconv.conv1d import conv1d, conv1d_transpose
from clconv.conv3d import conv3d, conv3d_backprop_input, conv3d_transpose
from clconv.depthwise import depthwise_conv2d, depthwise_conv2d_backprop_input
from clconv.plans import ConvPlan, PreparedFilters
from clconv.llvm_guard import OpenCLRuntimeConflictError
from clconv.search_space import SearchSpaceError
from clconv.tensors import ResourceExhaustedError
from clconv.tuning_db import TuningDatabaseError, TuningDatabaseWarning

__version__ = "0.1.0"

__all__ = [
    "ConvPlan",
    "DeviceInfo",
    "DeviceNotFoundError",
    "DeviceUnusableError",
    "ForkedProcessError",
    "InvalidArgumentError",
    "KernelBuildError",
    "OpenCLRuntimeConflictError",
    "ResourceExhaustedError",
    "SearchSpaceError",
    "TuningDatabaseError",
    "TuningDatabaseWarning",
    "UnimplementedError",
    "conv1d",
    "conv1d_transpose",
    "conv2d",
    "conv2d_backprop_input",
    "conv2d_transpose",
    "conv3d",
    "conv3d_backprop_input",
    "conv3d_transpose",
    "depthwise_conv2d",
    "depthwise_conv2d_backprop_input",
    "device",
    "device_problem",
    "devices",
    "plan",
    "release_memory",
    "runtime",
    "set_default_device",
    "PreparedFilters",
]
