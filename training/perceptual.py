"""The two losses that need pretrained networks the user supplies: identity (face recognition) and ID-MRF.

Neither network's weights ship with the project. Without them the losses are off and the trainer says so
in its log; with them:

* **Identity** (paper L_id): DECA used a VGGFace2 ResNet-50 and the cosine similarity of its features of the
  input and of the render (composited over the input). :func:`load_face_recognition` accepts a TorchScript
  file (any network ``images -> embedding``) or a state dict of a ResNet-50 with torchvision parameter names
  (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., optional ``fc``), with the down-sampling stride on the 1x1
  convolution (caffe-converted VGGFace2 models) or on the 3x3 (torchvision). The embedding is the pooled
  2048-d feature.
* **ID-MRF** (paper L_mrf, from Wang et al. 2018): implicit-diversity Markov random field loss on VGG-19
  features (torchvision ``features.*`` names) of the detail render and the input.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import DecaError

__all__ = ["FaceResNet50", "load_face_recognition", "IdentityLoss", "VGG19Features", "IdMrfLoss",
           "VGG19_LAYERS", "PretrainedWeightsError",
           "load_numpy_pickle"]


class PretrainedWeightsError(DecaError, ValueError):
    """A weights file for the identity or ID-MRF network that cannot be used (message names the file)."""


# ---------------------------------------------------------------------------------------------- ResNet-50

class _Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int, stride_in_1x1: bool, downsample: bool) -> None:
        super().__init__()
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(cin, width, 1, stride=s1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=s3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, width * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width * 4)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, width * 4, 1, stride=stride, bias=False),
                                         nn.BatchNorm2d(width * 4)) if downsample else None)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class FaceResNet50(nn.Module):
    """ResNet-50 returning the pooled 2048-d feature (the face-recognition embedding)."""

    def __init__(self, stride_in_1x1: bool = True, caffe_maxpool: bool = False) -> None:
        super().__init__()
        #: VGGFace2's Caffe-converted model pools with padding 0 and ceil_mode (torchvision: padding 1)
        self.caffe_maxpool = bool(caffe_maxpool)
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for i, (width, n, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1):
            blocks = []
            for b in range(n):
                blocks.append(_Bottleneck(cin, width, stride if b == 0 else 1, stride_in_1x1, b == 0))
                cin = width * 4
            setattr(self, f"layer{i}", nn.Sequential(*blocks))

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if self.caffe_maxpool:
            x = F.max_pool2d(x, 3, stride=2, padding=0, ceil_mode=True)
        else:
            x = F.max_pool2d(x, 3, stride=2, padding=1)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return x.mean(dim=(2, 3))


def _load_tensor_dict(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PretrainedWeightsError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            out[k.removeprefix("module.")] = v
    return out


#: what a VGGFace2 weights pickle (``resnet50_ft_weight.pkl``: a dict of numpy arrays) may construct
_NUMPY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                  ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                  ("numpy._core.multiarray", "scalar"), ("collections", "OrderedDict"),
                  ("_codecs", "encode")}  # protocol-2 pickles written by Python 3 store bytes this way


def load_numpy_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A pickled ``{name: numpy array}`` (DECA's ``resnet50_ft_weight.pkl``, Python 2 pickles included),
    read with an unpickler that can build numpy arrays and nothing else: a pickle asking for any other
    callable is refused before it runs. Raises :class:`PretrainedWeightsError`."""
    import pickle

    p = Path(path)

    class _NumpyOnly(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in _NUMPY_GLOBALS:
                return super().find_class(module, name)
            raise PretrainedWeightsError(f"{p}: refused: the pickle asks for {module}.{name} (only numpy arrays "
                                         f"are read from a weights pickle)")

    try:
        with open(p, "rb") as f:
            obj = _NumpyOnly(f, encoding="latin1").load()
    except PretrainedWeightsError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or not a pickle
        raise PretrainedWeightsError(f"{p}: not a readable pickle of numpy arrays ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise PretrainedWeightsError(f"{p}: expected a dict of numpy arrays, got {type(obj).__name__}")
    return {str(k): v for k, v in obj.items()}


def _is_pickle(p: Path) -> bool:
    with open(p, "rb") as f:
        head = f.read(2)
    return head[:1] == b"\x80" or p.suffix == ".pkl"


def _is_zip(p: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(p)


def _is_torchscript(p: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            return any("/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _load_checked(net: nn.Module, sd: dict, p: Path, what: str) -> None:
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(own[k].shape)})" for k in own
             if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        raise PretrainedWeightsError(f"{p}: not {what} (missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
                                     f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}, "
                                     f"wrong shapes {wrong[:3]})")
    net.load_state_dict(sd)


def load_face_recognition(path: str | os.PathLike, stride_in_1x1: bool = True) -> nn.Module:
    """A frozen face-recognition network from TorchScript or a ResNet-50 state dict (see module docstring)."""
    p = Path(path)
    if not p.is_file():
        raise PretrainedWeightsError(f"{p}: face-recognition weights not found")
    if _is_torchscript(p):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                net = torch.jit.load(str(p), map_location="cpu")
            except Exception as e:  # noqa: BLE001
                raise PretrainedWeightsError(f"{p}: cannot load the TorchScript network ({e})") from None
    elif _is_pickle(p) and not _is_zip(p):
        # DECA's resnet50_ft_weight.pkl: VGGFace2's Caffe-style ResNet-50 (stride in the 1x1, max-pool padding 0
        # with ceil_mode), 8631-class fc dropped: the embedding is the pooled 2048-d feature
        arrays = load_numpy_pickle(p)
        sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()
              if not k.startswith(("fc.", "classifier."))}
        own = FaceResNet50().state_dict()
        sd = {k: (v.to(own[k].dtype) if k in own else v) for k, v in sd.items()}
        for k in own:  # converted Caffe weights carry no batch counters
            if k.endswith("num_batches_tracked") and k not in sd:
                sd[k] = torch.zeros((), dtype=torch.long)
        net = FaceResNet50(stride_in_1x1=True, caffe_maxpool=True)
        _load_checked(net, sd, p, "a VGGFace2 ResNet-50 weights pickle")
    else:
        try:
            sd = _load_tensor_dict(p)
        except PretrainedWeightsError:
            raise
        except Exception as e:  # noqa: BLE001 - any unreadable file
            raise PretrainedWeightsError(f"{p}: neither TorchScript nor a readable state dict ({e})") from None
        net = FaceResNet50(stride_in_1x1=stride_in_1x1)
        sd = {k: v for k, v in sd.items() if not k.startswith(("fc.", "classifier."))}
        _load_checked(net, sd, p, "a ResNet-50 with torchvision parameter names")
    net.eval()
    for q in net.parameters():
        q.requires_grad_(False)
    return net


class IdentityLoss(nn.Module):
    """``1 - cos(f(I), f(I_r))`` per image, with the network's preprocessing (resize, BGR, scale, mean)."""

    def __init__(self, net: nn.Module, input_size: int = 224, bgr: bool = True, input_scale: float = 255.0,
                 mean: Sequence[float] = (91.4953, 103.8827, 131.0912), crop_margin: int = 0,
                 release_scaling: bool = False) -> None:
        super().__init__()
        #: DECA's VGGFace2Loss: after the mean subtraction, crop ``crop_margin`` pixels on every side, then
        #: ``x * 2 - 1`` and a bilinear resize back to ``input_size``
        self.crop_margin = int(crop_margin)
        self.release_scaling = bool(release_scaling)
        self.net = net
        self.input_size = int(input_size)
        self.bgr = bool(bgr)
        self.input_scale = float(input_scale)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):  # the network stays frozen
        super().train(False)
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        if self.bgr:
            x = x.flip(1)
        x = x * self.input_scale - self.mean.to(x)
        m = self.crop_margin
        if m > 0 or self.release_scaling:
            if m > 0:
                x = x[..., m:x.shape[-2] - m, m:x.shape[-1] - m]
            if self.release_scaling:
                x = x * 2.0 - 1.0
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.net(x)

    def forward(self, images: torch.Tensor, rendered: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.features(images)
        from .losses import cosine_identity_loss

        return cosine_identity_loss(self.features(rendered), target)


# ---------------------------------------------------------------------------------------------- VGG-19

#: name -> index in torchvision's ``vgg19().features`` after which the feature is taken
VGG19_LAYERS = {}
_cfg = [(1, 64), (1, 64), "M", (2, 128), (2, 128), "M", (3, 256), (3, 256), (3, 256), (3, 256), "M",
        (4, 512), (4, 512), (4, 512), (4, 512), "M", (5, 512), (5, 512), (5, 512), (5, 512), "M"]


def _vgg_layers() -> list:
    layers, idx, counts = [], 0, {}
    cin = 3
    for item in _cfg:
        if item == "M":
            layers.append(("pool", None))
            idx += 1
            continue
        stage, cout = item
        counts[stage] = counts.get(stage, 0) + 1
        layers.append(("conv", (cin, cout)))
        layers.append(("relu", None))
        VGG19_LAYERS[f"relu{stage}_{counts[stage]}"] = idx + 1
        idx += 2
        cin = cout
    return layers


_VGG_SPEC = _vgg_layers()


class VGG19Features(nn.Module):
    """torchvision's VGG-19 ``features`` (same indices), run up to the deepest requested layer."""

    def __init__(self) -> None:
        super().__init__()
        mods = []
        for kind, arg in _VGG_SPEC:
            if kind == "conv":
                mods.append(nn.Conv2d(arg[0], arg[1], 3, padding=1))
            elif kind == "relu":
                mods.append(nn.ReLU(inplace=False))
            else:
                mods.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*mods)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor, indices: Sequence[int]) -> list[torch.Tensor]:
        x = (x - self.mean.to(x)) / self.std.to(x)
        want = set(indices)
        out = {}
        for i, m in enumerate(self.features):
            x = m(x)
            if i in want:
                out[i] = x
                if len(out) == len(want):
                    break
        return [out[i] for i in indices]


class IdMrfLoss(nn.Module):
    """ID-MRF: for each target feature vector, how strongly its best-matching rendered feature prefers it
    over the other targets (relative cosine similarity, normalised with bandwidth ``h``); the loss is
    ``-log`` of the mean over targets, per image and summed over layers with ``layer_weights``."""

    def __init__(self, vgg: VGG19Features, layers: Sequence[str] = ("relu3_2", "relu4_2"),
                 layer_weights: Sequence[float] = (1.0, 1.0), bandwidth: float = 0.5, input_size: int = 224,
                 formula: str = "paper") -> None:
        super().__init__()
        if formula not in ("paper", "release"):
            raise ValueError(f"formula must be paper or release, got {formula!r}")
        #: ``release``: ``forward`` returns the released batch *sum* of ``release_losses.release_mrf_layer``
        #: per layer (its channel-mean centring, ``(1 - cos) / 2``), the images compared at their own size
        self.formula = formula
        unknown = [n for n in layers if n not in VGG19_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG-19 layers {unknown}; choose from {', '.join(VGG19_LAYERS)}")
        self.vgg = vgg.eval()
        for q in self.vgg.parameters():
            q.requires_grad_(False)
        self.indices = [VGG19_LAYERS[n] for n in layers]
        self.layer_weights = [float(w) for w in layer_weights]
        self.h = float(bandwidth)
        self.input_size = int(input_size)

    def train(self, mode: bool = True):
        super().train(False)
        return self

    @staticmethod
    def _mrf(gen: torch.Tensor, tar: torch.Tensor, h: float) -> torch.Tensor:
        B, C = gen.shape[:2]
        mu = tar.mean(dim=(2, 3), keepdim=True)
        g = F.normalize((gen - mu).reshape(B, C, -1), dim=1)
        t = F.normalize((tar - mu).reshape(B, C, -1), dim=1)
        cos = torch.bmm(g.transpose(1, 2), t)  # (B, Ng, Nt)
        dist = 1.0 - cos
        rel = dist / (dist.min(dim=2, keepdim=True).values + 1e-5)
        w = torch.exp((1.0 - rel) / h)
        cx = w / w.sum(dim=2, keepdim=True)
        best = cx.max(dim=1).values.mean(dim=1)  # (B,)
        return -torch.log(best + 1e-5)

    def forward(self, rendered: torch.Tensor, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            rendered, images = rendered * mask, images * mask
        if self.formula == "release":
            from .release_losses import release_mrf_layer

            with torch.no_grad():
                tf = self.vgg(images, self.indices)
            gf = self.vgg(rendered, self.indices)
            return sum(w * release_mrf_layer(g.float(), t.float(), self.h) for w, g, t in zip(self.layer_weights, gf, tf))
        if rendered.shape[-1] != self.input_size:
            size = (self.input_size, self.input_size)
            rendered = F.interpolate(rendered, size=size, mode="bilinear", align_corners=False)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        with torch.no_grad():
            tf = self.vgg(images, self.indices)
        gf = self.vgg(rendered, self.indices)
        total = rendered.new_zeros(rendered.shape[0])
        for w, g, t in zip(self.layer_weights, gf, tf):
            total = total + w * self._mrf(g.float(), t.float(), self.h)
        return total


def load_vgg19(path: str | os.PathLike) -> VGG19Features:
    p = Path(path)
    if not p.is_file():
        raise PretrainedWeightsError(f"{p}: VGG-19 weights not found")
    try:
        sd = _load_tensor_dict(p)
    except PretrainedWeightsError:
        raise
    except Exception as e:  # noqa: BLE001
        raise PretrainedWeightsError(f"{p}: not a readable state dict ({e})") from None
    sd = {k: v for k, v in sd.items() if k.startswith("features.")}
    net = VGG19Features()
    _load_checked(net, sd, p, "torchvision VGG-19 weights")
    return net.eval()
