"""Installing the worker's dependencies into a private virtual environment. No bpy, no torch here.

Blender's own Python is never modified (no `ensurepip` on it, no `pip install` into it): *Install
Dependencies* creates a virtual environment in the extension's user folder (`<user>/venv`) from
Blender's Python (`python -m venv`, which seeds pip into the *new* environment from the wheel bundled
with Python, offline) and pip-installs torch and the rest into it. The worker then runs with that
environment's Python; Blender's UI process never sees those packages.

Online, pip downloads from PyPI and torch from download.pytorch.org (CPU: about 200 MB of torch wheel plus
about 60 MB of numpy, scipy, Pillow, dlib; CUDA builds: several GB). Offline ("Install from a folder of
wheels"), pip uses only the given folder (`--no-index --find-links FOLDER`): fill it on a machine with
network access with

    pip download --only-binary=:all: --python-version 3.11 --dest wheels/ \
        --extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0 "numpy>=1.24,<2" ...

(the requirements are `requirements()` below; Blender 4.2-5.0 bundle Python 3.11).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .worker_client import DEPENDENCIES, LANDMARK_DEPENDENCIES, TORCH_INDEX, TORCH_REQUIREMENT


def venv_python(venv_dir: str | Path) -> Path:
    """The Python executable of a virtual environment (Windows: Scripts/python.exe)."""
    venv_dir = Path(venv_dir)
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def requirements(with_dlib: bool = True) -> list[str]:
    return [TORCH_REQUIREMENT, *DEPENDENCIES, *(LANDMARK_DEPENDENCIES if with_dlib else ())]


def pip_install_command(python: str, device: str = "CPU", with_dlib: bool = True, wheels_dir: str | None = None,
                        packages: list[str] | None = None) -> list[str]:
    """The pip command run with the private environment's `python`: from the indexes (torch's CPU or CUDA
    index besides PyPI) or, with `wheels_dir`, from that folder only."""
    cmd = [python, "-m", "pip", "install", "--upgrade", "--no-input", "--disable-pip-version-check"]
    if wheels_dir:
        cmd += ["--no-index", "--find-links", str(wheels_dir)]
    else:
        cmd += ["--extra-index-url", TORCH_INDEX["CUDA" if device == "CUDA" else "CPU"]]
    return cmd + list(packages if packages is not None else requirements(with_dlib))


_STEP = re.compile(r"^(Collecting|Processing|Looking in links|Downloading|Installing collected packages|Successfully installed)\b")


@dataclass
class DependencyInstaller:
    """Create `venv_dir` (if needed) from `base_python` and pip-install into it, in a background thread.

    `fraction` (0..1) and `message` say how far it is; `done`, `returncode` and `lines` (pip's output)
    what happened. `cancel()` stops it (the environment may then be incomplete; installing again repairs it)."""

    base_python: str
    venv_dir: str
    device: str = "CPU"
    with_dlib: bool = True
    wheels_dir: str | None = None
    packages: list[str] | None = None  # default: requirements(with_dlib)
    fraction: float = 0.0
    message: str = ""
    done: bool = False
    returncode: int | None = None
    lines: list[str] = field(default_factory=list)
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _cancelled: bool = field(default=False, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def python(self) -> Path:
        return venv_python(self.venv_dir)

    def start(self) -> "DependencyInstaller":
        if self.wheels_dir and not Path(self.wheels_dir).is_dir():
            raise FileNotFoundError(f"the folder of wheels does not exist: {self.wheels_dir}")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> int | None:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.returncode

    def cancel(self) -> None:
        self._cancelled = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def _step(self, cmd: list[str], lo: float, hi: float, expected_steps: int) -> int:
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")})
        steps = 0
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            line = line.rstrip()
            self.lines.append(line)
            if _STEP.match(line):
                steps += 1
                self.message = line[:160]
                self.fraction = lo + (hi - lo) * min(0.95, steps / max(1, expected_steps))
        return self._proc.wait()

    def _run(self) -> None:
        try:
            if not self.python.is_file():
                self.message = f"creating the private environment {self.venv_dir}"
                code = self._step([self.base_python, "-m", "venv", str(self.venv_dir)], 0.0, 0.1, 1)
                if code != 0 or self._cancelled:
                    self.returncode = code if code != 0 else -1
                    return
            self.fraction = 0.1
            packages = self.packages if self.packages is not None else requirements(self.with_dlib)
            cmd = pip_install_command(str(self.python), self.device, self.with_dlib, self.wheels_dir, packages)
            # about three lines per package: Collecting, Downloading (or Processing), and the final two
            code = self._step(cmd, 0.1, 1.0, 3 * len(packages) + 2)
            self.returncode = -1 if self._cancelled else code
            if self.returncode == 0:
                self.fraction, self.message = 1.0, "installed"
        except OSError as exc:
            self.lines.append(f"cannot run {self.base_python}: {exc}")
            self.returncode = -2
        finally:
            self.done = True

    def summary(self, n: int = 8) -> str:
        if self.returncode == 0:
            return f"dependencies installed into {self.venv_dir}"
        if self._cancelled:
            return "installing the dependencies was cancelled; install again to complete the environment"
        return f"pip failed (exit code {self.returncode}):\n" + "\n".join(self.lines[-n:])


def default_base_python() -> str:
    """Blender's Python (the UI process's own executable): the base of the private environment."""
    return sys.executable
