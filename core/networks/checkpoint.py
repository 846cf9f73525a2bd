"""The three DECA networks together, and reading/writing DECA's checkpoint (``deca_model.tar``).

The official file is a ``torch.save`` of a dict holding the state dicts ``E_flame``, ``E_detail`` and
``D_detail`` (other top-level entries, e.g. an optimizer or a step counter, are ignored). It is always
read with ``weights_only=True``: a pickle that asks for anything but tensors and plain containers is
refused before any of it runs.

Every problem is reported as a :class:`CheckpointError` whose message starts with the file's path.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import torch
from torch import nn

from core.errors import DecaError
from core.atomic import atomic_write_bytes

from .detail_decoder import DetailDecoder
from .encoders import DetailEncoder, FlameCodes, FlameEncoder

__all__ = [
    "NETWORK_NAMES",
    "CheckpointError",
    "TensorSpec",
    "DecaNetworks",
    "DecaNetworkOutput",
    "build_deca_networks",
    "expected_state_dict_layout",
    "expected_layout_manifest",
    "compare_layout",
    "verify_checkpoint",
    "load_deca_checkpoint",
    "save_deca_checkpoint",
]

#: the state dicts of the official checkpoint, in order
NETWORK_NAMES: tuple[str, str, str] = ("E_flame", "E_detail", "D_detail")
#: how many problems an error message spells out
_MAX_LISTED = 6


class CheckpointError(DecaError, ValueError):
    """A DECA checkpoint that cannot be used. ``path`` names the file; ``problems`` lists the
    individual mismatches when the file was readable but holds another architecture."""

    def __init__(self, path: str | os.PathLike, message: str, problems: list[str] | None = None) -> None:
        self.path = Path(path)
        self.problems = list(problems or [])
        super().__init__(f"{self.path}: {message}")


class TensorSpec(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype


# --------------------------------------------------------------------------------------------
# the networks


@dataclass
class DecaNetworkOutput:
    codes: FlameCodes
    detail: torch.Tensor  # (B, 128)
    displacement: torch.Tensor  # (B, 1, 256, 256)


class DecaNetworks(nn.Module):
    """``E_flame``, ``E_detail`` and ``D_detail`` as one module (``.to()``, ``.eval()`` apply to all)."""

    def __init__(self, E_flame: FlameEncoder | None = None, E_detail: DetailEncoder | None = None,
                 D_detail: DetailDecoder | None = None) -> None:
        super().__init__()
        self.E_flame = E_flame if E_flame is not None else FlameEncoder()
        self.E_detail = E_detail if E_detail is not None else DetailEncoder()
        self.D_detail = D_detail if D_detail is not None else DetailDecoder()

    def encode(self, images: torch.Tensor) -> tuple[FlameCodes, torch.Tensor]:
        """Images (B, 3, 224, 224) RGB in [0, 1] -> (FLAME codes, detail code (B, 128))."""
        return self.E_flame.encode(images), self.E_detail(images)

    def decode_detail(self, codes: FlameCodes, detail: torch.Tensor) -> torch.Tensor:
        """UV displacement (B, 1, 256, 256) for the codes' jaw pose and expression and a detail code."""
        return self.D_detail.decode(codes.jaw_pose, codes.exp, detail)

    def forward(self, images: torch.Tensor) -> DecaNetworkOutput:
        codes, detail = self.encode(images)
        return DecaNetworkOutput(codes, detail, self.decode_detail(codes, detail))

    def infer(self, images: torch.Tensor, bf16: bool = False) -> DecaNetworkOutput:
        """Inference (``torch.inference_mode``, current train/eval mode kept; call ``.eval()`` first).
        ``bf16=True`` runs under bfloat16 autocast (about 2x faster on CPUs with AMX/AVX512-BF16, relative
        error ~1e-2); the outputs are always returned in ``images.dtype``."""
        ctx = torch.autocast(images.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            out = self(images)
        dt = images.dtype
        codes = FlameCodes(**{k: v.to(dt) for k, v in out.codes.as_dict().items()})
        return DecaNetworkOutput(codes, out.detail.to(dt), out.displacement.to(dt))

    def official_state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"E_flame": ..., "E_detail": ..., "D_detail": ...}`` as in the release."""
        return {name: getattr(self, name).state_dict() for name in NETWORK_NAMES}


def build_deca_networks(device: torch.device | str | None = None,
                        dtype: torch.dtype | None = None) -> DecaNetworks:
    """Randomly initialised networks (for training from scratch or tests)."""
    nets = DecaNetworks()
    return nets.to(device=device, dtype=dtype) if (device is not None or dtype is not None) else nets


# --------------------------------------------------------------------------------------------
# the expected layout, from the definitions themselves


_Layout = tuple[tuple[str, tuple[tuple[str, TensorSpec], ...]], ...]
#: the expected layout, once per process (`_layout_cached`)
_LAYOUT: _Layout | None = None


def _layout_cached(built: DecaNetworks | None = None) -> _Layout:
    """The layout of freshly built (not yet loaded) networks. ``built``: such networks, when the caller has
    them anyway (`load_deca_checkpoint` builds them on the meta device to load into): the layout is read
    from them instead of building all three networks a second time (~0.1 s of a cold start)."""
    global _LAYOUT
    if _LAYOUT is None:
        if built is None:
            with torch.device("meta"):  # no memory, no random initialisation cost
                built = DecaNetworks()
        _LAYOUT = tuple(
            (name, tuple((k, TensorSpec(tuple(v.shape), v.dtype)) for k, v in getattr(built, name).state_dict().items()))
            for name in NETWORK_NAMES)
    return _LAYOUT


def expected_state_dict_layout() -> dict[str, dict[str, TensorSpec]]:
    """``{network: {tensor name: TensorSpec(shape, dtype)}}`` of the three state dicts, in
    state-dict order, derived from the network classes (built on the meta device: cheap)."""
    return {name: dict(entries) for name, entries in _layout_cached()}


def expected_layout_manifest() -> dict[str, list[list[Any]]]:
    """The expected layout in the format of ``state_dict_manifest.json``:
    ``{network: [[name, [shape...], "float32"], ...]}``."""
    return {
        name: [[k, list(spec.shape), str(spec.dtype).removeprefix("torch.")] for k, spec in entries]
        for name, entries in _layout_cached()
    }


def _describe_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(int(s)) for s in shape) + ")"


def compare_layout(found: Mapping[str, Mapping[str, Any]],
                   expected: Mapping[str, Mapping[str, TensorSpec]] | None = None) -> list[str]:
    """Problems between state dicts ``found`` (``{network: {name: tensor}}``) and the expected
    layout: missing tensors, unexpected tensors, shape mismatches, integer/float mismatches.
    A float tensor of another precision is not a problem (it is converted on loading)."""
    expected = expected_state_dict_layout() if expected is None else expected
    problems: list[str] = []
    for net, specs in expected.items():
        sd = found.get(net)
        if sd is None:
            problems.append(f"{net}: state dict missing")
            continue
        if not isinstance(sd, Mapping):
            problems.append(f"{net}: is a {type(sd).__name__}, not a state dict")
            continue
        for key, spec in specs.items():
            if key not in sd:
                problems.append(f"{net}: missing tensor {key!r} (expected shape {_describe_shape(spec.shape)})")
                continue
            t = sd[key]
            if not isinstance(t, torch.Tensor):
                problems.append(f"{net}: {key!r} is a {type(t).__name__}, not a tensor")
                continue
            if tuple(t.shape) != spec.shape:
                problems.append(f"{net}: {key!r} has shape {_describe_shape(tuple(t.shape))}, "
                                f"expected {_describe_shape(spec.shape)}")
            elif t.dtype.is_floating_point != spec.dtype.is_floating_point or t.dtype.is_complex:
                problems.append(f"{net}: {key!r} has dtype {t.dtype}, expected {spec.dtype}")
        for key in sd:
            if key not in specs:
                t = sd[key]
                shape = _describe_shape(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
                problems.append(f"{net}: unexpected tensor {key!r} {shape}")
    return problems


# --------------------------------------------------------------------------------------------
# reading


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return lines[0] if lines else ""


def _weights_only_reason(message: str) -> str:
    """The informative line of torch's weights_only refusal (e.g. 'unsupported GLOBAL posix.system')."""
    for ln in message.splitlines():
        s = ln.strip()
        if s.startswith(("Trying to load unsupported GLOBAL", "Unsupported global", "Unsupported operand",
                         "Unsupported class")):
            return s
        if "WeightsUnpickler error:" in s and s.split("WeightsUnpickler error:", 1)[1].strip():
            return s.split("WeightsUnpickler error:", 1)[1].strip()
    return "it needs Python objects other than tensors and plain containers"


def _torch_load(path: Path, map_location: Any, mmap: bool) -> Any:
    with warnings.catch_warnings():  # torch's note on non-default pickle protocols is noise here
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        try:
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except (RuntimeError, ValueError) as e:
            # mmap needs the zip format (torch >= 1.6); fall back for legacy files
            if mmap and "mmap" in str(e):
                return torch.load(path, map_location=map_location, weights_only=True)
            raise


def _read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False
                     ) -> dict[str, Mapping[str, Any]]:
    """Load and check the top-level structure; returns ``{network: state dict}`` (extras dropped)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "checkpoint file not found")
    if p.is_dir():
        raise CheckpointError(p, "is a directory, not a checkpoint file")
    if p.stat().st_size == 0:
        raise CheckpointError(p, "checkpoint file is empty (0 bytes)")
    try:
        obj = _torch_load(p, map_location, mmap)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise CheckpointError(
                p, "refused: the file is not a plain weights file; loading it would need arbitrary Python "
                   f"objects, which weights_only=True does not allow ({_weights_only_reason(str(e))})"
            ) from None
        raise CheckpointError(p, f"cannot be read as a torch checkpoint (corrupt or not a torch.save file): "
                                 f"{_first_line(str(e))}") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, KeyError, ValueError, AttributeError,
            IndexError, TypeError, UnicodeDecodeError) as e:
        detail = _first_line(str(e)) or type(e).__name__
        raise CheckpointError(p, f"cannot be read as a torch checkpoint (truncated or corrupt file?): "
                                 f"{type(e).__name__}: {detail}") from None

    if not isinstance(obj, Mapping):
        raise CheckpointError(p, f"holds a {type(obj).__name__}, not a dict of the state dicts "
                                 f"{', '.join(NETWORK_NAMES)}; this is not a DECA checkpoint")
    missing = [n for n in NETWORK_NAMES if n not in obj]
    if missing:
        keys = [str(k) for k in obj.keys()]
        shown = ", ".join(repr(k) for k in keys[:10]) + (f", ... ({len(keys)} keys)" if len(keys) > 10 else "")
        hint = ""
        if any(k.rsplit(".", 1)[-1] in ("weight", "bias", "running_mean") for k in keys):
            hint = " (it looks like a single network's state dict, not DECA's checkpoint)"
        raise CheckpointError(p, f"not a DECA checkpoint: missing {', '.join(missing)}; "
                                 f"its top-level keys are [{shown or 'none'}]{hint}")
    out: dict[str, Mapping[str, Any]] = {}
    for n in NETWORK_NAMES:
        if not isinstance(obj[n], Mapping):
            raise CheckpointError(p, f"not a DECA checkpoint: {n} is a {type(obj[n]).__name__}, not a state dict")
        out[n] = obj[n]
    return out


def _architecture_error(path: Path, problems: list[str]) -> CheckpointError:
    listed = "; ".join(problems[:_MAX_LISTED])
    more = f"; ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return CheckpointError(
        path, f"checkpoint does not match DECA's architecture ({len(problems)} problem"
              f"{'s' if len(problems) != 1 else ''}): {listed}{more}", problems)


def verify_checkpoint(path: str | os.PathLike) -> list[str]:
    """Problems with a checkpoint file, ``[]`` when it is usable. Nothing is built and no tensor data
    is read (the file is loaded onto the meta device); each problem is a readable sentence."""
    try:
        sds = _read_checkpoint(path, map_location="meta", mmap=True)
    except CheckpointError as e:
        return [str(e)]
    return compare_layout(sds)


def load_deca_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu",
                         dtype: torch.dtype | None = None) -> DecaNetworks:
    """Read DECA's checkpoint into :class:`DecaNetworks` on ``device`` (float32 unless ``dtype``),
    in eval mode. Raises :class:`CheckpointError` (message names the file) when it is missing,
    unreadable, unsafe, or of another architecture."""
    p = Path(path)
    sds = _read_checkpoint(p, map_location="cpu", mmap=True)
    with torch.device("meta"):
        nets = DecaNetworks()
    layout = {name: dict(entries) for name, entries in _layout_cached(nets)}  # before anything is loaded
    problems = compare_layout(sds, layout)
    if problems:
        raise _architecture_error(p, problems)
    # assign=True puts the (mmap'd) checkpoint tensors themselves into the meta module: no allocation and
    # no copy, and no meta ``to_empty``, whose Python decompositions cost ~1.7 s on a cold start.
    for name in NETWORK_NAMES:
        # another float precision is converted here (assign keeps the given tensors' dtypes); a tensor of
        # the expected dtype is used as is
        sd = {k: v.to(layout[name][k].dtype) for k, v in sds[name].items()}
        getattr(nets, name).load_state_dict(sd, strict=True, assign=True)
    nets = nets.to(device=device)
    if dtype is not None:
        nets = nets.to(dtype=dtype)
    return nets.eval()


# --------------------------------------------------------------------------------------------
# writing


def save_deca_checkpoint(nets: DecaNetworks | Mapping[str, nn.Module | Mapping[str, torch.Tensor]],
                         path: str | os.PathLike, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the official layout ``{"E_flame": sd, "E_detail": sd, "D_detail": sd, **extra}``
    (tensors on the CPU) atomically: a temporary file in the same folder, then ``os.replace``."""
    p = Path(path)
    if isinstance(nets, DecaNetworks):
        parts: Mapping[str, Any] = {n: getattr(nets, n) for n in NETWORK_NAMES}
    else:
        parts = nets
    payload: dict[str, Any] = {}
    for n in NETWORK_NAMES:
        if n not in parts:
            raise ValueError(f"cannot save a DECA checkpoint without {n}")
        part = parts[n]
        sd = part.state_dict() if isinstance(part, nn.Module) else part
        payload[n] = {k: v.detach().cpu() for k, v in sd.items()}
    for k, v in (extra or {}).items():
        if k in NETWORK_NAMES:
            raise ValueError(f"extra key {k!r} would overwrite a network")
        payload[k] = v
    atomic_write_bytes(p, lambda f: torch.save(payload, f))
    return p
