"""The recipe of docs/evaluation.md, run as written on the tiny stand-ins: train a Japanese
captioner on a STAIR-layout file, evaluate it on an XM3600-layout file beside published numbers,
export it with its scores on the model card."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from polycap.plugins import get_registries

DOC = Path(__file__).resolve().parents[1] / "docs" / "evaluation.md"


def recipe() -> str:
    """The shell block between the recipe markers of docs/evaluation.md."""
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"<!-- recipe:stair-xm3600 -->\n```bash\n(.*?)```", text, re.S)
    assert block, "recipe block not found in docs/evaluation.md"
    return block.group(1)


@pytest.mark.slow
def test_the_documented_recipe_runs_on_the_standins(tmp_path: Path) -> None:
    if "ja" not in get_registries().languages:
        pytest.skip("polycap-ja not installed")
    preamble = 'set -euo pipefail\npython() { "$PY" "$@"; }\npolycap() { "$PY" -m polycap "$@"; }\n'
    env = {**os.environ, "PY": sys.executable, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        ["bash", "-c", preamble + recipe()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Crossmodal-3600 (XM3600): this run beside published numbers" in done.stdout
    assert "English tokenizer (PTB)" in done.stdout
    result = json.loads((tmp_path / "eval-xm3600-ja.json").read_text(encoding="utf-8"))
    assert result["language"] == "ja" and result["segmenter"].startswith("MeCab")
    for column in ("BLEU-4", "CIDEr-D", "chrF", "Fidelity", "Script"):
        assert result["scores"][column] is not None, column
    assert result["details"]["benchmark"]["rows"][1]["system"] == "Qwen2-VL-2B"
    card = (tmp_path / "export" / "ja-stair" / "README.md").read_text(encoding="utf-8")
    assert "ja" in card
