"""The algorithm registry: the one place that knows which algorithms exist.

An algorithm is declared once, by the module that implements it, as an
``Algorithm``: its name, what it cannot compute (with the reason), how its
configuration is completed and how it prepares the launches of a plan.  Its
kernel family, and so its kernels and search space, come from the
configs/<family>.yaml whose ``algorithms`` key names it for the op.  The ops,
the plans, the tuner, conformance and bench all read this registry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import pyopencl as cl

from clconv import search_space
from clconv.device_select import DeviceInfo
from clconv.search_space import SearchSpace
from clconv.shapes import ConvGeometry


@dataclass(frozen=True)
class Setup:
    """Everything a plan has decided, handed to an algorithm's ``prepare``."""

    context: cl.Context
    info: DeviceInfo
    op: str
    geometry: ConvGeometry
    dtype: np.dtype
    space: SearchSpace
    config: dict[str, Any]  # complete and checked
    defines: dict[str, Any]  # the -D macros: the tunables and the dtype's REAL/ACC
    local: Optional[tuple[int, ...]]  # the work-group shape, or None


class Launch(Protocol):
    """The prepared launches of one plan (see plans.ConvPlan)."""

    kernels: Sequence[Any]  # TypedKernel objects, for the limits only a build knows

    def enqueue(self, queue: cl.CommandQueue, src: Any, filters: Any, out: Any,
                timeline: Optional[list] = None) -> Optional[cl.Event]:
        """Enqueue the computation of ``out`` from ``src`` (x, or dy for the backprop
        ops) and ``filters`` (a DeviceTensor or what ``pack`` returned)."""

    def pack(self, queue: cl.CommandQueue, filters: Any) -> Any:
        """The filter in the form ``enqueue`` reads fastest, made once."""


def _supports_all(op: str, dtype: np.dtype, g: ConvGeometry, info: DeviceInfo) -> Optional[str]:
    return None


@dataclass(frozen=True)
class Algorithm:
    """One way to compute convolutions, as the registry knows it.

    ``unsupported(op, dtype, geometry, device)`` says why the algorithm cannot
    compute a call (None when it can); ``kernel_geometry(op, g)`` is the conv its
    tuned kernel itself computes (what the search space's constraints read);
    ``resolve(config, op, g, device)`` fills in values left as "auto";
    ``prepare(setup)`` builds the plan's kernels, tables and buffers;
    ``kernel_defines`` says what each of them is built with (offline compiles read it);
    ``depth_taps``: it computes 3-D geometries (ConvGeometry.depth) of the ops whose
    ``unsupported`` lets them through.
    """

    name: str
    prepare: Callable[[Setup], Launch]
    unsupported: Callable[[str, np.dtype, ConvGeometry, DeviceInfo], Optional[str]] = \
        _supports_all
    kernel_geometry: Callable[[str, ConvGeometry], ConvGeometry] = lambda op, g: g
    resolve: Callable[[dict, str, ConvGeometry, DeviceInfo], dict] = \
        lambda config, op, g, info: config
    fallback: Optional[str] = None  # what the op runs instead when clconv chose this one
    doc: str = ""
    # The -D macros the family's kernel ("kernel") or a helper (its role in the family
    # file's helper_kernels) is built with, from the plan's (tunables + dtype macros).
    kernel_defines: Callable[[str, dict, np.dtype], dict] = \
        lambda role, defines, dtype: defines
    depth_taps: bool = False
    # It computes input gradients with ConvGeometry.padded_products (TF's depthwise one).
    padded_products: bool = False


# The algorithm that computes every op, dtype and grouping: the end of every
# fallback chain and the answer when nothing else is configured.
UNIVERSAL = "direct"

_lock = threading.Lock()
_registry: dict[str, Algorithm] = {}
_builtins_loaded = False


def register(algorithm: Algorithm) -> Algorithm:
    """Add (or replace) an algorithm; returns it, so a module can keep the object."""
    with _lock:
        _registry[algorithm.name] = algorithm
    return algorithm


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        # The modules register their algorithms when imported.
        from clconv import gemm  # noqa: F401  (first: the fastest general algorithm on CPUs)
        from clconv import direct  # noqa: F401
        from clconv import tiled  # noqa: F401
        from clconv import grouped  # noqa: F401
        from clconv import col2im  # noqa: F401


def get(name: str) -> Algorithm:
    _load_builtins()
    try:
        return _registry[name]
    except KeyError:
        raise KeyError(f"no algorithm {name!r} is registered") from None


def space_for(name: str, op: str) -> Optional[SearchSpace]:
    """The kernel family that computes ``op`` as algorithm ``name`` (configs/*.yaml)."""
    for algorithm, space in search_space.spaces_for(op):
        if algorithm == name:
            return space
    return None


def algorithms_for(op: str) -> tuple[str, ...]:
    """Every registered algorithm that some family computes ``op`` with, in the
    registration order (the fastest general one first)."""
    _load_builtins()
    families = {algorithm for algorithm, _ in search_space.spaces_for(op)}
    return tuple(name for name in _registry if name in families)


def unsupported(name: str, op: str, dtype: np.dtype, g: ConvGeometry,
                info: DeviceInfo) -> Optional[str]:
    """Why algorithm ``name`` cannot compute this call, or None."""
    if name not in algorithms_for(op):
        return f"algorithm {name!r} does not compute {op}"
    algorithm = get(name)
    if g.depth is not None and not algorithm.depth_taps:
        return f"algorithm {name!r} computes 2-D convolutions only"
    if g.padded_products and op != "conv2d" and not algorithm.padded_products:
        return (f"algorithm {name!r} multiplies real dy pixels only, where TF's depthwise "
                f"gradient multiplies every tap (a dy pixel that padding or the stride "
                f"leave out as 0); {', '.join(repr(n) for n in padded_products_algorithms())} "
                f"computes that")
    return algorithm.unsupported(op, np.dtype(dtype), g, info)


def padded_products_algorithms() -> list[str]:
    """The algorithms that compute input gradients with ConvGeometry.padded_products."""
    return [name for name, algorithm in _registry.items() if algorithm.padded_products]


def runnable(requested: str, op: str, dtype: np.dtype, g: ConvGeometry,
             info: DeviceInfo) -> str:
    """The algorithm a call runs when clconv chose ``requested``: it, or the first
    fallback along its chain that can compute the call."""
    name, seen = requested, set()
    while unsupported(name, op, dtype, g, info) is not None:
        seen.add(name)
        fallback = get(name).fallback if name in _registry else None
        if fallback is None or fallback in seen:
            # The chain ends short of this call (an every-tap gradient, which the
            # universal algorithm does not compute): any algorithm that computes it.
            for other in algorithms_for(op):
                if other not in seen and unsupported(other, op, dtype, g, info) is None:
                    return other
            raise ValueError(f"no registered algorithm computes {op} for dtype "
                             f"{np.dtype(dtype).name}; {requested!r}: "
                             f"{unsupported(requested, op, dtype, g, info)}")
        name = fallback
    return name
