"""One fixture runs every test on every OpenCL device that can build kernels here.

CLCONV_TEST_DEVICES narrows the set: a comma-separated list of device specs
(``1:0``) or name substrings (``pocl,oclgrind``).  A device whose compiler builds
nothing on this machine (``clconv.device_problem``: pip PoCL 3.0 on a CPU its LLVM
predates) is left out, named with its reason in the report header; test_devices.py
checks that clconv refuses it with that reason.
"""

from __future__ import annotations

import os

import pytest

import clconv
from clconv.device_select import find_device

TEST_DEVICES_ENV = "CLCONV_TEST_DEVICES"


def selected_devices() -> list[clconv.DeviceInfo]:
    wanted = os.environ.get(TEST_DEVICES_ENV, "").strip()
    if not wanted:
        return clconv.devices()
    chosen: list[clconv.DeviceInfo] = []
    for spec in wanted.split(","):
        spec = spec.strip()
        if not spec:
            continue
        matches = [d for d in clconv.devices()
                   if spec == d.spec or spec.lower() in d.search_text]
        if not matches:
            find_device(spec)  # raises with the list of what exists
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def _device_id(info: clconv.DeviceInfo) -> str:
    short = info.name.replace("pthread-", "").split()[0]
    return f"{info.spec}-{short}-{info.driver_version.split()[-1]}"


SELECTED = selected_devices()
PROBLEMS = {d.spec: clconv.device_problem(d.spec) for d in SELECTED}
UNUSABLE = [(d, PROBLEMS[d.spec]) for d in SELECTED if PROBLEMS[d.spec]]
DEVICES = [d for d in SELECTED if not PROBLEMS[d.spec]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", DEVICES, ids=[_device_id(d) for d in DEVICES])


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"clconv devices under test: {', '.join(d.label for d in DEVICES) or 'none'}"] + [
        f"left out, cannot build kernels here: {d.label}: {why}" for d, why in UNUSABLE]


@pytest.fixture
def spec(device: clconv.DeviceInfo) -> str:
    """The device= argument for the device under test."""
    return device.spec


@pytest.fixture
def db(tmp_path, monkeypatch):
    """A fresh, empty tuning database for the test (CLCONV_TUNING_DB), with
    clconv's memoised look-ups dropped before and after."""
    from clconv import config, tuning_db

    path = tmp_path / "tuning.yaml"
    monkeypatch.setenv(tuning_db.ENV_DB, str(path))
    config.invalidate()
    yield path
    config.invalidate()


def is_simulator(device: clconv.DeviceInfo) -> bool:
    return device.kind == "simulator"
