"""What the native routes answer, as pydantic models: the OpenAPI schema at ``/openapi.json``
(and the pages at ``/docs`` and ``/redoc``) shows each response's fields and types, and FastAPI
checks every answer against them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorResponse(BaseModel):
    """Every error of the native routes: one line."""

    error: str = Field(..., description="What went wrong, in one line.")


class HealthResponse(BaseModel):
    status: str = Field(..., description='"ok" once the models are loaded.')
    languages: list[str] = Field(..., description="The languages of the loaded models.")


class BankInfo(BaseModel):
    name: str = Field(..., description="The bank's folder name (never the server's path).")
    captions: int
    images: int
    text_embeddings: bool
    encoder: str | None = None


class ModelInfo(BaseModel):
    language: str
    id: str = Field(..., description="The model's id in /v1/models, polycap-<language>.")
    model: str = Field(..., description="The model's folder name (never the server's path).")
    encoder: dict[str, str | None] = Field(..., description="Image encoder: backend, name.")
    lm: str | None = Field(None, description="The decoder LM, by name.")
    mapper: str | None = None
    prefix_length: int
    longest_caption: int | None = Field(None, description="Most caption tokens the LM allows.")
    bank: BankInfo | None = Field(None, description="The bank for /retrieve, when loaded.")


class InfoResponse(BaseModel):
    versions: dict[str, str]
    device: str
    default_language: str
    settings: dict[str, Any] = Field(..., description="The server's limits and batching.")
    models: list[ModelInfo]


class CaptionResponse(BaseModel):
    """``POST /caption`` with one ``image``."""

    image: str = Field(..., description="The upload's file name ('image' for JSON).")
    language: str
    captions: list[str] = Field(..., description="num_captions captions, best first.")
    options: dict[str, Any] = Field(..., description="The generation settings used.")
    batch_size: int = Field(..., description="How many images were decoded together.")
    seconds: float = Field(..., description="From the image being read to the answer.")


class ImageCaptions(BaseModel):
    image: str
    captions: list[str]
    batch_size: int


class ImageError(BaseModel):
    """An image of a several-image request that could not be captioned."""

    image: str
    error: str = Field(..., description="Why, in one line.")
    status: int = Field(..., description="The status a one-image request would have had.")


class CaptionsResponse(BaseModel):
    """``POST /caption`` with ``images``: an answer per image, in the order sent."""

    language: str
    results: list[ImageCaptions | ImageError]
    options: dict[str, Any]
    seconds: float


class RetrievedCaption(BaseModel):
    caption: str
    score: float
    caption_id: int
    neighbour: str | None = Field(None, description="Mode image: the bank image's file name.")


class RetrieveResponse(BaseModel):
    """``POST /retrieve`` with one ``image``: the bank's captions, nearest first."""

    image: str
    language: str
    bank: str = Field(..., description="The bank's folder name.")
    mode: str
    captions: list[RetrievedCaption]
    batch_size: int
    seconds: float


class ImageRetrieved(BaseModel):
    image: str
    captions: list[RetrievedCaption]
    batch_size: int


class RetrievesResponse(BaseModel):
    """``POST /retrieve`` with ``images``: an answer per image."""

    language: str
    bank: str
    mode: str
    results: list[ImageRetrieved | ImageError]
    seconds: float
