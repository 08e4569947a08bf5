"""One grammar names a device, for device=, --device and CLCONV_DEVICE.

The expectations are derived from the devices this machine has, so the table
holds on any set of OpenCL platforms."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading

import numpy as np
import pyopencl as cl
import pytest

import clconv
from clconv import compiler_probe, device_select, host_cpu
from clconv.device_select import find_device, runtime
from conftest import UNUSABLE

DEVICES = clconv.devices()
USABLE = [d for d in DEVICES if clconv.device_problem(d.spec) is None]


def _platform_first(index: int):
    return next((d for d in DEVICES if d.spec.split(":")[0] == str(index)), None)


def _only(predicate):
    found = [d for d in DEVICES if predicate(d)]
    return found[0] if len(found) == 1 else None


def _grammar_table():
    rows = []  # (spec, the DeviceInfo it names, or a regex of the error)
    for d in DEVICES:
        rows.append((d.spec, d))
        rows.append((f" {d.spec} ", d))
    for index in range(len({d.spec.split(':')[0] for d in DEVICES})):
        rows.append((str(index), _platform_first(index)))
        rows.append((index, _platform_first(index)))
    rows.append(("99", "names platform 99, which does not exist"))
    rows.append(("0:99", "names device 99 of platform 0"))
    for word, kind in (("cpu", "CPU"), ("GPU", "GPU"), ("accelerator", "accelerator")):
        of_kind = [d for d in DEVICES if d.kind == kind]
        best = next((d for d in of_kind if d.is_default), of_kind[0] if of_kind else None)
        rows.append((word, best if of_kind else f"asks for a {kind} device and there is none"))
    for d in DEVICES:  # each driver version, where it names one device
        if _only(lambda o, v=d.driver_version: v.lower() in o.search_text) is d:
            rows.append((d.driver_version, d))
    pocl = [d for d in DEVICES if "portable computing language" in d.platform.lower()]
    if len(pocl) > 1:
        rows.append(("pocl", f"matches {len(pocl)} devices"))
    rows.append(("no-such-device-anywhere", "matches no device"))
    return rows


@pytest.mark.parametrize("spec, expected", _grammar_table(), ids=lambda v: repr(v)[:40])
def test_the_device_grammar(spec, expected):
    if expected is None:
        pytest.skip("this machine has no such platform")
    if isinstance(expected, str):
        with pytest.raises(clconv.DeviceNotFoundError, match=expected) as caught:
            find_device(spec)
        listed = [d for d in DEVICES if str(spec).lower() in d.search_text] \
            if "devices" in expected else DEVICES  # the candidates, or everything there is
        assert all(f"{d.spec} {d.name}" in str(caught.value) for d in listed), caught.value
        return
    assert find_device(spec)[1] == expected


def test_a_digit_is_never_a_name_substring():
    # "2" is platform 2, even though "avx512" in a device's name contains a 2.
    for d in DEVICES:
        platform = d.spec.split(":")[0]
        assert find_device(platform)[1].spec.split(":")[0] == platform


def test_opencl_objects_name_their_device():
    for d in DEVICES:
        device, _ = find_device(d.spec)
        assert find_device(d)[1] == d
        assert find_device(device)[1] == d
    for d in USABLE:
        rt = runtime(d.spec)
        assert find_device(rt.context)[1] == d and find_device(rt.queue)[1] == d
    with pytest.raises(TypeError, match="DeviceInfo"):
        find_device(3.5)


def test_default_device_and_the_context_manager(monkeypatch):
    monkeypatch.delenv("CLCONV_DEVICE", raising=False)
    first, last = USABLE[0], USABLE[-1]
    x = [[[[1.0]]]]
    try:
        assert clconv.set_default_device(last.spec) == last
        assert find_device()[1] == last
        seen = {}

        def other_thread():
            with clconv.device(first.spec) as info:
                seen["inside"] = (info, find_device()[1])
            seen["after"] = find_device()[1]

        with clconv.device(first.spec):
            assert find_device()[1] == first
            worker = threading.Thread(target=other_thread)
            worker.start()
            worker.join()
            assert find_device()[1] == first
        assert seen == {"inside": (first, first), "after": last}
        assert find_device()[1] == last
        # The ops follow the choice (through their call memo too).
        with clconv.device(first.spec):
            clconv.conv2d(x, x, 1, "SAME")
            plan = clconv.plan("conv2d", (1, 1, 1, 1), (1, 1, 1, 1), 1, "SAME")
            assert plan.device.spec == first.spec
    finally:
        clconv.set_default_device(None)
    assert find_device()[1].is_default


def test_a_queue_as_device_runs_on_that_queue():
    import numpy as np
    import pyopencl.array as cl_array

    d = next(d for d in USABLE if d.kind == "CPU")
    rt = runtime(d.spec)
    queue = cl.CommandQueue(rt.context)
    x = cl_array.to_device(queue, np.ones((1, 3, 3, 1), np.float32))
    y = clconv.conv2d(x, np.ones((3, 3, 1, 1), np.float32), 1, "SAME", device=queue)
    assert y.queue is queue and float(y.get()[0, 1, 1, 0]) == 9.0


def test_the_module_is_not_shadowed_by_the_function():
    import clconv.device_select as module

    assert module.runtime is clconv.runtime and callable(clconv.devices)
    assert clconv.devices() == module.devices()


# ----------------------------------------------------------------- devices that cannot build

NONE_UNUSABLE = pytest.param(None, None, marks=pytest.mark.skip(
    reason="every device here builds kernels"))


@pytest.mark.parametrize("unusable, why", UNUSABLE or [NONE_UNUSABLE],
                         ids=lambda v: getattr(v, "spec", "reason"))
def test_a_device_that_builds_nothing_is_refused_with_its_reason(unusable, why):
    # A real one (pip PoCL 3.0 on an AMD family 26 CPU: "unknown target CPU 'generic'").
    assert find_device()[1].spec != unusable.spec or not USABLE, "it must not be the default"
    with pytest.raises(clconv.DeviceUnusableError) as caught:
        clconv.conv2d(np.ones((1, 2, 2, 1), np.float32), np.ones((1, 1, 1, 1), np.float32), 1,
                      "SAME", device=unusable.spec)
    message = str(caught.value)
    assert unusable.spec in message and why in message
    assert all(d.spec in message for d in USABLE), "it names the devices that can"
    for choose in (clconv.set_default_device, clconv.device):  # refused when chosen
        with pytest.raises(clconv.DeviceUnusableError, match=unusable.spec):
            with contextlib.ExitStack() as stack:
                chosen = choose(unusable.spec)
                if hasattr(chosen, "__enter__"):
                    stack.enter_context(chosen)
    assert find_device()[1].is_default, "the default is unchanged"


@pytest.fixture
def probe_again():
    """Drop the remembered probes and default before and after a test that fakes them."""
    compiler_probe.forget()
    device_select._enumerate.cache_clear()
    yield
    compiler_probe.forget()
    device_select._enumerate.cache_clear()


def test_a_broken_compiler_is_reported_refused_and_never_the_default(monkeypatch, probe_again):
    old_default = find_device()[1]
    broken = {old_default.spec}
    real_probe = compiler_probe._probe

    def fake_probe(device):
        spec = next(i.spec for d, i in device_select._enumerate_devices() if d == device)
        return ("it cannot build (faked)", None) if spec in broken else real_probe(device)

    monkeypatch.setattr(compiler_probe, "_probe", fake_probe)
    compiler_probe.forget()
    device_select._enumerate.cache_clear()
    assert clconv.device_problem(old_default.spec) == "it cannot build (faked)"
    new_default = find_device()[1]
    assert new_default.is_default and sum(d.is_default for d in clconv.devices()) == 1
    if len(USABLE) > 1:
        assert new_default.spec != old_default.spec
        if any(d.kind != "simulator" and d.spec not in broken for d in USABLE):
            assert new_default.kind != "simulator"
    with pytest.raises(clconv.DeviceUnusableError, match="it cannot build \\(faked\\)") as caught:
        runtime(old_default.spec)
    assert old_default.spec in str(caught.value) and old_default.name in str(caught.value)


def test_a_probe_that_fails_everywhere_still_leaves_one_default(monkeypatch, probe_again):
    monkeypatch.setattr(compiler_probe, "PROBE_SOURCE", "__kernel void broken( {")
    problems = [clconv.device_problem(d.spec) for d in USABLE]
    assert all(p.startswith("it cannot build a one-line OpenCL kernel: ") for p in problems)
    assert all("error" in p for p in problems), "the compiler's own error line is quoted"
    assert sum(d.is_default for d in clconv.devices()) == 1
    with pytest.raises(clconv.DeviceUnusableError, match="Devices that can: none"):
        runtime()


def test_an_llvm_older_than_the_cpu_is_explained():
    log = ("clBuildProgram failed: BUILD_PROGRAM_FAILURE\n\nerror: unknown target CPU "
           "'generic'\nDevice pthread-AMD EPYC failed to build the program")
    why = compiler_probe.explain(log)
    assert "does not know this machine's CPU" in why and "'generic'" in why
    assert host_cpu.describe() in why and "apt-get install pocl-opencl-icd" in why
    other = compiler_probe.explain("clBuildProgram failed\n<source>:1:9: error: expected ')'\n")
    assert other == "it cannot build a one-line OpenCL kernel: <source>:1:9: error: expected ')'"


# ------------------------------------------------------- a pip-installed Intel CPU runtime

def _fake_install(tmp_path, monkeypatch):
    """A Python prefix holding libintelocl.so, a system vendors folder with two ICD
    files, the user's cache folder under tmp_path, and no vendor variables set."""
    import platformdirs

    prefix, system = tmp_path / "venv", tmp_path / "vendors"
    (prefix / "lib").mkdir(parents=True)
    (prefix / "lib" / "libintelocl.so").write_bytes(b"")
    system.mkdir()
    (system / "pocl.icd").write_text("libpocl.so.2\n")
    (system / "oclgrind.icd").write_text("/usr/lib/oclgrind/liboclgrind-rt-icd.so\n")
    monkeypatch.delenv("OCL_ICD_VENDORS", raising=False)
    monkeypatch.delenv("OPENCL_VENDOR_PATH", raising=False)
    monkeypatch.setattr(platformdirs, "user_cache_dir",
                        lambda *args, **kwargs: str(tmp_path / "cache"))
    return prefix, system


def test_a_pip_intel_cpu_runtime_is_registered_beside_the_systems(tmp_path, monkeypatch):
    from clconv.pip_icd import ICD_NAME, register_pip_intel_cpu_runtime

    prefix, system = _fake_install(tmp_path, monkeypatch)
    folder = register_pip_intel_cpu_runtime(str(prefix), str(system))
    assert folder is not None and os.environ["OCL_ICD_VENDORS"] == str(folder)
    assert str(folder).startswith(str(tmp_path / "cache"))
    assert {p.name: p.read_text() for p in folder.iterdir()} == {
        "pocl.icd": "libpocl.so.2\n", "oclgrind.icd": "/usr/lib/oclgrind/liboclgrind-rt-icd.so\n",
        ICD_NAME: f"{prefix / 'lib' / 'libintelocl.so'}\n"}
    monkeypatch.delenv("OCL_ICD_VENDORS")  # a second process: same folder, same files
    assert register_pip_intel_cpu_runtime(str(prefix), str(system)) == folder
    assert len(list(folder.iterdir())) == 3


def test_a_pip_intel_cpu_runtime_is_left_alone_where_it_should_be(tmp_path, monkeypatch):
    from clconv.pip_icd import register_pip_intel_cpu_runtime

    prefix, system = _fake_install(tmp_path, monkeypatch)
    monkeypatch.setenv("OCL_ICD_VENDORS", "/somewhere/the/user/chose")
    assert register_pip_intel_cpu_runtime(str(prefix), str(system)) is None
    assert os.environ["OCL_ICD_VENDORS"] == "/somewhere/the/user/chose"
    monkeypatch.delenv("OCL_ICD_VENDORS")
    (system / "intel-cpu.icd").write_text(f"{prefix / 'lib' / 'libintelocl.so'}\n")
    assert register_pip_intel_cpu_runtime(str(prefix), str(system)) is None  # system-wide
    assert register_pip_intel_cpu_runtime(str(tmp_path / "no-such-venv"), str(system)) is None
    assert "OCL_ICD_VENDORS" not in os.environ and not (tmp_path / "cache").exists()


def test_among_cpu_runtimes_pocl_ranks_first_then_the_newer_driver():
    base = DEVICES[0]
    cpu = [dataclasses.replace(base, kind="CPU", compute_units=2, platform=platform,
                               driver_version=driver)
           for platform, driver in (("Intel(R) OpenCL", "2026.22.10.0.01_160000"),
                                    ("Portable Computing Language", "3.0-rc2"),
                                    ("Portable Computing Language", "3.1+debian"))]
    ranked = sorted(range(len(cpu)), key=lambda i: device_select._default_rank(cpu[i], i))
    assert [cpu[i].driver_version for i in ranked] == ["3.1+debian", "3.0-rc2",
                                                       "2026.22.10.0.01_160000"]
    more_cores = dataclasses.replace(cpu[0], compute_units=4)  # compute units come first
    assert device_select._default_rank(more_cores, 0) < device_select._default_rank(cpu[2], 2)


def test_the_ops_follow_clconv_device_from_one_call_to_the_next(monkeypatch, caplog):
    """The call memo reads CLCONV_DEVICE at every call: a remembered call moves to the
    device the variable names now (its plan is built there)."""
    if len(USABLE) < 2:
        pytest.skip("needs two usable devices")
    import numpy as np

    first, last = USABLE[0], USABLE[-1]
    x, w = np.ones((1, 3, 3, 1), np.float32), np.ones((1, 1, 1, 1), np.float32)
    clconv.plans.forget_all()
    clconv.ops.forget_calls()
    monkeypatch.setenv(device_select.ENV_DEVICE, first.spec)
    for _ in range(2):  # remembered on the first device
        clconv.conv2d(x, w, 1, "SAME")
    monkeypatch.setenv(device_select.ENV_DEVICE, last.spec)
    with caplog.at_level("DEBUG", logger="clconv"):
        clconv.conv2d(x, w, 1, "SAME")
    built = [r.getMessage() for r in caplog.records if r.getMessage().startswith("plan built")]
    assert len(built) == 1 and f"[{last.spec}]" in built[0], built
