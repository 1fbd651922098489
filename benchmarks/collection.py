"""Captioning a collection end to end: ``polycap caption DIR -o captions.jsonl --sidecar
--write-metadata`` over N generated JPEGs, with the tiny offline models, in a fresh process.

``python -m benchmarks.collection`` (default sizes 2,000 and 10,000; ``--sizes``) prints one
row per size: images/s of the captioning loop (the command's own summary) and end to end
(process start to exit: model loading, listing, merging the table), and the process's peak
resident memory (``ru_maxrss`` of that child, from ``os.wait4``), with the load average
beside them: this machine is shared, so the rates depend on what else runs. The peak should
not grow with N beyond the per-image bookkeeping (paths listed, keys of the table): a batch
of images is all that is held at once. ``make bench`` runs it through :func:`bench_section`
(``--only collection``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCHMARKS = ("collection",)
SIZES = (2_000, 10_000)
QUICK_SIZES = (200, 1_000)
CAPTIONS = ["a red circle", "two blue squares", "a green triangle", "three yellow circles"] * 5


def build_model(root: Path) -> Path:
    """The tiny English captioner (tiny GPT-2 and CLIP built offline), saved under ``root``."""
    from polycap.demo.runner import build_tiny_models
    from polycap.model.captioner import Captioner
    from polycap.plugins import get_registries

    pack = get_registries().languages.get("en")
    models = build_tiny_models(pack, CAPTIONS, root / "models", seed=0)
    model = Captioner.build(
        pack=pack,
        tokenizer=pack.load_tokenizer(models["lm"]),
        lm=pack.load_decoder(models["lm"]),
        encoder_info={
            "backend": "open_clip",
            "name": models["encoder"],
            "pretrained": models["pretrained"],
            "embed_dim": 64,
        },
        prefix_length=2,
    )
    return model.save(root / "model")


def write_jpegs(folder: Path, count: int) -> None:
    """``count`` 96x72 JPEGs of coloured blocks, 100 to a subfolder."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for index in range(count):
        sub = folder / f"{index // 100:04d}"
        sub.mkdir(parents=True, exist_ok=True)
        blocks = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(blocks).resize((96, 72), Image.NEAREST)
        image.save(sub / f"img{index:06d}.jpg", quality=85)


def run_once(model: Path, folder: Path, work: Path) -> dict[str, Any]:
    """One ``polycap caption`` process over ``folder``: its summary, wall time and peak RSS."""
    out = work / "captions.jsonl"
    command = [sys.executable, "-m", "polycap", "caption", str(folder), "-m", str(model)]
    command += ["-o", str(out), "--sidecar", "--write-metadata", "--json", "--device", "cpu"]
    env = {**os.environ, "POLYCAP_CACHE_DIR": str(work / "cache"), "OMP_NUM_THREADS": "1"}
    load = os.getloadavg()[0]
    started = time.perf_counter()
    with open(work / "out.json", "w") as stdout, open(work / "err.txt", "w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise RuntimeError((work / "err.txt").read_text()[-2000:])
    summary = json.loads((work / "out.json").read_text())
    return {
        "images": summary["images"],
        "captioned": summary["captioned"],
        "loop_images_per_s": summary["images_per_second"],
        "end_to_end_images_per_s": round(summary["captioned"] / wall, 1),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "load_before": round(load, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def measure(sizes: Sequence[int], say: Any = print) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="polycap-bench-collection-"))
    try:
        model = build_model(root)
        rows = []
        for size in sizes:
            work = root / f"n{size}"
            say(f"writing {size} JPEGs")
            write_jpegs(work / "photos", size)
            say(f"captioning {size} images")
            rows.append(run_once(model, work / "photos", work))
            say(json.dumps(rows[-1]))
            shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"rows": rows, "cpus": os.cpu_count()}


def markdown(result: dict[str, Any]) -> str:
    from benchmarks.report import table

    columns = ["images", "captioned/s (loop)", "end to end /s", "wall s", "peak RSS MB", "load"]
    body = [
        [
            f"{r['images']:,}",
            f"{r['loop_images_per_s']:.1f}",
            f"{r['end_to_end_images_per_s']:.1f}",
            f"{r['wall_s']:.1f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['load_before']:.1f} -> {r['load_after']:.1f}",
        ]
        for r in result["rows"]
    ]
    rss = [r["peak_rss_mb"] for r in result["rows"]]
    growth = f"peak RSS grows {rss[-1] - rss[0]:+.0f} MB from the smallest to the largest size"
    note = (
        f"`polycap caption DIR -o captions.jsonl --sidecar --write-metadata`, tiny offline "
        f"models, CPU ({result['cpus']} cores, shared: the load average is beside each row); "
        f"{growth}."
    )
    return note + "\n\n" + table(columns, body, "rrrrrl")


def bench_section(options: Any) -> object:
    from benchmarks.report import Section

    result = measure(QUICK_SIZES if options.quick else SIZES, options.say)
    name = "collection-quick" if options.quick else "collection"
    return Section(name, markdown(result), result)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.collection")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args(argv)
    result = measure(args.sizes, say=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
