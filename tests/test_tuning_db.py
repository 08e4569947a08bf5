"""The tuning database and the configuration look-up: keys, staleness, the fallback
chain, memoisation, corrupt files and concurrent writers.  No OpenCL device needed."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import yaml

from clconv import config, tuning_db
from clconv.device_select import DeviceInfo
from clconv.shapes import conv2d_geometry, parse_attrs

FAKE = DeviceInfo(spec="9:0", platform="Fake Platform", name="fake-cpu", vendor="FakeVendor",
                  kind="CPU", opencl_c_version="OpenCL C 1.2", device_version="OpenCL 1.2",
                  driver_version="1.0", fp64=True, fp16=False, max_work_group_size=4096,
                  max_work_item_sizes=(4096, 4096, 4096), local_mem_size=65536,
                  compute_units=2, max_mem_alloc_size=2**31, preferred_float_vector_width=8)


def geometry(n=1, h=8, c_in=8, c_out=16, k=3, stride=1):
    return conv2d_geometry((n, h, h, c_in), (k, k, c_in, c_out),
                           parse_attrs(stride, "SAME", "NHWC", None))


def entry(g, op="conv2d", info=FAKE, algorithm="direct", config_=None, family="conv2d_direct",
          **overrides):
    result = {
        "case": "t", "op": op, "device": tuning_db.device_key(info),
        "clconv": config.clconv_version(), "source_hash": config.op_source_hash(op),
        "geometry": tuning_db.geometry_dict(g), "algorithm": algorithm,
        "results": {algorithm: {"family": family,
                                "config": config_ or {"CO_BLOCK": 2, "LOCAL_SIZE": [1, 16]},
                                "ms": 1.0}},
        "search": {"strategy": "exhaustive", "status": "complete"},
    }
    result.update(overrides)
    return result


def test_default_location_is_the_user_cache(monkeypatch):
    monkeypatch.delenv(tuning_db.ENV_DB, raising=False)
    path = tuning_db.default_path()
    assert path.name == "tuning.yaml" and "clconv" in str(path.parent)


def test_written_file_is_readable_yaml_with_a_generated_header(db):
    g = geometry()
    tuning_db.record([entry(g)], db)
    text = db.read_text()
    assert text.startswith("# clconv tuning database -- GENERATED")
    data = yaml.safe_load(text)
    assert data["format"] == 1 and len(data["entries"]) == 1
    assert data["entries"][0]["results"]["direct"]["config"] == {"CO_BLOCK": 2,
                                                                 "LOCAL_SIZE": [1, 16]}
    assert not list(db.parent.glob(".tuning.yaml.*.tmp")), "temporary file left behind"


def test_retuning_replaces_the_entry_of_its_slot(db):
    g = geometry()
    tuning_db.record([entry(g)], db)
    tuning_db.record([entry(g, config_={"CO_BLOCK": 4, "LOCAL_SIZE": None})], db)
    found = tuning_db.entries(db)
    assert len(found) == 1
    assert found[0]["results"]["direct"]["config"]["CO_BLOCK"] == 4


# --------------------------------------------------------------------------- fallback chain


def test_fallback_chain_for_configs(db):
    g_exact, g_near, g_far = geometry(h=8), geometry(h=16), geometry(n=32, h=64, c_in=256)
    near_config = {"CO_BLOCK": 4, "LOCAL_SIZE": [4, 16]}
    far_config = {"CO_BLOCK": 1, "LOCAL_SIZE": None}

    # 4. generic: a device kind defaults.yaml has no section for
    odd = dataclasses.replace(FAKE, kind="accelerator")
    choice = config.explain_config("conv2d_direct", odd, "conv2d", g_exact)
    assert (choice.source, choice.value) == ("generic", {"CO_BLOCK": 4, "LOCAL_SIZE": None})
    # 3. device defaults: the CPU section
    choice = config.explain_config("conv2d_direct", FAKE, "conv2d", g_exact)
    assert (choice.source, choice.value["CO_BLOCK"]) == ("device defaults", 8)

    # 2. nearest tuned shape on this device (of two, the closer one)
    tuning_db.record([entry(g_near, config_=near_config), entry(g_far, config_=far_config)], db)
    choice = config.explain_config("conv2d_direct", FAKE, "conv2d", g_exact)
    assert (choice.source, choice.value) == ("nearest", near_config)
    assert config.choose_config("conv2d_direct", FAKE, "conv2d", g_far) == far_config
    # ... but never another device's results
    other = dataclasses.replace(FAKE, name="other-cpu")
    assert config.explain_config("conv2d_direct", other, "conv2d", g_exact).source == \
        "device defaults"

    # 1. exact shape
    exact_config = {"CO_BLOCK": 2, "LOCAL_SIZE": [1, 64]}
    tuning_db.record([entry(g_exact, config_=exact_config)], db)
    choice = config.explain_config("conv2d_direct", FAKE, "conv2d", g_exact)
    assert (choice.source, choice.value) == ("exact", exact_config)
    assert config.choose_config("conv2d_direct", FAKE, "conv2d", g_exact) == exact_config


def test_fallback_chain_for_algorithms(db):
    g = geometry(c_in=16, c_out=8, stride=2)
    op = "conv2d_transpose"
    assert config.explain_algorithm(op, FAKE, g).source == "generic"
    assert config.choose_algorithm(op, FAKE, g) == config.shipped_algorithm(op, FAKE)
    tuning_db.record([entry(geometry(c_in=16, c_out=8, stride=2, h=32), op=op,
                            algorithm="via_forward")], db)
    assert config.explain_algorithm(op, FAKE, g).source == "nearest"
    assert config.choose_algorithm(op, FAKE, g) == "via_forward"
    tuning_db.record([entry(g, op=op, algorithm="direct", family="backprop_direct",
                            config_={"CI_BLOCK": 2, "LOCAL_SIZE": None})], db)
    assert config.explain_algorithm(op, FAKE, g).source == "exact"
    assert config.choose_algorithm(op, FAKE, g) == "direct"
    # The two backprop ops run the same kernels: an exact result of one serves the other.
    assert config.explain_algorithm("conv2d_backprop_input", FAKE, g).value == "direct"
    # An algorithm no family computes any more is not used.
    tuning_db.record([entry(g, op=op, algorithm="retired", family="backprop_direct",
                            config_={"CI_BLOCK": 2, "LOCAL_SIZE": None})], db)
    assert config.choose_algorithm(op, FAKE, g) == "via_forward"  # the nearest again


def test_vendor_defaults_override_the_device_kind(monkeypatch, db):
    shipped = dict(config._shipped_defaults())
    shipped["vendors"] = [{"match": "fakevendor", "kind": "CPU",
                           "conv2d_direct": {"CO_BLOCK": 16}},
                          {"match": "fakevendor", "kind": "GPU",
                           "conv2d_direct": {"CO_BLOCK": 1}}]
    monkeypatch.setattr(config, "_shipped_defaults", lambda: shipped)
    config.invalidate()
    choice = config.explain_config("conv2d_direct", FAKE, "conv2d", geometry())
    assert (choice.source, choice.value["CO_BLOCK"]) == ("device defaults", 16)


def transpose_geometry(dx_channels, dy_channels, groups=1):
    """The forward conv of a k5 s2 transpose from dy_channels to dx_channels."""
    return conv2d_geometry((1, 16, 16, dx_channels), (5, 5, dx_channels // groups, dy_channels),
                           parse_attrs(2, "SAME", "NHWC", None))


def test_a_cpu_transpose_to_a_few_channels_runs_the_gather_form(db):
    """The shipped CPU rule: to four channels or fewer from whole vectors of 16 dy
    channels, conv2d_transpose and the input gradient run "direct" (a GEMM tile there is
    mostly padding); wider outputs, other channel counts, other ops and a GPU keep the
    op's algorithm, and a tuned entry still wins."""
    config.invalidate()
    for op in ("conv2d_transpose", "conv2d_backprop_input"):
        choice = config.explain_algorithm(op, FAKE, transpose_geometry(3, 128))
        assert (choice.value, choice.source) == ("direct", "device defaults"), choice
        for g in (transpose_geometry(8, 128), transpose_geometry(3, 24),
                  transpose_geometry(3, 8)):
            assert config.choose_algorithm(op, FAKE, g) == "gemm", g
    assert config.choose_algorithm("conv2d", FAKE, transpose_geometry(3, 128)) == "gemm"
    gpu = dataclasses.replace(FAKE, kind="GPU")
    assert config.choose_algorithm("conv2d_transpose", gpu, transpose_geometry(3, 128)) != \
        "direct"
    # CI_BLOCK "auto" covers the 3 channels with 4, not the CPU's 8.
    from clconv import registry

    direct = registry.get("direct")
    shipped = config.choose_config("backprop_direct", FAKE, "conv2d_transpose",
                                   transpose_geometry(3, 128))
    assert shipped["CI_BLOCK"] == "auto" and shipped["CO_VEC"] == 16
    for channels, block in ((1, 1), (2, 2), (3, 4), (4, 4), (5, 8), (64, 8)):
        g = transpose_geometry(channels, 128)
        assert direct.resolve(shipped, "conv2d_transpose", g, FAKE)["CI_BLOCK"] == block
    # A tuning database entry for the shape wins over the rule.
    g = transpose_geometry(3, 128)
    tuned = entry(g, op="conv2d_transpose", algorithm="gemm", family="gemm_implicit",
                  config_={"TM": 6, "TN": 4, "VEC": 4, "LOCAL_SIZE": None})
    tuning_db.record([tuned], db)
    config.invalidate()
    assert config.explain_algorithm("conv2d_transpose", FAKE, g, db=db).value == "gemm"


def test_unprepared_filters_read_by_few_dy_pixels_run_the_gather_form(db):
    """The shipped CPU rule for unprepared filters: a transpose (or input gradient)
    whose dy has at most 16 pixels runs "direct" when its filter is not prepared, the
    GEMM when it is; from 32 pixels on, on other ops and on a GPU, one algorithm."""
    config.invalidate()

    def tiny(batch, side):  # k4 s2 from 512 dy channels to 256, dy batch x side x side
        return conv2d_geometry((batch, 2 * side, 2 * side, 256), (4, 4, 256, 512),
                               parse_attrs(2, "SAME", "NHWC", None))

    for op in ("conv2d_transpose", "conv2d_backprop_input"):
        for g in (tiny(1, 4), tiny(1, 2), tiny(4, 2)):
            assert config.choose_algorithm(op, FAKE, g) == "gemm"
            algorithm, reason = config.unprepared_algorithm(op, FAKE, g)
            assert algorithm == "direct" and "pack" in reason
            assert config.shipped_algorithm(op, FAKE, g, prepared=False) == "direct"
        for g in (tiny(2, 4), tiny(1, 8)):
            assert config.unprepared_algorithm(op, FAKE, g) is None, g
    assert config.unprepared_algorithm("conv2d", FAKE, tiny(1, 4)) is None
    gpu = dataclasses.replace(FAKE, kind="GPU")
    assert config.unprepared_algorithm("conv2d_transpose", gpu, tiny(1, 4)) is None


@pytest.mark.parametrize("rule, problem", [
    ({"op": "conv2d_transpose", "when": "in_c <= 4", "use": "direct"}, "op, when, use, reason"),
    ({"op": "conv2d", "when": "in_c <= 4", "use": "direct", "reason": "r", "filters": "raw"},
     ".filters: expected one of any, unprepared"),
    ({"op": "conv2d", "when": "in_c <= 4", "use": "direct", "reason": "r", "prepared": "no"},
     "op, when, use, reason"),
    ({"op": "conv3d", "when": "in_c <= 4", "use": "direct", "reason": "r"}, ".op"),
    ({"op": "conv2d", "when": "in_c <= 4", "use": "nope", "reason": "r"}, ".use"),
    ({"op": "conv2d", "when": "in_c <= TN", "use": "direct", "reason": "r"}, "unknown: TN"),
    ({"op": "conv2d", "when": "__import__('os')", "use": "direct", "reason": "r"}, ".when"),
])
def test_a_malformed_algorithm_rule_is_refused_with_its_key(monkeypatch, rule, problem):
    loaded = yaml.safe_load(config.config_text(config.DEFAULTS_FILE))
    loaded["CPU"]["algorithm_rules"] = [rule]
    monkeypatch.setattr(config, "config_text", lambda name: yaml.safe_dump(loaded))
    config._shipped_defaults.cache_clear()
    try:
        with pytest.raises(config.DefaultsError, match="CPU.algorithm_rules") as raised:
            config._shipped_defaults()
        assert problem in str(raised.value)
    finally:
        monkeypatch.undo()
        config._shipped_defaults.cache_clear()


# --------------------------------------------------------------------------- staleness


def test_stale_key_is_never_used(db, monkeypatch):
    g = geometry()
    tuned = {"CO_BLOCK": 8, "LOCAL_SIZE": [2, 16]}
    tuning_db.record([entry(g, config_=tuned)], db)
    assert config.choose_config("conv2d_direct", FAKE, "conv2d", g) == tuned

    # The kernel sources change: the entry is stale, for the exact and the nearest look-up.
    real = config.source_hash
    monkeypatch.setattr(config, "source_hash", lambda name: "edited-" + real(name))
    config.invalidate()
    for shape in (g, geometry(h=16)):
        choice = config.explain_config("conv2d_direct", FAKE, "conv2d", shape)
        assert choice.source == "device defaults", choice
    monkeypatch.undo()
    monkeypatch.setenv(tuning_db.ENV_DB, str(db))
    config.invalidate()
    assert config.choose_config("conv2d_direct", FAKE, "conv2d", g) == tuned

    # Another driver version or clconv version: stale too.
    newer = dataclasses.replace(FAKE, driver_version="2.0")
    assert config.explain_config("conv2d_direct", newer, "conv2d", g).source == "device defaults"
    tuning_db.record([entry(g, config_=tuned, clconv="0.0.1")], db)
    assert config.explain_config("conv2d_direct", FAKE, "conv2d", g).source == "device defaults"


# --------------------------------------------------------------------------- memoisation


def test_lookup_is_paid_once_per_shape_and_redone_after_a_write(db, monkeypatch):
    calls = []
    real = tuning_db.entries
    monkeypatch.setattr(tuning_db, "entries", lambda path=None: calls.append(path) or real(path))
    g = geometry()
    tuning_db.record([entry(geometry(h=32))], db)
    for _ in range(5):
        config.choose_config("conv2d_direct", FAKE, "conv2d", g)
    assert len(calls) == 1
    config.choose_config("conv2d_direct", FAKE, "conv2d", geometry(h=4))
    assert len(calls) == 2  # another shape: one more look-up

    tuned = {"CO_BLOCK": 1, "LOCAL_SIZE": [1, 8]}
    tuning_db.record([entry(g, config_=tuned)], db)  # the tuner writes: memo dropped
    assert config.choose_config("conv2d_direct", FAKE, "conv2d", g) == tuned
    assert len(calls) == 3


# --------------------------------------------------------------------------- bad files


def test_corrupt_file_warns_gives_defaults_and_is_preserved(db):
    garbage = "entries: [this is {not yaml\n"
    db.write_text(garbage)
    g = geometry()
    with pytest.warns(tuning_db.TuningDatabaseWarning, match="corrupt"):
        choice = config.explain_config("conv2d_direct", FAKE, "conv2d", g)
    assert choice.source == "device defaults"
    assert db.read_text() == garbage, "a reader must never touch the file"

    with pytest.warns(tuning_db.TuningDatabaseWarning, match="moved it to"):
        tuning_db.record([entry(g)], db)
    backups = list(db.parent.glob("tuning.yaml.corrupt-*"))
    assert len(backups) == 1 and backups[0].read_text() == garbage
    assert len(tuning_db.entries(db)) == 1


def test_wellformed_yaml_with_a_bad_entry_skips_that_entry(db):
    db.write_text("format: 1\nentries:\n- {op: conv2d}\n")
    with pytest.warns(tuning_db.TuningDatabaseWarning, match="entry 0: an entry lacks"):
        assert tuning_db.entries(db) == []


def test_unreadable_database_is_never_written_over(tmp_path):
    path = tmp_path / "tuning.yaml"
    path.mkdir()  # reading it fails with an OSError, as a file without permission would
    with pytest.warns(tuning_db.TuningDatabaseWarning, match="cannot be read"):
        assert tuning_db.entries(path) == []
    with pytest.raises(tuning_db.TuningDatabaseError, match="not a regular file"):
        tuning_db.record([entry(geometry())], path)
    assert path.is_dir()


def test_missing_database_is_silent(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tuning_db.entries(tmp_path / "absent.yaml") == []


# --------------------------------------------------------------------------- concurrency

WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from test_tuning_db import entry, geometry
    from clconv import tuning_db
    writer, count = int(sys.argv[1]), int(sys.argv[2])
    for i in range(count):
        tuning_db.record([entry(geometry(n=writer + 1, h=i + 1), case=f"w{{writer}}-{{i}}")],
                         sys.argv[3])
""")


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    path = tmp_path / "tuning.yaml"
    script = WRITER.format(tests=os.path.dirname(__file__))
    count = 15
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w), str(count), str(path)],
                              stderr=subprocess.PIPE, text=True)
             for w in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    cases = sorted(e["case"] for e in tuning_db.entries(path))
    assert cases == sorted(f"w{w}-{i}" for w in range(2) for i in range(count))


def test_distance_counts_doublings():
    g = geometry(h=8)
    assert tuning_db.distance(g, tuple(tuning_db.geometry_dict(g).values())) == 0
    doubled = geometry(n=2, h=8)
    assert tuning_db.distance(g, tuple(tuning_db.geometry_dict(doubled).values())) == 1
