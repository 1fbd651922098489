"""Memory: peak RSS while encoding images and while training, each in a fresh process.

``python -m benchmarks.memory`` prints the table (``--quick`` for small sizes; ``--write``
puts it into docs/benchmarks.md; ``make bench`` runs it through :func:`bench_section`):

- encoding N images (a micro open_clip model) into a feature store, three times each
  (:func:`polycap.data.features.encode_to_store`): rows streamed to disk chunk by chunk; the
  table states the peak's growth between the larger sizes (and per image) and whether it is
  flat (under ``FLAT_MB``);
- training reads from a store of R rows x 512: the streamed feature statistics over every
  row, then optimizer steps of a prefix mapper on batches read from the store, as the
  trainer does (``collate`` on ``Features``); "one tensor" is what holding the rows in memory
  would take.

The workers (``python -m benchmarks.memory --images ...`` encodes N images, as
``benchmarks.clipcap`` also runs it; ``python -m benchmarks.memory train ...``) reset the
kernel's peak-RSS mark (``/proc/self/clear_refs``) after loading, and report the new peak
(``VmHWM``) minus the resident size before the measured work. Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from collections.abc import Sequence
from pathlib import Path


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` value in kB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def encode_worker(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--config", type=Path, required=True, help="open_clip model config")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--store", type=Path, default=None, help="encode into a feature store")
    args = parser.parse_args(argv)

    import open_clip
    import torch

    from polycap.data.encoding import encode_images, load_encoder
    from polycap.data.features import encode_to_store
    from polycap.data.images import expand_image_paths

    torch.set_num_threads(1)  # a micro model: one thread is fastest and the peak is the same
    open_clip.add_model_config(args.config)
    paths = expand_image_paths([args.images])[: args.n]  # the list `polycap encode DIR` passes
    encoder = load_encoder(args.encoder, pretrained=args.weights, device=args.device)
    encode_images(encoder, paths[:64], progress=False, use_cache=False)  # warm up, a full batch
    exact = reset_peak()
    before_kb = status_kb("VmRSS")
    start = time.perf_counter()
    if args.store is not None:
        stored = encode_to_store(
            encoder, paths, args.store, batch_size=64, cache_dir=args.cache, progress=False
        )
        counts = (stored.stats.encoded, len(stored.stats.skipped))
        held_mb = 0.0  # rows went to disk chunk by chunk
    else:
        encoded = encode_images(encoder, paths, batch_size=64, cache_dir=args.cache, progress=False)
        counts = (encoded.encoded, len(encoded.skipped))
        held_mb = encoded.features.numel() * encoded.features.element_size() / 1e6
    seconds = time.perf_counter() - start
    peak_kb = status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "n": len(paths),
                "encoded": counts[0],
                "skipped": counts[1],
                "seconds": seconds,
                "rss_before_mb": before_kb * 1024 / 1e6,
                "peak_growth_mb": max(0, peak_kb - before_kb) * 1024 / 1e6,
                "peak_reset": exact,
                "feature_mb": held_mb,
            }
        )
    )
    return 0


def train_worker(argv: Sequence[str]) -> int:
    """Training's feature path on a store of ``--rows`` random rows (written first)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory train")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--store", type=Path, required=True)
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    import torch.nn.functional as F

    from polycap.data.features import create_store
    from polycap.model.captioner import streamed_mean_std
    from polycap.model.mapping import MLPMapper
    from polycap.train.trainer import TokenizedSet, collate

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    blocks = (
        rng.standard_normal((min(65536, args.rows - start), args.dim), dtype=np.float32)
        for start in range(0, args.rows, 65536)
    )
    names = (f"image{i:07d}.jpg" for i in range(args.rows))
    store = create_store(args.store, blocks, names, {"name": "random", "embed_dim": args.dim})
    mapper = MLPMapper(args.dim, 64, 4)
    optimizer = torch.optim.AdamW(mapper.parameters(), lr=1e-3)
    tokens = [[1, 2, 3, 4, 5]] * args.batch
    exact = reset_peak()
    before_kb = status_kb("VmRSS")
    start = time.perf_counter()
    mean, std = streamed_mean_std(store.blocks(), lambda block: F.normalize(block, dim=-1))
    for _ in range(args.steps):
        rows = rng.integers(0, args.rows, size=args.batch).tolist()
        batch = TokenizedSet(rows, tokens)
        features, _, _ = collate(list(range(args.batch)), batch, store, pad_id=0)
        prepared = (F.normalize(features, dim=-1) - mean) / std
        loss = mapper(prepared).pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    peak_kb = status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "rows": args.rows,
                "dim": args.dim,
                "steps": args.steps,
                "batch": args.batch,
                "seconds": seconds,
                "rss_before_mb": before_kb * 1024 / 1e6,
                "peak_growth_mb": max(0, peak_kb - before_kb) * 1024 / 1e6,
                "peak_reset": exact,
                "one_tensor_mb": args.rows * args.dim * 4 / 1e6,
            }
        )
    )
    return 0


# -- the table --------------------------------------------------------------------------------

BENCHMARKS = ("feature-store",)
ORDER = 70
SIZES = {
    "full": ((1_000, 2_000, 10_000), (10_000, 100_000, 1_000_000)),
    "quick": ((1_000, 6_000), (2_000, 20_000)),  # both sizes fill the 1,024-image chunks
}
FLAT_MB = 1.0  # the goal: encoding's peak grows by less than this between the sizes compared
REPEATS = 3  # encoding runs per size (one size's peak varies by about 0.5 MB between runs)


def _worker(args: Sequence[str]) -> dict:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory worker failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def encode_median(args: Sequence[str], work: Path, repeats: int) -> dict:
    """The encoding worker ``repeats`` times (fresh process, cache and store each): the run
    with the median peak, with every run's peak in ``peak_runs_mb``."""
    runs = []
    for index in range(repeats):
        cache, store = work / f"cache-{index}", work / f"store-{index}"
        runs.append(_worker([*args, "--cache", str(cache), "--store", str(store)]))
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(store, ignore_errors=True)
    runs.sort(key=lambda run: run["peak_growth_mb"])
    return {**runs[len(runs) // 2], "peak_runs_mb": [run["peak_growth_mb"] for run in runs]}


def measure(quick: bool, say=print) -> dict:
    """Encoding rows (each size ``REPEATS`` times) and training rows, each in a fresh process."""
    import tempfile

    from benchmarks import workload

    encode_sizes, train_sizes = SIZES["quick" if quick else "full"]
    work = Path(tempfile.mkdtemp(prefix="polycap-memory-"))
    try:
        folder = work / "images"
        say(f"memory: writing {max(encode_sizes)} 32x32 PNG images")
        workload.write_images(folder, max(encode_sizes), size=(32, 32), suffix=".png")
        name, weights, config = workload.build_micro_clip(work / "micro-clip")
        model = ["--encoder", name, "--weights", str(weights), "--config", str(config)]
        encoding = []
        for n in encode_sizes:
            say(f"memory: encoding {n} images into a feature store ({REPEATS} fresh processes)")
            args = ["--images", str(folder), "--n", str(n), *model]
            encoding.append(encode_median(args, work, REPEATS))
        training = []
        for rows in train_sizes:
            say(f"memory: training steps on a store of {rows} rows (fresh process)")
            training.append(_worker(["train", "--rows", str(rows), "--store", str(work / "t")]))
            shutil.rmtree(work / "t", ignore_errors=True)
        return {"encoder": name, "encoding": encoding, "training": training}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def compared(encoding: Sequence[dict]) -> tuple[dict, dict]:
    """The two encoding sizes whose peaks are compared: the second-smallest (the smallest when
    there are two) and the largest, both past the first chunk's start-up."""
    return (encoding[1] if len(encoding) > 2 else encoding[0]), encoding[-1]


def encoding_markdown(result: dict) -> list[str]:
    enc = result["encoding"]
    first, last = compared(enc)
    grown_mb = last["peak_growth_mb"] - first["peak_growth_mb"]
    per_image = grown_mb * 1e6 / max(1, last["n"] - first["n"])
    lines = [
        f"Encoding into a feature store ({result['encoder']}, 32x32 PNGs read from disk, "
        "features cached and streamed to the store chunk by chunk; the image list as "
        "`polycap encode DIR` builds it is made before the measurement):",
        "",
        f"| images | seconds | peak RSS growth (median of {len(enc[0]['peak_runs_mb'])}) "
        "| the runs' peaks |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['n']:,} | {r['seconds']:.1f} | {r['peak_growth_mb']:.1f} MB "
        f"| {', '.join(f'{peak:.1f}' for peak in r['peak_runs_mb'])} MB |"
        for r in enc
    ]
    lines += [
        "",
        f"Growth of the peak from {first['n']:,} to {last['n']:,} images: {grown_mb:+.1f} MB, "
        f"{per_image:+,.0f} bytes per image. Goal (flat: under {FLAT_MB:.0f} MB more): "
        f"{'met' if grown_mb < FLAT_MB else 'not met'}.",
    ]
    return lines


def training_markdown(result: dict) -> list[str]:
    train = result["training"]
    t0 = train[0]
    spread = max(r["peak_growth_mb"] for r in train) - min(r["peak_growth_mb"] for r in train)
    tensor = train[-1]["one_tensor_mb"] - t0["one_tensor_mb"]
    lines = [
        f"Training reads from a store ({t0['dim']}-dim rows; feature statistics streamed over "
        f"every row, then {t0['steps']} optimizer steps of an MLP mapper on batches of "
        f"{t0['batch']} rows read from disk):",
        "",
        "| store rows | seconds | peak RSS growth | the rows as one tensor |",
        "|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['rows']:,} | {r['seconds']:.1f} | {r['peak_growth_mb']:.1f} MB "
        f"| {r['one_tensor_mb']:,.0f} MB |"
        for r in train
    ]
    lines += [
        "",
        f"From {t0['rows']:,} to {train[-1]['rows']:,} rows the peak varies within "
        f"{spread:.1f} MB, while the rows as one tensor would grow by {tensor:,.0f} MB.",
    ]
    return lines


def markdown(result: dict) -> str:
    return "\n".join([*encoding_markdown(result), "", *training_markdown(result)])


def bench_section(options) -> object:
    """``make bench``'s hook: the two tables as the ``feature-store`` section."""
    from benchmarks.report import Section

    result = measure(options.quick, options.say)
    name = "feature-store-quick" if options.quick else "feature-store"
    return Section(name, markdown(result), result)


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        return train_worker(argv[1:])
    if "--images" in argv:
        return encode_worker(argv)
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--quick", action="store_true", help="small sizes (a minute)")
    parser.add_argument("--write", action="store_true", help="write into docs/benchmarks.md")
    args = parser.parse_args(argv)
    result = measure(args.quick, say=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True))
    text = markdown(result)
    print(text)
    if args.write:
        from benchmarks import report

        name = "feature-store-quick" if args.quick else "feature-store"
        command = "python -m benchmarks.memory " + " ".join(argv)
        report.write([report.Section(name, text, result)], command.strip())
        print(f"wrote section {name} into {report.DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
