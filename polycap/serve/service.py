"""What the routes call: the loaded models, the limits, the decode budget and the batcher.

Every caption the server gives (``POST /caption``, ``POST /v1/chat/completions``, the page)
goes the same way: the image is decoded within the pixel limit and the decode budget
(:mod:`polycap.serve.memory`), preprocessed for the model's encoder, and queued in the
:class:`~polycap.serve.batcher.RequestBatcher`, whose worker thread calls
:meth:`ServedModel.caption <polycap.serve.models.ServedModel.caption>`: the
:class:`~polycap.inference.pipeline.CaptionPipeline` ``polycap caption`` uses.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.concurrency import run_in_threadpool

from polycap.errors import BadInput, PolycapError
from polycap.serve.batcher import RequestBatcher
from polycap.serve.memory import DecodeBudget, decode_cost
from polycap.serve.models import ServedModel, public_name
from polycap.serve.schemas import CaptionOptions, RetrieveOptions
from polycap.serve.settings import ServeSettings
from polycap.serve.uploads import ImageFile, RequestError, Upload, clip, decode_upload


class Service:
    """The loaded models, the limits and the batcher that runs every model call."""

    def __init__(self, models: dict[str, ServedModel], settings: ServeSettings) -> None:
        if not models:
            raise BadInput("no model to serve")
        self.models = models
        self.settings = settings
        self.budget = DecodeBudget(settings.decode_memory_bytes)
        self.batcher = RequestBatcher(
            self._run, settings.max_batch, settings.batch_wait_ms / 1000.0
        )

    def model_for(self, language: str | None) -> ServedModel:
        """The model of ``language`` (default: the first loaded); 404 when none is loaded."""
        if language is None:
            return next(iter(self.models.values()))
        if language not in self.models:
            loaded = ", ".join(self.models)
            raise RequestError(
                404, f"no model loaded for language {clip(language)!r} (loaded: {loaded})"
            )
        return self.models[language]

    def _run(self, key: tuple[Any, ...], items: list[Any]) -> list[Any]:
        """One batch, in the batcher's thread: items are (pixels, options) of one key."""
        kind, language = key[0], key[1]
        model = self.models[language]
        pixels = [pixel for pixel, _ in items]
        if kind == "caption":
            return model.caption(pixels, items[0][1])
        return model.retrieve(pixels, items[0][1])

    def generation(self, model: ServedModel, options: CaptionOptions) -> Any:
        """The GenerationConfig of ``options``, checked against the model's LM (422)."""
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
                param="max_length",
            )
        return generation

    async def prepare(self, image: ImageFile, encoder: Any) -> Any:
        """``image`` decoded (within the pixel limit and the decode budget) and preprocessed
        for ``encoder``, off the event loop."""
        cost = await run_in_threadpool(decode_cost, image.data)
        async with self.budget.hold(image.name, cost):
            return await run_in_threadpool(self._decode, image, encoder)

    def _decode(self, image: ImageFile, encoder: Any) -> Any:
        return encoder.preprocess(decode_upload(image, self.settings))

    async def caption_pixels(
        self, model: ServedModel, pixels: Any, generation: Any
    ) -> tuple[list[str], int]:
        """Captions of one preprocessed image and the size of the batch it was decoded in."""
        key = ("caption", model.language, tuple(sorted(generation.to_json().items())))
        alone = generation.sample and generation.seed is not None  # its own random stream
        return await self.batcher.submit(key, (pixels, generation), alone=alone)

    async def caption(self, upload: Upload, options: CaptionOptions) -> dict[str, Any]:
        """``POST /caption``: one image's answer, or (``images``) an answer per image."""
        model = self.model_for(options.language)
        generation = self.generation(model, options)
        started = time.perf_counter()

        async def one(pixels: Any) -> dict[str, Any]:
            captions, batch = await self.caption_pixels(model, pixels, generation)
            return {"captions": captions, "batch_size": batch}

        results = await self._each(upload, model.encoder, one)
        head = {"language": model.language}
        tail = {"options": generation.to_json(), "seconds": _since(started)}
        if upload.many:
            return {**head, "results": results, **tail}
        return {"image": results[0]["image"], **head, **results[0], **tail}

    async def retrieve(self, upload: Upload, options: RetrieveOptions) -> dict[str, Any]:
        """``POST /retrieve``: the bank's captions for one image, or for each of ``images``."""
        model = self.model_for(options.language)
        if model.bank is None:
            raise RequestError(404, f"no bank loaded for language {model.language!r}")
        if options.consensus and options.mode != "image":
            raise RequestError(422, "consensus re-ranks image neighbours; use it with mode=image")
        started = time.perf_counter()
        settings = options.model_dump(exclude={"language"})
        key = ("retrieve", model.language, tuple(sorted(settings.items())))

        async def one(pixels: Any) -> dict[str, Any]:
            found, batch = await self.batcher.submit(key, (pixels, settings))
            return {"captions": [_retrieved(item) for item in found], "batch_size": batch}

        results = await self._each(upload, model.bank_encoder, one)
        head = {"language": model.language, "bank": public_name(model.bank.path)}
        head["mode"] = options.mode
        if upload.many:
            return {**head, "results": results, "seconds": _since(started)}
        return {"image": results[0]["image"], **head, **results[0], "seconds": _since(started)}

    async def _each(self, upload: Upload, encoder: Any, answer: Any) -> list[dict[str, Any]]:
        """``answer(pixels)`` for each image, decoded one after another (a request holds one
        image's decode budget at a time), answered together (they batch). With ``images``, an
        image that cannot be read gets its own error and the others their answers."""
        pending: list[Any] = []
        for image in upload.images:
            try:
                pending.append((image, await self.prepare(image, encoder)))
            except (RequestError, PolycapError) as error:
                if not upload.many:
                    raise
                status = error.status if isinstance(error, RequestError) else error_status(error)
                pending.append((image, {"error": _line(error), "status": status}))
        ready = [(image, p) for image, p in pending if not isinstance(p, dict)]
        answers = iter(await asyncio.gather(*(answer(pixels) for _, pixels in ready)))
        return [
            {"image": image.name, **(found if isinstance(found, dict) else next(answers))}
            for image, found in pending
        ]

    def info(self) -> dict[str, Any]:
        return {
            "versions": versions(),
            "device": self.settings.device,
            "default_language": next(iter(self.models)),
            "settings": self.settings.to_json(),
            "models": [model.info() for model in self.models.values()],
        }


def error_status(error: PolycapError) -> int:
    """413 for an image over the pixel limit, 400 for other bad input."""
    from polycap.data.images import TooManyPixels

    return 413 if isinstance(error, TooManyPixels) else 400


def _line(error: Exception) -> str:
    return " ".join((getattr(error, "message", None) or str(error)).split())


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 4)


def _retrieved(item: Any) -> dict[str, Any]:
    row = {
        "caption": item.caption,
        "score": round(float(item.score), 4),
        "caption_id": item.caption_id,
    }
    if item.image:
        row["neighbour"] = public_name(item.image)
    return row


def versions() -> dict[str, str]:
    """Versions of polycap and the libraries a result depends on."""
    from polycap.version import package_versions

    return package_versions(
        ("polycap", "torch", "transformers", "open_clip_torch", "fastapi", "uvicorn")
    )
