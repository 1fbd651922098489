"""Caption images with this ONNX export: numpy, onnxruntime, tokenizers and Pillow only.

    python run_onnx.py photo.jpg other.png [--max-length 30] [--batch-size 16]

prints one caption per image, one per line, in order. It follows ``polycap-onnx.json``: the
image preprocessing (open_clip's eval transform, in ``steps_polycap.py``), the three graphs
(image encoder -> mapper -> decoder with its KV cache), greedy decoding until the stop token or
``max_length`` tokens, and the language's caption text rule. Shipped by ``polycap export --to
onnx``; it does not import polycap.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from steps_polycap import clean_caption, preprocess_batch, read_image  # noqa: E402


class OnnxCaptioner:
    """The export's graphs in ONNX Runtime sessions, with its tokenizer and manifest."""

    def __init__(self, folder: Path) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = folder
        self.manifest = json.loads((folder / "polycap-onnx.json").read_text(encoding="utf-8"))
        graphs = self.manifest["graphs"]
        if not graphs.get("image_encoder"):
            raise SystemExit("this export has no image encoder (exported with --no-encoder)")
        providers = ["CPUExecutionProvider"]
        self.sessions = {
            role: ort.InferenceSession(str(folder / graphs[role]), providers=providers)
            for role in ("image_encoder", "mapper", "decoder")
        }
        tokenizer_file = folder / self.manifest["tokenizer"] / "tokenizer.json"
        self.tokenizer = Tokenizer.from_file(str(tokenizer_file))

    def prefix(self, paths: list[str]) -> np.ndarray:
        """Image files -> ``[B, P, D]`` prefixes (encoder graph, then mapper graph)."""
        settings = self.manifest["preprocessing"]
        pixels = preprocess_batch([read_image(path) for path in paths], settings)
        (features,) = self.sessions["image_encoder"].run(["features"], {"pixels": pixels})
        (prefix,) = self.sessions["mapper"].run(["prefix"], {"features": features})
        return prefix

    def greedy(self, prefix: np.ndarray, max_length: int) -> list[list[int]]:
        """Greedy ids per row, each ending with the stop token when it was reached."""
        past = self.manifest["past"]
        rows, width = prefix.shape[0], prefix.shape[2]
        stop = int(self.manifest["stop_token_id"])
        cache = np.zeros((past["layers"], 2, rows, past["heads"], 0, past["head_dim"]), np.float32)
        tokens = np.zeros((rows, 0), dtype=np.int64)
        ids: list[list[int]] = [[] for _ in range(rows)]
        done = np.zeros(rows, dtype=bool)
        for _ in range(max_length):
            feed = {"prefix": prefix, "input_ids": tokens, "past": cache}
            logits, cache = self.sessions["decoder"].run(["logits", "present"], feed)
            chosen = logits.argmax(axis=-1)
            for row in np.flatnonzero(~done):
                ids[row].append(int(chosen[row]))
            done |= chosen == stop
            if done.all():
                break
            prefix = np.zeros((rows, 0, width), dtype=np.float32)
            tokens = chosen.astype(np.int64)[:, None]
        return ids

    def captions(self, paths: list[str], max_length: int) -> list[str]:
        rule = self.manifest.get("caption_text") or {}
        rows = self.greedy(self.prefix(paths), max_length)
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in rows]
        return [clean_caption(text, rule) for text in texts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--max-length", type=int, default=None, help="most tokens per caption")
    parser.add_argument("--batch-size", type=int, default=16, help="images per model call")
    options = parser.parse_args(argv)
    captioner = OnnxCaptioner(HERE)
    length = options.max_length or int(captioner.manifest["generation"]["max_length"])
    for start in range(0, len(options.images), options.batch_size):
        batch = options.images[start : start + options.batch_size]
        for caption in captioner.captions(batch, length):
            print(caption, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
