"""The on-disk feature store with a real tiny open_clip model: streamed writes, row reads,
reuse, skipped images, and encoding split across two gloo processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from polycap.data.encoding import encode_images, load_encoder
from polycap.data.features import MATRIX, Features, encode_to_store
from polycap.errors import BadInput
from polycap.offline import tiny
from polycap.util.distributed import Processes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    return tiny.build_clip(tmp_path_factory.mktemp("clip"), seed=0)


@pytest.fixture
def encoder(clip: tuple[str, Path]):
    return load_encoder(clip[0], pretrained=clip[1])


def write_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        path = folder / f"img{index:03d}.png"
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = write_images(tmp_path / "images", 11)
    corrupt = tmp_path / "images" / "corrupt.png"
    corrupt.write_bytes(b"not an image at all")
    return [*paths[:4], corrupt, *paths[4:], tmp_path / "missing.png", paths[0]]


def test_store_holds_what_encode_images_returns(encoder, images, tmp_path: Path) -> None:
    reference = encode_images(encoder, images, use_cache=False, progress=False)
    result = encode_to_store(
        encoder, images, tmp_path / "store", batch_size=3, chunk=4, use_cache=False, progress=False
    )
    store = result.store
    assert store is not None and len(store) == len(reference) == 11
    assert store.paths() == reference.paths
    assert {p.name for p, _ in store.skipped()} == {"corrupt.png", "missing.png"}
    assert result.stats.rows == 11 and result.stats.encoded == 11 and len(result.stats.skipped) == 2
    whole = store[:]  # batches of 3 here, of 11 there: float noise only
    torch.testing.assert_close(whole, reference.features, rtol=1e-5, atol=1e-6)
    rows = torch.tensor([7, 0, 7, 3, 4, 5, 9])
    assert torch.equal(store[rows], whole[rows])
    assert torch.equal(store[2], whole[2]) and torch.equal(store[-1], whole[-1])
    assert torch.equal(store[1:9:3], whole[1:9:3])
    assert torch.equal(torch.cat(list(store.blocks(size=3))), whole)
    assert torch.equal(torch.cat(list(store.blocks(size=2, rows=[5, 1, 5]))), whole[[5, 1, 5]])
    assert np.array_equal(np.asarray(store.matrix()), whole.numpy())
    meta = json.loads((tmp_path / "store" / "meta.json").read_text())
    assert meta["encoder"]["cache_key"] == encoder.cache_key and meta["dim"] == encoder.embed_dim
    assert meta["rows"] == 11 and meta["processes"] == 1
    assert (tmp_path / "store" / MATRIX).stat().st_size == 11 * encoder.embed_dim * 4
    with pytest.raises(IndexError):
        store[torch.tensor([11])]


def test_store_is_reused_only_for_the_same_images_and_encoder(
    encoder, clip, images, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    first = encode_to_store(encoder, images, out, progress=False, cache_dir=tmp_path / "c")
    again = encode_to_store(encoder, images, out, progress=False, cache_dir=tmp_path / "c")
    assert again.stats.reused and not first.stats.reused and again.stats.encoded == 0
    fewer = encode_to_store(encoder, images[:3], out, progress=False, cache_dir=tmp_path / "c")
    assert not fewer.stats.reused and len(fewer.store) == 3
    before = fewer.store[:]
    other = load_encoder(clip[0], pretrained=tiny.build_clip(tmp_path / "other", seed=1)[1])
    changed = encode_to_store(other, images[:3], out, progress=False, cache_dir=tmp_path / "c")
    assert not changed.stats.reused and changed.stats.encoded == 3
    assert not torch.equal(changed.store[:], before)


def test_damaged_or_foreign_folders_are_refused(encoder, images, tmp_path: Path) -> None:
    out = tmp_path / "store"
    encode_to_store(encoder, images[:3], out, progress=False, use_cache=False)
    with open(out / MATRIX, "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(BadInput, match="damaged"):
        Features.open(out)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(BadInput, match="not a feature store; refusing"):
        encode_to_store(encoder, images[:3], foreign, progress=False)
    assert (foreign / "keep.txt").read_text() == "mine"


def test_without_out_only_the_cache_is_filled(encoder, images, tmp_path: Path) -> None:
    result = encode_to_store(encoder, images, None, progress=False, cache_dir=tmp_path / "cache")
    assert result.store is None and result.stats.encoded == 11
    again = encode_images(encoder, images, cache_dir=tmp_path / "cache", progress=False)
    assert again.from_cache == 11 and again.encoded == 0


def test_spelled_duplicates_are_one_image_in_first_seen_order(
    encoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = write_images(tmp_path / "images", 3)
    monkeypatch.chdir(tmp_path)
    given = [paths[1], "images/img000.png", "./images/../images/img001.png", str(paths[0])]
    given += [paths[2], Path("images//img002.png"), "images/img000.png"]
    result = encode_to_store(encoder, given, tmp_path / "s", use_cache=False, progress=False)
    expected = encode_images(encoder, given, use_cache=False, progress=False).paths
    assert result.store.paths() == expected == [paths[1], Path("images/img000.png"), paths[2]]
    assert expected[0] is given[0]  # the caller's Path, not a new one per image
    assert result.stats.requested == 3 and result.stats.rows == 3


def test_the_image_list_is_kept_as_positions_not_as_a_second_list() -> None:
    """De-duplicating 20,000 paths keeps 8 bytes per image (positions into the caller's list)
    and needs under 64 bytes per image while it runs: no set of path strings, no new Paths."""
    import tracemalloc

    from polycap.data.features import _ImageList

    given = [Path(f"/data/images/{index:06d}.jpg") for index in range(20_000)]
    given.append(Path("/data/images/../images/000007.jpg"))
    for path in given:
        os.fspath(path)  # the list's own strings: pathlib computes (and keeps) them on first use
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    images = _ImageList.of(given)
    kept, peak = (size - base for size in tracemalloc.get_traced_memory())
    tracemalloc.stop()
    assert len(images) == 20_000 and images.part(7, 9) == given[7:9]
    assert images.part(7, 8)[0] is given[7]
    assert kept / 20_000 < 16 and peak / 20_000 < 64, (kept, peak)


SHARE_COUNTS = (0, 1, 5, 8, 13)


def hand_split(count: int, rank: int, world: int) -> list[int]:
    """The contiguous split polycap computed by hand before Accelerate's
    ``split_between_processes`` (sizes differ by at most one, the first ranks take more)."""
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return list(range(start, start + base + (1 if rank < extra else 0)))


def test_shares_cover_every_image_once() -> None:
    """One process takes everything; several (Accelerate's split, checked in the two-process
    runs below) take what the hand-written split gave them."""
    for count in SHARE_COUNTS:
        assert list(Processes().share(count)) == list(range(count))
        for world in (2, 3):
            split = [hand_split(count, rank, world) for rank in range(world)]
            assert [i for share in split for i in share] == list(range(count))


LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port"],
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    + ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    + ["--main_process_port"],
}


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_gloo_processes_encode_like_one(clip, tmp_path: Path, launcher: str) -> None:
    """torchrun, or accelerate launch, starts 2 CPU processes; each encodes half of every
    chunk and both see the merged store, equal to the one-process store row for row."""
    paths = write_images(tmp_path / "images", 13, seed=3)
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(str(p) for p in paths))
    encoder = load_encoder(clip[0], pretrained=clip[1])
    single = encode_to_store(encoder, paths, tmp_path / "one", chunk=3, progress=False).store
    env = {**os.environ, "POLYCAP_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    script = ROOT / "tests" / "dist_encode_worker.py"
    command = [sys.executable, *LAUNCHERS[launcher], str(_free_port()), str(script)]
    command += [clip[0], str(clip[1]), str(listing), str(tmp_path / "two"), str(tmp_path / "c")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    assert all(r["rows"] == 13 and r["world"] == 2 for r in reports), reports
    assert sum(r["encoded_here"] for r in reports) == 13  # each image encoded exactly once
    assert len({r["checksum"] for r in reports}) == 1  # both see the same merged result
    for r in reports:  # Accelerate's split is the one polycap computed by hand
        assert r["shares"] == {str(n): hand_split(n, r["rank"], 2) for n in SHARE_COUNTS}
        assert r["gathered"] == [[0, "a"], [1, "b"]]  # every process's value, in rank order
    merged = Features.open(tmp_path / "two")
    assert merged.paths() == single.paths() and merged.meta["processes"] == 2
    torch.testing.assert_close(merged[:], single[:], rtol=1e-5, atol=1e-6)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_encode_command_writes_a_store(clip, tmp_path: Path, capsys) -> None:
    from cli_runner import run_cli

    paths = write_images(tmp_path / "images", 5)
    args = ["encode", str(tmp_path / "images"), "--encoder", clip[0], "--pretrained", str(clip[1])]
    args += ["--output", str(tmp_path / "store"), "--json", "--cache-dir", str(tmp_path / "c")]
    result = run_cli(args, capsys)
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    assert summary["encoded"] == 5 and summary["processes"] == 1 and not summary["reused"]
    store = Features.open(tmp_path / "store")
    assert sorted(store.paths()) == sorted(paths)
    again = json.loads(run_cli(args, capsys).out)
    assert again["reused"]


@pytest.mark.slow
def test_a_process_that_dies_is_one_line_not_a_hang(clip, tmp_path: Path) -> None:
    """Rank 1 joins and is SIGKILLed; rank 0 (polycap encode) stops with one line, exit 2."""
    write_images(tmp_path / "images", 4)
    port = str(_free_port())
    env = {**os.environ, "POLYCAP_DIST_TIMEOUT": "20", "OMP_NUM_THREADS": "1"}
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, WORLD_SIZE="2")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    dying = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "dist_encode_worker.py"), "die"],
        env={**env, "RANK": "1", "LOCAL_RANK": "1"},
    )
    command = [sys.executable, "-m", "polycap", "encode", str(tmp_path / "images")]
    command += ["--encoder", clip[0], "--pretrained", str(clip[1]), "--output", str(tmp_path / "s")]
    done = subprocess.run(
        command,
        env={**env, "RANK": "0", "LOCAL_RANK": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    dying.wait(timeout=60)
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert len(errors) == 1 and "process 0 of 2 lost the others" in errors[0], done.stderr
    assert not (tmp_path / "s").exists()


def test_streamed_statistics_equal_the_whole_tensor_and_stores_from_blocks(tmp_path) -> None:
    from polycap.data.features import create_store
    from polycap.model.captioner import streamed_mean_std

    rows = torch.randn(103, 16, generator=torch.Generator().manual_seed(0)) * 3 + 1
    store = create_store(
        tmp_path / "s",
        (rows[i : i + 10].numpy() for i in range(0, 103, 10)),
        [f"img{i}.png" for i in range(103)],
        {"name": "outside", "embed_dim": 16},
    )
    assert torch.equal(store[:], rows) and store.paths()[5] == Path("img5.png")
    mean, std = streamed_mean_std(store.blocks(size=7), lambda block: block)
    torch.testing.assert_close(mean, rows.mean(dim=0))
    torch.testing.assert_close(std, rows.std(dim=0))
