"""A conformance plugin with a deliberately wrong kernel variant, for tests only.

``clconv conformance --plugin tests/conformance_corrupt.py`` adds the conv2d
algorithm ``test_corrupt``: the real direct kernel, after which its launcher
adds 1 to the last output element, so every run of it must fail and the report
must say where.
"""

from __future__ import annotations

from clconv import conformance, ops


def corrupting_launch(rt, x, w, y, g, config):
    event = ops.run_conv2d_direct(rt, x, w, y, g, config)
    host = y.array.get()
    host.reshape(-1)[-1] += 1
    y.array.set(host)
    return event


def register() -> None:
    conformance.add_launcher("conv2d", "test_corrupt", "conv2d_direct", corrupting_launch)
