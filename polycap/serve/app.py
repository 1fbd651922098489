"""The FastAPI application: routes, one-line JSON errors, the page at ``/``, the API docs.

Why FastAPI on uvicorn: Starlette (under FastAPI) is the ASGI toolkit the Python ecosystem
relies on, uvicorn its standard server, and FastAPI adds request validation with pydantic and
OpenAPI docs for free. Requests are awaited on one event loop; the models compute in
:class:`~polycap.serve.batcher.RequestBatcher`'s worker thread, so concurrent requests can be
gathered into one batch.

``/docs`` (Swagger UI) and ``/redoc`` are served with their scripts and styles from the
``fastapi-offline`` package, under ``/static-offline-docs``: they work with no internet (FastAPI's
own pages load them from a CDN). The OpenAI-compatible ``/v1`` routes are in
:mod:`polycap.serve.openai_api`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from polycap.errors import PolycapError
from polycap.serve.models import ServedModel
from polycap.serve.openai_api import add_openai_routes
from polycap.serve.openai_schemas import ChatCompletionRequest
from polycap.serve.responses import (
    CaptionResponse,
    CaptionsResponse,
    ErrorResponse,
    HealthResponse,
    InfoResponse,
    RetrieveResponse,
    RetrievesResponse,
)
from polycap.serve.schemas import (
    CaptionJSON,
    CaptionOptions,
    RetrieveJSON,
    RetrieveOptions,
    describe_validation_error,
)
from polycap.serve.service import Service, error_status
from polycap.serve.settings import ServeSettings
from polycap.serve.uploads import RequestError, clip, read_upload

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 415, 422)}
DOCS_ASSETS = "/static-offline-docs"  # Swagger UI and ReDoc files, from fastapi-offline
# The docs pages may load nothing from elsewhere: ReDoc's sidebar shows a logo from a CDN,
# which this policy stops before the browser asks for it.
DOCS_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)
MAX_ERROR_CHARS = 2000  # the longest error line sent (client values are clipped before that)


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
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "One image."},
            "images": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "description": "Several images (instead of 'image'): an answer per image.",
            },
            **{k: v for k, v in json_schema["properties"].items() if k not in ("image", "images")},
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


def error_response(
    status: int, message: str, request: Request | None = None, error: Any = None
) -> JSONResponse:
    """``{"error": "<one line>"}`` with ``status``; under ``/v1``, OpenAI's error object
    ``{"error": {"message", "type", "param", "code"}}`` (a 422 there is a 400, as OpenAI's)."""
    line = " ".join(str(message).split()) or "error"
    if len(line) > MAX_ERROR_CHARS:
        line = clip(line, MAX_ERROR_CHARS)
    if request is None or not request.url.path.startswith("/v1/"):
        return JSONResponse({"error": line}, status_code=status)
    status = 400 if status == 422 else status
    kind = "server_error" if status >= 500 else "invalid_request_error"
    code = getattr(error, "code", None) or {404: "not_found", 413: "too_large"}.get(status)
    body = {"message": line, "type": kind, "param": getattr(error, "param", None), "code": code}
    return JSONResponse({"error": body}, status_code=status)


def create_app(models: dict[str, ServedModel], settings: ServeSettings | None = None) -> FastAPI:
    """The application serving ``models`` (by language) within ``settings``."""
    from fastapi_offline import FastAPIOffline

    from polycap.version import __version__

    service = Service(models, settings or ServeSettings())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.batcher.close()

    app = FastAPIOffline(
        title="polycap",
        version=__version__,
        description="Image captions (and retrieved captions) from polycap models, and an "
        "OpenAI-compatible chat completions API.",
        lifespan=lifespan,
        docs_url=None,  # ours below: the same pages, with a policy that keeps them local
        redoc_url=None,
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},  # no badge from validator.swagger.io
    )
    app.state.service = service
    _add_error_handlers(app)
    _add_docs(app)
    _add_native_routes(app, service)
    add_openai_routes(app, service)
    _add_schemas(app, ChatCompletionRequest)
    return app


def _add_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc``, with their assets from the server itself."""
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        return page

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )
        page.headers["Content-Security-Policy"] = DOCS_POLICY
        return page


def _add_native_routes(app: FastAPI, service: Service) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files("polycap.serve").joinpath("page.html").read_text("utf-8")
        return HTMLResponse(html)

    @app.get(
        "/health",
        response_model=HealthResponse,
        summary="Liveness: ok when the models are loaded",
        tags=["polycap"],
    )
    async def health() -> dict[str, Any]:
        return {"status": "ok", "languages": list(service.models)}

    @app.get(
        "/info",
        response_model=InfoResponse,
        tags=["polycap"],
        summary="Models, languages, encoders, banks, settings and versions",
    )
    async def info() -> dict[str, Any]:
        return service.info()

    @app.post(
        "/caption",
        response_model=CaptionResponse | CaptionsResponse,
        responses=ERRORS,
        tags=["polycap"],
        summary="Caption one image ('image') or several ('images'): multipart or JSON base64",
        openapi_extra=_body_doc(CaptionJSON),
    )
    async def caption(request: Request) -> dict[str, Any]:
        upload = await read_upload(request, service.settings)
        return await service.caption(upload, _options(CaptionOptions, upload.fields))

    @app.post(
        "/retrieve",
        response_model=RetrieveResponse | RetrievesResponse,
        responses=ERRORS,
        tags=["polycap"],
        summary="Captions from the bank of the model's language, nearest first",
        openapi_extra=_body_doc(RetrieveJSON),
    )
    async def retrieve(request: Request) -> dict[str, Any]:
        upload = await read_upload(request, service.settings)
        return await service.retrieve(upload, _options(RetrieveOptions, upload.fields))


def _add_schemas(app: FastAPI, *schemas: type[BaseModel]) -> None:
    """Put request models that routes read themselves (to bound the body first) into the
    OpenAPI components, where their routes' ``$ref`` point."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        components = document.setdefault("components", {}).setdefault("schemas", {})
        for schema in schemas:
            found = schema.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(found.pop("$defs", {}))
            components[schema.__name__] = found
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is ``{"error": one line}`` (OpenAI's error object under ``/v1``): 4xx for
    the client's mistakes, and a 500 that names only the kind of failure (the traceback goes
    to the server's log, not the client)."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, error: RequestError) -> JSONResponse:
        return error_response(error.status, error.message, request, error)

    @app.exception_handler(PolycapError)
    async def polycap_error(request: Request, error: PolycapError) -> JSONResponse:
        return error_response(error_status(error), str(error), request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, describe_validation_error(error), request)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, str(error.detail), request)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        import logging

        logging.getLogger("polycap.serve").exception("request failed")
        message = f"internal error ({type(error).__name__}); see the server log"
        return error_response(500, message, request)
