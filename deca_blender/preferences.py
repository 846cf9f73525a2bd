"""Add-on preferences: asset status and installation, device, landmark detector, worker Python and warm-up,
output folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import bpy
from bpy.props import BoolProperty, EnumProperty, FloatProperty, StringProperty

ADDON_ID = __package__  # "bl_ext.<repo>.deca_blender" when installed as an extension


class DecaPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_ID

    # --- worker
    python_mode: EnumProperty(
        name="Worker Python",
        items=(("BLENDER", "Blender's Python", "A private virtual environment made from Blender's Python by "
                "Install Dependencies in the extension's user folder (Blender's own Python is not changed)"),
               ("EXTERNAL", "External Python", "A Python you installed torch into (e.g. a virtual environment with CUDA)")),
        default="BLENDER",
    )
    external_python: StringProperty(name="Python Executable", subtype="FILE_PATH",
                                    description="The external Python that runs the inference worker")
    wheels_dir: StringProperty(name="Folder of Wheels", subtype="DIR_PATH",
                               description="For machines without network: a folder with the dependencies' wheels "
                                           "(pip download ...); Install from Folder installs only from it")
    warm_up: EnumProperty(
        name="Warm Up the Worker",
        items=(("STARTUP", "With Blender", "Start the worker and load the models when Blender starts (the first "
                "photo imports at full speed; the worker holds about 1 GB of memory from then on)"),
               ("FIRST_USE", "When First Needed", "Start the worker and load the models when the DECA panel is first "
                "shown or the Import Photo file browser opens, while you pick the photo"),
               ("OFF", "Only on Import", "Start the worker when a photo is imported (the first import waits for "
                "torch and the models to load)")),
        default="FIRST_USE",
    )
    device: EnumProperty(
        name="Device",
        items=(("auto", "Auto", "CUDA when available, else the CPU"), ("cpu", "CPU", "Always the CPU"),
               ("cuda", "CUDA", "An NVIDIA GPU (needs a CUDA build of torch)")),
        default="auto",
    )
    landmarks: EnumProperty(
        name="Landmark Detector",
        items=(("auto", "Auto", "The first detector that is installed"),
               ("fan", "FAN (face-alignment)", "FAN, the detector DECA was trained with"),
               ("dlib", "dlib", "dlib's 68-point predictor (fast on the CPU)")),
        default="auto",
    )
    mode: EnumProperty(
        name="Reconstruction",
        items=(("deca", "DECA", "DECA's regressor (needs deca_model.tar): fast, animatable wrinkles"),
               ("fit", "Fit (FLAME only)", "Analysis by synthesis with FLAME alone (no DECA checkpoint needed); "
                "static details from shading"),
               ("deca+fit", "DECA + Fit", "Start from DECA's regressor and refine by fitting")),
        default="deca",
    )
    output_dir: StringProperty(name="Output Folder", subtype="DIR_PATH",
                               description="Where reconstructions are written (empty: the extension's user folder)")
    asset_home: StringProperty(name="Asset Folder", subtype="DIR_PATH",
                               description="Where the model files are installed (empty: deca-blender's default, "
                                           "or $DECA_BLENDER_HOME)")
    all_expressions: BoolProperty(name="All Expression Keys", default=False,
                                  description="Create every expression component the result holds (100 with FLAME "
                                              "2020 when the reconstruction kept them), not only DECA's 50")
    exact_debounce: FloatProperty(name="Exact Wrinkles Delay", default=0.4, min=0.05, max=5.0, subtype="TIME_ABSOLUTE",
                                  unit="TIME_ABSOLUTE",
                                  description="Seconds the sliders must rest before the worker re-decodes the details")
    # --- assets to install (file pickers) and the last status the worker reported
    flame_file: StringProperty(name="FLAME Model", subtype="FILE_PATH",
                               description="generic_model.pkl (FLAME 2020) or flame2023_Open.pkl")
    deca_file: StringProperty(name="DECA Checkpoint", subtype="FILE_PATH", description="deca_model.tar")
    data_dir: StringProperty(name="DECA Data Folder", subtype="DIR_PATH",
                             description="DECA's release data folder (head_template.obj, landmark_embedding.npy, ...)")
    status_json: StringProperty(name="Asset Status", default="", options={"HIDDEN", "SKIP_SAVE"})
    worker_info: StringProperty(name="Worker", default="", options={"HIDDEN", "SKIP_SAVE"})

    def draw(self, context) -> None:
        layout = self.layout
        box = layout.box()
        box.label(text="Model files", icon="FILE_3D")
        status = {}
        if self.status_json:
            try:
                status = json.loads(self.status_json)
            except ValueError:
                status = {}
        if status:
            col = box.column(align=True)
            col.label(text=f"Asset folder: {status.get('home', '?')}")
            licences = {row.get("component"): row for row in status.get("licences", [])}
            if licences:
                split = col.split(factor=0.45)
                split.label(text="Component")
                split.label(text="Licence (unlocked: commercial use allowed)")
            for a in status.get("assets", []):
                icon = "CHECKMARK" if a.get("present") else ("ERROR" if a.get("required") else "DOT")
                split = col.split(factor=0.45)
                split.label(text=f"{a.get('name')}: {'installed' if a.get('present') else 'missing'}"
                            + ("" if a.get("required") else " (optional)"), icon=icon)
                _licence_label(split, licences.get(a.get("name")))
            detectors = [row for name, row in licences.items() if name in DETECTORS]
            for row in detectors:
                split = col.split(factor=0.45)
                split.label(text=f"{row['component']} landmark detector: installed", icon="CHECKMARK")
                _licence_label(split, row)
        else:
            box.label(text="Status unknown: press Refresh (starts the worker)", icon="QUESTION")
        box.operator("deca.refresh_status", icon="FILE_REFRESH")
        col = box.column()
        col.prop(self, "flame_file")
        col.prop(self, "deca_file")
        col.prop(self, "data_dir")
        row = box.row()
        row.operator("deca.install_assets", icon="IMPORT")
        box.prop(self, "asset_home")

        box = layout.box()
        box.label(text="Inference worker", icon="SYSTEM")
        box.prop(self, "python_mode", expand=True)
        if self.python_mode == "EXTERNAL":
            box.prop(self, "external_python")
        else:
            row = box.row()
            row.operator("deca.install_dependencies", icon="CONSOLE")
            op = row.operator("deca.install_dependencies", text="Install from Folder of Wheels", icon="FILE_FOLDER")
            op.from_wheels = True
            box.prop(self, "wheels_dir")
        if self.worker_info:
            box.label(text=self.worker_info)
        row = box.row()
        row.operator("deca.worker_hello", text="Check Worker", icon="INFO")
        row.operator("deca.stop_worker", text="Stop Worker", icon="CANCEL")
        box.prop(self, "warm_up")
        box.prop(self, "device")
        box.prop(self, "landmarks")
        box.prop(self, "mode")

        box = layout.box()
        box.label(text="Import", icon="OUTLINER_OB_ARMATURE")
        box.prop(self, "output_dir")
        box.prop(self, "all_expressions")
        box.prop(self, "exact_debounce")


DETECTORS = ("mediapipe", "dlib", "fan")  # the detector rows of the worker's licence table


def _licence_label(layout, row: dict | None) -> None:
    """The licence column of one component (core.assets.licences, as the worker reported it): commercial use
    allowed or not, and the licence's name; empty for a missing file."""
    if row is None:
        layout.label(text="")
        return
    layout.label(text=row.get("licence", "?"), icon="UNLOCKED" if row.get("commercial") else "LOCKED")


class _Defaults:
    """Preference values when the add-on runs without being installed (tests from a checkout)."""

    python_mode = "BLENDER"
    warm_up = "FIRST_USE"
    external_python = ""
    device = "auto"
    landmarks = "auto"
    mode = "deca"
    output_dir = ""
    asset_home = ""
    all_expressions = False
    exact_debounce = 0.4
    flame_file = deca_file = data_dir = status_json = worker_info = wheels_dir = ""


def get_prefs(context=None):
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_ID)
    return addon.preferences if addon is not None else _Defaults()


def private_dir(sub: str) -> Path:
    """A folder in the extension's private user directory (created)."""
    try:
        return Path(bpy.utils.extension_path_user(ADDON_ID, path=sub, create=True))
    except (ValueError, AttributeError, RuntimeError):  # not installed as an extension (e.g. a source checkout)
        path = Path(bpy.utils.user_resource("DATAFILES", path="deca_blender")) / sub
        path.mkdir(parents=True, exist_ok=True)
        return path


def output_dir(prefs) -> Path:
    if prefs.output_dir:
        path = Path(bpy.path.abspath(prefs.output_dir))
        path.mkdir(parents=True, exist_ok=True)
        return path
    return private_dir("results")


def worker_config(prefs):
    from .worker_client import worker_config as make

    deps = str(private_dir("deps"))
    home = bpy.path.abspath(prefs.asset_home) if prefs.asset_home else os.environ.get("DECA_BLENDER_HOME", "")
    log = str(private_dir("logs") / "worker.log")
    return make(python_mode=prefs.python_mode, external_python=bpy.path.abspath(prefs.external_python),
                deps_dir=deps, asset_home=home, log_path=log, venv_dir=str(private_dir("venv")))


def worker_client(context=None):
    from .worker_client import get_client

    return get_client(worker_config(get_prefs(context)))


classes = (DecaPreferences,)


register, unregister = bpy.utils.register_classes_factory(classes)
