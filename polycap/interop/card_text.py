"""The model card's prose, from the checkpoint's records: every value as a reader says it
(``yes``, ``12.3 M``, ``0.001``), never as Python prints it (``True``, ``None``, a dict)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any


def say(value: Any) -> str:
    """A value as prose: booleans as yes/no, None as "none", numbers short, lists and mappings
    spelled out, text without Markdown's table and code marks."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Mapping):
        return ", ".join(f"{str(k).replace('_', ' ')} {say(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(say(v) for v in value)
    return str(value).replace("`", "'").replace("|", "/").replace("\n", " ")


def count(n: Any) -> str:
    """A parameter count: ``124.4 M``, ``56.3 k``."""
    if not isinstance(n, int):
        return "an unrecorded number of"
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return str(n)


def language_name(config: Mapping[str, Any]) -> str:
    return say(config.get("language_name") or config["language"])


def decoder_name(config: Mapping[str, Any]) -> str:
    """The decoder by its Hub id, or its folder's name when it was a local folder."""
    source = str(config.get("lm") or "")
    if not source:
        return "bundled"
    return say(Path(source).name if Path(source).is_absolute() else source)


def title(config: Mapping[str, Any]) -> str:
    """``Japanese image captioner with the rinna/japanese-gpt2-medium decoder``."""
    return f"{language_name(config)} image captioner with the {decoder_name(config)} decoder"


def description(config: Mapping[str, Any], bundled: list[str]) -> str:
    """What the model is, in a paragraph, and which files the folder brings."""
    encoder, mapper = config["encoder"], config["mapper"]
    options = mapper.get("options") or {}
    shape = f" ({say(options)})" if options else ""
    features = "L2-normalised" + (" and standardised" if config.get("standardize_features") else "")
    if not config.get("normalize_features", True):
        features = "used as the encoder gives them"
    text = (
        f"An image captioner that writes {language_name(config)} captions "
        f"(language code `{say(config['language'])}`). An image encoder "
        f"({say(encoder.get('backend', 'open_clip'))} `{say(encoder['name'])}`, "
        f"{_weights(encoder, bundled)}) turns the picture into a "
        f"{say(encoder.get('embed_dim', 'fixed-size'))}-dimensional embedding ({features}); "
        f"{_mapper(mapper['kind'])} mapping network{shape} turns it into a prefix of "
        f"{say(config['prefix_length'])} token embeddings, which the decoder "
        f"`{decoder_name(config)}` continues into the caption."
    )
    if config.get("polycap_version"):
        text += f" Made with polycap {say(config['polycap_version'])}."
    if bundled:
        text += " In this folder: " + ", ".join(f"`{say(b)}`" for b in bundled) + "."
    return text


def _mapper(kind: Any) -> str:
    named = {"mlp": "an MLP", "linear": "a linear", "transformer": "a transformer"}
    return named.get(str(kind), f"a {say(kind)}")


def _weights(encoder: Mapping[str, Any], bundled: list[str]) -> str:
    pretrained = encoder.get("pretrained")
    if not pretrained:
        return "random weights"
    inside = [b for b in bundled if b.startswith("encoder/")]
    if inside:
        return f"weights bundled as `{say(inside[0])}`"
    shown = Path(str(pretrained)).name if Path(str(pretrained)).is_absolute() else pretrained
    return f"weights `{say(shown)}`"


def install(language: str) -> str:
    if language == "en":
        return "pip install polycap"
    return f"pip install polycap polycap-{language}  # the core and the language pack"


def training(record: Mapping[str, Any] | None) -> str:
    """The training record as a paragraph."""
    if not record:
        return "No training record: the checkpoint was built or imported, not trained here."
    sentences = [
        _data(record),
        _schedule(record),
        _batches(record),
        _optimiser(record),
        _split(record),
        _decoder_training(record),
        _last_epoch(record),
        _best(record),
    ]
    return " ".join(s for s in sentences if s)


def _data(record: Mapping[str, Any]) -> str:
    data = record.get("data")
    if not data:
        return "The training data was not recorded."
    kind = f" ({say(record['data_format'])} format)" if record.get("data_format") else ""
    return f"Trained on `{say(Path(str(data)).name)}`{kind}."


def _schedule(record: Mapping[str, Any]) -> str:
    epochs, done = record.get("epochs"), record.get("epochs_done")
    if epochs is None and done is None:
        return ""
    text = f"It ran {say(done if done is not None else epochs)}"
    text += f" of {say(epochs)} epochs" if done is not None and done != epochs else " epochs"
    if record.get("steps_done"):
        text += f" ({say(record['steps_done'])} optimizer steps)"
    if record.get("stopped_early"):
        text += f"; early stopping ended it after epoch {say(record['stopped_early'])}"
    return text + "."


def _batches(record: Mapping[str, Any]) -> str:
    if not record.get("batch_size"):
        return ""
    text = f"Batches of {say(record['batch_size'])} captions"
    if (record.get("grad_accum") or 1) > 1:
        text += f", gradients accumulated over {say(record['grad_accum'])} batches"
    if (record.get("processes") or 1) > 1:
        text += f", on {say(record['processes'])} processes"
        text += f" (global batch {say(record.get('global_batch_size'))})"
    return text + "."


def _optimiser(record: Mapping[str, Any]) -> str:
    parts = []
    if record.get("lr") is not None:
        parts.append(f"learning rate {say(record['lr'])}")
    if record.get("lr_schedule"):
        parts.append(f"{say(record['lr_schedule'])} schedule")
    if record.get("warmup_steps"):
        parts.append(f"{say(record['warmup_steps'])} warm-up steps")
    if record.get("weight_decay"):
        parts.append(f"weight decay {say(record['weight_decay'])}")
    if record.get("precision"):
        parts.append(f"{say(record['precision'])} precision")
    if record.get("max_tokens"):
        parts.append(f"captions cut at {say(record['max_tokens'])} tokens")
    if not parts:
        return ""
    return parts[0][0].upper() + ", ".join(parts)[1:] + "."


def _split(record: Mapping[str, Any]) -> str:
    parts = []
    if record.get("val_fraction"):
        share = 100 * float(record["val_fraction"])
        parts.append(f"{share:g} % of the images were held out for validation")
    if record.get("seed") is not None:
        parts.append(f"the random seed was {say(record['seed'])}")
    return (parts[0][0].upper() + "; ".join(parts)[1:] + ".") if parts else ""


def _decoder_training(record: Mapping[str, Any]) -> str:
    if "train_lm" not in record:
        return ""
    if record["train_lm"]:
        return "The decoder was fine-tuned together with the mapping network."
    return "The decoder stayed frozen: only the mapping network was trained."


def _last_epoch(record: Mapping[str, Any]) -> str:
    history = record.get("history") or []
    if not history:
        return ""
    last = history[-1]
    parts = [
        f"{label} {value:.3f}"
        for key, label in (("train_loss", "training loss"), ("val_loss", "validation loss"))
        if isinstance(value := last.get(key), (int, float)) and value == value
    ]
    parts += [
        f"validation {key[4:]} {value:.2f}"
        for key, value in last.items()
        if key.startswith("val_") and key != "val_loss" and isinstance(value, (int, float))
    ]
    if not parts:
        return ""
    return f"After the last epoch ({say(last.get('epoch', len(history)))}): {', '.join(parts)}."


def _best(record: Mapping[str, Any]) -> str:
    best = record.get("best")
    if not isinstance(best, Mapping) or "metric" not in best:
        return ""
    score = best.get("score")
    shown = f" ({score:.2f})" if isinstance(score, (int, float)) else ""
    return f"The best epoch by {say(best['metric'])} was epoch {say(best.get('epoch'))}{shown}."


def eval_dataset(evaluation: Mapping[str, Any]) -> str:
    return say(Path(str(evaluation.get("references_file") or "evaluation set")).name)


def evaluation(result: Mapping[str, Any] | None) -> str:
    """The scores: a sentence saying on what and how, then a table."""
    if not result:
        return "Not evaluated here (export with `--eval RESULT.json` to include scores)."
    lower = result.get("lower_is_better") or []
    reasons = result.get("not_applicable") or {}
    lines = [
        f"`polycap eval` on {say(result.get('images', 'an unrecorded number of'))} images "
        f"({say(result.get('references', 'unrecorded'))} references) of "
        f"`{eval_dataset(result)}`; text segmented with "
        f"`{say(result.get('segmenter', 'unknown'))}` (scores depend on it).",
        "",
        "| metric | score |",
        "|---|---:|",
    ]
    for column, value in result["scores"].items():
        shown = "n/a" if value is None else f"{value:.2f}"
        if value is None and column in reasons:
            shown += f" ({say(reasons[column])})"
        marker = " (lower is better)" if column in lower else ""
        lines.append(f"| {say(column)}{marker} | {shown} |")
    return "\n".join(lines)


def limitations(
    config: Mapping[str, Any],
    record: Mapping[str, Any] | None,
    result: Mapping[str, Any] | None,
) -> list[str]:
    """Language, domain and size, each one line."""
    name = language_name(config)
    language = f"Language: it writes {name} only; other languages need another model."
    if result:
        language += (
            f" Its scores were computed on `{say(result.get('segmenter', 'unknown'))}` "
            "segmentation and compare only with scores computed the same way."
        )
    data = (record or {}).get("data")
    source = f"the captions of `{say(Path(str(data)).name)}`" if data else "its training captions"
    domain = (
        f"Domain: it learned from {source} and describes pictures like those. Other kinds of "
        "images (other subjects, drawings, screenshots, text in pictures) can get fluent "
        "captions that are wrong, and it may name things that are not in the picture."
    )
    size = (
        f"Size: a decoder of {count(config.get('decoder_parameters'))} parameters behind a "
        f"mapping network of {count(config.get('mapper_parameters'))} and a prefix of "
        f"{say(config['prefix_length'])} tokens; small decoders write short, generic captions "
        "and may repeat themselves on unfamiliar images."
    )
    return [language, domain, size]
