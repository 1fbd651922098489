"""What a server allows and how it batches: one frozen object, printed by ``GET /info``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from polycap.errors import BadInput

DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_MAX_PIXELS = 40_000_000  # 8000 x 5000; PIL's own bomb warning starts at ~89 M
DEFAULT_MAX_BATCH = 32
DEFAULT_BATCH_WAIT_MS = 5.0
DEFAULT_MAX_IMAGES = 16
DEFAULT_DECODE_MEMORY_MB = 1024.0
DEFAULT_REMOTE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ServeSettings:
    """``max_batch``: most requests decoded together (1 = no batching); ``batch_wait_ms``: how
    long the first request of a batch waits for others; ``max_upload_bytes``: largest image
    file accepted, and most image bytes one request carries; ``max_pixels``: largest image
    (width x height) decoded; ``max_images``: most images one request carries;
    ``decode_memory_bytes``: most bytes of images being decoded at once, all requests
    together (:mod:`polycap.serve.memory`); ``allow_remote_images``: whether
    ``/v1/chat/completions`` fetches ``http(s)`` image URLs (within ``remote_timeout_s`` and
    the upload limit); ``device``: where the models run."""

    max_batch: int = DEFAULT_MAX_BATCH
    batch_wait_ms: float = DEFAULT_BATCH_WAIT_MS
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_images: int = DEFAULT_MAX_IMAGES
    decode_memory_bytes: int = int(DEFAULT_DECODE_MEMORY_MB * 1024 * 1024)
    allow_remote_images: bool = False
    remote_timeout_s: float = DEFAULT_REMOTE_TIMEOUT_S
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise BadInput(f"--max-batch must be at least 1, not {self.max_batch}")
        if self.batch_wait_ms < 0:
            raise BadInput(f"--batch-wait-ms must be 0 or more, not {self.batch_wait_ms}")
        if self.max_upload_bytes < 1:
            raise BadInput(f"--max-upload-mb must be positive, not {self.max_upload_bytes}")
        if self.max_pixels < 1:
            raise BadInput(f"--max-pixels must be positive, not {self.max_pixels}")
        if self.max_images < 1:
            raise BadInput(f"--max-images must be at least 1, not {self.max_images}")
        if self.decode_memory_bytes < 1:
            raise BadInput(f"--decode-memory-mb must be positive, not {self.decode_memory_bytes}")
        if not self.remote_timeout_s > 0:
            raise BadInput(f"--remote-timeout-s must be positive, not {self.remote_timeout_s}")

    @property
    def max_body_bytes(self) -> int:
        """The largest request body: base64 images (4/3 of their size) plus the options."""
        return self.max_upload_bytes * 4 // 3 + 64 * 1024

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
