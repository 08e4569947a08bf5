"""Device conformance: every op, algorithm and shipped configuration on one
device, checked against the float64 reference.

The cases are data (configs/conformance.yaml).  Each case runs once per dtype
through every *variant* of its op: the public op as a user calls it
(algorithm "auto": clconv chooses algorithm and configuration), and every
registered algorithm with every configuration that applies to the device
(``configurations_for``), as a plan built with that configuration.  Algorithms
come from clconv.registry; a plugin (``load_plugin``) may add more, which is how kernel
developers - and the tests, with a deliberately broken one - check a new
kernel family.

clconv.memcheck runs the same runs under the Oclgrind simulator's checks,
each in a process of its own.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import importlib
import importlib.util
import os
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import yaml

import clconv
from clconv import config as config_lookup
from clconv import plans, registry, search_space, tensors, tuning_db
from clconv.config import default_config
from clconv.device_select import DeviceInfo, Runtime, runtime
from clconv.reference import backprop_input_reference, conv2d_reference
from clconv.resources import config_text
from clconv.shapes import ConvGeometry, backprop_input_geometry, conv2d_geometry, parse_attrs
from clconv.tolerance import compare

CASES_FILE = "conformance.yaml"
OPS = ("conv2d", "conv2d_backprop_input", "conv2d_transpose")
DTYPES = ("float32", "float64", "float16")
AUTO = "auto"  # the public op, with clconv's own choice of algorithm and configuration
CHOSEN = "chosen by clconv"

# (runtime, operand, filter, output, forward geometry, config) -> event.  The
# operand is x for conv2d and dy for the backprop ops; the output y or dx.
Launcher = Callable[[Runtime, tensors.DeviceTensor, tensors.DeviceTensor, tensors.DeviceTensor,
                     ConvGeometry, dict], Any]
# (dtype name, forward geometry) -> why the algorithm does not apply, or None.
Limit = Callable[[str, ConvGeometry], Optional[str]]


@dataclass(frozen=True)
class Algorithm:
    """How the conformance run launches one algorithm with an explicit configuration."""

    family: str  # the kernel family whose configurations apply (configs/defaults.yaml)
    launch: Launcher
    limit: Optional[Limit] = None


def registered_launch(name: str, op: str) -> Launcher:
    """``launch(rt, src, w, out, g, config)`` of registered algorithm ``name`` for ``op``:
    a plan with that configuration (memoised), enqueued on ``rt``'s queue.  What a
    plugin wraps to check a variant of a shipped kernel."""

    def launch(rt: Runtime, src, w, out, g: ConvGeometry, config: dict) -> Any:
        plan = plans.get_plan(rt, op, g, src.dtype, name, config)
        return plan.enqueue(rt.queue, src, w, out)

    return launch


def _registry_algorithm(name: str, op: str, info: DeviceInfo) -> Algorithm:
    """A registered algorithm: a plan with each configuration, built once per case."""
    space = registry.space_for(name, op)
    launch = registered_launch(name, op)

    def limit(dtype: str, g: ConvGeometry) -> Optional[str]:
        reason = registry.get(name).unsupported(op, np.dtype(dtype), g, info)
        if reason is None:
            return None
        return f"{reason} (the op runs {registry.runnable(name, op, np.dtype(dtype), g, info)})"

    return Algorithm(space.family, launch, limit)


# Plugins' algorithms: op kind ("conv2d" or "backprop") -> algorithm -> Algorithm.
# conv2d_transpose is conv2d_backprop_input with other argument names.
PLUGINS: dict[str, dict[str, Algorithm]] = {"conv2d": {}, "backprop": {}}


def op_kind(op: str) -> str:
    return "conv2d" if op == "conv2d" else "backprop"


def op_algorithms(op: str) -> tuple[str, ...]:
    """The algorithms the public op accepts."""
    return registry.algorithms_for(op)


def add_launcher(kind: str, algorithm: str, family: str, launch: Launcher,
                 limit: Optional[Limit] = None) -> None:
    """Register another algorithm of op kind ``kind`` ("conv2d" or "backprop"):
    ``launch(rt, src, w, out, g, config)`` with the configurations of ``family``."""
    if kind not in PLUGINS:
        raise ValueError(f"op kind {kind!r} is not one of {', '.join(PLUGINS)}")
    PLUGINS[kind][algorithm] = Algorithm(family, launch, limit)


def load_plugin(reference: str) -> str:
    """Import a plugin (a module name or a .py path) and call its ``register()``,
    which may ``add_launcher``.  Returns the plugin's file, for worker processes."""
    if reference.endswith(".py") or os.sep in reference:
        path = Path(reference).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"plugin {reference!r}: no such file")
        spec = importlib.util.spec_from_file_location(f"clconv_plugin_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(reference)
    register = getattr(module, "register", None)
    if not callable(register):
        raise ValueError(f"plugin {reference!r} defines no register() function")
    register()
    return str(Path(module.__file__).resolve())


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One call of an op from the case table."""

    name: str
    op: str
    operand: tuple[int, ...]  # conv2d/transpose `input`, backprop `out_backprop`
    filter: tuple[int, ...]
    sizes: Optional[tuple[int, ...]]  # transpose `output`, backprop `input_sizes`
    strides: Any
    padding: Any
    dilations: Any = None
    data_format: str = "NHWC"
    dtypes: tuple[str, ...] = DTYPES
    quick: bool = False
    large: bool = False

    def geometry(self) -> ConvGeometry:
        attrs = parse_attrs(self.strides, self.padding, self.data_format, self.dilations)
        if self.op == "conv2d":
            return conv2d_geometry(self.operand, self.filter, attrs)
        return backprop_input_geometry(list(self.sizes), self.filter, self.operand, attrs)

    def output_shape(self, g: ConvGeometry) -> tuple[int, ...]:
        return g.y_shape() if self.op == "conv2d" else g.x_shape()

    def reduction(self, g: ConvGeometry) -> int:
        """Products summed per output element (an upper bound for the backprop ops)."""
        if self.op == "conv2d":
            return g.k_h * g.k_w * (g.in_c // g.groups)
        return g.k_h * g.k_w * g.out_c

    def launches_nothing(self, g: ConvGeometry) -> bool:
        """The ops return zeros without a kernel for empty tensors and empty sums."""
        out_size = g.y_size() if self.op == "conv2d" else g.x_size()
        in_size = g.x_size() if self.op == "conv2d" else g.y_size()
        return out_size == 0 or in_size == 0 or g.k_h * g.k_w * g.out_c * g.in_c == 0

    def operands(self, dtype: str) -> tuple[np.ndarray, np.ndarray]:
        """(x or dy, filter) uniform in [-1, 1], the same values for every dtype."""
        rng = np.random.default_rng(zlib.crc32(self.name.encode()))
        a = rng.uniform(-1, 1, size=self.operand).astype(dtype)
        w = rng.uniform(-1, 1, size=self.filter).astype(dtype)
        return a, w

    def reference(self, a: np.ndarray, w: np.ndarray, g: ConvGeometry) -> np.ndarray:
        if self.op == "conv2d":
            return conv2d_reference(a, w, g)
        return backprop_input_reference(a, w, g)

    def call_op(self, a: np.ndarray, w: np.ndarray, device: str,
                algorithm: Optional[str]) -> np.ndarray:
        """The public op, called with the case's own argument forms."""
        args = (self.strides, self.padding, self.data_format, self.dilations)
        if self.op == "conv2d":
            return clconv.conv2d(a, w, *args, device=device)
        if self.op == "conv2d_transpose":
            return clconv.conv2d_transpose(a, w, list(self.sizes), *args, device=device,
                                           algorithm=algorithm)
        return clconv.conv2d_backprop_input(list(self.sizes), w, a, *args, device=device,
                                            algorithm=algorithm)


# Table key -> (Case field) per op: the table uses the ops' own argument names.
_SHAPE_KEYS = {
    "conv2d": {"input": "operand", "filter": "filter"},
    "conv2d_transpose": {"input": "operand", "filter": "filter", "output": "sizes"},
    "conv2d_backprop_input": {"out_backprop": "operand", "filter": "filter",
                              "input_sizes": "sizes"},
}
_COMMON_KEYS = {"name", "op", "strides", "padding", "dilations", "data_format", "dtypes",
                "quick", "large"}


def load_cases(text: Optional[str] = None) -> list[Case]:
    """The case table (the shipped configs/conformance.yaml unless ``text`` is given)."""
    table = yaml.safe_load(text if text is not None else config_text(CASES_FILE))
    default_dtypes = tuple(table.get("dtypes", DTYPES))
    cases, seen = [], set()
    for entry in table["cases"]:
        name, op = entry.get("name"), entry.get("op")
        if op not in _SHAPE_KEYS:
            raise ValueError(f"conformance case {name!r}: op {op!r} is not one of {OPS}")
        shape_keys = _SHAPE_KEYS[op]
        unknown = sorted(set(entry) - _COMMON_KEYS - set(shape_keys))
        missing = sorted((set(shape_keys) | {"name", "strides", "padding"}) - set(entry))
        if unknown:
            raise ValueError(f"conformance case {name!r}: unknown keys {unknown} ({op} takes "
                             f"{sorted(shape_keys)} and {sorted(_COMMON_KEYS)})")
        if missing:
            raise ValueError(f"conformance case {name!r}: missing keys {missing}")
        if name in seen:
            raise ValueError(f"conformance case {name!r} appears twice")
        seen.add(name)
        fields = {field: tuple(entry[key]) for key, field in shape_keys.items()}
        dtypes = tuple(entry.get("dtypes", default_dtypes))
        if set(dtypes) - set(DTYPES):
            raise ValueError(f"conformance case {name!r}: dtypes {dtypes} not among {DTYPES}")
        case = Case(name=name, op=op, strides=entry["strides"], padding=entry["padding"],
                    dilations=entry.get("dilations"), data_format=entry.get("data_format", "NHWC"),
                    dtypes=dtypes, quick=bool(entry.get("quick")), large=bool(entry.get("large")),
                    sizes=fields.pop("sizes", None), **fields)
        try:
            case.geometry()  # a table mistake fails here, with TF's message
        except (ValueError, TypeError, NotImplementedError) as exc:
            raise ValueError(f"conformance case {name!r}: {exc}") from exc
        cases.append(case)
    return cases


def select_cases(cases: list[Case], quick: bool = False,
                 patterns: Optional[Iterable[str]] = None) -> list[Case]:
    """The --quick subset and/or the cases whose names match any glob in ``patterns``."""
    chosen = [c for c in cases if c.quick] if quick else list(cases)
    if patterns:
        patterns = list(patterns)
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(c.name, p) for c in cases)]
        if unmatched:
            raise ValueError(f"no conformance case matches {', '.join(unmatched)}; the cases "
                             f"are listed in {CASES_FILE} (`clconv conformance --list`)")
        chosen = [c for c in chosen if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    return chosen


# --------------------------------------------------------------------------- configurations


def _shipped_for_kind(family: str, info: DeviceInfo) -> list[tuple[str, dict]]:
    """What the ops use on this device when nothing is tuned."""
    try:
        return [(f"{info.kind} default", default_config(family, info))]
    except KeyError:  # a family the shipped defaults do not know (a plugin's)
        return []


def _shipped_generic(family: str, info: DeviceInfo) -> list[tuple[str, dict]]:
    """The safe defaults every device falls back to: the shipped defaults of a
    device that no kind or vendor section of configs/defaults.yaml matches."""
    anonymous = dataclasses.replace(info, kind="generic", vendor="", platform="", name="")
    try:
        return [("generic", default_config(family, anonymous))]
    except KeyError:
        return []


def _tuned(family: str, info: DeviceInfo) -> list[tuple[str, dict]]:
    """Every configuration of ``family`` the tuning database holds for this device,
    from current entries only (stale ones are never used, so never checked either)."""
    found: list[tuple[str, dict]] = []
    for entry in tuning_db.entries():  # a corrupt database warns and gives none
        if entry["op"] not in tuning_db.COMPUTATION or not tuning_db.is_current(
                entry, info, config_lookup.op_source_hash(entry["op"]),
                config_lookup.clconv_version()):
            continue
        tuned = config_lookup.tuned_config(entry, family)
        if tuned is not None:
            found.append((f"tuned for {entry.get('case') or entry['op']}", tuned))
    return found


def _shipped_for_other_kinds(family: str, info: DeviceInfo) -> list[tuple[str, dict]]:
    """The GPU defaults, checked on any device that can run them (a CPU, the simulator):
    their values are tested where no GPU is at hand (config_problem skips a group the
    device cannot hold)."""
    if info.kind == "GPU":
        return []
    gpu = dataclasses.replace(info, kind="GPU")
    try:
        return [("GPU default", default_config(family, gpu))]
    except KeyError:
        return []


# Functions (family, device) -> [(label, config)].
CONFIG_SOURCES: list[Callable[[str, DeviceInfo], list[tuple[str, dict]]]] = [
    _shipped_for_kind, _shipped_generic, _shipped_for_other_kinds, _tuned]


def configurations_for(family: str, info: DeviceInfo) -> list[tuple[str, dict]]:
    """Every distinct configuration of ``family`` that ``info``'s device may run,
    labelled by where it comes from (equal ones merged: "simulator default = generic")."""
    merged: list[tuple[list[str], dict]] = []
    for source in CONFIG_SOURCES:
        for label, config in source(family, info):
            for labels, known in merged:
                if known == config:
                    labels.append(label)
                    break
            else:
                merged.append(([label], dict(config)))
    if not merged:
        return [("kernel defaults", {})]
    return [(" = ".join(labels), config) for labels, config in merged]


def config_problem(config: dict, info: DeviceInfo) -> Optional[str]:
    """Why ``config`` cannot run on ``info``'s device, or None."""
    local = config.get("LOCAL_SIZE")
    if not local:
        return None
    size = int(np.prod(local))
    if size > info.max_work_group_size:
        return (f"LOCAL_SIZE {list(local)} is {size} work-items, more than the device's "
                f"{info.max_work_group_size}")
    for axis, (want, limit) in enumerate(zip(local, info.max_work_item_sizes)):
        if want > limit:
            return f"LOCAL_SIZE[{axis}] = {want} exceeds the device's {limit}"
    return None


format_config = search_space.format_config  # one way to print a configuration


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Variant:
    """One way to compute an op: the public op (no launcher) or an algorithm's launcher."""

    op: str
    algorithm: str
    family: Optional[str] = None
    launch: Optional[Launcher] = None
    limit: Optional[Limit] = None


def variants_for(op: str, info: DeviceInfo) -> list[Variant]:
    """The public op as clconv chooses, then every registered algorithm of the op with
    explicit configurations, then any plugin's."""
    variants = [Variant(op, AUTO)]
    for name in op_algorithms(op):
        found = _registry_algorithm(name, op, info)
        variants.append(Variant(op, name, found.family, found.launch, found.limit))
    for name, found in PLUGINS[op_kind(op)].items():
        variants.append(Variant(op, name, found.family, found.launch, found.limit))
    return variants


@dataclass(frozen=True)
class Run:
    """One case, dtype, variant and configuration on one device."""

    case: Case
    dtype: str
    variant: Variant
    config_label: str
    config: Optional[dict]  # None: whatever clconv chooses
    skip: Optional[str] = None

    def describe(self) -> str:
        config = f" [{self.config_label}{': ' + format_config(self.config) if self.config else ''}]"
        return f"{self.case.op} {self.variant.algorithm}{config} {self.case.name} {self.dtype}"


def _dtype_problem(dtype: str, info: DeviceInfo) -> Optional[str]:
    if dtype == "float64" and not info.fp64:
        return "no fp64"
    return None


def plan(info: DeviceInfo, cases: list[Case],
         dtypes: Optional[Iterable[str]] = None) -> list[Run]:
    """Every run of ``cases`` on ``info``'s device, the skipped ones with a reason."""
    wanted = set(dtypes) if dtypes else set(DTYPES)
    runs = []
    for case in cases:
        g = case.geometry()
        for dtype in (d for d in case.dtypes if d in wanted):
            case_skip = _dtype_problem(dtype, info)
            if case_skip is None and case.large and info.kind == "simulator":
                case_skip = "large layer, too slow for a simulator"
            for variant in variants_for(case.op, info):
                variant_skip = case_skip
                if variant_skip is None and variant.limit is not None:
                    variant_skip = variant.limit(dtype, g)
                if variant.launch is None:
                    runs.append(Run(case, dtype, variant, CHOSEN, None, variant_skip))
                    continue
                for label, config in configurations_for(variant.family, info):
                    skip = variant_skip or config_problem(config, info)
                    if skip is None and case.launches_nothing(g):
                        skip = "empty tensor: the op launches no kernel (see the auto row)"
                    runs.append(Run(case, dtype, variant, label, config, skip))
    return runs


# --------------------------------------------------------------------------- execute


def result(run: Run, status: str, reason: Optional[str] = None, **values: Any) -> dict:
    return {"case": run.case.name, "op": run.case.op, "algorithm": run.variant.algorithm,
            "family": run.variant.family, "config_label": run.config_label,
            "config": run.config, "dtype": run.dtype, "status": status, "reason": reason,
            **values}


class Operands:
    """Host operands, reference and device copies of one (case, dtype), made once
    for all the variants that run it."""

    def __init__(self, rt: Runtime, case: Case, dtype: str) -> None:
        self.key = (case.name, dtype)
        self.a, self.w = case.operands(dtype)
        self.g = case.geometry()
        self.expected = case.reference(self.a, self.w, self.g)
        self._rt = rt
        self._device: Optional[tuple] = None

    def on_device(self) -> tuple[tensors.DeviceTensor, tensors.DeviceTensor]:
        if self._device is None:
            rt = self._rt
            self._device = (tensors.to_device(self.a, self.a.dtype, rt.queue, rt.info, "input",
                                              False),
                            tensors.to_device(self.w, self.w.dtype, rt.queue, rt.info, "filter",
                                              False))
        return self._device


def execute(rt: Runtime, run: Run, operands: Operands) -> dict:
    """Run one planned run and compare it with the reference."""
    if run.skip is not None:
        return result(run, "skipped", run.skip)
    case, start = run.case, time.perf_counter()
    try:
        if run.variant.launch is None:
            algorithm = None if run.variant.algorithm == AUTO else run.variant.algorithm
            got = case.call_op(operands.a, operands.w, rt.info.spec, algorithm)
        else:
            a, w = operands.on_device()
            shape = case.output_shape(operands.g)
            # NaN everywhere first, so an element the kernel never writes cannot pass.
            out = tensors.to_device(np.full(shape, np.nan, dtype=run.dtype), np.dtype(run.dtype),
                                    rt.queue, rt.info, "output", False)
            run.variant.launch(rt, a, w, out, operands.g, dict(run.config))
            got = out.get(rt.queue)
    except tensors.ResourceExhaustedError as exc:
        return result(run, "skipped", f"too large for this device: {exc}")
    except Exception as exc:  # noqa: BLE001 - any error of a run is a failure to report
        return result(run, "failed", f"{type(exc).__name__}: {exc}",
                       seconds=time.perf_counter() - start)
    seconds = time.perf_counter() - start
    check = compare(got, operands.expected, run.dtype, case.reduction(operands.g))
    values = {"seconds": seconds, "max_rel_error": check.max_rel_error,
              "max_abs_error": check.max_abs_error, "rtol": check.rtol, "atol": check.atol}
    if check.ok:
        return result(run, "passed", **values)
    return result(run, "failed", check.describe(), worst_index=check.worst_index,
                   expected=check.expected, actual=check.actual,
                   bad_elements=check.bad_elements, **values)


def run_in_process(info: DeviceInfo, runs: list[Run],
                   progress: Optional[Callable[[dict], None]] = None) -> list[dict]:
    """Execute ``runs`` (ordered case by case, as plan() makes them) in this process."""
    rt = runtime(info.spec)
    results, operands = [], None
    for run in runs:
        key = (run.case.name, run.dtype)
        if run.skip is None and (operands is None or operands.key != key):
            operands = None  # release the previous case's buffers first
            operands = Operands(rt, run.case, run.dtype)
        result = execute(rt, run, operands)
        results.append(result)
        if progress is not None:
            progress(result)
    return results


# --------------------------------------------------------------------------- report


def summarize(results: list[dict]) -> list[dict]:
    """One row per op, algorithm and configuration: counts, skip reasons, worst error."""
    rows: dict[tuple, dict] = {}
    for r in results:
        key = (r["op"], r["algorithm"], r["config_label"])
        row = rows.setdefault(key, {"op": r["op"], "algorithm": r["algorithm"],
                                    "config_label": r["config_label"], "config": r["config"],
                                    "passed": 0, "failed": 0, "skipped": 0,
                                    "skip_reasons": {}, "worst_rel_error": None})
        row[r["status"]] += 1
        if r["status"] == "skipped":
            row["skip_reasons"][r["reason"]] = row["skip_reasons"].get(r["reason"], 0) + 1
        error = r.get("max_rel_error")
        if error is not None and (row["worst_rel_error"] is None or error > row["worst_rel_error"]):
            row["worst_rel_error"] = error
    order = {op: i for i, op in enumerate(OPS)}
    return sorted(rows.values(), key=lambda row: (order.get(row["op"], len(OPS)),
                                                  row["algorithm"] != AUTO))


def device_report(info: DeviceInfo, results: list[dict], seconds: float,
                  cases: list[Case], quick: bool, memcheck: bool) -> dict:
    counts = {s: sum(r["status"] == s for r in results) for s in ("passed", "failed", "skipped")}
    return {"device": dataclasses.asdict(info), "quick": quick, "memcheck": memcheck,
            "cases": [c.name for c in cases], "seconds": seconds, **counts,
            "worst_rel_error": max((r["max_rel_error"] for r in results
                                    if r.get("max_rel_error") is not None), default=None),
            "rows": summarize(results), "runs": results}
