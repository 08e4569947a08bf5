"""Convolutions as work-group-tiled implicit GEMMs (kernels/gemm_tiled.cl): the
GPU family, algorithm "tiled".

The GEMM is gemm_implicit's (clconv.gemm: the same phases, taps and filter
packing); the main kernel and the gradient's careful pass for Inf/NaN filters are
gemm_tiled.cl's.  A work-group of NDIMC x MDIMC work-items computes an MWG x NWG tile
through __local memory, so a GPU's loads are coalesced; the packing's panels are
NWG channels wide, one per work-group column.
"""

from __future__ import annotations

from typing import Any

from clconv import column_merge
from clconv.device_select import DeviceInfo
from clconv.gemm import GEMM_ARGS, GemmLaunch, unsupported_by_gemms
from clconv.programs import TypedKernel, dtype_defines
from clconv.registry import Algorithm, Setup, register
from clconv.shapes import ConvGeometry

TILE_WIDTHS = (16, 32, 64)  # NWG candidates "auto" chooses from (configs/gemm_tiled.yaml)


def kernel_defines(role: str, defines: dict[str, Any], dtype: Any) -> dict[str, Any]:
    """What each kernel of the family is built with: the packing is gemm_implicit.cl's
    pack_filter with panels NWG channels wide (TM and VEC only satisfy that file's
    guards: its GEMM is not launched); the careful pass is gemm_tiled.cl built with
    TILED_CAREFUL (one kernel per program, see the file); the column padding
    (clconv.column_merge) with the dtype's macros only."""
    if role == "pack":
        wide = {"INDEX_64": 1} if defines.get("INDEX_64") else {}
        return {**dtype_defines(dtype), **wide, "TM": 1, "TN": int(defines["NWG"]), "VEC": 4}
    if role == "careful":
        return {**defines, "TILED_CAREFUL": 1}
    if role == "pad_columns":
        return column_merge.pad_defines(defines, dtype)
    return defines


class TiledLaunch(GemmLaunch):
    """The prepared launches of one tiled plan."""

    def __init__(self, setup: Setup) -> None:
        d = setup.defines
        mwg, nwg = int(d["MWG"]), int(d["NWG"])
        mdimc, ndimc = int(d["MDIMC"]), int(d["NDIMC"])
        self._prepare_packing(setup, nwg, kernel_defines("pack", d, setup.dtype),
                              kernel_defines("careful", d, setup.dtype))
        source, name = setup.space.kernel
        self.gemm = TypedKernel(setup.context, source, name, d, GEMM_ARGS)
        pixel_tiles = -(-self.plan.max_pixels(self.g.batch) // mwg)
        # reqd_work_group_size fixes the group; the range is whole groups by construction.
        self.gemm_range = ((self.n_padded // nwg * ndimc, pixel_tiles * mdimc,
                            len(self.plan.phases)), (ndimc, mdimc, 1))
        self.careful_range = self.gemm_range


def tile_width(n_out: int) -> int:
    """The narrowest NWG of TILE_WIDTHS that covers ``n_out`` channels (the widest when
    none does): a 3-channel output layer then computes 16 channels, not 64."""
    return next((w for w in TILE_WIDTHS if w >= n_out), TILE_WIDTHS[-1])


def _resolve(config: dict[str, Any], op: str, g: ConvGeometry, info: DeviceInfo
             ) -> dict[str, Any]:
    config = dict(config)
    if config.get("NWG") == "auto":
        config["NWG"] = tile_width(g.out_c if op == "conv2d" else g.in_c)
    return config


def _unsupported(op: str, dtype: Any, g: ConvGeometry, info: DeviceInfo) -> Any:
    if g.groups != 1:
        return f"tiled computes ungrouped convolutions only (got {g.groups} groups)"
    return unsupported_by_gemms(op, dtype, g, info)


ALGORITHM = register(Algorithm(
    name="tiled", prepare=TiledLaunch, unsupported=_unsupported, resolve=_resolve,
    fallback="grouped", kernel_defines=kernel_defines, depth_taps=True,
    doc="per stride phase, an implicit GEMM tiled per work-group through local memory, "
        "with coalesced loads (the GPU family)"))
