"""Caption banks and retrieval captioning on a tiny open_clip model (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_runner import flat, run_cli

from polycap.data.captions import CaptionSet, load_captions
from polycap.errors import BadInput
from polycap.retrieval.bank import Bank, build_bank
from polycap.retrieval.search import consensus_order, retrieve, retrieve_images, top_k


@pytest.fixture(scope="module")
def shapes(english, tmp_path_factory: pytest.TempPathFactory):
    from polycap.offline.synthetic import make_synthetic_set

    return make_synthetic_set(english, tmp_path_factory.mktemp("shapes"), 24, seed=2)


@pytest.fixture(scope="module")
def encoder(tiny_clip):
    from polycap.data.encoding import load_encoder

    return load_encoder(tiny_clip.name, pretrained=tiny_clip.weights)


@pytest.fixture(scope="module")
def bank(shapes, encoder, english, tmp_path_factory: pytest.TempPathFactory) -> Bank:
    out = tmp_path_factory.mktemp("banks") / "bank"
    build_bank(
        load_captions(shapes.train_file), encoder, out, english, dtype="float32", progress=False
    )
    return Bank.open(out)


def features_of(encoder, paths):
    from polycap.data.encoding import encode_images

    return encode_images(encoder, paths, progress=False).features


def test_bank_files_are_memory_mapped_and_normalised(bank, shapes) -> None:
    refs = load_captions(shapes.train_file)
    unique = list(dict.fromkeys(refs.captions()))
    assert bank.n_captions == len(unique) and bank.n_images == len(refs.images())
    assert bank.meta["caption_records"] == len(refs)
    text, image = bank.text_matrix(), bank.image_matrix()
    assert isinstance(text, np.memmap) and isinstance(image, np.memmap)
    assert text.shape == (len(unique), bank.meta["embed_dim"])
    assert np.allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    assert np.allclose(np.linalg.norm(image, axis=1), 1.0, atol=1e-5)
    assert bank.captions([0, len(unique) - 1]) == [unique[0], unique[-1]]
    assert sorted(bank.iter_captions()) == sorted(unique)
    assert bank.meta["language"] == "en" and bank.meta["encoder"]["cache_key"]


def test_image_mode_returns_the_exact_caption_of_a_bank_image(bank, encoder, shapes) -> None:
    refs = load_captions(shapes.train_file)
    images = refs.images()
    results = retrieve(bank, features_of(encoder, images), mode="image", k=2)
    by_image = refs.by_image()
    for path, found in zip(images, results, strict=True):
        assert found[0].image == str(path)
        assert found[0].score == pytest.approx(1.0, abs=1e-5)
        assert {r.caption for r in found} == set(by_image[path])  # both of its own captions


def test_text_mode_matches_brute_force(bank, encoder, shapes) -> None:
    import torch

    queries = load_captions(shapes.test_file).images()
    results = retrieve(bank, features_of(encoder, queries), mode="text", k=4)
    captions = list(bank.iter_captions())
    text = torch.nn.functional.normalize(encoder.encode_texts(captions), dim=-1).numpy()
    image = torch.nn.functional.normalize(features_of(encoder, queries), dim=-1).numpy()
    scores = image @ text.T
    for row, found in zip(scores, results, strict=True):
        best = np.argsort(-row, kind="stable")[:4]
        assert [r.caption_id for r in found] == [int(i) for i in best]
        assert [r.caption for r in found] == [captions[i] for i in best]
        assert [r.score for r in found] == pytest.approx(row[best].tolist(), abs=1e-5)


@pytest.mark.parametrize("mode", ["text", "image"])
def test_chunked_search_equals_one_chunk(bank, encoder, shapes, mode) -> None:
    queries = features_of(encoder, load_captions(shapes.test_file).images())
    whole = retrieve(bank, queries, mode=mode, k=5, chunk_size=1_000_000)
    for chunk in (1, 3, 7):
        chunked = retrieve(bank, queries, mode=mode, k=5, chunk_size=chunk)
        assert [[r.caption_id for r in rows] for rows in chunked] == [
            [r.caption_id for r in rows] for rows in whole
        ]
        assert [[r.score for r in rows] for rows in chunked] == [
            [r.score for r in rows] for rows in whole
        ]


def test_top_k_ties_and_chunks_on_a_larger_matrix() -> None:
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(1000, 16)).astype(np.float32)
    matrix[500:510] = matrix[3]  # exact duplicates: ties broken by the lower row id
    queries = np.concatenate([matrix[3:4], rng.normal(size=(4, 16)).astype(np.float32)])
    single = top_k(matrix, queries, 12, chunk_size=10_000)
    for chunk in (1, 7, 64, 999):
        scores, ids = top_k(matrix, queries, 12, chunk_size=chunk)
        assert np.array_equal(ids, single[1]) and np.array_equal(scores, single[0])
    assert single[1][0][:11].tolist() == [3, *range(500, 510)]
    brute = np.argsort(-(queries[1:] @ matrix.T), axis=1, kind="stable")[:, :12]
    assert np.array_equal(single[1][1:], brute)
    many = rng.normal(size=(600, 16)).astype(np.float32)  # more than one query batch
    scores, ids = top_k(matrix, many, 3, chunk_size=100)
    assert np.array_equal(ids, np.argsort(-(many @ matrix.T), axis=1, kind="stable")[:, :3])
    scores, ids = top_k(matrix[:5], queries, 12)
    assert ids.shape == (5, 5)  # k larger than the bank: every row


def test_consensus_picks_the_caption_the_neighbours_agree_on(
    bank, encoder, shapes, english
) -> None:
    tokens = [
        english.eval_tokenize(t)
        for t in ("a red circle", "a red circle", "two red circles", "a blue square")
    ]
    scores = consensus_order(tokens)
    assert scores[0] == scores[1] == max(scores) and scores[3] == min(scores)
    queries = features_of(encoder, load_captions(shapes.test_file).images())
    results = retrieve(bank, queries, mode="image", k=3, consensus=True, neighbours=6)
    plain = retrieve(bank, queries, mode="image", k=100, neighbours=6)
    for found, pool in zip(results, plain, strict=True):
        assert len(found) == 3
        assert {r.caption_id for r in found} <= {r.caption_id for r in pool}
        assert [r.score for r in found] == sorted((r.score for r in found), reverse=True)
    with pytest.raises(BadInput, match="--mode image"):
        retrieve(bank, queries, mode="text", consensus=True)


def test_unreadable_images_are_skipped_when_indexing(
    tmp_path: Path, shapes, encoder, english
) -> None:
    refs = load_captions(shapes.train_file)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    records = list(refs.records)
    from polycap.parts import CaptionRecord

    records.append(CaptionRecord(broken, "a broken picture", "broken"))
    stats = build_bank(
        CaptionSet(records, refs.source), encoder, tmp_path / "bank", english, progress=False
    )
    assert [p for p, _ in stats.skipped] == [broken]
    opened = Bank.open(tmp_path / "bank")
    assert opened.n_images == len(refs.images())
    assert "a broken picture" in set(opened.iter_captions())  # still a caption for text mode
    assert opened.meta["dtype"] == "float16" and opened.text_matrix().dtype == np.float16
    results = retrieve(opened, features_of(encoder, refs.images()[:2]), mode="image", k=1)
    assert [r[0].image for r in results] == [str(p) for p in refs.images()[:2]]


def test_empty_and_bad_banks(tmp_path: Path, bank, encoder, english) -> None:
    with pytest.raises(BadInput, match="no captions to index"):
        build_bank(CaptionSet([], tmp_path / "none.json"), encoder, tmp_path / "b", english)
    with pytest.raises(BadInput, match="not a caption bank"):
        Bank.open(tmp_path)
    with pytest.raises(BadInput, match="no such bank"):
        Bank.open(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    meta = dict(bank.meta, captions=0, images=0, has_text=False)
    (empty / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BadInput, match="the bank is empty"):
        Bank.open(empty)
    with pytest.raises(BadInput, match="the bank is empty"):
        top_k(np.zeros((0, 4), dtype=np.float32), np.ones((1, 4), dtype=np.float32), 3)
    with pytest.raises(BadInput, match="already exists"):
        build_bank(CaptionSet([], None), encoder, bank.path, english)


def test_retrieve_images_checks_the_encoder(bank, tmp_path: Path, shapes) -> None:
    from polycap.data.encoding import load_encoder

    other = load_encoder(bank.encoder["name"], pretrained=None)  # same shape, other weights
    other.cache_key = "open_clip:other"
    with pytest.raises(BadInput, match="bank was built with encoder"):
        retrieve_images(
            bank, load_captions(shapes.test_file).images(), encoder=other, progress=False
        )


def index_args(shapes, tiny_clip, out: Path, *extra: str) -> list[str]:
    """``polycap index`` of the training captions into ``out`` with the tiny CLIP."""
    train, weights = str(shapes.train_file), str(tiny_clip.weights)
    return [
        "index",
        train,
        "--lang",
        "en",
        "--out",
        str(out),
        "--encoder",
        tiny_clip.name,
        "--pretrained",
        weights,
        *extra,
    ]


def test_cli_index_and_retrieve(tmp_path: Path, shapes, tiny_clip, capsys) -> None:
    out = tmp_path / "bank"
    result = run_cli(
        index_args(shapes, tiny_clip, out, "--device", "cpu", "--dtype", "float32", "--json"),
        capsys,
    )
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["images"] == len(shapes.train_images) and summary["text_embeddings"]
    image = shapes.image_dir / shapes.train_images[0]
    result = run_cli(
        [
            "retrieve",
            str(image),
            "--bank",
            str(out),
            "--mode",
            "image",
            "--k",
            "2",
            "--device",
            "cpu",
            "--json",
        ],
        capsys,
    )
    assert result.code == 0, result.err
    found = json.loads(result.out)["results"][0]["captions"]
    assert {c["caption"] for c in found} == set(shapes.captions[shapes.train_images[0]])
    table = run_cli(
        ["retrieve", str(image), "--bank", str(out), "--k", "3", "--device", "cpu"], capsys
    )
    assert table.code == 0 and "Retrieved captions (text)" in table.out
    again = run_cli(index_args(shapes, tiny_clip, out), capsys)
    assert again.code == 2 and "already exists" in flat(again.err)
    notext = tmp_path / "notext"
    run_cli(index_args(shapes, tiny_clip, notext, "--no-text", "--json"), capsys)
    result = run_cli(["retrieve", str(image), "--bank", str(notext), "--device", "cpu"], capsys)
    assert result.code == 2 and "no text embeddings" in flat(result.err)
    assert "Traceback" not in (result.err)
    result = run_cli(["retrieve", str(image), "--bank", str(tmp_path)], capsys)
    assert result.code == 2 and "not a caption bank" in flat(result.err)


def test_a_bank_built_with_a_plugin_encoder_reopens_with_that_encoder(
    shapes, english, tiny_clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    from polycap import plugins
    from polycap.builtin.encoders import OpenClipEncoder, load_open_clip
    from polycap.hookspecs import hookimpl

    class ToyEncoder(OpenClipEncoder):
        backend = "toy"

    def load_toy(model: str, pretrained: str | None, device: str = "cpu") -> ToyEncoder:
        encoder = load_open_clip(model, pretrained, device)
        encoder.__class__ = ToyEncoder
        return encoder

    @hookimpl
    def register_encoders(register) -> None:
        register("toy", load_toy)

    host = plugins.PluginHost(load_entry_points=False)
    host.add_plugin(types.SimpleNamespace(register_encoders=register_encoders), "polycap-toy")
    monkeypatch.setattr(plugins, "get_host", lambda: host)
    from polycap.data.encoding import load_encoder

    encoder = load_encoder(f"toy:{tiny_clip.name}", pretrained=tiny_clip.weights)
    assert isinstance(encoder, ToyEncoder) and encoder.spec == f"toy:{tiny_clip.name}"
    out = tmp_path / "toy-bank"
    build_bank(load_captions(shapes.train_file), encoder, out, english, progress=False)
    reopened = Bank.open(out).load_encoder()
    assert isinstance(reopened, ToyEncoder)
    assert reopened.encoder_spec == encoder.encoder_spec
