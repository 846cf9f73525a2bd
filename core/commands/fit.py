"""`deca-blender fit`: FLAME fitted to photos without DECA's regressor (analysis by synthesis).

The same result folders as `reconstruct`, which it is with the fit modes only (`reconstruct --mode fit` is
the same run). Exit codes as `reconstruct`'s.
"""
from __future__ import annotations

import argparse

from core.commands.reconstruct import DECA_DEFAULTS, add_fit_options, add_skip_existing, cmd_reconstruct


def register(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("fit", help="fit FLAME to photos (no DECA checkpoint needed)",
                       description="Analysis by synthesis: landmarks (pose, camera, shape, expression with priors), "
                                   "then a photometric refinement with the project's renderer (albedo, SH light). "
                                   "Writes the same result folders as 'reconstruct'. Needs FLAME and DECA's data "
                                   "files; DECA's checkpoint only for --mode deca+fit.")
    f.add_argument("photos", nargs="+", metavar="PHOTO_OR_FOLDER")
    f.add_argument("--out", required=True, metavar="DIR")
    f.add_argument("--mode", choices=("fit", "deca+fit"), default="fit",
                   help="fit: FLAME only; deca+fit: start from DECA's regressor and refine (needs its checkpoint)")
    add_fit_options(f)
    f.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    f.add_argument("--landmarks", default="auto", choices=("auto", "mediapipe", "fan", "dlib"))
    f.add_argument("--commercial", action="store_true",
                   help="refuse to run with components licensed for non-commercial use only (assets status)")
    f.add_argument("--force", action="store_true",
                   help="fit faces below the landmark confidence threshold (e.g. strong profiles)")
    f.add_argument("--all-faces", action="store_true", help="fit every face (default: the largest)")
    f.add_argument("--overwrite", action="store_true", help="replace existing result folders")
    add_skip_existing(f)
    f.add_argument("--home", help="asset folder (default: $DECA_BLENDER_HOME or the user data folder)")
    f.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    f.set_defaults(func=cmd_reconstruct, **DECA_DEFAULTS)  # the regressor's options: deca+fit uses the defaults
