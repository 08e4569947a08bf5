"""``clconv conformance``: the quick run passes on every device with a full report,
the Oclgrind memcheck is clean on the real kernels and catches an out-of-bounds
one, and a deliberately wrong kernel variant fails with a report that names it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import clconv
from clconv import conformance, registry
from clconv.cli import main

HERE = Path(__file__).parent
OCLGRIND = [d for d in clconv.devices() if d.kind == "simulator"]
needs_oclgrind = pytest.mark.skipif(not OCLGRIND, reason="Oclgrind is not installed")


@pytest.fixture
def launchers(monkeypatch):
    """A private copy of the plugins' algorithms, so a plugin registers for one test only."""
    monkeypatch.setattr(conformance, "PLUGINS",
                        {kind: dict(table) for kind, table in conformance.PLUGINS.items()})
    return conformance.PLUGINS


def _conformance(capsys, *argv: str) -> tuple[int, str]:
    status = main(["conformance", *argv])
    out, err = capsys.readouterr()
    return status, out + err


def test_quick_conformance_passes(device, spec, tmp_path, capsys):
    report_file = tmp_path / "report.json"
    status, out = _conformance(capsys, "--quick", "--device", spec, "--json", str(report_file))
    assert status == 0, out
    assert f"PASS {spec} {device.name}" in out
    assert device.driver_version in out and "capabilities" in out
    report = json.loads(report_file.read_text())
    assert report["passed"] is True
    (dev,) = report["devices"]
    assert dev["device"]["spec"] == spec and dev["failed"] == 0 and dev["passed"] > 0
    rows = {(r["op"], r["algorithm"]) for r in dev["rows"]}
    for op in ("conv2d_backprop_input", "conv2d_transpose"):
        assert {(op, a) for a in registry.algorithms_for(op) + ("auto",)} <= rows
    assert ("conv2d", "direct") in rows
    # float16 is storage (vload_half): it runs on every device, fp16 or not.
    assert not any("fp16" in reason for r in dev["rows"] for reason in r["skip_reasons"])
    assert all(r["worst_rel_error"] is None or r["worst_rel_error"] < 1e-3 for r in dev["rows"])


def test_broken_variant_fails_with_a_clear_report(launchers, tmp_path, capsys):
    report_file = tmp_path / "report.json"
    status, out = _conformance(capsys, "--plugin", str(HERE / "conformance_corrupt.py"),
                               "--cases", "conv_3x3_same", "--dtypes", "float32",
                               "--json", str(report_file))
    assert status == 1, out
    assert "Failures" in out and "FAIL" in out
    assert "conv2d test_corrupt" in out and "case conv_3x3_same float32" in out
    assert "max abs error 1 at [1, 5, 6, 3]" in out and "expected" in out and "got" in out
    dev = json.loads(report_file.read_text())["devices"][0]
    failed = [r for r in dev["runs"] if r["status"] == "failed"]
    assert failed and all(r["algorithm"] == "test_corrupt" for r in failed)
    assert all(r["worst_index"] == [1, 5, 6, 3] for r in failed)
    assert all(r["actual"] - r["expected"] == pytest.approx(1, abs=1e-5) for r in failed)


@needs_oclgrind
def test_memcheck_is_clean_on_the_kernels(capsys):
    status, out = _conformance(capsys, "--memcheck", "--cases",
                               "conv_3x3_same,transpose_s2_same", "--dtypes", "float32")
    assert status == 0, out
    assert "[Oclgrind memcheck]" in out and "0 failed" in out
    assert "via_forward" in out and "gemm" in out


@needs_oclgrind
def test_memcheck_reports_an_out_of_bounds_kernel(launchers, capsys):
    status, out = _conformance(capsys, "--memcheck", "--plugin",
                               str(HERE / "conformance_overrun.py"), "--cases", "conv_3x3_same",
                               "--dtypes", "float32")
    assert status == 1, out
    failure = next(line for line in out.splitlines() if "test_overrun [" in line)
    assert "case conv_3x3_same float32" in failure
    assert "CO_BLOCK=4" in failure and "in kernel conv2d_direct" in failure
    assert "Invalid write" in failure and "Invalid read" in failure
    assert "Kernel: conv2d_direct" in out
    # The real kernels in the same run stay clean.
    assert not [line for line in out.splitlines() if "direct [" in line and "test_" not in line]


@pytest.mark.parametrize("argv, message", [
    (["--cases", "no_such_case"], "no conformance case matches no_such_case"),
    (["--dtypes", "float8"], "--dtypes float8"),
    (["--memcheck", "--all-devices"], "--memcheck runs on the Oclgrind device only"),
])
def test_usage_errors_are_one_line(capsys, argv, message):
    status, out = _conformance(capsys, *argv)
    assert status == 2 and message in out and "Traceback" not in out


def test_case_table_covers_the_argument_forms_and_edges():
    cases = conformance.load_cases()
    assert {c.op for c in cases} == set(conformance.OPS)
    shapes_of = {type(c.strides).__name__ + str(len(c.strides) if isinstance(c.strides, list)
                                                else "") for c in cases}
    assert {"int", "list1", "list2", "list4"} <= shapes_of
    assert {c.data_format for c in cases} == {"NHWC", "NCHW"}
    assert {c.padding if isinstance(c.padding, str) else "explicit" for c in cases} == {
        "SAME", "VALID", "explicit"}
    assert any(c.dilations not in (None, 1) for c in cases)
    sizes = [c.sizes for c in cases if c.sizes is not None]
    assert {len(s) for s in sizes} == {2, 4}
    assert any(c.operand[0] == 0 for c in cases)  # empty batch
    assert any(max(c.filter[2:]) >= 256 for c in cases if not c.large)
    assert any(c.large for c in cases) and not any(c.large and c.quick for c in cases)
    quick = conformance.select_cases(cases, quick=True)
    assert {c.op for c in quick} == set(conformance.OPS) and len(quick) < len(cases) / 2


def test_configurations_cover_the_device_kind_and_generic(device):
    configs = conformance.configurations_for("conv2d_direct", device)
    labels = " ".join(label for label, _ in configs)
    assert "generic" in labels and f"{device.kind} default" in labels
    assert len({json.dumps(c, sort_keys=True) for _, c in configs}) == len(configs)


def test_a_table_mistake_names_the_case():
    bad = ("cases:\n  - {name: odd, op: conv2d, input: [1, 4, 4, 3], filter: [3, 3, 2, 4],"
           " strides: 1, padding: SAME}\n")
    with pytest.raises(ValueError, match="conformance case 'odd'"):
        conformance.load_cases(bad)
    with pytest.raises(ValueError, match=r"unknown keys \['stride'\]"):
        conformance.load_cases(bad.replace("strides", "stride"))


def test_every_registered_algorithm_and_every_plugin_is_a_variant(launchers):
    info = clconv.devices()[0]
    conformance.add_launcher("backprop", "test_extra", "backprop_direct",
                             conformance.registered_launch("direct", "conv2d_transpose"))
    variants = {v.algorithm: v for v in conformance.variants_for("conv2d_transpose", info)}
    assert set(variants) == {"auto", "test_extra",
                             *registry.algorithms_for("conv2d_transpose")}
    assert variants["auto"].launch is None  # the public op as a user calls it
    assert all(v.launch is not None for name, v in variants.items() if name != "auto")
