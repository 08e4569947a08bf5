"""Import-order tests: clconv next to TensorFlow on every OpenCL device.

Why: TensorFlow exports its own LLVM into the global symbol scope, and LLVM-based
OpenCL runtimes (PoCL, Oclgrind) then crash or fail to build programs unless
clconv.llvm_guard deep-binds them first.  A crash is a segfault, so every
scenario runs in a fresh ``sys.executable -c`` subprocess: a crash fails the
test, not the test run.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None, reason="tensorflow not importable"
)

# Shared body: compare clconv with tf.nn on every clconv device, in-process.
_CHECK = textwrap.dedent(
    """
    import numpy as np
    from clconv.llvm_guard import OpenCLRuntimeConflictError

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 9, 3)).astype(np.float32)
    w = rng.standard_normal((3, 3, 3, 4)).astype(np.float32)
    xt = rng.standard_normal((2, 5, 5, 3)).astype(np.float32)
    wt = rng.standard_normal((3, 3, 2, 3)).astype(np.float32)  # [h, w, out, in]
    checked, refused = 0, []
    for dev in clconv.devices():
        if clconv.device_problem(dev.spec):  # its compiler builds nothing on this CPU
            continue
        try:
            for strides, padding in ((1, "SAME"), (2, "VALID")):
                ref = tf.nn.conv2d(x, w, strides, padding).numpy()
                got = np.asarray(clconv.conv2d(x, w, strides, padding, device=dev.spec))
                assert got.shape == ref.shape, (dev.spec, got.shape, ref.shape)
                assert np.allclose(got, ref, rtol=1e-4, atol=1e-4), (dev.spec, "conv2d")
            for padding, out_hw in (("SAME", 10), ("VALID", 11)):
                shape = (2, out_hw, out_hw, 2)
                ref = tf.nn.conv2d_transpose(xt, wt, shape, 2, padding).numpy()
                got = np.asarray(
                    clconv.conv2d_transpose(xt, wt, shape, 2, padding, device=dev.spec)
                )
                assert got.shape == ref.shape, (dev.spec, got.shape, ref.shape)
                assert np.allclose(got, ref, rtol=1e-4, atol=1e-4), (dev.spec, "transpose")
        except OpenCLRuntimeConflictError as exc:
            if not ALLOW_CONFLICT:
                raise
            refused.append((dev.spec, str(exc)[:120]))
            continue
        checked += 1
    print("REFUSED", refused)
    print("CHECKED", checked)
    assert checked > 0, "no device produced results"
    """
)

_PRELUDES = {
    # TensorFlow first, then clconv on every device.
    "tf_first": "ALLOW_CONFLICT = False\nimport tensorflow as tf\nimport clconv\n",
    # clconv first (guard runs at import), then TensorFlow.
    "clconv_first": "ALLOW_CONFLICT = False\nimport clconv\nimport tensorflow as tf\n",
    # clconv used (programs built) before TensorFlow is imported.
    "clconv_used_then_tf": (
        "ALLOW_CONFLICT = False\nimport clconv\nimport numpy as np\n"
        "for d in clconv.devices():\n"
        "    if clconv.device_problem(d.spec): continue\n"
        "    clconv.conv2d(np.ones((1, 4, 4, 1), np.float32),"
        " np.ones((2, 2, 1, 1), np.float32), 1, 'SAME', device=d.spec)\n"
        "import tensorflow as tf\n"
    ),
    # pyopencl opened the ICDs before clconv could deep-bind them: results must
    # be right wherever clconv computes; where it cannot, it must raise
    # OpenCLRuntimeConflictError rather than crash (Debian PoCL, no build yet).
    "pyopencl_first": (
        "ALLOW_CONFLICT = True\nimport pyopencl as cl\ncl.get_platforms()\n"
        "import tensorflow as tf\nimport clconv\n"
    ),
}


@pytest.mark.parametrize("order", sorted(_PRELUDES))
def test_import_order(order: str) -> None:
    env = dict(os.environ)
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    code = _PRELUDES[order] + _CHECK
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent,  # the installed clconv, not the source tree
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    tail = (proc.stdout + proc.stderr)[-4000:]
    assert proc.returncode == 0, f"order {order!r}: exit code {proc.returncode}\n{tail}"
    assert "CHECKED" in proc.stdout, tail
