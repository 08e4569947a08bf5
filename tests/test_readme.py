"""The README's examples run, so they cannot drift from the library.

Every ```python block (except those marked ``<!-- not run ... -->`` just above)
runs, in order, as one script in a fresh process; the documented error message
is the one clconv raises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"(<!--[^\n]*-->\s*\n)?( *)```python\n(.*?)\n\s*```", re.S)


def _python_blocks(text: str) -> list[str]:
    blocks = []
    for marker, indent, body in BLOCK.findall(text):
        if "not run" in marker:
            continue
        blocks.append("\n".join(line[len(indent):] for line in body.splitlines()))
    return blocks


@pytest.mark.skipif(not README.exists(), reason="the README is not beside the tests (sdist)")
def test_the_python_examples_run(tmp_path):
    blocks = _python_blocks(README.read_text())
    assert len(blocks) >= 5, "the README's examples were not found"
    script = tmp_path / "readme_examples.py"
    script.write_text("\n\n".join(blocks) + "\nprint('README examples ran')\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "README examples ran" in done.stdout


@pytest.mark.skipif(not README.exists(), reason="the README is not beside the tests (sdist)")
def test_the_documented_error_is_the_one_raised():
    import numpy as np

    import clconv

    text = README.read_text()
    call, shown = re.search(r">>> (clconv\.conv2d_transpose\(.*?\))\n"
                            r"\s*(clconv\.errors\.\S+: .*?)\n\s*```", text, re.S).groups()
    x = np.random.rand(4, 8, 8, 64).astype(np.float32)
    w = np.random.rand(5, 5, 32, 64).astype(np.float32)
    with pytest.raises(clconv.InvalidArgumentError) as caught:
        eval(call, {"clconv": clconv, "x": x, "w": w})  # noqa: S307 - the README's own line
    expected = " ".join(shown.split())
    assert f"clconv.errors.InvalidArgumentError: {caught.value}" == expected
