"""Small cases run under Oclgrind's checks by test_oclgrind.py.

Each case runs in its own process: Oclgrind reads its OCLGRIND_* settings when
its runtime loads, and Oclgrind 21.10's uninitialised-value checker reports
false positives once a process reuses the address of a released buffer
(measured: the same via_forward case run twice in one process is flagged the
second time, even with the queue finished in between; kept alive, never).
"""

from __future__ import annotations

import sys

import numpy as np

import clconv

CONV = [  # x_shape, w_shape, strides, padding, dilations, data_format
    ((1, 5, 6, 3), (3, 3, 3, 5), 1, "SAME", None, "NHWC"),
    ((2, 3, 7, 6), (3, 2, 3, 4), 2, "VALID", None, "NCHW"),
    ((1, 7, 7, 4), (3, 3, 2, 6), 2, "SAME", 2, "NHWC"),  # grouped + dilated: direct only
    ((1, 2, 2, 2), (5, 5, 2, 3), 1, [[0, 0], [3, 1], [0, 2], [0, 0]], None, "NHWC"),
]
TRANSPOSE = [  # dy_shape, w_shape, output_shape, strides, padding, dilations, data_format
    ((1, 3, 3, 3), (3, 3, 2, 3), (1, 6, 6, 2), 2, "SAME", None, "NHWC"),
    ((1, 3, 3, 4), (3, 3, 2, 3), (1, 2, 9, 12), 3, "VALID", None, "NCHW"),
    ((1, 6, 6, 1), (2, 2, 2, 1), (1, 3, 3, 2), 1, [[0, 0], [2, 2], [2, 2], [0, 0]], None, "NHWC"),
    ((1, 3, 3, 2), (3, 3, 2, 2), (1, 9, 9, 2), 2, "VALID", 2, "NHWC"),
]


CASE_IDS = [f"conv2d-{i}-{algorithm}" for i in range(len(CONV))
            for algorithm in ("direct", "gemm") if not (i == 2 and algorithm == "gemm")] + [
    f"transpose-{i}-{algorithm}" for i in range(len(TRANSPOSE))
    for algorithm in ("direct", "via_forward", "gemm")]


def run_case(case_id: str, spec: str) -> None:
    rng = np.random.default_rng(0)
    kind, index, *rest = case_id.split("-")
    if kind == "conv2d":
        x_shape, w_shape, strides, padding, dilations, fmt = CONV[int(index)]
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        clconv.conv2d(x, w, strides, padding, fmt, dilations, device=spec, algorithm=rest[0])
    else:
        dy_shape, w_shape, out_shape, strides, padding, dilations, fmt = TRANSPOSE[int(index)]
        dy = rng.standard_normal(dy_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        clconv.conv2d_transpose(dy, w, out_shape, strides, padding, fmt, dilations,
                                device=spec, algorithm=rest[0])
    print("ran", case_id)


if __name__ == "__main__":
    run_case(sys.argv[1], sys.argv[2])
