"""Exact wrinkles: after the sliders rest, the worker re-decodes the displacement with DECA's decoder.

The linear wrinkle model in the node group follows the sliders instantly; with a head's Exact Wrinkles
on, a timer watches its inputs (the exp_000..exp_049 key values and the jaw), and once they have been
still for the debounce delay (preferences) it asks the worker for `decode_displacement`. The answer, a
256x256 float32 .npy, replaces the pixels of the head's exact-displacement image, which the node group
shows instead of the linear mix while Exact is on. One request per head is in flight at a time; newer
slider changes simply trigger the next request.
"""
from __future__ import annotations

import time

import bpy
import numpy as np

TICK = 0.1
_state: dict[str, dict] = {}
_running = False


def head_inputs(mesh_obj, arm_obj) -> tuple[np.ndarray, np.ndarray]:
    """(exp (50,), jaw axis-angle (3,)) as the head shows them now."""
    from .scene.armature import quaternion_to_axis_angle
    from .scene.mesh import exp_key_values

    exp = exp_key_values(mesh_obj, 50)
    jaw = np.zeros(3)
    if arm_obj is not None and "jaw" in arm_obj.pose.bones:
        pb = arm_obj.pose.bones["jaw"]
        q = pb.matrix_basis.to_quaternion()
        jaw = quaternion_to_axis_angle(q)
    return exp, jaw


def apply_displacement(mesh_obj, npy_path: str) -> None:
    from .scene.material import set_float_image

    img = mesh_obj.deca.exact_image
    if img is None:
        raise ValueError(f"{mesh_obj.name}: has no exact-displacement image; re-import the head")
    set_float_image(img, np.load(npy_path, allow_pickle=False))


def _tick():
    global _running
    from .preferences import get_prefs, private_dir, worker_client
    from .scene.objects import head_objects

    heads = [o for o in bpy.data.objects if getattr(o, "deca", None) is not None
             and o.deca.role == "HEAD" and o.deca.exact_wrinkles]
    if not heads:
        _running = False
        _state.clear()
        return None
    now = time.monotonic()
    debounce = float(get_prefs().exact_debounce)
    for obj in heads:
        st = _state.setdefault(obj.name, {})
        job = st.get("job")
        if job is not None and job.done:
            st["job"] = None
            if job.error is not None:
                obj["_deca_exact_error"] = job.error
                st["failed_x"] = st.get("requested")
                print(f"DECA exact wrinkles ({obj.name}): {job.error}")
            else:
                try:
                    apply_displacement(obj, job.data["path"])
                    st["applied"] = st.get("requested")
                    if "_deca_exact_error" in obj:
                        del obj["_deca_exact_error"]
                except (ValueError, OSError) as exc:
                    obj["_deca_exact_error"] = str(exc)
            job = None
        mesh, arm = head_objects(obj)
        exp, jaw = head_inputs(obj, arm)
        x = np.concatenate([exp, jaw])
        last = st.get("seen")
        if last is None or not np.allclose(last, x, atol=1e-6):
            st["seen"], st["changed_at"] = x, now
            continue
        applied = st.get("applied")
        if job is None and (applied is None or not np.allclose(applied, x, atol=1e-6)) and now - st["changed_at"] >= debounce:
            failed = st.get("failed_x")
            if failed is not None and np.allclose(failed, x, atol=1e-6):
                continue  # do not retry the same failing request forever
            out = private_dir("exact") / f"{bpy.path.clean_name(obj.name)}.npy"
            prefs = get_prefs()
            try:
                job = worker_client().request("decode_displacement", result=obj.deca.result_path, exp=exp.tolist(),
                                              jaw=jaw.tolist(), out=str(out), device=prefs.device,
                                              landmarks=prefs.landmarks)
            except RuntimeError as exc:
                obj["_deca_exact_error"] = str(exc)
                st["failed_x"] = x
                continue
            st["job"] = job
            st["requested"] = x
    return TICK


def start() -> None:
    global _running
    if not _running:
        _running = True
        bpy.app.timers.register(_tick, first_interval=TICK, persistent=True)


@bpy.app.handlers.persistent
def _on_load(_dummy=None) -> None:
    _state.clear()
    if any(getattr(o, "deca", None) is not None and o.deca.exact_wrinkles for o in bpy.data.objects):
        start()


def register() -> None:
    bpy.app.handlers.load_post.append(_on_load)


def unregister() -> None:
    global _running
    if _on_load in bpy.app.handlers.load_post:
        bpy.app.handlers.load_post.remove(_on_load)
    if bpy.app.timers.is_registered(_tick):
        bpy.app.timers.unregister(_tick)
    _running = False
    _state.clear()
