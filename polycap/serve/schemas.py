"""Request options: one pydantic schema each for captioning and retrieval.

The same schema validates JSON bodies and multipart form fields (pydantic converts ``"3"`` to
3 and ``"true"`` to True); names and defaults are those of ``polycap caption`` and
``polycap retrieve``. Unknown names are refused (``extra="forbid"``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from polycap.serve.uploads import clip

MAX_SEED = 2**63 - 1


class CaptionOptions(BaseModel):
    """Generation options, as ``polycap caption`` takes them."""

    model_config = ConfigDict(extra="forbid")

    language: str | None = Field(None, description="Which loaded model (default: the first).")
    beams: int | None = Field(
        None, ge=1, le=32, description="Beam width (default: 1 = greedy, or num_captions)."
    )
    num_captions: int = Field(1, ge=1, le=32, description="Distinct captions per image.")
    sample: bool = Field(False, description="Sample instead of greedy/beam.")
    top_k: int = Field(0, ge=0, description="Sampling: keep the k most likely tokens (0 = all).")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Sampling: nucleus probability mass.")
    temperature: float = Field(1.0, ge=0.01, le=100.0, description="Sampling temperature.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Seed for sampling.")
    max_length: int = Field(30, ge=1, le=1024, description="Most tokens per caption.")
    repetition_penalty: float = Field(
        1.0, gt=0.0, le=100.0, description="Penalise tokens the caption already has (1.0 = off)."
    )
    no_repeat_ngram_size: int = Field(
        0, ge=0, le=1024, description="No n-gram of this size twice in a caption (0 = off)."
    )

    def generation(self) -> Any:
        """The GenerationConfig ``polycap caption`` builds from the same options."""
        from polycap.inference.pipeline import generation_config

        return generation_config(**self.model_dump(exclude={"language"}))


class CaptionJSON(CaptionOptions):
    """``POST /caption`` with a JSON body: the image as base64 (a data URL is fine), or
    several images (answered per image)."""

    image: str | None = Field(None, description="The image file's bytes, base64-encoded.")
    images: list[str] | None = Field(
        None, description="Several images, base64 each, instead of 'image': an answer each."
    )


class RetrieveOptions(BaseModel):
    """Retrieval options, as ``polycap retrieve`` takes them."""

    model_config = ConfigDict(extra="forbid")

    language: str | None = Field(None, description="Whose bank (default: the first model's).")
    k: int = Field(5, ge=1, le=100, description="Captions per image.")
    mode: Literal["text", "image"] = Field(
        "text", description="text: nearest captions; image: captions of the nearest images."
    )
    consensus: bool = Field(False, description="Image mode: re-rank by agreement.")
    neighbours: int | None = Field(None, ge=1, le=1000, description="Image mode: images used.")


class RetrieveJSON(RetrieveOptions):
    """``POST /retrieve`` with a JSON body."""

    image: str | None = Field(None, description="The image file's bytes, base64-encoded.")
    images: list[str] | None = Field(None, description="Several images instead of 'image'.")


def describe_validation_error(error: ValidationError | Any, schema: Any = None) -> str:
    """One line for the first problem pydantic found: ``unknown option 'beems'``,
    ``beams: Input should be greater than or equal to 1``."""
    problems = error.errors() if hasattr(error, "errors") else []
    if not problems:
        return "invalid request"
    first = problems[0]
    where = [str(part) for part in first.get("loc", ()) if part not in ("body", "query")]
    name = ".".join(where) or "request"
    name = clip(name)
    if first.get("type") == "extra_forbidden":
        known = f" (known: {', '.join(schema.model_fields)})" if schema is not None else ""
        return f"unknown option {name!r}{known}"
    if first.get("type") == "missing":
        return f"missing {name!r}"
    message = clip(str(first.get("msg", "invalid value")), 200)
    return f"{name}: {message}"
