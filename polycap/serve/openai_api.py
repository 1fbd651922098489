"""OpenAI-compatible routes: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Tools that speak OpenAI's API (alt-text helpers, the official clients) can use a polycap model
as they would a vision chat model: the image goes in the last user message as an
``image_url`` part, and the caption comes back as the assistant's message (``n`` captions as
``n`` choices). Text parts are accepted and ignored: a caption depends on the image alone. The
caption is the one ``POST /caption`` and ``polycap caption`` give for the same image and
options: the image is decoded and captioned by the same :class:`~polycap.serve.service.Service`
calls. Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}``
(:func:`polycap.serve.app.error_response`).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Request
from pydantic import ValidationError

from polycap.serve.openai_schemas import (
    ChatCompletion,
    ChatCompletionRequest,
    ContentPart,
    ModelCard,
    ModelList,
    OpenAIError,
    generation_fields,
)
from polycap.serve.remote import image_from_url
from polycap.serve.schemas import CaptionOptions, describe_validation_error
from polycap.serve.uploads import ImageFile, RequestError, check_images, clip, read_body

if TYPE_CHECKING:
    from fastapi import FastAPI

    from polycap.serve.models import ServedModel
    from polycap.serve.service import Service

OPTION_NAMES = {"max_length": "max_tokens", "num_captions": "n"}  # ours -> OpenAI's
ERRORS = {status: {"model": OpenAIError} for status in (400, 404, 413)}


def add_openai_routes(app: FastAPI, service: Service) -> None:
    """The ``/v1`` routes on ``app``, answering from ``service``'s models."""
    started = int(time.time())

    @app.get("/v1/models", response_model=ModelList, tags=["OpenAI-compatible"])
    async def list_models() -> dict[str, Any]:
        """One model per loaded language: ``polycap-<language>``."""
        return {"data": [_card(m, started) for m in service.models.values()]}

    @app.get(
        "/v1/models/{model_id}",
        response_model=ModelCard,
        responses=ERRORS,
        tags=["OpenAI-compatible"],
    )
    async def get_model(model_id: str) -> dict[str, Any]:
        return _card(_model(service, model_id), started)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        responses=ERRORS,
        tags=["OpenAI-compatible"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}
                    }
                },
            }
        },
    )
    async def chat_completions(request: Request) -> dict[str, Any]:
        """Caption the image of the last user message (a ``data:`` URL)."""
        body = await read_body(request, service.settings.max_body_bytes)
        return await complete(service, parse_request(body))


def parse_request(body: bytes) -> ChatCompletionRequest:
    """The request, validated; 400 naming the field at fault."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(400, f"the body is not valid JSON ({error})") from None
    try:
        return ChatCompletionRequest.model_validate(payload)
    except ValidationError as error:
        where = error.errors()[0].get("loc", ()) if error.errors() else ()
        param = ".".join(str(part) for part in where) or None
        raise RequestError(400, describe_validation_error(error), param=param) from None


async def complete(service: Service, request: ChatCompletionRequest) -> dict[str, Any]:
    """The chat completion of ``request``: one choice per caption."""
    model = _model(service, request.model)
    for name in ("stream", "logprobs"):
        if getattr(request, name):
            raise RequestError(400, f"{name}: not supported by this server", param=name)
    try:
        generation = service.generation(model, _options(request))
    except RequestError as error:
        raise _in_openai_terms(error) from None
    url, where = _image_url(request)
    image = await image_from_url(url, where, service.settings)
    check_images([image], service.settings)
    pixels = await _prepare(service, image, model, where)
    captions, _ = await service.caption_pixels(model, pixels, generation)
    lengths = [min(model.count_tokens(c), generation.max_length) for c in captions]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "created": int(time.time()),
        "model": model.model_id,
        "choices": [
            {
                "index": i,
                "message": {"content": caption},
                "finish_reason": "length" if length >= generation.max_length else "stop",
            }
            for i, (caption, length) in enumerate(zip(captions, lengths, strict=True))
        ],
        "usage": {
            "prompt_tokens": model.captioner.prefix_length,
            "completion_tokens": sum(lengths),
            "total_tokens": model.captioner.prefix_length + sum(lengths),
        },
    }


def _model(service: Service, model_id: str) -> ServedModel:
    for model in service.models.values():
        if model.model_id == model_id:
            return model
    loaded = ", ".join(m.model_id for m in service.models.values())
    raise RequestError(
        404,
        f"the model {clip(model_id)!r} does not exist (loaded: {loaded})",
        param="model",
        code="model_not_found",
    )


def _card(model: ServedModel, started: int) -> dict[str, Any]:
    path = Path(model.source)
    created = int(path.stat().st_mtime) if path.exists() else started
    return {"id": model.model_id, "created": created}


def _options(request: ChatCompletionRequest) -> CaptionOptions:
    try:
        return CaptionOptions.model_validate(generation_fields(request))
    except ValidationError as error:
        first = error.errors()[0] if error.errors() else {}
        name = str((first.get("loc") or ("",))[0])
        raise _in_openai_terms(RequestError(400, describe_validation_error(error), name)) from None


def _in_openai_terms(error: RequestError) -> RequestError:
    """``error`` with our option names (``max_length``, ``num_captions``) as OpenAI's."""
    message, param = error.message, error.param
    for ours, theirs in OPTION_NAMES.items():
        message = message.replace(ours, theirs)
        param = theirs if param == ours else param
    if param is None and message.split(":", 1)[0] in OPTION_NAMES.values():
        param = message.split(":", 1)[0]
    return RequestError(400, message, param=param or None, code=error.code)


def _image_url(request: ChatCompletionRequest) -> tuple[str, str]:
    """The one ``image_url`` of the last user message, and where it is (for errors)."""
    users = [i for i, message in enumerate(request.messages) if message.role == "user"]
    if not users:
        raise RequestError(400, "messages: no user message (it carries the image)", "messages")
    index = users[-1]
    content = request.messages[index].content
    parts = content if isinstance(content, list) else []
    found = [(j, part) for j, part in enumerate(parts) if part.type == "image_url"]
    where = f"messages[{index}].content"
    if len(found) != 1:
        raise RequestError(
            400,
            f"{where}: give exactly one image_url part to caption, not {len(found)}",
            param=where,
        )
    j, part = found[0]
    return _url_of(part, f"{where}[{j}].image_url"), f"{where}[{j}].image_url"


def _url_of(part: ContentPart, where: str) -> str:
    value = part.image_url
    url = value if isinstance(value, str) else getattr(value, "url", None)
    if not url:
        raise RequestError(400, f"{where}: no url", param=where)
    return url


async def _prepare(service: Service, image: ImageFile, model: ServedModel, where: str) -> Any:
    """The image decoded and preprocessed; a failure names the request field."""
    from polycap.errors import PolycapError
    from polycap.serve.service import error_status

    try:
        return await service.prepare(image, model.encoder)
    except RequestError as error:
        error.param = error.param or where
        raise
    except PolycapError as error:
        status = error_status(error)
        code = "image_too_large" if status == 413 else "invalid_image"
        raise RequestError(status, str(error), param=where, code=code) from None
