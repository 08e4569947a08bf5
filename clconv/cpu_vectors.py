"""How wide a CPU device's vectors are and how many registers hold them.

The GEMM tiles (clconv.gemm) and the search spaces' register limit
(configs/gemm_implicit.yaml, col2im.yaml: ``vector_registers``) read the device's
vector width and register file from here: from what the device reports, capped
by the ISA its compiler really targets (clconv.compiler_probe).
"""

from __future__ import annotations

from typing import Optional

from clconv import compiler_probe
from clconv.device_select import DeviceInfo, enumerated


def vector_width(info: DeviceInfo) -> int:
    """The accumulator width for a device: its preferred float vector width (what its
    compiler packs into one register: 16 on AVX-512 builds, 8 on AVX2, 4 on SSE, 1 on
    most GPUs), as one of the kernel's widths 4, 8 or 16.  It replaces a rule that
    matched "avx512" in the device name.

    On a CPU, never wider than the ISA its compiler targets (``compiled_width``):
    pip PoCL 3.0 on a Zen 4 reports 16 and compiles AVX2 code, where 16-wide
    vectors are pairs of ymm registers and a tile sized for 32 registers spills
    (docs/cpu-performance.md, "A Zen 4 again")."""
    preferred = max(int(info.preferred_float_vector_width or 1), 4)
    width = max(v for v in (4, 8, 16) if v <= preferred)
    compiled = compiled_width(info)
    return min(width, compiled) if compiled else width


def compiled_width(info: DeviceInfo) -> Optional[int]:
    """clconv.compiler_probe's compiled vector width for a CPU ``info`` that is a real
    device (None for others, and for a DeviceInfo edited to stand for another kind)."""
    if info.kind != "CPU":
        return None
    pair = enumerated(info.spec)
    if pair is None or pair[1].kind != "CPU":
        return None
    return compiler_probe.compiled_vector_width(pair[0], info.spec)


def vector_registers(info: DeviceInfo) -> int:
    """Vector registers of a CPU's ISA, as its vector width implies: 32 with 16-wide
    (AVX-512) vectors, 16 with AVX2 or SSE."""
    return 32 if vector_width(info) >= 16 else 16


_ISA_OF_WIDTH = {16: "AVX-512", 8: "AVX/AVX2", 4: "SSE2"}


def describe(info: DeviceInfo) -> Optional[str]:
    """One line on a CPU device's vectors for reports (None for other devices): the
    width and registers the GEMM tiles are sized for, and where they come from."""
    if info.kind != "CPU":
        return None
    width, compiled = vector_width(info), compiled_width(info)
    source = (f"its compiler targets {_ISA_OF_WIDTH[compiled]}" if compiled
              else "its compiler's ISA not known")
    return (f"vectors: {width}-wide float, {vector_registers(info)} registers (the device "
            f"reports {info.preferred_float_vector_width}-wide; {source})")
