"""The ONNX operator's own node tests for Conv and ConvTranspose (the cases onnx ships
in onnx.backend.test.case.node, with their expected outputs), run through
clconv.onnx on every device.  The case modules are run with their ``expect``
captured, so the expected values are onnx's own, not recomputed here."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

import clconv.onnx as co
from helpers import assert_close

onnx = pytest.importorskip("onnx")
from onnx import helper  # noqa: E402

MODULES = ("onnx.backend.test.case.node.conv", "onnx.backend.test.case.node.convtranspose")


def _collect() -> list[tuple[str, object, list, list]]:
    """(name, node, inputs, expected outputs) of every Conv / ConvTranspose node case."""
    found = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        original = module.expect

        def capture(node, inputs, outputs, name, **kwargs):
            found.append((name, node, list(inputs), list(outputs)))

        module.expect = capture
        try:
            for value in vars(module).values():
                if isinstance(value, type) and value.__module__ == module.__name__:
                    for attr in dir(value):
                        if attr.startswith("export"):
                            getattr(value, attr)()
        finally:
            module.expect = original
    return found


CASES = _collect()


def test_the_official_cases_were_found():
    names = {name for name, *_ in CASES}
    assert {"test_basic_conv_with_padding", "test_convtranspose_3d",
            "test_convtranspose_output_shape", "test_convtranspose_autopad_same"} <= names


@pytest.mark.parametrize("case", CASES, ids=[name for name, *_ in CASES])
def test_official_node_case(device, spec, case):
    name, node, inputs, outputs = case
    if device.kind == "simulator" and inputs[0].size > 4096:
        pytest.skip("a large case: the simulator runs the small ones")
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attributes = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in attributes.items()}
    run = co.conv if node.op_type == "Conv" else co.conv_transpose
    got = run(*inputs, **attributes, device=spec)
    want = outputs[0]
    assert got.shape == want.shape, (name, got.shape, want.shape)
    taps = int(np.prod(inputs[1].shape[2:]))
    assert_close(got, want.astype(got.dtype), got.dtype, taps * inputs[1].shape[1] * 4)
