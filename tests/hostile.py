"""Hostile files for tests: pickles that run code when loaded, in every container polycap reads.

``Marker(path)`` unpickles by calling ``open(path, "w")``: the file ``path`` exists afterwards
exactly when something unpickled it. A safe reader refuses these files and the marker never
appears.
"""

from __future__ import annotations

from pathlib import Path


class Marker:
    """Unpickling this object creates ``path`` (``open(path, "w")``)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: ANN204 - pickle protocol
        return (open, (self.path, "w"))


def evil_torch_file(path: Path, marker: Path) -> Path:
    """A ``torch.save`` file whose state dict holds a ``Marker`` beside a real tensor."""
    import torch

    torch.save({"clip_project.weight": torch.zeros(2, 2), "evil": Marker(marker)}, path)
    return path


def evil_npy_file(path: Path, marker: Path) -> Path:
    """A ``.npy`` file of one pickled object: the ``Marker``."""
    import numpy as np

    array = np.empty(1, dtype=object)
    array[0] = Marker(marker)
    np.save(path, array, allow_pickle=True)
    return path
