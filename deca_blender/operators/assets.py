"""Preferences operators: asset status and installation (through the worker), dependencies, the worker."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

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
    """Install torch and the other inference dependencies with pip into the extension's private folder
    (used only by the worker process, never by Blender itself). Downloads about 200 MB (CPU) or several GB (CUDA)"""

    bl_idname = "deca.install_dependencies"
    bl_label = "Install Dependencies"

    _timer = None
    _proc = None
    _lines: list

    @classmethod
    def poll(cls, context):
        return cls._proc is None

    def invoke(self, context, event):
        return context.window_manager.invoke_confirm(self, event)

    def command(self, context) -> list[str]:
        from ..preferences import get_prefs, private_dir
        from ..worker_client import pip_install_command

        prefs = get_prefs(context)
        return pip_install_command(sys.executable, str(private_dir("deps")), "CUDA" if prefs.device == "cuda" else "CPU")

    def execute(self, context):
        if not bpy.app.online_access:
            self.report({"ERROR"}, "Blender is set to work offline (Preferences > System > Network > Allow Online Access); "
                                   "installing the dependencies downloads them with pip")
            return {"CANCELLED"}
        ensure = subprocess.run([sys.executable, "-m", "ensurepip", "--upgrade"], capture_output=True, text=True)
        if ensure.returncode != 0:
            self.report({"WARNING"}, "ensurepip failed; trying pip anyway")
        self._lines = []
        cmd = self.command(context)
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except OSError as exc:
            self.report({"ERROR"}, f"cannot run pip: {exc}")
            return {"CANCELLED"}
        type(self)._proc = proc

        def pump() -> None:
            for line in proc.stdout:
                self._lines.append(line.rstrip())

        threading.Thread(target=pump, daemon=True).start()
        if bpy.app.background or context.window is None:
            proc.wait()
            return self._finish(context)
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.5, window=context.window)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        proc = type(self)._proc
        if event.type == "ESC" and proc is not None:
            proc.terminate()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if proc is not None and proc.poll() is None:
            if self._lines and context.workspace is not None:
                context.workspace.status_text_set(f"DECA dependencies: {self._lines[-1][:120]}  Esc to cancel")
            return {"RUNNING_MODAL"}
        context.window_manager.event_timer_remove(self._timer)
        if context.workspace is not None:
            context.workspace.status_text_set(None)
        return self._finish(context)

    def _finish(self, context):
        proc = type(self)._proc
        type(self)._proc = None
        from ..worker_client import shutdown_all

        shutdown_all()  # a running worker would keep the old packages
        if proc is None or proc.returncode != 0:
            tail = "\n".join(self._lines[-8:])
            self.report({"ERROR"}, f"pip failed (exit code {None if proc is None else proc.returncode}):\n{tail}")
            return {"CANCELLED"}
        self.report({"INFO"}, "dependencies installed; the worker will use them")
        return {"FINISHED"}


classes = (DECA_OT_refresh_status, DECA_OT_install_assets, DECA_OT_worker_hello, DECA_OT_stop_worker,
           DECA_OT_install_dependencies)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)


def unregister() -> None:
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
