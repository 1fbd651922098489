"""Every polycap hook. Hooks only *register* things; behaviour lives in plain objects.

Each ``register`` argument is a callable ``register(name: str, item) -> None`` that adds
``item`` to one registry under ``name``; a name claimed twice is an error naming both plugins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("polycap")
hookimpl = pluggy.HookimplMarker("polycap")

Register = Callable[[str, Any], None]


@hookspec
def register_languages(register: Register) -> None:
    """Register language packs: ``register(code, LanguagePack(...))``."""


@hookspec
def register_encoders(register: Register) -> None:
    """Register image-encoder backends: ``register(name, load)`` with
    ``load(model: str, pretrained: str | None, device: str) -> ImageEncoder``."""


@hookspec
def register_mappers(register: Register) -> None:
    """Register prefix mappers: ``register(kind, cls)`` with
    ``cls(clip_dim: int, lm_dim: int, prefix_length: int, **options) -> torch.nn.Module``."""


@hookspec
def register_metrics(register: Register) -> None:
    """Register caption metrics: ``register(name, Metric)`` (see ``polycap.eval.runner``)."""


@hookspec
def register_caption_formats(register: Register) -> None:
    """Register caption-file formats: ``register(name, CaptionFormat)`` (see
    ``polycap.data.captions``)."""


@hookspec
def register_datasets(register: Register) -> None:
    """The older name of :func:`register_caption_formats`, still honoured: formats registered
    here go to the same registry."""


@hookspec
def register_index_backends(register: Register) -> None:
    """Register caption-bank index backends: ``register(name, IndexBackend)`` (see
    ``polycap.retrieval.backends``); ``polycap index --backend NAME`` builds with one."""


@hookspec
def register_commands(app: Any) -> None:
    """Add commands to the ``polycap`` Typer app: decorate functions with ``@app.command()``."""
