"""The FastAPI application: routes, one-line JSON errors, the page at ``/``.

Why FastAPI on uvicorn: Starlette (under FastAPI) is the ASGI toolkit the Python ecosystem
relies on, uvicorn its standard server, and FastAPI adds request validation with pydantic and
OpenAPI docs at ``/docs`` for free. Requests are awaited on one event loop; the models compute
in :class:`~polycap.serve.batcher.RequestBatcher`'s worker thread, so concurrent requests can
be gathered into one batch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from polycap.errors import BadInput, PolycapError
from polycap.serve.batcher import RequestBatcher
from polycap.serve.models import ServedModel
from polycap.serve.schemas import (
    CaptionJSON,
    CaptionOptions,
    RetrieveJSON,
    RetrieveOptions,
    describe_validation_error,
)
from polycap.serve.settings import ServeSettings
from polycap.serve.uploads import RequestError, Upload, decode_upload, read_upload


class Service:
    """The loaded models, the limits and the batcher that runs every model call."""

    def __init__(self, models: dict[str, ServedModel], settings: ServeSettings) -> None:
        if not models:
            raise BadInput("no model to serve")
        self.models = models
        self.settings = settings
        self.batcher = RequestBatcher(
            self._run, settings.max_batch, settings.batch_wait_ms / 1000.0
        )

    def model_for(self, language: str | None) -> ServedModel:
        """The model of ``language`` (default: the first loaded); 404 when none is loaded."""
        if language is None:
            return next(iter(self.models.values()))
        if language not in self.models:
            loaded = ", ".join(self.models)
            raise RequestError(404, f"no model loaded for language {language!r} (loaded: {loaded})")
        return self.models[language]

    def _run(self, key: tuple[Any, ...], items: list[Any]) -> list[Any]:
        """One batch, in the batcher's thread: items are (pixels, options) of one key."""
        kind, language = key[0], key[1]
        model = self.models[language]
        pixels = [pixel for pixel, _ in items]
        if kind == "caption":
            return model.caption(pixels, items[0][1])
        return model.retrieve(pixels, items[0][1])

    async def caption(self, upload: Upload, options: CaptionOptions) -> dict[str, Any]:
        model = self.model_for(options.language)
        try:
            generation = options.generation()
        except BadInput as error:
            raise RequestError(422, str(error)) from None
        longest = model.longest_caption
        if longest is not None and generation.max_length > longest:
            raise RequestError(
                422,
                f"max_length: at most {longest} tokens with this model "
                f"(its LM has {longest + model.captioner.prefix_length} positions)",
            )
        started = time.perf_counter()
        pixels = await run_in_threadpool(self._prepare, upload, model.encoder)
        key = ("caption", model.language, tuple(sorted(generation.to_json().items())))
        alone = generation.sample and generation.seed is not None  # its own random stream
        captions, batch = await self.batcher.submit(key, (pixels, generation), alone=alone)
        return {
            "image": upload.name,
            "language": model.language,
            "captions": captions,
            "options": generation.to_json(),
            "batch_size": batch,
            "seconds": round(time.perf_counter() - started, 4),
        }

    async def retrieve(self, upload: Upload, options: RetrieveOptions) -> dict[str, Any]:
        model = self.model_for(options.language)
        if model.bank is None:
            raise RequestError(404, f"no bank loaded for language {model.language!r}")
        if options.consensus and options.mode != "image":
            raise RequestError(422, "consensus re-ranks image neighbours; use it with mode=image")
        started = time.perf_counter()
        pixels = await run_in_threadpool(self._prepare, upload, model.bank_encoder)
        settings = options.model_dump(exclude={"language"})
        key = ("retrieve", model.language, tuple(sorted(settings.items())))
        found, batch = await self.batcher.submit(key, (pixels, settings))
        return {
            "image": upload.name,
            "language": model.language,
            "bank": str(model.bank.path),
            "mode": options.mode,
            "captions": [
                {
                    "caption": item.caption,
                    "score": round(float(item.score), 4),
                    "caption_id": item.caption_id,
                    **({"neighbour": item.image} if item.image else {}),
                }
                for item in found
            ],
            "batch_size": batch,
            "seconds": round(time.perf_counter() - started, 4),
        }

    def _prepare(self, upload: Upload, encoder: Any) -> Any:
        """Decode (within the pixel limit) and preprocess for ``encoder``, off the loop."""
        return encoder.preprocess(decode_upload(upload, self.settings))

    def info(self) -> dict[str, Any]:
        return {
            "versions": versions(),
            "device": self.settings.device,
            "default_language": next(iter(self.models)),
            "settings": self.settings.to_json(),
            "models": [model.info() for model in self.models.values()],
        }


def versions() -> dict[str, str]:
    """Versions of polycap and the libraries a result depends on."""
    from polycap.version import package_versions

    return package_versions(
        ("polycap", "torch", "transformers", "open_clip_torch", "fastapi", "uvicorn")
    )


def _options(schema: type[BaseModel], fields: dict[str, Any]) -> Any:
    try:
        return schema.model_validate(fields)
    except ValidationError as error:
        raise RequestError(422, describe_validation_error(error, schema)) from None


def _body_doc(schema: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI: the route takes a multipart upload with option fields, or JSON with base64."""
    json_schema = schema.model_json_schema()
    form = {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {"type": "string", "format": "binary"},
            **{k: v for k, v in json_schema["properties"].items() if k != "image"},
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form},
                "application/json": {"schema": json_schema},
            },
        }
    }


def error_response(status: int, message: str) -> JSONResponse:
    """``{"error": "<one line>"}`` with ``status``."""
    line = " ".join(str(message).split()) or "error"
    return JSONResponse({"error": line}, status_code=status)


def create_app(models: dict[str, ServedModel], settings: ServeSettings | None = None) -> FastAPI:
    """The application serving ``models`` (by language) within ``settings``."""
    from polycap.version import __version__

    service = Service(models, settings or ServeSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.batcher.close()

    app = FastAPI(
        title="polycap",
        version=__version__,
        description="Image captions (and retrieved captions) from polycap models.",
        lifespan=lifespan,
    )
    app.state.service = service
    _add_error_handlers(app)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files("polycap.serve").joinpath("page.html").read_text("utf-8")
        return HTMLResponse(html)

    @app.get("/health", summary="Liveness: ok when the models are loaded")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "languages": list(service.models)}

    @app.get("/info", summary="Models, languages, encoders, banks, settings and versions")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.post(
        "/caption",
        summary="Caption one image (multipart field 'image', or JSON with base64 'image')",
        openapi_extra=_body_doc(CaptionJSON),
    )
    async def caption(request: Request) -> dict[str, Any]:
        upload = await read_upload(request, service.settings)
        return await service.caption(upload, _options(CaptionOptions, upload.fields))

    @app.post(
        "/retrieve",
        summary="Captions from the bank of the model's language, nearest first",
        openapi_extra=_body_doc(RetrieveJSON),
    )
    async def retrieve(request: Request) -> dict[str, Any]:
        upload = await read_upload(request, service.settings)
        return await service.retrieve(upload, _options(RetrieveOptions, upload.fields))

    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": one line}``: 4xx for the client's mistakes, and a 500 that
    names only the kind of failure (the traceback goes to the server's log, not the client)."""
    from polycap.data.images import TooManyPixels

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return error_response(error.status, error.message)

    @app.exception_handler(PolycapError)
    async def polycap_error(request: Request, error: PolycapError) -> JSONResponse:
        return error_response(413 if isinstance(error, TooManyPixels) else 400, str(error))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, describe_validation_error(error))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        import logging

        logging.getLogger("polycap.serve").exception("request failed")
        return error_response(500, f"internal error ({type(error).__name__}); see the server log")
