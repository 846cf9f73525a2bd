"""What the operators share: long work as a generator of worker jobs, run modal (UI) or blocking (scripts).

An operator's `task(context)` is a generator that yields `worker_client.Job`s and receives each job's
result data back. In the UI the operator runs it modally: a timer polls the job, the window manager's
progress indicator and the status bar show its progress, Esc cancels it in the worker. From a script or
in background mode (`bpy.app.background`, or `blocking=True`) the same generator runs to the end before
the operator returns, so `bpy.ops.deca.import_photo(filepath=...)` is scriptable. Errors become
Blender reports carrying the message the command line prints, with command-line remedies replaced by
the preferences' buttons (messages.py).
"""
from __future__ import annotations

import bpy
from bpy.props import BoolProperty

from ..messages import for_blender
from ..properties import head_objects

#: exceptions whose message is meant for the user (the project's errors are ValueErrors naming the file)
USER_ERRORS = (ValueError, OSError, RuntimeError, ImportError)


def active_head(context):
    return head_objects(getattr(context, "active_object", None))


def report_exception(op, exc: BaseException) -> None:
    op.report({"ERROR"}, for_blender(str(exc)) or type(exc).__name__)


class WorkerTaskOperator:
    """Mixin: implement `task(context)` (a generator of jobs) and optionally `finish(context)`."""

    blocking: BoolProperty(name="Blocking", default=False, options={"HIDDEN", "SKIP_SAVE"},
                           description="Run to the end before returning (scripts); the UI runs modally")

    _timer = None
    _gen = None
    _job = None
    _cancel_requested = False

    def task(self, context):  # pragma: no cover - overridden
        raise NotImplementedError
        yield

    def discard(self, data) -> None:
        """Undo what a job whose answer arrived after Esc produced (e.g. remove its result folders)."""

    def _run_blocking(self, context):
        gen = self.task(context)
        try:
            job = next(gen)
            while True:
                data = job.wait()
                job = gen.send(data)
        except StopIteration:
            return {"FINISHED"}
        except USER_ERRORS as exc:
            gen.close()  # a job failed: the task's cleanups run (e.g. remove a head it had begun)
            report_exception(self, exc)
            return {"CANCELLED"}
        except BaseException:
            gen.close()
            raise

    def execute(self, context):
        if self.blocking or bpy.app.background or context.window is None:
            return self._run_blocking(context)
        self._gen = self.task(context)
        try:
            self._job = next(self._gen)
        except StopIteration:
            return {"FINISHED"}
        except USER_ERRORS as exc:
            report_exception(self, exc)
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(0.1, window=context.window)
        wm.progress_begin(0, 100)
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def _status(self, context, text: str | None) -> None:
        workspace = getattr(context, "workspace", None)
        if workspace is not None:
            workspace.status_text_set(text)

    def _end(self, context) -> None:
        wm = context.window_manager
        if self._timer is not None:
            wm.event_timer_remove(self._timer)
            self._timer = None
        wm.progress_end()
        self._status(context, None)

    def modal(self, context, event):
        job = self._job
        if event.type == "ESC" and event.value == "PRESS":
            if not self._cancel_requested:
                self._cancel_requested = True
                from ..preferences import worker_client

                worker_client(context).cancel(getattr(job, "job", job))  # a part (JobPart): its whole job
                self._status(context, "DECA: cancelling...")
            return {"RUNNING_MODAL"}
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        if not job.done:
            context.window_manager.progress_update(int(100 * job.fraction))
            from ..warmup import status_text

            # Queued behind the warm-up (no progress of its own yet): show the warm-up's.
            warming = status_text()
            doing = job.message or (f"waiting for the worker ({warming})" if warming else job.cmd)
            self._status(context, f"DECA {self.bl_label}: {doing} ({int(100 * job.fraction)}%)  Esc to cancel")
            return {"RUNNING_MODAL"}
        if self._cancel_requested and job.error is None:
            whole = getattr(job, "job", job)  # an early part (worker_client.JobPart): wait for the job's end
            if not whole.done:
                self._job = whole
                return {"RUNNING_MODAL"}
            # The answer crossed the cancel request: honour the cancel, build nothing, undo what it wrote.
            self._end(context)
            self._gen.close()
            self.discard(whole.data)
            self.report({"WARNING"}, f"{self.bl_label}: cancelled")
            return {"CANCELLED"}
        if job.error is not None:
            self._end(context)
            self._gen.close()  # the task's cleanups run (e.g. remove a head it had begun)
            if job.cancelled:
                self.report({"WARNING"}, f"{self.bl_label}: cancelled")
            else:
                self.report({"ERROR"}, for_blender(job.error))
            return {"CANCELLED"}
        try:
            self._job = self._gen.send(job.data)
            return {"RUNNING_MODAL"}
        except StopIteration:
            self._end(context)
            return {"FINISHED"}
        except USER_ERRORS as exc:
            self._end(context)
            report_exception(self, exc)
            return {"CANCELLED"}
