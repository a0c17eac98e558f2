"""`storm-hf serve`: `transformers serve` in a process where STORM is registered.

The same server with the same options: every argument after `serve` goes unchanged to transformers' own command line
(`storm-hf serve --help` prints its help). With storm_hf imported, STORM checkpoints load through storm_hf's Auto
classes, so `--trust-remote-code` is not needed and checkpoints without `auto_map` (the bundled demo checkpoint) are
served too. See docs/serving.md.
"""

import argparse


def register_subcommand(commands) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve a STORM checkpoint with `transformers serve` (OpenAI-compatible API)",
        description="Run `transformers serve` with STORM registered; all arguments are those of `transformers serve`.",
        # Options are `transformers serve`'s: with no prefix character of its own (and no `--help`), this parser takes
        # every argument, `--help` and options first included, as a positional.
        add_help=False,
        prefix_chars="\0",
    )
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="arguments of `transformers serve`")
    parser.set_defaults(run=run)


def run(args) -> None:
    from transformers.cli.transformers import app

    app(["serve", *args.arguments], prog_name="storm-hf")
