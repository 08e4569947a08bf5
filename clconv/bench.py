"""Benchmarks: suite cases, useful FLOPs, and timing clconv beside TensorFlow and PyTorch.

A case is one op on one set of shapes, read from a suite file (the format of
configs/bench_suite.yaml) or built from the command line.  clconv is timed two
ways: device-resident (pyopencl arrays in and out, wall time of the call plus
``queue.finish()``) and end to end (numpy in, numpy out).  Peers, when
installed, run the equivalent op on the same data, are checked against
clconv's result and are timed the same way: in rounds, taken in turn, each
contender's time the median of its best round.  TensorFlow and PyTorch are
imported lazily and only here; they are never runtime dependencies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import statistics
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import yaml

from clconv import host_cpu
from clconv.errors import InvalidArgumentError
from clconv.shapes import ConvGeometry, backprop_input_geometry, conv2d_geometry, parse_attrs

SUITE_FILE = "bench_suite.yaml"
# Each op with its number of spatial axes.  The 1-D and 3-D ops are TensorFlow's
# (tf.nn.conv1d, conv1d_transpose, conv3d, conv3d_transpose), NWC and NDHWC.
RANK = {"conv1d": 1, "conv1d_transpose": 1, "conv2d": 2, "conv2d_transpose": 2,
        "conv2d_backprop_input": 2, "conv3d": 3, "conv3d_transpose": 3}
OPS = tuple(RANK)
FORWARD_OPS = ("conv1d", "conv2d", "conv3d")  # the others compute an input gradient
# The 2-D op a 1-D or 3-D op runs as (see BenchCase.planes).
PLANE_OP = {"conv1d": "conv2d", "conv3d": "conv2d", "conv1d_transpose": "conv2d_backprop_input",
            "conv3d_transpose": "conv2d_backprop_input"}
PEERS = ("tensorflow", "torch")
# clconv itself as a contender: "untuned" runs every case with no tuning database,
# so a run shows what `clconv autotune` gained (or lost) on this machine.
SELF_PEERS = ("untuned",)

# Keys of a suite case, per op: the tensor shapes each op needs.  ``input`` is
# the forward ops' input, the transposes' input (the small tensor) and, for
# conv2d_backprop_input, an alias of ``out_backprop``.
SHAPE_KEYS = {op: ("input", "filter") if op in FORWARD_OPS else ("input", "filter", "output")
              for op in OPS}
SHAPE_KEYS["conv2d_backprop_input"] = ("input_sizes", "filter", "out_backprop")
ATTR_KEYS = ("strides", "padding", "dilations")

# Largest |peer - clconv| relative to the largest |clconv| that still counts as
# agreement: 4*sqrt(eps) of float32, the project's float32 rtol.
AGREEMENT_RTOL = 4 * float(np.finfo(np.float32).eps) ** 0.5


class SuiteError(ValueError):
    """A malformed suite file or case; its message is one line naming the culprit."""


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Axis:
    """One spatial axis of a case's forward conv: input size, output size, window."""

    size: int
    out: int
    kernel: int
    stride: int
    dilation: int
    before: int  # padding
    after: int


@dataclass(frozen=True)
class BenchCase:
    """One benchmark case, shapes in TensorFlow's channels-last order (NWC, NHWC, NDHWC).

    ``x_shape`` is the tensor that goes in (the forward ops' input; the transposes'
    input; conv2d_backprop_input's out_backprop), ``w_shape`` the filter as the op
    takes it and ``out_shape`` the transposes' output_shape or
    conv2d_backprop_input's input_sizes (None for the forward ops).  For the 1-D and
    3-D ops, strides and dilations are an int or one int per spatial axis and
    padding is SAME or VALID.
    """

    name: str
    op: str
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    out_shape: Optional[tuple[int, ...]]
    strides: Any = 1
    padding: Any = "SAME"
    dilations: Any = None

    @property
    def rank(self) -> int:
        return RANK[self.op]

    def stride_values(self) -> tuple[int, ...]:
        """The strides of a 1-D or 3-D case, one int per spatial axis."""
        return _spatial_ints(self.strides, self.rank, "strides")

    def dilation_values(self) -> tuple[int, ...]:
        """The dilations of a 1-D or 3-D case, one int per spatial axis."""
        return _spatial_ints(self.dilations, self.rank, "dilations")

    def geometry(self) -> ConvGeometry:
        """The 2-D forward conv of a 1-D or 2-D case (a 1-D case as a height-1 image, as
        clconv and TF run it), validated with TensorFlow's rules."""
        if self.rank == 2:
            attrs = parse_attrs(self.strides, self.padding, "NHWC", self.dilations)
            x4, w4, out4 = self.x_shape, self.w_shape, self.out_shape
        elif self.rank == 1:
            (stride,), (dilation,) = self.stride_values(), self.dilation_values()
            attrs = parse_attrs([1, 1, stride, 1], _one_of_two_paddings(self.padding), "NHWC",
                                [1, 1, dilation, 1])
            x4, w4 = _height_one(self.x_shape), (1, *self.w_shape)
            out4 = self.out_shape and _height_one(self.out_shape)
        else:
            raise ValueError(f"{self.op} has no 2-D geometry; see geometry3d()")
        if self.op in FORWARD_OPS:
            return conv2d_geometry(x4, w4, attrs)
        return backprop_input_geometry(list(out4), w4, x4, attrs)

    def geometry3d(self):
        """The forward conv of a 3-D case (clconv.depth.Geometry3d)."""
        from clconv.conv3d import forward_geometry, transpose_geometry

        strides, dilations = self.stride_values(), self.dilation_values()
        padding = _one_of_two_paddings(self.padding)
        if self.op == "conv3d":
            if self.w_shape[3] <= 0 or self.x_shape[4] % self.w_shape[3]:
                raise SuiteError(f"input channels {self.x_shape[4]} are not a multiple of the "
                                 f"filter's {self.w_shape[3]}")
            return forward_geometry(self.x_shape, self.w_shape, strides, dilations,
                                           padding)
        if self.w_shape[3] != self.out_shape[4] or self.w_shape[4] != self.x_shape[4]:
            raise SuiteError(f"filter {list(self.w_shape)} must be [kd, kh, kw, "
                             f"{self.out_shape[4]} (output channels), {self.x_shape[4]} "
                             "(input channels)]")
        return transpose_geometry(self.x_shape, self.w_shape, self.out_shape, strides,
                                  dilations, padding)

    def axes(self) -> list[Axis]:
        """The forward conv's spatial axes, outermost first."""
        if self.rank == 3:
            g3 = self.geometry3d()
            return [Axis(*values) for values in zip(g3.in_size, g3.out_size, g3.kernel,
                                                    g3.strides, g3.dilations,
                                                    *zip(*g3.pads))]
        g = self.geometry()
        width = Axis(g.in_w, g.out_w, g.k_w, g.stride_w, g.dil_w, g.pad_left, g.pad_right)
        if self.rank == 1:
            return [width]
        return [Axis(g.in_h, g.out_h, g.k_h, g.stride_h, g.dil_h, g.pad_top, g.pad_bottom),
                width]

    def channels(self) -> tuple[int, int, int, int]:
        """(batch, input channels, output channels, groups) of the forward conv."""
        if self.rank == 3:
            g3 = self.geometry3d()
            return g3.batch, g3.in_c, g3.out_c, g3.groups
        g = self.geometry()
        return g.batch, g.in_c, g.out_c, g.groups

    def planes(self) -> list[tuple[str, ConvGeometry]]:
        """The 2-D plans (op, geometry) clconv runs for the case: one for 1-D and 2-D
        cases and a 3-D conv3d; one per depth phase for a 3-D transpose."""
        if self.rank == 3:
            from clconv import depth

            g3 = self.geometry3d()
            if self.op == "conv3d":
                return [("conv2d", depth.forward_plane(g3))]
            return [("conv2d_backprop_input", plane)
                    for _, _, plane in depth.backprop_phases(g3)]
        return [(PLANE_OP.get(self.op, self.op), self.geometry())]

    def shapes(self) -> dict[str, list[int]]:
        """The shapes under the names the suite file uses for this op."""
        if self.op in FORWARD_OPS:
            batch, _, out_c, _ = self.channels()
            return {"input": list(self.x_shape), "filter": list(self.w_shape),
                    "output": [batch, *(a.out for a in self.axes()), out_c]}
        if self.op == "conv2d_backprop_input":
            return {"input_sizes": list(self.out_shape), "filter": list(self.w_shape),
                    "out_backprop": list(self.x_shape)}
        return {"input": list(self.x_shape), "filter": list(self.w_shape),
                "output": list(self.out_shape)}


def _height_one(shape: Sequence[int]) -> tuple[int, ...]:
    return (shape[0], 1, *shape[1:])


def _one_of_two_paddings(padding: Any) -> str:
    if padding not in ("SAME", "VALID"):
        raise SuiteError(f"padding of a 1-D or 3-D case must be SAME or VALID, got {padding!r}")
    return padding


def _spatial_ints(value: Any, rank: int, what: str) -> tuple[int, ...]:
    if value is None:
        return (1,) * rank
    values = [value] * rank if isinstance(value, int) else value
    if (not isinstance(values, (list, tuple)) or len(values) != rank
            or not all(isinstance(v, int) and v > 0 for v in values)):
        raise SuiteError(f"{what} must be a positive int or {rank} of them, got {value!r}")
    return tuple(values)


def useful_flops(case: BenchCase) -> int:
    """2 * the multiply-adds of the matching forward conv, as the suite file defines it.

    Forward ops: 2*N*prod(output size)*prod(kernel)*Cin/groups*Cout; the transposes
    and conv2d_backprop_input: the same with the sizes of the small tensor (the
    transpose's input, out_backprop), i.e. the forward conv's output.  Multiplies
    by the zeros a stride inserts do not count; taps on SAME padding do, as in the
    formula.
    """
    batch, in_c, out_c, groups = case.channels()
    return 2 * batch * math.prod(a.out * a.kernel for a in case.axes()) * (in_c // groups) * out_c


def _shape(value: Any, what: str, rank: int) -> tuple[int, ...]:
    dims_wanted = rank + 2
    example = ", ".join(["1"] + ["8"] * rank + ["16"])
    expected = f"a list of {dims_wanted} integers such as [{example}]"
    if isinstance(value, str):
        text = value.strip().strip("[]()")
        value = [part for part in text.replace("x", ",").split(",") if part.strip()]
    if not isinstance(value, (list, tuple)):
        raise SuiteError(f"{what} must be {expected}, got {value!r}")
    try:
        dims = tuple(int(str(v).strip()) for v in value)
    except ValueError:
        raise SuiteError(f"{what} must be {expected}, got {value!r}") from None
    if len(dims) != dims_wanted or any(d < 0 for d in dims):
        layout = {1: "NWC", 2: "NHWC", 3: "NDHWC"}[rank]
        raise SuiteError(f"{what} must be {dims_wanted} non-negative integers ({layout}, or "
                         f"the kernel's sizes first for a filter), got {list(dims)}")
    return dims


def make_case(entry: dict[str, Any], where: str) -> BenchCase:
    """A BenchCase from one suite entry (a mapping); ``where`` prefixes every error."""
    if not isinstance(entry, dict):
        raise SuiteError(f"{where}: a case must be a mapping with name, op and shapes, "
                         f"got {entry!r}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SuiteError(f"{where}: missing 'name' (a non-empty string)")
    where = f"{where} ({name!r})"
    op = entry.get("op")
    if op not in OPS:
        raise SuiteError(f"{where}: op must be one of {', '.join(OPS)}, got {op!r}")
    allowed = {"name", "op", *SHAPE_KEYS[op], *ATTR_KEYS}
    if op == "conv2d_backprop_input":
        allowed.add("input")  # alias of out_backprop
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise SuiteError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))} for {op}; "
                         f"expected {', '.join(sorted(allowed))}")
    if op == "conv2d_backprop_input" and "input" in entry:
        if "out_backprop" in entry:
            raise SuiteError(f"{where}: give out_backprop or its alias input, not both")
        entry = {**entry, "out_backprop": entry["input"]}
    missing = [k for k in SHAPE_KEYS[op] if entry.get(k) is None]
    if missing:
        raise SuiteError(f"{where}: missing {', '.join(map(repr, missing))} (an {op} case "
                         f"needs {', '.join(SHAPE_KEYS[op])})")
    shapes = {k: _shape(entry[k], f"{where}: {k}", RANK[op]) for k in SHAPE_KEYS[op]}
    if op == "conv2d_backprop_input":
        x, out = shapes["out_backprop"], shapes["input_sizes"]
    else:
        x, out = shapes["input"], shapes.get("output")
    case = BenchCase(name=name, op=op, x_shape=x, w_shape=shapes["filter"], out_shape=out,
                     strides=entry.get("strides", 1), padding=entry.get("padding", "SAME"),
                     dilations=entry.get("dilations"))
    try:
        case.planes()
    except (InvalidArgumentError, ValueError, TypeError) as exc:
        raise SuiteError(f"{where}: {str(exc).splitlines()[0]}") from None
    return case


def load_suite(text: str, origin: str) -> list[BenchCase]:
    """Parse a suite file's text (``origin`` names it in errors) into its cases."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SuiteError(f"{origin}: not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise SuiteError(f"{origin}: expected a mapping with a 'cases' list (see clconv's "
                         f"configs/{SUITE_FILE})")
    if not data["cases"]:
        raise SuiteError(f"{origin}: 'cases' is empty")
    cases = [make_case(entry, f"{origin}: case #{i + 1}") for i, entry in enumerate(data["cases"])]
    seen: set[str] = set()
    for case in cases:
        if case.name in seen:
            raise SuiteError(f"{origin}: two cases are named {case.name!r}")
        seen.add(case.name)
    return cases


def select_cases(cases: Sequence[BenchCase], names: Optional[Sequence[str]]) -> list[BenchCase]:
    """The cases named in ``names`` (in that order), or all of them."""
    if not names:
        return list(cases)
    by_name = {c.name: c for c in cases}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SuiteError(f"unknown case(s) {', '.join(map(repr, unknown))}; the suite has "
                         f"{', '.join(by_name)}")
    return [by_name[n] for n in names]


# --------------------------------------------------------------------------- timing


MIN_RUNS = 3  # the fewest timed runs of a contender, over all rounds, whatever the time cap
ROUNDS = 3  # blocks of runs each contender takes, in turn with the others (run_case)
PEER_SETTLE_S = 0.3  # pause before a round's clconv runs where peers ran before (run_case)
# Untimed calls at the start of each round, for at least this long.  The first calls
# after another contender's block ran slow and sped up over about five: a 1 ms layer
# (MobileNet's 1x1 32 -> 192 over 8x28x28, Zen 3) at 2.2, 1.7, 1.4, 1.6, 1.5 ms, then
# 1.1-1.3, and TensorFlow's the same way; one warm-up call left most of that in the
# median of a five-run round.
ROUND_WARM_UP_S = 0.1


def time_runs(call: Callable[[], Any], repeat: int,
              max_seconds: Optional[float] = None, min_runs: int = MIN_RUNS) -> list[float]:
    """Wall-clock seconds of ``repeat`` calls (the caller has warmed up); with
    ``max_seconds``, stop early once the runs add up to that, after ``min_runs``."""
    times: list[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if (max_seconds is not None and len(times) >= min_runs
                and sum(times) >= max_seconds):
            break
    return times


def time_alternated(calls: Sequence[Callable[[], Any]], repeat: int,
                    max_seconds: Optional[float] = None, min_runs: int = MIN_RUNS
                    ) -> tuple[list[list[float]], list[float]]:
    """``time_runs`` for several calls taking turns, one run each per round, the order
    reversed every other round; stops as time_runs does on the first call's runs.
    Returns each call's wall-clock seconds and the first call's process CPU seconds.
    Runs side by side see the same load: on a shared host one configuration's time
    moves 0.5-2x between runs minutes apart, so block after block would compare
    the load as much as the code."""
    times: list[list[float]] = [[] for _ in calls]
    first_cpu: list[float] = []
    for round_ in range(repeat):
        order = range(len(calls)) if round_ % 2 == 0 else reversed(range(len(calls)))
        for i in order:
            cpu, start = time.process_time(), time.perf_counter()
            calls[i]()
            times[i].append(time.perf_counter() - start)
            if i == 0:
                first_cpu.append(time.process_time() - cpu)
        if (max_seconds is not None and len(times[0]) >= min_runs
                and sum(times[0]) >= max_seconds):
            break
    return times, first_cpu


def warm_up(calls: Sequence[Callable[[], Any]], seconds: Optional[float] = None) -> None:
    """Call each of ``calls`` in turn, untimed, until ``seconds`` (ROUND_WARM_UP_S)
    have passed, each at least once."""
    deadline = time.perf_counter() + (ROUND_WARM_UP_S if seconds is None else seconds)
    while True:
        for call in calls:
            call()
        if time.perf_counter() >= deadline:
            return


def median_ms(times: Sequence[float]) -> float:
    return statistics.median(times) * 1e3


def best_round_ms(rounds: Sequence[Sequence[float]]) -> float:
    """The median of the fastest round (seconds in, milliseconds out).  A burst of
    load from another process slows whichever contender runs through it; taking
    each contender's best round keeps one burst from deciding a ratio, where an
    overall median of block after block would not."""
    return min(median_ms(r) for r in rounds if r)


def agreement(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (0 for empty or all-zero results)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return math.inf
    if expected.size == 0:
        return 0.0
    scale = float(np.max(np.abs(expected)))
    diff = float(np.max(np.abs(actual - expected)))
    return diff / scale if scale > 0 else diff


def case_data(case: BenchCase) -> tuple[np.ndarray, np.ndarray]:
    """Seeded float32 operands in [-1, 1] (the same for every device and peer)."""
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    x = rng.uniform(-1, 1, size=case.x_shape).astype(np.float32)
    w = rng.uniform(-1, 1, size=case.w_shape).astype(np.float32)
    return x, w


def op_algorithms(op: str) -> tuple[str, ...]:
    """The algorithms ``op`` accepts as ``algorithm=``."""
    from clconv import registry

    return registry.algorithms_for(PLANE_OP.get(op, op))


def all_algorithms() -> tuple[str, ...]:
    return tuple(dict.fromkeys(op_algorithms("conv2d") + op_algorithms("conv2d_transpose")))


def _clconv_call(case: BenchCase, x: Any, w: Any, device: Optional[str],
                 algorithm: Optional[str]) -> Any:
    import clconv

    run = dict(device=device, algorithm=algorithm)
    out = case.out_shape and list(case.out_shape)
    if case.op == "conv2d":
        return clconv.conv2d(x, w, case.strides, case.padding, dilations=case.dilations, **run)
    if case.op == "conv2d_transpose":
        return clconv.conv2d_transpose(x, w, out, case.strides, case.padding,
                                       dilations=case.dilations, **run)
    if case.op == "conv2d_backprop_input":
        return clconv.conv2d_backprop_input(out, w, x, case.strides, case.padding,
                                            dilations=case.dilations, **run)
    strides, dilations = list(case.stride_values()), list(case.dilation_values())
    if case.op == "conv1d":
        return clconv.conv1d(x, w, strides, case.padding, dilations=dilations, **run)
    if case.op == "conv1d_transpose":
        return clconv.conv1d_transpose(x, w, out, strides, case.padding, dilations=dilations,
                                       **run)
    if case.op == "conv3d":
        return clconv.conv3d(x, w, [1, *strides, 1], case.padding,
                             dilations=[1, *dilations, 1], **run)
    return clconv.conv3d_transpose(x, w, out, strides, case.padding, dilations=dilations, **run)


# --------------------------------------------------------------------------- peers


class PeerUnsupported(Exception):
    """The peer has no equivalent of this case (the reason is reported, not raised)."""


@dataclass
class Peer:
    """An installed peer library: how to run a case and what configuration it ran in."""

    name: str  # "tensorflow", "torch" or "untuned"
    label: str  # short column title
    version: str
    config: str  # one line saying how it was set up
    prepare: Optional[Callable[[BenchCase, np.ndarray, np.ndarray],
                               tuple[Callable[[], Any], Callable[[Any], np.ndarray]]]]
    # clconv itself (prepare None: run_case builds its call), timed in alternation with
    # clconv's device-resident runs and left out of "the faster peer".
    is_clconv: bool = False


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null for the block (what C++ code writes there too)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _tensorflow_peer() -> Optional[Peer]:
    # Quieten TF's C++ info lines unless the user chose a level; oneDNN is left as
    # the user set it (default on), since that is TF's real CPU speed.
    user_chose = "TF_CPP_MIN_LOG_LEVEL" in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        # TF 2.21 prints its oneDNN INFO line from C++ at import whatever that level
        # says: unless the user asked for TF's logs, the import's stderr is dropped.
        with contextlib.nullcontext() if user_chose else _native_stderr_silenced():
            import tensorflow as tf
    except ImportError:
        return None
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    try:  # private, but the one place TF says whether its oneDNN ops are active
        from tensorflow.python.util import _pywrap_util_port
        active = "on" if _pywrap_util_port.IsMklEnabled() else "off"
    except Exception:  # noqa: BLE001 - a diagnostic only
        active = "unknown"
    source = ("TF_ENABLE_ONEDNN_OPTS unset, TF's default" if onednn is None
              else f"TF_ENABLE_ONEDNN_OPTS={onednn}")
    threads = tf.config.threading.get_intra_op_parallelism_threads() or "default"
    config = f"oneDNN {active} ({source}); intra-op threads {threads}; eager, float32, NHWC"

    def prepare(case: BenchCase, x: np.ndarray, w: np.ndarray):
        tx, tw = tf.constant(x), tf.constant(w)
        shape = case.out_shape and tf.constant(list(case.out_shape), dtype=tf.int32)
        if case.op == "conv2d":
            def call():
                return tf.nn.conv2d(tx, tw, case.strides, case.padding, dilations=case.dilations)
        elif case.op == "conv2d_transpose":
            def call():
                return tf.nn.conv2d_transpose(tx, tw, shape, case.strides, case.padding,
                                              dilations=case.dilations)
        elif case.op == "conv2d_backprop_input":
            g = case.geometry()
            strides = [1, g.stride_h, g.stride_w, 1]
            dilations = [1, g.dil_h, g.dil_w, 1]
            if isinstance(case.padding, str):
                padding, explicit = case.padding.upper(), []
            else:
                padding = "EXPLICIT"
                explicit = [0, 0, g.pad_top, g.pad_bottom, g.pad_left, g.pad_right, 0, 0]

            def call():
                return tf.raw_ops.Conv2DBackpropInput(
                    input_sizes=shape, filter=tw, out_backprop=tx, strides=strides,
                    padding=padding, explicit_paddings=explicit, dilations=dilations)
        else:
            strides, dilations = list(case.stride_values()), list(case.dilation_values())
            if case.op == "conv1d":
                def call():
                    return tf.nn.conv1d(tx, tw, strides, case.padding, dilations=dilations)
            elif case.op == "conv1d_transpose":
                def call():
                    return tf.nn.conv1d_transpose(tx, tw, shape, strides, case.padding,
                                                  dilations=dilations)
            elif case.op == "conv3d":
                def call():
                    return tf.nn.conv3d(tx, tw, [1, *strides, 1], case.padding,
                                        dilations=[1, *dilations, 1])
            else:
                def call():
                    return tf.nn.conv3d_transpose(tx, tw, shape, strides, case.padding,
                                                  dilations=dilations)
        return call, lambda result: result.numpy()

    return Peer("tensorflow", "TF", tf.__version__, config, prepare)


def _torch_peer() -> Optional[Peer]:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    mkldnn = "mkldnn" if torch.backends.mkldnn.is_available() else "no mkldnn"
    config = (f"{torch.get_num_threads()} threads, {mkldnn}; inference_mode, float32, NCHW "
              "(layout converted outside the timed region)")

    def prepare(case: BenchCase, x: np.ndarray, w: np.ndarray):
        rank, axes = case.rank, case.axes()
        _, _, _, groups = case.channels()
        # Every op's filter as torch wants it: conv [out, in, k...] from TF's
        # [k..., in, out]; conv_transpose [in, out, k...] from TF's [k..., out, in]
        # -- the same axis permutation.  Activations channels-last -> channels-first.
        tw = torch.from_numpy(np.ascontiguousarray(w.transpose(rank + 1, rank,
                                                               *range(rank))))
        tx = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))
        stride = tuple(a.stride for a in axes)
        dilation = tuple(a.dilation for a in axes)
        if case.op in FORWARD_OPS:
            conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
            if all(a.before == a.after for a in axes):
                padding, pad = tuple(a.before for a in axes), None
            else:  # asymmetric SAME: what a torch user writes, so it is timed
                padding = (0,) * rank
                pad = tuple(p for a in reversed(axes) for p in (a.before, a.after))

            def run():
                inp = F.pad(tx, pad) if pad else tx
                return conv(inp, tw, None, stride, padding, dilation, groups)
        else:
            # conv_transpose crops `padding` from both ends of the full
            # (n-1)*s + k_eff output and appends `output_padding`; TF's output
            # starts `before` into the full one.  A longer torch result is cropped
            # (a view); a shorter one is extended with output_padding.
            conv_transpose = (F.conv_transpose1d, F.conv_transpose2d,
                              F.conv_transpose3d)[rank - 1]
            padding = tuple(a.before for a in axes)
            extra = [max(0, a.size - ((a.out - 1) * a.stride
                                      + (a.kernel - 1) * a.dilation + 1 - 2 * a.before))
                     for a in axes]
            if any(e >= max(a.stride, a.dilation) for e, a in zip(extra, axes)):
                raise PeerUnsupported("this padding needs output_padding >= stride, which "
                                      f"conv_transpose{rank}d refuses")
            crop = (slice(None), slice(None), *(slice(0, a.size) for a in axes))

            def run():
                y = conv_transpose(tx, tw, None, stride, padding, tuple(extra), groups,
                                   dilation)
                return y[crop]

        def call():
            with torch.inference_mode():
                return run()

        return call, lambda result: np.moveaxis(result.numpy(), 1, -1)

    return Peer("torch", "torch", torch.__version__, config, prepare)


def _untuned_peer() -> Peer:
    from clconv import __version__, tuning_db

    config = (f"clconv with no tuning database (its shipped defaults; the tuned runs read "
              f"{tuning_db.resolve_path()}), timed in alternation with the ms runs")
    return Peer("untuned", "untuned", __version__, config, None, is_clconv=True)


@contextlib.contextmanager
def _without_tuning_database():
    """Plans decided during the block see no tuning database: ``CLCONV_TUNING_DB``
    names a file that does not exist (plans and look-ups are memoised per that
    variable, so the tuned plans stay cached beside the untuned ones).  bench runs
    its cases one at a time on one thread, which is what makes a process-wide
    variable safe here."""
    from clconv.tuning_db import ENV_DB

    saved = os.environ.get(ENV_DB)
    os.environ[ENV_DB] = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                      "no-such-folder", "untuned.yaml")
    try:
        yield
    finally:
        if saved is None:
            del os.environ[ENV_DB]
        else:
            os.environ[ENV_DB] = saved


def load_peers(wanted: Sequence[str]) -> tuple[list[Peer], list[str]]:
    """The installed peers among ``wanted`` and the names of those missing.

    Call after ``import clconv`` (so after clconv's LLVM guard) -- importing
    TensorFlow first could break PoCL's first program build.
    """
    import clconv  # noqa: F401 - the import order is the point

    found, missing = [], []
    for name in wanted:
        peer = {"tensorflow": _tensorflow_peer, "torch": _torch_peer,
                "untuned": _untuned_peer}[name]()
        (found if peer else missing).append(peer or name)
    return found, missing


# --------------------------------------------------------------------------- results


@dataclass
class PeerResult:
    ms: Optional[float] = None
    ratio: Optional[float] = None  # peer ms / clconv device-resident ms
    max_rel_diff: Optional[float] = None
    agrees: Optional[bool] = None
    runs_ms: list[float] = field(default_factory=list)  # every run, all rounds
    round_ms: list[float] = field(default_factory=list)  # each round's median
    error: Optional[str] = None
    algorithm: Optional[str] = None  # what clconv's own peers ran (None for the others)


@dataclass
class CaseResult:
    case: BenchCase
    flops: int
    algorithm: Optional[str]
    clconv_ms: float
    end_to_end_ms: float
    clconv_runs_ms: list[float]  # every run of every round
    end_to_end_runs_ms: list[float]
    peers: dict[str, PeerResult]
    cores: Optional[float] = None  # process CPU time / wall time of the resident runs
    clconv_round_ms: list[float] = field(default_factory=list)  # each round's median
    end_to_end_round_ms: list[float] = field(default_factory=list)

    @property
    def gflops(self) -> float:
        return self.flops / (self.clconv_ms * 1e6) if self.clconv_ms > 0 else math.inf

    @property
    def end_to_end_gflops(self) -> float:
        return self.flops / (self.end_to_end_ms * 1e6) if self.end_to_end_ms > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        c = self.case
        return {
            "name": c.name, "op": c.op, "shapes": c.shapes(), "strides": c.strides,
            "padding": c.padding, "dilations": c.dilations, "algorithm": self.algorithm,
            "flops": self.flops, "gflops": self.gflops, "clconv_ms": self.clconv_ms,
            "end_to_end_ms": self.end_to_end_ms, "end_to_end_gflops": self.end_to_end_gflops,
            "clconv_runs_ms": self.clconv_runs_ms, "clconv_cores": self.cores,
            "end_to_end_runs_ms": self.end_to_end_runs_ms,
            "clconv_round_ms": self.clconv_round_ms,
            "end_to_end_round_ms": self.end_to_end_round_ms,
            "peers": {name: dataclasses.asdict(p) for name, p in self.peers.items()},
        }


def run_case(case: BenchCase, spec: str, peers: Sequence[Peer], repeat: int,
             algorithm: Optional[str], max_seconds: Optional[float] = None,
             rounds: int = ROUNDS) -> CaseResult:
    """Time one case on device ``spec`` and on every peer.

    Each contender -- clconv device-resident, clconv end to end, each peer -- takes
    ``rounds`` turns; in each it is timed ``repeat`` times in a row (fewer once its
    runs add up to ``max_seconds``, but at least MIN_RUNS over all rounds), and its
    time is the median of its best round (``best_round_ms``).  Within a round the
    contenders run block after block, not call for call: PyTorch's OpenMP and TF's
    thread pools spin for a while after a call, which on a small CPU would slow
    whatever runs next, so clconv's block starts with a pause, and every block with
    untimed calls (``warm_up``).  clconv's own peers (``untuned``) are the exception:
    PoCL's threads do not spin, so they take call-for-call turns with the
    device-resident runs (``time_alternated``).  clconv's warm-up also builds its
    kernels and gives the result each peer is checked against.
    """
    import pyopencl.array as cl_array

    from clconv import plans
    from clconv.device_select import runtime

    rt = runtime(spec)
    x, w = case_data(case)
    from clconv import registry

    op2d, plane = case.planes()[0]
    if algorithm not in op_algorithms(case.op) or registry.unsupported(
            algorithm, op2d, np.dtype(np.float32), plane, rt.info):
        algorithm = None  # e.g. via_forward forced on a suite that has conv2d cases
    used = plans.get_plan(rt, op2d, plane, np.float32, algorithm).runs(prepared=False)

    x_dev, w_dev = cl_array.to_device(rt.queue, x), cl_array.to_device(rt.queue, w)
    rt.queue.finish()

    def resident():
        out = _clconv_call(case, x_dev, w_dev, None, algorithm)
        rt.queue.finish()
        return out

    def end_to_end():
        return _clconv_call(case, x, w, spec, algorithm)

    expected = resident().get()
    end_to_end()
    results: dict[str, PeerResult] = {}
    alternated = [resident]  # clconv's device-resident runs, then its own peers'
    own: list[PeerResult] = []  # the results of alternated[1:]
    frameworks: list[tuple[PeerResult, Callable[[], Any]]] = []
    for peer in peers:
        result = results[peer.name] = PeerResult()
        try:
            if peer.is_clconv:
                call = _untuned_call(case, x_dev, w_dev, algorithm, rt.queue)
                with _without_tuning_database():
                    result.algorithm = plans.get_plan(rt, op2d, plane, np.float32,
                                                      algorithm).runs(prepared=False)
                result.max_rel_diff = agreement(call().get(), expected)  # also the warm-up
            else:
                call, to_numpy = peer.prepare(case, x, w)
                result.max_rel_diff = agreement(to_numpy(call()), expected)
        except PeerUnsupported as exc:
            result.error = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001 - a peer's refusal is reported, not fatal
            result.error = _one_line(exc)
            continue
        result.agrees = result.max_rel_diff <= AGREEMENT_RTOL
        if peer.is_clconv:
            alternated.append(call)
            own.append(result)
        else:
            frameworks.append((result, call))

    rounds = max(1, rounds)
    min_runs = -(-MIN_RUNS // rounds)  # MIN_RUNS over all rounds
    resident_rounds: list[list[float]] = []
    own_rounds: list[list[list[float]]] = [[] for _ in own]
    e2e_rounds: list[list[float]] = []
    framework_rounds: list[list[list[float]]] = [[] for _ in frameworks]
    cpu_seconds = 0.0
    for _ in range(rounds):
        if frameworks:
            # The peers' pools (TF's Eigen threads, PyTorch's OpenMP) spin for a while
            # after their runs, and PoCL's threads do not: without a pause clconv's runs
            # shared the cores with them (u_odd_40_72 after TF: 1.1 cores busy, 3.6 ms;
            # alone 1.8 cores, 1.8 ms, Zen 5), while the peers never ran beside
            # spinning PoCL threads.
            time.sleep(PEER_SETTLE_S)
        warm_up(alternated)
        times, cpu = time_alternated(alternated, repeat, max_seconds, min_runs)
        resident_rounds.append(times[0])
        for kept, own_times in zip(own_rounds, times[1:]):
            kept.append(own_times)
        # The process's CPU time over the runs' wall time: how many cores the runtime
        # kept busy.  PoCL runs one launch on one thread or on all from one call to the
        # next (1.03 against 1.77 for the same conv1d on a 2-core Zen 5); this tells a
        # slow run from a one-core one.
        cpu_seconds += sum(cpu)
        warm_up([end_to_end])
        e2e_rounds.append(time_runs(end_to_end, repeat, max_seconds, min_runs))
        for (result, call), kept in zip(frameworks, framework_rounds):
            if result.error is not None:
                continue
            try:
                warm_up([call])  # its pool has slept through clconv's runs
                kept.append(time_runs(call, repeat, max_seconds, min_runs))
            except Exception as exc:  # noqa: BLE001 - as a refusal in its first call
                result.error = _one_line(exc)

    resident_times = [t for r in resident_rounds for t in r]
    cores = cpu_seconds / max(sum(resident_times), 1e-9)
    clconv_ms = best_round_ms(resident_rounds)
    for result, kept in zip(own, own_rounds):
        _record(result, kept, clconv_ms)
    for (result, _), kept in zip(frameworks, framework_rounds):
        if result.error is None:
            _record(result, kept, clconv_ms)
    return CaseResult(case, useful_flops(case), used, clconv_ms, best_round_ms(e2e_rounds),
                      _ms(resident_rounds), _ms(e2e_rounds), results, cores,
                      _round_ms(resident_rounds), _round_ms(e2e_rounds))


def _ms(rounds: Sequence[Sequence[float]]) -> list[float]:
    """Every run of every round, in the order they ran, in milliseconds."""
    return [t * 1e3 for r in rounds for t in r]


def _round_ms(rounds: Sequence[Sequence[float]]) -> list[float]:
    """Each round's median, in milliseconds."""
    return [median_ms(r) for r in rounds if r]


def _untuned_call(case: BenchCase, x_dev: Any, w_dev: Any, algorithm: Optional[str],
                  queue: Any) -> Callable[[], Any]:
    def call():
        with _without_tuning_database():
            out = _clconv_call(case, x_dev, w_dev, None, algorithm)
        queue.finish()
        return out
    return call


def _one_line(exc: Exception) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:200]


def _record(result: PeerResult, rounds: Sequence[Sequence[float]], clconv_ms: float) -> None:
    result.runs_ms = _ms(rounds)
    result.round_ms = _round_ms(rounds)
    result.ms = best_round_ms(rounds)
    result.ratio = result.ms / clconv_ms if clconv_ms > 0 else None


def phase_breakdown(case: BenchCase, spec: str, repeat: int, resident_ms: float,
                    algorithm: Optional[str] = None) -> dict[str, float]:
    """Where a call's time goes: each kernel's median time from profiling events
    (for gemm: packing the filter, the GEMM itself), summed over the case's 2-D plans,
    and what remains of the device-resident time: the host side (argument checks,
    buffers, a 3-D case's depth stacking) and launches."""
    from clconv import plans, tensors
    from clconv.device_select import runtime

    rt = runtime(spec)
    dtype = np.dtype(np.float32)
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    launches = []
    for op2d, g in case.planes():
        plan = plans.get_plan(rt, op2d, g, dtype, algorithm)
        src_shape = g.x_shape() if op2d == "conv2d" else g.y_shape()
        w_shape = (g.k_h, g.k_w, g.in_c // g.groups, g.out_c)
        src, filt = (tensors.to_device(rng.uniform(-1, 1, shape).astype(dtype), dtype,
                                       rt.queue, rt.info, name)
                     for shape, name in ((src_shape, "input"), (w_shape, "filters")))
        out = tensors.empty_output(plan.output_shape, dtype, rt.queue, rt.info, zero=False)
        launches.append((plan, src, filt, out))
    kernel_ms: dict[str, list[float]] = {}
    for run in range(repeat + 1):
        totals: dict[str, float] = {}
        for plan, src, filt, out in launches:
            timeline: list = []
            plan.enqueue(rt.queue, src, filt, out, timeline)
            rt.queue.finish()
            for name, event in timeline:
                totals[name] = (totals.get(name, 0.0)
                                + (event.profile.end - event.profile.start) * 1e-6)
        if run:  # the first run is the warm-up
            for name, ms in totals.items():
                kernel_ms.setdefault(name, []).append(ms)
    phases = {name: float(statistics.median(times)) for name, times in kernel_ms.items()}
    phases["host + launches"] = max(0.0, resident_ms - sum(phases.values()))
    return phases


def tuning_database_line(info: Any) -> str:
    """Which tuning database the runs read, and how many of its entries are for
    ``info``'s device (a DeviceInfo)."""
    from clconv import tuning_db

    path = tuning_db.resolve_path()
    if not path.exists():
        return f"{path} (does not exist: the shipped defaults)"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tuning_db.TuningDatabaseWarning)  # the runs warn
        found = tuning_db.entries(path)
    mine = sum(1 for entry in found if tuning_db.same_device(entry, info))
    return f"{path} ({mine} of its {len(found)} entries for this device)"


def sgemm_gflops(size: int = 1024, runs: int = 5) -> float:
    """numpy's float32 matrix product of two size x size matrices (the best of ``runs``):
    the machine's practical peak that every figure can be read against."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm-up: BLAS threads start
    best = math.inf
    for _ in range(runs):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def machine_line() -> str:
    return (f"{host_cpu.describe()}, {os.cpu_count()} logical CPUs; numpy sgemm "
            f"{sgemm_gflops():.0f} GFLOP/s (1024^3, best of 5)")


def geometric_mean(values: Sequence[float]) -> Optional[float]:
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not values:
        return None
    return math.exp(sum(math.log(v) for v in values) / len(values))


def versions() -> dict[str, str]:
    """Versions of everything that can change a timing (peers only if imported)."""
    import pyopencl

    import clconv

    found = {"clconv": clconv.__version__, "python": sys.version.split()[0],
             "numpy": np.__version__, "pyopencl": pyopencl.VERSION_TEXT}
    for name in PEERS:
        module = sys.modules.get(name)
        if module is not None:
            found[name] = module.__version__
    return found
