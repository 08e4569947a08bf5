"""The command line as a script sees it: each command in a subprocess with its
output redirected to files.  No carriage-return progress frames in logs, JSON
that parses with its schema envelope, exit statuses, and paths checked before
any work starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import clconv
from conftest import DEVICES

CPU = next((d for d in DEVICES if d.kind == "CPU"), None)
needs_cpu = pytest.mark.skipif(CPU is None, reason="no CPU OpenCL device")


def _clconv(*argv: str, timeout: int = 300, env=None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "clconv.cli", *argv], capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert "\r" not in done.stdout and "\r" not in done.stderr, "progress frames in a log"
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    return done


def _document(text: str, command: str) -> dict:
    document = json.loads(text)
    assert document["schema"] == f"clconv.{command}" and document["schema_version"] == 1
    assert document["clconv_version"] == clconv.__version__
    return document


def test_version():
    done = _clconv("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"clconv {clconv.__version__}"


def test_devices_json_on_stdout_and_in_a_file(tmp_path):
    done = _clconv("devices", "--json", "-")
    assert done.returncode == 0
    listed = _document(done.stdout, "devices")["devices"]
    assert [d["spec"] for d in listed] == [d.spec for d in clconv.devices()]
    assert "default device" in done.stderr  # the table moved to stderr
    target = tmp_path / "devices.json"
    done = _clconv("devices", "--json", str(target))
    assert done.returncode == 0 and "default device" in done.stdout
    assert _document(target.read_text(), "devices")["devices"] == listed


@pytest.mark.parametrize("command", [
    ["devices"],
    ["bench", "--op", "conv2d", "--input", "1,4,4,2", "--filter", "3,3,2,2", "--peers", "none"],
    ["conformance", "--quick"],
    ["autotune", "--op", "conv2d", "--input", "1,4,4,2", "--filter", "3,3,2,2"],
])
def test_an_unwritable_json_path_fails_before_any_work(command, tmp_path):
    done = _clconv(*command, "--json", str(tmp_path / "missing" / "out.json"), timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "does not exist" in done.stderr
    assert done.stdout == ""  # nothing ran


@needs_cpu
def test_autotune_redirected_writes_no_progress_frames_and_valid_json(tmp_path):
    done = _clconv("autotune", "--device", CPU.spec, "--op", "conv2d", "--input", "1,5,5,4",
                   "--filter", "3,3,4,4", "--budget", "20", "--db", str(tmp_path / "db.yaml"),
                   "--json", "-")
    assert done.returncode == 0, done.stderr
    document = _document(done.stdout, "autotune")
    (result,) = document["results"]
    assert result["status"] in ("complete", "budget") and result["trials"]
    assert document["device"]["spec"] == CPU.spec


@needs_cpu
def test_bench_and_conformance_json_to_stdout(tmp_path):
    done = _clconv("bench", "--device", CPU.spec, "--op", "conv2d", "--input", "1,4,4,2",
                   "--filter", "3,3,2,2", "--peers", "none", "--repeat", "2", "--json", "-")
    assert done.returncode == 0, done.stderr
    (case,) = _document(done.stdout, "bench")["cases"]
    assert case["op"] == "conv2d" and case["clconv_ms"] > 0
    assert "GFLOP/s" in done.stderr  # the table went to stderr
    done = _clconv("conformance", "--device", CPU.spec, "--cases", "conv_3x3_same",
                   "--dtypes", "float32", "--json", "-")
    assert done.returncode == 0, done.stderr
    report = _document(done.stdout, "conformance")
    assert report["passed"] is True and report["devices"][0]["failed"] == 0


def test_an_ambiguous_device_is_one_error_line():
    pocl = [d for d in clconv.devices() if "portable computing language" in d.platform.lower()]
    if len(pocl) < 2:
        pytest.skip("needs two PoCL platforms to be ambiguous")
    done = _clconv("bench", "--device", "pocl", "--peers", "none", timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert all(d.spec in done.stderr for d in pocl)


@needs_cpu
def test_plot_from_a_kept_database_entry_is_never_empty(tmp_path):
    pytest.importorskip("matplotlib")
    db, png = tmp_path / "db.yaml", tmp_path / "speedup.png"
    case = ["--device", CPU.spec, "--op", "conv2d", "--input", "1,5,5,4", "--filter", "3,3,4,4",
            "--name", "kept", "--db", str(db)]
    assert _clconv("autotune", *case, "--budget", "20").returncode == 0
    done = _clconv("autotune", *case, "--plot", str(png))  # nothing left to tune: kept
    assert done.returncode == 0 and "kept" in done.stderr
    assert png.stat().st_size > 10_000 and f"plot written to {png}" in done.stderr


def test_no_table_row_ends_in_spaces():
    done = _clconv("devices")
    assert done.returncode == 0
    assert all(line == line.rstrip() for line in done.stdout.splitlines())


@needs_cpu
def test_demo_runs_every_algorithm_that_computes_its_conv():
    """The Quick start's command: every registered algorithm that computes the demo's
    (ungrouped) transpose runs and matches the reference; the others say why not."""
    from clconv import registry

    done = _clconv("demo", "--device", CPU.spec, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    for algorithm in registry.algorithms_for("conv2d_transpose"):
        row = next(line for line in lines if line.strip().startswith(algorithm + " "))
        assert row.rstrip().endswith("OK") or "not run:" in row, row
    assert "MISMATCH" not in done.stdout
    assert sum(line.rstrip().endswith("OK") for line in lines) >= 3
