"""The model card (``README.md`` with YAML metadata) of a shared captioner, from its records.

Everything on the card comes from the checkpoint's ``polycap.json`` (encoder, decoder, mapper,
prefix length, language, training record) and, when given, a ``polycap eval --json`` result:
nothing is typed in by hand, so the card cannot drift from the weights it describes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polycap.errors import BadInput

TRAINING_KEYS = (
    "data",
    "data_format",
    "epochs",
    "epochs_done",
    "steps_done",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "grad_accum",
    "precision",
    "max_tokens",
    "val_fraction",
    "seed",
    "train_lm",
)


def read_eval(path: Path) -> dict[str, Any]:
    """A ``polycap eval --json`` output; BadInput naming the file when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"--eval {path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInput(f"--eval {path}: not valid JSON ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("scores"), dict):
        raise BadInput(f"--eval {path}: not a 'polycap eval --json' output (no 'scores')")
    return data


def _yaml_value(value: Any) -> str:
    """A YAML scalar: JSON strings and numbers are valid YAML."""
    return json.dumps(value, ensure_ascii=False)


def metadata(config: dict[str, Any], evaluation: dict[str, Any] | None, license: str) -> str:
    """The YAML front matter the Hub reads (language, license, tags, pipeline, results)."""
    encoder = config["encoder"]
    lines = [
        "---",
        f"language: [{_yaml_value(config['language'])}]",
        f"license: {_yaml_value(license)}",
        "library_name: polycap",
        "pipeline_tag: image-to-text",
        "tags:",
        *(
            f"- {_yaml_value(tag)}"
            for tag in ("image-captioning", "clipcap", "polycap", f"encoder:{encoder['name']}")
        ),
    ]
    lm = config.get("lm") or ""
    if lm and not Path(lm).is_absolute() and lm.count("/") <= 1 and not Path(lm).exists():
        lines.append(f"base_model: {_yaml_value(lm)}")  # a hub id, not a local path
    if evaluation:
        scored = {k: v for k, v in evaluation["scores"].items() if v is not None}
        lines += [
            "model-index:",
            f"- name: {_yaml_value('polycap-' + config['language'])}",
            "  results:",
            "  - task: {type: image-to-text, name: Image captioning}",
            f"    dataset: {{type: custom, name: {_yaml_value(_eval_dataset(evaluation))}}}",
            "    metrics:",
            *(f"    - {{type: {_yaml_value(k)}, value: {v}}}" for k, v in scored.items()),
        ]
    lines.append("---")
    return "\n".join(lines)


def _eval_dataset(evaluation: dict[str, Any]) -> str:
    return Path(str(evaluation.get("references_file") or "evaluation set")).name


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    out = ["| | |", "|---|---|"]
    out += [f"| {name} | {_cell(value)} |" for name, value in rows]
    return out


def _cell(value: Any) -> str:
    if isinstance(value, (dict, list)):
        value = json.dumps(value, ensure_ascii=False)
    return str(value).replace("|", "\\|").replace("\n", " ")


def render(
    config: dict[str, Any],
    training: dict[str, Any] | None,
    evaluation: dict[str, Any] | None,
    name: str,
    license: str = "other",
    bundled: list[str] | None = None,
) -> str:
    """The whole README.md for a checkpoint with ``config`` (polycap.json) named ``name``."""
    encoder, mapper = config["encoder"], config["mapper"]
    lines = [metadata(config, evaluation, license), "", f"# {name}", ""]
    lines += [
        f"An image captioner for **{config['language']}** trained with "
        "[polycap](https://pypi.org/project/polycap/) (ClipCap-style: CLIP image features → "
        "mapping network → prefix of a causal language model).",
        "",
        "## Model",
        "",
        *_table(
            [
                ("language", config["language"]),
                ("image encoder", f"{encoder.get('backend', 'open_clip')} `{encoder['name']}`"),
                ("encoder weights", _weights(encoder, bundled or [])),
                ("image embedding size", encoder.get("embed_dim")),
                ("decoder (LM)", _decoder(config, bundled or [])),
                ("decoder trained", "yes" if config.get("train_lm") else "no (frozen)"),
                ("mapper", f"{mapper['kind']} {_cell(mapper.get('options', {}))}"),
                ("prefix length", config["prefix_length"]),
                ("features L2-normalised", config.get("normalize_features", True)),
                ("features standardised", bool(config.get("standardize_features"))),
                ("polycap version", config.get("polycap_version", "")),
            ]
        ),
        "",
    ]
    if bundled:
        lines += ["Bundled in this folder: " + ", ".join(f"`{b}`" for b in bundled) + ".", ""]
    lines += ["## Training", ""]
    if training:
        rows = [(key, training[key]) for key in TRAINING_KEYS if key in training]
        history = training.get("history") or []
        if history:
            rows.append(("last epoch", history[-1]))
        lines += _table(rows)
    else:
        lines.append("No training record (the checkpoint was built or imported, not trained).")
    lines += ["", "## Evaluation", ""]
    lines += _evaluation(evaluation)
    lines += ["", *usage(name, config["language"])]
    return "\n".join(lines) + "\n"


def _weights(encoder: dict[str, Any], bundled: list[str]) -> str:
    pretrained = encoder.get("pretrained")
    if not pretrained:
        return "random (none)"
    inside = [b for b in bundled if b.startswith("encoder/")]
    if inside:
        return f"`{inside[0]}` (bundled; trained with `{Path(str(pretrained)).name}`)"
    return f"`{pretrained}`"


def _decoder(config: dict[str, Any], bundled: list[str]) -> str:
    source = config.get("lm") or "?"
    shown = Path(source).name if Path(source).is_absolute() else source
    folder = next((b for b in bundled if b in ("lm/", "decoder/")), None)
    if folder:
        return f"`{folder}` (bundled; from `{shown}`)"
    return f"`{shown}`"


def _evaluation(evaluation: dict[str, Any] | None) -> list[str]:
    if not evaluation:
        return ["Not evaluated here (export with `--eval RESULT.json` to include scores)."]
    lines = [
        f"`polycap eval` on {evaluation.get('images', '?')} images "
        f"({evaluation.get('references', '?')} references) of "
        f"`{_eval_dataset(evaluation)}`; text segmented with "
        f"`{evaluation.get('segmenter', '?')}` (scores depend on it).",
        "",
        "| metric | score |",
        "|---|---:|",
    ]
    for column, value in evaluation["scores"].items():
        lower = " (lower is better)" if column in evaluation.get("lower_is_better", []) else ""
        shown = "n/a" if value is None else f"{value:.2f}"
        if value is None and column in evaluation.get("not_applicable", {}):
            shown += f" ({evaluation['not_applicable'][column]})"
        lines.append(f"| {column}{lower} | {shown} |")
    return lines


def usage(name: str, language: str) -> list[str]:
    """The usage snippet: the CLI and the Python API."""
    return [
        "## Usage",
        "",
        "```bash",
        f"pip install polycap polycap-{language}  # the core and the {language} language pack"
        if language != "en"
        else "pip install polycap",
        f"polycap caption photos/ --model {name}",
        "```",
        "",
        "```python",
        "import polycap",
        "",
        f'captioner = polycap.load("{name}")',
        'print(captioner.caption(["photo.jpg"], beams=3))',
        "```",
    ]
