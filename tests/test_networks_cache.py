"""The cached folded networks (core.networks.cache) against folding the checkpoint (the reference path).

Bound: 0. The cache file holds the folded tensors themselves (torch.save keeps values and strides), so the
networks loaded from it must be the reference's bit for bit, and so must their outputs.
"""
from __future__ import annotations

import os

import pytest
import torch

from core.networks import CheckpointError, load_deca_checkpoint, save_deca_checkpoint
from core.networks import cache as nc
from core.networks.responsive import responsive_networks
from core.networks.runtime import inference_networks


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "deca_model.tar"
    save_deca_checkpoint(responsive_networks(seed=6), path)
    return path


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv(nc.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "networks"


def _assert_identical(ref, got):
    sr, sg = ref.state_dict(keep_vars=True), got.state_dict(keep_vars=True)
    assert list(sr) == list(sg)
    for k in sr:
        a, b = sr[k], sg[k]
        assert a.stride() == b.stride(), k  # channels_last kept
        assert type(a) is type(b) and a.requires_grad == b.requires_grad, k
        assert torch.equal(a, b), k
    assert [type(m) for m in ref.modules()] == [type(m) for m in got.modules()]
    assert not got.training
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 224, 224, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        oa, ob = ref(x), got(x)
    assert torch.equal(oa.codes.to_vector(), ob.codes.to_vector())
    assert torch.equal(oa.detail, ob.detail) and torch.equal(oa.displacement, ob.displacement)


def test_cached_networks_equal_the_folded_checkpoint_bit_for_bit(checkpoint, cache_home, monkeypatch):
    ref = inference_networks(load_deca_checkpoint(checkpoint), "cpu", inplace=True)
    first = nc.load_inference_networks(checkpoint)  # folds and writes the cache
    assert [p.name for p in cache_home.iterdir()] == [nc.cache_path(checkpoint).name]
    _assert_identical(ref, first)

    def no_checkpoint(*a, **k):
        raise AssertionError("the checkpoint was read although its folded networks are cached")

    monkeypatch.setattr(nc, "load_deca_checkpoint", no_checkpoint)
    second = nc.load_inference_networks(checkpoint)
    _assert_identical(ref, second)
    # in-place changes stay in the process: the mapping is private, the cache file is unchanged
    with torch.no_grad():
        second.E_flame.layers[0].weight.add_(1.0)
    third = nc.load_inference_networks(checkpoint)
    _assert_identical(ref, third)


def test_a_changed_checkpoint_is_folded_again(checkpoint, cache_home, tmp_path):
    path = tmp_path / "deca_model.tar"
    save_deca_checkpoint(responsive_networks(seed=7), path)
    first = nc.load_inference_networks(path)
    old_key = nc.cache_path(path)
    save_deca_checkpoint(responsive_networks(seed=8), path)  # replaced: another size or modification time
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert nc.cache_path(path) != old_key
    got = nc.load_inference_networks(path)
    _assert_identical(inference_networks(load_deca_checkpoint(path), "cpu", inplace=True), got)
    assert not torch.equal(first.E_flame.layers[0].weight, got.E_flame.layers[0].weight)


def test_a_damaged_cache_file_is_rebuilt_with_a_warning(checkpoint, cache_home):
    nc.load_inference_networks(checkpoint)
    path = nc.cache_path(checkpoint)
    path.write_bytes(path.read_bytes()[: 10**6])  # truncated
    with pytest.warns(nc.NetworkCacheWarning, match="cached networks unusable"):
        got = nc.load_inference_networks(checkpoint)
    _assert_identical(inference_networks(load_deca_checkpoint(checkpoint), "cpu", inplace=True), got)
    assert path.stat().st_size > 10**8  # written again
    # a well-formed file of other tensors: refused by the strict load, rebuilt
    torch.save({"E_flame.layers.0.weight": torch.zeros(3)}, path)
    with pytest.warns(nc.NetworkCacheWarning, match="cached networks unusable"):
        nc.load_inference_networks(checkpoint)


def test_an_unwritable_cache_only_warns(checkpoint, cache_home, monkeypatch):
    def fail(*a, **k):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(nc, "atomic_write_bytes", fail)
    with pytest.warns(nc.NetworkCacheWarning, match="cannot cache the folded networks"):
        got = nc.load_inference_networks(checkpoint)
    _assert_identical(inference_networks(load_deca_checkpoint(checkpoint), "cpu", inplace=True), got)


def test_checkpoint_errors_are_the_checkpoints_and_no_cache_is_written(tmp_path, cache_home):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"not a checkpoint")
    other = tmp_path / "other.tar"
    torch.save({"E_flame": {"w": torch.zeros(2)}, "E_detail": {}, "D_detail": {}}, other)
    for path in (tmp_path / "nothing.tar", bad, other):  # missing, unreadable, another architecture
        with pytest.raises(CheckpointError) as want:
            load_deca_checkpoint(path)
        with pytest.raises(CheckpointError) as got:
            nc.load_inference_networks(path)
        assert str(got.value) == str(want.value)
    assert not cache_home.exists() or not any(cache_home.iterdir())


def test_cache_false_writes_nothing_and_old_files_are_pruned(checkpoint, cache_home, tmp_path):
    nc.load_inference_networks(checkpoint, cache=False)
    assert not cache_home.exists()
    cache_home.mkdir(parents=True)
    for i in range(3):  # older files of other checkpoints
        f = cache_home / f"folded_{i:040d}.pt"
        f.write_bytes(b"x")
        os.utime(f, ns=(10**9 * (i + 1), 10**9 * (i + 1)))
    nc.load_inference_networks(checkpoint)
    left = sorted(p.name for p in cache_home.iterdir())
    assert len(left) == nc.CACHE_KEEP and nc.cache_path(checkpoint).name in left
    assert f"folded_{2:040d}.pt" in left  # the most recently used of the others
