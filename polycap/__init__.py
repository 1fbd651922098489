"""polycap: multilingual ClipCap-style image captioning with language packs as plugins.

``polycap.load(model).caption(images)`` captions images from Python (see :mod:`polycap.api`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polycap.api import Captioner

__version__ = "0.1.0"


def load(model: Any, device: str = "cpu") -> Captioner:
    """Load a checkpoint, run folder, exported folder, ONNX export or Hub id for captioning:
    ``polycap.load("runs/ja").caption(["photo.jpg"], beams=3)``."""
    from polycap.api import load as load_model

    return load_model(model, device=device)
