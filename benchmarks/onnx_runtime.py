"""ONNX Runtime vs PyTorch: captions/s of the same captioner, side by side in one run, and the
size on disk of each way of sharing it (``polycap export --to hf`` / ``--to onnx`` /
``--to onnx --int8``).

The captioner is the benchmarks' GPT-2 (small by default, random weights, end token
unreachable so every caption runs to the token cap; benchmarks/workload.py) behind ClipCap's
MLP mapper; decoding starts from random CLIP features (the ONNX export is made with
``--no-encoder``: the image tower is not what is compared). Both runtimes go through the same
decoding loops (polycap.model.generation.decode); only the model call differs. The timed runs
alternate PyTorch, ONNX Runtime fp32 and int8, ``repeats`` times, and the best of each is kept,
so a change of load on a shared machine hits all three alike. Both use the same number of
threads. int8 is dynamic quantisation (int8 weights, activations quantised at run time); its
agreement with PyTorch is reported as identical captions and identical tokens.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

BENCHMARKS = ("onnx",)
ORDER = 60


def folder_size(path: Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def token_agreement(ours: list[list[int]], reference: list[list[int]]) -> tuple[int, float]:
    """(identical captions, share of identical tokens position by position)."""
    same = sum(a == b for a, b in zip(ours, reference))
    total = sum(max(len(a), len(b)) for a, b in zip(ours, reference)) or 1
    tokens = sum(x == y for a, b in zip(ours, reference) for x, y in zip(a, b))
    return same, tokens / total


def bench_section(options: Any) -> Any:
    import torch

    from benchmarks import workload
    from benchmarks.report import Section
    from polycap.inference.pipeline import encoder_for
    from polycap.interop.onnx_export import export_onnx
    from polycap.interop.onnx_runtime import OnnxCaptioner
    from polycap.interop.sharing import export_hf
    from polycap.model.generation import GenerationConfig, generate_ids

    threads = options.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    workdir = Path(tempfile.mkdtemp(prefix="polycap-bench-onnx-"))
    try:
        options.say(f"building the GPT-2 {options.decoder} captioner (random weights)")
        model = workload.build_captioner(options.decoder, 512, workdir)
        sizes = {}
        export_hf(model, workdir / "hf", encoder=encoder_for(model))
        sizes["hf"] = folder_size(workdir / "hf")
        options.say("exporting to ONNX (fp32, then int8)")
        started = time.perf_counter()
        export_onnx(model, workdir / "onnx", encoder=None)
        export_seconds = time.perf_counter() - started
        export_onnx(model, workdir / "onnx-int8", encoder=None, int8=True)
        sizes["onnx"] = folder_size(workdir / "onnx")
        sizes["int8"] = folder_size(workdir / "onnx-int8")
        runtimes = {
            "PyTorch": model,
            "ONNX Runtime": OnnxCaptioner(workdir / "onnx", threads=threads),
            "ONNX Runtime int8": OnnxCaptioner(workdir / "onnx-int8", threads=threads),
        }
        plans = _plans(options)
        rows, data = [], {"threads": threads, "sizes_bytes": sizes, "plans": {}}
        for label, (n, config) in plans.items():
            features = workload.random_features(n, 512, seed=1)
            for runtime in runtimes.values():  # warm-up: allocator, thread pools, ORT arenas
                generate_ids(runtime, features[:2], GenerationConfig(max_length=2, beams=1))
            best = {name: float("inf") for name in runtimes}
            ids: dict[str, list[list[int]]] = {}
            for repeat in range(options.repeats):
                for name, runtime in runtimes.items():
                    options.say(f"{label}: {name} ({repeat + 1}/{options.repeats})")
                    start = time.perf_counter()
                    out = generate_ids(runtime, features, config)
                    best[name] = min(best[name], time.perf_counter() - start)
                    ids[name] = [captions[0] for captions in out]
            reference = ids["PyTorch"]
            data["plans"][label] = {"images": n, "seconds": best}
            for name in runtimes:
                same, tokens = token_agreement(ids[name], reference)
                rate = n / best[name]
                rows.append(
                    f"| {label} | {name} | {rate:.2f} | "
                    f"{rate / (n / best['PyTorch']):.2f}x | {same}/{n} ({tokens:.1%} tokens) |"
                )
                data["plans"][label][name] = {"rate": rate, "same": same, "tokens": tokens}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    mb = {key: value / 1e6 for key, value in sizes.items()}
    lines = [
        f"GPT-2 {options.decoder} decoder (random weights) behind an MLP mapper, from random "
        f"CLIP features, {options.max_length} tokens per caption, {threads} thread(s) each; "
        f"best of {options.repeats}, runtimes alternating.",
        "",
        "| decoding | runtime | captions/s | vs PyTorch | same best caption as PyTorch |",
        "|---|---|---:|---:|---|",
        *rows,
        "",
        "| shared as | size on disk |",
        "|---|---:|",
        f"| `polycap export --to hf` (checkpoint + LM + tokenizer + card) | {mb['hf']:.0f} MB |",
        f"| `polycap export --to onnx --no-encoder` (fp32 graphs) | {mb['onnx']:.0f} MB |",
        f"| `polycap export --to onnx --no-encoder --int8` | {mb['int8']:.0f} MB |",
        "",
        f"- The fp32 ONNX export (torch.onnx.export, dynamo) took {export_seconds:.0f} s.",
        "- Timings on a shared machine are noisy; the ratio between runtimes, measured "
        "alternately in one run, is the number to read. On an oversubscribed machine (load "
        "above the core count) run it with `--threads 1`: with more threads both runtimes "
        "lose most of their time waiting for each other's threads, PyTorch's much more.",
    ]
    return Section(options.section_name("onnx"), "\n".join(lines) + "\n", data)


def _plans(options: Any) -> dict[str, tuple[int, Any]]:
    from polycap.model.generation import GenerationConfig

    greedy = 8 if options.quick else min(options.batch, 32)
    beam = 2 if options.quick else 8
    return {
        f"greedy, {greedy} images": (greedy, GenerationConfig(max_length=options.max_length)),
        f"beam 5, {beam} images": (
            beam,
            GenerationConfig(max_length=options.max_length, beams=5),
        ),
    }
