"""One process of tests/test_features.py's two-process run (started by torchrun).

Args: model name, weights file, list of images (one per line), store folder, cache folder.
Prints one JSON line: rank, world size, rows seen, images this process encoded, checksum,
its shares of a few counts and a gathered value.
With the single argument ``die``: join the process group, then be killed (SIGKILL).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    import torch

    from polycap.data.encoding import load_encoder
    from polycap.data.features import encode_to_store
    from polycap.offline import tiny
    from polycap.util.distributed import processes

    torch.set_num_threads(1)
    if sys.argv[1:] == ["die"]:
        import signal

        processes()
        os.kill(os.getpid(), signal.SIGKILL)
    name, weights, listing, out, cache = sys.argv[1:6]
    tiny.register_tiny_clip_config()
    encoder = load_encoder(name, pretrained=weights)
    counted = []
    original = encoder.encode_images

    def counting(pixels: torch.Tensor) -> torch.Tensor:
        counted.append(len(pixels))
        return original(pixels)

    encoder.encode_images = counting  # the real model; only counts what it is given
    paths = Path(listing).read_text().splitlines()
    result = encode_to_store(encoder, paths, Path(out), chunk=3, cache_dir=cache, progress=False)
    procs = processes()
    store = result.store
    # one write of the whole line: both ranks share the pipe, and print() may write the
    # text and its newline separately, letting the other rank's line land in between
    report = json.dumps(
        {
            "rank": procs.rank,
            "world": procs.world_size,
            "rows": len(store),
            "encoded_here": sum(counted),
            "checksum": float(store[:].double().sum()),
            "shares": {n: list(procs.share(n)) for n in (0, 1, 5, 8, 13)},
            "gathered": procs.all_gather((procs.rank, "ab"[procs.rank]), "test gather"),
        }
    )
    os.write(1, (report + "\n").encode())


if __name__ == "__main__":
    main()
