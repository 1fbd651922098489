"""``polycap export``: a trained captioner as a self-contained Hugging Face folder or as ONNX.

The Hugging Face folder is a polycap checkpoint that needs nothing from the machine it was
made on: the LM is bundled (``lm/``), the tokenizer too (``tokenizer/``), and encoder weights
that were a local file are copied into ``encoder/`` and named relative to the folder (open_clip
weight tags such as ``openai`` stay tags: open_clip downloads or finds them itself); a
retrieval-augmented model's caption bank is copied into ``bank/`` and named relative too. A model
card (``README.md`` with YAML metadata for the Hub) is written from the checkpoint's records.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

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
) -> Path:
    """Write ``model`` (a loaded Captioner) as a self-contained folder with a model card;
    ``license``: an SPDX id or a :class:`~polycap.interop.model_card.CardLicense`.
    ``directory`` is replaced only when it is empty or an earlier HF export, or with ``force``
    another polycap model (:func:`polycap.interop.targets.check_target`)."""
    from polycap.interop.model_card import card_facts
    from polycap.interop.targets import check_target
    from polycap.model.captioner import (
        ENCODER_DIR,
        LM_DIR,
        TOKENIZER_DIR,
        encoder_weights_file,
    )
    from polycap.util.atomic import copy_tree

    directory = Path(directory)
    check_target(directory, "hf", force)
    saved = copy.deepcopy(model.config)
    bundled = [f"{LM_DIR}/", f"{TOKENIZER_DIR}/"]
    weights = encoder_weights_file(model.config, getattr(model, "directory", None))
    if weights is not None:
        bundled.append(f"{ENCODER_DIR}/{weights.name}")
    bank = _bundled_bank(model)
    if bank is not None:
        bundled.append(f"{BANK_DIR}/")
        model.config["retrieval"] = {**model.config["retrieval"], "bank": BANK_DIR}
    facts = {**model.config, **card_facts(model)}  # the language's name, parameter counts
    card = _card_text(facts, training, evaluation, name or directory.name, license, bundled)
    model.config["save_lm"] = True  # the LM travels with it, whatever the training did
    model.config["exported_as"] = "hf"  # what may replace it later without --force

    def extra(target: Path) -> None:
        (target / CARD).write_text(card, encoding="utf-8")
        if bank is not None:
            copy_tree(bank, target / BANK_DIR)  # a copy: the user's bank is never shared

    try:
        return model.save(directory, training=training, extra=extra)
    finally:
        model.config = saved


def _bundled_bank(model: Any) -> Path | None:
    """The folder of the bank a retrieval-augmented model was trained with (checked: the
    same bank, of the model's language and encoder), to bundle; None for a plain model."""
    from polycap.model.augmented import open_bank, retrieval_setup

    if retrieval_setup(model) is None:
        return None
    return Path(open_bank(model).path)


def _card_text(config: dict[str, Any], *args: Any) -> str:
    from polycap.interop.model_card import render
    from polycap.version import __version__

    return render({**config, "polycap_version": __version__}, *args)
