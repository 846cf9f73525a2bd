"""Does training learn? Two CPU-budget proofs on synthetic data with ground truth (the FLAME-format test model).

* overfit: a handful of images driven to a small landmark error;
* held-out: trained on DECA's released re-crop (``data.crop: release``), on NEW identities (two held-out sets
  of 50 people x 2 images) the landmark error is at most half that of predicting the training set's mean
  codes (computed here), and head rotation and the camera are predicted (R^2 >= 0.5, issue 13's acceptance;
  rotation's spread not collapsed), with E_flame's head on standardised codes (``model.standardise_head``)
  and the learning rate decayed over the last 30 % of the steps (``optim.decay``).

Both train a REDUCED E_flame (ResNet blocks [1, 1, 1, 1] on 64x64 inputs, ``model.encoder_blocks`` /
``model.encoder_input_size``) with the from-scratch recipe (batch statistics, lr 1e-3; docs/training.md,
"Does it learn?"). The numbers of the full ResNet-50 come from ``python -m training.experiments``.
"""
from __future__ import annotations

import pytest
import torch
from training_fixtures import face, one_thread  # noqa: F401  (shared fixtures)

pytestmark = pytest.mark.slow

#: the reduced encoder and the from-scratch recipe the tests train
REDUCED = {"encoder_blocks": [1, 1, 1, 1], "encoder_input_size": 64, "bn_mode": "train"}


#: every loss and optimiser setting these tests depend on, pinned (the defaults may change, e.g. to the
#: released formulas): the pretrain stage's terms as the paper writes them
LOSS = {"formulas": "paper", "lmk": 1.0, "eye": 1.0, "lip": 0.0, "reg_shape": 1e-4, "reg_exp": 1e-4, "reg_jaw": 0.0,
        "landmark_weights": []}
OPTIM = {"lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.0, "grad_clip": 0.0, "warmup_steps": 0,
         "decay": "none"}
#: the held-out test's: a cosine decay to 0.1x over the last 30 % of the steps. Constant-lr Adam leaves the weights
#: as noisy as its last steps; the camera scale, the finest quantity, gains most from the smaller steps
#: (camera R^2 +0.09-0.20 on the two training seeds measured both ways; docs/training.md, "Does it learn?", table (e))
DECAY = {"decay": "cosine", "decay_start": 0.7, "decay_to": 0.1}


def _train(face, root, out, steps, ids_per_batch, data=None, seed=0, optim=None, **model):
    from training.config import config_from_dict
    from training.networks import load_training_networks
    from training.trainer import train

    cfg = config_from_dict({
        "stage": "pretrain", "output_dir": str(out),
        "data": {"root": str(root), "identities_per_batch": ids_per_batch, "images_per_identity": 2,
                 "num_workers": 0, "scale_jitter": 0.0, "shift_jitter": 0.0, **(data or {"crop": "fixed"})},
        "model": {**REDUCED, **model}, "loss": LOSS, "optim": {**OPTIM, **(optim or {})},
        "train": {"max_steps": steps, "threads": 1, "log_every": 50, "tensorboard": False, "resume": "never",
                  "checkpoint_every": 10 ** 6, "seed": seed}})
    res = train(cfg, face=face)
    return load_training_networks(res.checkpoint, cfg.model)


def test_overfits_a_handful_of_images(face, tmp_path):
    from training.evaluate import learning_report
    from training.synthetic import SyntheticSpec, make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", face, SyntheticSpec(n_identities=4, images_per_identity=2,
                                                                         seed=3, detail_amplitude=0.0))
    nets = _train(face, data, tmp_path / "run", steps=300, ids_per_batch=4)
    rep = learning_report(nets, face, data, data)
    print("overfit:", rep.as_dict())
    assert rep.baseline_px > 10.0  # the images differ: predicting one constant is far off
    assert rep.landmark_px < 2.5, rep.as_dict()


#: varied head rotation and framing (as DECA's crops with random scale 1.4-1.8 have), milder expression
#: and identity variation: what a small network can learn from 200 images in a test's budget
HELD_OUT_SET = dict(detail_amplitude=0.0, yaw_deg=30.0, pitch_deg=15.0, roll_deg=10.0, exp_sigma=0.3,
                    shape_sigma=0.3, scale_jitter=0.15, shift_jitter=0.08)


#: E_flame's head predicts standardised codes (training/head.py): shape and expression at std 0.1 (so that they
#: do not take over what rotation and camera explain); the camera scale at std 7.7, about the scale itself (10x
#: its measured spread on these crops, 0.77), so that one unit of its code moves the landmarks about as much as
#: one unit of rotation's: the shared trunk then learns the face's size too (docs/training.md, "Does it learn?");
#: the translation at its measured spread
STANDARDISED = {"standardise_head": True, "head_code_std": {"shape": 0.1, "exp": 0.1, "cam": [7.7, 0.0175, 0.01]}}


def test_learns_to_generalise_to_new_identities(face, tmp_path):
    from training.data import IdentityDataset
    from training.evaluate import learning_report
    from training.synthetic import SyntheticSpec, make_synthetic_dataset

    train_set = make_synthetic_dataset(tmp_path / "train", face, SyntheticSpec(
        n_identities=100, images_per_identity=2, seed=0, **HELD_OUT_SET))
    # 50 new people x 2 images per held-out set: R^2 of 20 images (the earlier 10 x 2) moved by +-0.2 with the
    # draw of the held-out crops alone (bootstrap 90 % interval 0.34-0.71 for one model), more than the effect
    # measured; 100 images narrow it to about +-0.09 (docs/training.md, "Does it learn?", table (e))
    held = {s: make_synthetic_dataset(tmp_path / f"held{s}", face, SyntheticSpec(
        n_identities=50, images_per_identity=2, seed=s, identity_seed=s, **HELD_OUT_SET)) for s in (500, 1000)}
    # trained on the released re-crop: every sample cut afresh from its full image, scale 1.4-1.8
    nets = _train(face, train_set, tmp_path / "run", steps=1000, ids_per_batch=4,
                  data={"crop": "release", "crop_scale": [1.4, 1.8], "crop_shift": 0.0}, optim=DECAY, **STANDARDISED)
    # evaluated on held-out crops drawn the same way (own seeds); the baseline's mean codes are the training
    # crops' (drawn likewise), so the camera's mean matches the crops' mean scale
    base = IdentityDataset(train_set, crop="release", eval_seed=77)
    reps = {s: learning_report(nets, face, base, IdentityDataset(h, crop="release", eval_seed=77 + s))
            for s, h in held.items()}
    for s, rep in reps.items():
        print(f"held-out seed {s}:", rep.as_dict())
    # measured (docs/training.md, "Does it learn?", table (e)), held-out seeds 500 / 1000, train.seed 0 (this
    # test): 4.1 vs 18.4 px and 4.3 vs 18.0 px, rotation R^2 0.87 / 0.85, camera R^2 0.84 / 0.81; camera R^2
    # with train.seed 1: 0.78 / 0.78, 2: 0.78 / 0.74, 3: 0.85 / 0.87 (constant lr: seed 2 0.58 / 0.54, 3 0.73 /
    # 0.75). Another CPU rounds differently, which over 1000 steps acts like another seed: the worst of the four
    # is 0.24 above the bound
    for s, rep in reps.items():
        assert rep.landmark_px <= 0.5 * rep.baseline_px, (s, rep.as_dict())
        assert rep.r2["rotation"] >= 0.5, (s, rep.as_dict())
        assert rep.spread["rotation"] >= 0.2 * rep.spread["rotation_gt"], (s, rep.as_dict())  # not collapsed
        assert rep.r2["cam"] >= 0.5, (s, rep.as_dict())  # issue 13's camera criterion
