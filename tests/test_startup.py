"""Start-up and exit paths of the `deca-blender` command: the fast exit (`core.cli.exit_now`) keeps what a
normal exit guarantees (exit code, buffered output, atexit handlers, running threads finish), and the
command run as a program ends through it with a complete result folder.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # stdout is a pipe: block-buffered, so unflushed text would be lost by a bare os._exit
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)


def test_exit_now_keeps_code_output_and_atexit_handlers(tmp_path):
    marker = tmp_path / "atexit_ran"
    code = ("import atexit, sys\n"
            "from core.cli import exit_now\n"
            f"atexit.register(lambda: open({str(marker)!r}, 'w').write('yes'))\n"
            "print('buffered out', end='')\n"
            "sys.stderr.write('buffered err')\n"
            "exit_now(3)\n"
            "print('never')\n")
    out = _python(code, tmp_path)
    assert out.returncode == 3
    assert out.stdout == "buffered out"
    assert out.stderr == "buffered err"
    assert marker.read_text() == "yes"


def test_exit_now_waits_for_a_running_thread(tmp_path):
    """With another (non-daemon) thread alive the normal exit runs, which joins it: its work is not cut off."""
    done = tmp_path / "thread_done"
    code = ("import threading, time\n"
            "from core.cli import exit_now\n"
            "go = threading.Event()\n"
            f"def work():\n    go.wait(); time.sleep(0.2); open({str(done)!r}, 'w').write('done')\n"
            "threading.Thread(target=work).start()\n"
            "go.set()\n"
            "exit_now(0)\n")
    out = _python(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert done.read_text() == "done"


def test_exit_now_with_stdout_closed(tmp_path):
    code = ("import sys, os\n"
            "from core.cli import exit_now\n"
            "print('x'); sys.stdout.close()\n"
            "exit_now(5)\n")
    assert _python(code, tmp_path).returncode == 5


def test_console_entry_point_is_run():
    """The installed command goes through `run` (the fast exit); `main` stays the testable function."""
    text = (REPO / "pyproject.toml").read_text()
    assert 'deca-blender = "core.cli:run"' in text
    import core.cli

    assert callable(core.cli.run) and callable(core.cli.main)
