"""``polycap serve``: captions over HTTP (FastAPI on uvicorn), with request batching."""

from __future__ import annotations

import typer

from polycap.cli.options import Device, MaxPixels
from polycap.cli.output import console, err_console
from polycap.serve.settings import (
    DEFAULT_BATCH_WAIT_MS,
    DEFAULT_DECODE_MEMORY_MB,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_UPLOAD_MB,
    DEFAULT_REMOTE_TIMEOUT_S,
)

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serve_command(
    model: list[str] = typer.Option(
        ...,
        "--model",
        "-m",
        help="Checkpoint or run folder; LANG=PATH checks its language. Repeat for several "
        "languages (requests choose one with 'language'; the first is the default).",
    ),
    bank: list[str] = typer.Option(
        [],
        "--bank",
        "-b",
        help="Caption bank folder (polycap index) for POST /retrieve, attached to the model of "
        "its language. Repeatable.",
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (loopback by default)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port (0: any free one)."),
    max_batch: int = typer.Option(
        DEFAULT_MAX_BATCH, min=1, help="Most requests decoded together (1 = no batching)."
    ),
    batch_wait_ms: float = typer.Option(
        DEFAULT_BATCH_WAIT_MS, min=0.0, help="How long a request waits for others to join it."
    ),
    max_upload_mb: float = typer.Option(
        DEFAULT_MAX_UPLOAD_MB,
        min=0.001,
        help="Largest image file accepted, and most image bytes in one request (MiB).",
    ),
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    max_images: int = typer.Option(
        DEFAULT_MAX_IMAGES, min=1, help="Most images in one request (POST /caption 'images')."
    ),
    decode_memory_mb: float = typer.Option(
        DEFAULT_DECODE_MEMORY_MB,
        min=1.0,
        help="Most memory (MiB) for images being decoded at once, all requests together; an "
        "image that alone needs more is refused (413), others wait their turn.",
    ),
    allow_remote_images: bool = typer.Option(
        False,
        "--allow-remote-images",
        help="Let /v1/chat/completions fetch http(s) image URLs (off: data: URLs only). The "
        "server then fetches whatever address a client names.",
    ),
    remote_timeout_s: float = typer.Option(
        DEFAULT_REMOTE_TIMEOUT_S, min=0.1, help="Longest fetch of a remote image (seconds)."
    ),
    device: Device = "auto",
    log_level: str = typer.Option("info", help="uvicorn log level (warning: quieter)."),
) -> None:
    """Serve models over HTTP: [bold]polycap serve --model runs/ja[/] (page at /, API docs at
    /docs and /redoc, offline; an OpenAI-compatible API at /v1: model polycap-LANG)."""
    import uvicorn

    from polycap.serve.app import create_app
    from polycap.serve.models import load_models
    from polycap.serve.settings import ServeSettings
    from polycap.util.devices import resolve_device

    torch_device = str(resolve_device(device))
    settings = ServeSettings(
        max_batch=max_batch,
        batch_wait_ms=batch_wait_ms,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=max_pixels,
        max_images=max_images,
        decode_memory_bytes=int(decode_memory_mb * 1024 * 1024),
        allow_remote_images=allow_remote_images,
        remote_timeout_s=remote_timeout_s,
        device=torch_device,
    )
    models = load_models(model, bank, device=torch_device)
    app = create_app(models, settings)
    for served in models.values():
        with_bank = f" + bank {served.bank.path}" if served.bank is not None else ""
        console.print(
            f"serving {served.language} ({served.model_id}): {served.source}{with_bank}",
            highlight=False,
        )
    if host not in LOOPBACK:
        err_console.print(
            f"[yellow]Listening on {host}: anyone who can reach this machine can use the "
            "service (there is no authentication).[/]"
        )
    where = f"[{host}]" if ":" in host else host
    console.print(
        f"page at http://{where}:{port}/ · API docs at /docs · Ctrl+C stops", highlight=False
    )
    console.print(f"OpenAI-compatible API at http://{where}:{port}/v1", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
