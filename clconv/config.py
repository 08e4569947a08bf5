"""Kernel configurations: which -D tunables and work-group shape a launch uses,
and which algorithm an op uses when the caller leaves ``algorithm=None``.

The ops ask only two questions, ``choose_config`` and ``choose_algorithm``;
for now they answer from the shipped defaults of configs/defaults.yaml, chosen
by device kind, and the tuning database slots in ahead of them.
"""

from __future__ import annotations

import functools
from typing import Any

import yaml

from clconv.devices import DeviceInfo
from clconv.resources import config_text

DEFAULTS_FILE = "defaults.yaml"


@functools.lru_cache(maxsize=1)
def _shipped_defaults() -> dict[str, Any]:
    return yaml.safe_load(config_text(DEFAULTS_FILE))


def default_config(family: str, info: DeviceInfo) -> dict[str, Any]:
    """Shipped defaults for ``family`` on a device like ``info`` (a fresh dict)."""
    shipped = _shipped_defaults()
    config = dict(shipped["generic"][family])
    config.update(shipped.get(info.kind, {}).get(family, {}))
    return config


def split_config(config: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, ...] | None]:
    """(-D defines, local size) of a configuration."""
    defines = {k: v for k, v in config.items() if k != "LOCAL_SIZE"}
    local = config.get("LOCAL_SIZE")
    return defines, (tuple(int(v) for v in local) if local else None)


def choose_config(family: str, info: DeviceInfo, op: str, geometry: Any) -> dict[str, Any]:
    """The configuration a launch of ``family`` uses for ``op`` on ``geometry``."""
    return default_config(family, info)


def choose_algorithm(op: str, info: DeviceInfo, geometry: Any) -> str:
    """The algorithm of ``op`` when the caller passed ``algorithm=None`` (the ops fall
    back to "direct" where the GEMM kernels do not apply: float16, grouped convs)."""
    return "gemm"
