"""Parquet, Arrow, save_to_disk folders and webdataset shards as caption data; images stored as
bytes go through polycap's image loading (corrupt ones skipped and counted)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from cli_runner import run_cli

from polycap.builtin.english import ENGLISH
from polycap.data.captions import embedded_images_dir, load_captions, set_table_columns
from polycap.demo.runner import build_tiny_models
from polycap.errors import BadInput
from polycap.offline.synthetic import make_synthetic_set

CORRUPT = b"\x89PNG\r\n\x1a\n" + b"garbage" * 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """24 synthetic images with captions, tiny models, and the same set as rows of bytes."""
    root = tmp_path_factory.mktemp("tables")
    split = make_synthetic_set(ENGLISH, root / "data", 24, seed=1)
    records = json.loads(split.train_file.read_text())
    image_dir = split.train_file.parent / "images"
    rows = [((image_dir / r["image_name"]).read_bytes(), r["caption"]) for r in records]
    rows.append((CORRUPT, "a broken picture"))
    models = build_tiny_models(ENGLISH, [r["caption"] for r in records], root, seed=0)
    return {"root": root, "rows": rows, "images": len({r["image_name"] for r in records}), **models}


@pytest.fixture(autouse=True)
def _detected_columns():
    yield
    set_table_columns(None, None)  # the CLI options set a process-wide choice


def write_parquet(rows: list[tuple[bytes, str]], path: Path) -> Path:
    """An HF-style table: ``image`` as ``{bytes, path}`` structs, ``text`` as strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = [{"bytes": data, "path": f"{i}.png"} for i, (data, _) in enumerate(rows)]
    table = pa.table(
        {"image": images, "text": [text for _, text in rows], "n": list(range(len(rows)))}
    )
    pq.write_table(table, path)
    return path


def write_shard(rows: list[tuple[bytes, str]], path: Path, json_captions: bool = False) -> Path:
    """img2dataset's layout: ``KEY.png`` + ``KEY.txt`` (or ``KEY.json`` with ``caption``)."""
    with tarfile.open(path, "w") as tar:
        for i, (data, text) in enumerate(rows):
            key = f"{path.stem}-{i:06d}"
            caption = json.dumps({"caption": text}) if json_captions else text
            suffix = "json" if json_captions else "txt"
            for name, payload in ((f"{key}.png", data), (f"{key}.{suffix}", caption.encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def test_parquet_rows_become_records_with_content_addressed_images(setup, tmp_path) -> None:
    data = write_parquet(setup["rows"], tmp_path / "train.parquet")
    captions = load_captions(data)
    assert len(captions) == len(setup["rows"])
    assert captions.captions() == [text for _, text in setup["rows"]]
    images = captions.images()
    assert len(images) == setup["images"] + 1  # identical bytes are one image
    root = embedded_images_dir()
    assert all(image.is_relative_to(root) and image.is_file() for image in images)
    assert images[0].read_bytes() == setup["rows"][0][0]
    # the same bytes read again land on the same files (the feature cache keys on content)
    assert load_captions(data).images() == images


def test_columns_are_detected_or_chosen_and_bad_choices_are_one_line(setup, tmp_path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = setup["rows"][:3]
    table = pa.table(
        {
            "front": [data for data, _ in rows],  # two raw-bytes columns, neither named image
            "other": [data for data, _ in rows],
            "sentences": [[text, text.upper()] for _, text in rows],  # several per image
        }
    )
    pq.write_table(table, tmp_path / "two.parquet")
    with pytest.raises(BadInput, match="cannot tell which column holds the image.*--image-column"):
        load_captions(tmp_path / "two.parquet")
    set_table_columns(image="other")
    captions = load_captions(tmp_path / "two.parquet")
    assert len(captions) == 6 and captions.captions()[1] == rows[0][1].upper()
    set_table_columns(image="picture")
    with pytest.raises(BadInput, match=r"no column 'picture' \(--image-column\); columns are"):
        load_captions(tmp_path / "two.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(BadInput, match="junk.parquet: not a readable Parquet file"):
        load_captions(tmp_path / "junk.parquet")


def test_arrow_file_and_save_to_disk_folder_read_like_parquet(setup, tmp_path) -> None:
    import datasets

    rows = setup["rows"][:5]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    dataset = datasets.Dataset.from_dict(
        {"image": [{"bytes": d, "path": None} for d, _ in rows], "caption": [t for _, t in rows]},
        features=features,
    )
    dataset.save_to_disk(str(tmp_path / "saved"))
    from_folder = load_captions(tmp_path / "saved")
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    from_arrow = load_captions(arrow)
    expected = load_captions(write_parquet(rows, tmp_path / "same.parquet"))
    assert from_folder.records == from_arrow.records == expected.records
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "splits"))
    with pytest.raises(BadInput, match="holds the splits train; pass one of them"):
        load_captions(tmp_path / "splits")


def test_webdataset_shards_a_file_a_pattern_and_a_folder(setup, tmp_path) -> None:
    rows = setup["rows"]
    shards = tmp_path / "shards"
    shards.mkdir()
    write_shard(rows[:10], shards / "00000.tar")
    write_shard(rows[10:], shards / "00001.tar", json_captions=True)
    one = load_captions(shards / "00000.tar")
    assert one.captions() == [text for _, text in rows[:10]]
    pattern = load_captions(Path(f"{shards}/{{00000..00001}}.tar"))
    folder = load_captions(shards)
    assert pattern.records == folder.records and pattern.captions() == [t for _, t in rows]
    with pytest.raises(BadInput, match="00002.tar: no such shard"):
        load_captions(Path(f"{shards}/{{00000..00002}}.tar"))


def train_args(setup: dict, data: Path, output: Path) -> list[str]:
    return [
        *("train", "--lang", "en", "--data", str(data), "--output", str(output)),
        *("--encoder", setup["encoder"], "--pretrained", setup["pretrained"], "--lm", setup["lm"]),
        *("--prefix-length", "2", "--epochs", "1", "--batch-size", "8", "--device", "cpu"),
        "--json",
    ]


@pytest.mark.parametrize("kind", ["parquet", "webdataset"])
def test_train_runs_on_a_parquet_file_and_a_webdataset_shard(setup, tmp_path, capsys, kind) -> None:
    if kind == "parquet":
        data = write_parquet(setup["rows"], tmp_path / "train.parquet")
    else:
        data = write_shard(setup["rows"], tmp_path / "train.tar")
    result = run_cli(train_args(setup, data, tmp_path / "run"), capsys)
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["skipped_images"] == 1  # the corrupt bytes, decoded by polycap's loader
    assert Path(summary["model"], "polycap.json").is_file()
    assert len(summary["history"]) == 1


def test_train_column_options(setup, tmp_path, capsys) -> None:
    data = write_parquet(setup["rows"], tmp_path / "train.parquet")
    args = train_args(setup, data, tmp_path / "run")
    result = run_cli([*args, "--caption-column", "captions"], capsys)
    lines = [line for line in result.err.splitlines() if "Loading weights" not in line]
    assert result.code == 2 and len(lines) == 1, result.err
    assert "no column 'captions' (--caption-column); columns are: image, text, n" in lines[0]


@pytest.mark.parametrize("kind", ["parquet", "webdataset"])
def test_cache_dir_holds_the_embedded_images_too(setup, tmp_path, capsys, kind) -> None:
    """--cache-dir: the features and the images stored from the data's bytes go there, nothing
    to the default cache; the next command without it uses the default again."""
    from polycap.data.captions import set_cache_root

    rows = [*setup["rows"][:5], (CORRUPT, "a broken picture")]
    if kind == "parquet":
        data = write_parquet(rows, tmp_path / "train.parquet")
    else:
        data = write_shard(rows, tmp_path / "train.tar")
    default = embedded_images_dir()
    before = set(default.rglob("*")) if default.exists() else set()
    cache = tmp_path / "my-cache"
    args = ["encode", "--data", str(data), "--encoder", setup["encoder"]]
    args += ["--pretrained", setup["pretrained"], "--device", "cpu", "--json"]
    try:
        result = run_cli([*args, "--cache-dir", str(cache)], capsys)
        assert result.code == 0, result.err
        stored = sorted((cache / "embedded-images").rglob("*.png"))
        assert {p.read_bytes() for p in stored} == {data for data, _ in rows}
        after = set(default.rglob("*")) if default.exists() else set()
        assert after == before  # nothing written to the default cache
        assert json.loads(result.out)["skipped"]  # the corrupt row, read from the cache dir
    finally:
        set_cache_root(None)
    assert embedded_images_dir() == default
