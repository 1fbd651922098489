"""``polycap caption`` over a collection, as a user runs it: a folder captioned into sidecars,
the images' own metadata (read back with Pillow and the standard library, not exiv2) and a
caption table; pixels unchanged; a rerun that touches nothing; descriptions kept; tables and
shards as inputs; a run SIGKILLed midway then finished; two processes splitting a folder."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from cli_runner import run_cli
from PIL import Image, IptcImagePlugin
from tiny_setup import tiny_captioner

from polycap.builtin.english import ENGLISH

ROOT = Path(__file__).resolve().parents[1]
CAPTIONS = ["a red circle", "two blue squares", "a green triangle", "three yellow circles"] * 5
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
DC = "{http://purl.org/dc/elements/1.1/}"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
WRITABLE = {".jpg", ".png", ".webp", ".tif"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("collection")
    model = tiny_captioner(ENGLISH, CAPTIONS, root, train_lm=True)
    return model.save(root / "checkpoint")


def pixels(seed: int, size: tuple[int, int] = (40, 32)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def make_photos(folder: Path) -> dict[str, Path]:
    """JPEG, PNG, WebP, TIFF (one in a subfolder), a GIF, a corrupt JPEG, a hidden file."""
    (folder / "trip" / "day2").mkdir(parents=True)
    photos = {
        "jpg": folder / "trip" / "beach.jpg",
        "png": folder / "trip" / "day2" / "dunes.png",
        "webp": folder / "cat.webp",
        "tif": folder / "scan.tif",
        "gif": folder / "anim.gif",
    }
    for seed, (kind, path) in enumerate(photos.items()):
        image = Image.fromarray(pixels(seed))
        if kind == "webp":
            image.save(path, lossless=True)
        else:
            image.save(path)
    photos["corrupt"] = folder / "broken.jpg"
    photos["corrupt"].write_bytes(b"\xff\xd8\xff\xe0" + b"not really" * 20)
    (folder / ".hidden.jpg").write_bytes(photos["jpg"].read_bytes())
    return photos


def decoded(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def jpeg_scan(data: bytes) -> bytes:
    """A JPEG's compressed image data: from its first SOS marker to EOI."""
    start = data.index(b"\xff\xda")
    return data[start : data.rindex(b"\xff\xd9") + 2]


def xmp_descriptions(path: Path) -> dict[str, str]:
    """dc:description by xml:lang, parsed from the raw XMP packet Pillow finds."""
    with Image.open(path) as image:
        packet = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp")
        if packet is None and hasattr(image, "tag_v2"):
            packet = image.tag_v2.get(700)
    if not packet:
        return {}
    text = packet.decode("utf-8") if isinstance(packet, bytes) else packet
    root = ET.fromstring(text[text.index("<x:xmpmeta") : text.index("</x:xmpmeta>") + 12])
    found = {}
    for item in root.iter(f"{RDF}li"):
        parent = next((d for d in root.iter(f"{DC}description") if item in d.iter()), None)
        if parent is not None:
            found[item.get(XML_LANG)] = item.text or ""
    return found


def exif_description(path: Path) -> str | None:
    with Image.open(path) as image:
        value = image.getexif().get(270)
    # Pillow reads the ASCII tag as Latin-1; exiv2 wrote UTF-8 bytes
    return value.encode("latin-1").decode("utf-8") if value else None


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    return {
        str(p): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def caption(args: list[str], capsys) -> dict:
    result = run_cli(["caption", *args, "--json", "--device", "cpu"], capsys)
    assert result.code == 0, (result.out, result.err)
    return json.loads(result.out)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_folder_into_sidecars_metadata_table_and_gallery(checkpoint, tmp_path, capsys) -> None:
    photos = make_photos(tmp_path / "photos")
    os.chmod(photos["jpg"], 0o640)
    before = {kind: (p.read_bytes(), decoded(p)) for kind, p in photos.items() if kind != "corrupt"}
    table, gallery = tmp_path / "captions.jsonl", tmp_path / "gallery.html"
    args = [str(tmp_path / "photos"), "-m", str(checkpoint), "--sidecar", "--write-metadata"]
    summary = caption([*args, "-o", str(table), "--report", str(gallery)], capsys)

    assert summary["captioned"] == 5 and summary["skipped_done"] == 0  # hidden file not listed
    assert [u["image"] for u in summary["unreadable"]] == [str(photos["corrupt"])]
    assert list(summary["no_metadata"].values()) == [1]  # the GIF: one clear line, not a failure
    assert "GIF" in next(iter(summary["no_metadata"]))
    written = {row["path"]: row for row in rows(table)}
    assert sorted(written) == sorted(str(photos[k]) for k in ("jpg", "png", "webp", "tif", "gif"))
    for kind, path in photos.items():
        if kind == "corrupt":
            assert not path.with_suffix(".txt").exists()
            continue
        row = written[str(path)]
        text = row["captions"][0]
        assert text and row["language"] == "en" and row["model"] == str(checkpoint)
        assert path.with_suffix(".txt").read_text(encoding="utf-8") == text + "\n"
        assert np.array_equal(decoded(path), before[kind][1]), kind  # pixels never touched
        if path.suffix in WRITABLE:
            assert exif_description(path) == text, kind
            assert xmp_descriptions(path) == {"x-default": text, "en": text}, kind
        else:
            assert path.read_bytes() == before[kind][0]  # the GIF is not rewritten
    assert jpeg_scan(photos["jpg"].read_bytes()) == jpeg_scan(before["jpg"][0])
    assert photos["jpg"].read_bytes() != before["jpg"][0]
    assert (photos["jpg"].stat().st_mode & 0o777) == 0o640  # permissions kept
    with Image.open(photos["jpg"]) as image:
        iptc = IptcImagePlugin.getiptcinfo(image)
    assert iptc[(2, 120)].decode("utf-8") == written[str(photos["jpg"])]["captions"][0]
    page = gallery.read_text(encoding="utf-8")
    assert page.count("<figure>") == 6 and "unreadable" in page and "no metadata" in page
    assert 'src="photos/trip/beach.jpg"' in page
    assert not [p for p in tmp_path.rglob(".*") if p.name != ".hidden.jpg"]  # no journals left


def test_a_rerun_touches_nothing(checkpoint, tmp_path, capsys) -> None:
    make_photos(tmp_path / "photos")
    table = tmp_path / "captions.parquet"
    args = [str(tmp_path / "photos"), "-m", str(checkpoint), "--sidecar", "--write-metadata"]
    args += ["-o", str(table)]
    first = caption(args, capsys)
    files = snapshot(tmp_path)
    again = caption(args, capsys)
    assert first["captioned"] == 5 and again["captioned"] == 0
    assert again["skipped_done"] == 5  # the GIF: done in the table and its sidecar
    assert snapshot(tmp_path) == files  # images, sidecars and the table: bytes and times


def test_existing_descriptions_are_kept_unless_overwrite(checkpoint, tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    mine = folder / "mine.jpg"
    exif = Image.Exif()
    exif[270] = "My grandmother's garden"
    Image.fromarray(pixels(7)).save(mine, exif=exif)
    Image.fromarray(pixels(8)).save(folder / "new.jpg")
    old_mtime = 1_000_000_000
    os.utime(folder / "new.jpg", (old_mtime, old_mtime))
    args = [str(folder), "-m", str(checkpoint), "--write-metadata", "--keep-times"]
    summary = caption(args, capsys)
    assert summary["kept"] == 1 and summary["captioned"] == 1
    assert exif_description(mine) == "My grandmother's garden"
    assert (folder / "new.jpg").stat().st_mtime == old_mtime  # --keep-times
    result = run_cli(["caption", *args], capsys)  # the table form says how many were kept
    assert "1 existing description(s) kept" in " ".join(result.out.split())
    replaced = caption([*args, "--overwrite"], capsys)
    assert replaced["kept"] == 0 and replaced["captioned"] == 1
    assert exif_description(mine) not in (None, "My grandmother's garden")
    assert caption([*args, "--overwrite"], capsys)["captioned"] == 0  # polycap's now: done


def test_include_exclude_list_and_csv(checkpoint, tmp_path, capsys) -> None:
    photos = make_photos(tmp_path / "photos")
    table = tmp_path / "out.csv"
    args = [str(tmp_path / "photos"), "-m", str(checkpoint), "-o", str(table)]
    summary = caption([*args, "--include", "trip/*", "--exclude", "*.png"], capsys)
    assert summary["captioned"] == 1
    with open(table, encoding="utf-8", newline="") as handle:
        found = list(csv.DictReader(handle))
    assert [row["path"] for row in found] == [str(photos["jpg"])]
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two photos\n{photos['webp']}\nphotos/scan.tif\n")
    more = caption(["--from-list", str(listing), "-m", str(checkpoint), "-o", str(table)], capsys)
    assert more["captioned"] == 2
    with open(table, encoding="utf-8", newline="") as handle:
        paths = [row["path"] for row in csv.DictReader(handle)]
    assert paths == [str(photos["jpg"]), str(photos["webp"]), str(tmp_path / "photos/scan.tif")]


def test_tables_and_shards_as_inputs(checkpoint, tmp_path, capsys) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    encoded = []
    for seed in range(3):
        data = io.BytesIO()
        Image.fromarray(pixels(seed)).save(data, "PNG")
        encoded.append(data.getvalue())
    table = tmp_path / "images.parquet"
    structs = [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(encoded)]
    pq.write_table(pa.table({"image": structs, "id": [1, 2, 3]}), table)
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for index, data in enumerate(encoded[:2]):
            member = tarfile.TarInfo(f"sample{index}.png")
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    out = tmp_path / "out.jsonl"
    summary = caption([str(table), str(shard), "-m", str(checkpoint), "-o", str(out)], capsys)
    assert summary["captioned"] == 5
    keys = [row["path"] for row in rows(out)]
    assert keys == [f"{table}#row-{i}" for i in range(3)] + [f"{shard}#sample{i}" for i in (0, 1)]
    by_key = {row["path"]: row["captions"] for row in rows(out)}
    assert by_key[f"{table}#row-1"] == by_key[f"{shard}#sample1"]  # the same bytes
    result = run_cli(["caption", str(table), "-m", str(checkpoint), "--sidecar"], capsys)
    assert result.code == 2 and "not files of their own" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "captions.txt"], "write .jsonl, .csv or .parquet"),
        (["--sidecar", "--sidecar-ext", ".jpg"], "would be the image"),
        (["--include", "*.bmp", "--sidecar"], "no image files in this folder (after --include"),
    ],
)
def test_bad_requests_are_one_line(checkpoint, tmp_path, capsys, extra, message) -> None:
    make_photos(tmp_path / "photos")
    os.chdir(tmp_path)
    result = run_cli(["caption", "photos", "-m", str(checkpoint), *extra], capsys)
    assert result.code == 2 and "Traceback" not in result.err
    assert message in " ".join(result.err.split()), result.err
    assert not list(tmp_path.rglob("*.txt")) and not list(tmp_path.rglob(".*.jsonl"))


def test_an_output_that_is_not_a_caption_table_stops_before_work(checkpoint, tmp_path, capsys):
    make_photos(tmp_path / "photos")
    other = tmp_path / "other.csv"
    other.write_text("name,score\nx,1\n")
    args = [str(tmp_path / "photos"), "-m", str(checkpoint), "-o", str(other), "--sidecar"]
    result = run_cli(["caption", *args], capsys)
    assert result.code == 2 and "is not a polycap caption table" in " ".join(result.err.split())
    assert other.read_text() == "name,score\nx,1\n" and not list(tmp_path.rglob("*.txt"))


def environment(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POLYCAP_DIST_TIMEOUT": "60", **extra}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def many_photos(folder: Path, count: int) -> dict[Path, np.ndarray]:
    folder.mkdir(parents=True)
    made = {}
    for index in range(count):
        path = folder / f"img{index:02d}.jpg"
        Image.fromarray(pixels(100 + index)).save(path, quality=90)
        made[path] = decoded(path)
    return made


@pytest.mark.slow
def test_sigkill_midway_then_a_rerun_captions_each_image_once(checkpoint, tmp_path, capsys):
    """Killed while the 5th image's new file is complete but not yet renamed over it (batch 3
    of 6): no image is half-written; the rerun finishes, each image in each target once."""
    photos = many_photos(tmp_path / "photos", 12)
    scans = {p: jpeg_scan(p.read_bytes()) for p in photos}
    table, marker = tmp_path / "captions.jsonl", tmp_path / "paused"
    args = [str(tmp_path / "photos"), "-m", str(checkpoint), "--device", "cpu"]
    args += ["--sidecar", "--write-metadata", "-o", str(table), "--batch-size", "2"]
    env = environment(
        POLYCAP_CAPTION_HOOK="pause@metadata:5", POLYCAP_CAPTION_HOOK_FILE=str(marker)
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "polycap", "caption", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"exited ({process.returncode}) before the pause: {process.stderr.read()}")
        assert time.monotonic() < deadline, "never paused"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    leftovers = list((tmp_path / "photos").glob(".*.polycap-*.tmp"))
    assert len(leftovers) == 1  # the copy in flight, never the image itself
    for path, image in photos.items():  # every image whole, its pixels as they were
        assert np.array_equal(decoded(path), image) and jpeg_scan(path.read_bytes()) == scans[path]
    marked = [p for p in photos if exif_description(p)]
    assert len(marked) == 4 and not table.exists()
    journal = next(tmp_path.glob(".captions.jsonl.part-*.jsonl"))
    assert len(journal.read_text().splitlines()) == 6  # three batches of two were appended

    finished = caption(args, capsys)
    assert finished["captioned"] == 8  # batch 3 (in flight) for its metadata, and 7-12
    assert finished["skipped_done"] == 4
    written = rows(table)
    assert sorted(r["path"] for r in written) == sorted(map(str, photos))  # each once
    for row in written:
        path = Path(row["path"])
        assert path.with_suffix(".txt").read_text(encoding="utf-8") == row["captions"][0] + "\n"
        assert exif_description(path) == row["captions"][0]
        assert np.array_equal(decoded(path), photos[path])
    assert not list((tmp_path / "photos").glob(".*")) and not list(tmp_path.glob(".*.jsonl"))


@pytest.mark.slow
def test_two_gloo_processes_split_a_folder(checkpoint, tmp_path, capsys) -> None:
    """torchrun starts 2 CPU processes: each captions its half, once; the table is merged and
    equals a one-process run's."""
    many_photos(tmp_path / "photos", 9)
    one = caption(
        [str(tmp_path / "photos"), "-m", str(checkpoint), "-o", str(tmp_path / "1.jsonl")], capsys
    )
    assert one["processes"] == 1
    port = _free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_port", str(port), "-m", "polycap", "caption", str(tmp_path / "photos")]
    command += ["-m", str(checkpoint), "-o", str(tmp_path / "2.jsonl"), "--sidecar", "--json"]
    command += ["--device", "cpu", "--batch-size", "2"]
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["processes"] == 2 and summary["captioned"] == 9
    assert sorted(summary["per_process"]) == [4, 5]  # each image captioned by one process
    two = rows(tmp_path / "2.jsonl")
    assert [r["path"] for r in two] == [r["path"] for r in rows(tmp_path / "1.jsonl")]
    assert [r["captions"] for r in two] == [r["captions"] for r in rows(tmp_path / "1.jsonl")]
    assert len(list((tmp_path / "photos").glob("*.txt"))) == 9
    with contextlib.suppress(ValueError):
        assert not list(tmp_path.glob(".*.jsonl"))


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
