"""clconv against TensorFlow itself (tensorflow-cpu, stock kernels), on every device.

What is compared, for each case: either both raise, with corresponding classes
(tf.errors.InvalidArgumentError <-> clconv.InvalidArgumentError,
tf.errors.UnimplementedError <-> clconv.UnimplementedError, ValueError <->
ValueError, TypeError <-> TypeError), or both succeed with the same shape and
dtype and float32 values within tests.helpers.tolerance.  The ops:
tf.nn.conv2d <-> clconv.conv2d, tf.nn.conv2d_transpose <-> clconv.conv2d_transpose,
and tf.raw_ops.Conv2DBackpropInput <-> clconv.conv2d_backprop_input (the raw op
takes only length-4 strides/dilations and padding="EXPLICIT" plus a flat
explicit_paddings list; clconv takes tf.nn.conv2d's forms, which the test
converts for TF).

Covered:

* ``TABLE`` (every device, Oclgrind included; tiny shapes): strides as int, length
  1, 2 and 4; forward dilations as int, length 2 and 4, with strides; SAME, VALID
  and explicit padding; output_shape as list, tuple, int32 ndarray, int64 ndarray,
  int32 tf.Tensor and length 2; kernels larger than the input, strides larger
  than the kernel, odd sizes, empty batch, zero input channels, zero output
  channels, 1x1 kernels and 1x1 images, grouped forward convs (an uneven one is
  only an error when input and output are non-empty); plus argument forms and
  errors that need a real tf.Tensor or TF's own conversions (int64 tensor
  output_shape, scalar tensor strides, mixed tf-tensor dtypes; float, None,
  string, float64-ndarray and int32-wrapping output_shape; float strides;
  off-by-one output_shape; strides on N; negative explicit padding).  Each
  successful NHWC case is also run by clconv in NCHW and compared with TF's NHWC
  result transposed (TF's CPU kernels refuse NCHW).
* ``random_cases`` (PoCL devices only, not Oclgrind): ~40 seeded cases per op
  mixing valid and invalid combinations -- random shapes, argument forms,
  strides (sometimes 0 or on N/C), paddings (sometimes negative or on N/C),
  forward dilations (sometimes 0), channel/batch mismatches, grouped channels,
  output_shape off by one or with a float, strides of length 3, lower-case
  padding.  ``random_cases(op, count, seed)`` gives more cases for a soak run.
  Dilations > 1 in backprop and NCHW are left out: clconv computes them
  on purpose and TF's CPU kernels refuse them (tests/test_errors.py covers them).

The largest relative error vs TF per test is recorded as the ``max_rel_err``
property (see ``--junitxml``).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import pytest

import clconv
from conftest import DEVICES, is_simulator
from helpers import max_relative_error, tolerance

os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

# Build one OpenCL program on every device before TensorFlow is loaded: importing TF
# first can crash PoCL's first program build (see clconv/llvm_guard.py).
for _device in DEVICES:
    clconv.conv2d(np.ones((1, 2, 2, 1), np.float32), np.ones((1, 1, 1, 1), np.float32), 1,
                  "SAME", device=_device.spec)

tf = pytest.importorskip("tensorflow")

pytestmark = pytest.mark.tensorflow

OPS = ("conv2d", "transpose", "backprop")


# --------------------------------------------------------------------------- comparison


@dataclass
class Case:
    """One call.  ``x`` is conv2d's input or the transpose's input (out_backprop);
    ``w`` is the filter as the op takes it; ``output_shape`` is conv2d_transpose's
    output_shape (Conv2DBackpropInput's input_sizes)."""

    name: str
    op: str
    x_shape: tuple
    w_shape: tuple
    strides: Any = 1
    padding: Any = "VALID"
    dilations: Any = None
    output_shape: Any = None
    x_dtype: Any = np.float32
    w_dtype: Any = np.float32
    as_tf_tensors: bool = False  # pass tf.Tensors (to both) instead of NumPy arrays
    nchw: bool = True  # also compare clconv's NCHW result

    def describe(self) -> str:
        parts = [f"{self.op} {self.name!r}: x={self.x_shape} w={self.w_shape}",
                 f"strides={self.strides!r}", f"padding={self.padding!r}"]
        if self.dilations is not None:
            parts.append(f"dilations={self.dilations!r}")
        if self.output_shape is not None:
            parts.append(f"output_shape={self.output_shape!r}")
        return " ".join(parts)


def _four(value: Any, default: int = 1) -> list:
    """tf.nn's strides/dilations forms -> the length-4 NHWC list the raw op wants."""
    if value is None:
        return [1, 1, 1, 1]
    if isinstance(value, (int, np.integer)):
        return [1, int(value), int(value), 1]
    value = list(value)
    if len(value) == 1:
        value = value * 2
    return [1, value[0], value[1], 1] if len(value) == 2 else value


def _raw_padding(padding: Any) -> dict:
    if isinstance(padding, str):
        return {"padding": padding}
    return {"padding": "EXPLICIT",
            "explicit_paddings": [int(v) for pair in padding for v in pair]}


def _operands(case: Case) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(case.describe().encode()))
    x = rng.uniform(-1, 1, case.x_shape).astype(case.x_dtype)
    w = rng.uniform(-1, 1, case.w_shape).astype(case.w_dtype)
    return x, w


def run_tf(case: Case, x: Any, w: Any) -> Any:
    if case.as_tf_tensors:
        x, w = tf.constant(x), tf.constant(w)
    if case.op == "conv2d":
        return tf.nn.conv2d(x, w, case.strides, case.padding, dilations=case.dilations).numpy()
    if case.op == "transpose":
        return tf.nn.conv2d_transpose(x, w, case.output_shape, case.strides, case.padding,
                                      dilations=case.dilations).numpy()
    return tf.raw_ops.Conv2DBackpropInput(
        input_sizes=case.output_shape, filter=w, out_backprop=x, strides=_four(case.strides),
        dilations=_four(case.dilations), **_raw_padding(case.padding)).numpy()


def run_clconv(case: Case, x: Any, w: Any, spec: str, nchw: bool = False) -> Any:
    strides, padding, dilations, out = case.strides, case.padding, case.dilations, \
        case.output_shape
    if nchw:
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        strides, dilations = _to_nchw_attr(strides), _to_nchw_attr(dilations)
        if not isinstance(padding, str):
            padding = [padding[0], padding[3], padding[1], padding[2]]
        out = _to_nchw_shape(out)
    if case.as_tf_tensors:
        x, w = tf.constant(x), tf.constant(w)
    fmt = "NCHW" if nchw else "NHWC"
    if case.op == "conv2d":
        result = clconv.conv2d(x, w, strides, padding, fmt, dilations, device=spec)
    elif case.op == "transpose":
        result = clconv.conv2d_transpose(x, w, out, strides, padding, fmt, dilations,
                                         device=spec)
    else:
        result = clconv.conv2d_backprop_input(out, w, x, strides, padding, fmt, dilations,
                                              device=spec)
    return result.transpose(0, 2, 3, 1) if nchw else result


def _to_nchw_attr(value: Any) -> Any:
    if isinstance(value, (list, tuple)) and len(value) == 4:
        return [value[0], value[3], value[1], value[2]]
    return value


def _to_nchw_shape(shape: Any) -> Any:
    if shape is None or len(shape) != 4:
        return shape
    n, h, w, c = (shape[i] for i in range(4))
    if isinstance(shape, np.ndarray):
        return np.array([n, c, h, w], shape.dtype)
    if isinstance(shape, tuple):
        return (n, c, h, w)
    if isinstance(shape, list):
        return [n, c, h, w]
    return tf.constant([n, c, h, w], shape.dtype)


def _kind(exc: Optional[BaseException]) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, (tf.errors.InvalidArgumentError, clconv.InvalidArgumentError)):
        return "InvalidArgumentError"
    if isinstance(exc, (tf.errors.UnimplementedError, clconv.UnimplementedError)):
        return "UnimplementedError"
    if isinstance(exc, (tf.errors.ResourceExhaustedError, clconv.ResourceExhaustedError)):
        return "ResourceExhaustedError"
    if isinstance(exc, ValueError):
        return "ValueError"
    if isinstance(exc, TypeError):
        return "TypeError"
    return type(exc).__name__


def _call(fn: Callable[[], Any]) -> tuple[Any, Optional[BaseException]]:
    try:
        return fn(), None
    except Exception as exc:  # noqa: BLE001 -- the class is what is compared
        return None, exc


def _reduction(case: Case) -> int:
    kh, kw = case.w_shape[0], case.w_shape[1]
    depth = case.w_shape[2] if case.op == "conv2d" else case.w_shape[3]
    return max(1, kh * kw * depth)


def compare(case: Case, spec: str) -> tuple[Optional[str], float]:
    """None when clconv agrees with TF (else what differs), and the max relative error."""
    x, w = _operands(case)
    want, tf_exc = _call(lambda: run_tf(case, x, w))
    got, cl_exc = _call(lambda: run_clconv(case, x, w, spec))
    tf_kind, cl_kind = _kind(tf_exc), _kind(cl_exc)
    if tf_kind != cl_kind:
        return (f"{case.describe()}: TF {tf_kind} ({str(tf_exc)[:200]!r}) but clconv "
                f"{cl_kind} ({str(cl_exc)[:200]!r})"), 0.0
    if tf_exc is not None:
        return None, 0.0
    problem = _value_problem(case, got, want, "NHWC")
    error = max_relative_error(got, want) if problem is None else 0.0
    if problem is None and case.nchw:
        got, cl_exc = _call(lambda: run_clconv(case, x, w, spec, nchw=True))
        if cl_exc is not None:
            return f"{case.describe()}: NCHW raised {cl_exc!r}", error
        problem = _value_problem(case, got, want, "NCHW")
        error = max(error, max_relative_error(got, want)) if problem is None else error
    return problem, error


def _value_problem(case: Case, got: Any, want: np.ndarray, fmt: str) -> Optional[str]:
    got = np.asarray(got)
    if got.shape != want.shape or got.dtype != want.dtype:
        return (f"{case.describe()} [{fmt}]: clconv {got.shape} {got.dtype}, "
                f"TF {want.shape} {want.dtype}")
    rtol, atol = tolerance(want.dtype, _reduction(case))
    bad = ~np.isclose(got, want, rtol=rtol, atol=atol)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        return (f"{case.describe()} [{fmt}]: {int(bad.sum())} of {bad.size} values differ, "
                f"first at {index}: clconv {got[index]!r} TF {want[index]!r} "
                f"(rtol {rtol:.2g}, atol {atol:.2g})")
    return None


# --------------------------------------------------------------------------- table

PAD_NHWC = [[0, 0], [1, 2], [2, 0], [0, 0]]

TABLE = [
    # conv2d
    Case("strides-int-same", "conv2d", (1, 5, 6, 2), (3, 3, 2, 3), 2, "SAME"),
    Case("strides-len1-valid", "conv2d", (2, 7, 5, 3), (2, 3, 3, 2), [2], "VALID"),
    Case("strides-len2-explicit", "conv2d", (1, 6, 7, 2), (3, 2, 2, 2), [1, 3], PAD_NHWC),
    Case("strides-len4-tuple", "conv2d", (1, 7, 7, 1), (3, 3, 1, 2), (1, 2, 3, 1), "SAME"),
    Case("dilations-int", "conv2d", (1, 7, 8, 2), (3, 2, 2, 2), 1, "SAME", dilations=2),
    Case("dilations-len2-strides", "conv2d", (1, 9, 9, 2), (3, 3, 2, 2), 2, "VALID",
         dilations=[2, 1]),
    Case("dilations-len4-explicit", "conv2d", (1, 6, 6, 1), (2, 2, 1, 3), [1, 2],
         [[0, 0], [1, 1], [0, 2], [0, 0]], dilations=[1, 2, 3, 1]),
    Case("kernel-larger-than-input-same", "conv2d", (1, 2, 3, 2), (5, 4, 2, 2), 1, "SAME"),
    Case("kernel-larger-than-input-valid-empty", "conv2d", (1, 2, 2, 2), (3, 3, 2, 2), 1,
         "VALID"),
    Case("stride-larger-than-kernel", "conv2d", (1, 9, 8, 2), (2, 2, 2, 3), 3, "VALID"),
    Case("odd-sizes", "conv2d", (3, 7, 5, 3), (3, 5, 3, 5), [1, 2], "SAME"),
    Case("empty-batch", "conv2d", (0, 4, 4, 2), (3, 3, 2, 2), 1, "SAME"),
    Case("zero-out-channels", "conv2d", (1, 4, 4, 2), (3, 3, 2, 0), 1, "SAME"),
    Case("1x1-kernel", "conv2d", (2, 3, 4, 5), (1, 1, 5, 3), 1, "VALID"),
    Case("1x1-image", "conv2d", (1, 1, 1, 2), (3, 3, 2, 2), 2, "SAME"),
    Case("grouped", "conv2d", (1, 5, 5, 4), (3, 3, 2, 4), 1, "SAME"),
    Case("grouped-uneven-but-empty", "conv2d", (0, 5, 5, 4), (3, 3, 2, 3), 1, "VALID"),
    Case("error-grouped-uneven", "conv2d", (1, 5, 5, 4), (3, 3, 2, 3), 1, "VALID"),
    Case("empty-input-padded-grouped-uneven", "conv2d", (1, 0, 4, 4), (3, 3, 2, 3), 1,
         [[0, 0], [2, 2], [1, 1], [0, 0]]),
    Case("empty-input-0x0-filter", "conv2d", (2, 6, 0, 1), (0, 0, 1, 2), [2, 1], "VALID",
         dilations=[1, 3]),
    # conv2d_transpose
    Case("list-same-s2", "transpose", (1, 3, 4, 3), (3, 3, 2, 3), 2, "SAME",
         output_shape=[1, 6, 7, 2]),
    Case("tuple-valid-s2", "transpose", (2, 3, 3, 2), (3, 3, 2, 2), [2], "VALID",
         output_shape=(2, 8, 7, 2)),
    Case("int32-ndarray-len2-strides", "transpose", (1, 4, 3, 2), (3, 2, 3, 2), [2, 3], "SAME",
         output_shape=np.array([1, 7, 9, 3], np.int32)),
    Case("int64-ndarray-explicit", "transpose", (1, 5, 5, 2), (3, 3, 2, 2), 1,
         [[0, 0], [1, 0], [0, 2], [0, 0]], output_shape=np.array([1, 7, 6, 2], np.int64)),
    Case("tf-int32-tensor-len4-strides", "transpose", (1, 3, 3, 2), (2, 3, 2, 2),
         [1, 2, 3, 1], "VALID", output_shape=tf.constant([1, 6, 8, 2], tf.int32)),
    Case("length-2", "transpose", (2, 4, 4, 3), (3, 3, 2, 3), 2, "SAME", output_shape=[8, 7]),
    Case("kernel-larger-than-output", "transpose", (1, 2, 2, 2), (5, 5, 1, 2), 1, "SAME",
         output_shape=[1, 2, 2, 1]),
    Case("stride-larger-than-kernel", "transpose", (1, 3, 3, 2), (2, 2, 2, 2), 3, "VALID",
         output_shape=[1, 9, 10, 2]),
    Case("odd-sizes", "transpose", (1, 3, 5, 3), (5, 3, 3, 3), [3, 1], "SAME",
         output_shape=[1, 9, 5, 3]),
    Case("empty-batch", "transpose", (0, 3, 3, 2), (3, 3, 2, 2), 2, "SAME",
         output_shape=[0, 6, 6, 2]),
    Case("zero-input-channels", "transpose", (1, 4, 4, 0), (3, 3, 2, 0), 1, "SAME",
         output_shape=[1, 4, 4, 2]),
    Case("1x1-kernel-s2", "transpose", (1, 3, 3, 4), (1, 1, 3, 4), 2, "VALID",
         output_shape=[1, 6, 5, 3]),
    # Conv2DBackpropInput (filter [kh, kw, in, out]; out_backprop [N, Ho, Wo, out])
    Case("raw-same-s2", "backprop", (1, 3, 4, 3), (3, 3, 2, 3), 2, "SAME",
         output_shape=[1, 6, 8, 2]),
    Case("raw-valid-len2-strides", "backprop", (2, 2, 3, 2), (3, 2, 3, 2), [2, 1], "VALID",
         output_shape=np.array([2, 6, 4, 3], np.int32)),
    Case("raw-explicit-len4", "backprop", (1, 4, 3, 2), (2, 3, 2, 2), [1, 2, 2, 1], PAD_NHWC,
         output_shape=[1, 5, 5, 2]),
    Case("raw-length-2", "backprop", (1, 3, 3, 3), (3, 3, 2, 3), 1, "VALID", output_shape=[5, 5]),
    Case("raw-empty-batch", "backprop", (0, 2, 2, 2), (3, 3, 1, 2), 2, "VALID",
         output_shape=(0, 5, 6, 1)),
    Case("raw-1x1-image-big-kernel", "backprop", (1, 1, 1, 2), (4, 4, 2, 2), 3, "SAME",
         output_shape=[1, 1, 1, 2]),
    # errors and argument forms that need a real tf.Tensor or TF's conversions
    Case("error-off-by-one", "transpose", (1, 4, 4, 3), (3, 3, 2, 3), 1, "SAME",
         output_shape=[1, 5, 4, 2]),
    Case("error-int64-tensor", "transpose", (1, 4, 4, 3), (3, 3, 2, 3), 1, "SAME",
         output_shape=tf.constant([1, 4, 4, 2], tf.int64), nchw=False),
    Case("error-float-output-shape", "transpose", (1, 4, 4, 3), (3, 3, 2, 3), 1, "SAME",
         output_shape=[1, 4.0, 4, 2]),
    Case("error-string-output-shape", "transpose", (1, 4, 4, 3), (3, 3, 2, 3), 1, "SAME",
         output_shape="abcd"),
    Case("error-none-output-shape", "transpose", (1, 4, 4, 3), (3, 3, 2, 3), 1, "SAME",
         output_shape=None),
    Case("float64-ndarray-output-shape", "transpose", (1, 4, 4, 3), (3, 3, 2, 3), 1, "SAME",
         output_shape=np.array([1, 4.7, 4, 2])),
    Case("wrapping-output-shape", "transpose", (1, 4, 4, 3), (3, 3, 2, 3), 1, "SAME",
         output_shape=[1, 2**32 + 4, 4, 2], nchw=False),
    Case("error-scalar-tensor-strides", "conv2d", (1, 5, 5, 2), (3, 3, 2, 2),
         tf.constant(2), "SAME"),
    Case("float-strides-truncate", "conv2d", (1, 9, 9, 2), (3, 3, 2, 2), 2.7, "VALID"),
    Case("error-mixed-tf-tensors", "backprop", (1, 4, 4, 3), (3, 3, 2, 3), 1, "SAME",
         output_shape=[1, 4, 4, 2], w_dtype=np.float64, as_tf_tensors=True),
    Case("error-grouped-backprop", "backprop", (1, 4, 4, 4), (3, 3, 2, 4), 1, "SAME",
         output_shape=[1, 4, 4, 4]),
    Case("error-stride0", "conv2d", (1, 5, 5, 2), (3, 3, 2, 2), [0, 1], "SAME"),
    Case("error-strides-on-batch", "transpose", (1, 4, 4, 3), (3, 3, 2, 3), [2, 1, 1, 1],
         "SAME", output_shape=[1, 4, 4, 2]),
    Case("error-negative-explicit", "backprop", (1, 4, 4, 3), (3, 3, 2, 3), 1,
         [[0, 0], [-1, 1], [1, 1], [0, 0]], output_shape=[1, 4, 4, 2]),
]

@pytest.mark.parametrize("case", TABLE, ids=[f"{c.op}-{c.name}" for c in TABLE])
def test_table(case: Case, device: clconv.DeviceInfo, record_property) -> None:
    problem, error = compare(case, device.spec)
    record_property("max_rel_err", error)
    assert problem is None, problem


# --------------------------------------------------------------------------- random


def _fwd_size(size: int, k: int, s: int, d: int, padding: Any, axis: int) -> int:
    """TF's forward output size (C++ truncating division), as in tf-semantics.md section 2."""
    k_eff = (k - 1) * d + 1
    if isinstance(padding, str):  # "same"/"Valid" too: the case is invalid anyway
        padding = padding.upper()
    if padding == "SAME":
        return -(-size // s) if s > 0 else size
    before, after = (0, 0) if padding == "VALID" else padding[axis]
    num = size + before + after - k_eff + s
    return int(num / s) if s > 0 else 0


def _strides_form(rng: np.random.Generator, sh: int, sw: int) -> Any:
    form = rng.integers(4)
    if form == 0 or (form == 1 and sh == sw):
        return int(sh) if form == 0 and sh == sw else [int(sh), int(sw)]
    if form == 1:
        return [int(sh)] if sh == sw else (int(sh), int(sw))
    if form == 2:
        return [int(sh), int(sw)]
    return [1, int(sh), int(sw), 1]


def random_cases(op: str, count: int = 40, seed: int = 7) -> list[Case]:
    """``count`` reproducible cases; other seeds give other cases (for longer soak runs)."""
    rng = np.random.default_rng(OPS.index(op) * 1000 + seed)
    cases = []
    for i in range(count):
        n = int(rng.choice([0, 1, 1, 2, 3]))
        kh, kw = (int(v) for v in rng.integers(1, 6, 2))
        sh, sw = (int(v) for v in rng.integers(1, 4, 2))
        dh, dw = (int(v) for v in rng.integers(1, 3, 2)) if op == "conv2d" else (1, 1)
        cin, cout = int(rng.integers(1, 5)), int(rng.integers(1, 5))
        h, w = (int(v) for v in rng.integers(1, 10, 2))
        kind = rng.integers(3)
        padding: Any = ("SAME", "VALID")[kind] if kind < 2 else \
            [[0, 0], [int(v) for v in rng.integers(0, 3, 2)],
             [int(v) for v in rng.integers(0, 3, 2)], [0, 0]]
        strides = _strides_form(rng, sh, sw)
        dilations = None if dh == dw == 1 and rng.random() < 0.5 else _strides_form(rng, dh, dw)
        # roughly one case in three breaks one rule
        fault = rng.choice(["none"] * 9 + ["stride0", "strideN", "pad-neg", "pad-C", "dil0",
                                           "channels", "batch", "off-by-one", "grouped",
                                           "strides-len3", "padding-case", "float-shape"])
        if fault == "stride0":
            strides = [0, sw]
        elif fault == "strideN":
            strides = [1, sh, sw, 2]
        elif fault == "pad-neg":
            padding = [[0, 0], [-1, 1], [0, 0], [0, 0]]
        elif fault == "pad-C":
            padding = [[0, 0], [0, 0], [0, 0], [0, 1]]
        elif fault == "dil0" and op == "conv2d":
            dilations = [1, 0]
        elif fault == "strides-len3" and op != "backprop":  # the raw op has no Python checks
            strides = [sh, sw, 1]
        elif fault == "padding-case":
            padding = "same" if kind == 0 else "Valid"
        name = f"r{i:02d}" + ("" if fault == "none" else f"-{fault}")
        if op == "conv2d":
            fin = cin
            if fault == "channels":
                fin = cin + 1
            elif fault == "grouped" and cin % 2 == 0:
                fin = cin // 2
            cases.append(Case(name, op, (n, h, w, cin), (kh, kw, fin, cout), strides, padding,
                              dilations, nchw=False))
            continue
        # transpose / backprop: the forward conv's input [n, h, w, cin] is output_shape
        oh = max(0, _fwd_size(h, kh, max(sh, 1), 1, padding, 1))
        ow = max(0, _fwd_size(w, kw, max(sw, 1), 1, padding, 2))
        dy_c, dy_n, out_c = cout, n, cin
        out_h = h
        if fault == "channels":
            dy_c = cout + 1
        elif fault == "batch":
            dy_n = n + 1
        elif fault == "off-by-one":
            out_h = h + int(rng.choice([-1, 1]))
        elif fault == "grouped":
            out_c = cin * 2
        out_hw = [out_h, w]
        output_shape: Any = [n, *out_hw, out_c]
        if fault == "float-shape":
            output_shape[1] = float(output_shape[1])
        elif rng.random() < 0.2 and fault not in ("batch", "grouped"):
            output_shape = out_hw
        elif rng.random() < 0.3:
            output_shape = np.array(output_shape, rng.choice([np.int32, np.int64]))
        cases.append(Case(name, op, (dy_n, oh, ow, dy_c), (kh, kw, cin, cout), strides, padding,
                          None, output_shape, nchw=False))
    return cases


@pytest.mark.parametrize("op", OPS)
def test_random(op: str, device: clconv.DeviceInfo, record_property) -> None:
    if is_simulator(device):
        pytest.skip(f"{device.name}: random cases are too slow on a simulator")
    problems, worst = [], 0.0
    for case in random_cases(op):
        problem, error = compare(case, device.spec)
        worst = max(worst, error)
        if problem is not None:
            problems.append(problem)
    record_property("max_rel_err", worst)
    assert not problems, f"{len(problems)} random {op} cases differ from TF:\n" + \
        "\n".join(problems)


def test_random_mixes_valid_and_invalid() -> None:
    """The generator really produces both kinds, for every op (checked with TF only)."""
    for op in OPS:
        results = []
        for case in random_cases(op):
            x, w = _operands(case)
            results.append(_call(lambda c=case, a=x, b=w: run_tf(c, a, b))[1] is None)
        assert 10 <= sum(results) <= len(results) - 8, (op, sum(results), len(results))
