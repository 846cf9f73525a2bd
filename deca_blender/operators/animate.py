"""deca.apply_expression: the expression and jaw of another photo (or result) onto a head, optionally keyed.

A single photo sets (and with Keyframe on, keys) the head's `exp_*` shape keys and jaw bone at the
current frame. A folder of frames (images, or result folders) becomes keyframes, one frame per image in
name order from Start Frame, and the scene's frame range grows to hold the keys. Photos go through the
worker; result folders are read directly. A video file goes through the worker's expression-only fast
path (every Nth frame, no result folder per frame); each kept video frame k is keyed at Start Frame + k,
so the video's timing is kept whatever N is.
"""
from __future__ import annotations

from pathlib import Path

import bpy
import numpy as np
from bpy.props import BoolProperty, IntProperty, StringProperty

from .common import WorkerTaskOperator, active_head
from .import_ops import IMAGE_FILTER

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}  # as core.frontend.video (no cv2 here)


def read_codes(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(exp (E,), jaw axis-angle (3,)) of a result folder. Raises ResultError."""
    from core.results.result import ReconstructionResult

    res = ReconstructionResult.load(folder)
    return np.asarray(res.exp, np.float64).ravel(), np.asarray(res.pose, np.float64).ravel()[3:6]


def apply_codes(mesh_obj, arm_obj, exp: np.ndarray, jaw: np.ndarray | None, frame: int | None = None) -> None:
    """Set the head's expression keys (extra keys -> 0) and jaw; keyframe them at `frame` when given."""
    from ..scene.armature import axis_angle_to_quaternion
    from ..scene.mesh import exp_key_name

    keys = mesh_obj.data.shape_keys.key_blocks
    for i in range(mesh_obj.deca.n_expression):
        kb = keys.get(exp_key_name(i))
        if kb is None:
            continue
        value = float(exp[i]) if i < len(exp) else 0.0
        if abs(value) > kb.slider_max or -abs(value) < kb.slider_min:
            limit = min(10.0, float(np.ceil(abs(value))) + 1.0)
            kb.slider_min, kb.slider_max = -limit, limit
        kb.value = value
        if frame is not None:
            kb.keyframe_insert("value", frame=frame)
    if jaw is not None and arm_obj is not None and "jaw" in arm_obj.pose.bones:
        pb = arm_obj.pose.bones["jaw"]
        pb.rotation_mode = "QUATERNION"
        pb.rotation_quaternion = axis_angle_to_quaternion(jaw)
        if frame is not None:
            pb.keyframe_insert("rotation_quaternion", frame=frame)


class DECA_OT_apply_expression(WorkerTaskOperator, bpy.types.Operator):
    """Set the selected head's expression and jaw from another photo (or key a folder of frames)"""

    bl_idname = "deca.apply_expression"
    bl_label = "Apply Expression from Photo"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(name="Photo", subtype="FILE_PATH",
                             description="A photo, or a result folder / result.npz")
    directory: StringProperty(name="Frames Folder", subtype="DIR_PATH", default="",
                              description="A folder of frames (photos or result folders): one keyframe per frame")
    filter_glob: StringProperty(default=IMAGE_FILTER + ";result.npz;" + ";".join(f"*{s}" for s in sorted(VIDEO_SUFFIXES)),
                                options={"HIDDEN"})
    video_step: IntProperty(name="Every Nth Video Frame", default=1, min=1,
                            description="For a video: decode every Nth frame (each keyed at its own frame)")
    keyframe: BoolProperty(name="Keyframe", default=False, description="Insert keyframes (always on for a folder)")
    frame_start: IntProperty(name="Start Frame", default=-1, description="First frame (-1: the current frame)")
    frame_step: IntProperty(name="Frame Step", default=1, min=1)
    use_jaw: BoolProperty(name="Jaw", default=True, description="Also set the jaw bone")
    use_folder: BoolProperty(name="Folder of Frames", default=False, options={"SKIP_SAVE"},
                             description="Use every frame in the directory")

    @classmethod
    def poll(cls, context):
        mesh, _ = active_head(context)
        return mesh is not None and context.mode in ("OBJECT", "POSE")

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def _sources(self) -> list[Path]:
        from core.results.result import RESULT_FILE

        if self.use_folder or (self.directory and not self.filepath):
            folder = Path(bpy.path.abspath(self.directory or str(Path(self.filepath).parent)))
            if not folder.is_dir():
                raise FileNotFoundError(f"frames folder not found: {folder}")
            items = sorted(p for p in folder.iterdir()
                           if (p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) or (p / RESULT_FILE).is_file())
            if not items:
                raise FileNotFoundError(f"{folder}: holds no images and no result folders")
            return items
        if not self.filepath:
            raise ValueError("give filepath (a photo or a result folder) or directory (a folder of frames)")
        return [Path(bpy.path.abspath(self.filepath))]

    def task(self, context):
        from core.results.result import RESULT_FILE

        from ..preferences import get_prefs, output_dir, worker_client

        mesh, arm = active_head(context)
        if self.filepath and Path(self.filepath).suffix.lower() in VIDEO_SUFFIXES and not self.use_folder:
            yield from self._video(context, mesh, arm)
            return
        sources = self._sources()
        animate = self.keyframe or len(sources) > 1
        start = context.scene.frame_current if self.frame_start < 0 else self.frame_start
        prefs = get_prefs(context)
        for i, src in enumerate(sources):
            if src.is_dir() or src.name == RESULT_FILE:
                folder = src if src.is_dir() else src.parent
            else:
                if not src.is_file():
                    raise FileNotFoundError(f"photo not found: {src}")
                out = output_dir(prefs) / "expressions"
                data = yield worker_client(context).request(
                    "reconstruct", photo=str(src), out_dir=str(out), all_faces=False,
                    device=prefs.device, landmarks=prefs.landmarks, mode=prefs.mode)
                results = data.get("results", [])
                if not results:
                    raise ValueError(f"no face found in {src}")
                folder = Path(results[0])
            exp, jaw = read_codes(folder)
            frame = start + i * self.frame_step if animate else None
            apply_codes(mesh, arm, exp, jaw if self.use_jaw else None, frame)
        if animate:
            _extend_frame_range(context.scene, start, start + (len(sources) - 1) * self.frame_step)
        self.report({"INFO"}, f"applied {len(sources)} expression(s) to {mesh.name}")

    def _video(self, context, mesh, arm):
        """Key every `video_step`-th frame of a video through the worker's fast path."""
        from ..preferences import get_prefs, worker_client

        video = Path(bpy.path.abspath(self.filepath))
        if not video.is_file():
            raise FileNotFoundError(f"video not found: {video}")
        prefs = get_prefs(context)
        start = context.scene.frame_current if self.frame_start < 0 else self.frame_start
        data = yield worker_client(context).request("video_expressions", video=str(video), every=self.video_step,
                                                    device=prefs.device, landmarks=prefs.landmarks)
        numbers = data.get("frame_numbers", [])
        if not numbers:
            raise ValueError(f"{video.name}: no face found in any of its {data.get('n_read', 0)} decoded frames")
        for k, exp, jaw in zip(numbers, data["exp"], data["jaw"]):
            apply_codes(mesh, arm, np.asarray(exp, np.float64), np.asarray(jaw, np.float64) if self.use_jaw else None,
                        start + int(k))
        _extend_frame_range(context.scene, start, start + int(numbers[-1]))
        failed = data.get("failed", [])
        self.report({"WARNING"} if failed else {"INFO"},
                    f"keyed {len(numbers)} video frame(s) of {video.name} on {mesh.name}"
                    + (f"; no face in frame(s) {', '.join(str(f) for f in failed[:10])}" if failed else ""))


def _extend_frame_range(scene, first: int, last: int) -> None:
    """The scene's frame range grows to hold the keys (never shrinks: the user's range may be longer)."""
    scene.frame_start, scene.frame_end = min(scene.frame_start, first), max(scene.frame_end, last)
    scene.frame_set(first)


classes = (DECA_OT_apply_expression,)


register, unregister = bpy.utils.register_classes_factory(classes)
