"""Compile clconv's shipped GPU configurations offline, for GPUs this machine lacks,
and read what each compiler reports: registers and spills per kernel.

Targets and their tool chains (each skipped, with the reason, where a tool is absent):

- NVIDIA sm_80 (A100): clang-15 -> LLVM bitcode, linked with libclc's
  nvptx64--nvidiacl.bc for the OpenCL built-ins, opt -O3, llc -> PTX, then ptxas -v
  (the nvidia-cuda-nvcc-cu12 wheel's, or one on PATH);
- AMD gfx90a (MI200): the same through libclc's amdgcn--amdhsa.bc, llc's resource
  comments (VGPRs, scratch, occupancy);
- Intel DG2 (Arc): ocloc from Debian's intel-opencl-icd, which warns "spilled
  around N" for a kernel that spills and is silent otherwise.

Budgets (``Budget``): no spills anywhere, and registers that keep the occupancy a
GEMM kernel needs to hide its latencies: at most 128 per work-item on sm_80 (16 of
64 warps per SM with 256-work-item groups; past it 8), at most 128 VGPRs on gfx90a
(4 waves per SIMD; past it 3 or fewer), and no spill on DG2 (whose kernels otherwise
need the large-GRF mode that halves its threads per EU).

``python offline_compile.py`` prints the table for every shipped GPU default.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from clconv import config, programs, registry, search_space, tiled

LIBCLC = Path("/usr/lib/clc")
TIMEOUT_S = 300


@dataclass(frozen=True)
class Budget:
    max_registers: int
    why: str


@dataclass(frozen=True)
class KernelReport:
    target: str
    family: str
    config: str
    dtype: str
    kernel: str
    registers: Optional[int]  # None where the compiler does not say (Intel)
    spill_bytes: int
    detail: str  # occupancy or SIMD width, as the compiler states it

    def problem(self, budget: Budget) -> Optional[str]:
        if self.spill_bytes:
            return f"spills {self.spill_bytes} bytes"
        if self.registers is not None and self.registers > budget.max_registers:
            return f"{self.registers} registers > {budget.max_registers} ({budget.why})"
        return None


class OfflineCompileError(RuntimeError):
    """A compiler failed; the message holds its command and output."""


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise OfflineCompileError(f"{' '.join(argv)} failed ({proc.returncode}):\n"
                                  f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def ptxas_path() -> Optional[str]:
    """ptxas from the nvidia-cuda-nvcc-cu12 wheel, else from PATH."""
    try:
        import nvidia.cuda_nvcc  # type: ignore[import-not-found]
        for root in nvidia.cuda_nvcc.__path__:
            candidate = Path(root) / "bin" / "ptxas"
            if candidate.exists():
                return str(candidate)
    except ImportError:
        pass
    return shutil.which("ptxas")


def _llvm_tools() -> Optional[str]:
    """Why the clang-15 + libclc chain cannot run here, or None."""
    for tool in ("clang-15", "llvm-link-15", "opt-15", "llc-15"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages clang-15, llvm-15)"
    return None


def _libclc(name: str) -> Optional[str]:
    if not (LIBCLC / name).exists():
        return f"{LIBCLC / name} is missing (Debian package libclc-15)"
    return None


def _bitcode(source: Path, options: list[str], triple: str, cpu: str, libclc: str,
             work: Path) -> Path:
    """The kernel file as optimised LLVM bitcode with libclc's built-ins linked in."""
    extra = ["-nogpulib"] if triple.startswith("amdgcn") else []
    _run(["clang-15", "-x", "cl", *options, "-target", triple, f"-mcpu={cpu}", *extra,
          "-Xclang", "-finclude-default-header", "-O3", "-emit-llvm", "-c", str(source),
          "-o", str(work / "k.bc")])
    # libclc's triples spell the vendor "unknown": llvm-link warns and links anyway.
    _run(["llvm-link-15", "--only-needed", str(work / "k.bc"), str(LIBCLC / libclc),
          "-o", str(work / "linked.bc")])
    _run(["opt-15", "-O3", str(work / "linked.bc"), "-o", str(work / "opt.bc")])
    return work / "opt.bc"


def _nvidia(source: Path, options: list[str], work: Path) -> list[tuple[str, int, int, str]]:
    bitcode = _bitcode(source, options, "nvptx64-nvidia-nvcl", "sm_80",
                       "nvptx64--nvidiacl.bc", work)
    _run(["llc-15", "-mtriple=nvptx64-nvidia-cuda", "-mcpu=sm_80", "-mattr=+ptx70",
          str(bitcode), "-o", str(work / "k.ptx")])
    log = _run([ptxas_path() or "ptxas", "-arch=sm_80", "-v", str(work / "k.ptx"),
                "-o", str(work / "k.cubin")])
    found = []
    for block in re.split(r"Compiling entry function ", log)[1:]:
        name = re.match(r"'([^']+)'", block).group(1)
        spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", block)
        registers = re.search(r"Used (\d+) registers", block)
        smem = re.search(r"(\d+) bytes smem", block)
        found.append((name, int(registers.group(1)),
                      int(spills.group(1)) + int(spills.group(2)),
                      f"{smem.group(1) if smem else 0} B shared"))
    return found


def _amd(source: Path, options: list[str], work: Path) -> list[tuple[str, int, int, str]]:
    bitcode = _bitcode(source, options, "amdgcn-amd-amdhsa", "gfx90a", "amdgcn--amdhsa.bc",
                       work)
    _run(["llc-15", "-mtriple=amdgcn-amd-amdhsa", "-mcpu=gfx90a", str(bitcode),
          "-o", str(work / "k.s")])
    text = (work / "k.s").read_text()
    found = []
    # llc follows each kernel's code (its label "name:") with "; Kernel info:" comments.
    for match in re.finditer(r"\.amdhsa_kernel (\S+)", text):
        kernel = match.group(1)
        start = re.search(rf"^{re.escape(kernel)}:", text, re.MULTILINE).start()
        info = text[text.find("; Kernel info:", start):]
        vgprs = int(re.search(r"; TotalNumVgprs: (\d+)", info).group(1))
        scratch = int(re.search(r"; ScratchSize: (\d+)", info).group(1))
        occupancy = re.search(r"; Occupancy: (\d+)", info).group(1)
        found.append((kernel, vgprs, scratch, f"{occupancy} waves/SIMD"))
    return found


def _intel(source: Path, options: list[str], work: Path) -> list[tuple[str, Optional[int],
                                                                       int, str]]:
    log = _run(["ocloc", "compile", "-file", str(source), "-device", "dg2", "-out_dir",
                str(work), "-options", " ".join(options)])
    kernels = re.findall(r"__kernel\s+(?:__attribute__\(\([^)]*\)\)\)\s*)?void\s+(\w+)",
                         source.read_text())
    found = []
    for kernel in kernels:
        spill = re.search(rf"kernel {kernel}\s+compiled (SIMD\d+) allocated (\d+) regs and "
                          rf"spilled around (\d+)", log)
        if spill:
            found.append((kernel, int(spill.group(2)), int(spill.group(3)),
                          f"{spill.group(1)}, spilled"))
        else:
            found.append((kernel, None, 0, "no spill"))
    return found


@dataclass(frozen=True)
class Target:
    name: str
    missing: Callable[[], Optional[str]]
    compile: Callable[[Path, list[str], Path], list]
    budget: Budget


TARGETS = (
    Target("NVIDIA sm_80",
           lambda: _llvm_tools() or _libclc("nvptx64--nvidiacl.bc") or (
               None if ptxas_path() else "ptxas is missing (pip install nvidia-cuda-nvcc-cu12)"),
           _nvidia, Budget(128, "past 128, sm_80 holds 8 instead of 16 warps per SM")),
    Target("AMD gfx90a", lambda: _llvm_tools() or _libclc("amdgcn--amdhsa.bc"), _amd,
           Budget(128, "past 128 VGPRs, gfx90a runs 3 or fewer waves per SIMD instead of 4")),
    Target("Intel DG2", lambda: None if shutil.which("ocloc") else
           "ocloc is missing (Debian package intel-opencl-icd)", _intel,
           Budget(10 ** 9, "DG2: any spill is a failure")),
)


def gpu_configurations() -> list[tuple[str, dict]]:
    """(family, configuration) of every family the shipped GPU defaults configure,
    each "auto" value expanded to every value it can resolve to."""
    shipped = config._shipped_defaults()
    gpu = {**shipped["generic"], **shipped.get("GPU", {})}
    found = []
    for family, space in sorted(search_space.shipped_spaces().items()):
        if family not in gpu or family not in shipped.get("GPU", {}):
            continue
        chosen = {**space.default_config(), **gpu[family]}
        chosen.pop(search_space.LOCAL_SIZE, None)
        if chosen.get("NWG") == "auto":
            found.extend((family, {**chosen, "NWG": width}) for width in tiled.TILE_WIDTHS)
        else:
            found.append((family, chosen))
    return found


# What each configuration is compiled as: float32 and float16, float32 with 64-bit
# offsets (INDEX_64, what a plan for tensors past 2^31 - 1 elements builds), and for
# the families that read depth taps float32 with them (DEPTH_TAPS: conv3d in place).
VARIANTS = ((np.float32, False, False), (np.float16, False, False), (np.float32, True, False),
            (np.float32, False, True))


def variants(family: str) -> list[tuple[Any, bool, bool]]:
    """VARIANTS that ``family`` is built as."""
    space = search_space.shipped_spaces()[family]
    reads_depth = any(registry.get(name).depth_taps for name in space.algorithms.values())
    return [v for v in VARIANTS if reads_depth or not v[2]]


def compile_family(target: Target, family: str, chosen: dict, dtype: np.dtype,
                   wide: bool = False, depth: bool = False) -> list[KernelReport]:
    """Every kernel a plan of ``family`` launches, built as the plan builds it (the
    registry's kernel_defines), for ``target``."""
    space = search_space.shipped_spaces()[family]
    algorithm = registry.get(next(iter(space.algorithms.values())))
    own = {**chosen, **programs.dtype_defines(dtype), **({"INDEX_64": 1} if wide else {}),
           **({"DEPTH_TAPS": 1} if depth else {})}
    reports = []
    for role, (source_name, kernel) in [("kernel", space.kernel),
                                        *space.helper_kernels.items()]:
        defines = algorithm.kernel_defines(role, own, np.dtype(dtype))
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            source = work / source_name
            source.write_text(programs.full_source(source_name))
            found = target.compile(source, programs.build_options(defines), work)
        reports.extend(KernelReport(target.name, family, search_space.format_config(chosen),
                                    np.dtype(dtype).name + (" 64-bit index" if wide else "")
                                    + (" depth taps" if depth else ""),
                                    name, registers, spills, detail)
                       for name, registers, spills, detail in found if name == kernel)
    return reports


def main() -> int:
    print("| target | family | configuration | dtype | kernel | registers | spills | "
          "detail | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    failed = False
    for target in TARGETS:
        missing = target.missing()
        if missing:
            print(f"| {target.name} | skipped: {missing} |||||||")
            continue
        for family, chosen in gpu_configurations():
            for dtype, wide, depth in variants(family):
                for report in compile_family(target, family, chosen, np.dtype(dtype), wide,
                                             depth):
                    problem = report.problem(target.budget)
                    failed = failed or problem is not None
                    print(f"| {report.target} | {report.family} | {report.config} | "
                          f"{report.dtype} | {report.kernel} | {report.registers or '-'} | "
                          f"{report.spill_bytes} | {report.detail} | {problem or 'ok'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

