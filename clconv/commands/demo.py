"""``clconv demo``: the devices, then a DCGAN-style conv2d_transpose checked
against the float64 reference with every algorithm, saying what it did."""

from __future__ import annotations

import argparse
import time

import numpy as np

import clconv
from clconv import registry
from clconv.cli import add_device_argument
from clconv.commands.devices import run as list_devices
from clconv.device_select import find_device
from clconv.reference import backprop_input_reference
from clconv.shapes import backprop_input_geometry, parse_attrs

HELP = ("list devices and run a conv2d_transpose checked against the float64 reference "
        "with each algorithm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_argument(parser)


def run(args: argparse.Namespace) -> int:
    _, info = find_device(args.device)  # an unknown device fails before any output
    list_devices(argparse.Namespace(json=None))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 8, 64)).astype(np.float32)  # generator feature map
    w = rng.standard_normal((5, 5, 32, 64)).astype(np.float32) / 40  # [kh, kw, out, in]
    output_shape = (4, 16, 16, 32)
    g = backprop_input_geometry(output_shape, w.shape, x.shape, parse_attrs(2, "SAME", "NHWC",
                                                                            None))
    expected = backprop_input_reference(x, w, g)
    print(f"\nconv2d_transpose on {info.label}")
    print(f"  input {x.shape} (NHWC), filters {w.shape} [kh, kw, out, in], strides 2, SAME "
          f"-> output_shape {output_shape}")
    print("  = the input gradient of a 5x5 stride-2 conv: dilate by 2, pad fully, "
          "rotate the filter 180 degrees, stride-1 conv")
    failed = False
    for algorithm in registry.algorithms_for("conv2d_transpose"):
        reason = registry.unsupported(algorithm, "conv2d_transpose", x.dtype, g, info)
        if reason is not None:  # e.g. "grouped" takes grouped convs only
            print(f"  {algorithm:12s} not run: {reason}")
            continue
        clconv.conv2d_transpose(x, w, output_shape, 2, "SAME", device=info.spec,
                                algorithm=algorithm)  # first call builds the kernels
        start = time.perf_counter()
        y = clconv.conv2d_transpose(x, w, output_shape, 2, "SAME", device=info.spec,
                                    algorithm=algorithm)
        elapsed = time.perf_counter() - start
        error = float(np.max(np.abs(y - expected)) / np.max(np.abs(expected)))
        ok = error < 1e-5
        failed |= not ok
        print(f"  {algorithm:12s} {elapsed * 1e3:8.2f} ms   max error vs float64 reference "
              f"{error:.2e} (relative to max |y|)   {'OK' if ok else 'MISMATCH'}")
    return 1 if failed else 0
