"""Reading files that could hold a pickle: tensors and arrays only, never arbitrary objects.

A ``.pt`` file or a ``.npy`` file received from someone else can carry a pickle whose
``__reduce__`` runs code when it is loaded. Everything polycap reads of these kinds goes through
here: :func:`load_torch_weights` (``torch.load(weights_only=True)``: tensors, numbers, strings
and containers of them) and :func:`load_array` (``np.load(allow_pickle=False)``). Before
unpickling, :func:`not_weights` names the usual wrong downloads in one line: a git-lfs pointer
(the repository was cloned without ``git lfs pull``), an HTML page (a login or error page saved
under the weights' name) or another text file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polycap.errors import BadInput, first_line

LFS_POINTER = b"version https://git-lfs"
SNIFF_BYTES = 512


def not_weights(path: Path) -> str | None:
    """Why ``path`` is plainly not a weights file (a git-lfs pointer, an HTML page, a text
    file), or None when it may be one."""
    with open(path, "rb") as handle:
        head = handle.read(SNIFF_BYTES)
    if head.startswith(LFS_POINTER):
        return "a git-lfs pointer, not the weights (fetch them with `git lfs pull`)"
    start = head.lstrip().lower()
    if start.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "an HTML page, not weights (a download that saved a web page?)"
    if not head:
        return "an empty file"
    if b"\0" not in head and not head.startswith((b"\x80", b"PK")):
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return "a text file, not weights"
    return None


def load_torch_weights(path: Path, what: str = "a PyTorch state dict") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; BadInput (one line naming ``path``)
    for a missing file, a wrong download, or a pickle of anything but tensors and containers."""
    import pickle
    import warnings

    import torch

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such file")
    reason = not_weights(path)
    if reason is not None:
        raise BadInput(f"{path}: {reason}; expected {what}")
    try:
        with warnings.catch_warnings():  # its note on unusual pickle protocols: not for users
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Weights only load failed" in str(error):
            raise BadInput(
                f"{path}: holds Python objects other than tensors; refused (polycap loads "
                f"weights only, never arbitrary pickles); expected {what}"
            ) from None
        raise BadInput(f"{path}: not {what} ({first_line(error, 200)})") from None
    except Exception as error:  # noqa: BLE001 - torch's unpickler raises KeyError, RuntimeError...
        raise BadInput(
            f"{path}: not {what} ({type(error).__name__}: {first_line(error, 200)})"
        ) from None


def load_array(path: Path, mmap: bool = True) -> Any:
    """``np.load(path, allow_pickle=False)`` (memory-mapped unless ``mmap`` is False); BadInput
    (one line naming ``path``) for a missing, truncated or pickled (object) array."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: missing")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except ValueError as error:
        if any(word in str(error) for word in ("allow_pickle", "Object arrays", "Python objects")):
            raise BadInput(
                f"{path}: holds pickled Python objects, not numbers; refused (polycap never "
                "unpickles arrays)"
            ) from None
        raise BadInput(f"{path}: not a readable array ({first_line(error, 200)})") from None
    except (OSError, EOFError) as error:
        raise BadInput(f"{path}: not a readable array ({first_line(error, 200)})") from None
