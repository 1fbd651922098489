"""Where exports and imports write: never over a trained model or a folder they did not write.

``polycap export --to hf|onnx OUT`` and ``polycap import clipcap -o OUT`` replace ``OUT`` only
when it is absent, empty, or an earlier output of the same command (an HF export records
``exported_as: "hf"`` in its polycap.json, an ONNX export is its manifest, an import records
``imported_from``). Any other polycap model there (a run's ``final/``, a checkpoint, another
kind of export) is replaced only with ``--force``; a training run's folder and a non-empty
folder that is not polycap's are never replaced, ``--force`` or not: polycap does not delete
what it did not write, nor a run's checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

from polycap.errors import BadInput

CONFIG_FILE = "polycap.json"  # polycap.model.captioner.CONFIG_FILE
MANIFEST = "polycap-onnx.json"  # polycap.interop.onnx_export.MANIFEST
RUN_FILE = "run.json"  # polycap.util.run_folder.RUN_FILE
KINDS = {"hf": "an HF export", "onnx": "an ONNX export", "clipcap": "a ClipCap import"}


def written_by(directory: Path) -> str | None:
    """What wrote ``directory``: "hf", "onnx", "clipcap", "model" (another polycap model: a
    checkpoint, a run's final/), "run" (a training run's folder), "foreign" (a non-empty
    folder of something else); None when it is absent or empty."""
    if not directory.is_dir() or not any(directory.iterdir()):
        return None
    if (directory / MANIFEST).is_file():
        return "onnx"
    config = directory / CONFIG_FILE
    if _holds_run(directory):
        return "run"
    if not config.is_file():
        return "foreign"
    try:
        record = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "model"
    if not isinstance(record, dict):
        return "model"
    if record.get("exported_as") == "hf":
        return "hf"
    imported = record.get("imported_from")
    if isinstance(imported, dict) and imported.get("format") == "clipcap":
        return "clipcap"
    return "model"


def _holds_run(directory: Path) -> bool:
    from polycap.util.run_folder import RunFolder

    folder = RunFolder(directory)
    return (
        (directory / RUN_FILE).is_file()
        or bool(folder.checkpoints())
        or any((model / CONFIG_FILE).is_file() for model in (folder.final, folder.best))
    )


def check_target(directory: Path, kind: str, force: bool = False) -> Path:
    """BadInput (one line) unless ``directory`` may be replaced by an output of ``kind``
    ("hf", "onnx", "clipcap"; see the module docstring); returns it."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise BadInput(f"{directory}: exists and is not a folder")
    found = written_by(directory)
    if found is None or found == kind:
        return directory
    if found == "run":
        raise BadInput(
            f"{directory}: holds a training run ({RUN_FILE}); refusing to overwrite it "
            "(choose another folder)"
        )
    if found == "foreign":
        raise BadInput(
            f"{directory}: exists, is not empty and was not written by polycap; refusing to "
            "overwrite it (choose another folder)"
        )
    what = KINDS.get(found, "a trained polycap model")
    if not force:
        raise BadInput(
            f"{directory}: holds {what}; refusing to overwrite it (pass --force to replace it)"
        )
    return directory
