"""The `storm-hf` command: generate, stream, compose, convert, push, info, demo, serve.

Each subcommand is a module of this package with `register_subcommand(subcommands)`, which adds its parser and sets
`run` (the function that carries it out, given the parsed arguments), as transformers' and huggingface_hub's
command-line tools register theirs. Every subcommand has `--help`. Bad arguments end with a one-line error and exit
status 2; failures while running end with a one-line error and exit status 1 (`--traceback` or `STORM_HF_TRACEBACK=1`
shows the trace).
"""

import argparse
import os
import sys

from . import compose, convert, demo, generate, info, push, serve, stream
from .common import CommandError


SUBCOMMANDS = (generate, compose, convert, push, info, demo, stream, serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="storm-hf",
        description="STORM (token-efficient long-video language model) for Hugging Face Transformers.",
    )
    parser.add_argument("--traceback", action="store_true", help="show the full Python traceback on errors")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.register_subcommand(subcommands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `storm-hf` with `argv` (default: `sys.argv[1:]`) and return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # one clear line; --traceback for the rest
        if args.traceback or os.environ.get("STORM_HF_TRACEBACK"):
            raise
        message = str(error).strip() or type(error).__name__
        print(f"storm-hf {args.command}: error: {message}", file=sys.stderr)
        return 1
    return 0


__all__ = ["CommandError", "build_parser", "main"]
