"""Plans: decide once per call shape, execute many times, from any number of threads.

A ConvPlan holds everything that depends only on (op, geometry, dtype,
device): the algorithm and its configuration (and where each came from), the
algorithm's prepared launches (typed kernels owned by the plan, device
tables, NDRanges) and its scratch buffers.  ``execute`` binds the operands and
enqueues; nothing else.  The public ops are: check the arguments with TF's
rules -> ``get_plan`` -> ``execute``.

Plans are memoised per (context, op, geometry, dtype, requested algorithm and
configuration, tuning database and its generation) in an LRU of PLAN_CACHE_SIZE
plans, so a loop over the same layer builds one plan; a caller may also hold a
plan (``clconv.plan``) and skip even the look-up.

Threads: ``execute`` may run concurrently on one plan; each kernel's
set-args + enqueue is the only section under a lock (programs.TypedKernel),
and calls never share a buffer they could both be writing (gemm's scratch
pool hands a packed-filter buffer to one call at a time).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import weakref
from typing import Any, Optional

import numpy as np
import pyopencl as cl

from clconv import host_output, registry, search_space, tensors, tuning_db
from clconv.config import (explain_algorithm, explain_config, shipped_algorithm,
                           unprepared_algorithm)
from clconv.device_select import Runtime, check_process
from clconv.errors import InvalidArgumentError, UnimplementedError
from clconv.programs import dtype_defines
from clconv.registry import Setup
from clconv.search_space import format_config
from clconv.shapes import ConvGeometry

PLAN_CACHE_SIZE = 256  # plans kept per process (least recently used dropped first)
# A numpy filter up to this size is packed once per plan and reused while its bytes
# stay the same (compared in full at every call, so an array changed in place is
# packed again, never read stale); larger ones are packed at each call, or once by
# the caller with prepare_filters.
AUTO_PACK_BYTES = 256 << 10
OPS = search_space.OPS
# Where an algorithm choice came from defaults.yaml (not a tuning database, a request
# or a fallback): only then may a rule for unprepared filters send those elsewhere.
SHIPPED_SOURCES = ("generic", "device defaults")

logger = logging.getLogger("clconv")


@dataclasses.dataclass(frozen=True)
class PreparedFilters:
    """A filter made ready once for one plan (``ConvPlan.prepare_filters``): packed
    into the plan's layout where its algorithm has one, else on the device."""

    plan: "weakref.ReferenceType[ConvPlan]"  # not an id(): a later plan may reuse that
    shape: tuple[int, ...]
    dtype: np.dtype
    prepared: Any  # what the algorithm's enqueue reads
    source: Any = None  # the device copy the packing read (kept alive)


class ConvPlan:
    """One op on one geometry, dtype and device, decided and prepared.

    Attributes
    ----------
    op : "conv2d", "conv2d_backprop_input" or "conv2d_transpose"
    geometry : the forward conv (clconv.shapes.ConvGeometry)
    dtype : numpy dtype of every operand
    device : DeviceInfo
    algorithm, algorithm_source : the algorithm and why ("requested", a tuning-database
        level "exact" / "nearest", "device defaults", "generic", or a fallback)
    config, config_source : the kernel configuration (-D tunables and LOCAL_SIZE) and
        where it came from (the same levels, or "explicit")
    unprepared_algorithm : the algorithm calls whose filters are not prepared run
        instead (a defaults.yaml rule for unprepared filters: where packing the filter
        for a GEMM costs more than the GEMM saves), or None: they run ``algorithm``
    input_shape, filter_shape, output_shape : in the op's data_format
    """

    def __init__(self, rt: Runtime, op: str, geometry: ConvGeometry, dtype: np.dtype,
                 algorithm: str, algorithm_source: str, config: dict[str, Any],
                 config_source: str, family: str, wide: bool = False,
                 unprepared: Optional[tuple[str, str]] = None) -> None:
        g = geometry
        self.unprepared_algorithm, self._unprepared_reason = unprepared or (None, "")
        self._unprepared_plan: Optional[ConvPlan] = None
        self.wide = wide  # kernels built with 64-bit offsets and strides (INDEX_64)
        self._rt, self._wide_twin = rt, None
        self.op, self.geometry, self.dtype = op, g, np.dtype(dtype)
        self.device, self.context = rt.info, rt.context
        self.algorithm, self.algorithm_source = algorithm, algorithm_source
        self.config, self.config_source, self.family = config, config_source, family
        self._default_queue = rt.queue
        # Asked once: every queue this plan runs on is of its context (_queue_for).
        self._host_writable = host_output.can_write_host_memory(rt.queue, rt.info)
        self._in_order = host_output.in_order(rt.queue)  # of the default queue
        self._serial = _simulator_lock(rt) if rt.info.kind == "simulator" else None
        forward = op == "conv2d"
        self.input_shape = g.x_shape() if forward else g.y_shape()
        self.output_shape = g.y_shape() if forward else g.x_shape()
        self.filter_shape = g.w_shape()
        sums = g.depth_taps * g.k_h * g.k_w > 0 \
            and (g.x_size() > 0 if forward else g.y_size() > 0) \
            and (g.out_c > 0 if forward else True)
        self.launches = sums and int(np.prod(self.output_shape)) > 0
        for shape, what in ((self.input_shape, "input"), (self.filter_shape, "filters"),
                            (self.output_shape, "the output")):
            elements = int(np.prod(shape))
            tensors.check_fits(elements * self.dtype.itemsize, f"{what} of shape {tuple(shape)}",
                               rt.info)
        _check_index_range(op, g)
        self.launch: Optional[registry.Launch] = None
        self._auto_packed: Optional[tuple[bytes, PreparedFilters]] = None
        if self.launches:
            space = search_space.shipped_spaces()[family]
            defines = {k: v for k, v in config.items() if k != search_space.LOCAL_SIZE}
            defines.update(dtype_defines(self.dtype))
            if wide:
                defines["INDEX_64"] = 1
            if g.depth is not None:
                defines["DEPTH_TAPS"] = 1  # the kernels read depth taps (clconv.depth)
            local = config.get(search_space.LOCAL_SIZE)
            setup = Setup(rt.context, rt.info, op, g, self.dtype, space, config,
                          defines, tuple(int(v) for v in local) if local else None)
            self.launch = registry.get(algorithm).prepare(setup)
            self._check_built_limits(rt, space)

    def _check_built_limits(self, rt: Runtime, space: search_space.SearchSpace) -> None:
        """The limits only a built kernel knows (CL_KERNEL_WORK_GROUP_SIZE, its local
        memory): a configuration that breaks one is refused before any launch."""
        if not space.after_build_limits or self.launch is None:
            return
        geometry = registry.get(self.algorithm).kernel_geometry(self.op, self.geometry)
        context = search_space.context(geometry, rt.info, self.op, self.algorithm,
                                       self.dtype.itemsize)
        rule = space.broken_after_build(self.config, context,
                                        self.launch.kernels[0].work_group_info(rt.device))
        if rule is not None:
            raise UnimplementedError(
                f"configuration {format_config(self.config)} of {self.family} cannot run on "
                f"device {rt.info.name!r}: it breaks {rule.name} ({rule.expr.text}): "
                f"{rule.reason}")

    # -- what it is
    def describe(self) -> str:
        """One line: op, shapes, dtype, device, algorithm and configuration, with sources."""
        shapes = f"{'x'.join(map(str, self.input_shape))} -> " \
                 f"{'x'.join(map(str, self.output_shape))}"
        return (f"{self.op} {shapes} ({self.geometry.data_format}, {self.dtype.name}) on "
                f"[{self.device.spec}] {self.device.name} ({self.device.platform}, "
                f"{self.device.driver_version}): algorithm {self.algorithm} "
                f"({self.algorithm_source}), {self.family} {format_config(self.config)} "
                f"({self.config_source})" + (", 64-bit indices" if self.wide else "")
                + (f"; unprepared filters: algorithm {self.unprepared_algorithm} "
                   f"({self._unprepared_reason})" if self.unprepared_algorithm else ""))

    def runs(self, prepared: bool) -> str:
        """The algorithm a call runs: with prepared filters (``prepare_filters``; a small
        numpy filter the plan packs once counts as prepared), or without."""
        return self.algorithm if prepared or not self.unprepared_algorithm \
            else self.unprepared_algorithm

    def _for_unprepared(self, filters: Any) -> Optional["ConvPlan"]:
        """The plan that runs a call with these filters instead of this one, or None."""
        if self.unprepared_algorithm is None or isinstance(filters, PreparedFilters) \
                or self._packs_by_content(filters):
            return None
        plan = self._unprepared_plan
        if plan is None:  # built at the first such call (two racing threads: one is kept)
            plan = self._unprepared_plan = get_plan(self._rt, self.op, self.geometry,
                                                    self.dtype, self.unprepared_algorithm)
        return plan

    def __repr__(self) -> str:
        return f"<ConvPlan {self.describe()}>"

    # -- operands
    def _queue_for(self, operands: list[Any], queue: Optional[cl.CommandQueue]
                   ) -> cl.CommandQueue:
        if queue is None:
            queue = tensors.find_queue(operands)
            if queue is None:  # host operands: the plan's own queue, of its context
                return self._default_queue
        if queue.context != self.context:
            raise InvalidArgumentError(
                f"the operands' queue belongs to another OpenCL context than this plan's "
                f"(device {self.device.name!r}); build the plan for that queue's device")
        return queue

    def _filters(self, filters: Any, queue: cl.CommandQueue, borrow: bool) -> Any:
        if isinstance(filters, PreparedFilters):
            if filters.plan() is not self:
                raise InvalidArgumentError(
                    "filters prepared by another plan: call prepare_filters on this plan")
            return filters.prepared
        self._check_shape(filters, self.filter_shape, "filters")
        if self._packs_by_content(filters):
            return self._packed_by_content(filters, queue).prepared
        return tensors.to_device(filters, self.dtype, queue, self.device, "filters",
                                 borrow=borrow, checked=True)

    def _packs_by_content(self, filters: Any) -> bool:
        """Whether a filter is small host memory that the plan packs once and reuses
        while its bytes are unchanged."""
        return type(filters) is np.ndarray and filters.dtype == self.dtype \
            and filters.nbytes <= AUTO_PACK_BYTES and filters.flags.c_contiguous

    def _packed_by_content(self, filters: np.ndarray, queue: cl.CommandQueue
                           ) -> PreparedFilters:
        """The packing of a small host filter, reused while its bytes are unchanged."""
        entry, content = self._auto_packed, filters.tobytes()
        if entry is None or entry[0] != content:
            entry = (content, self._prepare_filters(filters, queue))
            self._auto_packed = entry  # one assignment: threads see the old or the new
        return entry[1]

    def _check_shape(self, value: Any, expected: tuple[int, ...], what: str) -> None:
        shape = value.shape if type(value) is np.ndarray else tuple(
            int(v) for v in getattr(value, "shape", np.shape(value)))
        if shape != expected:
            raise InvalidArgumentError(
                f"{what} has shape {list(shape)}; this plan was built for {list(expected)}")

    def prepare_filters(self, filters: Any, queue: Optional[cl.CommandQueue] = None
                        ) -> PreparedFilters:
        """Make ``filters`` ready once: packed in this plan's layout (gemm) or copied to
        the device.  ``execute`` accepts the result in place of the filter and skips
        that work; it is a snapshot: later changes to ``filters`` do not reach it."""
        check_process()
        if self._serial is not None:
            with self._serial:
                return self._prepare_filters(filters, queue)
        return self._prepare_filters(filters, queue)

    def _prepare_filters(self, filters: Any, queue: Optional[cl.CommandQueue]
                         ) -> PreparedFilters:
        queue = self._queue_for([filters], queue)
        self._check_shape(filters, self.filter_shape, "filters")
        copy = tensors.to_device(filters, self.dtype, queue, self.device, "filters")
        if tensors.is_device_array(filters) and filters.flags.c_contiguous:
            copy = tensors.DeviceTensor.of_array(filters.copy(queue))  # a snapshot too
        prepared = self.launch.pack(queue, copy) if self.launch is not None else copy
        queue.finish()  # the snapshot is complete before the caller may change the source
        return PreparedFilters(weakref.ref(self), self.filter_shape, self.dtype, prepared, copy)

    # -- running it
    def execute(self, input: Any, filters: Any, out: Any = None,
                queue: Optional[cl.CommandQueue] = None) -> Any:
        """Compute the op.  numpy (or anything np.asarray takes) in gives numpy out;
        a pyopencl array in gives a pyopencl array on its queue.  ``filters`` may be
        what ``prepare_filters`` returned.  ``out``: a pyopencl array of the output's
        shape and dtype to write into (it is also returned)."""
        check_process()
        if self._serial is not None:
            with self._serial:
                return self._execute(input, filters, out, queue)
        return self._execute(input, filters, out, queue)

    def _execute(self, input: Any, filters: Any, out: Any,
                 queue: Optional[cl.CommandQueue]) -> Any:
        instead = self._for_unprepared(filters)
        if instead is not None:
            return instead._execute(input, filters, out, queue)
        queue = self._queue_for([input, filters, out], queue)
        self._check_shape(input, self.input_shape, "input")
        resident = tensors.is_device_array(input)
        # numpy in, numpy out: the wait or blocking read below finishes the work before
        # the borrowed host memory can go away, so inputs need no upload on a CPU device.
        borrow = not resident and out is None
        if out is not None:
            if not tensors.is_device_array(out) or out.dtype != self.dtype:
                raise InvalidArgumentError(
                    f"out must be a pyopencl array of dtype {self.dtype.name}, got "
                    f"{type(out).__name__}")
            self._check_shape(out, self.output_shape, "out")
            target = tensors.DeviceTensor.of_array(out)
        elif borrow and self._in_host_memory():
            return self._run_in_host_memory(input, filters, queue)
        else:
            target = tensors.empty_output(self.output_shape, self.dtype, queue, self.device,
                                          zero=False, checked=True)
        if self.launch is None:
            event = target.fill(queue, 0) if target.size else None
        else:
            src = tensors.to_device(input, self.dtype, queue, self.device, "input",
                                    borrow=borrow, checked=True)
            # Both held until the wait or blocking read below: a borrowed tensor of a
            # non-contiguous array owns the contiguous copy its buffer uses.
            weights = self._filters(filters, queue, borrow)
            event = self._launch_for(src, weights, target).enqueue(queue, src, weights, target)
        if out is not None:
            return out
        if resident:
            return target.as_array(queue)
        return target.get(queue, [event] if event is not None else None)

    def _in_host_memory(self) -> bool:
        """Whether a call with numpy operands may write its result into a numpy array
        (clconv.host_output): no read-back command."""
        return self.launch is not None and host_output.ENABLED and self._host_writable

    def _run_in_host_memory(self, input: Any, filters: Any, queue: cl.CommandQueue
                            ) -> np.ndarray:
        """A call with host input and numpy out, on a device whose buffers are host
        memory: the input's own memory in, the result written in place."""
        result = host_output.result_array(self.output_shape, self.dtype)
        target = host_output.wrap(result, queue)
        # Both held until the wait below: a borrowed tensor of a non-contiguous array
        # owns the contiguous copy its buffer uses.
        src = tensors.to_device(input, self.dtype, queue, self.device, "input", borrow=True,
                                checked=True)
        weights = self._filters(filters, queue, True)
        event = self._launch_for(src, weights, target).enqueue(queue, src, weights, target)
        host_output.wait(queue, event, self._in_order if queue is self._default_queue else None)
        return result

    def run_on_device(self, src: tensors.DeviceTensor, filters: tensors.DeviceTensor,
                      queue: cl.CommandQueue) -> tensors.DeviceTensor:
        """``execute`` for a front end that remembered this very call (clconv.ops.call_key:
        the operands' shapes, dtypes and queue were checked when it was first made):
        device tensors shaped as this plan's in, a new device tensor out, no checks
        repeated and no pyopencl array made on the way."""
        check_process()
        target = tensors.empty_output(self.output_shape, self.dtype, queue, self.device,
                                      zero=False, checked=True)
        if self._serial is not None:
            with self._serial:
                self.enqueue(queue, src, filters, target)
        else:
            self.enqueue(queue, src, filters, target)
        return target

    def enqueue(self, queue: cl.CommandQueue, src: tensors.DeviceTensor, filters: Any,
                out: tensors.DeviceTensor, timeline: Optional[list] = None
                ) -> Optional[cl.Event]:
        """The bare launch on device tensors (tuner, conformance, bench): returns the
        event of the last kernel, None when the op launches nothing."""
        if self.launch is None:
            return out.fill(queue, 0) if out.size else None
        instead = self._for_unprepared(filters) \
            if isinstance(filters, tensors.DeviceTensor) else None
        if instead is not None:
            return instead.enqueue(queue, src, filters, out, timeline)
        if isinstance(filters, PreparedFilters):
            filters = self._filters(filters, queue, False)
        return self._launch_for(src, filters, out).enqueue(queue, src, filters, out, timeline)

    def _launch_for(self, src: tensors.DeviceTensor, filters: Any, out: tensors.DeviceTensor
                    ) -> registry.Launch:
        """This plan's launch, or its 64-bit twin's when a caller's view reaches past
        what int offsets index (a pyopencl array deep inside a large buffer).  A packing
        does not depend on the index width, so prepared filters serve both.  Tensors
        clconv made are this plan's shapes from offset 0: the plan was sized for them."""
        if self.wide or src.array is None and out.array is None and (
                not isinstance(filters, tensors.DeviceTensor) or filters.array is None):
            return self.launch  # the common call: no caller's array, nothing to measure
        limit = tensors.WIDE_INDEX_ABOVE
        if not any(
                isinstance(t, tensors.DeviceTensor) and t.array is not None and t.reach() > limit
                for t in (src, out, filters)):
            return self.launch
        twin = self._wide_twin
        if twin is None:
            twin = self._wide_twin = ConvPlan(
                self._rt, self.op, self.geometry, self.dtype, self.algorithm,
                self.algorithm_source, self.config, self.config_source, self.family, wide=True)
        return twin.launch


_simulator_locks: dict[int, threading.RLock] = {}


def _simulator_lock(rt: Runtime) -> threading.RLock:
    """One lock per simulator context.  Oclgrind runs a kernel in the host thread that
    waits for it and asserts (aborting the process) when two threads of one context
    run kernels at once, so its calls run one at a time; real devices never take it."""
    with _lock:
        return _simulator_locks.setdefault(rt.context.int_ptr, threading.RLock())


# --------------------------------------------------------------------------- decisions


def _choose_algorithm(rt: Runtime, op: str, g: ConvGeometry, dtype: np.dtype,
                      requested: Optional[str]) -> tuple[str, str]:
    info = rt.info
    if requested is not None:
        reason = registry.unsupported(requested, op, dtype, g, info)
        if reason is not None:
            universal = registry.UNIVERSAL
            hint = (f"algorithm={universal!r} computes every call"
                    if registry.unsupported(universal, op, dtype, g, info) is None
                    else "algorithm=None lets clconv choose one that computes it")
            raise UnimplementedError(
                f"algorithm={requested!r} cannot compute this {op} on {info.name!r}: {reason}; "
                f"{hint}")
        return requested, "requested"
    choice = explain_algorithm(op, info, g)
    chosen = registry.runnable(choice.value, op, dtype, g, info)
    if chosen != choice.value:
        reason = registry.unsupported(choice.value, op, dtype, g, info)
        return chosen, f"fallback: {choice.value} ({choice.source}) {reason}"
    return chosen, choice.source


def _freeze(config: Optional[dict]) -> Optional[tuple]:
    if config is None:
        return None
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in config.items()))


def needs_wide_index(g: ConvGeometry) -> bool:
    """Whether a plan's contiguous tensors can hold element indices past what int
    offsets reach: input, output, filter, and via_forward's padded copy of dy (at
    most the input grown by the effective filter on each side)."""
    padded = g.batch * (g.in_h + g.k_eff_h) * (g.in_w + g.k_eff_w) * max(g.in_c, g.out_c)
    return max(g.x_size(), g.y_size(), int(np.prod(g.w_shape())),
               padded) > tensors.WIDE_INDEX_ABOVE


def _check_index_range(op: str, g: ConvGeometry) -> None:
    """The kernels compute pixel rows and columns in 32-bit ints (row * stride - pad +
    tap * dilation, and their differences): a call whose arithmetic could pass 2^31 - 1
    is refused here, never launched to wrap around."""
    d = g.depth
    depth_axis = [("depth", d.in_d, d.out_d, d.stride_d, d.dil_d, d.k_d, d.pad_front,
                   d.pad_back)] if d else []
    for axis, size, out, stride, dil, k, before, after in depth_axis + [
            ("height", g.in_h, g.out_h, g.stride_h, g.dil_h, g.k_h, g.pad_top, g.pad_bottom),
            ("width", g.in_w, g.out_w, g.stride_w, g.dil_w, g.k_w, g.pad_left, g.pad_right)]:
        reach = size + out * stride + before + after + max(k - 1, 0) * dil
        if reach > tensors.INT32_LIMIT:
            raise UnimplementedError(
                f"{op}: along the {axis}, input {size}, output {out}, stride {stride}, "
                f"padding {before}+{after} and {k} taps {dil} apart span {reach} pixels; "
                f"clconv's kernels index with 32-bit integers (at most {tensors.INT32_LIMIT})")
    # Element offsets go 64-bit past 2^31 - 1 (needs_wide_index); pixel counts and the
    # packed filter's panels stay int.
    for what, pixels in (("input", g.batch * g.in_planes * g.in_h * g.in_w),
                         ("output", g.batch * g.out_planes * g.out_h * g.out_w)):
        if pixels > tensors.INT32_LIMIT:
            raise UnimplementedError(
                f"{op}: the {what} has {pixels} pixels (batch x depth x height x width); clconv's "
                f"kernels count pixels in 32-bit integers (at most {tensors.INT32_LIMIT})")
    weights = int(np.prod(g.w_shape()))
    if weights > tensors.INT32_LIMIT // 2:
        raise UnimplementedError(
            f"{op}: the filter has {weights} elements; the GEMM's packed filter panels (up "
            f"to twice as many) are indexed with 32-bit integers (at most "
            f"{tensors.INT32_LIMIT // 2} filter elements)")


@dataclasses.dataclass(frozen=True)
class Decision:
    """What a plan of a call runs, decided without building anything (``decide``)."""

    algorithm: str
    algorithm_source: str
    config: dict[str, Any]
    config_source: str
    family: str
    unprepared: Optional[tuple[str, str]]  # (algorithm, reason) for unprepared filters


def build_plan(rt: Runtime, op: str, g: ConvGeometry, dtype: Any,
               algorithm: Optional[str] = None, config: Optional[dict] = None) -> ConvPlan:
    """Decide and prepare (no memo): ``algorithm`` None lets clconv choose; ``config``
    None takes the tuned / shipped configuration, a dict is used as given."""
    d = decide(rt, op, g, dtype, algorithm, config)
    plan = ConvPlan(rt, op, g, dtype, d.algorithm, d.algorithm_source, d.config,
                    d.config_source, d.family, wide=needs_wide_index(g),
                    unprepared=d.unprepared)
    logger.debug("plan built: %s", plan.describe())
    return plan


def decide(rt: Runtime, op: str, g: ConvGeometry, dtype: Any, algorithm: Optional[str] = None,
           config: Optional[dict] = None) -> Decision:
    """The algorithm and configuration a plan of this call would run, and where each
    came from (build_plan's decisions, no kernel built)."""
    dtype = np.dtype(dtype)
    name, algorithm_source = _choose_algorithm(rt, op, g, dtype, algorithm)
    unprepared = None
    rule = unprepared_algorithm(op, rt.info, g) if algorithm is None and config is None \
        else None
    if rule is not None and registry.unsupported(rule[0], op, dtype, g, rt.info) is None:
        if algorithm_source in SHIPPED_SOURCES:
            unprepared = rule
        elif name == rule[0]:
            # A tuning database chose the rule's algorithm: the tuner times calls with
            # raw filters, so its choice speaks for those; prepared filters keep the
            # shipped algorithm (gan_tiny_b1: tuned direct 0.7-1.1 ms, the GEMM with
            # prepared filters 0.3-0.4).
            shipped = shipped_algorithm(op, rt.info, g)
            if registry.unsupported(shipped, op, dtype, g, rt.info) is None:
                unprepared = (name, f"the tuning database's choice ({algorithm_source}) "
                                    f"for unprepared filters")
                name, algorithm_source = shipped, "device defaults, for prepared filters"
    alg = registry.get(name)
    space = registry.space_for(name, op)
    if space is None:
        raise UnimplementedError(f"algorithm {name!r} has no kernel family for {op}")
    if config is None:
        kernel_g = alg.kernel_geometry(op, g)
        choice = explain_config(space.family, rt.info, op, g, kernel_geometry=kernel_g,
                                dtype_size=dtype.itemsize)
        config, config_source = dict(choice.value), choice.source
    else:
        config, config_source = dict(config), "explicit"
    config = {k: list(v) if isinstance(v, tuple) else v
              for k, v in alg.resolve(dict(config), op, g, rt.info).items()}
    if config_source == "explicit":
        # What the caller left out and the algorithm did not fill ("auto" tiles): the
        # family's defaults (a work-group shape of null: the launch's choice).
        config = {**space.default_config(), **config}
    limits = search_space.context(alg.kernel_geometry(op, g), rt.info, op, name,
                                  dtype.itemsize)
    problem = space.problem(config, limits, constraints=False)
    if problem is not None and config_source == "explicit":
        # A caller's configuration: checked before it becomes -D options.
        raise InvalidArgumentError(f"config for {space.family}: {problem}")
    if problem is not None:
        # A shipped default this device cannot run (a work-group past its limits): the
        # kernel's own defaults, which fix no group shape, never fail so.
        config_source = f"kernel defaults ({config_source} {problem})"
        config = {k: list(v) if isinstance(v, tuple) else v for k, v in alg.resolve(
            space.default_config(), op, g, rt.info).items()}
        if space.problem(config, limits, constraints=False) is not None:
            # A family whose group is part of its tile (reqd_work_group_size): the
            # candidate nearest its defaults that this device can run.
            config = _nearest_runnable(space, config, limits, name, rt.info.name)
            config_source = f"kernel defaults, nearest runnable candidate ({config_source})"
    return Decision(name, algorithm_source, config, config_source, space.family, unprepared)


def _nearest_runnable(space: search_space.SearchSpace, config: dict[str, Any],
                      limits: dict[str, Any], algorithm: str, device: str) -> dict[str, Any]:
    """The candidate of ``space`` that keeps the most of ``config``'s values among those
    its constraints and the device's limits allow (the first in file order on ties)."""
    candidates = space.prune(limits).candidates
    if not candidates:
        raise UnimplementedError(
            f"algorithm {algorithm!r} cannot run on device {device!r}: no configuration "
            f"of {space.family} fits its limits (work-group size, local memory); choose "
            f"another algorithm")
    return min(candidates, key=lambda c: sum(c[k] != config.get(k) for k in c))


_lock = threading.Lock()
_plans: "collections.OrderedDict[tuple, ConvPlan]" = collections.OrderedDict()


def get_plan(rt: Runtime, op: str, g: ConvGeometry, dtype: Any,
             algorithm: Optional[str] = None, config: Optional[dict] = None) -> ConvPlan:
    """The memoised plan (see the module's docstring for the key and the bound)."""
    key = (rt.context.int_ptr, op, g, np.dtype(dtype).str, algorithm,
           _freeze(config), tuning_db.generation(), os.environ.get(tuning_db.ENV_DB, ""))
    with _lock:
        plan = _plans.get(key)
        if plan is not None:
            _plans.move_to_end(key)
            return plan
    plan = build_plan(rt, op, g, dtype, algorithm, config)
    with _lock:
        _plans[key] = plan
        while len(_plans) > PLAN_CACHE_SIZE:
            _plans.popitem(last=False)
    return plan


def forget_all() -> None:
    """Drop every memoised plan (their buffers and kernels go with the last reference)."""
    with _lock:
        _plans.clear()


def cached_plans() -> int:
    with _lock:
        return len(_plans)

