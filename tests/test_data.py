"""Caption files: every format, format choice, missing images, malformed files, splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from polycap import plugins
from polycap.builtin import formats
from polycap.data.captions import CaptionSet, load_captions, split_by_image
from polycap.errors import BadInput, UnknownName
from polycap.parts import CaptionRecord


@pytest.fixture(autouse=True)
def only_builtin_formats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registries holding just the built-in formats (no installed plugins involved)."""
    host = plugins.PluginHost(load_entry_points=False, builtins=False)
    host.add_plugin(formats, "polycap.builtin.formats")
    monkeypatch.setattr(plugins, "get_registries", lambda: host.registries)


def _images(folder: Path, names: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(names):
        Image.new("RGB", (8, 8), (index * 20 % 256, 100, 50)).save(folder / name)
    return [folder / name for name in names]


NAMES = ["a.png", "b.png", "c.png"]
CAPTIONS = {"a.png": ["赤い丸", "赤い円がある"], "b.png": ["青い四角"], "c.png": ["黄色い三角"]}


def _pairs(captions: CaptionSet) -> list[tuple[str, str]]:
    return [(record.image.name, record.caption) for record in captions]


EXPECTED = [(name, caption) for name in NAMES for caption in CAPTIONS[name]]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _captions_json(folder: Path) -> Path:
    items = [
        {"caption": caption, "id": number, "image_name": name}
        for number, (name, caption) in enumerate(EXPECTED)
    ]
    return _write(folder / "captions.json", json.dumps(items, ensure_ascii=False))


def _coco(folder: Path) -> Path:
    images = [{"id": 100 + i, "file_name": name} for i, name in enumerate(NAMES)]
    notes = [
        {"id": n, "image_id": 100 + NAMES.index(name), "caption": caption}
        for n, (name, caption) in enumerate(EXPECTED)
    ]
    data = {"annotations": notes, "images": images, "info": {"description": "STAIR-like"}}
    return _write(folder / "stair_captions.json", json.dumps(data, ensure_ascii=False))


def test_captions_json_uses_images_folder_next_to_file(tmp_path: Path) -> None:
    _images(tmp_path / "images", NAMES)
    captions = load_captions(_captions_json(tmp_path))
    assert _pairs(captions) == EXPECTED
    assert captions.images() == [tmp_path / "images" / n for n in NAMES]
    assert all(record.image.is_absolute() for record in captions)
    assert captions.records[0] == CaptionRecord(tmp_path / "images" / "a.png", "赤い丸", "a.png")
    assert captions.by_image()[tmp_path / "images" / "a.png"] == CAPTIONS["a.png"]
    assert captions.missing == []


def test_captions_json_images_next_to_file_or_in_images_dir(tmp_path: Path) -> None:
    _images(tmp_path, NAMES)
    assert _pairs(load_captions(_captions_json(tmp_path))) == EXPECTED
    elsewhere = tmp_path / "elsewhere"
    _images(elsewhere, NAMES)
    captions = load_captions(tmp_path / "captions.json", images_dir=elsewhere)
    assert captions.images()[0] == elsewhere / "a.png"


def test_coco_layout(tmp_path: Path) -> None:
    _images(tmp_path / "train2014", NAMES)
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    path = _coco(annotations)
    captions = load_captions(path, images_dir=tmp_path / "train2014")
    assert _pairs(captions) == EXPECTED
    assert captions.records[0].image_id == "100"


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t")])
def test_delimited(tmp_path: Path, suffix: str, sep: str) -> None:
    _images(tmp_path / "pics", NAMES)
    rows = [f"id{sep}File_Name{sep}Caption"] + [
        f"{n}{sep}pics/{name}{sep}{caption}" for n, (name, caption) in enumerate(EXPECTED)
    ]
    path = tmp_path / f"caps{suffix}"
    path.write_text("\ufeff" + "\n".join(rows) + "\n\n", encoding="utf-8")  # BOM, blank line
    assert _pairs(load_captions(path)) == EXPECTED


def test_csv_quoted_caption_with_comma_and_absolute_path(tmp_path: Path) -> None:
    (image,) = _images(tmp_path / "x", ["one.png"])
    path = _write(tmp_path / "c.csv", f'image,text\n{image},"a red circle, small"\n')
    assert _pairs(load_captions(path)) == [("one.png", "a red circle, small")]


def test_jsonl(tmp_path: Path) -> None:
    _images(tmp_path, NAMES)
    lines = [
        json.dumps({"image": "a.png", "caption": CAPTIONS["a.png"][0]}, ensure_ascii=False),
        "",
        json.dumps({"image_name": "a.png", "caption": CAPTIONS["a.png"][1]}, ensure_ascii=False),
        json.dumps({"file_name": "b.png", "captions": CAPTIONS["b.png"]}, ensure_ascii=False),
        json.dumps({"image": "c.png", "caption": CAPTIONS["c.png"][0]}, ensure_ascii=False),
    ]
    assert _pairs(load_captions(_write(tmp_path / "caps.jsonl", "\n".join(lines)))) == EXPECTED


def test_format_chosen_by_sniffing(tmp_path: Path) -> None:
    _images(tmp_path, NAMES)
    assert _pairs(load_captions(_coco(tmp_path))) == EXPECTED  # .json, object -> coco
    assert _pairs(load_captions(_captions_json(tmp_path))) == EXPECTED  # .json, list
    text = "\n".join(json.dumps({"image": n, "caption": c}) for n, c in EXPECTED)
    assert _pairs(load_captions(_write(tmp_path / "caps.txt", text))) == EXPECTED
    assert _pairs(load_captions(_write(tmp_path / "lines.json", text))) == EXPECTED
    csv_text = "image,caption\n" + "\n".join(f"{n},{c}" for n, c in EXPECTED)
    assert _pairs(load_captions(_write(tmp_path / "caps.dat", csv_text))) == EXPECTED


def test_format_by_name(tmp_path: Path) -> None:
    _images(tmp_path, NAMES)
    text = "image\tcaption\n" + "\n".join(f"{n}\t{c}" for n, c in EXPECTED)
    path = _write(tmp_path / "caps.txt", text)
    assert _pairs(load_captions(path, format="tsv")) == EXPECTED
    with pytest.raises(UnknownName, match=r"No caption format 'jsnol'\. Did you mean 'jsonl'\?"):
        load_captions(path, format="jsnol")


def test_unknown_format_without_name(tmp_path: Path) -> None:
    path = _write(tmp_path / "caps.xyz", "hello world\n")
    with pytest.raises(BadInput, match=r"caps\.xyz: unknown caption file format"):
        load_captions(path)


def test_missing_images_skipped_counted_and_warned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _images(tmp_path / "images", ["a.png"])
    path = _captions_json(tmp_path)
    captions = load_captions(path)
    assert _pairs(captions) == [("a.png", c) for c in CAPTIONS["a.png"]]
    assert captions.missing == [tmp_path / "images" / "b.png", tmp_path / "images" / "c.png"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"Warning: 2 of 3 images listed in {path} are missing; skipped "
        f"(first: {tmp_path / 'images' / 'b.png'})"
    ]


def test_all_images_missing_is_an_error(tmp_path: Path) -> None:
    path = _captions_json(tmp_path)
    with pytest.raises(BadInput, match="none of the 3 images it lists exist"):
        load_captions(path)


def test_missing_caption_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="no such caption file"):
        load_captions(tmp_path / "nope.json")
    with pytest.raises(BadInput, match="images folder does not exist"):
        load_captions(_captions_json(tmp_path), images_dir=tmp_path / "nope")


def _items(n: int = 9) -> list[dict]:
    return [{"caption": f"cap {i}", "id": i, "image_name": "a.png"} for i in range(n)]


def _broken_item_7(items: list[dict]) -> list[dict]:
    del items[7]["caption"]
    return items


MALFORMED = [
    # (file name, content, expected fragment after "<file>: ")
    (
        "captions.json",
        '[\n  {"caption": "x", "image_name": "a.png"},\n  oops\n]',
        "invalid JSON at line 3",
    ),
    ("captions.json", '{"caption": "x"}', "expected a JSON list"),
    ("captions.json", json.dumps(_broken_item_7(_items())), "item [7]: missing key 'caption'"),
    ("captions.json", json.dumps([{"caption": "x"}]), "item [0]: missing key 'image_name'"),
    (
        "captions.json",
        json.dumps([{"caption": "  ", "image_name": "a.png"}]),
        "item [0]: empty caption",
    ),
    (
        "captions.json",
        json.dumps([{"caption": 3, "image_name": "a.png"}]),
        "item [0]: caption is int",
    ),
    ("captions.json", json.dumps(["a.png"]), "item [0]: expected an object"),
    ("captions.json", "[]", "no captions found"),
    ("captions.json", "", "invalid JSON at line 1"),
    ("coco.json", json.dumps({"images": []}), "missing key 'annotations'"),
    (
        "coco.json",
        json.dumps({"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1}]}),
        "annotations[0]: missing key 'caption'",
    ),
    (
        "coco.json",
        json.dumps({"images": [{"id": 1}], "annotations": []}),
        "images[0]: missing key 'file_name'",
    ),
    (
        "coco.json",
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png"}],
                "annotations": [{"image_id": 2, "caption": "x"}],
            }
        ),
        "annotations[0]: image_id 2 is not in 'images'",
    ),
    ("caps.csv", "id,name,text\n1,a.png,hello\n", "no image column"),
    ("caps.csv", "image,words\na.png,hello\n", "columns are: image, words"),
    ("caps.csv", "image,caption\na.png,ok\na.png,\n", "line 3: empty caption"),
    ("caps.csv", "image,caption\na.png,ok\n\na.png\n", "line 4: expected 2 columns, found 1"),
    ("caps.csv", "", "empty file"),
    ("caps.tsv", "image\tcaption\n\ta caption\n", "line 2: 'image' must be a non-empty file name"),
    (
        "caps.jsonl",
        '{"image": "a.png", "caption": "ok"}\n{"image": "a.png", "caption": \n',
        "line 2: invalid JSON",
    ),
    (
        "caps.jsonl",
        '{"image": "a.png", "caption": "ok"}\n\n[1, 2]\n',
        "line 3: expected a JSON object",
    ),
    ("caps.jsonl", '{"image": "a.png"}\n', "line 1: missing key 'caption'"),
    ("caps.jsonl", '{"caption": "x"}\n', "line 1: missing image key"),
    (
        "caps.jsonl",
        '{"image": "a.png", "captions": []}\n',
        "line 1: 'captions' must be a non-empty list",
    ),
]


@pytest.mark.parametrize("name, content, fragment", MALFORMED)
def test_malformed_files(tmp_path: Path, name: str, content: str, fragment: str) -> None:
    _images(tmp_path, ["a.png"])
    path = _write(tmp_path / name, content)
    with pytest.raises(BadInput) as error:
        load_captions(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert fragment in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "caps.csv"
    path.write_bytes("image,caption\na.png,赤い\n".encode("shift_jis"))
    with pytest.raises(BadInput, match="not UTF-8 text"):
        load_captions(path)


# -- splitting -------------------------------------------------------------------------------


def _many(n_images: int, per_image: int = 3) -> CaptionSet:
    records = [
        CaptionRecord(Path(f"/data/img{i:03d}.png"), f"caption {i}.{j}", f"img{i:03d}.png")
        for j in range(per_image)
        for i in range(n_images)
    ]
    return CaptionSet(records, Path("/data/captions.json"))


def test_split_by_image_never_leaks() -> None:
    captions = _many(50)
    train, val = split_by_image(captions, 0.2, seed=1)
    assert not set(train.images()) & set(val.images())
    assert len(val.images()) == 10 and len(train.images()) == 40
    assert sorted(_pairs(train) + _pairs(val)) == sorted(_pairs(captions))
    for side in (train, val):
        assert all(len(caps) == 3 for caps in side.by_image().values())


def test_split_is_deterministic_and_order_independent() -> None:
    captions = _many(30)
    first = split_by_image(captions, 0.3, seed=7)
    again = split_by_image(CaptionSet(list(reversed(captions.records))), 0.3, seed=7)
    assert set(first[1].images()) == set(again[1].images())
    other = split_by_image(captions, 0.3, seed=8)
    assert set(first[1].images()) != set(other[1].images())


def test_split_small_sets() -> None:
    train, val = split_by_image(_many(2), 0.01, seed=0)
    assert len(train.images()) == 1 and len(val.images()) == 1
    train, val = split_by_image(_many(3), 0.9, seed=0)
    assert len(train.images()) == 1 and len(val.images()) == 2
    train, val = split_by_image(_many(1), 0.5, seed=0)
    assert len(train.images()) == 1 and len(val) == 0
    train, val = split_by_image(_many(5), 0.0, seed=0)
    assert len(train.images()) == 5 and len(val) == 0
    with pytest.raises(BadInput, match="validation fraction"):
        split_by_image(_many(5), 1.0, seed=0)


def test_builtin_formats_are_registered() -> None:
    registries = plugins.PluginHost(load_entry_points=False).registries
    assert {"captions-json", "coco", "csv", "tsv", "jsonl"} <= set(registries.datasets.names())


# -- images outside the image folder, duplicate ids -------------------------------------------


@pytest.mark.parametrize("how", ["dotdot", "absolute"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl", "captions-json"])
def test_images_outside_the_image_folder_are_refused(tmp_path: Path, fmt: str, how: str) -> None:
    data = tmp_path / "data"
    _images(data, ["a.png"])
    (secret,) = _images(tmp_path / "private", ["secret.png"])
    name = "../private/secret.png" if how == "dotdot" else str(secret)
    if fmt == "csv":
        path = _write(data / "c.csv", f"image,caption\na.png,ok\n{name},leak\n")
    elif fmt == "jsonl":
        lines = [{"image": "a.png", "caption": "ok"}, {"image": name, "caption": "leak"}]
        path = _write(data / "c.jsonl", "\n".join(json.dumps(line) for line in lines))
    else:
        items = [{"caption": "ok", "image_name": "a.png"}, {"caption": "leak", "image_name": name}]
        path = _write(data / "captions.json", json.dumps(items))
    with pytest.raises(BadInput) as error:
        load_captions(path)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: record {name!r} names an image outside the image folder")
    assert str(secret) in message and "--allow-outside-images" in message
    allowed = load_captions(path, allow_outside=True)
    assert [r.image for r in allowed] == [data / "a.png", secret]


def test_dotdot_that_stays_inside_and_the_process_setting(tmp_path: Path) -> None:
    from polycap.data.captions import allow_images_outside

    _images(tmp_path / "pics" / "sub", ["a.png"])
    (other,) = _images(tmp_path / "other", ["b.png"])
    path = _write(tmp_path / "pics" / "c.csv", "image,caption\nsub/../sub/a.png,ok\n")
    assert load_captions(path).images() == [tmp_path / "pics" / "sub" / "a.png"]
    outside = _write(tmp_path / "pics" / "d.csv", f"image,caption\n{other},far\n")
    with pytest.raises(BadInput, match="outside the image folder"):
        load_captions(outside)
    try:
        allow_images_outside(True)
        assert load_captions(outside).images() == [other]
    finally:
        allow_images_outside(False)
    # with --images, the root is that folder
    with pytest.raises(BadInput, match=f"outside the image folder {tmp_path / 'pics'}"):
        load_captions(outside, images_dir=tmp_path / "pics")
    assert load_captions(outside, images_dir=tmp_path).images() == [other]


def test_coco_duplicate_image_ids_name_both_entries(tmp_path: Path) -> None:
    _images(tmp_path, NAMES)
    images = [{"id": 7, "file_name": "a.png"}, {"id": 8, "file_name": "b.png"}]
    images.append({"id": 7, "file_name": "c.png"})
    notes = [{"image_id": 7, "caption": "which one?"}]
    path = _write(tmp_path / "coco.json", json.dumps({"images": images, "annotations": notes}))
    with pytest.raises(BadInput) as error:
        load_captions(path)
    assert str(error.value) == (
        f"{path}: images[0] ('a.png') and images[2] ('c.png') have the same id 7"
    )


def test_a_named_format_that_is_not_the_files_says_so(tmp_path: Path) -> None:
    """issue 20: ``--format csv`` on a JSON file names the mismatch, not a missing column."""
    (tmp_path / "c.json").write_text('[{"image": "a.png", "caption": "x"}]')
    (tmp_path / "c.csv").write_text("image,caption\na.png,x\n")
    with pytest.raises(BadInput, match="--format csv given, but the file is captions-json"):
        load_captions(tmp_path / "c.json", format="csv")
    with pytest.raises(BadInput, match="--format captions-json given, but the file is csv"):
        load_captions(tmp_path / "c.csv", format="captions-json")
