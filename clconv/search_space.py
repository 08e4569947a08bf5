"""Search spaces of the kernel families, read from ``configs/<family>.yaml``.

A family file names the kernel it tunes, the ops it computes (and under which
algorithm name), each tunable with its candidate values and default, and two
lists of named constraints, each with a one-line reason:

- ``constraints``: rules of the kernel itself (they may read the conv's
  geometry, the op and the algorithm), e.g. ``TN % VEC == 0``;
- ``device_limits``: what a device can run (max work-group size and item
  sizes, local memory...).  A limit that reads the compiled kernel's own
  values (``kernel_work_group_size``, ``kernel_local_mem_size``) is checked
  after the build; every other one prunes before anything is compiled.

Constraint expressions are a small, side-effect-free language checked when
the file is read: literals, names, arithmetic, comparisons, ``and/or/not``,
``x if c else y``, subscripts and the functions in ``FUNCTIONS``.  They are
evaluated by walking the syntax tree, never by ``eval``.
"""

from __future__ import annotations

import ast
import functools
import itertools
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Sequence

import yaml

from clconv.cpu_vectors import vector_registers
from clconv.device_select import DeviceInfo
from clconv.resources import config_names, config_text
from clconv.shapes import ConvGeometry

OPS = ("conv2d", "conv2d_backprop_input", "conv2d_transpose")
LOCAL_SIZE = "LOCAL_SIZE"  # the work-group shape: null (auto: programs.ndrange) or [l0, l1(, l2)]

GEOMETRY_NAMES = ("batch", "in_h", "in_w", "in_c", "k_h", "k_w", "out_h", "out_w", "out_c",
                  "stride_h", "stride_w", "dil_h", "dil_w", "pad_top", "pad_bottom", "pad_left",
                  "pad_right", "groups")
DEVICE_NAMES = ("max_work_group_size", "max_work_item_sizes", "local_mem_size", "compute_units",
                "max_mem_alloc_size", "preferred_float_vector_width", "vector_registers",
                "device_kind")
KERNEL_NAMES = ("kernel_work_group_size", "kernel_local_mem_size",
                "kernel_preferred_work_group_size_multiple")
OTHER_NAMES = ("op", "algorithm", "dtype_size")

FUNCTIONS = {
    "min": min,
    "max": max,
    "abs": abs,
    "len": len,
    "prod": lambda values: math.prod(values),
    "cdiv": lambda a, b: -(-a // b),  # ceiling division
}

_TOP_KEYS = {"family", "doc", "kernel", "helper_kernels", "sources", "algorithms", "tunables",
             "constraints", "device_limits"}
_TUNABLE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
_RULE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class SearchSpaceError(ValueError):
    """A malformed search-space file: names the file, the key and what was expected."""


class ConstraintError(ValueError):
    """A constraint that could not be evaluated for one configuration."""


# --------------------------------------------------------------------------- expressions

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
            ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
            ast.Is: operator.is_, ast.IsNot: operator.is_not,
            ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_UNARY = {ast.Not: operator.not_, ast.USub: operator.neg, ast.UAdd: operator.pos}
_ALLOWED_NODES = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.UnaryOp,
                  ast.Compare, ast.IfExp, ast.Constant, ast.Name, ast.Load, ast.Subscript,
                  ast.Call, ast.List, ast.Tuple, *_BINARY, *_COMPARE, *_UNARY)
if hasattr(ast, "Index"):  # Python < 3.9 wraps subscripts in ast.Index
    _ALLOWED_NODES += (ast.Index,)


@dataclass(frozen=True)
class Expression:
    """A checked constraint expression and the names it reads."""

    text: str
    tree: ast.Expression = field(repr=False, compare=False)
    names: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> "Expression":
        """Parse ``text``; ValueError names the first construct that is not allowed."""
        try:
            tree = ast.parse(text.strip(), mode="eval")
        except SyntaxError as exc:
            raise ValueError(f"not a valid expression ({exc.msg})") from None
        names = set()
        for node in ast.walk(tree):
            if not isinstance(node, _ALLOWED_NODES):
                raise ValueError(f"{type(node).__name__} is not allowed in a constraint")
            if isinstance(node, ast.Call):
                if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                    raise ValueError(f"only the functions {', '.join(FUNCTIONS)} may be called")
                if node.keywords:
                    raise ValueError("keyword arguments are not allowed in a constraint")
            elif isinstance(node, ast.Name) and node.id not in FUNCTIONS:
                names.add(node.id)
            elif isinstance(node, ast.Constant) and not isinstance(
                    node.value, (int, float, str, type(None))):
                raise ValueError(f"constant {node.value!r} is not allowed in a constraint")
        return cls(text.strip(), tree, frozenset(names))

    def evaluate(self, values: Mapping[str, Any]) -> Any:
        return _evaluate(self.tree.body, values)


def _evaluate(node: ast.AST, values: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id]
    if isinstance(node, ast.BoolOp):
        if isinstance(node.op, ast.And):
            result = True
            for value in node.values:
                result = _evaluate(value, values)
                if not result:
                    return result
            return result
        result = False
        for value in node.values:
            result = _evaluate(value, values)
            if result:
                return result
        return result
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, values), _evaluate(node.right, values)
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            raise ValueError("exponent too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, values))
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, values)
        for op, right_node in zip(node.ops, node.comparators):
            right = _evaluate(right_node, values)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        branch = node.body if _evaluate(node.test, values) else node.orelse
        return _evaluate(branch, values)
    if isinstance(node, ast.Subscript):
        index = node.slice.value if hasattr(ast, "Index") and isinstance(node.slice, ast.Index) \
            else node.slice
        return _evaluate(node.value, values)[_evaluate(index, values)]
    if isinstance(node, ast.Call):
        return FUNCTIONS[node.func.id](*(_evaluate(a, values) for a in node.args))
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_evaluate(e, values) for e in node.elts]
    raise ValueError(f"{type(node).__name__} is not allowed in a constraint")  # pragma: no cover


@dataclass(frozen=True)
class Constraint:
    """A named rule a configuration must satisfy, and why."""

    name: str
    expr: Expression
    reason: str

    @property
    def after_build(self) -> bool:
        """True when it reads values only the compiled kernel knows."""
        return bool(self.expr.names & set(KERNEL_NAMES))

    def holds(self, values: Mapping[str, Any]) -> bool:
        try:
            return bool(self.expr.evaluate(values))
        except Exception as exc:  # noqa: BLE001 - any failure of a user expression
            raise ConstraintError(f"constraint {self.name!r} ({self.expr.text}) failed to "
                                  f"evaluate: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------- spaces


@dataclass(frozen=True)
class Tunable:
    name: str
    values: tuple[Any, ...]
    default: Any
    doc: str


@dataclass(frozen=True)
class SearchSpace:
    """One kernel family's tunables and constraints (a configs/<family>.yaml)."""

    family: str
    origin: str
    doc: str
    kernel: tuple[str, str]  # (source file, kernel name): the launch the tunables shape
    helper_kernels: Mapping[str, tuple[str, str]]  # role -> (source, name): other launches
    sources: tuple[str, ...]  # every kernel file the family's launches build
    algorithms: Mapping[str, str]  # op -> the algorithm name this family computes it as
    tunables: tuple[Tunable, ...]
    constraints: tuple[Constraint, ...]
    device_limits: tuple[Constraint, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tunables)

    def default_config(self) -> dict[str, Any]:
        """Each tunable's default (the value the kernel compiles with alone)."""
        return {t.name: _copy(t.default) for t in self.tunables}

    def size(self) -> int:
        return math.prod(len(t.values) for t in self.tunables)

    def configs(self) -> Iterator[dict[str, Any]]:
        """Every combination of candidate values, in file order (last tunable fastest)."""
        for combo in itertools.product(*(t.values for t in self.tunables)):
            yield {name: _copy(value) for name, value in zip(self.names, combo)}

    def violated(self, config: Mapping[str, Any], context: Mapping[str, Any],
                 rules: Sequence[Constraint]) -> Optional[Constraint]:
        """The first of ``rules`` that ``config`` breaks in ``context``, or None."""
        values = {**context, **config}
        for rule in rules:
            if not rule.holds(values):
                return rule
        return None

    def problem(self, config: Any, context: Mapping[str, Any],
                constraints: bool = True) -> Optional[str]:
        """Why ``config`` is not one of this space's configurations that may run in
        ``context`` (its tunables, their candidate values, the constraints and the
        device limits known before a build), or None.  A configuration read from a
        file passes here before any build option is formed from it.  ``constraints``
        False skips the kernel's own constraints (most say what is worth timing, not
        what is safe) and keeps the values and the device limits."""
        not_candidate = self.candidate_problem(config)
        if not_candidate is not None:
            return not_candidate
        rules = (self.constraints if constraints else ()) + self.before_build_limits
        try:
            rule = self.violated(config, context, rules)
        except ConstraintError as exc:
            return str(exc)
        return None if rule is None else f"breaks {rule.name} ({rule.expr.text}): {rule.reason}"

    def candidate_problem(self, config: Any) -> Optional[str]:
        """Why ``config`` is no configuration of this family at all (not a mapping of its
        tunables to candidate values), whatever the shape and device, or None."""
        if not isinstance(config, Mapping):
            return f"expected a mapping of {', '.join(self.names)}, got {config!r}"
        if set(config) != set(self.names):
            missing = [name for name in self.names if name not in config]
            unknown = sorted(str(name) for name in config if name not in self.names)
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown {', '.join(unknown)}"] if unknown else [])
            return (f"{'; '.join(parts)} (the family's tunables: "
                    f"{', '.join(self.names)})")
        for tunable in self.tunables:
            value = config[tunable.name]
            if isinstance(value, list):
                value = tuple(value)
            if isinstance(value, bool) or not any(
                    type(value) is type(candidate) and value == candidate
                    for candidate in tunable.values):
                shown = [list(v) if isinstance(v, tuple) else v for v in tunable.values]
                return (f"{tunable.name}={config[tunable.name]!r} is not one of the candidates "
                        f"{shown}")
        return None

    def broken_after_build(self, config: Mapping[str, Any], context: Mapping[str, Any],
                           kernel_values: Mapping[str, int]) -> Optional[Constraint]:
        """The first limit only the built kernel knows (``kernel_values``: its
        work-group size, local memory...) that ``config`` breaks, or None.  A value
        left to the launch ("auto") cannot be judged here: the launch judges it."""
        try:
            return self.violated(config, {**context, **kernel_values}, self.after_build_limits)
        except ConstraintError:
            return None

    @property
    def before_build_limits(self) -> tuple[Constraint, ...]:
        return tuple(c for c in self.device_limits if not c.after_build)

    @property
    def after_build_limits(self) -> tuple[Constraint, ...]:
        return tuple(c for c in self.device_limits if c.after_build)

    def prune(self, context: Mapping[str, Any]) -> "Pruned":
        """Split the space: what the constraints drop, what the device limits drop
        (before building), and the candidates left, in file order."""
        kept: list[dict[str, Any]] = []
        by_constraint: dict[str, int] = {}
        by_limit: dict[str, int] = {}
        for config in self.configs():
            rule = self.violated(config, context, self.constraints)
            if rule is not None:
                by_constraint[rule.name] = by_constraint.get(rule.name, 0) + 1
                continue
            rule = self.violated(config, context, self.before_build_limits)
            if rule is not None:
                by_limit[rule.name] = by_limit.get(rule.name, 0) + 1
                continue
            kept.append(config)
        return Pruned(self.size(), by_constraint, by_limit, kept)


@dataclass
class Pruned:
    total: int
    by_constraint: dict[str, int]
    by_limit: dict[str, int]
    candidates: list[dict[str, Any]]

    @property
    def after_constraints(self) -> int:
        return self.total - sum(self.by_constraint.values())

    @property
    def after_limits(self) -> int:
        return len(self.candidates)


def format_config(config: Optional[Mapping[str, Any]]) -> str:
    """``TM=6 TN=16 VEC=16 LOCAL_SIZE=1x16``, one way everywhere; a LOCAL_SIZE of None
    (no fixed shape: clconv picks each launch's groups on CPUs and GPUs, a simulator's
    runtime picks its own, see programs.ndrange) reads ``LOCAL_SIZE=auto``."""
    if not config:
        return "(kernel defaults)"
    parts = []
    for name, value in config.items():
        if isinstance(value, (list, tuple)):
            value = "x".join(map(str, value))
        elif value is None and name == LOCAL_SIZE:
            value = "auto"
        parts.append(f"{name}={value}")
    return " ".join(parts)


def _copy(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


# --------------------------------------------------------------------------- context


def context(geometry: ConvGeometry, info: DeviceInfo, op: str, algorithm: str,
            dtype_size: int = 4, kernel: Optional[Mapping[str, int]] = None) -> dict[str, Any]:
    """The names a constraint may read, for one launch (geometry: the tuned kernel's)."""
    values: dict[str, Any] = {name: getattr(geometry, name) for name in GEOMETRY_NAMES}
    values.update(
        max_work_group_size=info.max_work_group_size,
        max_work_item_sizes=list(info.max_work_item_sizes),
        local_mem_size=info.local_mem_size,
        compute_units=info.compute_units,
        max_mem_alloc_size=info.max_mem_alloc_size,
        preferred_float_vector_width=info.preferred_float_vector_width,
        # the ISA's register file, as the compiler targets it (clconv.cpu_vectors)
        vector_registers=vector_registers(info),
        device_kind=info.kind,
        op=op, algorithm=algorithm, dtype_size=dtype_size,
    )
    if kernel:
        values.update(kernel)
    return values


# --------------------------------------------------------------------------- loading


def _fail(origin: str, key: str, expected: str, got: Any) -> SearchSpaceError:
    shown = repr(got)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return SearchSpaceError(f"{origin}: key {key!r}: expected {expected}, got {shown}")


def _check_value(value: Any, origin: str, key: str, is_local: bool) -> Any:
    if is_local:
        if value is None:
            return None
        if (isinstance(value, list) and 1 <= len(value) <= 3
                and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
            return list(value)
        raise _fail(origin, key, "null or a list of 1 to 3 positive integers", value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _fail(origin, key, "an integer or a string (it becomes -D NAME=value)", value)
    return value


def _rules(raw: Any, origin: str, key: str, allowed: set[str], where: str) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail(origin, key, "a list of {name, expr, reason} mappings", raw)
    rules, seen = [], set()
    for i, item in enumerate(raw):
        item_key = f"{key}[{i}]"
        if not isinstance(item, dict) or set(item) != {"name", "expr", "reason"}:
            raise _fail(origin, item_key, "a mapping with exactly name, expr and reason", item)
        name, text, reason = item["name"], item["expr"], item["reason"]
        if not isinstance(name, str) or not _RULE_NAME.match(name) or name in seen:
            raise _fail(origin, f"{item_key}.name", "a unique lower_snake_case name", name)
        seen.add(name)
        if not isinstance(reason, str) or not reason.strip() or "\n" in reason.strip():
            raise _fail(origin, f"{item_key}.reason", "a one-line reason", reason)
        if not isinstance(text, str):
            raise _fail(origin, f"{item_key}.expr", "an expression as a string", text)
        try:
            expr = Expression.parse(text)
        except ValueError as exc:
            raise _fail(origin, f"{item_key}.expr", f"a constraint expression ({exc})",
                        text) from None
        unknown = sorted(expr.names - allowed)
        if unknown:
            raise _fail(origin, f"{item_key}.expr", f"only names {where} can read (unknown: "
                        f"{', '.join(unknown)})", text)
        rules.append(Constraint(name, expr, reason.strip()))
    return tuple(rules)


def load_space(text: str, origin: str) -> SearchSpace:
    """Parse and check one family file's text; ``origin`` names it in errors."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise SearchSpaceError(f"{origin}: not valid YAML{at}: "
                               f"{getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise _fail(origin, "(top level)", "a mapping with family, kernel, algorithms, "
                    "tunables, constraints, device_limits", data)
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise _fail(origin, unknown[0], f"one of {', '.join(sorted(_TOP_KEYS))}", unknown[0])
    family = data.get("family")
    if not isinstance(family, str) or not _RULE_NAME.match(family):
        raise _fail(origin, "family", "the family's lower_snake_case name", family)
    kernel = data.get("kernel")
    if (not isinstance(kernel, dict) or set(kernel) != {"source", "name"}
            or not all(isinstance(v, str) and v for v in kernel.values())):
        raise _fail(origin, "kernel", "a mapping {source: file.cl, name: kernel_name}", kernel)
    helpers = data.get("helper_kernels") or {}
    if not isinstance(helpers, dict) or not all(
            isinstance(role, str) and _RULE_NAME.match(role) and isinstance(spec, dict)
            and set(spec) == {"source", "name"}
            and all(isinstance(v, str) and v for v in spec.values())
            for role, spec in helpers.items()):
        raise _fail(origin, "helper_kernels", "a mapping role: {source: file.cl, name: "
                    "kernel_name}", helpers)
    helpers = {role: (spec["source"], spec["name"]) for role, spec in helpers.items()}
    sources = data.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise _fail(origin, "sources", "a list of kernel file names", sources)
    for source in [kernel["source"], *(src for src, _ in helpers.values())]:
        if source not in sources:
            sources = [*sources, source]
    algorithms = data.get("algorithms")
    if (not isinstance(algorithms, dict) or not algorithms
            or not all(op in OPS and isinstance(a, str) and a for op, a in algorithms.items())):
        raise _fail(origin, "algorithms", f"a mapping from ops ({', '.join(OPS)}) to "
                    "algorithm names", algorithms)
    doc = data.get("doc", "")
    if not isinstance(doc, str):
        raise _fail(origin, "doc", "a string", doc)

    raw = data.get("tunables")
    if not isinstance(raw, dict) or not raw:
        raise _fail(origin, "tunables", "a mapping NAME: {values: [...], default: ..., doc: ...}",
                    raw)
    tunables = []
    for name, spec in raw.items():
        key = f"tunables.{name}"
        if not isinstance(name, str) or not _TUNABLE_NAME.match(name):
            raise _fail(origin, key, "an UPPER_SNAKE tunable name (the -D macro)", name)
        if not isinstance(spec, dict) or not {"values", "default"} <= set(spec) \
                or not set(spec) <= {"values", "default", "doc"}:
            raise _fail(origin, key, "a mapping with values, default and doc", spec)
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise _fail(origin, f"{key}.values", "a non-empty list of candidate values", values)
        is_local = name == LOCAL_SIZE
        values = [_check_value(v, origin, f"{key}.values[{i}]", is_local)
                  for i, v in enumerate(values)]
        default = _check_value(spec["default"], origin, f"{key}.default", is_local)
        if default not in values:
            raise _fail(origin, f"{key}.default", f"one of the candidate values {values}",
                        default)
        if len({repr(v) for v in values}) != len(values):
            raise _fail(origin, f"{key}.values", "distinct candidate values", values)
        tunables.append(Tunable(name, tuple(tuple(v) if isinstance(v, list) else v
                                            for v in values),
                                default, str(spec.get("doc", ""))))
    names = {t.name for t in tunables}
    rule_names = names | set(GEOMETRY_NAMES) | set(OTHER_NAMES)
    # A constraint may read the device (what is worth timing can depend on it) but not
    # the built kernel: constraints prune the candidates before anything is built.
    constraints = _rules(data.get("constraints"), origin, "constraints",
                         rule_names | set(DEVICE_NAMES),
                         "the tunables, the geometry, op, algorithm, dtype_size and the device")
    limits = _rules(data.get("device_limits"), origin, "device_limits",
                    rule_names | set(DEVICE_NAMES) | set(KERNEL_NAMES),
                    "constraints and the device and kernel limits")
    return SearchSpace(family, origin, doc.strip(), (kernel["source"], kernel["name"]), helpers,
                       tuple(sources), dict(algorithms), tuple(tunables), constraints, limits)


def _is_space_file(text: str, origin: str) -> bool:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        load_space(text, origin)  # raises SearchSpaceError with the line of the problem
        raise  # pragma: no cover
    return isinstance(data, dict) and ("family" in data or "tunables" in data)


@functools.lru_cache(maxsize=1)
def shipped_spaces() -> dict[str, SearchSpace]:
    """Every family file shipped in configs/ (a YAML mapping with ``family`` or
    ``tunables``), by family name.  A malformed one raises SearchSpaceError."""
    spaces: dict[str, SearchSpace] = {}
    for name in config_names():
        origin = f"configs/{name}"
        text = config_text(name)
        if not _is_space_file(text, origin):
            continue
        space = load_space(text, origin)
        if name != f"{space.family}.yaml":
            raise _fail(origin, "family", f"{name[:-5]!r} (the file's name)", space.family)
        spaces[space.family] = space
    return spaces


def spaces_for(op: str, spaces: Optional[Mapping[str, SearchSpace]] = None
               ) -> list[tuple[str, SearchSpace]]:
    """(algorithm, space) of every family that computes ``op``."""
    spaces = shipped_spaces() if spaces is None else spaces
    found = [(space.algorithms[op], space) for space in spaces.values() if op in space.algorithms]
    seen: dict[str, str] = {}
    for algorithm, space in found:
        if algorithm in seen:
            raise SearchSpaceError(f"{space.origin}: key 'algorithms.{op}': algorithm "
                                   f"{algorithm!r} is already computed by family "
                                   f"{seen[algorithm]!r}")
        seen[algorithm] = space.family
    return found
