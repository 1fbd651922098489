"""The model card (``README.md`` with YAML metadata) of a shared captioner, from its records.

Everything on the card comes from the checkpoint's ``polycap.json`` (encoder, decoder, mapper,
prefix length, language, training record), facts read off the loaded model (the language's
name, parameter counts: :func:`card_facts`) and, when given, a ``polycap eval --json`` result:
nothing is typed in by hand, so the card cannot drift from the weights it describes. The
metadata (language, licence, tags, ``model-index`` with the scores) is huggingface_hub's
``ModelCardData``/``EvalResult``; the text is the template
``polycap/templates/model_card/README.md.j2``, written in prose: no Python value
(None, True, a dict) reaches the reader as such.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polycap.errors import BadInput
from polycap.interop import card_text

SPDX_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")
TEMPLATE = "README.md.j2"


@dataclass(frozen=True)
class CardLicense:
    """The licence on the card: an SPDX id the Hub knows (``mit``, ``apache-2.0``,
    ``cc-by-4.0``), or another licence by ``name`` and ``link`` (the Hub's ``license: other``
    with ``license_name``/``license_link``); none: the card says no licence was named."""

    spdx: str | None = None
    name: str | None = None
    link: str | None = None

    @classmethod
    def parse(cls, spdx: str | None, name: str | None = None, link: str | None = None):
        """From ``polycap export --license/--license-name/--license-link``; BadInput when they
        do not name one licence."""
        if name or link:
            if not (name and link):
                raise BadInput("--license-name and --license-link go together (name and URL)")
            if spdx and spdx.lower() != "other":
                raise BadInput(f"--license {spdx} and --license-name: give one licence")
            if not SPDX_ID.match(name.replace(" ", "-")):
                raise BadInput(f"--license-name {name!r}: letters, digits, '.', '+', '-'")
            return cls(None, name, link)
        if spdx is None:
            return cls()
        if spdx.lower() == "other":
            raise BadInput("--license other: name it with --license-name and --license-link")
        if not SPDX_ID.match(spdx):
            raise BadInput(f"--license {spdx!r}: not an SPDX licence id (e.g. mit, apache-2.0)")
        return cls(spdx.lower())

    def metadata(self) -> dict[str, str]:
        if self.name:
            return {"license": "other", "license_name": self.name, "license_link": self.link or ""}
        return {"license": self.spdx} if self.spdx else {}

    def prose(self) -> str:
        if self.name:
            return f"Released under {self.name}: read it at <{self.link}>."
        if self.spdx:
            return (
                f"Released under the licence with SPDX id `{self.spdx}` "
                f"(<https://spdx.org/licenses/>). The decoder and image encoder it builds on "
                "keep their own licences."
            )
        return (
            "No licence was named when this model was exported "
            "(`polycap export --license SPDX-ID`); ask its author before reusing it."
        )


def as_license(value: CardLicense | str | None) -> CardLicense:
    """A :class:`CardLicense` from one, an SPDX id, or None."""
    return value if isinstance(value, CardLicense) else CardLicense.parse(value)


def card_facts(model: Any) -> dict[str, Any]:
    """What the card says that the records do not: the language's name and the parameter
    counts of the decoder and the mapping network (merged into the config given to
    :func:`render`)."""
    return {
        "language_name": getattr(model.pack, "name", model.config["language"]),
        "decoder_parameters": sum(p.numel() for p in model.lm.parameters()),
        "mapper_parameters": sum(p.numel() for p in model.mapper.parameters()),
    }


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


def render(
    config: dict[str, Any],
    training: dict[str, Any] | None,
    evaluation: dict[str, Any] | None,
    name: str,
    license: CardLicense | str | None = None,
    bundled: list[str] | None = None,
) -> str:
    """The whole README.md for a checkpoint with ``config`` (polycap.json, plus
    :func:`card_facts`) shared as ``name`` (the Hub repository or folder name)."""
    card = model_card(config, training, evaluation, name, as_license(license), bundled or [])
    return str(card)


def model_card(
    config: dict[str, Any],
    training: dict[str, Any] | None,
    evaluation: dict[str, Any] | None,
    name: str,
    license: CardLicense,
    bundled: list[str],
) -> Any:
    """The huggingface_hub ``ModelCard``."""
    from huggingface_hub import ModelCard

    data = card_data(config, evaluation, name, license)
    body = (
        _environment()
        .get_template(TEMPLATE)
        .render(
            card_data=data.to_yaml(),
            title=card_text.title(config),
            description=card_text.description(config, bundled),
            repo=name,
            install=card_text.install(config["language"]),
            training=card_text.training(training),
            evaluation=card_text.evaluation(evaluation),
            limitations=card_text.limitations(config, training, evaluation),
            licence=license.prose(),
        )
    )
    return ModelCard(body)


def card_data(
    config: dict[str, Any], evaluation: dict[str, Any] | None, name: str, license: CardLicense
) -> Any:
    """The YAML metadata the Hub reads: language, licence, tags, pipeline, base model and the
    scores as ``model-index``."""
    from huggingface_hub import ModelCardData

    encoder = config["encoder"]
    lm = str(config.get("lm") or "")
    hub_id = lm and not Path(lm).is_absolute() and lm.count("/") <= 1 and not Path(lm).exists()
    return ModelCardData(
        language=[config["language"]],
        library_name="polycap",
        pipeline_tag="image-to-text",
        tags=["image-captioning", "clipcap", "polycap", f"encoder:{encoder['name']}"],
        base_model=lm if hub_id else None,
        model_name=card_text.title(config) if evaluation else None,
        eval_results=eval_results(evaluation, name) if evaluation else None,
        **license.metadata(),
    )


def eval_results(evaluation: Mapping[str, Any], name: str) -> list[Any]:
    """One ``EvalResult`` per score of a ``polycap eval --json`` result (n/a ones left out)."""
    from huggingface_hub import EvalResult

    dataset = card_text.eval_dataset(evaluation)
    return [
        EvalResult(
            task_type="image-to-text",
            task_name="Image captioning",
            dataset_type=Path(dataset).stem or "custom",
            dataset_name=f"{dataset} (segmented with {evaluation.get('segmenter', 'unknown')})",
            metric_type=column.lower(),
            metric_name=column,
            metric_value=round(float(value), 4),
        )
        for column, value in evaluation["scores"].items()
        if value is not None
    ]


def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("polycap", "templates/model_card"),
        autoescape=False,  # Markdown, not HTML: the values are escaped for Markdown
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
