"""Caption metrics on the validation split during training (``polycap train --eval-metrics``).

The validation images are captioned greedily with the model as it is at the end of an epoch
and scored against their own captions with the registered metrics (``cider-d``, ``bleu``,
``wer``, ...), tokenised by the language pack as ``polycap eval`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from polycap.eval.runner import EvalContext, evaluate


def validation_scores(
    model: Any,
    feature_rows: Sequence[int],
    token_ids: Sequence[Sequence[int]],
    features: Any,
    metrics: Sequence[str],
    max_length: int = 40,
    batch_size: int = 64,
) -> dict[str, float | None]:
    """``{"val_<column>": score}`` for each metric column (None where it does not apply).

    ``feature_rows`` / ``token_ids``: one entry per validation caption (its image's row in
    ``features``, its token ids); captions of one image are that image's references.
    """
    import torch

    from polycap.inference.pipeline import CaptionPipeline, generation_config

    references: dict[int, list[str]] = {}
    end = model.end_token_id
    for row, ids in zip(feature_rows, token_ids):
        ids = list(ids[:-1]) if ids and ids[-1] == end else list(ids)
        references.setdefault(int(row), []).append(model.decode_caption(ids))
    rows = sorted(references)
    if not rows:
        return {}
    image_features = features[torch.tensor(rows, dtype=torch.long)]
    pipeline = CaptionPipeline(model, device=str(model.device))
    captions = pipeline.caption_features(
        image_features, generation_config(max_length=max_length), batch_size
    ).captions
    context = EvalContext(
        pack=model.pack,
        keys=[str(row) for row in rows],
        predictions=[texts[0] if texts else "" for texts in captions],
        references=[references[row] for row in rows],
    )
    result = evaluate(context, metrics)
    return {f"val_{column}": score for column, score in result.scores.items()}
