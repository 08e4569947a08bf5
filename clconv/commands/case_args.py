"""The cases a command works on: a suite file (the format of configs/bench_suite.yaml)
or one case described by flags.  Shared by ``clconv bench`` and ``clconv autotune``."""

from __future__ import annotations

import argparse
from typing import Any, Optional

from clconv.bench import (
    FORWARD_OPS,
    OPS,
    SUITE_FILE,
    BenchCase,
    load_suite,
    make_case,
    select_cases,
)
from clconv.cli import UsageError
from clconv.resources import config_text

OP_LABELS = {"conv2d": "conv2d", "conv2d_transpose": "transpose",
             "conv2d_backprop_input": "backprop", "conv1d": "conv1d",
             "conv1d_transpose": "tconv1d", "conv3d": "conv3d",
             "conv3d_transpose": "tconv3d"}  # short names for table columns
SHAPE_KEYS = ("input", "filter", "output", "out_backprop", "input_sizes")
FLAG_OF = {"input": "--input", "filter": "--filter", "output": "--output",
           "out_backprop": "--input", "input_sizes": "--input-sizes"}


def add_case_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """SUITE, --cases, and the one-case flags (--op, shapes, strides, padding...)."""
    parser.add_argument("suite", nargs="?", metavar="SUITE",
                        help=f"suite YAML file (default: the shipped configs/{SUITE_FILE}); "
                             "not with --op")
    parser.add_argument("--cases", metavar="NAME,NAME", help=f"{verb} only these cases of the "
                                                               "suite")
    one = parser.add_argument_group(
        "one case from the command line (instead of a suite); shapes as 1,8,8,16 (NHWC; "
        "NWC and NDHWC for the 1-D and 3-D ops)")
    one.add_argument("--op", choices=OPS)
    one.add_argument("--name", default="cli", help="the case's name in the output (default cli)")
    one.add_argument("--input", metavar="SHAPE",
                     help="the op's input; out_backprop for conv2d_backprop_input (alias "
                          "--out-backprop)")
    one.add_argument("--out-backprop", dest="input", metavar="SHAPE", help=argparse.SUPPRESS)
    one.add_argument("--filter", metavar="SHAPE",
                     help="[k..., in, out] for the forward ops; [k..., out, in] for the others")
    one.add_argument("--output", "--input-sizes", dest="output", metavar="SHAPE",
                     help="a transpose's output_shape / conv2d_backprop_input's input_sizes")
    one.add_argument("--strides", default="1", help="int or list, as TF takes it (default 1)")
    one.add_argument("--padding", default="SAME",
                     help="SAME, VALID or explicit pairs such as [[0,0],[1,1],[1,1],[0,0]]")
    one.add_argument("--dilations", default=None, help="int or list (default 1)")


def _yaml_value(text: Optional[str], what: str) -> Any:
    import yaml

    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        raise UsageError(f"{what} {text!r} is not an int, a list or a word such as SAME") from None


def cases_from_args(args: argparse.Namespace) -> tuple[list[BenchCase], str]:
    """The selected suite cases, or the one case of the flags; and where they came from."""
    one_off = [f"--{k}" for k in ("input", "filter", "output") if getattr(args, k) is not None]
    if args.op is None:
        if one_off:
            raise UsageError(f"{', '.join(one_off)} describe one case: give --op too")
        if args.suite is None:
            origin, text = f"configs/{SUITE_FILE} (shipped)", config_text(SUITE_FILE)
        else:
            origin = args.suite
            try:
                with open(args.suite, encoding="utf-8") as handle:
                    text = handle.read()
            except OSError as exc:
                raise UsageError(f"cannot read suite file {args.suite!r}: "
                                 f"{exc.strerror or exc}") from None
        names = [n.strip() for n in args.cases.split(",") if n.strip()] if args.cases else None
        return select_cases(load_suite(text, origin), names), origin
    if args.suite is not None or args.cases:
        raise UsageError("give either a suite file (with --cases) or --op with shapes, not both")
    entry = {"name": args.name, "op": args.op, "filter": args.filter,
             "strides": _yaml_value(args.strides, "--strides"),
             "padding": _yaml_value(args.padding, "--padding"),
             "dilations": _yaml_value(args.dilations, "--dilations")}
    if args.op == "conv2d_backprop_input":
        entry.update(out_backprop=args.input, input_sizes=args.output)
    else:
        entry["input"] = args.input
        if args.op not in FORWARD_OPS:
            entry["output"] = args.output
        elif args.output is not None:
            raise UsageError(f"--output/--input-sizes is for the transposes and "
                             f"conv2d_backprop_input; {args.op}'s output shape follows from "
                             "the rest")
    missing = [FLAG_OF[k] for k in SHAPE_KEYS if k in entry and entry[k] is None]
    if missing:
        raise UsageError(f"--op {args.op} needs {', '.join(missing)}")
    for key in SHAPE_KEYS:
        if entry.get(key) is not None:
            entry[key] = str(entry[key])
    return [make_case(entry, "command line")], "command line"
