"""``polycap export``: a trained captioner as a self-contained Hugging Face folder or as ONNX.

The Hugging Face folder is a polycap checkpoint that needs nothing from the machine it was
made on: the LM is bundled (``decoder/``, a stock transformers folder with its tokenizer), the
tokenizer too (``tokenizer/``), and encoder weights that were a local file are copied into
``encoder/`` and named relative to the folder (open_clip weight tags such as ``openai`` stay
tags: open_clip downloads or finds them itself). It is also a transformers model:
:mod:`polycap.interop.hf_standalone` adds ``config.json``, the remote code, the image
processor and the image encoder's own files. A model card (``README.md`` with YAML metadata for
the Hub) is written from the checkpoint's records. No record keeps an absolute path of the
building machine (:mod:`polycap.interop.portable`). A retrieval-augmented model's caption bank
is copied into ``bank/`` and named relative.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.interop.hf_standalone import DECODER_DIR, IMAGE_ENCODER_DIR, write_standalone
from polycap.interop.model_card import card_facts, render
from polycap.interop.portable import portable, portable_checkpoint_record
from polycap.interop.targets import check_target
from polycap.model.augmented import open_bank, retrieval_setup
from polycap.util.atomic import copy_tree, write_json
from polycap.version import __version__

if TYPE_CHECKING:
    from polycap.interop.model_card import CardLicense

CARD = "README.md"
BANK_DIR = "bank"  # a retrieval-augmented model's bank, bundled and named relative


def export_hf(
    model: Any,
    directory: Path,
    training: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
    name: str | None = None,
    license: CardLicense | str | None = None,
    force: bool = False,
    encoder: Any = None,
) -> Path:
    """Write ``model`` (a loaded Captioner) as a self-contained folder with a model card;
    ``license``: an SPDX id or a :class:`~polycap.interop.model_card.CardLicense`;
    ``encoder``: its loaded image encoder (:func:`polycap.inference.pipeline.encoder_for`;
    needed for the transformers side of the folder).
    ``directory`` is replaced only when it is empty or an earlier HF export, or with ``force``
    another polycap model (:func:`polycap.interop.targets.check_target`)."""
    from polycap.model.captioner import (
        CONFIG_FILE,
        ENCODER_DIR,
        TOKENIZER_DIR,
        encoder_weights_file,
    )

    directory = Path(directory)
    if encoder is None:
        raise ValueError(
            "export_hf needs the model's image encoder (inference.pipeline.encoder_for)"
        )
    check_target(directory, "hf", force)
    training = portable(training)
    saved = copy.deepcopy(model.config)
    bundled = [f"{DECODER_DIR}/", f"{TOKENIZER_DIR}/"]
    weights = encoder_weights_file(model.config, getattr(model, "directory", None))
    if weights is not None:
        bundled.append(f"{ENCODER_DIR}/{weights.name}")
    bank = _bundled_bank(model)
    if bank is not None:
        bundled.append(f"{BANK_DIR}/")
        model.config["retrieval"] = {**model.config["retrieval"], "bank": BANK_DIR}
    record = portable(model.config)
    facts = {**record, **card_facts(model)}  # the language's name, parameter counts
    card = _card_text(facts, training, evaluation, name or directory.name, license, bundled)
    model.config["save_lm"] = True  # the LM travels with it, whatever the training did
    model.config["lm_dir"] = DECODER_DIR
    model.config["exported_as"] = "hf"  # what may replace it later without --force

    def extra(target: Path) -> None:
        (target / CARD).write_text(card, encoding="utf-8")
        write_standalone(model, encoder, target)
        if bank is not None:
            copy_tree(bank, target / BANK_DIR)  # a copy: the user's bank is never shared

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

    record = portable_checkpoint_record(json.loads(path.read_text(encoding="utf-8")))
    if (path.parent / IMAGE_ENCODER_DIR / "config.json").is_file():  # a transformers encoder:
        record["encoder"]["bundled_model"] = IMAGE_ENCODER_DIR  # its folder, inside the export
    write_json(path, record, indent=2)


def _bundled_bank(model: Any) -> Path | None:
    """The folder of the bank a retrieval-augmented model was trained with (checked: the
    same bank, of the model's language and encoder), to bundle; None for a plain model."""

    if retrieval_setup(model) is None:
        return None
    return Path(open_bank(model).path)


def _card_text(config: dict[str, Any], *args: Any) -> str:

    return render({**config, "polycap_version": __version__}, *args)
