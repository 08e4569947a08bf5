"""``--json FILE`` for every command: one meaning, one check, one envelope.

``--json FILE`` writes the command's full result as JSON to FILE (``-``:
standard output, with the human-readable report moved to standard error so
that standard output is JSON alone).  The path is checked before any work
starts.  Every document carries ``schema`` (``clconv.<command>``) and
``schema_version``; docs/json.md describes each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from typing import Any, Iterator

from clconv.errors import UsageError

SCHEMA_VERSION = 1
STDOUT = "-"


def add_json_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", metavar="FILE",
                        help=f"write {what} as JSON to FILE ('-': standard output, the report "
                             "then goes to standard error); see docs/json.md")


def check_target(path: str | None) -> None:
    """Fail now, before any work, if ``path`` cannot be written."""
    if path is None or path == STDOUT:
        return
    folder = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        raise UsageError(f"--json {path}: is a folder, expected a file name")
    if not os.path.isdir(folder):
        raise UsageError(f"--json {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"--json {path}: cannot write there")


_json_stdout: list = []  # standard output as it was when report_stream moved the report


@contextlib.contextmanager
def report_stream(path: str | None) -> Iterator[None]:
    """With ``--json -`` the human-readable report goes to standard error (and the
    JSON, written inside or after the block, to the real standard output)."""
    if path != STDOUT:
        yield
        return
    _json_stdout.append(sys.stdout)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        _json_stdout.pop()


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: write them as the strings "nan", "inf", "-inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write(path: str | None, command: str, document: dict[str, Any]) -> None:
    if path is None:
        return
    from clconv import __version__

    full = {"schema": f"clconv.{command}", "schema_version": SCHEMA_VERSION,
            "clconv_version": __version__, **document}
    text = json.dumps(_finite(full), indent=1) + "\n"
    if path == STDOUT:
        stream = _json_stdout[-1] if _json_stdout else sys.stdout
        stream.write(text)
        stream.flush()
        return
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    print(f"\nwrote {path}", file=sys.stderr)
