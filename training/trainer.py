"""The training loop: stages, optimisation, mixed precision, DDP, checkpoints, TensorBoard, export.

One run trains one stage (``cfg.stage``); chain stages with ``model.init_from`` (pretrain -> coarse ->
detail, as DECA did). Launch with ``deca-train train --config FILE`` on one process, or under
``torchrun --nproc_per_node N -m training.cli train --config FILE`` for DistributedDataParallel (one or
several nodes; gloo on CPU, nccl on CUDA).

Checkpoints (``<output_dir>/checkpoints/step_XXXXXXX.pt`` and ``latest.pt``) hold the three networks under
the official names (so a training checkpoint also loads with ``core.networks.load_deca_checkpoint``), the
optimizer, the GradScaler, the step, the sampler position and the RNG states of every process (torch,
CUDA, numpy, python). Every entry is a tensor or a plain container, so they load with
``weights_only=True``. Resuming restores all of it and reproduces the uninterrupted run's losses.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from core.networks import DecaNetworks, build_deca_networks, load_deca_checkpoint, save_deca_checkpoint

from .config import ConfigError, TrainingConfig, config_to_dict
from .head import HeadStandardisation, code_slices, folded_state_dict, head_statistics, landmark_cameras, \
    standardise_head
from .networks import build_training_networks, is_reduced
from .data import IdentityBatchSampler, IdentityDataset, advance, collate, worker_init
from .objective import DecaObjective, StepOutput
from .visualise import image_grid, validation_grid, write_grid

__all__ = ["Trainer", "TrainResult", "train", "CHECKPOINT_FORMAT", "read_training_checkpoint",
           "calibrate_batchnorm", "init_head_from_data", "set_trainable", "learning_rate"]

CHECKPOINT_FORMAT = "deca-train-checkpoint"
log = logging.getLogger("training")


# ============================================================================================ helpers

CODE_SLICES = code_slices()
RESNET_STAGES = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


def learning_rate(optim, step: int, max_steps: int) -> float:
    """The learning rate of the optimisation step that follows ``step`` completed steps (``optim``: the
    :class:`~training.config.OptimConfig`): ``optim.lr`` x the linear warm-up ``min(1, (step + 1) /
    warmup_steps)`` x the decay (``optim.decay``; from ``start = round(decay_start * max_steps)`` on, with
    ``t = (step - start) / (max_steps - start)``: cosine ``to + (1 - to) (1 + cos(pi t)) / 2``, step ``to``).
    A function of the step only: a resumed run continues the schedule exactly."""
    lr = optim.lr
    if optim.warmup_steps > 0:
        lr *= min(1.0, (step + 1) / optim.warmup_steps)
    start = round(optim.decay_start * max_steps)
    if optim.decay != "none" and step >= start and max_steps > start:
        to = optim.decay_to
        if optim.decay == "step":
            lr *= to
        else:  # cosine
            t = (step - start) / (max_steps - start)
            lr *= to + (1.0 - to) * 0.5 * (1.0 + math.cos(math.pi * t))
    return lr


def set_trainable(nets: DecaNetworks, stage: str, encoder_layers: str) -> list[nn.Module]:
    """Set ``requires_grad`` for the stage and return the modules being trained.

    pretrain/coarse train E_flame; detail trains E_detail and D_detail (E_flame frozen, as in DECA).
    ``encoder_layers``: all | layer2 | layer3 | layer4 (that ResNet stage and the later ones) | heads
    (only the MLP head); the rest of the trunk stays fixed."""
    for p in nets.parameters():
        p.requires_grad_(False)
    encoders = [nets.E_flame] if stage in ("pretrain", "coarse") else [nets.E_detail]
    trained: list[nn.Module] = list(encoders)
    for enc in encoders:
        for p in enc.layers.parameters():
            p.requires_grad_(True)
        if encoder_layers == "heads":
            continue
        first = 0 if encoder_layers == "all" else RESNET_STAGES.index(encoder_layers)
        for name in RESNET_STAGES[first:]:
            for p in getattr(enc.encoder, name).parameters():
                p.requires_grad_(True)
    if stage == "detail":
        for p in nets.D_detail.parameters():
            p.requires_grad_(True)
        trained.append(nets.D_detail)
    return trained


@torch.no_grad()
def calibrate_batchnorm(module: nn.Module, inputs, forward=None) -> int:
    """Estimate the running statistics of every BatchNorm in ``module`` from ``inputs`` (an iterable of
    batches): cumulative average over the batches (momentum None), then back to eval mode. Returns the
    number of batch-norm layers calibrated."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    saved = [(m, m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for x in inputs:
        (forward or module)(x)
    for m, mom, _ in saved:
        m.momentum = mom
        m.eval()
    return len(bns)


@torch.no_grad()
def init_head_from_data(nets: DecaNetworks, face, images: torch.Tensor, landmarks_px: torch.Tensor,
                        skin: torch.Tensor, gain: float) -> dict[str, Any]:
    """Regressor-bias initialisation to mean parameters (as HMR-style regressors do): E_flame's output bias
    becomes zero codes, the dataset's mean camera (orthographic fit of the mean-shape landmarks to the
    images' landmarks) and a white ambient light matching the mean skin brightness; the last layer's
    weights are scaled by ``gain`` so the start is close to that mean. Returns what was set."""
    from core.render import SH_CONSTANTS

    device = images.device
    cam = landmark_cameras(face, landmarks_px).mean(0)
    # light: band 0 so that a frontal normal is shaded to (mean skin colour / mean albedo)
    m = skin.expand_as(images)
    skin_rgb = (images * m).sum(dim=(0, 2, 3)) / m.sum(dim=(0, 2, 3)).clamp_min(1.0)
    uvm = face.uv_face_mask.to(device)
    alb = face.albedo(None, 1).to(device)
    if alb.shape[-1] != uvm.shape[-1]:
        import torch.nn.functional as F

        alb = F.interpolate(alb, size=uvm.shape[-2:], mode="area")
    alb_rgb = (alb * uvm).sum(dim=(0, 2, 3)) / uvm.sum().clamp_min(1.0)
    ratio = (skin_rgb / alb_rgb.clamp_min(1e-3)).clamp(0.05, 5.0)
    light0 = ratio / float(SH_CONSTANTS[0])
    last = nets.E_flame.layers[2]
    bias = torch.zeros_like(last.bias)
    bias[CODE_SLICES["cam"]] = cam.to(bias)
    light = torch.zeros(9, 3, device=bias.device, dtype=bias.dtype)
    light[0] = light0.to(bias)
    bias[CODE_SLICES["light"]] = light.reshape(-1)
    last.bias.copy_(bias)
    last.weight.mul_(float(gain))
    return {"cam": [float(c) for c in cam], "light_band0": [float(x) for x in light0]}


def _untouched_batchnorm(module: nn.Module) -> bool:
    """True when every batch norm of ``module`` still holds its initial statistics (mean 0, variance 1)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    return bool(bns) and all(bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all()) for m in bns)


def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached": float(cached)}


def _set_numpy_rng_state(s: dict[str, Any]) -> None:
    np.random.set_state(("MT19937", s["keys"].numpy().astype(np.uint32), int(s["pos"]), int(s["has_gauss"]),
                         float(s["cached"])))


def rng_state() -> dict[str, Any]:
    st = random.getstate()
    out = {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(),
           "python": {"version": int(st[0]), "state": list(st[1]), "gauss": st[2]}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    _set_numpy_rng_state(s["numpy"])
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def read_training_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    try:
        obj = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, a pickle asking for code: all unusable
        raise ValueError(f"{p}: not a readable deca-train checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'no details'}); delete it or point "
                         f"train.resume at another checkpoint") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{p}: not a checkpoint written by deca-train (use model.init_from for an official "
                         f"deca_model.tar)")
    return obj


# ============================================================================================ trainer

@dataclass
class TrainResult:
    step: int
    output_dir: Path
    checkpoint: Path | None = None
    exported: Path | None = None
    #: this run's newest ``train.history_limit`` step records (rank 0)
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialised_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


class Trainer:
    """``Trainer(cfg).run()``. Reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by torchrun) for DDP."""

    def __init__(self, cfg: TrainingConfig, face=None) -> None:
        self.cfg = cfg.validate()
        self._face = face
        self.out = Path(cfg.output_dir)
        self.ckpt_dir = self.out / "checkpoints"
        self._handlers: list[logging.Handler] = []
        self._val: IdentityDataset | None = None
        self._head: HeadStandardisation | None = None  # set when model.standardise_head reparametrises E_flame

    # ------------------------------------------------------------------------------------ setup
    def _setup_dist(self) -> _Dist:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return _Dist()
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
        init_here = False
        if not dist.is_initialized():
            backend = self.cfg.train.dist_backend
            if backend == "auto":
                backend = "nccl" if (torch.cuda.is_available() and self.cfg.train.device != "cpu") else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local)
            dist.init_process_group(backend=backend)
            init_here = True
        return _Dist(rank=rank, world=world, local_rank=local, initialised_here=init_here)

    def _device(self, d: _Dist) -> torch.device:
        spec = self.cfg.train.device
        if spec == "auto":
            spec = "cuda" if torch.cuda.is_available() else "cpu"
        if spec.startswith("cuda"):
            if not torch.cuda.is_available():
                raise ConfigError(f"train.device is '{spec}' but CUDA is not available")
            if d.enabled:
                # under torchrun every process takes the GPU of its local rank; a fixed cuda:N would put all
                # ranks on one GPU (choose the GPUs with CUDA_VISIBLE_DEVICES instead)
                if spec != "cuda" and torch.device(spec).index != d.local_rank:
                    log.warning("train.device %s ignored under torchrun: rank %d (local rank %d) uses cuda:%d",
                                spec, d.rank, d.local_rank, d.local_rank)
                return torch.device("cuda", d.local_rank)
            return torch.device(spec) if spec != "cuda" else torch.device("cuda", 0)
        return torch.device(spec)

    def _setup_logging(self, d: _Dist) -> None:
        log.setLevel(logging.INFO)
        fmt = logging.Formatter(f"%(asctime)s [rank {d.rank}] %(levelname)s %(message)s", "%H:%M:%S")
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(self.out / "train.log")
            fh.setFormatter(fmt)
            log.addHandler(fh)
            self._handlers.append(fh)
        if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
                   for h in log.handlers):
            sh = logging.StreamHandler()
            sh.setFormatter(fmt)
            sh.setLevel(logging.INFO if d.main else logging.WARNING)
            log.addHandler(sh)
            self._handlers.append(sh)
        log.propagate = False

    def _teardown_logging(self) -> None:
        for h in self._handlers:
            log.removeHandler(h)
            h.close()
        self._handlers.clear()

    def _face_model(self, device: torch.device):
        if self._face is not None:
            return self._face.to(device)
        from core.model.face_model import FaceAssets, FaceModel

        m = self.cfg.model
        if m.flame or m.data_dir:
            if not (m.flame and m.data_dir):
                raise ConfigError("model.flame and model.data_dir go together (or leave both empty to use the "
                                  "installed assets)")
            assets = FaceAssets.from_paths(m.flame, m.data_dir, m.texture_space or None)
        else:
            assets = FaceAssets.from_manager()
        face = FaceModel(assets).to(device)
        if face.is_test_model:
            log.warning("the face model is the synthetic TEST model, not FLAME: weights trained with it are only "
                        "useful for testing")
        return face

    def _perceptual(self, device: torch.device):
        from .perceptual import IdentityLoss, IdMrfLoss, load_face_recognition, load_vgg19

        c = self.cfg
        identity = mrf = None
        if c.stage == "coarse" and c.loss.id > 0:
            if c.identity.weights:
                net = load_face_recognition(c.identity.weights, c.identity.stride_in_1x1)
                identity = IdentityLoss(net, c.identity.input_size, c.identity.bgr, c.identity.input_scale,
                                        c.identity.mean, c.identity.crop_margin, c.identity.release_scaling).to(device)
                log.info("identity loss on (weight %g), face-recognition network from %s", c.loss.id, c.identity.weights)
            else:
                self.disabled_losses.append("id")
                log.warning("identity loss is OFF: no face-recognition weights given (identity.weights); DECA used a "
                         "VGGFace2 ResNet-50")
        if c.stage == "detail" and c.loss.mrf > 0:
            if c.mrf.vgg_weights:
                mrf = IdMrfLoss(load_vgg19(c.mrf.vgg_weights), c.mrf.layers, c.mrf.layer_weights, c.mrf.bandwidth,
                                c.mrf.input_size, formula=c.loss.formulas).to(device)
                log.info("ID-MRF loss on (weight %g), VGG-19 from %s", c.loss.mrf, c.mrf.vgg_weights)
            else:
                self.disabled_losses.append("mrf")
                log.warning("ID-MRF loss is OFF: no VGG-19 weights given (mrf.vgg_weights)")
        return identity, mrf

    def _amp(self, device: torch.device) -> tuple[torch.dtype | None, bool]:
        mode = self.cfg.train.amp
        if mode == "auto":
            mode = "fp16" if device.type == "cuda" else "off"
        if mode == "off":
            return None, False
        if mode == "fp16":
            if device.type != "cuda":
                raise ConfigError("train.amp 'fp16' needs CUDA; use 'bf16' or 'off' on the CPU")
            return torch.float16, True
        return torch.bfloat16, False

    def _resume_path(self) -> Path | None:
        r = self.cfg.train.resume
        if r == "never":
            return None
        if r == "auto":
            p = self.ckpt_dir / "latest.pt"
            return p if p.is_file() else None
        p = Path(r)
        if not p.is_file():
            raise ConfigError(f"train.resume: checkpoint not found: {p}")
        return p

    # ------------------------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        d = self._setup_dist()
        try:
            self._setup_logging(d)
            return self._run(d)
        finally:
            self._teardown_logging()
            if d.initialised_here and dist.is_initialized():
                dist.destroy_process_group()

    def _run(self, d: _Dist) -> TrainResult:
        cfg = self.cfg
        device = self._device(d)
        threads = cfg.train.threads
        if threads <= 0 and device.type == "cpu":
            local_procs = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
            threads = max(1, torch.get_num_threads() // max(1, local_procs))
        if threads > 0:
            torch.set_num_threads(threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        seed = cfg.train.seed
        torch.manual_seed(seed)
        np.random.seed(seed % (2 ** 32))
        random.seed(seed)

        log.info("stage %s, %d process(es), device %s, output %s", cfg.stage, d.world, device, self.out)
        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(config_to_dict(cfg), indent=2) + "\n")

        ds = IdentityDataset(cfg.data.root, cfg.data.min_images_per_identity, cfg.data.scale_jitter,
                             cfg.data.shift_jitter, load_gt=False, crop=cfg.data.crop,
                             crop_scale=cfg.data.crop_scale, crop_shift=cfg.data.crop_shift)
        if ds.skipped_identities:
            log.info("skipped %d identities with fewer than %d images", len(ds.skipped_identities),
                     cfg.data.min_images_per_identity)
        augment = ds.augments
        K = cfg.data.images_per_identity
        log.info("dataset %s: %d identities, %d images; batch per process %d identities x %d images",
                 ds.root, ds.n_identities, len(ds), cfg.data.identities_per_batch, K)
        if K < 2 and ((cfg.stage == "coarse" and cfg.loss.sc > 0) or (cfg.stage == "detail" and cfg.loss.dc > 0)):
            log.warning("data.images_per_identity is 1: the %s loss needs two images of a person and is skipped",
                        "shape-consistency" if cfg.stage == "coarse" else "detail-consistency")

        IdentityBatchSampler(ds, cfg.data.identities_per_batch, K, seed=seed, rank=d.rank, world_size=d.world)  # checks sizes
        if cfg.train.now_every > 0 and d.main:
            self._now_folders()
        face = self._face_model(device)

        # ---- networks
        nets = build_training_networks(cfg.model)
        if is_reduced(cfg.model):
            log.warning("E_flame is a REDUCED encoder (blocks %s, input %d): for tests/debugging, no deca_model.tar "
                        "is exported", cfg.model.encoder_blocks, cfg.model.encoder_input_size)
        resume = self._resume_path()
        ckpt = None
        if resume is not None:
            ckpt = read_training_checkpoint(resume)
            if ckpt.get("stage") != cfg.stage:
                raise ConfigError(f"{resume}: a '{ckpt.get('stage')}' checkpoint cannot resume a '{cfg.stage}' run")
            for name in ("E_flame", "E_detail", "D_detail"):
                getattr(nets, name).load_state_dict(ckpt[name])
            log.info("resuming from %s at step %d", resume, int(ckpt["step"]))
        elif cfg.model.init_from:
            loaded = load_deca_checkpoint(cfg.model.init_from)
            nets.load_state_dict(loaded.state_dict())
            log.info("initialised from %s", cfg.model.init_from)
        nets = nets.to(device)
        if ckpt is None and not cfg.model.init_from:
            self._init_from_scratch(nets, face, ds, device)
        elif ckpt is None and cfg.stage == "detail" and _untouched_batchnorm(nets.E_detail) \
                and cfg.model.bn_calibration_images > 0:
            # the documented chain pretrain -> coarse -> detail never trains E_detail / D_detail before this
            # stage: their batch norms still hold mean 0 / variance 1, far from their inputs' statistics
            self._calibrate_detail(nets, ds, device)
        self._head = None
        if cfg.model.standardise_head and cfg.stage in ("pretrain", "coarse"):
            self._head = self._standardise_head(nets, face, ds, device, ckpt)
        trained = set_trainable(nets, cfg.stage, cfg.model.encoder_trainable_layers)
        params = [p for p in nets.parameters() if p.requires_grad]
        log.info("training %s: %.1fM parameters (encoder layers: %s, batch norm: %s)",
                 "+".join(type(m).__name__ for m in trained), sum(p.numel() for p in params) / 1e6,
                 cfg.model.encoder_trainable_layers, cfg.model.bn_mode)
        if cfg.model.bn_mode == "sync":
            if device.type != "cuda":
                raise ConfigError("model.bn_mode 'sync' needs CUDA (SyncBatchNorm); use 'frozen' or 'train'")
            if d.enabled:
                for name in ("E_flame", "E_detail", "D_detail"):
                    setattr(nets, name, nn.SyncBatchNorm.convert_sync_batchnorm(getattr(nets, name)))
                trained = set_trainable(nets, cfg.stage, cfg.model.encoder_trainable_layers)
                params = [p for p in nets.parameters() if p.requires_grad]

        amp_dtype, use_scaler = self._amp(device)
        opt = torch.optim.Adam(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps,
                               weight_decay=cfg.optim.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        step = 0
        position = (0, 0)
        if ckpt is not None:
            opt.load_state_dict(ckpt["optimizer"])
            if ckpt.get("scaler"):
                scaler.load_state_dict(ckpt["scaler"])
            step = int(ckpt["step"])
            position = (int(ckpt["epoch"]), int(ckpt["batch_in_epoch"]))
            states = ckpt.get("rng") or []
            if len(states) == d.world:
                set_rng_state(states[d.rank])
            elif states:
                log.warning("checkpoint has RNG states of %d processes, this run has %d: using rank 0's",
                            len(states), d.world)
                set_rng_state(states[0])
            if int(ckpt.get("world_size", d.world)) != d.world:
                log.warning("resuming a %d-process run with %d processes: the batches differ from the original run",
                            int(ckpt.get("world_size")), d.world)

        self.disabled_losses: list[str] = []
        identity, mrf = self._perceptual(device)
        objective = DecaObjective(nets, face, cfg, identity, mrf, amp_dtype)
        model: nn.Module = objective
        if d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(objective, device_ids=[device.index] if device.type == "cuda" else None,
                        broadcast_buffers=cfg.model.bn_mode == "train", find_unused_parameters=False)

        sampler = IdentityBatchSampler(ds, cfg.data.identities_per_batch, K, seed=seed, rank=d.rank,
                                       world_size=d.world, start_epoch=position[0], start_batch=position[1],
                                       augment=augment)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                                             collate_fn=collate, worker_init_fn=worker_init, pin_memory=device.type == "cuda",
                                             persistent_workers=False)
        writer = None
        if d.main and cfg.train.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.out / "tb"), purge_step=step + 1 if step > 0 else None)
        metrics_path = self.out / "metrics.jsonl"
        if d.main:
            self._truncate_metrics(metrics_path, step)

        result = TrainResult(step=step, output_dir=self.out)
        stop_at = cfg.train.max_steps
        if cfg.train.stop_after > 0:
            stop_at = min(stop_at, step + cfg.train.stop_after)
        last_ckpt = None
        it = iter(loader)
        t_last = time.perf_counter()
        try:
            while step < stop_at:
                batch = next(it)
                batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
                self._set_modes(nets, trained)
                if cfg.optim.warmup_steps > 0 or cfg.optim.decay != "none":
                    for gr in opt.param_groups:
                        gr["lr"] = learning_rate(cfg.optim, step, cfg.train.max_steps)
                want_vis = writer is not None and ((step + 1) % cfg.train.vis_every == 0 or step == 0)
                out: StepOutput = model(batch, step=step, want_vis=want_vis)
                scaler.scale(out.total).backward()
                grad_norm = None
                if cfg.optim.grad_clip > 0:
                    scaler.unscale_(opt)
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip))
                scaler.step(opt)
                scaler.update()
                opt.zero_grad(set_to_none=True)
                step += 1
                position = advance(position, sampler.batches_per_epoch)
                rec = self._reduce_terms(out, d)
                now = time.perf_counter()
                rec.update(step=step, epoch=position[0], lr=opt.param_groups[0]["lr"], step_time_s=now - t_last)
                if self.disabled_losses:  # weighted terms that are not computed (a missing pretrained network)
                    rec["disabled_losses"] = list(self.disabled_losses)
                if grad_norm is not None:
                    rec["grad_norm"] = grad_norm
                t_last = now
                if not math.isfinite(rec["loss"]):
                    raise FloatingPointError(f"loss is {rec['loss']} at step {step}; terms: {rec}")
                if d.main:
                    result.history.append(rec)
                    if len(result.history) > cfg.train.history_limit:  # bounded over a million steps
                        del result.history[: len(result.history) - cfg.train.history_limit]
                    with open(metrics_path, "a") as f:
                        f.write(json.dumps(rec) + "\n")
                    if step % cfg.train.log_every == 0 or step == 1:
                        log.info("step %d  loss %.5f  %s  (%.2f s/step)", step, rec["loss"],
                                 "  ".join(f"{k} {v:.4g}" for k, v in rec.items()
                                           if k not in ("step", "epoch", "lr", "loss", "step_time_s", "disabled_losses")),
                                 rec["step_time_s"])
                        if writer is not None:
                            for k, v in rec.items():
                                if k not in ("step", "epoch", "disabled_losses"):
                                    writer.add_scalar(("loss/" if k not in ("lr", "step_time_s", "grad_norm") else "train/") + k, v, step)
                    if writer is not None and out.vis is not None:
                        writer.add_image(f"{cfg.stage}/" + "_".join(out.vis.keys()), image_grid(out.vis), step)
                if d.main and cfg.train.eval_every > 0 and step % cfg.train.eval_every == 0:
                    self._validate(nets, face, device, step, writer, metrics_path, trained)
                if d.main and cfg.train.now_every > 0 and step % cfg.train.now_every == 0:
                    self._now(nets, face, device, step, writer, metrics_path, trained)
                if step % cfg.train.checkpoint_every == 0 or step == stop_at:
                    last_ckpt = self._save(d, nets, opt, scaler, step, position)
        finally:
            if writer is not None:
                writer.flush()
                writer.close()
            del it
        result.step = step
        result.checkpoint = last_ckpt
        if step >= cfg.train.max_steps and cfg.train.export_on_finish and d.main and not is_reduced(cfg.model):
            result.exported = save_deca_checkpoint(self._official(nets), self.out / "deca_model.tar")
            log.info("exported %s (official deca_model.tar layout)", result.exported)
        if d.enabled:
            dist.barrier()
        return result

    # ------------------------------------------------------------------------------------ pieces
    def _init_from_scratch(self, nets: DecaNetworks, face, ds: IdentityDataset, device: torch.device) -> None:
        """Fresh networks: batch-norm statistics estimated on training images, regressor bias to the mean."""
        cfg = self.cfg
        n = cfg.model.bn_calibration_images
        if cfg.stage == "detail":
            log.warning("detail stage without model.init_from: E_flame is untrained (DECA trains the detail "
                        "stage on a trained coarse model)")
        samples = ds.calibration_samples(max(n, 1), cfg.train.seed)
        batch = collate([ds[s] for s in samples])
        images = batch["image"].to(device)
        chunks = [images[i:i + cfg.model.bn_calibration_chunk] for i in range(0, images.shape[0], cfg.model.bn_calibration_chunk)]
        if n > 0:
            k = calibrate_batchnorm(nets.E_flame, chunks)
            log.info("batch norm of E_flame calibrated on %d images (%d layers)", images.shape[0], k)
        if cfg.model.init_head_from_data:
            info = init_head_from_data(nets, face, images, batch["landmarks"].to(device),
                                       batch["skin_mask"].to(device), cfg.model.head_init_gain)
            log.info("E_flame output bias set to the data mean: cam %s, light band 0 %s",
                     [round(c, 4) for c in info["cam"]], [round(c, 3) for c in info["light_band0"]])
        if cfg.stage == "detail" and n > 0:
            calibrate_batchnorm(nets.E_detail, chunks)
            from core.networks import split_flame_codes

            def dec(x):
                codes = split_flame_codes(nets.E_flame(x))
                nets.D_detail.decode(codes.jaw_pose, codes.exp, nets.E_detail(x))

            calibrate_batchnorm(nets.D_detail, chunks, forward=dec)
            log.info("batch norm of E_detail and D_detail calibrated")
        nets.eval()

    def _standardise_head(self, nets: DecaNetworks, face, ds: IdentityDataset, device: torch.device,
                          ckpt: dict | None) -> HeadStandardisation:
        """Reparametrise E_flame's last layer to predict standardised codes (training/head.py). Fresh or
        initialised runs measure the statistics (mean: the head's current bias, i.e. the data mean after
        ``init_head_from_data``; camera std from the calibration images' landmarks); a resumed run takes them
        and the standardised parameters from its checkpoint."""
        last = nets.E_flame.layers[2]
        if ckpt is not None:
            if "head_standardisation" not in ckpt:
                raise ConfigError("model.standardise_head is on but the checkpoint to resume was written without it")
            stats = HeadStandardisation.from_dict(ckpt["head_standardisation"])
            standardise_head(last, stats)
            with torch.no_grad():
                last.weight.copy_(ckpt["head_standardised"]["weight"])
                last.bias.copy_(ckpt["head_standardised"]["bias"])
            return stats
        samples = ds.calibration_samples(max(self.cfg.model.bn_calibration_images, 2), self.cfg.train.seed)
        landmarks = collate([ds[s] for s in samples])["landmarks"].to(device)
        try:
            stats = head_statistics(last.bias.detach(), landmark_cameras(face, landmarks), self.cfg.model.head_code_std)
        except ValueError as e:  # a prior of the wrong length
            raise ConfigError(str(e)) from None
        standardise_head(last, stats)
        sl = CODE_SLICES
        log.info("E_flame's head predicts standardised codes: camera std %s, pose std %.3g",
                 [round(float(x), 4) for x in stats.std[sl["cam"]]], float(stats.std[sl["pose"]][0]))
        return stats

    def _official(self, nets: DecaNetworks) -> DecaNetworks | dict[str, Any]:
        """What checkpoints and the export save: ``nets``, with a standardised head folded back (DECA's layout)."""
        if self._head is None:
            return nets
        return {"E_flame": folded_state_dict(nets.E_flame, self._head), "E_detail": nets.E_detail,
                "D_detail": nets.D_detail}

    def _validate(self, nets: DecaNetworks, face, device: torch.device, step: int, writer, metrics_path: Path,
                  trained: list[nn.Module]) -> dict[str, float]:
        """E_flame's errors on ``train.val_root`` (eval mode), to TensorBoard ``val/*`` and metrics.jsonl; with
        ``train.val_images`` the grid of training/visualise.py to ``val/step_XXXXXXX.png`` and ``val/images``."""
        from .evaluate import evaluate

        if self._val is None:
            self._val = IdentityDataset(self.cfg.train.val_root)
        res = evaluate(nets, face, self._val, device=device)
        grid = None
        if self.cfg.train.val_images > 0:
            grid = validation_grid(nets, face, self._val, self.cfg.train.val_images, device=device)
        self._set_modes(nets, trained)
        rec = {"step": step, "val": {k: float(v) for k, v in res.items()}}
        if grid is not None:
            path = write_grid(self.out / "val" / f"step_{step:07d}.png", grid)
            rec["val_grid"] = str(path.relative_to(self.out))
            if writer is not None:
                writer.add_image("val/images", grid.image, step)
        with open(metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if writer is not None:
            for k, v in res.items():
                if k != "n_images":
                    writer.add_scalar(f"val/{k}", v, step)
        log.info("validation at step %d: %s", step, "  ".join(f"{k} {v:.4g}" for k, v in res.items()))
        return res

    def _now_folders(self) -> tuple[Path, Path]:
        """(NoW root, crops folder), checked before training starts so that a wrong path fails at once."""
        from core.evaluation.now_layout import IMAGE_LISTS, is_now_layout

        t = self.cfg.train
        root = Path(t.now_root)
        crops = Path(t.now_crops) if t.now_crops else root / "crops"
        if not is_now_layout(root) or not (root / IMAGE_LISTS["val"]).is_file():
            raise ConfigError(f"train.now_root: {root} is not NoW's layout (needs {IMAGE_LISTS['val']}, scans/, "
                              f"scans_lmks_onlypp/)")
        if not crops.is_dir():
            raise ConfigError(f"train.now_crops: face-crop folder not found: {crops}")
        return root, crops

    def _now(self, nets: DecaNetworks, face, device: torch.device, step: int, writer, metrics_path: Path,
             trained: list[nn.Module]) -> dict[str, float]:
        """NoW errors of E_flame (training.evaluate.now_validation) to TensorBoard ``now/*`` and metrics.jsonl."""
        from .evaluate import now_validation

        root, crops = self._now_folders()
        res = now_validation(nets, face, root, crops, self.out / "now" / f"step_{step:07d}", device=device)
        self._set_modes(nets, trained)
        rec = {"step": step, "now": res}
        with open(metrics_path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if writer is not None:
            for k in ("median_mm", "mean_mm", "std_mm"):
                writer.add_scalar(f"now/{k}", res[k], step)
        log.info("NoW at step %d: median %.3f mm, mean %.3f mm, std %.3f mm (%d images, %d without a crop)", step,
                 res["median_mm"], res["mean_mm"], res["std_mm"], res["n_images"], res["n_missing"])
        return res

    def _calibrate_detail(self, nets: DecaNetworks, ds: IdentityDataset, device: torch.device) -> None:
        from core.networks import split_flame_codes

        cfg = self.cfg
        samples = ds.calibration_samples(cfg.model.bn_calibration_images, cfg.train.seed)
        images = collate([ds[s] for s in samples])["image"].to(device)
        c = cfg.model.bn_calibration_chunk
        chunks = [images[i:i + c] for i in range(0, images.shape[0], c)]
        nets.E_flame.eval()
        k = calibrate_batchnorm(nets.E_detail, chunks)

        def dec(x):
            codes = split_flame_codes(nets.E_flame(x))
            nets.D_detail.decode(codes.jaw_pose, codes.exp, nets.E_detail(x))

        k += calibrate_batchnorm(nets.D_detail, chunks, forward=dec)
        log.info("batch norm of E_detail and D_detail estimated on %d images (%d layers): they start untrained",
                 images.shape[0], k)
        nets.eval()

    def _set_modes(self, nets: DecaNetworks, trained: list[nn.Module]) -> None:
        nets.eval()
        if self.cfg.model.bn_mode in ("train", "sync"):
            for m in trained:
                m.train()

    @staticmethod
    def _reduce_terms(out: StepOutput, d: _Dist) -> dict[str, float]:
        keys = sorted(out.terms)
        vec = torch.stack([out.total.detach().float()] + [out.terms[k].float() for k in keys])
        if d.enabled:
            vec = vec.clone()
            dist.all_reduce(vec, op=dist.ReduceOp.SUM)
            vec = vec / d.world
        vals = vec.cpu().tolist()
        rec = {"loss": vals[0]}
        rec.update({k: v for k, v in zip(keys, vals[1:])})
        return rec

    def _truncate_metrics(self, path: Path, step: int) -> None:
        if not path.is_file():
            return
        if step == 0:
            path.unlink()
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    keep.append(line)
            except ValueError:
                continue
        path.write_text("".join(k + "\n" for k in keep))

    def _save(self, d: _Dist, nets: DecaNetworks, opt, scaler, step: int, position: tuple[int, int]) -> Path | None:
        states = [rng_state()]
        if d.enabled:
            gathered: list[Any] = [None] * d.world
            dist.all_gather_object(gathered, states[0])
            states = gathered
        path = None
        if d.main:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            payload = {
                "format": CHECKPOINT_FORMAT, "version": 1, "stage": self.cfg.stage, "step": step,
                "epoch": position[0], "batch_in_epoch": position[1], "world_size": d.world,
                "optimizer": opt.state_dict(), "scaler": scaler.state_dict(), "rng": states,
                "config": config_to_dict(self.cfg),
            }
            if self._head is not None:  # the trained (standardised) head, to resume bit for bit
                last = nets.E_flame.layers[2]
                payload["head_standardisation"] = self._head.as_dict()
                payload["head_standardised"] = {"weight": last.weight.detach().cpu().clone(),
                                                "bias": last.bias.detach().cpu().clone()}
            path = save_deca_checkpoint(self._official(nets), self.ckpt_dir / f"step_{step:07d}.pt", extra=payload)
            latest = self.ckpt_dir / "latest.pt"
            tmp = self.ckpt_dir / ".latest.pt.tmp"
            if tmp.exists():
                tmp.unlink()
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, latest)
            old = sorted(self.ckpt_dir.glob("step_*.pt"))[: -self.cfg.train.keep_checkpoints]
            for o in old:
                o.unlink()
            log.info("checkpoint %s", path)
        if d.enabled:
            dist.barrier()
        return path


def train(cfg: TrainingConfig, face=None) -> TrainResult:
    """Run one training stage (see :class:`Trainer`)."""
    return Trainer(cfg, face=face).run()
