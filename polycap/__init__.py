"""polycap: multilingual ClipCap-style image captioning with language packs as plugins.

``polycap.load(model).caption(images)`` captions images from Python (see
:mod:`polycap.inference.api`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polycap import compat
from polycap.version import __version__

if TYPE_CHECKING:
    from polycap.inference.api import Captioner

__all__ = ["__version__", "load"]

compat.install()


def load(model: Any, device: str = "auto", bank: Any = None) -> Captioner:
    """Load a checkpoint, run folder, exported folder, ONNX export or Hub id for captioning
    on ``device`` (``auto``: a GPU when there is one, as the CLI): ``polycap.load("runs/ja")
    .caption(["photo.jpg"], beams=3)``; ``bank``: another bank for a retrieval-augmented
    model."""
    from polycap.inference.api import load as load_model

    return load_model(model, device=device, bank=bank)
