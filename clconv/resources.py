"""Access to the OpenCL sources and YAML configs shipped inside the package.

``kernels/`` and ``configs/`` live at the top of the repository but are
mapped into the wheel as ``clconv.kernels`` and ``clconv.configs``; reading
them through importlib.resources makes an installed clconv independent of the
working directory.
"""

from __future__ import annotations

import functools
from importlib import resources


@functools.lru_cache(maxsize=None)
def kernel_source(name: str) -> str:
    """Return the text of ``kernels/<name>`` (for example ``conv2d_direct.cl``)."""
    return resources.files("clconv.kernels").joinpath(name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def config_text(name: str) -> str:
    """Return the text of ``configs/<name>``."""
    return resources.files("clconv.configs").joinpath(name).read_text(encoding="utf-8")


def config_names() -> list[str]:
    """Names of every YAML file shipped in ``configs/``."""
    return sorted(
        entry.name
        for entry in resources.files("clconv.configs").iterdir()
        if entry.name.endswith(".yaml")
    )
