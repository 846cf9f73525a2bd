"""End-to-end training runs on the CPU with synthetic data rendered from the FLAME-format TEST model.

* a short coarse run lowers the landmark and photometric losses and the parameter error on held-out
  renders by at least half from its start;
* stopping and resuming reproduces the uninterrupted run;
* a 2-process ``torchrun`` (gloo) run matches one process with the doubled batch;
* the detail stage runs on the coarse result (E_flame frozen) with the detail-consistency loss;
* exported checkpoints load in the inference core; TensorBoard gets scalars and images.

The real architecture (ResNet-50 encoders at 224) is trained; to fit a CI budget on two shared cores the
runs train ``layer4`` and the heads (``model.encoder_trainable_layers``) with one thread.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import config_from_dict
from training_fixtures import face, one_thread  # noqa: F401  (shared fixtures)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


#: the coarse test set: 2 people x 2 renders (no details: the coarse model cannot represent them),
#: moderate head rotation and lighting; held-out renders show the same people in new poses/expressions
COARSE_SET = dict(detail_amplitude=0.0, ambient=(2.8, 3.2), directional=0.25, yaw_deg=15.0, pitch_deg=7.5)


@pytest.fixture(scope="module")
def coarse_data(face, tmp_path_factory):
    from training.synthetic import SyntheticSpec, make_synthetic_dataset

    root = tmp_path_factory.mktemp("coarse_data")
    train = make_synthetic_dataset(root / "train", face, SyntheticSpec(n_identities=2, images_per_identity=2, seed=0,
                                                                       **COARSE_SET))
    held = make_synthetic_dataset(root / "held_out", face, SyntheticSpec(n_identities=2, images_per_identity=2,
                                                                         seed=1000, identity_seed=0, **COARSE_SET))
    return train, held


def _cfg(out, root, stage="coarse", steps=4, **over):
    d = {"stage": stage, "output_dir": str(out),
         "data": {"root": str(root), "identities_per_batch": 2, "images_per_identity": 2},
         "model": {"encoder_trainable_layers": "layer4", "bn_calibration_images": 4},
         # the paper preset (frozen batch norm, per-image terms): the set-up these runs' bounds were measured
         # with, and what makes DDP equal one process exactly; the release preset has its own tests
         "loss": {"formulas": "paper"},
         "optim": {"lr": 2e-4},
         "train": {"max_steps": steps, "threads": 1, "log_every": 1, "vis_every": 1000, "checkpoint_every": 1000,
                   "tensorboard": False, "resume": "never"}}
    for k, v in over.items():
        sec, key = k.split("__")
        d.setdefault(sec, {})[key] = v
    return config_from_dict(d)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------- coarse

@pytest.fixture(scope="module")
def coarse_run(face, coarse_data, tmp_path_factory):
    from core.networks import load_deca_checkpoint
    from training.evaluate import evaluate
    from training.trainer import train

    train_root, held = coarse_data
    base = tmp_path_factory.mktemp("coarse_run")
    # the fresh network (same seed: the same initialisation the run starts from)
    # on the stored fixed crops: the loss ratios compare the first step's images with the last steps', which a
    # re-crop per step (data.crop: release) would change; the held-out errors are measured on fixed crops too
    start = train(_cfg(base / "start", train_root, steps=0, data__crop="fixed"), face=face)
    e_start = evaluate(load_deca_checkpoint(start.exported), face, held)
    res = train(_cfg(base / "run", train_root, steps=70, train__tensorboard=True, train__vis_every=35,
                     train__log_every=5, train__checkpoint_every=35, data__crop="fixed"), face=face)
    e_end = evaluate(load_deca_checkpoint(res.exported), face, held)
    return {"result": res, "start": e_start, "end": e_end, "history": _metrics(res.output_dir)}


def test_coarse_run_halves_losses_and_held_out_parameter_error(coarse_run):
    h = coarse_run["history"]
    assert len(h) == 70 and h[-1]["step"] == 70
    ratios = {}
    for k in ("lmk", "pho"):
        end = float(np.mean([r[k] for r in h[-5:]]))  # last 5 steps: batch noise averaged out
        ratios[k] = end / h[0][k]
    ratios["vertex_px"] = coarse_run["end"]["vertex_px"] / coarse_run["start"]["vertex_px"]
    ratios["landmark_px"] = coarse_run["end"]["landmark_px"] / coarse_run["start"]["landmark_px"]
    print("coarse run: end/start", {k: round(v, 3) for k, v in ratios.items()},
          "held-out vertex px", round(coarse_run["start"]["vertex_px"], 1), "->", round(coarse_run["end"]["vertex_px"], 1))
    for k, v in ratios.items():
        assert v <= 0.5, f"{k}: end/start = {v:.3f} (start {h[0].get(k)}, run {ratios})"
    assert {"lmk", "eye", "pho", "sc", "reg_shape", "reg_exp", "reg_tex"} <= set(h[0])
    assert "id" not in h[0]


def test_identity_loss_off_is_logged_and_tensorboard_written(coarse_run):
    out = coarse_run["result"].output_dir
    text = (out / "train.log").read_text()
    assert "identity loss is OFF: no face-recognition weights given" in text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(out / "tb"), size_guidance={"images": 0, "scalars": 0})
    ev.Reload()
    tags = ev.Tags()
    assert {"loss/loss", "loss/lmk", "loss/pho", "loss/sc", "train/lr"} <= set(tags["scalars"])
    assert len(ev.Scalars("loss/lmk")) >= 14
    assert tags["images"], "no image grid"
    img = ev.Images(tags["images"][0])[0]
    assert img.width == 4 * 224 and img.height == 4 * 224  # input / landmarks / render / shape rows


def test_exported_checkpoint_loads_in_the_core(coarse_run, tmp_path):
    from core.networks import load_deca_checkpoint, verify_checkpoint
    from training.cli import main

    res = coarse_run["result"]
    assert verify_checkpoint(res.exported) == []
    # a training checkpoint holds more (optimizer, RNG) but exports to the official layout
    latest = res.output_dir / "checkpoints" / "latest.pt"
    assert main(["export", "--checkpoint", str(latest), "--out", str(tmp_path / "deca_model.tar")]) == 0
    exported = tmp_path / "deca_model.tar"
    assert verify_checkpoint(exported) == []
    obj = torch.load(exported, map_location="cpu", weights_only=True)
    assert set(obj) == {"E_flame", "E_detail", "D_detail"}
    nets = load_deca_checkpoint(exported)
    a = load_deca_checkpoint(res.exported)
    for k, v in a.E_flame.state_dict().items():
        assert torch.equal(v, nets.E_flame.state_dict()[k])
    codes, detail = nets.encode(torch.rand(1, 3, 224, 224))
    assert codes.shape.shape == (1, 100) and codes.light.shape == (1, 9, 3) and detail.shape == (1, 128)


def test_cli_eval_reports_parameter_errors(coarse_run, coarse_data, test_flame_pkl, deca_data_dir, capsys):
    from training.cli import main

    assert main(["eval", "--weights", str(coarse_run["result"].exported), "--data", str(coarse_data[1]),
                 "--flame", str(test_flame_pkl), "--data-dir", str(deca_data_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_images"] == 4
    assert out["vertex_px"] == pytest.approx(coarse_run["end"]["vertex_px"], rel=1e-5)


def test_identity_loss_is_used_when_weights_are_given(face, coarse_data, tmp_path):
    from training.perceptual import FaceResNet50
    from training.trainer import train

    torch.manual_seed(1)
    w = tmp_path / "face_recognition_resnet50.pth"
    torch.save(FaceResNet50().state_dict(), w)
    res = train(_cfg(tmp_path / "id", coarse_data[0], steps=1, identity__weights=str(w)), face=face)
    h = _metrics(tmp_path / "id")
    assert res.step == 1 and "id" in h[0] and 0.0 <= h[0]["id"] <= 2.0
    assert "identity loss on (weight 0.2)" in (tmp_path / "id" / "train.log").read_text()


# ----------------------------------------------------------------------------------------------- resume

def test_stop_and_resume_reproduces_the_uninterrupted_run(face, coarse_data, tmp_path):
    from core.networks import load_deca_checkpoint
    from training.trainer import train

    root = coarse_data[0]
    # with a learning-rate decay from step 1 (0.25 x 4): the resumed half must continue the schedule
    decay = {"optim__decay": "cosine", "optim__decay_start": 0.25, "optim__decay_to": 0.1}
    full = train(_cfg(tmp_path / "full", root, steps=4, **decay), face=face)
    cfg = _cfg(tmp_path / "split", root, steps=4, train__stop_after=2, train__resume="auto", **decay)
    first = train(cfg, face=face)
    assert first.step == 2 and first.exported is None and (tmp_path / "split/checkpoints/latest.pt").is_file()
    second = train(cfg, face=face)
    assert second.step == 4 and second.exported is not None
    a, b = _metrics(tmp_path / "full"), _metrics(tmp_path / "split")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    # the lr each step got: 2e-4 x (0.1 + 0.9 (1 + cos(pi t)) / 2), t = (step - 1) / 3 from the second step on
    want = [2e-4, 2e-4, 2e-4 * 0.775, 2e-4 * 0.325]
    assert [r["lr"] for r in a] == pytest.approx(want, rel=1e-12) and [r["lr"] for r in b] == [r["lr"] for r in a]
    for ra, rb in zip(a, b):
        for k in ("loss", "lmk", "pho", "sc"):
            assert rb[k] == pytest.approx(ra[k], rel=1e-6, abs=1e-9), (k, ra["step"], ra[k], rb[k])
    na, nb = load_deca_checkpoint(full.exported), load_deca_checkpoint(second.exported)
    for k, v in na.E_flame.state_dict().items():
        assert torch.allclose(v, nb.E_flame.state_dict()[k], rtol=0, atol=1e-7), k
    ck = torch.load(tmp_path / "split/checkpoints/latest.pt", map_location="cpu", weights_only=True)
    assert {"optimizer", "scaler", "rng", "step", "epoch", "batch_in_epoch"} <= set(ck)
    assert {"torch", "numpy", "python"} <= set(ck["rng"][0])


# ---------------------------------------------------------------------------------------------- torchrun

def test_torchrun_two_processes_match_one_with_the_doubled_batch(face, coarse_data, tmp_path, test_flame_pkl,
                                                                 deca_data_dir):
    """DDP averages the two half-batch gradients into the full-batch gradient.

    What is compared, and why: the loss terms of every step, and the gradient of the first step as Adam's
    first moment (``exp_avg = (1 - beta1) * g`` after one step, exactly linear in the gradient). The weights
    themselves are NOT compared: Adam divides each gradient element by its own magnitude, so an element
    whose gradient is at float-rounding level (dead ReLUs, near-zero paths) moves by a full +-lr whose sign
    is that rounding noise. Summing two half batches rounds differently from one full batch, so those
    elements flip at random and the relative update difference sat at 1.1e-2 (against a 1e-2 bound) on an
    EPYC machine, deterministically, while another machine's kernels gave less: a comparison that float
    noise decides. The gradient itself agrees to 3.3e-5 relative there: the losses agree to ~1e-6 (oneDNN
    picks other conv kernels for a batch of 2 than of 4) and the last layer's gradient, a sum of per-image
    terms that largely cancel, amplifies that about 30x. A wrong reduction is off by order 1 (a sum instead of
    the mean: exactly 1.0; one rank's half batch alone: the other half's share); the bounds: below.

    The losses of the later steps come after Adam updates, so the gradient's noise reaches them, and with this
    test's original settings (lr 2e-4, Adam's epsilon 1e-8) the first update threw the landmark loss from 0.26
    to 5.0 (noise-level elements moving a full +-lr of random sign): the step-3 landmark loss then differed by
    2.2e-4 relative on the EPYC against a 2e-4 bound. Measured again on the EPYC: the first gradient itself
    differs by 2.2e-4 of its norm there (not the 3.3e-5 of the other machine), and even with a small, linear
    step (lr 1e-5, ``optim.eps`` 1e-2, above 99 % of the first gradient's elements: median 2.3e-3, 99th
    percentile 1.0e-2, so an element whose gradient is rounding noise moves by rounding noise) the losses of
    steps 2-3 differ by up to 2.5e-4 relative, step 1's by 2e-6. Those settings stay (a smooth trajectory, no
    blow-up that could amplify the noise further), and every bound sits between the noise and the smallest
    real fault, about equally far from both: a wrong reduction moves the first gradient by order 1 (a sum
    instead of the mean: 1.0; one rank's half batch alone: ~0.5) and the later losses by ~10 % (one rank's
    weights stepping on half the gradient), so gradient and later losses are bounded at 1e-2 (40x above the
    noise, 20-50x below a fault), the first step's losses, computed on equal weights, at 1e-4 (50x above).
    """
    import yaml

    from training.config import config_to_dict
    from training.trainer import read_training_checkpoint, train

    root = coarse_data[0]
    steps = 3
    common = {"model__flame": str(test_flame_pkl), "model__data_dir": str(deca_data_dir),
              "train__checkpoint_every": 1, "train__keep_checkpoints": steps,
              "optim__eps": 1e-2, "optim__lr": 1e-5}  # Adam's step linear in the gradient, and small (docstring)
    train(_cfg(tmp_path / "single", root, steps=steps, **common), face=face)
    cfg = _cfg(tmp_path / "ddp", root, steps=steps, data__identities_per_batch=1, **common)
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
                           "-m", "training.cli", "train", "--config", str(path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    log = (tmp_path / "ddp" / "train.log").read_text()
    assert "2 process(es)" in log
    a, b = _metrics(tmp_path / "single"), _metrics(tmp_path / "ddp")
    assert len(a) == len(b) == steps
    worst_loss = max(abs(rb[k] - ra[k]) / max(abs(ra[k]), 1e-7) for ra, rb in zip(a, b)
                     for k in ("loss", "lmk", "eye", "pho", "sc"))
    print(f"torchrun vs single process: largest relative loss difference over {steps} steps {worst_loss:.2e}")
    for ra, rb in zip(a, b):
        bound = 1e-4 if ra["step"] == 1 else 1e-2  # equal weights at step 1; after that the gradient's noise
        for k in ("loss", "lmk", "eye", "pho", "sc"):
            assert rb[k] == pytest.approx(ra[k], rel=bound, abs=1e-7), (k, ra["step"], ra[k], rb[k])

    # the first step's averaged gradient, read from Adam's state in each run's step-1 checkpoint
    def first_moments(out: Path) -> dict[int, torch.Tensor]:
        ckpt = read_training_checkpoint(out / "checkpoints" / "step_0000001.pt")
        return {i: st["exp_avg"].double() for i, st in ckpt["optimizer"]["state"].items()}

    ga, gb = first_moments(tmp_path / "single"), first_moments(tmp_path / "ddp")
    assert ga.keys() == gb.keys() and len(ga) > 0
    num = sum(float((ga[i] - gb[i]).pow(2).sum()) for i in ga)
    den = sum(float(ga[i].pow(2).sum()) for i in ga)
    assert den > 0, "the first step had no gradient at all"
    rel = (num / den) ** 0.5
    # per tensor, relative to the whole gradient's scale (a tensor whose gradient is itself rounding noise
    # has no meaningful relative error of its own)
    scale = den ** 0.5
    worst = max(float((ga[i] - gb[i]).norm()) for i in ga) / scale
    print(f"torchrun vs single process: relative difference of the first gradient {rel:.2e} "
          f"(worst tensor {worst:.2e} of the gradient norm)")
    assert rel < 1e-2 and worst < 1e-2, (rel, worst)  # noise 2.2e-4 (EPYC), a fault ~0.5-1 (docstring)


# ------------------------------------------------------------------------------------------------ detail

@pytest.mark.parametrize("formulas", ["paper", "release"])
def test_detail_stage_trains_details_on_the_frozen_coarse_model(face, coarse_run, tmp_path, formulas):
    from core.networks import load_deca_checkpoint
    from training.synthetic import SyntheticSpec, make_synthetic_dataset
    from training.trainer import train

    root = make_synthetic_dataset(tmp_path / "detail_data", face,
                                  SyntheticSpec(n_identities=2, images_per_identity=2, seed=3, detail_amplitude=0.0005))
    init = coarse_run["result"].exported
    extra = {} if formulas == "paper" else {"model__bn_mode": "train"}
    res = train(_cfg(tmp_path / "detail", root, stage="detail", steps=2, model__init_from=str(init),
                     train__tensorboard=True, train__vis_every=2, loss__formulas=formulas, **extra), face=face)
    h = _metrics(tmp_path / "detail")
    assert len(h) == 2
    # release: detail consistency is the doubled batch (no separate term), plus the shading smoothness
    want = {"pho_detail", "dc", "sym", "reg_detail"} if formulas == "paper" else {"pho_detail", "sym", "reg_detail",
                                                                                   "reg_shading"}
    assert want <= set(h[0]) and "mrf" not in h[0]
    assert all(np.isfinite(r[k]) for r in h for k in r if k != "disabled_losses")
    assert all(r["disabled_losses"] == ["mrf"] for r in h)  # weighted but without VGG weights
    assert h[0]["dc" if formulas == "paper" else "pho_detail"] > 0
    text = (tmp_path / "detail" / "train.log").read_text()
    assert "ID-MRF loss is OFF" in text
    before, after = load_deca_checkpoint(init), load_deca_checkpoint(res.exported)
    for k, v in before.E_flame.state_dict().items():  # the coarse encoder stays frozen
        assert torch.equal(v, after.E_flame.state_dict()[k]), k
    changed = [k for k, v in before.D_detail.state_dict().items() if not torch.equal(v, after.D_detail.state_dict()[k])]
    assert changed
    assert any(not torch.equal(v, after.E_detail.state_dict()[k])
               for k, v in before.E_detail.state_dict().items() if k.startswith("encoder.layer4"))


# ------------------------------------------------------------------------------------------------- misc

def test_pretrain_stage_with_workers_augmentation_and_batch_statistics(face, coarse_data, tmp_path):
    from training.trainer import train

    res = train(_cfg(tmp_path / "pre", coarse_data[0], stage="pretrain", steps=2, data__images_per_identity=1,
                     data__num_workers=1, data__scale_jitter=0.1, data__shift_jitter=0.05, model__bn_mode="train"),
                face=face)
    h = _metrics(tmp_path / "pre")
    assert res.step == 2 and res.exported is not None
    assert set(h[0]) >= {"lmk", "eye", "reg_shape", "reg_exp"} and "pho" not in h[0] and "sc" not in h[0]



def test_cli_reports_config_errors(tmp_path, capsys):
    from training.cli import main

    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  learning_rate: 0.1\n")
    assert main(["train", "--config", str(p)]) == 2
    assert "unknown config key 'optim.learning_rate'" in capsys.readouterr().err
    p.write_text("data:\n  root: /does/not/exist\n")
    assert main(["train", "--config", str(p), "--set", f"output_dir={tmp_path / 'o'}"]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_mixed_precision_steps(face, coarse_data, tmp_path):
    from training.trainer import train

    res = train(_cfg(tmp_path / "cuda", coarse_data[0], steps=3, train__device="cuda", train__amp="fp16"), face=face)
    h = _metrics(tmp_path / "cuda")
    assert res.step == 3 and all(np.isfinite(r["loss"]) for r in h)
    ck = torch.load(tmp_path / "cuda/checkpoints/latest.pt", map_location="cpu", weights_only=True)
    assert ck["scaler"] and "scale" in ck["scaler"]
