"""A conformance plugin whose kernel launch reads and writes out of bounds, for
the Oclgrind memcheck test only (on a real device it would corrupt memory).

``clconv conformance --memcheck --plugin tests/conformance_overrun.py`` adds the
conv2d algorithm ``test_overrun``: the real direct kernel told that the batch
is one image larger than the tensors hold.
"""

from __future__ import annotations

import dataclasses

from clconv import conformance

direct = conformance.registered_launch("direct", "conv2d")


def overrunning_launch(rt, x, w, y, g, config):
    return direct(rt, x, w, y, dataclasses.replace(g, batch=g.batch + 1), config)


def register() -> None:
    conformance.add_launcher("conv2d", "test_overrun", "conv2d_direct", overrunning_launch)
