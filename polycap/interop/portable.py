"""Records that travel: no absolute path of the machine that wrote them.

An export's ``polycap.json``, its model card and the ONNX manifest come from a checkpoint's
records, which name the files a model was built from (an LM folder, encoder weights, training
data) by absolute path. In an export they are named by file or folder name only; what an export
needs is inside it, and its records say where (``bundled``, ``lm_dir``).
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any


def is_absolute_path(value: str) -> bool:
    """An absolute path on this or another system (``/x``, ``~/x``, ``C:\\x``), not a URL."""
    if "://" in value or "\n" in value:
        return False
    return (
        value.startswith("~")
        or PurePosixPath(value).is_absolute()
        or PureWindowsPath(value).is_absolute()
    )


def local_name(value: str) -> str:
    """An absolute path's last part (its file or folder name)."""
    return os.path.basename(value.rstrip("/\\")) or value


def portable(record: Any) -> Any:
    """``record`` (JSON values) with every absolute path replaced by its last part."""
    if isinstance(record, dict):
        return {key: portable(value) for key, value in record.items()}
    if isinstance(record, (list, tuple)):
        return [portable(value) for value in record]
    if isinstance(record, str) and is_absolute_path(record):
        return local_name(record)
    return record


def portable_checkpoint_record(config: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's ``polycap.json`` record for an export: encoder weights named by the copy
    inside it (``bundled``) when there is one, other absolute paths by their last part."""
    record = dict(config)
    encoder = dict(record.get("encoder") or {})
    pretrained = encoder.get("pretrained")
    if encoder.get("bundled") and isinstance(pretrained, str) and is_absolute_path(pretrained):
        encoder["pretrained"] = encoder["bundled"]
    record["encoder"] = encoder
    return portable(record)
