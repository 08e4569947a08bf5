"""The CPU in words (clconv.host_cpu): what `clconv bench` and a failed build name."""

from __future__ import annotations

import os
import platform

import pytest

from clconv import host_cpu

ZEN3_VM = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2

processor\t: 1
vendor_id\t: AuthenticAMD
model name\t: something else
"""

EMERALD_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: INTEL(R) XEON(R) PLATINUM 8581C CPU @ 2.10GHz
flags\t\t: sse2 avx fma avx2 avx512f avx512dq avx512bw amx_tile
"""

ARM = """processor\t: 0
BogoMIPS\t: 50.00
Features\t: fp asimd evtstrm aes
CPU implementer\t: 0x41
"""


def test_an_amd_vm_says_which_zen_and_how_wide():
    assert host_cpu.describe(ZEN3_VM) == "AMD EPYC (AuthenticAMD family 25 model 1, AVX2 + FMA)"


def test_an_intel_core_with_avx512():
    assert host_cpu.describe(EMERALD_RAPIDS) == (
        "INTEL(R) XEON(R) PLATINUM 8581C CPU @ 2.10GHz (GenuineIntel family 6 model 207, "
        "AVX-512 + FMA)")


def test_no_model_name_falls_back_to_pythons_guess_or_this_cpu():
    for text in (ARM, ""):
        assert host_cpu.describe(text) == (platform.processor() or "this CPU")


@pytest.mark.parametrize("flags, expected", [
    ({"sse2"}, "SSE2"), ({"sse2", "sse4_2", "avx"}, "AVX"), ({"avx", "fma", "avx2"}, "AVX2 + FMA"),
    ({"avx512f"}, "AVX-512"), (set(), "")])
def test_the_widest_vector_isa(flags, expected):
    assert host_cpu.vector_isa(flags) == expected


@pytest.mark.skipif(not os.path.exists("/proc/cpuinfo"), reason="no /proc/cpuinfo here")
def test_this_machine_is_named_by_its_first_processors_model():
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
        names = [line.split(":", 1)[1].strip() for line in cpuinfo
                 if line.startswith("model name")]
    if not names:
        pytest.skip("this kernel's /proc/cpuinfo names no model")
    assert host_cpu.describe().startswith(names[0] + " (")


def _cache_tree(root, levels):
    """A sysfs cache folder: index<i>/level and size for each (level, size) pair."""
    for index, (level, size) in enumerate(levels):
        folder = root / f"index{index}"
        folder.mkdir()
        (folder / "level").write_text(f"{level}\n")
        (folder / "size").write_text(f"{size}\n")
    return str(root)


@pytest.mark.parametrize("levels, expected", [
    ([(1, "48K"), (1, "32K"), (2, "2048K"), (3, "491520K")], 2 << 20),  # this Xeon
    ([(1, "32K"), (1, "32K"), (2, "1M"), (3, "32768K")], 1 << 20),
    ([(1, "32K"), (3, "8M")], None),  # no level 2
    ([(1, "32K"), (2, "big")], None),  # a size that is not one
])
def test_the_level_2_cache_per_core_from_sysfs(tmp_path, levels, expected):
    assert host_cpu.core_cache_bytes.__wrapped__(_cache_tree(tmp_path, levels)) == expected


def test_no_sysfs_cache_folder_means_no_size(tmp_path):
    assert host_cpu.core_cache_bytes.__wrapped__(str(tmp_path / "missing")) is None
