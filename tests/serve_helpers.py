"""Shared by the serve tests: tiny checkpoints, images, a bank, and an in-process client."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from tiny_setup import tiny_captioner

T = TypeVar("T")


def build_checkpoint(language: str, captions: list[str], root: Path, seed: int = 0) -> Path:
    """An untrained but complete checkpoint of ``language`` on tiny local models."""
    from polycap.plugins import get_registries

    pack = get_registries().languages.get(language)
    model = tiny_captioner(pack, captions, root, seed=seed, train_lm=True)
    return model.save(root / "checkpoint")


def build_bank(captions_file: Path, checkpoint: Path, out: Path, language: str) -> Path:
    """A caption bank built with the checkpoint's own (tiny) encoder."""
    from polycap.data.captions import load_captions
    from polycap.inference.pipeline import encoder_for, load_captioner
    from polycap.plugins import get_registries
    from polycap.retrieval.bank import build_bank as build

    encoder = encoder_for(load_captioner(checkpoint))
    pack = get_registries().languages.get(language)
    build(load_captions(captions_file), encoder, out, pack, dtype="float32", progress=False)
    return out


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def run(awaitable: Awaitable[T]) -> T:
    """Run a coroutine to completion on a fresh event loop."""

    async def main() -> T:
        return await awaitable

    return asyncio.run(main())


def client(app: Any) -> Any:
    """An httpx client calling ``app`` in this process (concurrent requests interleave)."""
    import httpx

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve")


def cli_captions(
    run_cli: Any, capsys: Any, checkpoint: Path, images: list[Path], *options: str
) -> dict[str, list[str]]:
    """``polycap caption --json`` for ``images``: image file name -> captions."""
    result = run_cli(
        ["caption", *map(str, images), "--model", str(checkpoint), "--json", "--device", "cpu"]
        + list(options),
        capsys,
    )
    assert result.code == 0, result.err
    return {Path(row["image"]).name: row["captions"] for row in json.loads(result.out)["captions"]}


@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """``app`` on uvicorn in a background thread, on a free port of 127.0.0.1; yields its URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()
