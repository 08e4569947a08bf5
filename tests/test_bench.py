"""``clconv bench`` runs and reports; it is a command, not a timed test.

Checked: a one-off case from the command line and a small custom suite run on
one PoCL device, print the table's columns and write JSON with the expected
keys; useful FLOPs follow the suite file's formula (hand-computed counts); the
peers (TensorFlow / PyTorch, when installed) agree with clconv on shapes that
exercise the padding mappings, and a disagreeing peer is flagged; the contenders
take their rounds in turn and each keeps its best round; mistakes
(malformed suite, unknown case, half a one-off case) end as one line, exit 2.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from clconv import bench
from clconv.cli import main
from clconv.resources import config_text
from conftest import DEVICES, is_simulator

PLAIN_DEVICES = [d for d in DEVICES if not is_simulator(d)]
pytestmark = pytest.mark.skipif(not PLAIN_DEVICES, reason="bench needs a non-simulator device")

COLUMNS = ("case", "op", "GFLOP", "ms", "cores", "GFLOP/s", "e2e ms", "check")

# Tiny cases whose peer equivalents need each padding mapping: asymmetric SAME
# (conv2d: F.pad; transpose: a longer torch result, cropped), VALID with rows
# left over (output_padding), explicit padding, dilation, backprop-input.
TINY_SUITE = """\
cases:
  - name: t_same_s2
    op: conv2d_transpose
    input: [2, 4, 4, 6]
    filter: [3, 3, 5, 6]
    output: [2, 8, 8, 5]
    strides: 2
    padding: SAME
  - name: t_valid_left
    op: conv2d_transpose
    input: [1, 3, 3, 4]
    filter: [3, 3, 2, 4]
    output: [1, 8, 8, 2]
    strides: 2
    padding: VALID
  - name: b_explicit
    op: conv2d_backprop_input
    input_sizes: [1, 7, 7, 3]
    filter: [3, 3, 3, 4]
    out_backprop: [1, 4, 4, 4]
    strides: 2
    padding: [[0, 0], [1, 1], [1, 1], [0, 0]]
  - name: f_same_s2
    op: conv2d
    input: [1, 8, 8, 3]
    filter: [3, 3, 3, 4]
    strides: 2
    padding: SAME
  - name: f_dilated
    op: conv2d
    input: [1, 9, 9, 2]
    filter: [3, 3, 2, 3]
    dilations: 2
    padding: SAME
"""


@pytest.fixture(scope="module")
def spec() -> str:
    return PLAIN_DEVICES[0].spec


def _bench(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["bench", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _header(out: str) -> str:
    lines = out.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.startswith("----"))
    return lines[rule - 1]


def test_useful_flops_follow_the_suite_formula():
    cases = {c.name: c for c in bench.load_suite(config_text(bench.SUITE_FILE), "shipped")}
    # conv2d_transpose: 2*N*Hi*Wi*KH*KW*Cin*Cout with Hi, Wi of the (small) input
    assert bench.useful_flops(cases["dcgan_g2"]) == 2 * 16 * 8 * 8 * 5 * 5 * 512 * 256
    assert bench.useful_flops(cases["fcn8s_up8"]) == 2 * 1 * 64 * 64 * 16 * 16 * 21 * 21
    # conv2d: 2*N*Ho*Wo*KH*KW*Cin*Cout (56 -> 28 -> 14 with the 1x1 stride-2 VALID)
    assert bench.useful_flops(cases["resnet_1x1s2_fwd"]) == 2 * 8 * 14 * 14 * 1 * 1 * 256 * 512
    # backprop-input: the forward conv's output is out_backprop
    assert bench.useful_flops(cases["resnet_3x3s2_bwd"]) == 2 * 8 * 28 * 28 * 3 * 3 * 64 * 128
    assert bench.useful_flops(cases["resnet_3x3s2_bwd"]) == 924_844_032


def test_useful_flops_of_1d_and_3d_cases():
    cases = {c.name: c for c in bench.load_suite(config_text(bench.SUITE_FILE), "shipped")}
    # conv1d_transpose: 2*N*Wi*K*Cin*Cout with Wi of the (small) input
    assert bench.useful_flops(cases["hifigan_up1_b16"]) == 2 * 16 * 32 * 16 * 512 * 256
    assert bench.useful_flops(cases["hifigan_res_k7"]) == 2 * 1 * 2048 * 7 * 128 * 128
    # conv3d_transpose: over the three axes of the small input
    assert bench.useful_flops(cases["unet3d_up1_b2"]) == 2 * 2 * 16 ** 3 * 2 ** 3 * 256 * 128
    assert bench.useful_flops(cases["unet3d_conv_b1"]) == 2 * 1 * 32 ** 3 * 3 ** 3 * 64 * 64
    # a 3-D transpose runs as one 2-D input gradient per depth phase (2 for stride 2)
    assert [op for op, _ in cases["unet3d_up1_b2"].planes()] == ["conv2d_backprop_input"] * 2
    assert cases["hifigan_up1_b1"].shapes()["output"] == [1, 256, 256]


def test_time_cap_keeps_at_least_min_runs():
    calls = []
    assert len(bench.time_runs(lambda: calls.append(1), 10)) == 10
    assert len(bench.time_runs(lambda: calls.append(1), 10, 0.0)) == bench.MIN_RUNS
    assert len(bench.time_runs(lambda: calls.append(1), 2, 0.0)) == 2
    assert len(calls) == 10 + bench.MIN_RUNS + 2


def test_one_off_case(capsys, tmp_path, spec):
    out_json = tmp_path / "one.json"
    code, out, err = _bench(capsys, "--op", "conv2d_transpose", "--input", "1,3,3,4",
                            "--filter", "3,3,2,4", "--output", "[1, 6, 6, 2]", "--strides", "2",
                            "--device", spec, "--repeat", "2", "--rounds", "2",
                            "--peers", "none", "--algorithm", "via_forward",
                            "--json", str(out_json))
    assert code == 0, err
    header = _header(out)
    cells = [cell.strip() for cell in header.split("  ") if cell.strip()]
    for column in COLUMNS:
        assert column in cells, (column, header)
    assert "cli" in out and "via_forward" in out
    data = json.loads(out_json.read_text())
    assert {"suite", "device", "versions", "rounds", "repeat", "peers", "cases",
            "geomean_ratio"} <= set(data)
    assert (data["rounds"], data["repeat"], data["round_warm_up_s"]) == (2, 2,
                                                                     bench.ROUND_WARM_UP_S)
    assert data["device"]["spec"] == spec and data["versions"]["clconv"]
    # The default tile's reason, on the CPUs the FMA probe concerns (16-wide vectors).
    probed = data["device"]["kind"] == "CPU" and data["vector_width"] >= 16
    assert (data["tile_rule"] or "").startswith("FMA chains: ") == probed, data["tile_rule"]
    assert (data["tile_rule"] or "") in out
    vectors = data["device"]["kind"] == "CPU"
    assert (f"vectors: {data['vector_width']}-wide float, {data['vector_registers']} "
            "registers" in out) == vectors
    on_pocl = data["device"]["platform"] == "Portable Computing Language"
    assert isinstance(data["pocl_workers"], str) == on_pocl, data["pocl_workers"]
    assert (f"PoCL worker threads: {data['pocl_workers']}" in out) == on_pocl
    (case,) = data["cases"]
    assert {"name", "op", "shapes", "flops", "clconv_ms", "end_to_end_ms", "gflops",
            "algorithm", "peers"} <= set(case)
    assert case["shapes"] == {"input": [1, 3, 3, 4], "filter": [3, 3, 2, 4],
                              "output": [1, 6, 6, 2]}
    assert case["flops"] == 2 * 1 * 3 * 3 * 3 * 3 * 2 * 4
    assert case["algorithm"] == "via_forward" and len(case["clconv_runs_ms"]) == 4
    assert len(case["clconv_round_ms"]) == len(case["end_to_end_round_ms"]) == 2
    assert case["clconv_ms"] == min(case["clconv_round_ms"])
    assert case["end_to_end_ms"] == min(case["end_to_end_round_ms"])
    assert case["clconv_ms"] > 0 and case["end_to_end_ms"] > 0
    assert case["clconv_cores"] > 0  # CPU time of the process over wall time


def test_custom_suite_with_case_selection(capsys, tmp_path, spec):
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    out_json = tmp_path / "suite.json"
    code, out, err = _bench(capsys, str(suite), "--cases", "f_same_s2,b_explicit",
                            "--device", spec, "--repeat", "1", "--peers", "none",
                            "--algorithm", "via_forward", "--json", str(out_json))
    assert code == 0, err
    data = json.loads(out_json.read_text())
    assert [c["name"] for c in data["cases"]] == ["f_same_s2", "b_explicit"]
    assert "not on conv2d cases" in out  # conv2d has no via_forward: the library chooses
    assert data["cases"][1]["shapes"]["out_backprop"] == [1, 4, 4, 4]
    assert data["cases"][0]["algorithm"] in bench.op_algorithms("conv2d")
    assert data["cases"][1]["algorithm"] == "via_forward"
    rows = out.splitlines()
    assert any(r.startswith("f_same_s2 ") for r in rows)
    assert any(r.startswith("b_explicit ") for r in rows)


def _every_peer_agrees(out_json, peers) -> dict:
    """The JSON report, after checking that every peer ran and agreed on every case."""
    data = json.loads(out_json.read_text())
    for case in data["cases"]:
        for peer in peers:
            result = case["peers"][peer.name]
            assert result["error"] is None, (case["name"], peer.name, result["error"])
            assert result["agrees"] and result["ratio"] > 0, (case["name"], peer.name, result)
    return data


def test_peers_agree_on_every_padding_mapping(capsys, tmp_path, spec):
    peers, _ = bench.load_peers(bench.PEERS)
    if not peers:
        pytest.skip("neither TensorFlow nor PyTorch is installed")
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY_SUITE)
    out_json = tmp_path / "peers.json"
    code, out, err = _bench(capsys, str(suite), "--device", spec, "--repeat", "1",
                            "--json", str(out_json))
    assert code == 0, out + err
    assert "DIFFERS" not in out and "geometric mean" in out
    data = _every_peer_agrees(out_json, peers)
    assert all(data["geomean_ratio"][p.name] > 0 for p in peers)


# 1-D and 3-D cases whose peer equivalents need the same mappings: asymmetric SAME
# (a stride 3 transpose; a stride 2 conv3d), VALID with a row left over
# (output_padding), a dilated conv1d, a 3-D transpose whose stride leaves a depth
# phase two taps.
TINY_ND_SUITE = """\
cases:
  - name: t1_same_s3
    op: conv1d_transpose
    input: [2, 5, 4]
    filter: [4, 3, 4]
    output: [2, 15, 3]
    strides: 3
  - name: t1_valid_left
    op: conv1d_transpose
    input: [1, 4, 2]
    filter: [3, 2, 2]
    output: [1, 10, 2]
    strides: 2
    padding: VALID
  - name: f1_dilated
    op: conv1d
    input: [1, 11, 3]
    filter: [3, 3, 2]
    dilations: 2
    padding: VALID
  - name: t3_same_s2_k3
    op: conv3d_transpose
    input: [1, 3, 2, 3, 4]
    filter: [3, 3, 3, 2, 4]
    output: [1, 6, 4, 6, 2]
    strides: 2
  - name: f3_same_s2
    op: conv3d
    input: [2, 5, 4, 5, 3]
    filter: [3, 2, 3, 3, 2]
    strides: [2, 1, 2]
"""


def test_peers_agree_on_1d_and_3d_cases(capsys, tmp_path, spec):
    peers, _ = bench.load_peers(bench.PEERS)
    if not peers:
        pytest.skip("neither TensorFlow nor PyTorch is installed")
    suite = tmp_path / "nd.yaml"
    suite.write_text(TINY_ND_SUITE)
    out_json = tmp_path / "nd.json"
    code, out, err = _bench(capsys, str(suite), "--device", spec, "--repeat", "1",
                            "--phases", "--json", str(out_json))
    assert code == 0, out + err
    assert "DIFFERS" not in out and "tconv3d" in out
    data = _every_peer_agrees(out_json, peers)
    if len(peers) > 1:
        assert data["geomean_faster_peer_ratio"] > 0 and "faster peer/clconv" in out
    assert set(data["phases_ms"]) == {c["name"] for c in data["cases"]}


@pytest.mark.filterwarnings("error::clconv.tuning_db.TuningDatabaseWarning")
def test_untuned_peer_runs_without_the_tuning_database(capsys, tmp_path, spec, db):
    """``--peers untuned``: the tuned runs take the database's choice (direct, for a
    transpose the shipped defaults give to the GEMM), the untuned runs the shipped
    choice, in the same process, and both are timed, checked and reported; the
    database's variable is what it was afterwards."""
    import os

    import clconv
    from clconv import config, plans, tuning_db
    from helpers import backprop_case

    rt = clconv.runtime(spec)
    g = backprop_case((1, 10, 10, 16), (3, 3, 16, 8), (1, 5, 5, 8), 2, "SAME")
    plans.forget_all()
    shipped = plans.get_plan(rt, "conv2d_transpose", g, np.float32).runs(prepared=False)
    assert shipped != "direct", "the case must differ from the entry below"
    tuning_db.record([{
        "case": "t", "op": "conv2d_transpose", "device": tuning_db.device_key(rt.info),
        "clconv": config.clconv_version(),
        "source_hash": config.op_source_hash("conv2d_transpose"),
        "geometry": tuning_db.geometry_dict(g), "algorithm": "direct",
        "results": {"direct": {"family": "backprop_direct", "ms": 1.0, "config": {
            "CI_BLOCK": 4, "CO_VEC": 8, "LOCAL_SIZE": None}}},
        "search": {"strategy": "exhaustive", "status": "complete"}}], db)
    config.invalidate()
    out_json = tmp_path / "untuned.json"
    code, out, err = _bench(capsys, "--op", "conv2d_transpose", "--input", "1,5,5,8",
                            "--filter", "3,3,16,8", "--output", "1,10,10,16", "--strides", "2",
                            "--device", spec, "--repeat", "3", "--rounds", "2",
                            "--peers", "untuned",
                            "--json", str(out_json))
    assert code == 0, out + err
    assert os.environ[tuning_db.ENV_DB] == str(db)
    assert f"tuning database: {db} (1 of its 1 entries for this device)" in out
    assert "untuned/clconv" in _header(out) and "faster peer" not in out
    assert "cases more than 10% slower tuned than untuned: " in out
    (case,) = json.loads(out_json.read_text())["cases"]
    untuned = case["peers"]["untuned"]
    assert (case["algorithm"], untuned["algorithm"]) == ("direct", shipped)
    assert untuned["error"] is None and untuned["agrees"], untuned
    assert len(untuned["runs_ms"]) == len(case["clconv_runs_ms"]) == 6
    assert len(untuned["round_ms"]) == len(case["clconv_round_ms"]) == 2
    assert untuned["ratio"] == pytest.approx(untuned["ms"] / case["clconv_ms"])


def test_alternated_runs_take_turns_and_stop_on_the_first_calls_time():
    order = []
    times, cpu = bench.time_alternated([lambda: order.append("a"), lambda: order.append("b")],
                                       3)
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert [len(t) for t in times] == [3, 3] and len(cpu) == 3
    order.clear()
    times, _ = bench.time_alternated([lambda: order.append("a"), lambda: order.append("b")],
                                     10, 0.0)
    assert [len(t) for t in times] == [bench.MIN_RUNS] * 2


def test_warm_up_calls_each_in_turn_for_its_time():
    order = []
    bench.warm_up([lambda: order.append("a"), lambda: order.append("b")], 0.0)
    assert order == ["a", "b"]
    order.clear()
    start = time.perf_counter()
    bench.warm_up([lambda: order.append("a") or time.sleep(0.01)], 0.05)
    assert time.perf_counter() - start >= 0.05 and len(order) >= 2


def test_case_rounds_take_turns_and_each_contender_keeps_its_best_round(spec, monkeypatch):
    """In each round clconv's runs (device-resident, then end to end) come first and
    then the peer's, each block after an untimed warm-up call; a peer slowed through two of
    three rounds is timed by its fast round, where an overall median of its runs
    would be the slow time."""
    events = []
    real_call = bench._clconv_call
    monkeypatch.setattr(bench, "_clconv_call",
                        lambda *a, **k: events.append("c") or real_call(*a, **k))
    monkeypatch.setattr(bench, "ROUND_WARM_UP_S", 0.0)  # one warm-up call per block
    peer_calls = []

    def prepare(case, x, w):
        def call():
            peer_calls.append(1)
            events.append("p")
            time.sleep(0.03 if 1 <= len(peer_calls) <= 7 else 0.001)  # the check + 2 rounds
        return call, (lambda _: np.zeros(case.shapes()["output"], np.float32))

    peer = bench.Peer("torch", "fake", "0", "sleeps", prepare)
    case = bench.make_case({"name": "r", "op": "conv2d", "input": [1, 4, 4, 2],
                            "filter": [1, 1, 2, 2]}, "test")
    result = bench.run_case(case, spec, [peer], 2, None, None, rounds=3)
    # The first resident call gives the expected result, then e2e's warm-up, the peer's
    # check; then each round: clconv device-resident (a warm-up and 2 runs), end to end
    # (the same), the peer (the same).
    assert "".join(events) == "ccp" + ("cccccc" + "ppp") * 3
    timed = result.peers["torch"]
    assert len(timed.runs_ms) == 6 and len(timed.round_ms) == 3
    assert timed.round_ms[0] > 25 and timed.round_ms[1] > 25, timed.round_ms
    assert timed.ms == min(timed.round_ms) < 15, timed.round_ms
    assert np.median(timed.runs_ms) > 25
    assert len(result.clconv_runs_ms) == len(result.end_to_end_runs_ms) == 6
    assert result.clconv_ms == min(result.clconv_round_ms)


def test_overhead_contenders_take_turns_and_milliseconds_come_last():
    """``clconv bench --overhead``'s timing order (clconv.overhead.time_in_turns): a
    warm-up and a sizing call each, then turns of WARM_UP + repeat / rounds calls
    of the sub-millisecond contenders, in order; the slow ones' turns after."""
    from clconv import overhead

    order = []
    slow_seconds = overhead.SMALL_WORK_US * 2e-6

    def slow():
        order.append("slow")
        time.sleep(slow_seconds)

    seconds = overhead.time_in_turns([lambda: order.append("a"), slow,
                                      lambda: order.append("b")], 4, 60.0, 2)
    turn = overhead.WARM_UP + 2
    assert order == ["a", "a", "slow", "slow", "b", "b"] + (["a"] * turn + ["b"] * turn) * 2 \
        + ["slow"] * turn * 2
    assert seconds[1] >= slow_seconds > max(seconds[0], seconds[2])


def test_overhead_takes_each_contenders_best_turn():
    """A burst of load over two of three turns does not reach the result."""
    from clconv import overhead

    turn = overhead.WARM_UP + 1
    calls = []

    def bursty():  # calls 0-1: warm-up and sizing; then turns of `turn` calls
        if 2 <= len(calls) < 2 + 2 * turn:
            time.sleep(300e-6)
        calls.append(1)

    (seconds,) = overhead.time_in_turns([bursty], 3, 60.0, 3)
    assert len(calls) == 2 + 3 * turn and seconds < 300e-6


def test_overhead_times_every_contender_of_every_case(capsys, tmp_path, spec, monkeypatch):
    """``clconv bench --overhead`` (few calls each) prints and writes a time for each
    contender of each case and the bare launch."""
    from clconv import overhead

    monkeypatch.setattr(overhead, "REPEAT", 4)
    monkeypatch.setattr(overhead, "ROUNDS", 2)
    monkeypatch.setattr(overhead, "MAX_SECONDS", 0.5)
    monkeypatch.setattr(overhead, "_tf_call", lambda *args: None)  # TF's own time: not here
    out_json = tmp_path / "overhead.json"
    code, out, err = _bench(capsys, "--overhead", "--device", spec, "--json", str(out_json))
    assert code == 0, err
    data = json.loads(out_json.read_text())
    assert data["mode"] == "overhead" and data["bare_launch_us"] > 0
    assert [case["name"] for case in data["cases"]] == [case[0] for case in overhead.CASES]
    for case in data["cases"]:
        assert set(case["us"]) == {"op", "plan", "prepared", "resident"}, case
        assert all(us > 0 for us in case["us"].values()), case
        assert case["name"] in out


def test_disagreeing_peer_is_flagged(capsys, monkeypatch, spec):
    def prepare(case, x, w):
        return (lambda: None), (lambda _: np.full(case.shapes()["output"], 7, np.float32))

    wrong = bench.Peer("torch", "fake", "0", "returns sevens", prepare)
    monkeypatch.setattr("clconv.commands.bench.load_peers", lambda names: ([wrong], []))
    code, out, _ = _bench(capsys, "--op", "conv2d", "--input", "1,4,4,2", "--filter", "1,1,2,2",
                          "--device", spec, "--repeat", "1")
    assert code == 1
    assert "fake DIFFERS" in out and "differs from clconv" in out


@pytest.mark.parametrize("text, expected", [
    ("cases: [", "not valid YAML at line"),
    ("cases: []", "'cases' is empty"),
    ("- 1\n- 2", "expected a mapping with a 'cases' list"),
    ("cases:\n  - {name: a, op: conv4d}", "op must be one of"),
    ("cases:\n  - {name: a, op: conv2d, input: [1, 4, 4, 2]}", "missing 'filter'"),
    ("cases:\n  - {name: a, op: conv2d, input: [1, 4, 4], filter: [1, 1, 2, 2]}",
     "4 non-negative integers"),
    ("cases:\n  - {name: a, op: conv2d, input: [1, 4, 4, 2], filter: [1, 1, 3, 2]}",
     "case #1 ('a')"),
    ("cases:\n  - {name: a, op: conv2d, input: [1, 4, 4, 2], filter: [1, 1, 2, 2], size: 3}",
     "unknown key(s) 'size'"),
    ("cases:\n  - {name: a, op: conv1d, input: [1, 4, 4, 2], filter: [1, 2, 2]}",
     "3 non-negative integers (NWC"),
    ("cases:\n  - {name: a, op: conv1d, input: [1, 4, 2], filter: [1, 2, 2], padding: 1}",
     "must be SAME or VALID, got 1"),
    ("cases:\n  - {name: a, op: conv3d, input: [1, 4, 4, 4, 2], filter: [1, 1, 1, 2, 2], "
     "strides: [1, 2]}", "strides must be a positive int or 3 of them, got [1, 2]"),
    ("cases:\n  - {name: a, op: conv3d_transpose, input: [1, 2, 2, 2, 4], "
     "filter: [2, 2, 2, 3, 5], output: [1, 4, 4, 4, 3], strides: 2}",
     "filter [2, 2, 2, 3, 5] must be [kd, kh, kw, 3 (output channels), 4"),
    ("cases:\n  - {name: a, op: conv3d_transpose, input: [1, 2, 2, 2, 4], "
     "filter: [2, 2, 2, 3, 4], output: [1, 5, 4, 4, 3], strides: 2}",
     "Size of out_backprop doesn't match computed: actual = 2, computed = 3"),
])
def test_malformed_suite_is_one_line(capsys, tmp_path, text, expected):
    suite = tmp_path / "bad.yaml"
    suite.write_text(text)
    code, out, err = _bench(capsys, str(suite), "--peers", "none")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("clconv bench: error: "), err
    assert expected in err and "bad.yaml" in err, err


@pytest.mark.parametrize("argv, expected", [
    (["--cases", "resnet_3x3_fwd,nope"], "unknown case(s) 'nope'; the suite has dcgan_g2"),
    (["--input", "1,4,4,2"], "give --op too"),
    (["--op", "conv2d_transpose", "--input", "1,4,4,2", "--filter", "1,1,2,2"],
     "needs --output"),
    (["--op", "conv2d", "--input", "1,4,4,2", "--filter", "3,3,5,2"], "command line"),
    (["no_such_suite.yaml"], "cannot read suite file 'no_such_suite.yaml'"),
    (["--repeat", "0"], "--repeat must be at least 1"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--max-seconds", "-1"], "--max-seconds must be 0 (no cap) or more"),
    (["--peers", "jax"], "unknown peer 'jax'"),
])
def test_usage_errors_are_one_line(capsys, argv, expected):
    code, out, err = _bench(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and expected in err, err
