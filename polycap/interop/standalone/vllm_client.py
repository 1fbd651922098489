"""Caption images with a vLLM server of this export's decoder (prompt embeddings).

Serve the decoder (a stock transformers model folder) with prompt embeddings enabled::

    vllm serve decoder/ --enable-prompt-embeds

then, from this folder::

    python vllm_client.py photo.jpg other.png [--server http://localhost:8000] [--max-tokens 30]

The prefix (the mapped image features: ``[prefix_length, hidden_size]`` per image) is computed
here with transformers (``AutoModel`` with this folder's remote code; the decoder itself is not
needed), sent as vLLM's ``prompt_embeds`` (a base64 string of ``torch.save(tensor)``) to
``/v1/completions`` with greedy decoding, and the text that comes back is cleaned as polycap
cleans captions. One caption per line. Needs torch, transformers, Pillow (open_clip for an
open_clip encoder); shipped by polycap's exports, it does not import polycap.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def encode_prefix(prefix: Any) -> str:
    """One image's prefix ``[P, D]`` as vLLM reads ``prompt_embeds``: base64 of torch.save."""
    import torch

    buffer = io.BytesIO()
    torch.save(prefix.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def request_body(model_name: str, prefix: Any, max_tokens: int, stop_token_id: int) -> dict:
    """The completions request for one prefix: greedy, ending at the stop token."""
    return {
        "model": model_name,
        "prompt_embeds": encode_prefix(prefix),
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stop_token_ids": [stop_token_id],
        "skip_special_tokens": True,
    }


def complete(server: str, body: dict) -> str:
    """POST ``body`` to the server's ``/v1/completions``; the text of its first choice."""
    request = urllib.request.Request(
        server.rstrip("/") + "/v1/completions",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())["choices"][0]["text"]


def prefixes(folder: Path, paths: list[str]) -> tuple[Any, Any, Any]:
    """The processor, the model config and the ``[B, P, D]`` prefixes of the images."""
    import torch
    from transformers import AutoModel, AutoProcessor

    sys.path.insert(0, str(folder))
    from steps_polycap import read_image

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    images = [read_image(path) for path in paths]
    with torch.inference_mode():
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        return processor, model.config, model.prefix(model.image_features(pixels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--server", default="http://localhost:8000", help="vLLM server URL")
    parser.add_argument("--model", default=None, help="served model name (default: decoder/)")
    parser.add_argument("--max-tokens", type=int, default=30, help="most tokens per caption")
    options = parser.parse_args(argv)
    processor, config, prefix = prefixes(HERE, options.images)
    name = options.model or str(HERE / config.decoder_folder)
    for row in prefix:
        body = request_body(name, row, options.max_tokens, int(config.stop_token_id))
        print(processor.clean(complete(options.server, body)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
