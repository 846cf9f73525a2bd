"""The `deca-blender` command. Each feature registers its own subcommands from its `commands` module."""
from __future__ import annotations

import argparse
import importlib
import sys

# One entry per command group; each module exposes `register(subparsers)`. Modules import their heavy
# dependencies (torch) inside the command functions so `--help` and `assets status` stay fast.
COMMAND_MODULES = (
    "core.assets.commands",
    "deca_blender.commands",
    "core.commands.reconstruct",
    "core.commands.fit",
    "core.evaluation.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deca-blender", description="Photo of a face to an animatable FLAME head")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
