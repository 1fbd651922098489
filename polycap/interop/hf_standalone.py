"""The part of a ``--to hf`` export that transformers loads without polycap.

Beside the polycap checkpoint, :func:`write_standalone` puts:

    config.json                 ``model_type: polycap`` + ``auto_map`` (the remote code below)
    configuration_polycap.py    modeling_polycap.py  image_processing_polycap.py
    processing_polycap.py       steps_polycap.py   (from polycap/interop/standalone/)
    preprocessor_config.json    the image processor: open_clip's eval transform settings, or
                                the transformers encoder's own image processor
    processor_config.json       the processor: image processor + tokenizer, caption text rule
    tokenizer files             the tokenizer (save_pretrained), for AutoProcessor
    image_encoder/              open_clip: open_clip_config.json + open_clip_model.safetensors
                                (``local-dir:``); transformers: the CLIP/SigLIP model folder
    decoder/                    the causal LM as a stock transformers folder, with its tokenizer
                                (``vllm serve decoder/ --enable-prompt-embeds``)
    vllm_client.py              sends a prefix to that server

so that ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` and ``AutoProcessor``
caption as ``polycap caption`` does. The mapper is the checkpoint's ``mapper.safetensors``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from polycap.errors import BadInput

SOURCE = Path(__file__).with_name("standalone")
REMOTE_CODE = (
    "configuration_polycap.py",
    "modeling_polycap.py",
    "image_processing_polycap.py",
    "processing_polycap.py",
    "steps_polycap.py",
    "vllm_client.py",
)
DECODER_DIR = "decoder"
IMAGE_ENCODER_DIR = "image_encoder"
AUTO_MAP = {
    "AutoConfig": "configuration_polycap.PolycapConfig",
    "AutoModel": "modeling_polycap.PolycapModel",
}
PROCESSOR = "processing_polycap.PolycapProcessor"
DEFAULT_CAPTION_TEXT = {"unicode": "NFC"}


def write_standalone(model: Any, encoder: Any, target: Path) -> None:
    """Write the transformers side of an export of ``model`` (a Captioner) and ``encoder`` (its
    loaded image encoder) into ``target``, the export being written."""
    for name in REMOTE_CODE:
        shutil.copyfile(SOURCE / name, target / name)
    decoder = target / DECODER_DIR
    if not (decoder / "config.json").is_file():  # the checkpoint's LM folder, when it is not
        model.lm.save_pretrained(str(decoder), safe_serialization=True)
    model.tokenizer.save_pretrained(str(decoder))
    model.tokenizer.save_pretrained(str(target))
    encoder_record = _write_encoder(encoder, target)
    _write_json(target / "config.json", _config(model, encoder_record))
    rule = caption_text_rule(model.pack)
    processor = {"processor_class": "PolycapProcessor", "auto_map": {"AutoProcessor": PROCESSOR}}
    _write_json(target / "processor_config.json", {**processor, "caption_text": rule})


def caption_text_rule(pack: Any) -> dict[str, Any]:
    """How decoded text becomes a caption of ``pack``'s language outside polycap (its
    ``caption_text`` when it has one: Unicode form, lower-casing, CJK spacing)."""
    return dict(getattr(pack, "caption_text", None) or DEFAULT_CAPTION_TEXT)


def _config(model: Any, encoder_record: dict[str, Any]) -> dict[str, Any]:
    from polycap.model.captioner import FEATURE_STATS_FILE, MAPPER_FILE

    config = model.config
    standardized = model.feature_mean is not None and model.feature_std is not None
    return {
        "model_type": "polycap",
        "architectures": ["PolycapModel"],
        "auto_map": {**AUTO_MAP, "AutoProcessor": PROCESSOR},
        "image_encoder": encoder_record,
        "mapper": {**config["mapper"], "file": MAPPER_FILE},
        "prefix_length": int(model.prefix_length),
        "normalize_features": bool(config.get("normalize_features", True)),
        "feature_stats": FEATURE_STATS_FILE if standardized else None,
        "decoder_folder": DECODER_DIR,
        "stop_token_id": int(model.end_token_id),
        "pad_token_id": int(model.pad_token_id),
        "language": config["language"],
    }


def _write_encoder(encoder: Any, target: Path) -> dict[str, Any]:
    """The image encoder's files under ``image_encoder/`` and the image processor's settings
    at the top; returns the config's ``image_encoder`` record."""
    folder = target / IMAGE_ENCODER_DIR
    folder.mkdir()
    record = {"folder": IMAGE_ENCODER_DIR, "embed_dim": int(encoder.embed_dim)}
    if encoder.backend == "open_clip":
        preprocess = write_open_clip(encoder, folder)
        image_processor = {
            "image_processor_type": "PolycapImageProcessor",
            "processor_class": "PolycapProcessor",
            "auto_map": {
                "AutoImageProcessor": "image_processing_polycap.PolycapImageProcessor",
                "AutoProcessor": PROCESSOR,
            },
            **preprocess,
        }
        _write_json(target / "preprocessor_config.json", image_processor)
        return {"backend": "open_clip", **record}
    if encoder.backend == "hf":
        encoder.clip.save_pretrained(str(folder), safe_serialization=True)
        encoder.processor.save_pretrained(str(folder))  # polycap's hf backend loads both
        encoder.processor.save_pretrained(str(target))  # AutoProcessor's image processor
        return {"backend": "transformers", **record}
    raise BadInput(
        f"encoder backend {encoder.backend!r} has no transformers form (open_clip and hf do)"
    )


def open_clip_settings(encoder: Any) -> dict[str, Any]:
    """An open_clip encoder's eval preprocessing (``preprocess_cfg``) as plain JSON values."""
    preprocess = dict(getattr(encoder.clip.visual, "preprocess_cfg", {}) or {})
    if not preprocess:
        raise BadInput(f"encoder {encoder.name!r}: open_clip records no preprocessing for it")
    return {key: list(v) if isinstance(v, tuple) else v for key, v in preprocess.items()}


def write_open_clip(encoder: Any, folder: Path) -> dict[str, Any]:
    """open_clip's own folder layout (``open_clip_config.json`` + weights) that
    ``open_clip.create_model("local-dir:FOLDER")`` builds the encoder from; returns its
    preprocessing settings."""
    from safetensors.torch import save_file

    preprocess = open_clip_settings(encoder)
    config = {"model_cfg": _open_clip_model_config(encoder.name), "preprocess_cfg": preprocess}
    _write_json(folder / "open_clip_config.json", config)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in encoder.clip.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"), metadata={"format": "pt"})
    return preprocess


def _open_clip_model_config(name: str) -> dict[str, Any]:
    import open_clip

    if name.startswith("local-dir:"):
        path = Path(name[len("local-dir:") :]).expanduser() / "open_clip_config.json"
        return json.loads(path.read_text(encoding="utf-8"))["model_cfg"]
    config = open_clip.get_model_config(name.replace("/", "-"))
    if config is None:
        raise BadInput(f"open_clip model {name!r}: its configuration is not known here")
    return config


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
