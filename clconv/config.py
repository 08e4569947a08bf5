"""Kernel configurations: which -D tunables and work-group shape a launch uses,
and which algorithm an op uses when the caller leaves ``algorithm=None``.

The ops ask only two questions, ``choose_config`` and ``choose_algorithm``.
The answer comes from the first of:

1. ``exact``: the tuning database's entry for this device, op and shape;
2. ``nearest``: the entry of the nearest tuned shape on this device
   (clconv.tuning_db.distance);
3. ``device defaults``: configs/defaults.yaml, the section of the device's
   kind (CPU, GPU...) then the vendor entries that match it;
4. ``generic``: the ``generic`` section of configs/defaults.yaml, over the
   defaults of configs/<family>.yaml (what the kernel compiles with alone).

Database entries count only while their key is current (device, driver,
clconv version, kernel source hash).  Each answer is memoised per (database,
device, op, family, geometry; LRU, MEMO_SIZE answers), so a process pays the
look-up once per shape; a write by this process's tuner drops the memo.  A
configuration read from the database is checked against its family's search
space (candidate values, constraints, device limits) before anything is built
from it; one that fails is skipped with a TuningDatabaseWarning.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import yaml

from clconv import search_space, tuning_db
from clconv.device_select import DeviceInfo
from clconv.programs import source_hash
from clconv.registry import UNIVERSAL
from clconv.resources import config_text

logger = logging.getLogger("clconv")

DEFAULTS_FILE = "defaults.yaml"
FALLBACK_ALGORITHM = UNIVERSAL  # every op has one
LEVELS = ("exact", "nearest", "device defaults", "generic")
RULE_KEYS = {"op", "when", "use", "reason"}
# A rule's optional `filters`: "any" (the default), or "unprepared": it holds only for
# calls whose filter is not prepared (ConvPlan.prepare_filters), which pay for the
# packing a GEMM reads.
RULE_FILTERS = ("any", "unprepared")


class DefaultsError(ValueError):
    """A malformed configs/defaults.yaml."""


@dataclass(frozen=True)
class Choice:
    """An answer and where it came from (one of LEVELS)."""

    value: Any
    source: str
    entry: Optional[Mapping[str, Any]] = None  # the database entry, for exact / nearest


# --------------------------------------------------------------------------- shipped defaults


def _check_section(section: Any, where: str) -> dict[str, Any]:
    if section is None:
        return {}
    if not isinstance(section, dict):
        raise DefaultsError(f"configs/{DEFAULTS_FILE}: key {where!r}: expected a mapping of "
                            f"families to configurations, got {section!r}")
    for key, value in section.items():
        if key in ("match", "kind") and where.startswith("vendors"):
            continue
        if key == "algorithm_rules":  # checked and parsed once, here
            section[key] = _parse_rules(value, f"{where}.{key}")
            continue
        if not isinstance(value, dict):
            raise DefaultsError(f"configs/{DEFAULTS_FILE}: key '{where}.{key}': expected a "
                                f"mapping, got {value!r}")
    return section


@functools.lru_cache(maxsize=1)
def _shipped_defaults() -> dict[str, Any]:
    data = yaml.safe_load(config_text(DEFAULTS_FILE)) or {}
    if not isinstance(data, dict):
        raise DefaultsError(f"configs/{DEFAULTS_FILE}: expected a mapping with generic, "
                            "device kinds and vendors")
    for key, value in data.items():
        if key == "vendors":
            if not isinstance(value, list):
                raise DefaultsError(f"configs/{DEFAULTS_FILE}: key 'vendors': expected a list "
                                    f"of {{match, kind, <family>: ...}}, got {value!r}")
            for i, item in enumerate(value):
                if not isinstance(item, dict) or not isinstance(item.get("match"), str):
                    raise DefaultsError(f"configs/{DEFAULTS_FILE}: key 'vendors[{i}]': expected "
                                        f"a mapping with a 'match' substring, got {item!r}")
                _check_section(item, f"vendors[{i}]")
        else:
            _check_section(value, key)
    return data


def _device_sections(info: DeviceInfo) -> list[Mapping[str, Any]]:
    """The sections of defaults.yaml that apply to ``info``, most general first."""
    shipped = _shipped_defaults()
    sections = [shipped.get("generic") or {}, shipped.get(info.kind) or {}]
    text = f"{info.vendor} {info.platform} {info.name}".lower()
    for item in shipped.get("vendors") or []:
        if item["match"].lower() in text and item.get("kind", info.kind) == info.kind:
            sections.append(item)
    return sections


def shipped_config(family: str, info: DeviceInfo) -> dict[str, Any]:
    """Levels 3-4 for ``family``: the family file's defaults, then defaults.yaml's
    generic, device-kind and vendor sections (a fresh dict)."""
    return _shipped_config(family, info)[0]


def _shipped_config(family: str, info: DeviceInfo) -> tuple[dict[str, Any], str]:
    space = search_space.shipped_spaces().get(family)
    config = space.default_config() if space is not None else {}
    sections = _device_sections(info)
    source = "generic"
    for i, section in enumerate(sections):
        if family in section:
            config.update(section[family])
            if i > 0:
                source = "device defaults"
    if not config:
        raise KeyError(f"no configuration for kernel family {family!r}: neither "
                       f"configs/{family}.yaml nor configs/{DEFAULTS_FILE} knows it")
    return config, source


def shipped_algorithm(op: str, info: DeviceInfo, geometry: Any = None,
                      prepared: bool = True) -> str:
    """Levels 3-4 of choose_algorithm: with a ``geometry``, defaults.yaml's
    algorithm_rules for it included (with ``prepared`` False, the rules for calls whose
    filters are not prepared too: what an op call with a raw filter runs)."""
    return _shipped_algorithm(op, info, geometry, prepared)[0]


def unprepared_algorithm(op: str, info: DeviceInfo, geometry: Any) -> Optional[tuple[str, str]]:
    """(algorithm, reason) of the defaults.yaml rule that sends calls of this shape
    whose filters are not prepared to another algorithm than prepared ones, or None."""
    prepared = _shipped_algorithm(op, info, geometry)[0]
    unprepared = _shipped_algorithm(op, info, geometry, prepared=False)
    if unprepared[0] == prepared:
        return None
    return unprepared[0], unprepared[2]


def _shipped_algorithm(op: str, info: DeviceInfo, geometry: Any = None,
                       prepared: bool = True) -> tuple[str, str, str]:
    """(algorithm, source, reason of the rule that chose it or ""): the sections'
    algorithm for ``op``, the most specific section winning; then, for a ``geometry``,
    their algorithm_rules: the last rule for ``op`` whose ``when`` holds for the shape
    overrides (a transpose to a few channels runs another algorithm than a wide one),
    rules for unprepared filters only where ``prepared`` is False."""
    algorithm, source, reason = FALLBACK_ALGORITHM, "generic", ""
    sections = _device_sections(info)
    for i, section in enumerate(sections):
        chosen = (section.get("algorithm") or {}).get(op)
        if chosen:
            algorithm, source = chosen, ("device defaults" if i > 0 else "generic")
    if geometry is not None:
        values = {name: getattr(geometry, name) for name in search_space.GEOMETRY_NAMES}
        for i, section in enumerate(sections):
            for rule in section.get("algorithm_rules", ()):
                if rule.op == op and (rule.filters == "any" or not prepared) \
                        and rule.when.evaluate(values):
                    algorithm, source = rule.use, ("device defaults" if i > 0 else "generic")
                    reason = rule.reason
    return algorithm, source, reason


@dataclass(frozen=True)
class AlgorithmRule:
    """defaults.yaml: run ``use`` for ``op`` where ``when`` (an expression over the
    forward conv's geometry, as the search spaces' constraints) holds."""

    op: str
    when: search_space.Expression
    use: str
    reason: str
    filters: str = "any"  # or "unprepared": only for calls with unprepared filters


def _parse_rules(raw: Any, where: str) -> tuple[AlgorithmRule, ...]:
    prefix = f"configs/{DEFAULTS_FILE}: key {where!r}"
    if not isinstance(raw, list):
        raise DefaultsError(f"{prefix}: expected a list of {{op, when, use, reason}}, "
                            f"got {raw!r}")
    rules = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not RULE_KEYS <= set(item) <= RULE_KEYS | {"filters"} \
                or not all(isinstance(v, str) for v in item.values()):
            raise DefaultsError(f"{prefix}[{i}]: expected a mapping of op, when, use, reason "
                                f"(and optionally filters) to strings, got {item!r}")
        if item.get("filters", "any") not in RULE_FILTERS:
            raise DefaultsError(f"{prefix}[{i}].filters: expected one of "
                                f"{', '.join(RULE_FILTERS)}, got {item['filters']!r}")
        if item["op"] not in search_space.OPS:
            raise DefaultsError(f"{prefix}[{i}].op: expected one of "
                                f"{', '.join(search_space.OPS)}, got {item['op']!r}")
        if item["use"] not in _known_algorithms(item["op"]):
            raise DefaultsError(f"{prefix}[{i}].use: expected an algorithm computing "
                                f"{item['op']} ({', '.join(sorted(_known_algorithms(item['op'])))})"
                                f", got {item['use']!r}")
        try:
            when = search_space.Expression.parse(item["when"])
        except ValueError as exc:
            raise DefaultsError(f"{prefix}[{i}].when: {exc}: {item['when']!r}") from None
        unknown = sorted(when.names - set(search_space.GEOMETRY_NAMES))
        if unknown:
            raise DefaultsError(f"{prefix}[{i}].when: reads only the geometry "
                                f"({', '.join(search_space.GEOMETRY_NAMES)}); unknown: "
                                f"{', '.join(unknown)}")
        rules.append(AlgorithmRule(item["op"], when, item["use"], item["reason"],
                                   item.get("filters", "any")))
    return tuple(rules)


def default_config(family: str, info: DeviceInfo) -> dict[str, Any]:
    """Shipped defaults for ``family`` on a device like ``info`` (a fresh dict)."""
    return shipped_config(family, info)


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, ...] | None]:
    """(-D defines, local size) of a configuration."""
    defines = {k: v for k, v in config.items() if k != "LOCAL_SIZE"}
    local = config.get("LOCAL_SIZE")
    return defines, (tuple(int(v) for v in local) if local else None)


# --------------------------------------------------------------------------- database keys


@functools.lru_cache(maxsize=None)
def op_source_hash(op: str) -> str:
    """Digest of every kernel source that any family computing ``op`` builds: a change
    to any of them may change which configuration, or algorithm, is best."""
    names = sorted({s for _, space in search_space.spaces_for(op) for s in space.sources})
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}:{source_hash(name)}\n".encode())
    return digest.hexdigest()[:16]


def clconv_version() -> str:
    from clconv import __version__  # at call time: clconv/__init__ imports this module

    return __version__


# --------------------------------------------------------------------------- look-ups

MEMO_SIZE = 4096  # memoised answers kept (least recently used dropped first)

_memo_lock = threading.Lock()
_memo: "collections.OrderedDict[tuple, Choice]" = collections.OrderedDict()
_memo_generation = -1


def invalidate() -> None:
    """Forget memoised answers and cached hashes (the tuner calls this after writing)."""
    global _memo_generation
    with _memo_lock:
        _memo.clear()
        _memo_generation = tuning_db.generation()
    op_source_hash.cache_clear()


def _memoised(key: tuple, compute) -> Choice:
    global _memo_generation
    with _memo_lock:
        if _memo_generation != tuning_db.generation():
            _memo.clear()
            _memo_generation = tuning_db.generation()
        found = _memo.get(key)
        if found is not None:
            _memo.move_to_end(key)
            return found
    found = compute()
    with _memo_lock:
        _memo[key] = found
        while len(_memo) > MEMO_SIZE:
            _memo.popitem(last=False)
    return found


def _db_key(db: Any) -> str:
    """Which database a memoised answer came from (cheap: no path resolution)."""
    return str(db) if db else "env:" + os.environ.get(tuning_db.ENV_DB, "")


def _device_id(info: DeviceInfo) -> tuple:
    return (info.platform, info.name, info.driver_version, info.kind, info.vendor)


def _known_algorithms(op: str) -> set[str]:
    return {algorithm for algorithm, _ in search_space.spaces_for(op)}


def _database(op: str, info: DeviceInfo, geometry: Any, db: Any, usable) -> Optional[Choice]:
    """Levels 1-2, or None.  Never raises: a problem gives a warning and None."""
    try:
        found = tuning_db.entries(db)
        if not found:
            return None
        entry, level = tuning_db.find(found, info, op, geometry, op_source_hash(op),
                                      clconv_version(), usable)
    except Exception as exc:  # noqa: BLE001 - the ops must run whatever the database holds
        warnings.warn(f"clconv tuning database look-up failed ({type(exc).__name__}: {exc}); "
                      "using defaults", tuning_db.TuningDatabaseWarning, stacklevel=4)
        return None
    return Choice(entry, level, entry) if entry is not None else None


def tuned_config(entry: Mapping[str, Any], family: str) -> Optional[dict[str, Any]]:
    """The configuration of ``family`` an entry records, unchecked (or None)."""
    for result in entry["results"].values():
        if isinstance(result, dict) and result.get("family") == family \
                and isinstance(result.get("config"), dict):
            return dict(result["config"])
    return None


def config_problem(config: Any, family: str, info: DeviceInfo, op: str, geometry: Any,
                   dtype_size: int = 4) -> Optional[str]:
    """Why a configuration read from a file may not run ``family`` for this call on
    ``info`` (not a configuration of the family's search space, a constraint or a
    device limit broken), or None.  ``geometry``: the conv the family's kernel computes."""
    space = search_space.shipped_spaces().get(family)
    if space is None:
        return f"no search space configs/{family}.yaml to check it against"
    algorithm = space.algorithms.get(op, "")
    return space.problem(config, search_space.context(geometry, info, op, algorithm,
                                                      dtype_size))


def _entry_label(entry: Mapping[str, Any]) -> str:
    shape = entry.get("case") or "x".join(
        str(entry["geometry"].get(k)) for k in ("batch", "in_h", "in_w", "in_c", "out_c"))
    return f"{entry['op']} {shape}"


def _is_wrong(entry: Mapping[str, Any], config: Any, family: str, geometry: Any) -> bool:
    """Whether an entry that cannot run this call is wrong in itself (worth a warning):
    tuned for this very shape, or no configuration of its family at all.  An entry tuned
    for another shape, which the nearest-shape look-up tries, may fit its own shape and
    not this one (a work-group as wide as 64 channels' tiles on an 8-channel conv):
    that is no fault of the file."""
    if tuning_db.geometry_of(entry) == tuple(getattr(geometry, name)
                                              for name in tuning_db.GEOMETRY_FIELDS):
        return True
    space = search_space.shipped_spaces().get(family)
    return space is None or space.candidate_problem(config) is not None


def explain_config(family: str, info: DeviceInfo, op: str, geometry: Any,
                   db: Any = None, kernel_geometry: Any = None, dtype_size: int = 4) -> Choice:
    """choose_config's answer and the level it came from.  A database entry is used
    only if its configuration passes ``config_problem`` for this call (checked on
    ``kernel_geometry``, the conv the family's kernel runs; default ``geometry``);
    one that does not gives a TuningDatabaseWarning and the next level answers."""
    checked = geometry if kernel_geometry is None else kernel_geometry
    key = ("config", _db_key(db), _device_id(info), op, family, geometry, checked, dtype_size)

    def compute() -> Choice:
        path = tuning_db.resolve_path(db)

        def usable(entry: Mapping[str, Any]) -> bool:
            config = tuned_config(entry, family)
            if config is None:
                return False
            problem = config_problem(config, family, info, op, checked, dtype_size)
            if problem is not None and _is_wrong(entry, config, family, geometry):
                warnings.warn(f"tuning database {path}: entry {_entry_label(entry)}, family "
                              f"{family}: {problem}; not used for this call",
                              tuning_db.TuningDatabaseWarning, stacklevel=6)
            elif problem is not None:
                logger.debug("tuning database %s: entry %s, tuned for another shape, does "
                             "not fit this one: %s", path, _entry_label(entry), problem)
            return problem is None

        found = _database(op, info, geometry, path, usable)
        if found is not None:
            return Choice(tuned_config(found.entry, family), found.source, found.entry)
        config, source = _shipped_config(family, info)
        return Choice(config, source)

    return _memoised(key, compute)


def explain_algorithm(op: str, info: DeviceInfo, geometry: Any, db: Any = None) -> Choice:
    """choose_algorithm's answer and the level it came from."""
    key = ("algorithm", _db_key(db), _device_id(info), op, geometry)

    def compute() -> Choice:
        path = tuning_db.resolve_path(db)
        known = _known_algorithms(op)
        found = _database(op, info, geometry, path, lambda e: e.get("algorithm") in known)
        if found is not None:
            return Choice(found.entry["algorithm"], found.source, found.entry)
        algorithm, source, _ = _shipped_algorithm(op, info, geometry)
        return Choice(algorithm, source)

    return _memoised(key, compute)


def choose_config(family: str, info: DeviceInfo, op: str, geometry: Any) -> dict[str, Any]:
    """The configuration a launch of ``family`` uses for ``op`` on ``geometry``
    (a fresh dict: the caller may change it)."""
    return {k: list(v) if isinstance(v, list) else v
            for k, v in explain_config(family, info, op, geometry).value.items()}


def choose_algorithm(op: str, info: DeviceInfo, geometry: Any) -> str:
    """The algorithm configured for ``op`` when the caller passed ``algorithm=None``
    (a plan falls back along the registry's chain where it does not apply)."""
    return explain_algorithm(op, info, geometry).value
