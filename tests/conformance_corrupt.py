"""A conformance plugin with a deliberately wrong kernel variant, for tests only.

``clconv conformance --plugin tests/conformance_corrupt.py`` adds the conv2d
algorithm ``test_corrupt``: the real direct kernel, after which its launcher
adds 1 to the last output element, so every run of it must fail and the report
must say where.
"""

from __future__ import annotations

from clconv import conformance

direct = conformance.registered_launch("direct", "conv2d")


def corrupting_launch(rt, x, w, y, g, config):
    event = direct(rt, x, w, y, g, config)
    host = y.get(rt.queue)
    host.reshape(-1)[-1] += 1
    y.set(rt.queue, host)
    return event


def register() -> None:
    conformance.add_launcher("conv2d", "test_corrupt", "conv2d_direct", corrupting_launch)
