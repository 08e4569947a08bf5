"""How many independent FMA chains a CPU device needs to reach its vector peak.

OpenCL reports a device's vector width, but not how many FMA pipes of that width
its cores have, nor their latency, and that decides the GEMM tile: a 6 x 16 tile
keeps six 16-wide accumulators, six independent FMA chains.  With a 4-cycle FMA
latency, six chains keep one 512-bit pipe busy but only three quarters of two.

So on a CPU with 16-wide vectors, clconv times, once per process and device,
FMAs on float16 values in 6 and in 12 independent chains (the same FMA count,
about a millisecond each on one work-item, alternated, best of five): 60-80 ms
with the program build, which PoCL caches across processes.  Measured on 2 cores,
Debian PoCL 3.1:

- AMD EPYC family 26 (Zen 5, two 512-bit FMA pipes): 4 chains 223, 6 chains 329,
  8 chains 430, 12 chains 446 GFLOP/s (both cores); 6-chain time / 12-chain time on
  one work-item 1.24-1.41 over twenty processes; and the GEMM's 6 x 32 tile
  (12 accumulators) ran the suite layers whose channels are a multiple of 32 at
  0.67-0.96x the time of 6 x 16 (docs/cpu-performance.md).
- On a core with one 512-bit FMA a cycle (Zen 4 splits a zmm FMA over its two
  256-bit pipes) six chains already saturate it: the ratio is 1.0 by the same
  model, and 6 x 16 was the best tile there across layers (a Zen 4 tile sweep).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

import numpy as np
import pyopencl as cl

logger = logging.getLogger("clconv")

CHAINS = (6, 12)
# 6-chain / 12-chain time: 1.33 with two pipes, 1.0 with one; the threshold sits at
# their geometric middle (measured on the Zen 5, twenty processes: 1.24-1.41).
TWO_PIPES_RATIO = 1.15
ROUNDS = 5
STEPS = 1 << 20  # FMA steps per chain of the 6-chain kernel (12 chains: half): ~1 ms

# The FMA is written `acc * a + a`, as the GEMM writes its own (OpenCL C contracts it to
# one vfmadd on an FMA core: checked in both PoCLs' objects): the fma() builtin of pip
# PoCL 3.0 on a Zen 4 does not compile for float16 ("LLVM ERROR: Cannot select: i64 =
# fma"), and the program then builds without its kernels.
TEMPLATE = """
__kernel void chains{n}(__global float16 *out, const float16 a, const int steps) {{
    float16 acc[{n}];
    for (int i = 0; i < {n}; ++i)
        acc[i] = (float16)((float)get_global_id(0) + i);
    for (int s = 0; s < steps; ++s) {{
        #pragma unroll
        for (int i = 0; i < {n}; ++i)
            acc[i] = acc[i] * a + a;
    }}
    float16 sum = acc[0];
    for (int i = 1; i < {n}; ++i)
        sum += acc[i];
    out[get_global_id(0)] = sum;
}}
"""
SOURCE = "".join(TEMPLATE.format(n=n) for n in CHAINS)

_ratios: dict[str, Optional[float]] = {}
_lock = threading.Lock()


def chain_speedup(device: cl.Device, spec: str) -> Optional[float]:
    """The 6-chain time over the 12-chain time on ``device`` (probed once per process),
    or None where the probe could not run."""
    with _lock:
        if spec in _ratios:
            return _ratios[spec]
    ratio = _measure(device)
    logger.debug("FMA chains on %s: 6-chain time / 12-chain time %s", spec,
                 "not measured" if ratio is None else f"{ratio:.2f}")
    with _lock:
        return _ratios.setdefault(spec, ratio)


def _measure(device: cl.Device) -> Optional[float]:
    try:
        context = cl.Context([device])
        queue = cl.CommandQueue(context)
        program = cl.Program(context, SOURCE).build()
        # One work-item, so one core: spread over several, PoCL ran the same kernel on
        # one or on two threads from one launch to the next (wall time 1.1-3.1 ms).
        items = 1
        out = cl.Buffer(context, cl.mem_flags.WRITE_ONLY, items * 64)
        a = np.full(16, 0.999, np.float32).view(cl.cltypes.float16)[0]
        # A build that LLVM gave up on can "succeed" without its kernels (pip PoCL 3.0):
        # pyopencl then raises AttributeError for the kernel's name.
        kernels = {n: getattr(program, f"chains{n}") for n in CHAINS}
        for n, kernel in kernels.items():
            kernel.set_args(out, a, np.int32(STEPS * CHAINS[0] // n))
        best = {n: float("inf") for n in CHAINS}
        for round_index in range(ROUNDS + 1):  # round 0 warms up and is not counted
            for n, kernel in kernels.items():
                start = time.perf_counter()
                cl.enqueue_nd_range_kernel(queue, kernel, (items,), (1,)).wait()
                if round_index:
                    best[n] = min(best[n], time.perf_counter() - start)
        return best[CHAINS[0]] / best[CHAINS[1]]
    except (cl.Error, AttributeError) as exc:
        logger.debug("FMA chain probe failed: %s", exc)
        return None
