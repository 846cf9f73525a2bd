"""Training configuration: dataclasses with a default for every option, read from YAML.

A config file holds any subset of the sections below; whatever it leaves out takes the default of its preset
(``loss.formulas``: ``release``, DECA's released training code, or ``paper``; see ``PRESETS``), else the
dataclass default. Unknown
keys are rejected with a message naming the key, where it was found, the valid keys and the closest one,
so a typo never silently trains with a default. Every option is documented in ``docs/training.md``.

    stage: coarse            # pretrain | coarse | detail
    output_dir: runs/coarse
    data:   {root: ..., identities_per_batch: 8, images_per_identity: 2, ...}
    model:  {flame: ..., data_dir: ..., init_from: ..., encoder_trainable_layers: all, bn_mode: train, ...}
    loss:   {formulas: release, lmk: 1.0, eye: 1.0, pho: 2.0, id: 0.2, sc: 1.0, ...}
    identity: {weights: null, ...}
    mrf:    {vgg_weights: null, ...}
    optim:  {lr: 1.0e-4, ...}
    train:  {max_steps: 1000, seed: 0, device: auto, amp: auto, ...}
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, get_origin, get_type_hints

from core.errors import DecaError

__all__ = [
    "STAGES", "ConfigError", "DataConfig", "ModelConfig", "LossConfig", "IdentityConfig", "MrfConfig",
    "OptimConfig", "TrainConfig", "TrainingConfig", "load_config", "config_from_dict", "config_to_dict",
    "PRESETS", "apply_preset",
]

STAGES = ("pretrain", "coarse", "detail")
TRAINABLE_LAYERS = ("all", "layer2", "layer3", "layer4", "heads")
BN_MODES = ("frozen", "train", "sync")
LR_DECAYS = ("none", "cosine", "step")
AMP_MODES = ("auto", "off", "fp16", "bf16")


class ConfigError(DecaError, ValueError):
    """A configuration that cannot be used; the message says which key and why."""


@dataclass
class DataConfig:
    #: dataset folder laid out as ``<root>/<identity>/<image>.png`` + ``<image>.npz`` (see training.data)
    root: str = ""
    #: identities per batch **per process**; each brings ``images_per_identity`` images
    identities_per_batch: int = 8
    #: K: images of one identity in a batch (DECA: 4 in the coarse stage, 3 in the detail stage)
    images_per_identity: int = 4
    #: identities with fewer images are skipped (with K > 1 the shape/detail consistency losses need >= 2)
    min_images_per_identity: int = 1
    #: DataLoader worker processes (0: load in the training process; the released code uses 2). Each worker
    #: runs one thread; batches do not depend on the number (every random choice is the sample's own seed)
    num_workers: int = 2
    #: ``release``: re-cut every sample from its full image with a random scale of the landmark box, as DECA's
    #: released loaders do (training/data.py); ``fixed``: the stored 224 crop (no full image needed)
    crop: str = "release"
    #: the re-crop's scale range (released 1.4-1.8) and centre shift (+- fraction of the box; released 0)
    crop_scale: list = field(default_factory=lambda: [1.4, 1.8])
    crop_shift: float = 0.0
    #: random crop jitter for augmentation: relative scale change (+-) and shift (+- fraction of the crop)
    scale_jitter: float = 0.0
    shift_jitter: float = 0.0


@dataclass
class ModelConfig:
    #: FLAME model file (generic_model.pkl / .npz); empty: the installed asset (deca-blender assets)
    flame: str = ""
    #: folder laid out like DECA's ``data/`` (template, embedding, masks, ...); empty: the installed assets
    data_dir: str = ""
    #: optional FLAME albedo space (.npz with ``mean`` and ``basis``); without it the albedo is the mean texture
    texture_space: str = ""
    #: weights to start from: an official ``deca_model.tar`` or a checkpoint written by this trainer
    init_from: str = ""
    #: which parts of the ResNet-50 trunks are trained: all | layer2 | layer3 | layer4 (that stage and later) | heads
    encoder_trainable_layers: str = "all"
    #: batch norm: frozen (eval-mode statistics, the default for fine-tuning; DDP matches one process exactly),
    #: train (batch statistics per process), sync (SyncBatchNorm across processes; CUDA only)
    bn_mode: str = "train"
    #: without ``init_from``: estimate the batch-norm statistics of the freshly initialised networks on this
    #: many training images before training (0: keep mean 0 / variance 1)
    bn_calibration_images: int = 64
    #: images per forward pass of that estimate
    bn_calibration_chunk: int = 16
    #: without ``init_from``: set E_flame's output bias to the dataset's mean camera (fitted to the landmarks)
    #: and a white ambient light, and shrink the last layer's weights by ``head_init_gain``
    init_head_from_data: bool = True
    head_init_gain: float = 0.1
    #: E_flame's ResNet blocks per stage (DECA: [3, 4, 6, 3], a ResNet-50). Fewer (e.g. [1, 1, 1, 1]) is a
    #: REDUCED encoder for tests and debugging on a CPU: such a run exports no deca_model.tar
    encoder_blocks: list = field(default_factory=lambda: [3, 4, 6, 3])
    #: side E_flame resizes its input to (DECA: 224; smaller is a reduced encoder, as above)
    encoder_input_size: int = 224
    #: E_flame's head predicts standardised codes, ``code = mean + std * z`` (training/head.py): one Adam step
    #: then moves every code by about its own spread (the camera scale ~10 +-1.5 no longer lags). Pretrain and
    #: coarse only; checkpoints and the export keep DECA's layout (folded back into the last layer)
    standardise_head: bool = False
    #: that head's std per code group (shape, exp, pose, tex, cam, light; absent: 1); the camera's is
    #: measured from the calibration images' landmarks unless given here
    head_code_std: dict = field(default_factory=dict)


@dataclass
class LossConfig:
    """Loss weights (DECA paper, Sec. 4 / 5, unless noted in docs/training.md). 0 turns a term off."""

    #: the preset: how every term is computed and reduced, and the defaults of the keys in ``PRESETS``.
    #: ``release`` (default; DECA's released trainer: weighted landmarks normalised per coordinate, eyelid / lip
    #: *distances*, regularisers summed over the batch ``sum(x^2)/2``, the render masked by the UV face-eye region,
    #: shape / detail consistency as a doubled batch, the detail losses in UV space, batch statistics) or
    #: ``paper`` (the paper's per-image terms averaged over the batch, frozen batch norm). Table: docs/training.md
    formulas: str = "release"
    # coarse stage (pretrain uses lmk, eye, lip and the shape / expression regularizers only)
    lmk: float = 1.0
    eye: float = 1.0
    lip: float = 0.5
    pho: float = 2.0
    id: float = 0.2
    sc: float = 1.0
    reg_shape: float = 1e-4
    reg_exp: float = 1e-4
    reg_tex: float = 1e-4
    reg_light: float = 1.0
    reg_jaw: float = 0.0
    #: optional 68 per-landmark weights for lmk (empty: all 1, as in the paper)
    landmark_weights: list = field(default_factory=list)
    # detail stage
    pho_detail: float = 2.0
    mrf: float = 5e-2
    sym: float = 5e-3
    dc: float = 1.0
    reg_detail: float = 5e-3
    #: released shading smoothness of the detail stage's UV shading (``reg_diff``; release formulas only)
    reg_shading: float = 5e-3


@dataclass
class IdentityConfig:
    """The face-recognition network of the identity loss (DECA: VGGFace2 ResNet-50). Off without weights."""

    #: TorchScript file (any network: images -> embedding) or a state dict of a ResNet-50 (torchvision names)
    weights: str = ""
    #: for state dicts: where the down-sampling stride sits (caffe-converted VGGFace2 models: 1x1)
    stride_in_1x1: bool = True
    #: input preprocessing: resize to this size, RGB->BGR when ``bgr``, scale by ``input_scale``, minus ``mean``
    input_size: int = 224
    bgr: bool = True
    input_scale: float = 255.0
    mean: list = field(default_factory=lambda: [91.4953, 103.8827, 131.0912])
    #: DECA's VGGFace2Loss (release): crop this margin (pixels) after the mean subtraction ...
    crop_margin: int = 10
    #: ... then ``x * 2 - 1`` and a bilinear resize back to ``input_size`` (false: the paper's plain input)
    release_scaling: bool = True


@dataclass
class MrfConfig:
    """ID-MRF loss of the detail stage; needs VGG-19 weights (torchvision ``features.*`` names). Off without."""

    vgg_weights: str = ""
    #: VGG-19 layers compared (standard names: ``reluS_N`` is the ReLU after conv N of stage S). The released
    #: ``VGG19FeatLayer`` counts convolutions and ReLUs together, so its "relu3_2" / "relu4_2" are the standard
    #: relu3_1 / relu4_1, and relu4_2 (released name) enters twice (style and content): the release preset's
    #: ``[relu3_1, relu4_1]`` with weights ``[1, 2]``
    layers: list = field(default_factory=lambda: ["relu3_1", "relu4_1"])
    layer_weights: list = field(default_factory=lambda: [1.0, 2.0])
    bandwidth: float = 0.5
    #: images are resized to this size before VGG (memory)
    input_size: int = 224


@dataclass
class OptimConfig:
    #: Adam learning rate (DECA: 1e-4)
    lr: float = 1e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    #: Adam's epsilon (DECA: torch's default 1e-8). Far above the gradients it makes Adam's step linear in the
    #: gradient (``lr / eps * m``): elements whose gradient is rounding noise then move by noise, not by a
    #: full +-lr of random sign (tests/test_training_runs.py's DDP comparison uses that)
    eps: float = 1e-8
    weight_decay: float = 0.0
    #: clip the global gradient norm (0: off)
    grad_clip: float = 0.0
    #: linear learning-rate warm-up over this many steps (0: off; DECA used none)
    warmup_steps: int = 0
    #: learning-rate decay over the end of the run (DECA's released code keeps lr constant: none):
    #: none | cosine (half a cosine from lr down to lr * decay_to at train.max_steps) | step (lr * decay_to).
    #: Constant-lr Adam leaves the weights as noisy as its last steps; the finest quantities (the camera scale)
    #: need the smaller steps at the end (docs/training.md, "Does it learn?"). A function of the step only, so
    #: a resumed run continues the schedule exactly
    decay: str = "none"
    #: where the decay starts, as a fraction of train.max_steps
    decay_start: float = 0.7
    #: the learning rate's final factor
    decay_to: float = 0.1


@dataclass
class TrainConfig:
    max_steps: int = 1000
    seed: int = 0
    #: auto (cuda when available) | cpu | cuda | cuda:N
    device: str = "auto"
    #: mixed precision: auto (fp16 + GradScaler on CUDA, off on CPU) | off | fp16 | bf16
    amp: str = "auto"
    #: CPU threads per process (0: torch's default divided by the local process count)
    threads: int = 0
    log_every: int = 10
    vis_every: int = 500
    checkpoint_every: int = 1000
    #: training checkpoints kept (oldest deleted; ``latest.pt`` always kept)
    keep_checkpoints: int = 3
    #: auto (continue from output_dir/checkpoints/latest.pt when present) | never | a checkpoint path
    resume: str = "auto"
    #: write output_dir/deca_model.tar (official layout) at the end
    export_on_finish: bool = True
    #: stop after this many steps of this run (0: run to max_steps); checkpoints first (for schedulers)
    stop_after: int = 0
    tensorboard: bool = True
    #: logged steps kept in memory in ``TrainResult.history`` (the newest; metrics.jsonl keeps them all)
    history_limit: int = 10000
    #: validate every this many steps (0: never) on ``val_root``: ``training.evaluate.evaluate`` errors
    #: (landmark px; parameter errors on synthetic sets) to TensorBoard ``val/*`` and ``metrics.jsonl``
    eval_every: int = 0
    #: validation dataset folder (same layout as data.root)
    val_root: str = ""
    #: with eval_every: a grid of the first this many validation images (input crop, the dataset's and the
    #: predicted 68 landmarks, the shaded predicted shape) to output_dir/val/step_XXXXXXX.png and TensorBoard
    #: ``val/images`` (0: none; training/visualise.py)
    val_images: int = 8
    #: NoW evaluation every this many steps (0: never), as DECA's released trainer runs it (``eval_steps``):
    #: neutral meshes of E_flame for NoW's validation images, median / mean / std scan-to-mesh error in mm to
    #: TensorBoard ``now/*`` and ``metrics.jsonl``; predictions kept in ``output_dir/now/step_XXXXXXX``
    now_every: int = 0
    #: NoW dataset root as shipped (``imagepathsvalidation.txt``, ``scans/``, ``scans_lmks_onlypp/``)
    now_root: str = ""
    #: face crops of those images, ``<subject>/<experiment>/<image stem>.png`` (224x224; other sizes are resized);
    #: empty: ``<now_root>/crops``
    now_crops: str = ""
    #: torch.use_deterministic_algorithms (slower on CUDA; CPU runs are deterministic anyway)
    deterministic: bool = False
    #: distributed backend when launched by torchrun: auto (nccl on CUDA, gloo on CPU) | gloo | nccl
    dist_backend: str = "auto"


@dataclass
class TrainingConfig:
    stage: str = "coarse"
    output_dir: str = "runs/deca"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    mrf: MrfConfig = field(default_factory=MrfConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> "TrainingConfig":
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"config key '{key}': {msg}")

        if self.stage not in STAGES:
            raise bad("stage", f"must be one of {', '.join(STAGES)}, got {self.stage!r}")
        d = self.data
        if d.identities_per_batch < 1:
            raise bad("data.identities_per_batch", "must be >= 1")
        if d.images_per_identity < 1:
            raise bad("data.images_per_identity", "must be >= 1")
        if d.num_workers < 0:
            raise bad("data.num_workers", "must be >= 0")
        if not (0 <= d.scale_jitter < 1) or not (0 <= d.shift_jitter < 1):
            raise bad("data.scale_jitter/shift_jitter", "must lie in [0, 1)")
        if d.crop not in ("release", "fixed"):
            raise bad("data.crop", f"must be release or fixed, got {d.crop!r}")
        cs = d.crop_scale
        if (not isinstance(cs, (list, tuple)) or len(cs) != 2 or not all(isinstance(x, (int, float)) for x in cs)
                or not 0 < cs[0] <= cs[1]):
            raise bad("data.crop_scale", f"must be [min, max] with 0 < min <= max, got {cs!r}")
        if not 0 <= d.crop_shift < 1:
            raise bad("data.crop_shift", "must lie in [0, 1)")
        m = self.model
        if m.encoder_trainable_layers not in TRAINABLE_LAYERS:
            raise bad("model.encoder_trainable_layers", f"must be one of {', '.join(TRAINABLE_LAYERS)}, "
                                                        f"got {m.encoder_trainable_layers!r}")
        if m.bn_mode not in BN_MODES:
            raise bad("model.bn_mode", f"must be one of {', '.join(BN_MODES)}, got {m.bn_mode!r}")
        if len(m.encoder_blocks) != 4 or any((not isinstance(b, (int, float))) or int(b) != b or b < 1
                                             for b in m.encoder_blocks):
            raise bad("model.encoder_blocks", f"needs four positive integers, got {m.encoder_blocks!r}")
        m.encoder_blocks = [int(b) for b in m.encoder_blocks]
        if m.encoder_input_size < 32:
            raise bad("model.encoder_input_size", "must be >= 32")
        if not isinstance(m.head_code_std, Mapping):
            raise bad("model.head_code_std", f"must map code groups to numbers, got {m.head_code_std!r}")
        for k, v in m.head_code_std.items():
            if k not in ("shape", "tex", "exp", "pose", "cam", "light"):
                raise bad("model.head_code_std", f"unknown code group {k!r} (shape, tex, exp, pose, cam, light)")
            vs = v if isinstance(v, (list, tuple)) else [v]
            if not vs or any(isinstance(x, bool) or not isinstance(x, (int, float)) or not x > 0 for x in vs):
                raise bad(f"model.head_code_std.{k}", f"must be a number > 0 (or one per code), got {v!r}")
        if m.bn_calibration_images < 0 or m.bn_calibration_chunk < 1:
            raise bad("model.bn_calibration_*", "images must be >= 0 and chunk >= 1")
        for f in dataclasses.fields(LossConfig):
            v = getattr(self.loss, f.name)
            if f.name == "formulas":
                if v not in ("release", "paper"):
                    raise bad("loss.formulas", f"must be release or paper, got {v!r}")
            elif f.name == "landmark_weights":
                if v and len(v) != 68:
                    raise bad("loss.landmark_weights", f"needs 68 values (or none), got {len(v)}")
            elif v < 0:
                raise bad(f"loss.{f.name}", f"weights must be >= 0, got {v}")
        if len(self.identity.mean) != 3:
            raise bad("identity.mean", "needs 3 values")
        if len(self.mrf.layers) != len(self.mrf.layer_weights):
            raise bad("mrf.layer_weights", "needs one weight per entry of mrf.layers")
        if self.optim.lr <= 0:
            raise bad("optim.lr", "must be > 0")
        if not self.optim.eps > 0:
            raise bad("optim.eps", "must be > 0")
        if self.optim.warmup_steps < 0:
            raise bad("optim.warmup_steps", "must be >= 0")
        if self.optim.decay not in LR_DECAYS:
            raise bad("optim.decay", f"must be one of {', '.join(LR_DECAYS)}, got {self.optim.decay!r}")
        if not 0 <= self.optim.decay_start < 1:
            raise bad("optim.decay_start", f"must lie in [0, 1), got {self.optim.decay_start}")
        if not 0 <= self.optim.decay_to <= 1:
            raise bad("optim.decay_to", f"must lie in [0, 1], got {self.optim.decay_to}")
        if len(self.optim.betas) != 2:
            raise bad("optim.betas", "needs two values")
        t = self.train
        if t.max_steps < 0:
            raise bad("train.max_steps", "must be >= 0")
        if t.amp not in AMP_MODES:
            raise bad("train.amp", f"must be one of {', '.join(AMP_MODES)}, got {t.amp!r}")
        if t.dist_backend not in ("auto", "gloo", "nccl"):
            raise bad("train.dist_backend", f"must be auto, gloo or nccl, got {t.dist_backend!r}")
        for k in ("log_every", "vis_every", "checkpoint_every"):
            if getattr(t, k) < 1:
                raise bad(f"train.{k}", "must be >= 1")
        if t.history_limit < 0:
            raise bad("train.history_limit", "must be >= 0")
        if t.eval_every < 0:
            raise bad("train.eval_every", "must be >= 0")
        if t.eval_every > 0 and not t.val_root:
            raise bad("train.val_root", "train.eval_every needs a validation dataset folder")
        if t.val_images < 0:
            raise bad("train.val_images", "must be >= 0")
        if t.now_every < 0:
            raise bad("train.now_every", "must be >= 0")
        if t.now_every > 0 and not t.now_root:
            raise bad("train.now_root", "train.now_every needs the NoW dataset folder")
        if t.keep_checkpoints < 1:
            raise bad("train.keep_checkpoints", "must be >= 1")
        return self


#: defaults that depend on ``loss.formulas`` (and the stage): applied to every key a config leaves out, so
#: ``loss.formulas: paper`` alone brings back the paper set-up. ``release``: DECA's released configs
#: (``decalib/utils/config.py``, ``configs/release_version/deca_{pretrain,coarse,detail}.yml``)
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "release": {
        "all": {"loss.lip": 0.5, "loss.reg_light": 1.0, "loss.reg_shading": 5e-3, "model.bn_mode": "train",
                "mrf.layers": ["relu3_1", "relu4_1"], "mrf.layer_weights": [1.0, 2.0]},
        "pretrain": {"data.identities_per_batch": 64, "data.images_per_identity": 1},
        "coarse": {"data.identities_per_batch": 8, "data.images_per_identity": 2},
        "detail": {"data.identities_per_batch": 6, "data.images_per_identity": 3},
    },
    "paper": {
        "all": {"loss.lip": 0.0, "loss.reg_light": 0.0, "loss.reg_shading": 0.0, "model.bn_mode": "frozen",
                "mrf.layers": ["relu3_2", "relu4_2"], "mrf.layer_weights": [1.0, 1.0],
                "data.identities_per_batch": 8, "data.images_per_identity": 4},
    },
}


def apply_preset(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with the preset of its ``loss.formulas`` (default ``release``) filled into every key it
    leaves out (see :data:`PRESETS`)."""
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in dict(raw or {}).items()}
    loss = out.get("loss")
    formulas = loss.get("formulas", "release") if isinstance(loss, Mapping) else "release"
    stage = out.get("stage", "coarse")
    preset = PRESETS.get(formulas if isinstance(formulas, str) else "", {})
    for dotted, value in {**preset.get("all", {}), **preset.get(str(stage), {})}.items():
        sec, key = dotted.split(".")
        section = out.setdefault(sec, {})
        if isinstance(section, dict) and key not in section:
            section[key] = list(value) if isinstance(value, list) else value
    return out


SECTIONS = {"data": DataConfig, "model": ModelConfig, "loss": LossConfig, "identity": IdentityConfig,
            "mrf": MrfConfig, "optim": OptimConfig, "train": TrainConfig}


def _unknown(key: str, where: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{where}{key}'{hint}; valid keys{' in ' + where.rstrip('.') if where else ''}: "
                       f"{', '.join(valid)}")


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Check/convert a YAML value to the field's type (ints accepted for floats, '1e-4' strings for floats)."""
    origin = get_origin(typ)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
    if typ is str:
        if value is None:
            return ""
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
    if typ is list or origin is list:
        if value is None:
            return []
        if isinstance(value, (list, tuple)):
            out = []
            for v in value:
                if isinstance(v, str):  # YAML 1.1 reads 1e-4 as a string
                    try:
                        v = float(v)
                    except ValueError:
                        pass
                out.append(v)
            return out
        raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
    return value


def _fill(cls, values: Mapping[str, Any] | None, where: str):
    if values is None:
        return cls()
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section '{where.rstrip('.')}' must be a mapping, got {type(values).__name__}")
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        key = str(key)
        if key not in names:
            raise _unknown(key, where, names)
        kwargs[key] = _coerce(value, hints[key], where + key)
    return cls(**kwargs)


def config_from_dict(raw: Mapping[str, Any] | None) -> TrainingConfig:
    """A validated :class:`TrainingConfig` from a (YAML-loaded) mapping; keys it leaves out take the
    defaults of its preset (``loss.formulas``, :data:`PRESETS`), then the dataclasses' defaults."""
    raw = dict(raw or {})
    for key in raw:
        if str(key) not in [f.name for f in dataclasses.fields(TrainingConfig)]:
            raise _unknown(str(key), "", [f.name for f in dataclasses.fields(TrainingConfig)])
    raw = apply_preset(raw)
    top = [f.name for f in dataclasses.fields(TrainingConfig)]
    for key in raw:
        if key not in top:
            raise _unknown(str(key), "", top)
    kwargs: dict[str, Any] = {}
    for key in ("stage", "output_dir"):
        if key in raw:
            kwargs[key] = _coerce(raw[key], str, key)
    for name, cls in SECTIONS.items():
        kwargs[name] = _fill(cls, raw.get(name), name + ".")
    cfg = TrainingConfig(**kwargs)
    _expand_paths(cfg)
    return cfg.validate()


#: options that name files or folders (``~`` is expanded)
PATH_KEYS = ("output_dir", "data.root", "model.flame", "model.data_dir", "model.texture_space", "model.init_from",
             "identity.weights", "mrf.vgg_weights", "train.val_root", "train.now_root", "train.now_crops")


def _expand_paths(cfg: "TrainingConfig") -> None:
    for dotted in PATH_KEYS:
        obj = cfg
        *parents, last = dotted.split(".")
        for p in parents:
            obj = getattr(obj, p)
        v = getattr(obj, last)
        if v:
            setattr(obj, last, os.path.expanduser(v))


def config_to_dict(cfg: TrainingConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Apply a ``section.key=value`` override to a raw mapping (used by ``deca-train train --set``)."""
    parts = dotted.split(".")
    d = raw
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise ConfigError(f"cannot set '{dotted}': '{p}' is not a section")
    d[parts[-1]] = value


def load_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> TrainingConfig:
    """Read a YAML config (``None``: all defaults), apply ``key.sub=value`` overrides (YAML values)."""
    import yaml

    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(loaded).__name__}")
        raw = dict(loaded or {})
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like section.key=value")
        k, v = ov.split("=", 1)
        set_dotted(raw, k.strip(), yaml.safe_load(v))
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None
