"""Per-call cost of small ops, measured against a bare OpenCL launch in the same run.

A layer of a few thousand multiply-adds takes the device tens of microseconds;
what a call costs beyond that is host time.  ``measure`` times, in one
process and one after another, for each case (numpy in, numpy out):

- ``op``: the public op, as a user calls it in a loop;
- ``plan``: ``ConvPlan.execute`` of a plan the caller holds;
- ``prepared``: the same with the filter packed once (``prepare_filters``);
- ``resident``: the op with pyopencl arrays in and out, until the queue is done
  (a pipeline that keeps its tensors on the device; the filter is packed at
  every call);
- each peer's eager op (TensorFlow), when installed;

and once per device ``bare``: one trivial pyopencl kernel launch plus the
read-back of its result, the floor any OpenCL library pays.  REPEAT calls
each after a warm-up; ratios, not absolute times, are what carry from one
machine to another.

A shared machine's load comes in bursts that slowed one contender and not the
one timed a second later: ratios moved by 30% from run to run.  So each
contender is timed in ROUNDS turns, taken in turn with every other one, and
its time is the median of its best turn.  The first WARM_UP calls of a turn
are not counted, and the cases of more than SMALL_WORK_US take their turns
after those rounds, among themselves: after a millisecond layer had kept
PoCL's threads busy, a bare launch ran at 1.5x its time for more than 60
calls (Zen 3, Debian PoCL 3.1).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import pyopencl as cl

CASES = (
    # name, op, input, filter, output (backprop ops), strides, padding
    ("tiny_conv2d", "conv2d", (1, 8, 8, 16), (3, 3, 16, 16), None, 1, "SAME"),
    ("tiny_transpose", "conv2d_transpose", (1, 4, 4, 8), (3, 3, 8, 8), (1, 8, 8, 8), 2, "SAME"),
    ("tiny_backprop", "conv2d_backprop_input", (1, 4, 4, 8), (3, 3, 8, 8), (1, 8, 8, 8), 2,
     "SAME"),
    ("gan_tiny_b1", "conv2d_transpose", (1, 4, 4, 512), (4, 4, 256, 512), (1, 8, 8, 256), 2,
     "SAME"),
)
REPEAT = 300  # calls per contender
ROUNDS = 10
WARM_UP = 5  # calls at the start of each turn, not counted
MAX_SECONDS = 1.5  # per contender, all rounds together
SMALL_WORK_US = 500  # an op's time (first call after the warm-up) up to which it takes turns


def _times(call: Callable[[], Any], repeat: int, max_seconds: float) -> list[float]:
    """Seconds per call of up to ``repeat`` calls, stopping after ``max_seconds``."""
    times = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return times


def bare_launch(spec: str) -> Callable[[], None]:
    """One trivial kernel over 1,024 floats plus the blocking read-back of them."""
    from clconv.device_select import runtime

    rt = runtime(spec)
    program = cl.Program(rt.context, "__kernel void add_one(__global float *a, int n) {"
                         " int i = get_global_id(0); if (i < n) a[i] += 1.0f; }").build()
    kernel = cl.Kernel(program, "add_one")
    kernel.set_scalar_arg_dtypes([None, np.int32])
    host = np.zeros(1024, np.float32)
    buffer = cl.Buffer(rt.context, cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR,
                       hostbuf=host)

    def call() -> None:
        kernel.set_args(buffer, host.size)
        cl.enqueue_nd_range_kernel(rt.queue, kernel, (host.size,), None)
        cl.enqueue_copy(rt.queue, host, buffer)

    return call


def time_in_turns(calls: list[Callable[[], Any]], repeat: int = REPEAT,
                  max_seconds: float = MAX_SECONDS, rounds: int = ROUNDS) -> list[float]:
    """Seconds per call of each of ``calls``, timed as the module's docstring says:
    after one warm-up call each, the calls of up to SMALL_WORK_US take ``rounds``
    turns of WARM_UP + repeat / rounds calls, in order; then the others do the
    same among themselves.  Each call's time is the median of its best turn."""
    small, large = [], []
    for index, call in enumerate(calls):
        call()  # warm-up: builds, first-touch
        (small if _times(call, 1, 0)[0] * 1e6 <= SMALL_WORK_US else large).append(index)
    turns: list[list[float]] = [[] for _ in calls]  # the median of each turn
    per_round = max(1, -(-repeat // rounds))
    for group in (small, large):
        for _ in range(rounds):
            for index in group:
                times = _times(calls[index], WARM_UP + per_round, max_seconds / rounds)
                turns[index].append(statistics.median(times[WARM_UP:] or times[-1:]))
    return [min(medians) for medians in turns]


@dataclass
class OverheadRow:
    name: str
    op: str
    us: dict[str, float] = field(default_factory=dict)  # contender -> median microseconds


def _operands(name: str, x_shape, w_shape) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(len(name))
    return (rng.uniform(-1, 1, x_shape).astype(np.float32),
            rng.uniform(-1, 1, w_shape).astype(np.float32))


def _resident_call(op: str, x, w, out_shape, strides, padding, spec: str
                   ) -> Callable[[], None]:
    import pyopencl.array as cl_array

    from clconv.device_select import runtime

    queue = runtime(spec).queue
    call = _op_call(op, cl_array.to_device(queue, x), cl_array.to_device(queue, w),
                    out_shape, strides, padding, None)

    def resident() -> None:
        call()
        queue.finish()

    return resident


def _op_call(op: str, x, w, out_shape, strides, padding,
             spec: Optional[str]) -> Callable[[], Any]:
    import clconv

    if op == "conv2d":
        return lambda: clconv.conv2d(x, w, strides, padding, device=spec)
    if op == "conv2d_transpose":
        return lambda: clconv.conv2d_transpose(x, w, out_shape, strides, padding, device=spec)
    return lambda: clconv.conv2d_backprop_input(out_shape, w, x, strides, padding, device=spec)


def _tf_call(op: str, x, w, out_shape, strides, padding) -> Optional[Callable[[], Any]]:
    import sys

    tf = sys.modules.get("tensorflow")
    if tf is None:
        return None
    if op == "conv2d":
        return lambda: tf.nn.conv2d(x, w, strides, padding).numpy()
    if op == "conv2d_transpose":
        return lambda: tf.nn.conv2d_transpose(x, w, out_shape, strides, padding).numpy()
    return lambda: tf.raw_ops.Conv2DBackpropInput(
        input_sizes=list(out_shape), filter=w, out_backprop=x, strides=[1, strides, strides, 1],
        padding=padding).numpy()


def measure(spec: str, repeat: Optional[int] = None, max_seconds: Optional[float] = None,
            rounds: Optional[int] = None) -> tuple[float, list[OverheadRow]]:
    """(bare launch microseconds, one row per case) on device ``spec``: medians of
    each contender's calls (see the module's docstring for the order they run in);
    REPEAT, MAX_SECONDS and ROUNDS where not given."""
    import clconv

    repeat = REPEAT if repeat is None else repeat
    max_seconds = MAX_SECONDS if max_seconds is None else max_seconds
    rounds = ROUNDS if rounds is None else rounds

    contenders: list[tuple[Optional[OverheadRow], str, Callable[[], Any]]] = [
        (None, "bare", bare_launch(spec))]
    rows = []
    for name, op, x_shape, w_shape, out_shape, strides, padding in CASES:
        x, w = _operands(name, x_shape, w_shape)
        plan = clconv.plan(op, x_shape, w_shape, strides, padding, output_shape=out_shape,
                           device=spec)
        packed = plan.prepare_filters(w)
        row = OverheadRow(name, op)
        rows.append(row)
        contenders += [
            (row, "op", _op_call(op, x, w, out_shape, strides, padding, spec)),
            (row, "plan", lambda p=plan, x=x, w=w: p.execute(x, w)),
            (row, "prepared", lambda p=plan, x=x, f=packed: p.execute(x, f)),
            (row, "resident", _resident_call(op, x, w, out_shape, strides, padding, spec))]
        tf_call = _tf_call(op, x, w, out_shape, strides, padding)
        if tf_call is not None:
            contenders.append((row, "tensorflow", tf_call))
    medians = [seconds * 1e6 for seconds in time_in_turns(
        [call for _, _, call in contenders], repeat, max_seconds, rounds)]
    for (row, name, _), us in zip(contenders[1:], medians[1:]):
        row.us[name] = us
    return medians[0], rows
