"""Tests of core.networks: layout against the release manifest, numerics against independent
functional references, the decoder's input order, and checkpoint loading/refusals."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.networks import (
    NETWORK_NAMES,
    CheckpointError,
    DecaNetworks,
    DetailDecoder,
    DetailEncoder,
    FlameEncoder,
    ResNetTrunk,
    build_deca_networks,
    expected_layout_manifest,
    expected_state_dict_layout,
    load_deca_checkpoint,
    save_deca_checkpoint,
    split_flame_codes,
    verify_checkpoint,
)

# --------------------------------------------------------------------------------------------
# helpers


def _randomize_batchnorms(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial eval-mode batch norms (the default ones are the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=g)))


def _random_nets(seed: int = 0) -> DecaNetworks:
    torch.manual_seed(seed)
    nets = build_deca_networks()
    _randomize_batchnorms(nets, seed)
    return nets.eval()


def _cheap_state_dicts(layout=None) -> dict[str, dict[str, torch.Tensor]]:
    """State dicts with the right layout whose tensors all view one element (tiny files)."""
    layout = layout or expected_state_dict_layout()
    return {net: {k: torch.zeros((), dtype=s.dtype).expand(s.shape) for k, s in specs.items()}
            for net, specs in layout.items()}


def _manifest(manifest_path: Path) -> dict:
    return json.loads(manifest_path.read_text())


@pytest.fixture(scope="module")
def nets() -> DecaNetworks:
    return _random_nets(0)


@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory, nets) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "deca_model.tar"
    save_deca_checkpoint(nets, path, extra={"opt": {"lr": torch.tensor(1e-4), "state": {}},
                                            "global_step": 123456})
    return path


# --------------------------------------------------------------------------------------------
# layout


@pytest.mark.parametrize("name, factory", [("E_flame", FlameEncoder), ("E_detail", DetailEncoder),
                                           ("D_detail", DetailDecoder)])
def test_state_dict_equals_manifest(manifest_path, name, factory):
    manifest = _manifest(manifest_path)[name]
    sd = factory().state_dict()
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in sd.items()]
    # same entries, same order
    assert ours == manifest
    # and as sets (order-insensitive), with the int64 counters
    assert {(k, tuple(s), d) for k, s, d in ours} == {(k, tuple(s), d) for k, s, d in manifest}
    counters = [k for k in sd if k.endswith("num_batches_tracked")]
    assert counters and all(sd[k].dtype == torch.int64 and sd[k].shape == () for k in counters)
    assert {k for k, _, d in manifest if d == "int64"} == set(counters)


def test_expected_layout_matches_manifest(manifest_path):
    assert expected_layout_manifest() == _manifest(manifest_path)
    layout = expected_state_dict_layout()
    assert list(layout) == list(NETWORK_NAMES)
    assert layout["E_flame"]["layers.2.weight"].shape == (236, 1024)
    assert layout["D_detail"]["conv_blocks.0.num_batches_tracked"].dtype == torch.int64
    # callers may mutate what they get without affecting the next call
    layout["E_flame"].clear()
    assert len(expected_state_dict_layout()["E_flame"]) == 322


# --------------------------------------------------------------------------------------------
# shapes and codes


def test_output_shapes_and_codes(nets):
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        params = nets.E_flame(images)
        detail = nets.E_detail(images)
    assert params.shape == (2, 236) and detail.shape == (2, 128)
    codes = split_flame_codes(params)
    assert codes.shape.shape == (2, 100) and codes.tex.shape == (2, 50) and codes.exp.shape == (2, 50)
    assert codes.pose.shape == (2, 6) and codes.cam.shape == (2, 3) and codes.light.shape == (2, 9, 3)
    assert torch.equal(codes.to_vector(), params)

    dec = DetailDecoder()
    _randomize_batchnorms(dec, 3)
    with torch.no_grad():  # make tanh saturate: the output must still be bounded by 0.01
        dec.conv_blocks[21].weight.mul_(1e4)
    dec.eval()
    with torch.no_grad():
        disp = dec.decode(codes.jaw_pose, codes.exp, detail)
    assert disp.shape == (2, 1, 256, 256)
    assert disp.abs().max() <= 0.01
    assert disp.abs().max() > 0.009  # saturated, so the 0.01 scale is really applied


def test_infer_float32_and_bf16(nets):
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = nets(images)
    out = nets.infer(images)
    assert torch.equal(out.detail, ref.detail)
    fast = nets.infer(images, bf16=True)
    assert fast.detail.dtype == torch.float32 and fast.codes.light.dtype == torch.float32
    assert fast.displacement.dtype == torch.float32 and fast.displacement.shape == (1, 1, 256, 256)
    scale = ref.detail.abs().max()
    assert (fast.detail - ref.detail).abs().max() < 0.1 * scale  # bf16: close, not equal


def test_feature_map_is_7x7_at_224():
    with torch.device("meta"):  # shapes only, no compute
        trunk = ResNetTrunk()
        fmap = trunk.feature_map(torch.empty(1, 3, 224, 224))
        feats = trunk(torch.empty(3, 3, 224, 224))
    assert fmap.shape == (1, 2048, 7, 7) and feats.shape == (3, 2048)


def test_split_order():
    v = torch.arange(236, dtype=torch.float64).unsqueeze(0).repeat(2, 1)
    c = split_flame_codes(v)
    assert c.shape[0, 0] == 0 and c.shape[0, -1] == 99
    assert c.tex[0, 0] == 100 and c.tex[0, -1] == 149
    assert c.exp[0, 0] == 150 and c.exp[0, -1] == 199
    assert c.pose[0].tolist() == list(range(200, 206))
    assert c.global_pose[0].tolist() == [200, 201, 202] and c.jaw_pose[0].tolist() == [203, 204, 205]
    assert c.cam[0].tolist() == [206, 207, 208]  # scale, tx, ty
    assert c.light[0, 0].tolist() == [209, 210, 211]  # band 0, RGB
    assert c.light[0, 1, 0] == 212 and c.light[0, 8, 2] == 235
    assert torch.equal(c.to_vector(), v)
    with pytest.raises(ValueError, match="236"):
        split_flame_codes(torch.zeros(2, 235))


# --------------------------------------------------------------------------------------------
# numerics against independent references (float64)


def _bn(x, sd, p, eps=1e-5):
    shape = (1, -1, 1, 1)
    return ((x - sd[p + "running_mean"].view(shape)) / torch.sqrt(sd[p + "running_var"].view(shape) + eps)
            * sd[p + "weight"].view(shape) + sd[p + "bias"].view(shape))


def _ref_trunk(x, sd, prefix=""):
    """ResNet-50 (torchvision naming, stride on the 3x3) written directly with functional ops."""
    P = prefix
    x = F.relu(_bn(F.conv2d(x, sd[P + "conv1.weight"], stride=2, padding=3), sd, P + "bn1."))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for stage, (n_blocks, stride) in enumerate(zip((3, 4, 6, 3), (1, 2, 2, 2)), start=1):
        for b in range(n_blocks):
            p = f"{P}layer{stage}.{b}."
            s = stride if b == 0 else 1
            y = F.relu(_bn(F.conv2d(x, sd[p + "conv1.weight"]), sd, p + "bn1."))
            y = F.relu(_bn(F.conv2d(y, sd[p + "conv2.weight"], stride=s, padding=1), sd, p + "bn2."))
            y = _bn(F.conv2d(y, sd[p + "conv3.weight"]), sd, p + "bn3.")
            short = _bn(F.conv2d(x, sd[p + "downsample.0.weight"], stride=s), sd, p + "downsample.1.") \
                if b == 0 else x
            x = F.relu(y + short)
    return x.mean(dim=(2, 3))


def _upsample2_bilinear(x):
    """x2 bilinear, half-pixel centres (align_corners=False), edges clamped, by hand."""
    def along(t, dim):
        n = t.shape[dim]
        prev = torch.cat([t.narrow(dim, 0, 1), t.narrow(dim, 0, n - 1)], dim)
        nxt = torch.cat([t.narrow(dim, 1, n - 1), t.narrow(dim, n - 1, 1)], dim)
        even = 0.25 * prev + 0.75 * t
        odd = 0.75 * t + 0.25 * nxt
        return torch.stack([even, odd], dim=dim + 1).flatten(dim, dim + 1)
    return along(along(x, 2), 3)


def _ref_decoder(z, sd):
    h = F.linear(z, sd["l1.0.weight"], sd["l1.0.bias"]).view(z.shape[0], 128, 8, 8)
    h = _bn(h, sd, "conv_blocks.0.")
    for conv in (2, 6, 10, 14, 18):
        h = _upsample2_bilinear(h)
        h = F.conv2d(h, sd[f"conv_blocks.{conv}.weight"], sd[f"conv_blocks.{conv}.bias"], padding=1)
        h = _bn(h, sd, f"conv_blocks.{conv + 1}.", eps=0.8)
        h = torch.where(h > 0, h, 0.2 * h)
    h = F.conv2d(h, sd["conv_blocks.21.weight"], sd["conv_blocks.21.bias"], padding=1)
    return torch.tanh(h) * 0.01


def test_trunk_matches_functional_reference_float64():
    torch.manual_seed(5)
    trunk = ResNetTrunk()
    _randomize_batchnorms(trunk, 5)
    trunk = trunk.double().eval()
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ours = trunk(x)
        ref = _ref_trunk(x, trunk.state_dict())
    assert ours.dtype == torch.float64 and ours.shape == (2, 2048)
    assert ref.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_flame_encoder_matches_reference_float64():
    torch.manual_seed(6)
    enc = FlameEncoder()
    _randomize_batchnorms(enc, 6)
    enc = enc.double().eval()
    sd = enc.state_dict()
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        ours = enc(x)
        feats = _ref_trunk(x, sd, prefix="encoder.")
        ref = F.linear(F.relu(F.linear(feats, sd["layers.0.weight"], sd["layers.0.bias"])),
                       sd["layers.2.weight"], sd["layers.2.bias"])
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_detail_decoder_matches_reference_float64():
    torch.manual_seed(7)
    dec = DetailDecoder()
    _randomize_batchnorms(dec, 7)
    dec = dec.double().eval()
    z = torch.randn(2, 181, dtype=torch.float64)
    with torch.no_grad():
        ours = dec(z)
        ref = _ref_decoder(z, dec.state_dict())
    assert ours.dtype == torch.float64 and ours.shape == (2, 1, 256, 256)
    assert ref.abs().max() > 1e-5
    torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-14)


# --------------------------------------------------------------------------------------------
# the decoder's input order [jaw (3), exp (50), detail (128)]


@pytest.mark.parametrize("live", ["jaw", "exp", "detail"])
def test_decoder_input_order(live):
    columns = {"jaw": slice(0, 3), "exp": slice(3, 53), "detail": slice(53, 181)}
    torch.manual_seed(8)
    dec = DetailDecoder()
    _randomize_batchnorms(dec, 8)
    dec.eval()
    with torch.no_grad():
        w = dec.l1[0].weight
        keep = w[:, columns[live]].clone() * 10
        w.zero_()
        w[:, columns[live]] = keep
    g = torch.Generator().manual_seed(9)
    base = {"jaw": torch.randn(1, 3, generator=g), "exp": torch.randn(1, 50, generator=g),
            "detail": torch.randn(1, 128, generator=g)}
    with torch.no_grad():
        out0 = dec.decode(base["jaw"], base["exp"], base["detail"])
        assert torch.equal(out0, dec(torch.cat([base["jaw"], base["exp"], base["detail"]], 1)))
        for part in ("jaw", "exp", "detail"):
            changed = dict(base)
            changed[part] = base[part] + torch.randn(base[part].shape, generator=g)
            out = dec.decode(changed["jaw"], changed["exp"], changed["detail"])
            if part == live:
                assert (out - out0).abs().max() > 1e-6, f"changing {part} should change the output"
            else:
                assert torch.equal(out, out0), f"changing {part} must not change the output"


def test_decoder_rejects_bad_input():
    dec = DetailDecoder()
    with pytest.raises(ValueError, match="181"):
        dec(torch.zeros(1, 180))
    with pytest.raises(ValueError, match="exp"):
        dec.decode(torch.zeros(1, 3), torch.zeros(1, 100), torch.zeros(1, 128))


# --------------------------------------------------------------------------------------------
# checkpoints


def test_checkpoint_round_trip_reproduces_outputs(nets, saved_checkpoint):
    raw = torch.load(saved_checkpoint, map_location="cpu", weights_only=True)
    assert set(raw) == {"E_flame", "E_detail", "D_detail", "opt", "global_step"}
    assert [p.name for p in saved_checkpoint.parent.iterdir()] == [saved_checkpoint.name]  # no temp left

    loaded = load_deca_checkpoint(saved_checkpoint, device="cpu")
    assert not loaded.training
    for name in NETWORK_NAMES:
        a, b = getattr(nets, name).state_dict(), getattr(loaded, name).state_dict()
        assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    images = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        o1, o2 = nets(images), loaded(images)
    assert torch.equal(o1.codes.to_vector(), o2.codes.to_vector())
    assert torch.equal(o1.detail, o2.detail)
    assert torch.equal(o1.displacement, o2.displacement)
    assert verify_checkpoint(saved_checkpoint) == []


def test_load_as_float64(saved_checkpoint):
    loaded = load_deca_checkpoint(saved_checkpoint, dtype=torch.float64)
    with torch.no_grad():
        out = loaded.D_detail(torch.zeros(1, 181, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_wrong_shape_is_refused_naming_the_tensor(tmp_path):
    sds = _cheap_state_dicts()
    sds["E_flame"]["layers.2.weight"] = torch.zeros(()).expand(200, 1024)
    path = tmp_path / "other.tar"
    torch.save({**sds, "global_step": 3}, path)
    with pytest.raises(CheckpointError) as ei:
        load_deca_checkpoint(path)
    msg = str(ei.value)
    assert str(path) in msg
    assert "E_flame" in msg and "layers.2.weight" in msg and "(200, 1024)" in msg and "(236, 1024)" in msg
    assert len(ei.value.problems) == 1
    problems = verify_checkpoint(path)
    assert len(problems) == 1 and "layers.2.weight" in problems[0]


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    sds = _cheap_state_dicts()
    del sds["D_detail"]["conv_blocks.19.running_var"]
    sds["E_detail"]["fc.weight"] = torch.zeros(1000, 2048)
    path = tmp_path / "bad.tar"
    torch.save(sds, path)
    with pytest.raises(CheckpointError) as ei:
        load_deca_checkpoint(path)
    msg = str(ei.value)
    assert "missing tensor 'conv_blocks.19.running_var'" in msg and "D_detail" in msg
    assert "unexpected tensor 'fc.weight'" in msg and "E_detail" in msg


def test_cheap_checkpoint_with_right_layout_loads(tmp_path):
    path = tmp_path / "zeros.tar"
    save_deca_checkpoint(_cheap_state_dicts(), path)
    assert path.stat().st_size < 2_000_000  # views of one element: tiny file
    assert verify_checkpoint(path) == []
    nets = load_deca_checkpoint(path)
    assert float(nets.E_flame.layers[2].weight.detach().abs().sum()) == 0.0


def test_legacy_format_checkpoint_loads(tmp_path, nets):
    """Files written by torch < 1.6 (not zip: no mmap) load too."""
    path = tmp_path / "legacy.tar"
    sds = _cheap_state_dicts()
    sds["D_detail"] = nets.D_detail.state_dict()
    torch.save(sds, path, _use_new_zipfile_serialization=False)
    assert verify_checkpoint(path) == []
    loaded = load_deca_checkpoint(path)
    z = torch.randn(2, 181)
    with torch.no_grad():
        assert torch.equal(loaded.D_detail(z), nets.D_detail(z))


def test_missing_network_is_refused(tmp_path):
    sds = _cheap_state_dicts()
    del sds["D_detail"]
    path = tmp_path / "no_detail.tar"
    torch.save({**sds, "opt": {}}, path)
    with pytest.raises(CheckpointError, match="missing D_detail") as ei:
        load_deca_checkpoint(path)
    msg = str(ei.value)
    assert str(path) in msg and "'E_flame'" in msg and "'opt'" in msg  # lists what is there


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere" / "deca_model.tar"
    with pytest.raises(CheckpointError, match="not found") as ei:
        load_deca_checkpoint(path)
    assert str(path) in str(ei.value) and isinstance(ei.value, ValueError)
    assert "not found" in verify_checkpoint(path)[0]


def test_truncated_and_empty_files(tmp_path):
    good = tmp_path / "good.tar"
    save_deca_checkpoint(_cheap_state_dicts(), good)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.tar"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as ei:
        load_deca_checkpoint(trunc)
    assert str(trunc) in str(ei.value)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_deca_checkpoint(empty)


def test_non_checkpoint_pickles(tmp_path):
    a_list = tmp_path / "list.pt"
    torch.save([torch.zeros(2), 3], a_list)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_deca_checkpoint(a_list)

    one_state_dict = tmp_path / "linear.pt"
    torch.save(nn.Linear(2, 2).state_dict(), one_state_dict)
    with pytest.raises(CheckpointError, match="missing E_flame, E_detail, D_detail") as ei:
        load_deca_checkpoint(one_state_dict)
    assert "'weight'" in str(ei.value) and "single network's state dict" in str(ei.value)

    not_a_dict_inside = tmp_path / "inner.pt"
    torch.save({"E_flame": [1], "E_detail": {}, "D_detail": {}}, not_a_dict_inside)
    with pytest.raises(CheckpointError, match="E_flame is a list"):
        load_deca_checkpoint(not_a_dict_inside)

    plain = tmp_path / "plain.pkl"
    with open(plain, "wb") as f:
        pickle.dump({"E_flame": {}}, f, protocol=2)
    with pytest.raises(CheckpointError, match="cannot be read as a torch checkpoint"):
        load_deca_checkpoint(plain)


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_code_executing_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.tar"
    payload = {"E_flame": _Exploit(marker), "E_detail": {}, "D_detail": {}}
    if writer == "torch":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(CheckpointError, match="refused") as ei:
        load_deca_checkpoint(path)
    assert str(path) in str(ei.value)
    assert verify_checkpoint(path)[0].startswith(str(path))
    assert not marker.exists()


def test_save_refuses_incomplete(tmp_path):
    with pytest.raises(ValueError, match="D_detail"):
        save_deca_checkpoint({"E_flame": {}, "E_detail": {}}, tmp_path / "x.tar")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")])])
def test_load_and_forward_on_each_device(saved_checkpoint, nets, device):
    loaded = load_deca_checkpoint(saved_checkpoint, device=device)
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        out = loaded(images.to(device))
        ref = nets(images)
    assert out.displacement.device.type == device and out.displacement.shape == (2, 1, 256, 256)
    torch.testing.assert_close(out.codes.to_vector().cpu(), ref.codes.to_vector(), rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(out.detail.cpu(), ref.detail, rtol=1e-3, atol=1e-3)


def test_a_half_precision_checkpoint_loads_as_float32_with_its_values(tmp_path):
    """Loading assigns the checkpoint's own tensors (no copy); another float precision is converted."""
    torch.manual_seed(0)
    nets = build_deca_networks().half()
    path = save_deca_checkpoint(nets, tmp_path / "half.tar")
    loaded = load_deca_checkpoint(path)
    for (name, a), (_, b) in zip(nets.state_dict().items(), loaded.state_dict().items()):
        assert b.dtype == (torch.float32 if a.is_floating_point() else a.dtype), name
        torch.testing.assert_close(b, a.to(b.dtype), rtol=0, atol=0)
