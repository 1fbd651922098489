"""A caption bank checked when it is opened: every file the right kind, size and range.

A bank copied in part, cut short by a full disk or edited by hand must fail on open with one
line naming the damaged file, not give empty captions, wrong neighbours or a traceback later.
What is checked (reading at most a few numbers per row, in blocks, never a whole matrix):

- ``meta.json``: counts and the embedding size are whole numbers, the dtype a bank dtype;
- line files (``captions.txt``, ``images.txt``): one offset per row plus one, rising from 0
  to the text file's size (a file cut short or grown does not match);
- ``text.npy`` / ``image.npy``: a numeric array (never a pickle) of the bank's dtype and shape
  ``[rows, embed_dim]``, whose first rows are L2-normalised (random numbers are not);
- ``image_captions.ptr.npy`` / ``.ids.npy``: int64, pointers rising from 0 to the number of
  ids, every id a caption of the bank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polycap.errors import BadInput
from polycap.util.safe_load import load_array

BLOCK = 1 << 20  # rows per block of range checks
SAMPLE_ROWS = 256  # rows whose norm is checked
DTYPES = ("float16", "float32")


def damaged(path: Path, what: str) -> BadInput:
    return BadInput(f"{path}: {what}; the bank is damaged (rebuild it with 'polycap index')")


def check_meta(path: Path, meta: dict[str, Any]) -> None:
    """Counts, embedding size and dtype in ``meta.json`` of the bank at ``path``."""
    meta_file = path / "meta.json"
    for key in ("captions", "images", "embed_dim"):
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise damaged(meta_file, f"{key!r} is {value!r}, not a count")
    if meta.get("dtype") not in DTYPES:
        raise damaged(meta_file, f"dtype {meta.get('dtype')!r} is not one of {', '.join(DTYPES)}")
    if not isinstance(meta.get("encoder"), dict):
        raise damaged(meta_file, "no encoder record")


def check_bank_files(path: Path, meta: dict[str, Any], has_text: bool) -> None:
    """Every file of the bank at ``path`` against ``meta`` (see the module docstring)."""
    captions, images, dim = int(meta["captions"]), int(meta["images"]), int(meta["embed_dim"])
    check_line_file(path / "captions.txt", captions)
    hashes = _array(path / "captions.hashes.npy", "int64", 1)
    if len(hashes) > captions:
        raise damaged(path / "captions.hashes.npy", f"{len(hashes)} hashes for {captions} captions")
    if has_text:
        check_matrix(path / "text.npy", meta["dtype"], captions, dim)
    if images:
        check_matrix(path / "image.npy", meta["dtype"], images, dim)
        check_line_file(path / "images.txt", images)
        check_caption_ids(path, images, captions)


def check_line_file(text: Path, rows: int) -> None:
    """``text`` and its offsets file hold ``rows`` lines, offsets rising to the file's size."""
    offsets_file = text.with_name(text.stem + ".offsets.npy")
    offsets = _array(offsets_file, "int64", 1)
    if len(offsets) != rows + 1:
        raise damaged(offsets_file, f"{len(offsets) - 1} rows where the bank has {rows}")
    size = text.stat().st_size
    if int(offsets[0]) != 0 or int(offsets[-1]) != size:
        raise damaged(
            text, f"{size} bytes where its offsets say {int(offsets[-1])} (cut short or edited?)"
        )
    _rising(offsets_file, offsets)


def check_matrix(path: Path, dtype: str, rows: int, dim: int) -> None:
    """A ``[rows, dim]`` array of ``dtype`` whose first rows have unit length."""
    import numpy as np

    matrix = _array(path, dtype, 2)
    if matrix.shape != (rows, dim):
        raise damaged(path, f"shape {list(matrix.shape)}, expected [{rows}, {dim}]")
    sample = np.asarray(matrix[:SAMPLE_ROWS], dtype=np.float32)
    norms = np.linalg.norm(sample, axis=1)
    if sample.size and not np.all(np.abs(norms - 1.0) < 0.02):
        raise damaged(path, "rows are not unit-length embeddings")


def check_caption_ids(path: Path, images: int, captions: int) -> None:
    """image_captions.ptr.npy rises from 0 to len(ids); every id names a caption."""
    import numpy as np

    pointer_file, ids_file = path / "image_captions.ptr.npy", path / "image_captions.ids.npy"
    pointer = _array(pointer_file, "int64", 1)
    ids = _array(ids_file, "int64", 1)
    if len(pointer) != images + 1 or int(pointer[0]) != 0 or int(pointer[-1]) != len(ids):
        raise damaged(pointer_file, f"does not index {len(ids)} caption ids of {images} images")
    _rising(pointer_file, pointer)
    for start in range(0, len(ids), BLOCK):
        block = np.asarray(ids[start : start + BLOCK])
        if block.size and (int(block.min()) < 0 or int(block.max()) >= captions):
            bad = int(block.min()) if int(block.min()) < 0 else int(block.max())
            raise damaged(ids_file, f"caption id {bad} out of range (the bank has {captions})")


def _array(path: Path, dtype: str, dims: int) -> Any:
    try:
        array = load_array(path)
    except BadInput as error:
        raise damaged(path, str(error).removeprefix(f"{path}: ")) from None
    if array.dtype != dtype or array.ndim != dims:
        raise damaged(path, f"{array.dtype} array of {array.ndim} dimension(s), expected {dtype}")
    return array


def _rising(path: Path, values: Any) -> None:
    import numpy as np

    for start in range(0, len(values) - 1, BLOCK):
        block = np.asarray(values[start : start + BLOCK + 1])
        if np.any(np.diff(block) < 0):
            raise damaged(path, "offsets go backwards")
