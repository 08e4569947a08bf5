"""``clconv devices``: every OpenCL device, its capabilities, and the default."""

from __future__ import annotations

import argparse

from clconv.device_select import ENV_DEVICE, device_problem, devices

HELP = "list OpenCL platforms and devices with the capabilities clconv uses"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from clconv.commands import json_output

    json_output.add_json_argument(parser, "every device and its capabilities")


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def format_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    from clconv.commands import json_output

    json_output.check_target(args.json)
    found = devices()
    problems = {d.spec: device_problem(d.spec) for d in found}
    with json_output.report_stream(args.json):
        status = _print(found, problems)
    json_output.write(args.json, "devices", {"devices": [
        {**d.__dict__, "problem": problems[d.spec]} for d in found]})
    return status


def _print(found, problems: dict) -> int:
    if not found:
        print("no OpenCL device found (pip install pocl-binary-distribution gives a CPU one)")
        return 1
    rows = []
    for d in found:
        rows.append([
            ("*" if d.is_default else " ") + d.spec, d.name, d.platform, d.kind,
            d.driver_version, d.opencl_c_version.replace("OpenCL C ", ""),
            "yes" if d.fp64 else "no", "yes" if d.fp16 else "no",
            str(d.max_work_group_size), _size(d.local_mem_size), str(d.compute_units),
            _size(d.max_mem_alloc_size), "no (!)" if problems[d.spec] else "yes",
        ])
    print(format_table(rows, ["device", "name", "platform", "kind", "driver", "OpenCL C",
                              "fp64", "fp16", "max WG", "local mem", "CUs", "max alloc",
                              "builds"]))
    for d in found:
        if problems[d.spec]:
            print(f"\n(!) {d.spec} cannot run clconv's kernels: {problems[d.spec]}.")
    print(f"\n* default device. Choose another with --device or {ENV_DEVICE}: P:D, P, cpu, "
          "gpu, or a part of one device's name or driver (oclgrind, 3.0-rc2).")
    return 0
