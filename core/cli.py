"""The `deca-blender` command. Each feature registers its own subcommands from its `commands` module.

Errors: a `DecaError` (the user's to fix: a bad photo, a missing asset, an unusable output folder) is
printed as one line and exits 2; anything else is a bug and surfaces with its traceback. Ctrl-C exits 130
with one line (the batch commands finish or discard the photo in progress and print their summary first).
"""
from __future__ import annotations

import argparse
import sys

# The command modules import their heavy dependencies (torch) inside the command functions, so
# `--help` and `assets status` stay fast (tests/test_layout.py checks that --help loads no torch).
from core.assets import commands as assets_commands
from core.commands import fit as fit_commands
from core.commands import reconstruct as reconstruct_commands
from core.errors import DecaError
from core.evaluation import commands as evaluation_commands
from deca_blender import commands as blender_commands

COMMAND_MODULES = (assets_commands, blender_commands, reconstruct_commands, fit_commands, evaluation_commands)
EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deca-blender", description="Photo of a face to an animatable FLAME head")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DecaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
