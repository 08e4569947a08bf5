"""This machine's CPU in words: what a benchmark's figures and a failed build are read
against.

A virtual machine's model name often hides the core: "AMD EPYC" is a Zen 3, a Zen 4
or a Zen 5, which differ in the width of their FMA pipes.  So the description adds
the vendor, family and model numbers (what LLVM's host detection goes by) and the
widest vector instructions the kernel reports, the facts a tile or a speed depends on.
"""

from __future__ import annotations

import functools
import platform
import re
from typing import Optional

CPUINFO = "/proc/cpuinfo"
_FIELD = re.compile(r"^(model name|vendor_id|cpu family|model|flags)\s*:\s*(.*)$", re.MULTILINE)


def _read(path: str) -> str:
    """The head of ``path``; "" where it cannot be read (not Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as cpuinfo:
            return cpuinfo.read(16384)
    except OSError:
        return ""


def vector_isa(flags: set[str]) -> str:
    """The widest x86 vector extension in ``flags``, with FMA where it is there; ""
    for a CPU that reports none of them (not x86)."""
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                       ("sse4_2", "SSE4.2"), ("sse2", "SSE2")):
        if flag in flags:
            return f"{name} + FMA" if "fma" in flags and name.startswith("AVX") else name
    return ""


def describe(cpuinfo: Optional[str] = None) -> str:
    """E.g. "AMD EPYC (AuthenticAMD family 25 model 1, AVX2 + FMA)".  ``cpuinfo``: the
    text of /proc/cpuinfo (read here when None); where it names no model, Python's
    guess, else "this CPU"."""
    text = _read(CPUINFO) if cpuinfo is None else cpuinfo
    first = text.split("\n\n", 1)[0]  # the first processor's block: all report the same
    fields = dict((key, value.strip()) for key, value in _FIELD.findall(first))
    if not fields.get("model name"):
        return platform.processor() or "this CPU"
    details = " ".join(f"{label}{fields[key]}" for key, label in
                       (("vendor_id", ""), ("cpu family", "family "), ("model", "model "))
                       if fields.get(key))
    isa = vector_isa(set(fields.get("flags", "").split()))
    inside = ", ".join(part for part in (details, isa) if part)
    return f"{fields['model name']} ({inside})" if inside else fields["model name"]


CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"


def _size_bytes(text: str) -> Optional[int]:
    """sysfs's "2048K" (or "1M", "512") in bytes; None for anything else."""
    match = re.fullmatch(r"(\d+)([KMG]?)", text.strip())
    if not match:
        return None
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2)]


@functools.lru_cache(maxsize=None)
def core_cache_bytes(cache_dir: str = CACHE_DIR) -> Optional[int]:
    """The size of one core's level-2 cache (Linux's sysfs), None where it cannot be
    read.  OpenCL reports only the last-level cache (CL_DEVICE_GLOBAL_MEM_CACHE_SIZE:
    PoCL's 480 MB of L3 on the Intel Xeon of docs/cpu-performance.md), which says
    nothing of what one work-group keeps close: 2 MB on Intel's server cores since
    Sapphire Rapids, 1 MB on Zen 4 and Skylake-SP, 512 KB on Zen 3."""
    for index in range(8):
        folder = f"{cache_dir}/index{index}"
        if _read(f"{folder}/level").strip() == "2":
            return _size_bytes(_read(f"{folder}/size"))
    return None
