"""Runs inside a bpy subprocess (never in pytest's process): install the extension zip, import heads,
exercise drivers, exports and a Cycles render, and write what it measured for pytest to check.

    python check_addon.py ZIP RESULT_A RESULT_B FRAMES_DIR OUT_DIR ARTIFACTS_DIR PHOTO FLAME_PKL DATA_DIR RESULT_100 \
        DECA_CKPT RESULT_5

DECA_BLENDER_HOME should name a scratch asset folder: the worker section asks the worker about it.

BLENDER_USER_RESOURCES must point at an empty folder, so the extension installs into a scratch
Blender configuration. Every section runs even if an earlier one failed; failures are recorded as
text under "errors" in OUT_DIR/report.json, arrays go to OUT_DIR/arrays.npz.
"""
from __future__ import annotations

import json
import math
import sys
import time
import traceback
from pathlib import Path

import bpy
import numpy as np
from mathutils import Quaternion

ZIP, RESULT_A, RESULT_B, FRAMES, OUT, ARTIFACTS, PHOTO, FLAME_PKL, DATA_DIR, RESULT_100, DECA_CKPT, RESULT_5 = (
    Path(a) for a in sys.argv[1:13])
OUT.mkdir(parents=True, exist_ok=True)
ARTIFACTS.mkdir(parents=True, exist_ok=True)
report: dict = {"errors": {}, "timings": {}}
arrays: dict[str, np.ndarray] = {}


def section(fn):
    t = time.perf_counter()
    try:
        fn()
    except Exception:
        report["errors"][fn.__name__] = traceback.format_exc()
    report["timings"][fn.__name__] = time.perf_counter() - t
    return fn


def update():
    bpy.context.view_layer.update()


def evaluated_vertices(obj) -> np.ndarray:
    dg = bpy.context.evaluated_depsgraph_get()
    ev = obj.evaluated_get(dg)
    me = ev.to_mesh()
    co = np.empty(len(me.vertices) * 3, np.float32)
    me.vertices.foreach_get("co", co)
    ev.to_mesh_clear()
    return co.reshape(-1, 3).astype(np.float64)


def factors(obj) -> np.ndarray:
    ng = obj.deca.wrinkle_group
    K = int(obj["_deca_wrinkle_shape"][0])
    return np.array([ng.nodes[f"factor_{k:02d}"].outputs[0].default_value for k in range(K)])


def key_values(obj, prefix: str) -> dict[str, float]:
    return {kb.name: kb.value for kb in obj.data.shape_keys.key_blocks if kb.name.startswith(prefix)}


def influences(m) -> dict:
    """Bone influences per vertex of a re-imported mesh: the most, and how far their sums are from 1."""
    counts = [sum(1 for g in v.groups if g.weight > 0) for v in m.data.vertices]
    sums = [sum(g.weight for g in v.groups) for v in m.data.vertices]
    return {"max_influences": max(counts), "n_vertices_over_4": sum(c > 4 for c in counts),
            "max_sum_error": float(max(abs(s - 1.0) for s in sums))}


def objects_snapshot() -> dict:
    return {c: len(getattr(bpy.data, c)) for c in ("objects", "meshes", "armatures", "materials", "images",
                                                  "node_groups", "collections")}


state: dict = {}


@section
def install():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    t = time.perf_counter()
    result = bpy.ops.extensions.package_install_files(filepath=str(ZIP), repo="user_default", enable_on_install=True)
    report["timings"]["install_only"] = time.perf_counter() - t
    report["install_result"] = sorted(result)
    report["addons"] = [k for k in bpy.context.preferences.addons.keys() if "deca" in k]
    report["operators"] = sorted(n for n in dir(bpy.ops.deca) if not n.startswith("_"))
    report["undo_options"] = {n: sorted(getattr(bpy.types, cls).bl_options) for n, cls in (
        ("import_result", "DECA_OT_import_result"), ("import_photo", "DECA_OT_import_photo"),
        ("apply_expression", "DECA_OT_apply_expression"))}
    report["panel_registered"] = hasattr(bpy.types, "VIEW3D_PT_deca")


@section
def errors_create_nothing():
    before = objects_snapshot()
    messages = {}
    bad = OUT / "corrupt_result"
    bad.mkdir(exist_ok=True)
    (bad / "result.npz").write_bytes(b"PK\x03\x04 this is not a zip file")
    for label, path in (("missing", OUT / "no_such_folder"), ("corrupt", bad)):
        try:
            bpy.ops.deca.import_result(filepath=str(path))
            messages[label] = None
        except RuntimeError as exc:
            messages[label] = str(exc)
    report["error_messages"] = messages
    report["error_datablocks_before"] = before
    report["error_datablocks_after"] = objects_snapshot()


@section
def import_head():
    t = time.perf_counter()
    result = bpy.ops.deca.import_result(filepath=str(RESULT_A))
    report["timings"]["import_result_op"] = time.perf_counter() - t
    report["import_result"] = sorted(result)
    obj = bpy.context.active_object
    arm = obj.parent
    state["obj"], state["arm"] = obj, arm
    report["torch_in_blender"] = "torch" in sys.modules
    ext_dir = Path(sys.modules[report["addons"][0]].__file__).resolve().parent
    report["private"] = {
        "core_modules": sorted(k for k in sys.modules if k == "core" or k.startswith("core.")),
        "extension_on_sys_path": [p for p in sys.path if p and (ext_dir == Path(p).resolve()
                                                                or ext_dir in Path(p).resolve().parents)],
        "vendored_core_loaded": any(k.endswith("deca_blender._vendor.core.results.result") for k in sys.modules),
    }
    report["names"] = {"mesh": obj.name, "rig": arm.name, "role": obj.deca.role, "rig_role": arm.deca.role}
    report["object_rotation"] = list(arm.rotation_euler)
    report["mesh_parent_inverse_identity"] = bool(np.allclose(np.array(obj.matrix_parent_inverse), np.eye(4)))
    report["bones"] = [b.name for b in arm.data.bones]
    report["bone_parents"] = [b.parent.name if b.parent else None for b in arm.data.bones]
    arrays["bone_heads"] = np.array([list(arm.data.bones[n].head_local) for n in ("root", "neck", "jaw", "eye_L", "eye_R")])
    arrays["bone_rest_rotations"] = np.array([np.array(b.matrix_local.to_3x3()) for b in arm.data.bones])
    report["vertex_groups"] = [vg.name for vg in obj.vertex_groups]
    index = {vg.index: vg.name for vg in obj.vertex_groups}
    order = {n: i for i, n in enumerate(("root", "neck", "jaw", "eye_L", "eye_R"))}
    W = np.zeros((len(obj.data.vertices), 5))
    present = np.zeros_like(W, bool)
    for v in obj.data.vertices:
        for g in v.groups:
            W[v.index, order[index[g.group]]] = g.weight
            present[v.index, order[index[g.group]]] = True
    arrays["weights"] = W
    arrays["weights_present"] = present
    keys = obj.data.shape_keys.key_blocks
    report["shape_keys"] = [kb.name for kb in keys]
    report["shape_key_values"] = {kb.name: kb.value for kb in keys}
    report["shape_key_ranges"] = {kb.name: [kb.slider_min, kb.slider_max] for kb in keys[1:4]}
    arrays["basis"] = np.array([list(p.co) for p in keys["Basis"].points])
    co = np.empty(len(keys[0].points) * 3, np.float32)
    keys["exp_003"].points.foreach_get("co", co)
    arrays["key_exp_003"] = co.reshape(-1, 3).copy()
    keys["pc_010"].points.foreach_get("co", co)
    arrays["key_pc_010"] = co.reshape(-1, 3).copy()
    arkit = [kb for kb in keys if not kb.name.startswith(("Basis", "exp_", "pc_", "shape_"))]
    stack = np.empty((len(arkit), len(co)), np.float32)
    for i, kb in enumerate(arkit):
        kb.points.foreach_get("co", stack[i])
    arrays["arkit_keys"] = stack.reshape(len(arkit), -1, 3)
    report["arkit_ranges"] = {kb.name: [kb.slider_min, kb.slider_max, kb.value] for kb in arkit}
    report["arkit_rms_mm"] = dict(obj["deca_arkit_rms_mm"])
    drivers = list(obj.data.shape_keys.animation_data.drivers) + list(obj.animation_data.drivers) + \
        list(obj.deca.wrinkle_group.animation_data.drivers)
    report["n_drivers"] = len(drivers)
    report["drivers_all_simple"] = all(fc.driver.is_simple_expression for fc in drivers)
    report["drivers_all_valid"] = all(fc.driver.is_valid for fc in drivers)
    report["max_expression_length"] = max(len(fc.driver.expression) for fc in drivers)
    report["jaw_quaternion_import"] = list(arm.pose.bones["jaw"].rotation_quaternion)
    update()
    arrays["eval_import"] = evaluated_vertices(obj)
    report["pc_import"] = key_values(obj, "pc_")
    report["factors_import"] = factors(obj).tolist()
    mat = obj.active_material
    report["material"] = {
        "name": mat.name, "displacement_method": mat.displacement_method,
        "images": sorted(n.image.name for n in mat.node_tree.nodes if n.type == "TEX_IMAGE" and n.image),
        "group_images": sorted(n.image.name for n in obj.deca.wrinkle_group.nodes if n.type == "TEX_IMAGE"),
        "packed": all(n.image.packed_file is not None for n in obj.deca.wrinkle_group.nodes if n.type == "TEX_IMAGE"),
    }
    # The exact-displacement image holds result.displacement (top row first in the file, flipped in Blender).
    img = obj.deca.exact_image
    px = np.empty(img.size[0] * img.size[1] * 4, np.float32)
    img.pixels.foreach_get(px)
    arrays["exact_image_r"] = px.reshape(img.size[1], img.size[0], 4)[::-1, :, 0]


@section
def identity_sliders():
    """Move two identity sliders with the bones at rest, then Reset Identity; restore the pose."""
    obj, arm = state["obj"], state["arm"]
    saved = {pb.name: tuple(pb.rotation_quaternion) for pb in arm.pose.bones}
    for pb in arm.pose.bones:
        pb.rotation_quaternion = (1.0, 0.0, 0.0, 0.0)
    keys = obj.data.shape_keys.key_blocks
    report["identity_keys"] = {kb.name: [kb.slider_min, kb.slider_max, kb.value] for kb in keys
                               if kb.name.startswith("shape_")}
    update()
    arrays["identity_rest"] = evaluated_vertices(obj)
    keys["shape_003"].value, keys["shape_011"].value = 1.5, -0.8
    update()
    arrays["identity_moved"] = evaluated_vertices(obj)
    with bpy.context.temp_override(active_object=obj, object=obj):
        report["identity_reset"] = sorted(bpy.ops.deca.reset_identity())
    update()
    arrays["identity_reset"] = evaluated_vertices(obj)
    report["identity_values_after_reset"] = [kb.value for kb in keys if kb.name.startswith("shape_")]
    for name, q in saved.items():
        arm.pose.bones[name].rotation_quaternion = q
    update()


@section
def slider_moves_wrinkles():
    obj, arm = state["obj"], state["arm"]
    for pb in arm.pose.bones:
        pb.rotation_quaternion = (1, 0, 0, 0)
    update()
    report["pc_rest"] = key_values(obj, "pc_")
    f0, v0 = factors(obj), evaluated_vertices(obj)
    kb = obj.data.shape_keys.key_blocks["exp_003"]
    before = kb.value
    kb.value = before + 0.8
    update()
    f1, v1 = factors(obj), evaluated_vertices(obj)
    report["exp_003_before_after"] = [before, kb.value]
    arrays["factors_exp3_before"], arrays["factors_exp3_after"] = f0, f1
    arrays["eval_exp3_before"], arrays["eval_exp3_after"] = v0, v1
    report["exp_values_at_exp3"] = [obj.data.shape_keys.key_blocks[f"exp_{i:03d}"].value for i in range(50)]
    obj.deca.wrinkle_strength = 0.5
    update()
    arrays["factors_half_strength"] = factors(obj)
    obj.deca.wrinkle_strength = 1.0
    update()


@section
def bones_drive_correctives():
    obj, arm = state["obj"], state["arm"]
    poses = {"neck": (0.12, -0.25, 0.06), "jaw": (0.3, 0.04, -0.05), "eye_L": (0.05, 0.2, 0.0), "eye_R": (-0.04, 0.18, 0.01)}
    quats = {}
    for bone, aa in poses.items():
        aa = np.array(aa)
        q = Quaternion(tuple(aa / np.linalg.norm(aa)), float(np.linalg.norm(aa)))
        arm.pose.bones[bone].rotation_quaternion = q
        quats[bone] = list(q)
    update()
    report["posed_quaternions"] = quats
    report["pc_posed"] = key_values(obj, "pc_")
    report["exp_values_posed"] = [obj.data.shape_keys.key_blocks[f"exp_{i:03d}"].value for i in range(50)]
    arrays["eval_posed"] = evaluated_vertices(obj)
    arrays["factors_posed"] = factors(obj)
    # At the neutral expression the rig's joints are FLAME's joints exactly (see scene/armature.py).
    keys = obj.data.shape_keys.key_blocks
    saved = {kb.name: kb.value for kb in keys if kb.name.startswith("exp_")}
    for name in saved:
        keys[name].value = 0.0
    update()
    arrays["eval_posed_exp0"] = evaluated_vertices(obj)
    for name, value in saved.items():
        keys[name].value = value
    update()
    # A non-normalised quaternion describes the same rotation; the correctives must not change.
    arm.pose.bones["jaw"].rotation_quaternion = Quaternion([2.0 * c for c in quats["jaw"]])
    update()
    report["pc_posed_scaled_quaternion"] = key_values(obj, "pc_")
    arm.pose.bones["jaw"].rotation_quaternion = Quaternion(quats["jaw"])
    update()


@section
def hundred_expressions():
    """A result keeping 100 expression components: 50 keys by default, 100 when asked."""
    found = {}
    for flag in (False, True):
        bpy.ops.deca.import_result(filepath=str(RESULT_100), all_expressions=flag)
        o = bpy.context.active_object
        update()
        found[str(flag)] = {"exp_keys": sum(kb.name.startswith("exp_") for kb in o.data.shape_keys.key_blocks),
                            "n_expression": o.deca.n_expression, "drivers_valid": all(
                                fc.driver.is_valid for fc in o.animation_data.drivers),
                            "factors": factors(o).tolist()}
        kb = o.data.shape_keys.key_blocks.get("exp_077")
        if kb is not None:
            for pb in o.parent.pose.bones:  # at rest, skinning is the identity
                pb.rotation_quaternion = (1, 0, 0, 0)
            update()
            found[str(flag)]["factors"] = factors(o).tolist()
            v0 = evaluated_vertices(o)
            kb.value = 1.5
            update()
            arrays["exp77_moved"] = evaluated_vertices(o) - v0
            found[str(flag)]["factors_after_exp77"] = factors(o).tolist()
        for x in (o, o.parent):
            bpy.data.objects.remove(x)
    report["hundred"] = found
    bpy.context.view_layer.objects.active = state["obj"]


@section
def second_import_is_independent():
    obj = state["obj"]
    f_before = factors(obj)
    bpy.ops.deca.import_result(filepath=str(RESULT_A))
    obj2 = bpy.context.active_object
    state["obj2"] = obj2
    update()
    m1, m2 = obj.active_material, obj2.active_material
    imgs = lambda o: {n.image.name for n in o.deca.wrinkle_group.nodes if n.type == "TEX_IMAGE"}
    report["second_import"] = {
        "names": [obj.name, obj2.name, obj.parent.name, obj2.parent.name],
        "materials": [m1.name, m2.name], "groups": [obj.deca.wrinkle_group.name, obj2.deca.wrinkle_group.name],
        "shared_images": sorted(imgs(obj) & imgs(obj2)), "same_mesh": obj.data == obj2.data,
        "first_factors_unchanged": bool(np.allclose(f_before, factors(obj))),
    }
    # Moving a slider of the second head leaves the first head's factors alone.
    obj2.data.shape_keys.key_blocks["exp_003"].value += 1.0
    update()
    report["second_import"]["independent_drivers"] = bool(np.allclose(f_before, factors(obj)))


@section
def save_and_reload():
    obj = state["obj"]
    f_before = factors(obj)
    v_before = evaluated_vertices(obj)
    path = OUT / "heads.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.open_mainfile(filepath=str(path))
    obj = bpy.data.objects[report["names"]["mesh"]]
    state["obj"], state["arm"] = obj, obj.parent
    update()
    report["reload"] = {
        "factors_equal": bool(np.allclose(f_before, factors(obj), atol=1e-9)),
        "vertices_equal": float(np.abs(v_before - evaluated_vertices(obj)).max()),
        "images_packed": all(n.image.packed_file is not None for n in obj.deca.wrinkle_group.nodes if n.type == "TEX_IMAGE"),
    }


@section
def apply_expression():
    obj = state["obj"]
    bpy.context.view_layer.objects.active = obj
    bpy.context.scene.frame_set(1)
    r = bpy.ops.deca.apply_expression(filepath=str(RESULT_B), keyframe=True, frame_start=5)
    report["apply_single"] = {"result": sorted(r), "exp": [obj.data.shape_keys.key_blocks[f"exp_{i:03d}"].value for i in range(50)],
                              "jaw": list(state["arm"].pose.bones["jaw"].rotation_quaternion)}
    r = bpy.ops.deca.apply_expression(directory=str(FRAMES), frame_start=20, frame_step=2)
    action = obj.data.shape_keys.animation_data.action if obj.data.shape_keys.animation_data else None
    frames = {}
    for f in (20, 22):
        bpy.context.scene.frame_set(f)
        frames[f] = {"exp_000": obj.data.shape_keys.key_blocks["exp_000"].value,
                     "jaw": list(state["arm"].pose.bones["jaw"].rotation_quaternion)}
    report["apply_folder"] = {"result": sorted(r), "frames": frames, "has_action": action is not None,
                              "arm_action": state["arm"].animation_data is not None and state["arm"].animation_data.action is not None}
    # Keys past the scene's end: the frame range follows them.
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, 250
    bpy.ops.deca.apply_expression(directory=str(FRAMES), frame_start=300, frame_step=5)
    report["apply_folder"]["range_after_late_keys"] = [scene.frame_start, scene.frame_end]
    scene.frame_start, scene.frame_end = 1, 250
    bpy.context.scene.frame_set(1)


@section
def exact_wrinkles_image():
    obj = state["obj"]
    import importlib

    exact = importlib.import_module(report["addons"][0] + ".exact")
    target = np.load(OUT.parent / "exact_input.npy")
    npy = OUT / "exact_displacement.npy"
    np.save(npy, target)
    exact.apply_displacement(obj, str(npy))
    img = obj.deca.exact_image
    px = np.empty(img.size[0] * img.size[1] * 4, np.float32)
    img.pixels.foreach_get(px)
    arrays["exact_after"] = px.reshape(img.size[1], img.size[0], 4)[::-1, :, 0]
    exp, jaw = exact.head_inputs(obj, state["arm"])
    report["exact_inputs"] = {"exp": exp.tolist(), "jaw": jaw.tolist()}
    obj.deca.exact_wrinkles = True
    report["exact_socket_on"] = obj.active_material.node_tree.nodes["wrinkles"].inputs["Exact"].default_value
    obj.deca.exact_wrinkles = False
    report["exact_socket_off"] = obj.active_material.node_tree.nodes["wrinkles"].inputs["Exact"].default_value
    nodes = obj.active_material.node_tree.nodes
    bsdf = next(n for n in nodes if n.type == "BSDF_PRINCIPLED")
    linked = lambda: bool(bsdf.inputs["Normal"].is_linked)
    modes = {"DISPLACEMENT": [linked(), nodes["displacement"].inputs["Scale"].default_value]}
    obj.deca.detail_source = "NORMAL_MAP"
    modes["NORMAL_MAP"] = [linked(), nodes["displacement"].inputs["Scale"].default_value]
    obj.deca.detail_source = "DISPLACEMENT"
    report["detail_modes"] = modes


@section
def exact_wrinkles_debounce():
    """The exact-wrinkles timer with a stand-in worker: waits for the sliders to rest, sends the head's
    current inputs, puts the answer into the exact image, and asks again after the next change."""
    import importlib

    addon = report["addons"][0]
    exact = importlib.import_module(addon + ".exact")
    prefs_mod = importlib.import_module(addon + ".preferences")
    Job = importlib.import_module(addon + ".worker_client").Job
    obj = state["obj"]
    sent = []

    class FakeClient:
        def request(self, cmd, **args):
            sent.append((cmd, args))
            disp = np.full((256, 256), 1e-4 * len(sent), np.float32)
            np.save(args["out"], disp)
            job = Job(len(sent), cmd, done=True, data={"path": args["out"]})
            return job

    real = prefs_mod.worker_client
    prefs_mod.worker_client = lambda context=None: FakeClient()
    prefs = bpy.context.preferences.addons[addon].preferences
    prefs.exact_debounce = 0.05
    try:
        obj.deca.exact_wrinkles = True
        log = []
        exact._tick()  # first look: remembers the inputs
        log.append(len(sent))
        time.sleep(0.08)
        exact._tick()  # inputs rested: one request
        log.append(len(sent))
        exact._tick()  # applies the answer, nothing new to ask
        log.append(len(sent))
        img = obj.deca.exact_image
        px = np.empty(img.size[0] * img.size[1] * 4, np.float32)
        img.pixels.foreach_get(px)
        first_value = float(px[0])
        obj.data.shape_keys.key_blocks["exp_010"].value += 0.5
        exact._tick()  # a change: wait
        log.append(len(sent))
        time.sleep(0.08)
        exact._tick()
        log.append(len(sent))
        exp, jaw = exact.head_inputs(obj, state["arm"])
        report["exact_debounce"] = {
            "requests_after_each_tick": log, "cmd": sent[0][0], "first_value": first_value,
            "last_args_match": bool(np.allclose(sent[-1][1]["exp"], exp) and np.allclose(sent[-1][1]["jaw"], jaw)),
            "result_path": sent[-1][1]["result"] == obj.deca.result_path,
        }
    finally:
        prefs_mod.worker_client = real
        obj.deca.exact_wrinkles = False
        obj.data.shape_keys.key_blocks["exp_010"].value -= 0.5
        update()


@section
def modal_operator_logic():
    """The UI path of long operators (a timer polls the worker job, Esc cancels), driven by hand:
    background Blender has no event loop, so the modal handler is called with stand-in events."""
    import importlib

    addon = report["addons"][0]
    common = importlib.import_module(addon + ".operators.common")
    prefs_mod = importlib.import_module(addon + ".preferences")
    Job = importlib.import_module(addon + ".worker_client").Job
    cancelled = []

    class FakeClient:
        def cancel(self, job):
            cancelled.append(job.id)
            job.error, job.error_type, job.done = "cancelled", "Cancelled", True

    class WM:
        def __init__(self):
            self.calls = []

        def progress_begin(self, a, b): self.calls.append(("begin", a, b))
        def progress_update(self, v): self.calls.append(("update", v))
        def progress_end(self): self.calls.append(("end",))
        def event_timer_add(self, dt, window=None): return "timer"
        def event_timer_remove(self, t): self.calls.append(("timer_removed",))
        def modal_handler_add(self, op): self.calls.append(("modal",))

    class Ctx:
        def __init__(self):
            self.window_manager, self.workspace, self.window = WM(), None, object()

    class Ev:
        def __init__(self, kind, value="PRESS"):
            self.type, self.value = kind, value

    jobs = [Job(1, "reconstruct"), Job(2, "reconstruct")]

    class Op(common.WorkerTaskOperator):
        bl_label = "Test"

        def __init__(self):
            self.reports, self.got = [], []

        def report(self, kind, msg):
            self.reports.append((sorted(kind), msg))

        def task(self, context):
            self.got.append((yield jobs[0]))
            self.got.append((yield jobs[1]))

    real = prefs_mod.worker_client
    prefs_mod.worker_client = lambda context=None: FakeClient()
    out = {}
    try:
        op, ctx = Op(), Ctx()
        op.blocking = False
        # execute() in the UI starts the generator and goes modal (background mode would block).
        op._gen = op.task(ctx)
        op._job = next(op._gen)
        jobs[0].fraction, jobs[0].message = 0.5, "halfway"
        r1 = op.modal(ctx, Ev("TIMER"))
        r_other = op.modal(ctx, Ev("MOUSEMOVE"))
        jobs[0].data, jobs[0].done = {"a": 1}, True
        r2 = op.modal(ctx, Ev("TIMER"))  # first job done: the generator moves on to the second
        jobs[1].data, jobs[1].done = {"b": 2}, True
        r3 = op.modal(ctx, Ev("TIMER"))
        out["success"] = {"returns": [sorted(r1), sorted(r_other), sorted(r2), sorted(r3)], "got": op.got,
                          "progress": ctx.window_manager.calls}
        # Esc: the job is cancelled in the worker and the operator ends with a warning.
        jobs[:] = [Job(3, "reconstruct"), Job(4, "reconstruct")]
        op, ctx = Op(), Ctx()
        op._gen = op.task(ctx)
        op._job = next(op._gen)
        r1 = op.modal(ctx, Ev("ESC"))
        r2 = op.modal(ctx, Ev("TIMER"))
        out["cancel"] = {"returns": [sorted(r1), sorted(r2)], "cancelled": cancelled, "reports": op.reports,
                         "ended": ("end",) in ctx.window_manager.calls}
        # A worker error becomes an ERROR report with the worker's message.
        jobs[:] = [Job(5, "reconstruct"), Job(6, "reconstruct")]
        op, ctx = Op(), Ctx()
        op._gen = op.task(ctx)
        op._job = next(op._gen)
        jobs[0].error, jobs[0].error_type, jobs[0].done = "photo not found: x.jpg", "FileNotFoundError", True
        r = op.modal(ctx, Ev("TIMER"))
        out["error"] = {"returns": sorted(r), "reports": op.reports}
    finally:
        prefs_mod.worker_client = real
    report["modal"] = out


@section
def ui_draw():
    """Panels and preferences drawn into a recording stand-in layout (headless Blender has no UI): every
    operator they show exists and every property they show exists on its data."""
    import importlib

    addon = report["addons"][0]
    ui = importlib.import_module(addon + ".ui")
    problems, shown = [], []

    class Layout:
        def __getattr__(self, name):
            if name in ("column", "row", "box", "split", "column_flow", "grid_flow"):
                return lambda *a, **k: Layout()
            raise AttributeError(name)

        def label(self, text="", **k):
            shown.append(("label", text))

        def separator(self, **k):
            pass

        def operator(self, idname, **k):
            shown.append(("operator", idname))
            mod, name = idname.split(".")
            if not hasattr(getattr(bpy.ops, mod), name):
                problems.append(f"no operator {idname}")

            class Props:
                def __setattr__(self, key, value):
                    rna = getattr(getattr(bpy.ops, mod), name).get_rna_type()
                    if key not in rna.properties:
                        problems.append(f"{idname} has no property {key}")
            return Props()

        def prop(self, data, prop, **k):
            shown.append(("prop", prop))
            if prop not in data.bl_rna.properties:
                problems.append(f"{type(data).__name__} has no property {prop}")

    class Stub:
        layout = Layout()

    obj = state["obj"]
    bpy.context.view_layer.objects.active = obj
    ctx = bpy.context
    for cls in (ui.VIEW3D_PT_deca, ui.VIEW3D_PT_deca_expression, ui.VIEW3D_PT_deca_arkit, ui.VIEW3D_PT_deca_identity):
        report.setdefault("ui_polls", {})[cls.__name__] = bool(cls.poll(ctx)) if hasattr(cls, "poll") else True
        cls.draw(Stub(), ctx)
    prefs = bpy.context.preferences.addons[addon].preferences
    prefs.status_json = json.dumps({"home": "/x", "assets": [{"name": "flame_model", "present": True, "required": True}],
                                    "licences": [{"component": "flame_model", "what": "FLAME 2020",
                                                  "licence": "FLAME licence (non-commercial)", "commercial": False},
                                                 {"component": "mediapipe", "what": "MediaPipe",
                                                  "licence": "Apache-2.0", "commercial": True}]})
    class PrefsView:  # the preferences with a stand-in layout
        layout = Layout()

        def __getattr__(self, name):
            return getattr(prefs, name)

    type(prefs).draw(PrefsView(), ctx)
    prefs.python_mode = "EXTERNAL"
    type(prefs).draw(PrefsView(), ctx)
    prefs.python_mode = "BLENDER"
    report["ui"] = {"problems": problems, "operators": sorted({n for k, n in shown if k == "operator"}),
                    "props": sorted({n for k, n in shown if k == "prop"}),
                    "labels": sorted({n for k, n in shown if k == "label"})}


@section
def render_cycles():
    obj = state["obj"]
    for o in list(bpy.data.objects):  # only the first head in the picture
        if o.deca.role in ("HEAD", "RIG") and o not in (obj, obj.parent):
            o.hide_render = True
    scene = bpy.context.scene
    update()
    world_co = np.array([list(obj.matrix_world @ v.co) for v in obj.evaluated_get(bpy.context.evaluated_depsgraph_get()).data.vertices])
    lo, hi = world_co.min(0), world_co.max(0)
    centre = (lo + hi) / 2
    cam_data = bpy.data.cameras.new("cam")
    cam_data.lens = 50
    cam = bpy.data.objects.new("cam", cam_data)
    scene.collection.objects.link(cam)
    height = hi[2] - lo[2]
    dist = 1.15 * height / (2 * math.tan(cam_data.angle / 2))
    cam.location = (centre[0], lo[1] - dist, centre[2])
    cam.rotation_euler = (math.pi / 2, 0, 0)
    scene.camera = cam
    key = bpy.data.lights.new("key", "AREA")
    key.energy, key.size = 40.0, 0.4
    key_obj = bpy.data.objects.new("key", key)
    key_obj.location = (centre[0] - 0.35, centre[1] - 0.6, centre[2] + 0.35)
    key_obj.rotation_euler = (math.radians(55), 0, math.radians(-30))
    scene.collection.objects.link(key_obj)
    fill = bpy.data.lights.new("fill", "AREA")
    fill.energy, fill.size = 12.0, 0.6
    fill_obj = bpy.data.objects.new("fill", fill)
    fill_obj.location = (centre[0] + 0.5, centre[1] - 0.5, centre[2])
    fill_obj.rotation_euler = (math.radians(90), 0, math.radians(45))
    scene.collection.objects.link(fill_obj)
    if scene.world is None:
        scene.world = bpy.data.worlds.new("world")
    scene.world.color = (0.05, 0.05, 0.06)
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 16
    scene.cycles.use_denoising = False
    scene.render.resolution_x = scene.render.resolution_y = 256
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.render.filepath = str(ARTIFACTS / "blender_cycles_head.png")
    t = time.perf_counter()
    bpy.ops.render.render(write_still=True)
    report["timings"]["render_only"] = time.perf_counter() - t
    report["render_path"] = scene.render.filepath


@section
def render_expressions():
    """The same head rendered (Cycles, the camera and lights of render_cycles) at the neutral expression and
    at a strong one (jaw open, the first expression components pushed), wrinkle strength at its default, and
    the strong one again with wrinkle strength 0 (what the wrinkles alone change)."""
    obj, arm = state["obj"], state["arm"]
    scene = bpy.context.scene
    keys = obj.data.shape_keys.key_blocks
    saved = {kb.name: kb.value for kb in keys if kb.name.startswith("exp_")}
    jaw_saved = arm.pose.bones["jaw"].rotation_quaternion.copy()
    strong = {"exp_000": 2.5, "exp_001": -2.0, "exp_002": 2.0, "exp_003": 2.5, "exp_004": -2.0, "exp_005": 2.0}
    out = {"wrinkle_strength": obj.deca.wrinkle_strength, "strong": strong, "jaw_strong": 0.3}
    # apply_expression keyed the sliders and the jaw: mute those actions, or they override the values set here.
    animated = [ad for ad in (obj.data.shape_keys.animation_data, arm.animation_data) if ad is not None]
    actions = [ad.action for ad in animated]
    for ad in animated:
        ad.action = None
    try:
        for label in ("neutral", "strong", "strong_no_wrinkles"):
            for kb in keys:
                if kb.name.startswith("exp_"):
                    kb.value = strong.get(kb.name, 0.0) if label != "neutral" else 0.0
            arm.pose.bones["jaw"].rotation_quaternion = Quaternion((1, 0, 0), 0.3 if label != "neutral" else 0.0)
            obj.deca.wrinkle_strength = 0.0 if label == "strong_no_wrinkles" else out["wrinkle_strength"]
            update()
            out[f"factors_{label}"] = factors(obj).tolist()
            scene.render.filepath = str(ARTIFACTS / f"blender_cycles_{label}.png")
            bpy.ops.render.render(write_still=True)
            out[f"{label}_path"] = scene.render.filepath
    finally:
        for name, v in saved.items():
            keys[name].value = v
        arm.pose.bones["jaw"].rotation_quaternion = jaw_saved
        obj.deca.wrinkle_strength = out["wrinkle_strength"]
        for ad, action in zip(animated, actions):
            ad.action = action
        update()
    report["render_expressions"] = out


@section
def exports():
    obj = state["obj"]
    bpy.context.view_layer.objects.active = obj
    out = OUT / "exports"
    res = {}
    for preset in ("UNREAL", "UNITY"):
        r = bpy.ops.deca.export_fbx(filepath=str(out / f"head_{preset.lower()}.fbx"), preset=preset)
        res[f"fbx_{preset}"] = sorted(r)
    r = bpy.ops.deca.export_gltf(filepath=str(out / "head.glb"))
    res["glb"] = sorted(r)
    report["exports"] = res
    basis = np.array([list(obj.matrix_world @ p.co) for p in obj.data.shape_keys.key_blocks[0].points])
    report["basis_world_height"] = float(basis[:, 2].max() - basis[:, 2].min())
    report["export_expected"] = {
        "vertices": len(obj.data.vertices), "bones": len(obj.parent.data.bones),
        "shape_keys": len(obj.data.shape_keys.key_blocks) - 1,
        "morph_names": [kb.name for kb in obj.data.shape_keys.key_blocks[1:]],
    }
    loops = np.empty(len(obj.data.loops), np.int32)
    obj.data.loops.foreach_get("vertex_index", loops)
    uv = np.empty(len(obj.data.loops) * 2, np.float32)
    obj.data.uv_layers[0].uv.foreach_get("vector", uv)
    arrays["loop_vertex"], arrays["loop_uv"] = loops, uv.reshape(-1, 2)


@section
def fbx_reimport():
    found = {}
    for preset in ("unreal", "unity"):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        bpy.ops.import_scene.fbx(filepath=str(OUT / "exports" / f"head_{preset}.fbx"))
        meshes = [o for o in bpy.data.objects if o.type == "MESH"]
        arms = [o for o in bpy.data.objects if o.type == "ARMATURE"]
        m = meshes[0]
        dims = m.dimensions
        found[preset] = {
            "meshes": len(meshes), "armatures": len(arms), "vertices": len(m.data.vertices),
            "bones": len(arms[0].data.bones) if arms else 0,
            "bone_names": sorted(b.name for b in arms[0].data.bones) if arms else [],
            "shape_keys": len(m.data.shape_keys.key_blocks) - 1 if m.data.shape_keys else 0,
            "shape_key_names": [kb.name for kb in m.data.shape_keys.key_blocks[1:]] if m.data.shape_keys else [],
            "vertex_groups": sorted(vg.name for vg in m.vertex_groups),
            "images": sorted(i.name for i in bpy.data.images),
            "world_height": float(max((m.matrix_world @ v.co).z for v in m.data.vertices)
                                  - min((m.matrix_world @ v.co).z for v in m.data.vertices)),
        }
    report["fbx_reimport"] = found


@section
def influence_exports():
    """A head with 5 influences on some vertices: Unreal FBX as it is, Unity FBX and glb limited to 4."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.preferences.addon_enable(module=report["addons"][0])
    bpy.ops.deca.import_result(filepath=str(RESULT_5))
    obj = bpy.context.active_object
    out = OUT / "exports5"
    r = {"exports": {
        "unreal": sorted(bpy.ops.deca.export_fbx(filepath=str(out / "unreal.fbx"), preset="UNREAL", wrinkles=False)),
        "unity": sorted(bpy.ops.deca.export_fbx(filepath=str(out / "unity.fbx"), preset="UNITY", wrinkles=False)),
        "glb": sorted(bpy.ops.deca.export_gltf(filepath=str(out / "head.glb"), wrinkles=False))}}
    r["blend_after"] = influences(obj)
    r["morph_names"] = [kb.name for kb in obj.data.shape_keys.key_blocks[1:]]
    for label, path in (("unreal", out / "unreal.fbx"), ("unity", out / "unity.fbx"), ("glb", out / "head.glb")):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        if label == "glb":
            bpy.ops.import_scene.gltf(filepath=str(path))
        else:
            bpy.ops.import_scene.fbx(filepath=str(path))
        m = [o for o in bpy.data.objects if o.type == "MESH"][0]
        r[label] = {**influences(m), "shape_key_names": [kb.name for kb in m.data.shape_keys.key_blocks[1:]]}
        if label == "unity":
            order = {n: i for i, n in enumerate(("root", "neck", "jaw", "eye_L", "eye_R"))}
            W = np.zeros((len(m.data.vertices), 5))
            for v in m.data.vertices:
                for g in v.groups:
                    W[v.index, order[m.vertex_groups[g.group].name]] = g.weight
            arrays["unity_weights"] = W
    report["influences"] = r


@section
def placement():
    """Import Result with the cursor at (1, 2, 0), twice; the photo camera lines the head up with the photo."""
    from bpy_extras.object_utils import world_to_camera_view

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.preferences.addon_enable(module=report["addons"][0])
    scene = bpy.context.scene
    scene.cursor.location = (1.0, 2.0, 0.0)
    heads = []
    for _ in range(2):
        bpy.ops.deca.import_result(filepath=str(RESULT_A))
        heads.append(bpy.context.active_object)
    update()
    boxes = []
    for obj in heads:
        co = evaluated_vertices(obj)
        mw = np.array(obj.matrix_world)
        world = co @ mw[:3, :3].T + mw[:3, 3]
        boxes.append([world.min(0).tolist(), world.max(0).tolist()])
    arm = heads[0].parent
    children = {c.type: c for c in arm.children if c.type in ("CAMERA", "EMPTY")}
    out = {"boxes": boxes, "children": sorted(children)}
    bpy.context.view_layer.objects.active = heads[0]
    out["view_camera"] = sorted(bpy.ops.deca.view_photo_camera())
    cam = scene.camera
    out["resolution"] = [scene.render.resolution_x, scene.render.resolution_y]
    out["camera_name"] = cam.name
    # Project the head as Blender's camera sees it, to photo pixels (row 0 at the top).
    co = evaluated_vertices(heads[0])
    mw = heads[0].matrix_world
    from mathutils import Vector

    ndc = np.array([list(world_to_camera_view(scene, cam, mw @ Vector(p)))[:2] for p in co])
    W, H = out["resolution"]
    arrays["placement_photo_px"] = np.stack([ndc[:, 0] * W, (1 - ndc[:, 1]) * H], 1)
    empty = children.get("EMPTY")
    if empty is not None:
        out["empty_image"] = empty.data.filepath if empty.data else None
        # The empty's image corners in camera space match the camera frame (same plane, same size).
        corners = [empty.matrix_world @ Vector(((u - 0.5) * empty.empty_display_size * (1 if W >= H else W / H),
                                                 (v - 0.5) * empty.empty_display_size * (H / W if W >= H else 1), 0))
                   for u, v in ((0, 0), (1, 1))]
        out["empty_corners_in_camera"] = [list(world_to_camera_view(scene, cam, c))[:2] for c in corners]
    report["placement"] = out


def head_signature(obj) -> dict:
    """Everything an imported head is made of, with its own name replaced by "<head>" (so two imports of
    one result folder compare equal) and the armature's location left out (heads are placed side by side):
    mesh, shape keys, vertex groups, modifiers, bones, drivers, custom and DECA properties, material and
    node group nodes with their values, and every image's pixels."""
    arm = obj.parent
    name = obj.name
    own = {obj.data.shape_keys: "<key>", obj.data: "<mesh>", obj: "<object>", arm: "<armature>",
           arm.data: "<armature data>"}

    def norm(v):
        if isinstance(v, str):
            return v.replace(name, "<head>")
        if isinstance(v, bpy.types.ID):
            return own.get(v) or norm(v.name)
        if hasattr(v, "to_dict"):
            return norm(v.to_dict())
        if isinstance(v, dict):
            return {norm(k): norm(x) for k, x in v.items()}
        if isinstance(v, (int, float, bool)) or v is None:
            return v
        try:
            return [norm(x) for x in v]  # lists, tuples, bpy arrays, vectors
        except TypeError:
            return repr(v)

    def arr(coll, attr, n):
        a = np.empty(len(coll) * n, np.float32)
        coll.foreach_get(attr, a)
        return a

    def pixels(img):
        a = np.empty(len(img.pixels), np.float32)
        img.pixels.foreach_get(a)
        return a

    def digest(a) -> str:
        import hashlib

        return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()

    me = obj.data
    sig = {"vertices": digest(arr(me.vertices, "co", 3)), "faces": len(me.polygons),
           "uv": digest(arr(me.uv_layers.active.data, "uv", 2)),
           "keys": [[kb.name, kb.value, kb.slider_min, kb.slider_max, kb.relative_key.name, digest(arr(kb.data, "co", 3))]
                    for kb in me.shape_keys.key_blocks],
           "groups": [g.name for g in obj.vertex_groups],
           "weights": digest(np.array([[g.group, g.weight] for v in me.vertices for g in v.groups], np.float64)),
           "modifiers": [[m.type, norm(getattr(m, "object", None))] for m in obj.modifiers],
           "bones": [[b.name, list(b.head_local), list(b.tail_local), norm(b.parent.name if b.parent else "")]
                     for b in arm.data.bones],
           "pose": [[b.name, list(b.rotation_quaternion), b.rotation_mode] for b in arm.pose.bones],
           "props": {k: norm(obj[k]) for k in obj.keys() if k != "deca"},
           "deca": {k: norm(getattr(obj.deca, k)) for k in obj.deca.bl_rna.properties.keys() if k != "rna_type"},
           "children": sorted([c.type, norm(c.name), [list(r) for r in c.matrix_basis]] for c in arm.children),
           "collection": norm(obj.users_collection[0].name)}
    drivers = []
    for idb in (me.shape_keys, obj, arm, obj.deca.wrinkle_group):
        ad = getattr(idb, "animation_data", None)
        for fc in (ad.drivers if ad else ()):
            d = fc.driver
            drivers.append([norm(fc.data_path), fc.array_index, d.type, norm(d.expression),
                            [[v.name, v.type, [[norm(t.id), norm(t.data_path), norm(t.bone_target), t.transform_type]
                                               for t in v.targets]] for v in d.variables]])
    sig["drivers"] = sorted(drivers, key=repr)
    mat = me.materials[0]
    for label, tree in (("material", mat.node_tree), ("group", obj.deca.wrinkle_group)):
        nodes = []
        for n in tree.nodes:
            values = [[i.name, norm(getattr(i, "default_value", None))] for i in n.inputs]
            img = getattr(n, "image", None)
            nodes.append([norm(n.name), n.bl_idname, values, norm(getattr(n, "node_tree", None)),
                          [norm(img.name), img.colorspace_settings.name, norm(img.filepath),
                           digest(pixels(img)) if img.packed_file or img.source == "GENERATED" else None]
                          if img else None])
        sig[label] = sorted(nodes, key=repr)
        sig[label + "_links"] = sorted([norm(l.from_node.name), l.from_socket.identifier, norm(l.to_node.name),
                                        l.to_socket.identifier] for l in tree.links)
    return sig


def cancel_running_import(when: str = "networks") -> dict:
    """Esc on a running Import Photo, through the operator's modal handler with the real worker: time from
    the Esc to the operator's end, and what is left (result folders, objects)."""
    import importlib

    addon = report["addons"][0]
    common = importlib.import_module(addon + ".operators.common")
    import_ops = importlib.import_module(addon + ".operators.import_ops")
    out_dir = OUT / "cancelled_results"
    out_dir.mkdir(exist_ok=True)

    class WM:
        def progress_begin(self, a, b): pass
        def progress_update(self, v): pass
        def progress_end(self): pass
        def event_timer_remove(self, t): pass

    class Ctx:  # the real context, with a window manager stand-in (background Blender has no event loop)
        window_manager, workspace = WM(), None

        def __getattr__(self, name):
            return getattr(bpy.context, name)

    class Ev:
        def __init__(self, kind):
            self.type, self.value = kind, "PRESS"

    class Op(common.WorkerTaskOperator):
        bl_label = "Import Photo"
        filepath, output_dir, all_faces = str(PHOTO), str(out_dir), False
        all_expressions = use_head_pose = False
        arkit_keys = identity_sliders = early_parts = True
        task = import_ops.DECA_OT_import_photo.task
        discard = import_ops.DECA_OT_import_photo.discard
        _options = import_ops.DECA_OT_import_photo._options
        _begin = import_ops.DECA_OT_import_photo._begin
        _finish_heads = import_ops.DECA_OT_import_photo._finish_heads
        _add_wrinkles = import_ops.DECA_OT_import_photo._add_wrinkles

        def __init__(self):
            self.reports = []

        def report(self, kind, msg):
            self.reports.append([sorted(kind), msg])

    objects_before = len(bpy.data.objects)
    op, ctx = Op(), Ctx()
    op._gen = op.task(ctx)
    op._job = next(op._gen)
    deadline = time.monotonic() + 300
    while not any("running the networks" in m for m in op._job.messages) and not op._job.done \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    messages = list(op._job.messages)
    begun = 0
    whole = op._job.job  # the request (op._job is its next part, worker_client.JobPart)
    if when == "begun":  # Esc once the head's first part is in the scene (the worker still working)
        while len(bpy.data.objects) == objects_before and not whole.done and time.monotonic() < deadline:
            time.sleep(0.005)
            op.modal(ctx, Ev("TIMER"))
        begun = len(bpy.data.objects) - objects_before
    elif when == "arrived":  # Esc when the rig part has arrived but the operator has not taken it yet
        while not op._job.done and time.monotonic() < deadline:
            time.sleep(0.002)
    else:
        time.sleep(0.2)  # inside the forward pass
    t = time.perf_counter()
    returns = [sorted(op.modal(ctx, Ev("ESC")))]
    while returns[-1] == ["RUNNING_MODAL"] and time.perf_counter() - t < 60:
        time.sleep(0.01)
        returns.append(sorted(op.modal(ctx, Ev("TIMER"))))
    return {"seconds": time.perf_counter() - t, "last_return": returns[-1], "reports": op.reports,
            "messages_before": messages, "left_in_output": sorted(p.name for p in out_dir.iterdir()),
            "objects_added": len(bpy.data.objects) - objects_before, "objects_begun": begun,
            "worker_cancelled": whole.cancelled}


@section
def worker_from_blender():
    """The worker as the add-on starts it: Blender's Python, the bundled core, blocking operators."""
    bpy.ops.wm.read_factory_settings(use_empty=True)  # (disables the add-on: enable it again)
    bpy.ops.preferences.addon_enable(module=report["addons"][0])
    res = {}
    t = time.perf_counter()
    res["hello"] = sorted(bpy.ops.deca.worker_hello())
    res["hello_seconds"] = time.perf_counter() - t
    prefs = bpy.context.preferences.addons[report["addons"][0]].preferences
    res["worker_info"] = prefs.worker_info
    res["status"] = sorted(bpy.ops.deca.refresh_status())
    res["status_json"] = json.loads(prefs.status_json)
    import importlib

    client = importlib.import_module(report["addons"][0] + ".preferences").worker_client()
    res["worker_core"] = client.call("hello", timeout=60)["executable"]
    res["worker_cwd_core"] = client.config.pythonpath
    try:  # nothing installed yet: the report names the preferences' button, not the command line
        bpy.ops.deca.import_photo(filepath=str(PHOTO))
        res["no_assets_photo"] = "FINISHED"
    except RuntimeError as exc:
        res["no_assets_photo"] = str(exc)
    res["no_assets_objects"] = len(bpy.data.objects)
    # Install the model files through the preferences' file pickers: the TEST model, DECA's data and a
    # checkpoint in DECA's layout with random weights (the licensed one is absent here).
    prefs.flame_file, prefs.data_dir, prefs.deca_file = str(FLAME_PKL), str(DATA_DIR), str(DECA_CKPT)
    t = time.perf_counter()
    res["install_assets"] = sorted(bpy.ops.deca.install_assets())
    res["install_seconds"] = time.perf_counter() - t
    res["missing_after_install"] = json.loads(prefs.status_json)["missing"]
    res["licences"] = {row["component"]: row["commercial"] for row in json.loads(prefs.status_json)["licences"]}
    # The warm-up (what Blender's start, the panel or the photo browser trigger): `load` on the same worker,
    # for the settings Import Photo then uses, with its progress for the status bar.
    warmup = importlib.import_module(report["addons"][0] + ".warmup")
    pid = client.call("hello", timeout=60)["pid"]
    job = warmup.start()
    res["warm_up_text_running"] = warmup.status_text()
    res["warm_up_same_job"] = warmup.start() is job

    class StatusBar:  # the status bar's header with a recording layout (headless Blender draws nothing)
        class layout:
            labels: list = []

            @classmethod
            def label(cls, text="", icon="NONE"):
                cls.labels.append([text, icon])

    warmup.draw_status(StatusBar(), bpy.context)
    res["warm_up_status_bar"] = {"in_header": warmup.draw_status in bpy.types.STATUSBAR_HT_header.draw._draw_funcs,
                                 "running": list(StatusBar.layout.labels), "tick_running": warmup._tick()}
    loaded = job.wait(600)
    StatusBar.layout.labels.clear()
    warmup.draw_status(StatusBar(), bpy.context)
    res["warm_up_status_bar"].update(done=list(StatusBar.layout.labels), tick_done=warmup._tick())
    res["warm_up"] = {"already": loaded["already"], "stages": sorted(loaded["timings"]),
                      "text_after": warmup.status_text(), "same_worker": client.call("hello", timeout=60)["pid"] == pid}
    res["cancel"] = cancel_running_import()
    snapshot = objects_snapshot()
    res["cancel_after_early"] = cancel_running_import("begun")
    res["cancel_after_early"]["datablocks_added"] = {k: v - snapshot[k] for k, v in objects_snapshot().items()}
    res["cancel_part_arrived"] = cancel_running_import("arrived")
    try:
        bpy.ops.deca.import_photo(filepath=str(OUT / "no_such_photo.jpg"))
        res["missing_photo"] = "FINISHED"
    except RuntimeError as exc:
        res["missing_photo"] = str(exc)
    t = time.perf_counter()
    try:
        bpy.ops.deca.import_photo(filepath=str(PHOTO))
        res["import_photo"] = "FINISHED"
        res["import_photo_seconds"] = time.perf_counter() - t
        # Import Photo ran on the warmed-up worker and reconstructor: still the same process, nothing to load.
        res["after_import"] = {"same_worker": client.call("hello", timeout=60)["pid"] == pid,
                               "already": client.call("load", timeout=60, **warmup.load_settings(prefs))["already"]}
        stats = importlib.import_module(report["addons"][0] + ".operators.import_ops").last_photo_import
        res["import_stats"] = {"stages": sorted(stats["worker"]), "scene": sorted(stats["scene"]),
                               "sums": stats["request"] + stats["scene_after_result"] <= stats["total"]
                               and stats["scene_while_worker"] + stats["scene_after_result"] == stats["scene_total"]}
        heads = [o for o in bpy.data.objects if o.deca.role == "HEAD"]
        res["heads"] = [o.name for o in heads]
        head = heads[0]
        res["import_stats"]["scene_while_worker"] = stats.get("scene_while_worker", 0.0)
        # Built in two parts (the rig while the worker worked, the rest from the folder): the same head as
        # Import Result makes from that folder in one go.
        bpy.ops.deca.import_result(filepath=head.deca.result_path)
        again = bpy.context.active_object
        a, b = head_signature(head), head_signature(again)
        differ = sorted(k for k in a if a[k] != b.get(k))

        def first_difference(x, y, path=""):
            if isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
                return next((first_difference(p, q, f"{path}[{i}]") for i, (p, q) in enumerate(zip(x, y)) if p != q), None)
            if isinstance(x, dict) and isinstance(y, dict) and set(x) == set(y):
                return next((first_difference(x[k], y[k], f"{path}.{k}") for k in x if x[k] != y[k]), None)
            return [path, repr(x)[:300], repr(y)[:300]]

        res["two_parts_vs_one"] = {"compared": sorted(a), "differ": differ, "names": [head.name, again.name],
                                   "first_differences": {k: first_difference(a[k], b.get(k)) for k in differ}}
        for o in list(again.parent.children) + [again.parent]:
            bpy.data.objects.remove(o)
        # Two faces in one photo: both heads built in parts (the second placed beside the first), each the
        # head Import Result builds from its folder.
        from PIL import Image

        a = Image.open(PHOTO).convert("RGB")
        canvas = Image.new("RGB", (2 * a.width + 40, a.height), (128, 128, 128))
        canvas.paste(a, (0, 0))
        canvas.paste(a.resize((int(a.width * 0.8), int(a.height * 0.8))), (a.width + 40, 20))
        canvas.save(OUT / "two faces.png")
        before = {o.name for o in bpy.data.objects}
        bpy.ops.deca.import_photo(filepath=str(OUT / "two faces.png"), all_faces=True)
        pair = [o for o in bpy.data.objects if o.name not in before and o.deca.role == "HEAD"]
        two_faces = {"heads": len(pair), "differ": [], "parts": sorted(stats["scene"])}
        for h in pair:
            bpy.ops.deca.import_result(filepath=h.deca.result_path)
            ref = bpy.context.active_object
            x, y = head_signature(h), head_signature(ref)
            two_faces["differ"] += [k for k in x if x[k] != y.get(k)]
            for o in list(ref.parent.children) + [ref.parent]:
                bpy.data.objects.remove(o)
        update()
        two_faces["apart_m"] = float(np.linalg.norm(np.subtract(pair[0].parent.matrix_world.translation,
                                                                pair[1].parent.matrix_world.translation)))
        res["two_faces"] = two_faces
        for h in pair:
            for o in list(h.parent.children) + [h.parent]:
                bpy.data.objects.remove(o)
        res["photo_head"] = {"bones": len(head.parent.data.bones), "keys": len(head.data.shape_keys.key_blocks),
                             "result_path": head.deca.result_path,
                             "has_result": (Path(head.deca.result_path) / "result.npz").is_file()}
        bpy.context.view_layer.objects.active = head
        t = time.perf_counter()
        res["apply_from_photo"] = sorted(bpy.ops.deca.apply_expression(filepath=str(PHOTO), keyframe=True, frame_start=3))
        res["apply_from_photo_seconds"] = time.perf_counter() - t
        res["apply_keyed"] = head.data.shape_keys.animation_data is not None
        # A video (made here with OpenCV from the photo; frame 2 has no face), every 2nd frame from frame 10.
        import cv2

        img = cv2.imread(str(PHOTO))
        s = 480 / max(img.shape[:2])
        img = cv2.resize(img, (int(img.shape[1] * s) // 2 * 2, int(img.shape[0] * s) // 2 * 2))
        video = OUT / "clip.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 24.0, (img.shape[1], img.shape[0]))
        for frame in (img, img, np.full_like(img, 128), img, img):
            writer.write(frame)
        writer.release()
        t = time.perf_counter()
        res["apply_video"] = sorted(bpy.ops.deca.apply_expression(filepath=str(video), video_step=2, frame_start=10))
        res["apply_video_seconds"] = time.perf_counter() - t
        ad = head.data.shape_keys.animation_data
        if hasattr(ad.action, "fcurves"):  # Blender < 5.0 (legacy action API)
            curves = ad.action.fcurves
        else:  # layered actions (4.4+, the only API in 5.0)
            from bpy_extras import anim_utils

            curves = anim_utils.action_get_channelbag_for_slot(ad.action, ad.action_slot).fcurves
        fc = next(c for c in curves if c.data_path == 'key_blocks["exp_000"].value')
        res["video_key_frames"] = sorted(int(k.co[0]) for k in fc.keyframe_points)
        res["video_frame_range"] = [bpy.context.scene.frame_start, bpy.context.scene.frame_end]
    except RuntimeError as exc:
        res["import_photo"] = str(exc)
    res["objects_after"] = len(bpy.data.objects)
    # The start-up hook follows the preference: nothing with "Only on Import", a fresh warm-up "With Blender".
    client.stop()
    prefs.warm_up = "OFF"
    before = warmup._state["job"]
    warmup._on_blender_start()
    startup = {"off_sent_nothing": warmup._state["job"] is before and not client.alive}
    prefs.warm_up = "STARTUP"
    warmup._on_blender_start()
    job = warmup._state["job"]
    startup["startup_sent_load"] = job is not before and job.cmd == "load" and client.alive
    startup["startup_loaded"] = job.wait(600)["already"] is False  # a fresh worker loaded the models
    prefs.warm_up = "FIRST_USE"
    res["startup_hook"] = startup
    res["torch_in_blender"] = "torch" in sys.modules
    report["worker"] = res
    importlib.import_module(report["addons"][0] + ".worker_client").shutdown_all()


try:
    pass
finally:
    (OUT / "report.json").write_text(json.dumps(report, indent=1, default=str))
    np.savez(OUT / "arrays.npz", **arrays)
