"""Images in, captions out: images/s, captions/s and the share of time per stage.

Section ``pipeline``. COCO-sized JPEGs (640x480) go through polycap's path: read the file,
decode it (Pillow, through :func:`polycap.data.images.decode_image`), preprocess (the encoder's own
transform), encode (open_clip ViT-B-32, random weights, batches of 64), then caption (greedy,
coco-like lengths forced as in :mod:`benchmarks.decoding`). Each stage is timed on its own
over the same images, one after the other; the end-to-end row is ``encode_images`` (reader
threads overlapping the encoder) followed by ``generate_ids``. Beside the Pillow decode, the
table times ``torchvision.io.decode_jpeg`` on the same bytes (on the GPU with ``--device
cuda``, all images in one call), and reports how far its pixels are from Pillow's.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.report import Section

BENCHMARKS = ("pipeline",)
ORDER = 20


def timed(function: Callable[[], Any], device: str) -> tuple[Any, float]:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = function()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return value, time.perf_counter() - start


def bench_section(options: Any) -> Section:
    import torch

    from benchmarks import decoding, report, workload
    from polycap.data.encoding import encode_images
    from polycap.data.images import decode_image
    from polycap.model.generation import GenerationConfig, generate_ids

    n = 16 if options.quick else 64
    device = options.device
    workdir = Path(tempfile.mkdtemp(prefix="polycap-bench-pipeline-"))
    try:
        options.say(f"pipeline: {n} JPEGs, ViT-B-32 + GPT-2 {options.decoder} (random weights)")
        paths = workload.write_images(workdir / "images", n)
        encoder = workload.build_encoder(device=device)
        model = decoding.build_model(options, workdir)
        lengths = workload.batch_lengths(n)
        hook = workload.ForcedLengths(lengths, model.end_token_id)
        config = GenerationConfig(max_length=max(lengths))
        # warm-up: one image through every stage
        first = encoder.preprocess(decode_image(paths[0].read_bytes(), paths[0]))
        features = encoder.encode_images(first[None])
        generate_ids(model, features.to(device), GenerationConfig(max_length=2))

        data, read_s = timed(lambda: [p.read_bytes() for p in paths], device)
        images, pil_s = timed(lambda: [decode_image(d, p) for d, p in zip(data, paths)], device)
        pixels, prep_s = timed(lambda: torch.stack([encoder.preprocess(i) for i in images]), device)
        features, encode_s = timed(lambda: encoder.encode_images(pixels), device)
        _, caption_s = timed(
            lambda: generate_ids(model, features.to(device), config, logits_hook=hook), device
        )
        tv, tv_s, tv_note = torchvision_decode(data, images, device)
        _, e2e_encode_s = timed(
            lambda: encode_images(encoder, paths, progress=False, use_cache=False), device
        )
        total_s = read_s + pil_s + prep_s + encode_s + caption_s
        stages = [
            ("read the files", read_s),
            ("decode JPEG (Pillow)", pil_s),
            ("preprocess (resize, crop, normalise)", prep_s),
            ("encode (ViT-B-32, one batch)", encode_s),
            (f"caption (greedy, GPT-2 {options.decoder}, mapper included)", caption_s),
        ]
        rows = [
            [name, f"{seconds:.2f}", f"{seconds / total_s:.0%}", f"{n / seconds:,.1f}"]
            for name, seconds in stages
        ]
        rows.append(
            ["all stages, one after the other", f"{total_s:.2f}", "100%", f"{n / total_s:,.1f}"]
        )
        e2e_s = e2e_encode_s + caption_s
        rows.append(
            [
                "end to end: encode_images (reader threads) + generate_ids",
                f"{e2e_s:.2f}",
                "",
                f"{n / e2e_s:,.1f}",
            ]
        )
        if tv is not None:
            rows.append(
                [
                    f"decode JPEG (torchvision.io.decode_jpeg, {device})",
                    f"{tv_s:.2f}",
                    "",
                    f"{n / tv_s:,.1f}",
                ]
            )
        markdown = report.table(["stage", "seconds", "share", "images/s"], rows, align="lrrr")
        notes = [
            f"{n} images of 640x480, one caption each (coco-like lengths, median "
            f"{sorted(lengths)[n // 2]} tokens): {n / e2e_s:,.1f} images/s = "
            f"{n / e2e_s:,.1f} captions/s end to end; {device}, {options.precision} decoder, "
            f"{torch.get_num_threads()} torch thread(s)",
            tv_note,
        ]
        markdown += "\n\n" + "\n".join(f"- {note}" for note in notes if note)
        return report.Section(
            name=options.section_name("pipeline"),
            markdown=markdown,
            data={
                "images": n,
                "stages": dict(stages),
                "end_to_end_seconds": e2e_s,
                "torchvision_decode_seconds": tv_s,
            },
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def torchvision_decode(data: list[bytes], images: list[Any], device: str) -> tuple[Any, float, str]:
    """``torchvision.io.decode_jpeg`` over the same bytes: its images, seconds and a note on
    how its pixels compare with Pillow's (both libjpeg-based, IDCT and upsampling may differ)."""
    import numpy as np
    import torch

    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None, 0.0, "torchvision is not installed: no decode_jpeg row"
    encoded = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    target = device if device.startswith("cuda") else "cpu"
    decode_jpeg(encoded[:1], mode=ImageReadMode.RGB, device=target)  # warm-up (nvjpeg init)
    decoded, seconds = timed(
        lambda: decode_jpeg(encoded, mode=ImageReadMode.RGB, device=target), device
    )
    worst = max(
        int(np.abs(t.cpu().permute(1, 2, 0).numpy().astype(int) - np.asarray(i, int)).max())
        for t, i in zip(decoded, images, strict=True)
    )
    note = (
        f"decode_jpeg's pixels differ from Pillow's by at most {worst} (of 255); polycap "
        "decodes with Pillow (EXIF orientation, colour modes, bomb limit), so this row is a "
        "measurement beside it, not the path captions take"
    )
    return decoded, seconds, note
