"""`deca-blender build-extension --out DIR`: the installable Blender extension zip."""
from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-extension", help="build the Blender extension zip (install it in Blender 4.2+)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write deca_blender-<version>.zip into")
    p.set_defaults(func=cmd_build_extension)


def cmd_build_extension(args: argparse.Namespace) -> int:
    from deca_blender.packaging import PackagingError, build_extension

    try:
        path = build_extension(args.out)
    except (PackagingError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0
