"""A captioner on a transformers CLIP / SigLIP encoder, exported with ``--to hf``, captions with
transformers alone (no polycap, no download) as polycap does: the encoder loads from the
export's ``image_encoder/`` folder through its own class, the pixels come from its own image
processor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from test_hf_encoders import build, pictures

NO_POLYCAP = Path(__file__).resolve().parents[3] / "tests" / "no_polycap.py"
CAPTIONS = ["a red circle", "two blue squares", "a green triangle"] * 5
EMBED_DIM = {"clip": 16, "siglip": 32}
SCRIPT = """
import json, sys
from PIL import Image
from transformers import AutoModel, AutoProcessor

export, beams, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
model = AutoModel.from_pretrained(export, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(export, trust_remote_code=True)
inputs = processor(images=[Image.open(p).convert("RGB") for p in paths], return_tensors="pt")
ids = model.generate(**inputs, max_new_tokens=8, num_beams=beams)
print(json.dumps(processor.batch_decode(ids, skip_special_tokens=True)))
"""


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_transformers_alone_captions_with_the_hf_encoder(kind: str, tmp_path: Path) -> None:
    import polycap
    from polycap.builtin.english import ENGLISH
    from polycap.demo.runner import build_tiny_models
    from polycap.inference.pipeline import encoder_for
    from polycap.interop.sharing import export_hf
    from polycap.model.captioner import Captioner

    encoder = build(kind, tmp_path / kind)
    lm = build_tiny_models(ENGLISH, CAPTIONS, tmp_path / "models", seed=0)["lm"]
    record = {"backend": "hf", "name": str(encoder), "embed_dim": EMBED_DIM[kind]}
    tokenizer, decoder = ENGLISH.load_tokenizer(lm), ENGLISH.load_decoder(lm)
    model = Captioner.build(ENGLISH, tokenizer, decoder, record, prefix_length=2)
    torch.manual_seed(0)
    model.set_feature_stats(torch.randn(8, EMBED_DIM[kind]))
    export = export_hf(model, tmp_path / "export", encoder=encoder_for(model))
    assert json.loads((export / "config.json").read_text())["image_encoder"]["backend"] == (
        "transformers"
    )
    paths = pictures(tmp_path / "images")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env["HF_MODULES_CACHE"] = os.path.join(tempfile.gettempdir(), "polycap-test-hf-modules")
    env.pop("PYTHONPATH", None)
    for beams in (1, 3):
        expected = polycap.load(export).caption(paths, max_length=8, beams=beams)
        command = [sys.executable, str(NO_POLYCAP), "-c", SCRIPT, str(export), str(beams)]
        done = subprocess.run(
            [*command, *map(str, paths)], capture_output=True, text=True, env=env, cwd=tmp_path
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads(done.stdout.splitlines()[-1]) == expected, beams
