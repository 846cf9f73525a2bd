"""``deca-train index ROOT``: the manifest of a dataset folder made before manifests existed.

The folder is one the existing writers make (``deca-train synth``), with its manifest deleted; the expected
index is this test's own walk of the folder (``os.walk``, not ``IdentityDataset.list_folder``).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from training_fixtures import face, one_thread  # noqa: F401  (shared fixtures)


@pytest.fixture(scope="module")
def synth(face, tmp_path_factory):
    from training.synthetic import SyntheticSpec, make_synthetic_dataset

    return Path(make_synthetic_dataset(tmp_path_factory.mktemp("synth"), face,
                                       SyntheticSpec(n_identities=3, images_per_identity=2, seed=3,
                                                     detail_amplitude=0.0)))


def _walk(root: Path) -> dict[str, list[str]]:
    """{identity: sorted sample names}: every <identity>/<name>.png (not .full.png) beside its <name>.npz."""
    out = {}
    for dirpath, _, files in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        if len(rel.parts) != 1:
            continue
        names = sorted(f[:-4] for f in files if f.endswith(".png") and not f.endswith(".full.png")
                       and f[:-4] + ".npz" in files)
        if names:
            out[rel.parts[0]] = names
    return dict(sorted(out.items()))


def test_index_writes_the_manifest_training_then_uses(synth, tmp_path, capsys):
    from training.cli import main
    from training.data import IdentityDataset, read_manifests

    root = tmp_path / "old"
    shutil.copytree(synth, root)
    (root / "manifest.json").unlink()  # as prepared before manifests existed
    (root / "id_extra").mkdir()  # an identity folder without a complete sample is not indexed
    (root / "id_extra" / "half.png").write_bytes(b"")
    assert IdentityDataset(root).indexed_by == "listing"
    expected = _walk(root)
    assert sum(map(len, expected.values())) == 6 and "id_extra" not in expected

    assert main(["index", str(root)]) == 0
    assert "6 image(s) of 3 identities" in capsys.readouterr().out
    assert read_manifests(root) == expected
    m = json.loads((root / "manifest.json").read_text())
    assert m["format"] == "deca-train-manifest" and m["identities"] == expected
    ds = IdentityDataset(root)
    assert ds.indexed_by == "manifest" and len(ds) == 6
    assert [p.relative_to(root).as_posix() for f in ds.files for p in f] == \
        [f"{i}/{n}.png" for i, names in expected.items() for n in names]

    # an existing manifest is kept unless --overwrite; with it, every older manifest (shards too) is replaced
    assert main(["index", str(root)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    from training.data import write_manifest

    ident, names = next(iter(expected.items()))
    write_manifest(root, [(ident, names[0])], "manifest.0of2.json")
    (root / ident / f"{names[0]}.npz").unlink()  # the sample is gone: a stale shard manifest still lists it
    assert main(["index", str(root), "--overwrite"]) == 0
    assert sorted(p.name for p in root.glob("manifest*.json")) == ["manifest.json"]
    assert read_manifests(root) == _walk(root) and sum(map(len, _walk(root).values())) == 5


def test_index_refuses_what_is_not_a_dataset(tmp_path, capsys):
    from training.data import DatasetError, index_dataset

    with pytest.raises(DatasetError, match="not found"):
        index_dataset(tmp_path / "missing")
    (tmp_path / "photos" / "person").mkdir(parents=True)
    (tmp_path / "photos" / "person" / "a.png").write_bytes(b"")  # photos, not a prepared dataset
    with pytest.raises(DatasetError, match="not a dataset folder"):
        index_dataset(tmp_path / "photos")
    assert not list((tmp_path / "photos").glob("manifest*.json"))
    other = tmp_path / "other"
    (other / "x").mkdir(parents=True)
    (other / "dataset.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DatasetError, match="not a deca-train dataset"):
        index_dataset(other)
    from training.cli import main

    assert main(["index", str(tmp_path / "photos")]) == 2
    assert "not a dataset folder" in capsys.readouterr().err
