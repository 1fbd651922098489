"""What an ONNX export needs to run without polycap: a runner script and a full manifest.

:func:`add_standalone` copies ``run_onnx.py`` (numpy, onnxruntime, tokenizers, Pillow) and
``steps_polycap.py`` (open_clip's eval transform and the caption text rule, in Pillow and
numpy) from ``polycap/interop/standalone/`` into the export, and returns the manifest fields
they and any other runtime read: every graph's inputs and outputs (names, shapes with their
dynamic dimensions named, element types), the image preprocessing, the stop rule and the
caption text rule.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("standalone")
RUNNER_FILES = ("run_onnx.py", "steps_polycap.py")
STOP_RULE = (
    "greedy decoding picks the highest logit; a caption ends at the first stop_token_id (kept "
    "in its ids: decoding with skip_special_tokens drops it when it is a special token, as "
    "an end-of-text token is, and keeps it when it is a plain token such as '.') or after "
    "generation.max_length tokens"
)
PREPROCESSING_STEPS = (
    "resize (resize_mode 'shortest': the shorter side to size, the longer rounded down; "
    "'squash': both sides to size) with interpolation",
    "centre crop to size",
    "RGB, pixel values / 255",
    "(x - mean) / std per channel, channels first: [3, H, W]",
)


def graph_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The inputs and outputs of the ONNX graph at ``path``: name, shape (ints, or the names
    of dynamic dimensions) and element type, read from the graph itself."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def describe(value: Any) -> dict[str, Any]:
        tensor = value.type.tensor_type
        shape = [dim.dim_param or dim.dim_value for dim in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        return {"name": value.name, "shape": shape, "dtype": dtype}

    return {
        "inputs": [describe(value) for value in graph.input],
        "outputs": [describe(value) for value in graph.output],
    }


def add_standalone(work: Path, graphs: dict[str, str | None], preprocess: Any, rule: Any):
    """Copy the runner into the export being written at ``work``; returns the manifest's
    ``tensors``, ``preprocessing``, ``stop_rule`` and ``caption_text``."""
    for name in RUNNER_FILES:
        shutil.copyfile(SOURCE / name, work / name)
    tensors = {role: graph_io(work / file) for role, file in graphs.items() if file}
    preprocessing = None
    if preprocess:
        preprocessing = {**preprocess, "steps": list(PREPROCESSING_STEPS)}
    return {
        "tensors": tensors,
        "preprocessing": preprocessing,
        "stop_rule": STOP_RULE,
        "caption_text": rule,
        "runner": "python run_onnx.py IMAGE... (numpy, onnxruntime, tokenizers, Pillow)",
    }
