"""The ``clconv`` command line: one sub-command per module in clconv.commands.

Each command module defines ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``.  User mistakes (an unknown device, bad shapes, bad YAML)
end as one line on stderr and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from clconv.errors import (
    DeviceNotFoundError,
    InvalidArgumentError,
    UnimplementedError,
    UsageError,
)

# Sub-command name -> module under clconv.commands (imported only when used).
COMMANDS = {
    "devices": "devices",
    "demo": "demo",
    "bench": "bench",
    "conformance": "conformance",
    "autotune": "autotune",
}

USER_ERRORS = (DeviceNotFoundError, InvalidArgumentError, UnimplementedError, ValueError,
               TypeError, FileNotFoundError, KeyError)


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", help="P:D or P (platform, device: as PYOPENCL_CTX), cpu, "
                                         "gpu, accelerator, or a substring of one device's "
                                         "name or driver version (default: CLCONV_DEVICE or "
                                         "clconv's choice)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clconv",
        description="TensorFlow-compatible OpenCL convolutions: devices, demo, tuning, "
                    "benchmarks and conformance.")
    from clconv import __version__

    parser.add_argument("--version", action="version", version=f"clconv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"clconv.commands.{module_name}")
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (UsageError, *USER_ERRORS) as exc:
        print(f"clconv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clconv {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
