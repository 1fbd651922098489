"""transformers image-text models (CLIP, SigLIP, Chinese-CLIP) as polycap image encoders."""

from __future__ import annotations

from polycap.hookspecs import Register, hookimpl

BACKEND = "hf"


@hookimpl
def register_encoders(register: Register) -> None:
    """``hf``: a transformers image-text model by hub id or folder (``--encoder hf:<id>``)."""
    from polycap_hf_encoders.encoder import load_hf_encoder

    register(BACKEND, load_hf_encoder)
