"""Warming the worker up before the first photo, so that Import Photo finds the models loaded.

A cold worker spends seconds before it can reconstruct: importing torch, loading the checkpoint and the
FLAME model, building the landmark detector (benchmarks/bench_blender.py measures each). The add-on starts
the worker and sends it `load` (core/worker.py) with the preferences' device, detector and mode while the
user is still picking a photo: when Blender starts, or when first needed (the DECA panel is first shown,
the Import Photo file browser opens), as the preference "Warm Up the Worker" says. Nothing here waits for
the worker: the process is spawned without waiting for its `ready` line, the progress shows in the status
bar (redrawn by a timer), and a `reconstruct` sent meanwhile simply queues behind `load` in the worker.
A warm-up that fails (no torch, no model files) stays silent apart from the console: the Import Photo that
follows reports the same error with its remedy. Nothing is warmed up in background mode (renders, scripts).
"""
from __future__ import annotations

import bpy

#: the warm-up job and the settings it was sent for (None before the first)
_state: dict = {"job": None, "key": None, "client": None, "panel_asked": False}


def load_settings(prefs) -> dict:
    """The `load` arguments for these preferences: the ones Import Photo's `reconstruct` sends, so the
    worker keeps one reconstructor for both."""
    return {"device": prefs.device, "landmarks": prefs.landmarks, "mode": prefs.mode}


def start(context=None):
    """Start the worker (if needed) and send it `load` for the preferences' settings, unless a warm-up for
    the same worker and settings was already sent to the running worker and did not fail (one that failed,
    e.g. before the model files were installed, is sent again). Returns the job (None when the
    worker could not be started: the next import reports why). Never blocks on the worker."""
    from .preferences import get_prefs, worker_client

    try:
        prefs = get_prefs(context)
        client = worker_client(context)
        settings = load_settings(prefs)
        key = (client.config, tuple(sorted(settings.items())))
        job = _state["job"]
        if (job is not None and _state["key"] == key and _state["client"] is client and client.alive
                and not (job.done and job.error is not None)):
            return job  # running or done on this very worker: nothing to do (a failed one is tried again)
        client.start(wait_ready=False)
        job = client.request("load", **settings)
    except Exception as exc:  # a bad worker Python, a config error: the import names it properly
        print(f"DECA: the worker could not be warmed up: {exc}")
        return None
    _state.update(job=job, key=key, client=client)
    if not bpy.app.background and not bpy.app.timers.is_registered(_tick):
        bpy.app.timers.register(_tick, first_interval=0.2, persistent=True)  # persistent: kept when a file loads
    return job


def start_from_panel() -> None:
    """Called by the panel's draw (once per session): warm up from a timer, outside the draw."""
    if _state["panel_asked"] or bpy.app.background:
        return
    _state["panel_asked"] = True
    bpy.app.timers.register(_start_from_timer, first_interval=0.0, persistent=True)


def _start_from_timer():
    start(None)
    return None  # once


def _on_blender_start():
    from .preferences import get_prefs

    if get_prefs().warm_up == "STARTUP":
        start(None)
    return None


def running_job():
    """The warm-up job while it runs, else None."""
    job = _state["job"]
    return job if job is not None and not job.done else None


def status_text() -> str:
    """What the warming-up worker does, e.g. "loading the models, 50%" ("" when no warm-up runs)."""
    job = running_job()
    if job is None:
        return ""
    return f"{job.message or 'starting the worker'}, {int(100 * job.fraction)}%"


def _tick():
    _redraw_status_bars()
    job = _state["job"]
    if job is None or job.done:
        if job is not None and job.error is not None:
            print(f"DECA: warming up the worker failed ({job.error_type}): {job.error}")
        return None
    return 0.25


def _redraw_status_bars() -> None:
    wm = getattr(bpy.context, "window_manager", None)
    for window in getattr(wm, "windows", ()):
        for area in window.screen.areas:
            if area.type == "STATUSBAR":
                area.tag_redraw()


def draw_status(self, context) -> None:
    text = status_text()
    if text:
        self.layout.label(text=f"DECA warming up: {text}", icon="TIME")


def register() -> None:
    bpy.types.STATUSBAR_HT_header.append(draw_status)
    if not bpy.app.background:
        # After start-up (preferences loaded, window up): a timer, never inside register itself.
        # persistent: Blender started with a .blend loads it after the add-ons register, which drops other timers.
        bpy.app.timers.register(_on_blender_start, first_interval=1.0, persistent=True)


def unregister() -> None:
    bpy.types.STATUSBAR_HT_header.remove(draw_status)
    for fn in (_tick, _start_from_timer, _on_blender_start):
        if bpy.app.timers.is_registered(fn):
            bpy.app.timers.unregister(fn)
    _state.update(job=None, key=None, client=None, panel_asked=False)
