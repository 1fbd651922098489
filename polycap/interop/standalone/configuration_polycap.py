"""The configuration of a polycap captioner exported for transformers (``config.json``).

Remote code of a ``polycap export --to hf`` folder; it must not import polycap. The fields
say where each part lives in the folder and how the parts fit together:

- ``image_encoder``: ``backend`` (``open_clip`` or ``transformers``), ``folder`` (its files),
  ``embed_dim``;
- ``mapper``: ``kind`` (``mlp``, ``linear`` or ``transformer``), ``options``, ``clip_dim``,
  ``lm_dim``, ``file`` (its safetensors weights);
- ``prefix_length``, ``normalize_features`` (L2), ``feature_stats`` (a safetensors file with
  the training features' ``mean`` and ``std``, or null);
- ``decoder_folder``: the folder of the causal LM (a stock transformers model);
- ``stop_token_id`` (ends a caption), ``pad_token_id``, ``max_length`` (the default).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class PolycapConfig(PretrainedConfig):
    model_type = "polycap"

    def __init__(
        self,
        image_encoder: dict[str, Any] | None = None,
        mapper: dict[str, Any] | None = None,
        prefix_length: int = 10,
        decoder_folder: str = "decoder",
        **kwargs: Any,
    ) -> None:
        # not "encoder" / "decoder": transformers reads attributes of those names as sub-configs
        self.image_encoder = image_encoder or {}
        self.mapper = mapper or {}
        self.prefix_length = int(prefix_length)
        self.decoder_folder = decoder_folder
        self.normalize_features = bool(kwargs.pop("normalize_features", True))
        self.feature_stats = kwargs.pop("feature_stats", None)
        self.stop_token_id = kwargs.pop("stop_token_id", None)
        self.max_length = int(kwargs.pop("max_length", 30))
        self.language = kwargs.pop("language", None)
        super().__init__(**kwargs)
