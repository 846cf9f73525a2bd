"""`deca-blender assets status|install|verify`."""
from __future__ import annotations

import argparse
import json
import sys

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.assets.manager import AssetManager


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("assets", help="show, install and verify the downloaded model files")
    p.add_argument("--home", help="asset folder (default: $DECA_BLENDER_HOME or the user data folder)")
    asub = p.add_subparsers(dest="assets_command", required=True)
    s = asub.add_parser("status", help="what is installed and what is missing")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--commercial", action="store_true",
                   help="exit with status 1 when a component every mode needs is licensed non-commercially")
    s.set_defaults(func=cmd_status)
    i = asub.add_parser("install", help="check and install downloaded files")
    i.add_argument("--flame", metavar="PATH", help="FLAME model: generic_model.pkl (2020), flame2023_Open.pkl, or .npz")
    i.add_argument("--deca", metavar="PATH", help="DECA checkpoint deca_model.tar")
    i.add_argument("--data", metavar="DIR", help="DECA's release data folder (template, embedding, masks, ...)")
    i.add_argument("--texture", metavar="PATH", help="optional FLAME albedo space (.npz)")
    i.add_argument("--force", action="store_true", help="replace an installed asset with a different file")
    i.set_defaults(func=cmd_install)
    v = asub.add_parser("verify", help="re-check installed files against their sha256 and content")
    v.set_defaults(func=cmd_verify)


def _manager(args: argparse.Namespace) -> "AssetManager":
    from core.assets.manager import AssetManager  # numpy: not for `--help`

    return AssetManager(args.home) if args.home else AssetManager()


def cmd_status(args: argparse.Namespace) -> int:
    from core.assets.manager import describe_missing, status_as_json
    from core.assets.licences import FIT_ASSETS, CommercialUseError, component_licences, require_commercial

    m = _manager(args)
    info = status_as_json(m)
    licences = component_licences(m)
    refusal = None
    if getattr(args, "commercial", False):
        try:
            require_commercial(m, FIT_ASSETS, "mediapipe")
        except CommercialUseError as exc:
            refusal = str(exc)
    if args.json:
        info["licences"] = [c.to_dict() for c in licences]
        info["commercial_refusal"] = refusal
        print(json.dumps(info, indent=2))
        return 1 if refusal else 0
    print(f"asset folder: {m.home}")
    for st in m.status():
        mark = "ok " if st.present else ("-- " if st.required else "(optional) ")
        line = f"  {mark}{st.name:20s} {st.path if st.present else st.file}"
        if st.note:
            line += f"   [{st.note}]"
        print(line)
    missing = m.missing()
    if missing:
        print()
        print(describe_missing(missing, m.home))
    else:
        print("\nall required assets are installed")
    print("\nlicences of the installed components:")
    for c in licences:
        print(f"  {'commercial    ' if c.commercial else 'NON-COMMERCIAL'}  {c.component:20s} {c.what} -- {c.licence}")
    if refusal:
        print(f"\n{refusal}", file=sys.stderr)
        return 1
    return 0


def cmd_install(args: argparse.Namespace) -> int:
    if not any((args.flame, args.deca, args.data, args.texture)):
        print("nothing to install: give --flame, --deca, --data and/or --texture", file=sys.stderr)
        return 2
    m = _manager(args)
    # a refused file (AssetError, FlameModelError, CheckpointError: all DecaErrors) reaches the CLI's one-line
    # error and exit code 2
    notes = m.install(flame=args.flame, deca=args.deca, data=args.data, texture=args.texture, force=args.force)
    for n in notes:
        print(f"note: {n}")
    missing = m.missing()
    if missing:
        print("still missing: " + ", ".join(s.file for s in missing))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    problems = _manager(args).verify()
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0
