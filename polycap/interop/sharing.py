"""``polycap export``: a trained captioner as a self-contained Hugging Face folder or as ONNX.

The Hugging Face folder is a polycap checkpoint that needs nothing from the machine it was
made on: the LM is bundled (``decoder/``, a stock transformers folder with its tokenizer), the
tokenizer too (``tokenizer/``), and encoder weights that were a local file are copied into
``encoder/`` and named relative to the folder (open_clip weight tags such as ``openai`` stay
tags: open_clip downloads or finds them itself). It is also a transformers model:
:mod:`polycap.interop.hf_standalone` adds ``config.json``, the remote code, the image
processor and the image encoder's own files. A model card (``README.md`` with YAML metadata for
the Hub) is written from the checkpoint's records. No record keeps an absolute path of the
building machine (:mod:`polycap.interop.portable`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

CARD = "README.md"


def export_hf(
    model: Any,
    directory: Path,
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    name: str | None = None,
    license: str = "other",
    encoder: Any = None,
) -> Path:
    """Write ``model`` (a loaded Captioner) as a self-contained folder with a model card;
    ``encoder``: its loaded image encoder (default: loaded from the model's record)."""
    from polycap.interop.hf_standalone import DECODER_DIR, write_standalone
    from polycap.interop.onnx_export import refuse_foreign_folder
    from polycap.interop.portable import portable
    from polycap.model.captioner import (
        CONFIG_FILE,
        ENCODER_DIR,
        TOKENIZER_DIR,
        encoder_weights_file,
    )

    directory = Path(directory)
    refuse_foreign_folder(directory, CONFIG_FILE)
    encoder = encoder if encoder is not None else _recorded_encoder(model)
    training = portable(training)
    saved = copy.deepcopy(model.config)
    bundled = [f"{DECODER_DIR}/", f"{TOKENIZER_DIR}/"]
    weights = encoder_weights_file(model.config, getattr(model, "directory", None))
    if weights is not None:
        bundled.append(f"{ENCODER_DIR}/{weights.name}")
    record = portable(model.config)
    card = _card_text(record, training, evaluation, name or directory.name, license, bundled)
    model.config["save_lm"] = True  # the LM travels with it, whatever the training did
    model.config["lm_dir"] = DECODER_DIR

    def extra(target: Path) -> None:
        (target / CARD).write_text(card, encoding="utf-8")
        write_standalone(model, encoder, target)

    try:
        written = model.save(directory, training=training, extra=extra)
    finally:
        model.config = saved
    _make_record_portable(written / CONFIG_FILE)
    return written


def _make_record_portable(path: Path) -> None:
    """Rewrite the export's polycap.json without absolute paths (the encoder weights by their
    bundled copy; a transformers encoder by its folder in the export, ``bundled_model``)."""
    import json

    from polycap.interop.hf_standalone import IMAGE_ENCODER_DIR
    from polycap.interop.portable import portable_checkpoint_record
    from polycap.util.atomic import write_json

    record = portable_checkpoint_record(json.loads(path.read_text(encoding="utf-8")))
    if (path.parent / IMAGE_ENCODER_DIR / "config.json").is_file():  # a transformers encoder:
        record["encoder"]["bundled_model"] = IMAGE_ENCODER_DIR  # its folder, inside the export
    write_json(path, record, indent=2)


def _recorded_encoder(model: Any) -> Any:
    """The image encoder ``model`` records (its bundled copies when it has them)."""
    from polycap.model.captioner import recorded_encoder_spec
    from polycap.plugins import get_registries

    spec = recorded_encoder_spec(model.config, getattr(model, "directory", None))
    return spec.load(get_registries(), "cpu")


def _card_text(config: dict[str, Any], *args: Any) -> str:
    from polycap.interop.model_card import render
    from polycap.version import __version__

    return render({**config, "polycap_version": __version__}, *args)
