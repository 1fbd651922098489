"""Old import paths, kept working for one release with a DeprecationWarning.

polycap's modules moved into layer folders (see docs/architecture.md); a plugin that still
imports ``polycap.encoding`` gets ``polycap.data.encoding``, the same module object, and a
warning naming the new path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

MOVED = {
    "polycap.atomic": "polycap.util.atomic",
    "polycap.batching": "polycap.util.batching",
    "polycap.devices": "polycap.util.devices",
    "polycap.distributed": "polycap.util.distributed",
    "polycap.files": "polycap.util.files",
    "polycap.progress": "polycap.util.progress",
    "polycap.images": "polycap.data.images",
    "polycap.encoding": "polycap.data.encoding",
    "polycap.features": "polycap.data.features",
    "polycap.mapping": "polycap.model.mapping",
    "polycap.decoders": "polycap.util.decoders",
    "polycap.generation": "polycap.model.generation",
    "polycap.kv_cache": "polycap.model.kv_cache",
    "polycap.lm_keywords": "polycap.model.lm_keywords",
    "polycap.augmented": "polycap.model.augmented",
    "polycap.training": "polycap.train.trainer",
    "polycap.run_folder": "polycap.util.run_folder",
    "polycap.selection": "polycap.train.selection",
    "polycap.trackers": "polycap.train.trackers",
    "polycap.eval.validation": "polycap.train.validation",
    "polycap.clipcap": "polycap.interop.clipcap",
    "polycap.onnx_export": "polycap.interop.onnx_export",
    "polycap.onnx_runtime": "polycap.interop.onnx_runtime",
    "polycap.sharing": "polycap.interop.sharing",
    "polycap.model_card": "polycap.interop.model_card",
    "polycap.hub": "polycap.interop.hub",
    "polycap.captioning": "polycap.inference.pipeline",
    "polycap.api": "polycap.inference.api",
    "polycap.eval.compare": "polycap.compare.comparison",
    "polycap.eval.methods": "polycap.compare.methods",
    "polycap.compositional": "polycap.compare.compositional",
}
# old modules that are packages now: their names resolve lazily through the package
MOVED_INTO_PACKAGE = {
    "polycap.data": "polycap.data.captions",
    "polycap.model": "polycap.model.captioner",
    "polycap.demo": "polycap.demo.runner",
}


def deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new}; the old path stops working in the next release",
        DeprecationWarning,
        stacklevel=4,
    )


def attribute_of_moved(package: str, name: str) -> object:
    """``package.name`` for a package that was once a module (``polycap.data.CaptionRecord``)."""
    new = MOVED_INTO_PACKAGE[package]
    module = importlib.import_module(new)
    if not hasattr(module, name):
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    deprecated(f"{package}.{name}", f"{new}.{name}")
    return getattr(module, name)


class _Alias(importlib.abc.Loader):
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.new)
        self.real_spec = module.__spec__
        deprecated(spec.name, self.new)
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.real_spec  # the import system set the old name's spec


class MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old module names and hands back the moved modules."""

    def find_spec(self, name: str, path: object = None, target: object = None):  # noqa: ANN201
        new = MOVED.get(name)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(name, _Alias(new))


def install() -> None:
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())
