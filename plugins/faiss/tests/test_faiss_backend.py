"""The FAISS index backend: registered by entry point, flat equal to the numpy scan (the
reference), IVF and HNSW finding planted near-duplicates, banks that remember their backend,
and one-line errors. Tiny local models only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from polycap_faiss import FaissBackend

from polycap.data.captions import load_captions
from polycap.data.encoding import encode_images, load_encoder
from polycap.errors import BadInput, UnknownName
from polycap.offline import tiny
from polycap.plugins import PluginHost, get_registries
from polycap.retrieval.backends import IndexChoice, NumpyScan
from polycap.retrieval.bank import Bank, build_bank
from polycap.retrieval.search import retrieve, top_k


@pytest.fixture(scope="module", autouse=True)
def _feature_cache_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Image features go to a temporary cache, never to ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POLYCAP_CACHE_DIR", str(tmp_path_factory.mktemp("polycap-cache")))
        yield


def unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    matrix = rng.standard_normal((rows, dim)).astype(np.float32)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4,000 random unit rows, 40 queries, and for each query 5 planted near-duplicates."""
    rng = np.random.default_rng(0)
    matrix = unit_rows(rng, 4000, 48)
    queries = unit_rows(rng, 40, 48)
    truth = rng.choice(4000, size=(40, 5), replace=False)
    for query, rows in zip(queries, truth, strict=True):
        for rank, row in enumerate(rows):
            near = query + (0.2 + 0.1 * rank) * rng.standard_normal(48).astype(np.float32) / 7
            matrix[row] = near / np.linalg.norm(near)
    return matrix, queries, truth


def build_and_open(matrix: np.ndarray, folder: Path, index_type: str, **options: str):
    backend = FaissBackend()
    record = backend.build(matrix, folder, "image", index_type, options)
    json.dumps(record)  # the record goes into meta.json
    return backend.open(folder, "image", json.loads(json.dumps(record)), matrix), record


def test_the_entry_point_registers_the_backend() -> None:
    registries = PluginHost().registries
    assert "faiss" in registries.index_backends and "numpy" in registries.index_backends
    assert registries.index_backends.source("faiss") == "faiss"


def test_flat_gives_the_numpy_scan_neighbours(planted, tmp_path: Path) -> None:
    matrix, _, _ = planted
    queries = unit_rows(np.random.default_rng(1), 60, 48)  # plain random: no planted answer
    searcher, record = build_and_open(matrix, tmp_path, "flat")
    scores, ids = searcher.search(queries, 10)
    exact_scores, exact_ids = NumpyScan(matrix).search(queries, 10, chunk_size=777)
    assert np.array_equal(ids, exact_ids)
    assert np.allclose(scores, exact_scores, atol=1e-5)
    assert record["index_type"] == "flat" and (tmp_path / record["file"]).is_file()


@pytest.mark.parametrize(
    ("index_type", "options"),
    [("ivf", {"nlist": "32", "nprobe": "8"}), ("hnsw", {"m": "16", "ef_search": "32"})],
)
def test_approximate_indexes_find_planted_neighbours(planted, tmp_path, index_type, options):
    matrix, queries, truth = planted
    searcher, record = build_and_open(matrix, tmp_path, index_type, **options)
    _, ids = searcher.search(queries, 5)
    _, exact = top_k(matrix, queries, 5)
    assert all(set(row) == set(answer) for row, answer in zip(exact, truth, strict=True))
    recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(ids, exact, strict=True)])
    assert recall >= 0.9
    assert {k: str(v) for k, v in record["options"].items() if k in options} == options


def test_bad_options_are_one_line(planted, tmp_path: Path) -> None:
    matrix = planted[0]
    with pytest.raises(BadInput, match="faiss ivf has no 'ef_search'"):
        FaissBackend().build(matrix, tmp_path, "image", "ivf", {"ef_search": "3"})
    with pytest.raises(BadInput, match="not a whole number"):
        FaissBackend().build(matrix, tmp_path, "image", "hnsw", {"m": "many"})
    with pytest.raises(BadInput, match="exceeds the 4000 rows"):
        FaissBackend().build(matrix, tmp_path, "image", "ivf", {"nlist": "5000"})


# -- banks ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory):
    from polycap.offline.synthetic import make_synthetic_set

    root = tmp_path_factory.mktemp("faiss-bank")
    english = get_registries().languages.get("en")
    shapes = make_synthetic_set(english, root / "shapes", 24, seed=2)
    name, weights = tiny.build_clip(root / "clip", seed=0)
    encoder = load_encoder(name, pretrained=weights)
    captions = load_captions(shapes.train_file)
    banks = {}
    for backend, index_type in (("numpy", None), ("faiss", "flat"), ("faiss", "hnsw")):
        out = root / f"bank-{backend}-{index_type}"
        choice = IndexChoice(backend, index_type)
        build_bank(captions, encoder, out, english, dtype="float32", progress=False, index=choice)
        banks[(backend, index_type)] = Bank.open(out)
    queries = encode_images(encoder, captions.images()[:8], progress=False).features
    return banks, queries


@pytest.mark.parametrize("mode", ["text", "image"])
def test_a_faiss_flat_bank_retrieves_what_the_numpy_bank_does(setting, mode) -> None:
    banks, queries = setting
    reference = retrieve(banks[("numpy", None)], queries, mode=mode, k=3)
    for key in (("faiss", "flat"), ("faiss", "hnsw")):  # hnsw: exact on a bank this small
        found = retrieve(banks[key], queries, mode=mode, k=3)
        assert [[r.caption_id for r in row] for row in found] == [
            [r.caption_id for r in row] for row in reference
        ], key


def test_the_bank_records_its_backend(setting) -> None:
    banks, _ = setting
    meta = banks[("faiss", "hnsw")].meta["index"]
    assert meta["backend"] == "faiss" and meta["image"]["index_type"] == "hnsw"
    assert meta["text"]["file"] == "text.faiss"
    assert banks[("numpy", None)].meta["index"] == {
        "backend": "numpy",
        "text": {"index_type": "flat"},
        "image": {"index_type": "flat"},
    }


def test_a_bank_whose_backend_is_missing_names_it(setting, monkeypatch) -> None:
    from polycap import plugins

    banks, queries = setting
    host = PluginHost(load_entry_points=False)  # built-ins only: no faiss
    monkeypatch.setattr(plugins, "get_registries", lambda: host.registries)
    bank = Bank.open(banks[("faiss", "flat")].path)
    with pytest.raises(UnknownName, match="built with the 'faiss' index backend"):
        retrieve(bank, queries, mode="image", k=1)


def test_index_command_with_faiss(setting, tmp_path: Path, capsys) -> None:
    import sys

    tests = str(Path(__file__).resolve().parents[3] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from cli_runner import run_cli

    banks, _ = setting
    numpy_bank = banks[("numpy", None)]
    source = numpy_bank.meta["source"]
    spec = numpy_bank.encoder
    args = ["index", source, "--lang", "en", "-o", str(tmp_path / "b"), "--json"]
    args += ["--encoder", spec["name"], "--pretrained", spec["pretrained"]]
    result = run_cli([*args, "--backend", "faiss", "--index-type", "ivf"], capsys)
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["backend"] == "faiss" and summary["index_type"] == "ivf"
    wrong = run_cli([*args, "--backend", "faiss", "--index-type", "lsh", "--force"], capsys)
    assert wrong.code == 2 and "faiss backend has flat, ivf, hnsw" in " ".join(wrong.err.split())
    image = str(numpy_bank.image_names([0])[0])
    found = run_cli(["retrieve", image, "--bank", str(tmp_path / "b"), "--json"], capsys)
    assert found.code == 0, found.err
    assert json.loads(found.out)["results"][0]["captions"]
