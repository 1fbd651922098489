"""Memory worker: encode N images from a folder with polycap and report the peak RSS growth.

Run by ``benchmarks.run`` in a fresh process per N (``python -m benchmarks.memory ...``), so
each peak is clean. After the encoder is loaded and warmed up, the kernel's peak-RSS mark is
reset (``/proc/self/clear_refs``), then ``encode_images`` streams the images from disk
(features written to the on-disk cache as each batch finishes); the growth is the new peak
(``VmHWM``) minus the resident size before encoding. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--config", type=Path, required=True, help="open_clip model config")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import open_clip
    import torch

    from polycap.encoding import encode_images, load_encoder

    torch.set_num_threads(1)  # a micro model: one thread is fastest and the peak is the same
    open_clip.add_model_config(args.config)
    paths = sorted(args.images.iterdir())[: args.n]
    encoder = load_encoder(args.encoder, pretrained=args.weights, device=args.device)
    encode_images(encoder, paths[:64], progress=False, use_cache=False)  # warm up, a full batch
    exact = reset_peak()
    before_kb = status_kb("VmRSS")
    start = time.perf_counter()
    encoded = encode_images(encoder, paths, batch_size=64, cache_dir=args.cache, progress=False)
    seconds = time.perf_counter() - start
    peak_kb = status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "n": len(paths),
                "encoded": encoded.encoded,
                "skipped": len(encoded.skipped),
                "seconds": seconds,
                "rss_before_mb": before_kb * 1024 / 1e6,
                "peak_growth_mb": max(0, peak_kb - before_kb) * 1024 / 1e6,
                "peak_reset": exact,
                "feature_mb": encoded.features.numel() * encoded.features.element_size() / 1e6,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
