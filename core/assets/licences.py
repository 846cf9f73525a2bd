"""Which installed components may be used commercially: the licence table behind `assets status` and
``--commercial``.

The project's code is GPL-3.0; the trained models and data it runs on are not ours and carry their own
terms. What a studio may use (summarised; the licence texts decide):

- FLAME 2020 (``generic_model.pkl``) and FLAME's albedo/texture spaces: MPI's FLAME licence, non-commercial;
- FLAME 2023 Open (``flame2023_Open.pkl``): CC-BY-4.0, commercial use with attribution;
- DECA's trained weights (``deca_model.tar``) and the files of DECA's release data folder (head template
  with DECA's UV layout, its 68-landmark embedding, UV masks, fixed displacement, mean texture): DECA's
  licence, non-commercial scientific research;
- dlib's 68-point predictor (``face_recognition_models``): trained on iBUG 300-W, whose annotations are
  for non-commercial research only; FAN's weights are trained on 300-W-derived data as well;
- MediaPipe 0.10.14 and its bundled face models: Apache-2.0.

The deca-blender test model is synthetic (GPL, ours) but is not a face model for production.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from core.assets import catalog
from core.errors import DecaError

__all__ = ["ComponentLicence", "CommercialUseError", "component_licences", "require_commercial",
           "DETECTOR_LICENCES", "FIT_ASSETS", "RECONSTRUCT_ASSETS"]

# What each mode reads (core/model/face_model.py FaceAssets.from_manager, plus DECA's checkpoint).
FIT_ASSETS = ("flame_model",) + tuple(s.name for s in catalog.DATA_FILES) + ("texture_space",)
RECONSTRUCT_ASSETS = FIT_ASSETS + ("deca_model",)


@dataclass(frozen=True)
class ComponentLicence:
    """One installed (or importable) component and whether its licence allows commercial use."""

    component: str  # asset name or detector name
    what: str
    licence: str
    commercial: bool

    def to_dict(self) -> dict:
        return asdict(self)


class CommercialUseError(DecaError, RuntimeError):
    """``--commercial`` was asked for, but a component the run needs is licensed non-commercially."""


_DECA_DATA = "DECA licence (non-commercial scientific research)"
_ASSET_LICENCES = {
    "deca_model": ("DECA's trained encoders and detail decoder", _DECA_DATA, False),
    "texture_space": ("FLAME albedo/texture space (FLAME_albedo_from_BFM / FLAME_texture)",
                      "FLAME / BFM licence (non-commercial)", False),
    **{s.name: (f"{s.download_name} from DECA's release data folder", _DECA_DATA, False)
       for s in catalog.DATA_FILES},
}
_FLAME_LICENCES = {  # by the variant `assets install` recorded
    "flame2020": ("FLAME 2020", "FLAME licence (non-commercial)", False),
    "flame2023": ("FLAME 2023", "FLAME licence (non-commercial)", False),
    "flame2023_open": ("FLAME 2023 Open", "CC-BY-4.0 (commercial use with attribution)", True),
    "test": ("deca-blender TEST model (synthetic, not FLAME)", "GPL-3.0 (ours); for testing only", True),
    "procedural": ("deca-blender procedural test head (not FLAME)", "GPL-3.0 (ours); for testing only", True),
}
DETECTOR_LICENCES = {
    "mediapipe": ("MediaPipe 0.10.14 face detector and face mesh", "Apache-2.0", True),
    "dlib": ("dlib's 68-point shape predictor (face_recognition_models)",
             "trained on iBUG 300-W: non-commercial research only", False),
    "fan": ("FAN (face_alignment) weights", "trained on 300-W-derived data: non-commercial research only", False),
}


def component_licences(manager, detectors: tuple[str, ...] | None = None) -> list[ComponentLicence]:
    """The licence of every installed asset of ``manager`` and of the given (default: installed) detectors."""
    reg = manager.registry()
    out = []
    for st in manager.status():
        if not st.present:
            continue
        if st.name == "flame_model":
            variant = str(reg.get("flame_model", {}).get("variant", "unknown"))
            what, lic, ok = _FLAME_LICENCES.get(variant, (f"FLAME model ({variant})",
                                                          "unknown variant: treat as non-commercial", False))
        else:
            what, lic, ok = _ASSET_LICENCES[st.name]
        out.append(ComponentLicence(st.name, what, lic, ok))
    if detectors is None:
        from core.frontend import DlibDetector, FanDetector, MediaPipeDetector
        found = {"mediapipe": MediaPipeDetector, "dlib": DlibDetector, "fan": FanDetector}
        detectors = tuple(n for n, cls in found.items() if cls.is_available())
    for name in detectors:
        what, lic, ok = DETECTOR_LICENCES[name]
        out.append(ComponentLicence(name, what, lic, ok))
    return out


def require_commercial(manager, assets: tuple[str, ...], detector: str) -> None:
    """Raise `CommercialUseError` naming every non-commercial component among ``assets`` (installed asset
    names a run needs) and ``detector``."""
    wanted = set(assets) | {detector}
    bad = [c for c in component_licences(manager, detectors=(detector,)) if c.component in wanted and not c.commercial]
    if bad:
        lines = "\n".join(f"  {c.component}: {c.what} -- {c.licence}" for c in bad)
        raise CommercialUseError(
            "--commercial: this run needs components whose licence forbids commercial use:\n" + lines +
            "\nCommercially usable today: FLAME 2023 Open (CC-BY-4.0) and the MediaPipe detector (Apache-2.0). "
            "DECA's weights and its release data files (which every mode, the FLAME-only fit included, still "
            "reads: UV layout, 68-landmark embedding, masks) are research-only (README: 'Licences').")
