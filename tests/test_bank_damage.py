"""A caption bank damaged on disk fails on open with one line naming the file (issue 20):
captions.txt cut short, truncated or random embeddings, out-of-range caption ids, wrong dtypes,
and pickled arrays, which are refused without being unpickled."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from hostile import Marker, evil_npy_file

from polycap.data.captions import load_captions
from polycap.errors import BadInput
from polycap.retrieval.bank import Bank, build_bank


@pytest.fixture(scope="module")
def shapes(english, tmp_path_factory: pytest.TempPathFactory):
    from polycap.offline.synthetic import make_synthetic_set

    return make_synthetic_set(english, tmp_path_factory.mktemp("shapes"), 8, seed=3)


@pytest.fixture(scope="module")
def built(shapes, english, tiny_clip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from polycap.data.encoding import load_encoder

    encoder = load_encoder(tiny_clip.name, pretrained=tiny_clip.weights)
    out = tmp_path_factory.mktemp("banks") / "bank"
    build_bank(
        load_captions(shapes.train_file), encoder, out, english, dtype="float32", progress=False
    )
    return out


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _damage(bank: Path, case: str, marker: Path) -> str:
    """Damage ``bank`` as ``case`` says; returns the file name the error must name."""
    if case == "captions cut short":
        _cut(bank / "captions.txt", (bank / "captions.txt").stat().st_size // 2)
        return "captions.txt"
    if case == "text.npy truncated":
        _cut(bank / "text.npy", (bank / "text.npy").stat().st_size - 40)
        return "text.npy"
    if case == "image.npy random":
        rows = np.load(bank / "image.npy").shape
        np.save(bank / "image.npy", np.random.default_rng(0).normal(size=rows).astype("float32"))
        return "image.npy"
    if case == "image.npy random bytes":
        (bank / "image.npy").write_bytes(np.random.default_rng(0).bytes(4096))
        return "image.npy"
    if case == "ids out of range":
        ids = np.load(bank / "image_captions.ids.npy")
        ids[-1] = 10_000
        np.save(bank / "image_captions.ids.npy", ids)
        return "image_captions.ids.npy"
    if case == "text.npy float64":
        np.save(bank / "text.npy", np.load(bank / "text.npy").astype("float64"))
        return "text.npy"
    if case == "offsets pickled":
        evil_npy_file(bank / "captions.offsets.npy", marker)
        return "captions.offsets.npy"
    if case == "text.npy pickled":
        evil_npy_file(bank / "text.npy", marker)
        return "text.npy"
    if case == "image.npy a bare pickle":
        (bank / "image.npy").write_bytes(pickle.dumps(Marker(marker)))
        return "image.npy"
    if case == "ptr pickled":
        evil_npy_file(bank / "image_captions.ptr.npy", marker)
        return "image_captions.ptr.npy"
    if case == "meta count not a number":
        meta = json.loads((bank / "meta.json").read_text())
        (bank / "meta.json").write_text(json.dumps({**meta, "captions": "12"}))
        return "meta.json"
    raise AssertionError(case)


CASES = [
    "captions cut short",
    "text.npy truncated",
    "image.npy random",
    "image.npy random bytes",
    "ids out of range",
    "text.npy float64",
    "offsets pickled",
    "text.npy pickled",
    "ptr pickled",
    "image.npy a bare pickle",
    "meta count not a number",
]


@pytest.mark.parametrize("case", CASES)
def test_a_damaged_bank_is_refused_on_open_naming_the_file(built, tmp_path, case) -> None:
    bank = tmp_path / "bank"
    shutil.copytree(built, bank)
    marker = tmp_path / "unpickled"
    name = _damage(bank, case, marker)
    with pytest.raises(BadInput) as caught:
        Bank.open(bank)
    message = str(caught.value)
    assert name in message and "\n" not in message, message
    assert not marker.exists()  # nothing was unpickled


@pytest.mark.parametrize("case", ["captions cut short", "ids out of range", "ptr pickled"])
def test_retrieve_on_a_damaged_bank_is_one_line_exit_2(built, shapes, tmp_path, case, capsys):
    bank = tmp_path / "bank"
    shutil.copytree(built, bank)
    marker = tmp_path / "unpickled"
    name = _damage(bank, case, marker)
    image = shapes.image_dir / shapes.train_images[0]
    args = ["retrieve", str(image), "--bank", str(bank), "--device", "cpu", "--mode", "image"]
    result = run_cli(args, capsys)
    assert result.code == 2, result.err
    lines = [line for line in result.err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    assert name in " ".join(result.err.split())
    assert not marker.exists()


def test_an_intact_bank_opens(built) -> None:
    assert Bank.open(built).n_captions > 0


def test_a_pickled_feature_cache_entry_is_never_unpickled(tmp_path) -> None:
    from polycap.data.encoding import FeatureCache

    cache = FeatureCache(tmp_path / "cache", "open_clip:x", 4)
    digest = "ab" * 32
    target = Path(cache._file(digest))
    target.parent.mkdir(parents=True)
    marker = tmp_path / "unpickled"
    evil_npy_file(target, marker)
    assert cache.get(digest) is None  # a damaged entry counts as absent
    bare = "cd" * 32
    Path(cache._file(bare)).parent.mkdir(parents=True)
    Path(cache._file(bare)).write_bytes(pickle.dumps(Marker(marker)))
    assert cache.get(bare) is None
    assert not marker.exists()
