"""deca.import_result (a result folder -> a head) and deca.import_photo (a photo -> the worker -> heads)."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import bpy
from bpy.props import BoolProperty, StringProperty

from .. import blas
from .common import USER_ERRORS, WorkerTaskOperator, report_exception

IMAGE_FILTER = "*.jpg;*.jpeg;*.png;*.bmp;*.tif;*.tiff;*.webp"


def result_folders(path: str | Path) -> list[Path]:
    """The result folders a path names: a result.npz, a result folder, or a folder of result folders."""
    from core.results.result import RESULT_FILE, ResultError

    path = Path(bpy.path.abspath(str(path)))
    if path.is_file():
        return [path.parent]
    if (path / RESULT_FILE).is_file():
        return [path]
    if path.is_dir():
        subs = sorted(p for p in path.iterdir() if (p / RESULT_FILE).is_file())
        if subs:
            return subs
    raise ResultError(f"no result file at {path / RESULT_FILE}; a result folder holds {RESULT_FILE}")


#: the last Import Photo's seconds: "worker" (the reconstruction, stage by stage), "scene" (building the heads,
#: stage by stage), "total" (from the request to the finished heads). Read by benchmarks/bench_blender.py.
last_photo_import: dict = {}


def _timed_into(timings: dict, stage: str):
    from ..scene.head import _timed

    return _timed(timings, stage)


def import_folders(context, folders, all_expressions: bool, use_head_pose: bool, arkit_keys: bool = True,
                   identity_sliders: bool = True, timings: dict | None = None) -> list:
    from ..scene.head import ImportOptions, build_head

    heads = []
    for folder in folders:
        opts = ImportOptions(all_expressions=all_expressions, use_head_pose=use_head_pose, arkit_keys=arkit_keys,
                             identity_sliders=identity_sliders,
                             location=tuple(context.scene.cursor.location))
        heads.append(build_head(context, folder, opts, timings))
    return heads


def frame_heads(context, heads) -> None:
    """Select the new heads and frame them in every 3D view (View Selected); nothing in background mode."""
    if bpy.app.background or not heads or context.window_manager is None:
        return
    for obj, arm in heads:
        obj.select_set(True)
        arm.select_set(True)
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type != "VIEW_3D":
                continue
            region = next((r for r in area.regions if r.type == "WINDOW"), None)
            if region is None:
                continue
            with context.temp_override(window=window, area=area, region=region):
                bpy.ops.view3d.view_selected()


class DECA_OT_view_photo_camera(bpy.types.Operator):
    """Look through the head's photo camera (the render size becomes the photo's) to check the fit against the photo"""

    bl_idname = "deca.view_photo_camera"
    bl_label = "View Through Photo Camera"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        from ..properties import head_objects

        return photo_camera(head_objects(context.active_object)[1]) is not None

    def execute(self, context):
        from ..properties import head_objects

        cam = photo_camera(head_objects(context.active_object)[1])
        scene = context.scene
        scene.camera = cam
        w, h = cam.get("deca_photo_pixels", (0, 0))
        if w > 0 and h > 0:
            scene.render.resolution_x, scene.render.resolution_y = int(w), int(h)
            scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
        if not bpy.app.background:
            for area in context.screen.areas if context.screen else ():
                if area.type == "VIEW_3D":
                    area.spaces.active.region_3d.view_perspective = "CAMERA"
        return {"FINISHED"}


def photo_camera(arm):
    """The photo camera of a head's armature (a child camera made at import), or None."""
    if arm is None:
        return None
    return next((c for c in arm.children if c.type == "CAMERA" and c.name.endswith("_photo_camera")), None)


class _ImportOptionsMixin:
    """Options, poll and file browser shared by Import Result and Import Photo."""

    all_expressions: BoolProperty(name="All Expression Keys", default=False,
                                  description="Create every expression component the result holds (100 when present)")
    use_head_pose: BoolProperty(name="Head Pose from Photo", default=False,
                                description="Rotate the root bone to the head's pose in the photo")
    arkit_keys: BoolProperty(name="ARKit Shape Keys", default=True,
                             description="Add the 52 ARKit-named shape keys (eyeBlinkLeft, jawOpen, ...) solved "
                                         "from FLAME, for ARKit / Live Link Face data and engines")
    identity_sliders: BoolProperty(name="Identity Sliders", default=True,
                                   description="Add FLAME identity sliders shape_000.. (when the result carries "
                                               "their basis), with a Reset Identity button")

    @classmethod
    def poll(cls, context):
        return _poll_object_mode(context)

    def invoke(self, context, event):
        from ..preferences import get_prefs

        self.all_expressions = get_prefs(context).all_expressions
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}


def _poll_object_mode(context) -> bool:
    return context.mode == "OBJECT" and context.scene is not None


class DECA_OT_import_result(_ImportOptionsMixin, bpy.types.Operator):
    """Import a DECA result folder as a rigged head with expression sliders and wrinkles"""

    bl_idname = "deca.import_result"
    bl_label = "Import Result"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="File Path", subtype="FILE_PATH", description="result.npz or a result folder")
    directory: StringProperty(name="Directory", subtype="DIR_PATH", options={"HIDDEN", "SKIP_SAVE"})
    filter_glob: StringProperty(default="result.npz", options={"HIDDEN"})

    def execute(self, context):
        path = self.filepath or self.directory
        if not path:
            self.report({"ERROR"}, "give filepath (a result.npz or a result folder) or directory")
            return {"CANCELLED"}
        t0 = time.perf_counter()
        try:
            heads = import_folders(context, result_folders(path), self.all_expressions, self.use_head_pose,
                                   self.arkit_keys,
                                   self.identity_sliders)
        except USER_ERRORS as exc:
            report_exception(self, exc)
            return {"CANCELLED"}
        frame_heads(context, heads)
        names = ", ".join(h[0].name for h in heads)
        self.report({"INFO"}, f"imported {names} in {time.perf_counter() - t0:.2f} s")
        return {"FINISHED"}


class DECA_OT_import_photo(_ImportOptionsMixin, WorkerTaskOperator, bpy.types.Operator):
    """Reconstruct the face(s) in a photo with DECA (in the worker) and import them as heads"""

    bl_idname = "deca.import_photo"
    bl_label = "Import Photo"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Photo", subtype="FILE_PATH")
    filter_glob: StringProperty(default=IMAGE_FILTER, options={"HIDDEN"})
    all_faces: BoolProperty(name="All Faces", default=False, description="One head per face found (else the largest)")
    output_dir: StringProperty(name="Output Folder", subtype="DIR_PATH", default="",
                               description="Where the result folders go (empty: the preferences' output folder)")
    early_parts: BoolProperty(name="Build While Reconstructing", default=True, options={"HIDDEN", "SKIP_SAVE"},
                              description="Build each head from the parts the worker sends ahead while it still "
                                          "works (off: wait for the result folder, then build; the same head)")

    def invoke(self, context, event):
        from .. import warmup
        from ..preferences import get_prefs

        if get_prefs(context).warm_up != "OFF":
            warmup.start(context)  # load the models while the file browser is open
        return super().invoke(context, event)

    def task(self, context):
        from ..preferences import get_prefs, output_dir, worker_client

        photo = Path(bpy.path.abspath(self.filepath))
        if not photo.is_file():
            raise FileNotFoundError(f"photo not found: {photo}")
        prefs = get_prefs(context)
        out = Path(bpy.path.abspath(self.output_dir)) if self.output_dir else output_dir(prefs)
        client = worker_client(context)
        t0 = time.perf_counter()
        job = client.request("reconstruct", photo=str(photo), out_dir=str(out), all_faces=self.all_faces,
                             device=prefs.device, landmarks=prefs.landmarks, mode=prefs.mode, early=self.early_parts)
        # Each face's rig arrives ahead of its folder: its head is begun while the worker goes on (detail,
        # textures, wrinkle model, writing) and finished from the folder (scene/head.py, "in two parts").
        begun: dict = {}  # planned folder name -> HeadBuild
        scene: dict = {}
        t_early, seen = 0.0, 0
        try:
            while True:
                step = yield job.next_part(seen)
                if "early" not in (step or {}):
                    data = step or {}
                    break
                seen += 1
                t = time.perf_counter()
                part = step["early"]
                with blas.single_threaded():  # the worker's torch threads are running: no spinning BLAS threads
                    if part.get("part", "rig") == "rig":
                        if begun:  # world matrices of the heads begun so far, for this head's placement (as build_head)
                            context.view_layer.update()
                        build = self._begin(context, part, out, scene)
                        if build is not None:
                            begun[build.folder.name] = build
                    else:
                        self._add_wrinkles(begun, part, scene)
                t_early += time.perf_counter() - t
            t_worker = time.perf_counter() - t0
            folders = [Path(p) for p in data.get("results", [])]
            if not folders:
                raise ValueError(f"no face found in {photo}")
            t = time.perf_counter()
            with blas.single_threaded():
                heads = self._finish_heads(context, folders, begun, scene)
        finally:
            from ..scene.head import discard_head

            for build in begun.values():  # begun but never finished (an error, a cancel): removed
                discard_head(build)
        t_scene = time.perf_counter() - t
        frame_heads(context, heads)
        last_photo_import.clear()
        last_photo_import.update(total=time.perf_counter() - t0, request=t_worker, reconstruct=data.get("seconds"),
                                 worker=data.get("timings") or {}, scene_total=t_early + t_scene, scene=scene,
                                 scene_while_worker=t_early, scene_after_result=t_scene)
        self.report({"INFO"}, f"imported {', '.join(h[0].name for h in heads)} from {photo.name} in "
                              f"{time.perf_counter() - t0:.1f} s (reconstruction {t_worker:.1f} s, scene "
                              f"{t_early + t_scene:.1f} s of which {t_scene:.1f} s after it)")

    def _options(self, context):
        from ..scene.head import ImportOptions

        return ImportOptions(all_expressions=self.all_expressions, use_head_pose=self.use_head_pose,
                             arkit_keys=self.arkit_keys, identity_sliders=self.identity_sliders,
                             location=tuple(context.scene.cursor.location))

    def _begin(self, context, early: dict, out: Path, scene: dict):
        """A head's first part from an early part of the answer; None (the head is then built from its
        folder alone) when that cannot be done: the file is gone or unreadable, or the build fails."""
        from ..scene.head import begin_head, load_early_fields

        try:
            with _timed_into(scene, "read early rig"):
                fields = load_early_fields(early["path"])
            return begin_head(context, fields, out / str(early["name"]), self._options(context), scene)
        except Exception as exc:  # never fatal: the folder alone builds the same head
            print(f"DECA: the head is built from its folder only ({type(exc).__name__}: {exc})")
            return None
        finally:
            try:
                Path(str(early.get("path", ""))).unlink(missing_ok=True)  # read once; the worker's scratch file
            except OSError:
                pass

    def _add_wrinkles(self, begun: dict, part: dict, scene: dict) -> None:
        """A begun head's wrinkle node group and drivers from its second early part. When that cannot be
        done the head is removed (its folder alone builds it at the end)."""
        from ..scene.head import add_early_wrinkles, discard_head, load_early_wrinkles

        path = Path(str(part.get("path", "")))
        build = begun.get(str(part.get("name")))
        try:
            if build is not None:
                with _timed_into(scene, "read early wrinkles"):
                    fields = load_early_wrinkles(path)
                add_early_wrinkles(build, fields, scene)
        except Exception as exc:  # never fatal: the head is removed, its folder alone builds it at the end
            discard_head(build)
            begun.pop(build.folder.name, None)
            print(f"DECA: the head is built from its folder only ({type(exc).__name__}: {exc})")
        finally:
            try:
                path.unlink(missing_ok=True)  # read once; the worker's scratch file
            except OSError:
                pass

    def _finish_heads(self, context, folders: list[Path], begun: dict, scene: dict) -> list:
        from ..scene.head import build_head, finish_head

        heads = []
        for folder in folders:
            build = begun.pop(folder.name, None)
            heads.append(finish_head(context, build, folder, scene) if build is not None
                         else build_head(context, folder, self._options(context), scene))
        return heads

    def discard(self, data) -> None:
        from core.results.result import RESULT_FILE

        for p in (data or {}).get("results", []):
            folder = Path(p)
            if (folder / RESULT_FILE).is_file():  # a result folder this request just wrote
                shutil.rmtree(folder, ignore_errors=True)


classes = (DECA_OT_import_result, DECA_OT_import_photo, DECA_OT_view_photo_camera)


register, unregister = bpy.utils.register_classes_factory(classes)
