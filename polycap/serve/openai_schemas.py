"""The OpenAI-compatible API's requests and answers, as pydantic models (the shapes of OpenAI's
Chat Completions and Models APIs, the fields a captioner can honour).

Requests accept the fields OpenAI's clients send that do not concern a captioner (``user``,
``frequency_penalty``, ...) and ignore them; fields that would change the answer's shape and
cannot be honoured (``stream``, ``logprobs``) are refused by the route.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from polycap.serve.schemas import MAX_SEED


class ImageURL(BaseModel):
    model_config = ConfigDict(extra="allow")

    url: str = Field(
        ..., description="A data: URL (base64), or http(s) with --allow-remote-images."
    )
    detail: str | None = Field(None, description="Accepted and ignored.")


class ContentPart(BaseModel):
    """A part of a message: ``text`` (ignored: the caption depends on the image only) or
    ``image_url`` (the image to caption)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(..., description="'image_url' or 'text'.")
    text: str | None = None
    image_url: ImageURL | str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(..., description="'user' messages carry the image; others are ignored.")
    content: str | list[ContentPart] | None = None


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: caption the one image of the last user message."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(..., description="An id from GET /v1/models, e.g. polycap-ja.")
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=1024, description="-> max_length.")
    max_completion_tokens: int | None = Field(
        None, ge=1, le=1024, description="-> max_length (wins over max_tokens)."
    )
    temperature: float | None = Field(
        None, ge=0.0, le=2.0, description="Unset or 0: greedy/beam; above 0: sampling."
    )
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Below 1: nucleus sampling.")
    n: int | None = Field(None, ge=1, le=32, description="-> num_captions: one choice each.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Seed for sampling.")
    stream: bool | None = Field(None, description="Not supported: false or unset.")
    logprobs: bool | None = Field(None, description="Not supported: false or unset.")
    beams: int | None = Field(None, ge=1, le=32, description="polycap: beam width.")
    top_k: int | None = Field(None, ge=0, description="polycap: keep the k likeliest tokens.")


class ModelCard(BaseModel):
    id: str = Field(..., description="polycap-<language>.")
    object: Literal["model"] = "model"
    created: int = Field(..., description="When the checkpoint was written (Unix time).")
    owned_by: str = "polycap"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str = Field(..., description="The caption.")


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int = Field(..., description="The image prefix's length.")
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class OpenAIErrorBody(BaseModel):
    message: str
    type: str = Field(..., description="invalid_request_error, or server_error (500).")
    param: str | None = Field(None, description="The request field at fault, where known.")
    code: str | None = Field(None, description="e.g. model_not_found, image_too_large.")


class OpenAIError(BaseModel):
    """Every error of the /v1 routes, in OpenAI's shape."""

    error: OpenAIErrorBody


def generation_fields(request: ChatCompletionRequest) -> dict[str, Any]:
    """``POST /caption``'s options from an OpenAI request: ``max_completion_tokens`` or
    ``max_tokens`` -> ``max_length``, ``n`` -> ``num_captions``; a ``temperature`` above 0
    samples (0 or unset: greedy, or beams), as does ``top_p`` below 1 or ``top_k``."""
    fields: dict[str, Any] = {}
    length = request.max_completion_tokens or request.max_tokens
    if length is not None:
        fields["max_length"] = length
    if request.n is not None:
        fields["num_captions"] = request.n
    if request.seed is not None:
        fields["seed"] = request.seed
    if request.beams is not None:
        fields["beams"] = request.beams
    greedy = request.temperature == 0
    if request.temperature is not None and not greedy:
        fields.update(sample=True, temperature=request.temperature)
    if request.top_p is not None and not greedy:
        fields["top_p"] = request.top_p
    if request.top_k and not greedy:
        fields["top_k"] = request.top_k
    return fields
