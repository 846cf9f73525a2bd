"""Preferences operators: asset status and installation (through the worker), dependencies, the worker."""
from __future__ import annotations

import json

import bpy

from .common import WorkerTaskOperator


class DECA_OT_refresh_status(WorkerTaskOperator, bpy.types.Operator):
    """Ask the worker which model files are installed"""

    bl_idname = "deca.refresh_status"
    bl_label = "Refresh Asset Status"

    def task(self, context):
        from ..preferences import get_prefs, worker_client

        data = yield worker_client(context).request("status")
        prefs = get_prefs(context)
        prefs.status_json = json.dumps(data)
        missing = data.get("missing", [])
        self.report({"INFO"} if not missing else {"WARNING"},
                    "all required model files are installed" if not missing else "missing: " + ", ".join(missing))


class DECA_OT_install_assets(WorkerTaskOperator, bpy.types.Operator):
    """Check and install the chosen FLAME file, DECA checkpoint and data folder (as `deca-blender assets install`)"""

    bl_idname = "deca.install_assets"
    bl_label = "Install Model Files"

    force: bpy.props.BoolProperty(name="Replace", default=False, description="Replace an installed file with a different one")

    def task(self, context):
        from ..preferences import get_prefs, worker_client

        prefs = get_prefs(context)
        args = {k: bpy.path.abspath(v) for k, v in (("flame", prefs.flame_file), ("deca", prefs.deca_file),
                                                    ("data", prefs.data_dir)) if v}
        if not args:
            raise ValueError("choose the FLAME file, the DECA checkpoint and/or the DECA data folder first")
        data = yield worker_client(context).request("install_assets", force=self.force, **args)
        prefs.status_json = json.dumps(data.get("status", {}))
        for note in data.get("notes", []):
            self.report({"WARNING"}, note)
        missing = data.get("status", {}).get("missing", [])
        self.report({"INFO"}, "installed" + (f"; still missing: {', '.join(missing)}" if missing else ""))


class DECA_OT_worker_hello(WorkerTaskOperator, bpy.types.Operator):
    """Start the worker (if needed) and show its Python and torch versions"""

    bl_idname = "deca.worker_hello"
    bl_label = "Check Worker"

    def task(self, context):
        from ..preferences import get_prefs, worker_client

        data = yield worker_client(context).request("hello")
        torch = data.get("torch") or "NOT INSTALLED (press Install Dependencies)"
        info = f"Python {data.get('python')}, torch {torch}, pipeline {'yes' if data.get('pipeline') else 'no'}"
        get_prefs(context).worker_info = info
        self.report({"INFO"} if data.get("torch") else {"WARNING"}, info)


class DECA_OT_stop_worker(bpy.types.Operator):
    """Stop the inference worker (it restarts on the next request)"""

    bl_idname = "deca.stop_worker"
    bl_label = "Stop Worker"

    def execute(self, context):
        from ..worker_client import shutdown_all

        shutdown_all()
        return {"FINISHED"}


class DECA_OT_install_dependencies(bpy.types.Operator):
    """Install torch and the other inference dependencies into a private virtual environment in the
    extension's user folder (used only by the worker; Blender's own Python is not changed). Online it
    downloads about 260 MB (CPU torch and the rest) or several GB (CUDA)"""

    bl_idname = "deca.install_dependencies"
    bl_label = "Install Dependencies"

    from_wheels: bpy.props.BoolProperty(name="From Folder of Wheels", default=False, options={"SKIP_SAVE"},
                                        description="Install only from the preferences' folder of wheels (offline)")

    _timer = None
    _installer = None

    @classmethod
    def poll(cls, context):
        return cls._installer is None or cls._installer.done

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)

    def installer(self, context):
        from ..dependencies import DependencyInstaller, default_base_python
        from ..preferences import get_prefs, private_dir

        prefs = get_prefs(context)
        wheels = bpy.path.abspath(prefs.wheels_dir) if self.from_wheels else None
        if self.from_wheels and not prefs.wheels_dir:
            raise ValueError("choose the Folder of Wheels in the add-on's preferences first")
        return DependencyInstaller(default_base_python(), str(private_dir("venv")),
                                   "CUDA" if prefs.device == "cuda" else "CPU", wheels_dir=wheels)

    def execute(self, context):
        if not self.from_wheels and not bpy.app.online_access:
            self.report({"ERROR"}, "Blender is set to work offline (Preferences > System > Network > Allow Online "
                                   "Access): allow it, or use Install from Folder of Wheels")
            return {"CANCELLED"}
        try:
            inst = self.installer(context).start()
        except (ValueError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        type(self)._installer = inst
        if bpy.app.background or context.window is None:
            inst.wait()
            return self._finish(context)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.5, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        inst = type(self)._installer
        if event.type == "ESC" and event.value == "PRESS" and inst is not None:
            inst.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if inst is not None and not inst.done:
            context.window_manager.progress_update(int(100 * inst.fraction))
            if context.workspace is not None:
                context.workspace.status_text_set(
                    f"DECA dependencies ({int(100 * inst.fraction)}%): {inst.message[:120]}  Esc to cancel")
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        context.window_manager.progress_end()
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        return self._finish(context)

    def _finish(self, context):
        inst = type(self)._installer
        from ..worker_client import shutdown_all

        shutdown_all()  # a running worker would keep the old Python and packages
        if inst is None or inst.returncode != 0:
            self.report({"ERROR"}, inst.summary() if inst else "nothing was installed")
            return {"CANCELLED"}
        self.report({"INFO"}, inst.summary() + "; the worker will use them")
        return {"FINISHED"}


classes = (DECA_OT_refresh_status, DECA_OT_install_assets, DECA_OT_worker_hello, DECA_OT_stop_worker,
           DECA_OT_install_dependencies)


register, unregister = bpy.utils.register_classes_factory(classes)
