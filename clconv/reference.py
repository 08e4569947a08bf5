"""An independent float64 NumPy reference for the three ops.

It shares nothing with the OpenCL kernels: the forward conv is a sum of
strided slices of an explicitly zero-padded input, and the input gradient is
the literal scatter of TF's formula  dx[ih*s - pad + a*d] += dy[ih] * w[a]
(tf-semantics.md section 3).  Tests, the tuner and the conformance run check
kernels against it.  Shapes come from clconv.shapes (TF's rules), values from
here.
"""

from __future__ import annotations

import numpy as np

from clconv.shapes import ConvGeometry


def _to_nhwc(array: np.ndarray, data_format: str) -> np.ndarray:
    return array if data_format == "NHWC" else array.transpose(0, 2, 3, 1)


def _from_nhwc(array: np.ndarray, data_format: str) -> np.ndarray:
    return array if data_format == "NHWC" else array.transpose(0, 3, 1, 2)


def conv2d_reference(x: np.ndarray, w: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """y = conv2d(x, w) in float64, x and y in g.data_format, w as [kh, kw, in/groups, out]."""
    x = _to_nhwc(np.asarray(x, dtype=np.float64), g.data_format)
    w = np.asarray(w, dtype=np.float64)
    y = np.zeros((g.batch, g.out_h, g.out_w, g.out_c))
    if y.size == 0 or x.size == 0 or w.size == 0:
        return _from_nhwc(y, g.data_format)
    padded = np.zeros((g.batch, g.in_h + g.pad_top + g.pad_bottom + g.stride_h + g.k_eff_h,
                       g.in_w + g.pad_left + g.pad_right + g.stride_w + g.k_eff_w, g.in_c))
    padded[:, g.pad_top:g.pad_top + g.in_h, g.pad_left:g.pad_left + g.in_w, :] = x
    cin_g, cout_g = g.in_c // g.groups, g.out_c // g.groups
    for a in range(g.k_h):
        rows = slice(a * g.dil_h, a * g.dil_h + (g.out_h - 1) * g.stride_h + 1, g.stride_h)
        for b in range(g.k_w):
            cols = slice(b * g.dil_w, b * g.dil_w + (g.out_w - 1) * g.stride_w + 1, g.stride_w)
            patch = padded[:, rows, cols, :]
            for group in range(g.groups):
                ins = slice(group * cin_g, (group + 1) * cin_g)
                outs = slice(group * cout_g, (group + 1) * cout_g)
                y[..., outs] += patch[..., ins] @ w[a, b, :, outs]
    return _from_nhwc(y, g.data_format)


def backprop_input_reference(dy: np.ndarray, w: np.ndarray, g: ConvGeometry) -> np.ndarray:
    """dx of the conv g (= conv2d_transpose of dy) in float64, by scattering every tap."""
    dy = _to_nhwc(np.asarray(dy, dtype=np.float64), g.data_format)
    w = np.asarray(w, dtype=np.float64)
    rows_needed = max(g.pad_top + g.in_h, (g.out_h - 1) * g.stride_h + g.k_eff_h) + 1
    cols_needed = max(g.pad_left + g.in_w, (g.out_w - 1) * g.stride_w + g.k_eff_w) + 1
    canvas = np.zeros((g.batch, rows_needed, cols_needed, g.in_c))
    cin_g, cout_g = g.in_c // g.groups, g.out_c // g.groups
    if dy.size and w.size:
        for a in range(g.k_h):
            rows = slice(a * g.dil_h, a * g.dil_h + (g.out_h - 1) * g.stride_h + 1, g.stride_h)
            for b in range(g.k_w):
                cols = slice(b * g.dil_w, b * g.dil_w + (g.out_w - 1) * g.stride_w + 1, g.stride_w)
                # dy[n,oh,ow,co] * w[a,b,ci,co] lands on canvas row oh*s + a*d (= oh*s - pad + a*d
                # in dx coordinates, the canvas being shifted by pad); a group's dy channels
                # reach only its own dx channels.
                for group in range(g.groups):
                    ins = slice(group * cin_g, (group + 1) * cin_g)
                    outs = slice(group * cout_g, (group + 1) * cout_g)
                    canvas[:, rows, cols, ins] += dy[..., outs] @ w[a, b, :, outs].T
    dx = canvas[:, g.pad_top:g.pad_top + g.in_h, g.pad_left:g.pad_left + g.in_w, :]
    return _from_nhwc(np.ascontiguousarray(dx), g.data_format)
