"""The ``recsys`` command line. Thin: parses arguments and calls library functions.

Each area of the package contributes its subcommands from a ``commands`` module with a
``register(subparsers)`` function; handlers import heavy libraries lazily so that
``recsys --help`` stays fast.

Example:
    recsys data prepare --source ml-100k --out data/ml-100k
    recsys data stats data/ml-100k
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from recsys.errors import SetrecError

#: Modules that add subcommands, in the order they appear in ``recsys --help``.
COMMAND_MODULES = (
    "recsys.pipelines.commands",
    "recsys.tokenizers.commands",
    "recsys.training.commands",
    "recsys.tuning.commands",
    "recsys.evaluation.commands",
    "recsys.serving.commands",
    "recsys.demo",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every area's subcommands."""
    parser = argparse.ArgumentParser(
        prog="recsys",
        description="setrec: generative recommendation with set identifiers.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name) is None:
            continue
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recsys`` console script; returns the exit status.

    A subcommand registered with ``set_defaults(config_args=<its parse function>)`` parses its own
    arguments through the one config path (:mod:`recsys.config`): it receives them as ``args.argv``
    (``args.config_args(args.argv)`` parses them without running the command).
    """
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "config_args", False):
        args.argv = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        result = args.func(args)
    except SetrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
