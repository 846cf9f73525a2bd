"""The `deca-blender` command. Each feature registers its own subcommands from its `commands` module.

Errors: a `DecaError` (the user's to fix: a bad photo, a missing asset, an unusable output folder) is
printed as one line and exits 2; anything else is a bug and surfaces with its traceback. Ctrl-C exits 130
with one line (the batch commands finish or discard the photo in progress and print their summary first).

The installed command is `run` (``main`` plus a fast exit): tests call ``main`` and get the exit code back.
"""
from __future__ import annotations

import argparse
import atexit
import os
import sys
import threading

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


def exit_now(code: int) -> None:
    """End the process with ``code`` without the interpreter's finalisation when that is safe.

    After ``import torch`` the normal exit (tearing down ~1300 modules and the native libraries' destructors)
    takes 0.7-1.1 s on 2 shared cores (measured: ``import torch`` then exit), a fifth of a cold
    ``reconstruct``; nothing of ours needs it: every result file is written atomically and closed before the
    command returns. So: run the ``atexit`` handlers (logging, temporary folders), flush stdout/stderr, and
    ``os._exit``. With another non-daemon thread still running (a normal exit would wait for it) the normal
    exit runs; daemon threads (which a normal exit does not wait for either) do not stop the fast one.
    """
    main_thread = threading.main_thread()
    if any(t is not main_thread and not t.daemon for t in threading.enumerate()):
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed or broken pipe: nothing more can be said on it
            pass
    os._exit(code)


def run() -> None:
    """The `deca-blender` console command: `main` on ``sys.argv``, then `exit_now`."""
    exit_now(main())


if __name__ == "__main__":
    run()
