"""ONNX export run by ONNX Runtime: the same tokens as PyTorch, through the same decoding loops.

The model is the tiny fitted captioner (captions of different lengths that end with the end
token, so rows leave the batch at different steps); it is exported once for the module.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers_lm import (
    english_pack,
    make_registries,
    new_captioner,
    trained_captioner,
)

from polycap.errors import BadInput
from polycap.model.generation import GenerationConfig, caption_features, generate_ids

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

MAX = 12


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    from polycap.interop.onnx_export import export_onnx
    from polycap.interop.onnx_runtime import OnnxCaptioner

    model, features, texts = trained_captioner()
    folder = export_onnx(model, tmp_path_factory.mktemp("onnx") / "export", encoder=None)
    runtime = OnnxCaptioner(folder, registries=make_registries(english_pack()), threads=1)
    return model, runtime, features, texts, folder


CONFIGS = [
    GenerationConfig(max_length=MAX),
    GenerationConfig(max_length=MAX, beams=3, num_captions=3),
]
# repetition_penalty / no_repeat_ngram_size run in the same loops for ONNX Runtime
PENALISED = [
    GenerationConfig(max_length=MAX, repetition_penalty=1.5, no_repeat_ngram_size=2),
    GenerationConfig(max_length=MAX, beams=3, num_captions=3, no_repeat_ngram_size=1),
]


@pytest.mark.parametrize("config", PENALISED, ids=["greedy", "beam"])
def test_onnx_applies_the_repetition_settings_as_pytorch_does(exported, config) -> None:
    model, runtime, features, _, _ = exported
    ours = generate_ids(runtime, features, config)
    assert ours == generate_ids(model, features, config)
    if config.beams > 1:  # lower beams reuse tokens; the setting changes what they say
        plain = GenerationConfig(**{**config.to_json(), "no_repeat_ngram_size": 0})
        assert ours != generate_ids(runtime, features, plain)


@pytest.mark.parametrize("config", CONFIGS, ids=["greedy", "beam"])
def test_onnx_gives_the_same_tokens_as_pytorch_for_a_batch(exported, config) -> None:
    model, runtime, features, _, _ = exported
    ours = generate_ids(runtime, features, config)
    assert ours == generate_ids(model, features, config)
    lengths = {len(captions[0]) for captions in ours}
    assert len(lengths) > 1 and max(lengths) < MAX  # rows ended at different steps


@pytest.mark.parametrize("config", CONFIGS, ids=["greedy", "beam"])
def test_onnx_gives_the_same_tokens_as_pytorch_one_image_at_a_time(exported, config) -> None:
    model, runtime, features, _, _ = exported
    for row in features[:3]:
        assert generate_ids(runtime, row, config) == generate_ids(model, row, config)


def test_onnx_seeded_sampling_draws_what_pytorch_draws(exported) -> None:
    model, runtime, features, _, _ = exported
    config = GenerationConfig(max_length=MAX, sample=True, seed=3, num_captions=2, top_k=20)
    assert generate_ids(runtime, features, config) == generate_ids(model, features, config)


def test_onnx_captions_are_the_learnt_texts(exported) -> None:
    _, runtime, features, texts, _ = exported
    captions = caption_features(runtime, features, GenerationConfig(max_length=MAX))
    assert captions == [[text] for text in texts]


def test_onnx_untrained_model_runs_to_the_token_cap_like_pytorch(tmp_path: Path) -> None:
    from polycap.interop.onnx_export import export_onnx
    from polycap.interop.onnx_runtime import OnnxCaptioner

    model = new_captioner(seed=5, prefix_length=3).eval()
    folder = export_onnx(model, tmp_path / "random", encoder=None)
    runtime = OnnxCaptioner(folder, registries=make_registries(english_pack()))
    features = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    for config in CONFIGS:
        assert generate_ids(runtime, features, config) == generate_ids(model, features, config)


def test_manifest_names_tokenizer_stop_token_cache_and_defaults(exported) -> None:
    model, _, _, _, folder = exported
    manifest = json.loads((folder / "polycap-onnx.json").read_text())
    assert manifest["format"] == "polycap-onnx"
    assert manifest["stop_token_id"] == model.end_token_id
    assert manifest["stop_token"] == "<|endoftext|>"
    assert (folder / manifest["tokenizer"] / "tokenizer_config.json").is_file()
    assert manifest["past"]["layers"] == 2 and manifest["past"]["heads"] == 2
    assert manifest["generation"]["max_length"] == GenerationConfig().max_length
    assert manifest["graphs"]["image_encoder"] is None
    assert manifest["checkpoint"]["prefix_length"] == model.prefix_length


def test_onnx_without_an_encoder_says_so(exported) -> None:
    _, runtime, _, _, _ = exported
    with pytest.raises(BadInput, match="no image encoder"):
        runtime.image_encoder()


def test_a_broken_export_is_one_clear_line(exported, tmp_path: Path) -> None:
    import shutil

    from polycap.interop.onnx_runtime import OnnxCaptioner

    _, _, _, _, folder = exported
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "decoder.onnx").write_bytes(b"not a graph")
    registries = make_registries(english_pack())
    with pytest.raises(BadInput, match=r"decoder\.onnx: not a loadable ONNX graph"):
        OnnxCaptioner(broken, registries=registries)
    (broken / "polycap-onnx.json").write_text("{")
    with pytest.raises(BadInput, match="not valid JSON"):
        OnnxCaptioner(broken, registries=registries)


def _edit(manifest: dict, case: str) -> str:
    """Damage ``manifest`` as ``case`` says; returns what the error must say."""
    if case == "no past":
        del manifest["past"]
        return "no 'past'"
    if case == "no decoder graph":
        del manifest["graphs"]["decoder"]
        return "no 'graphs.decoder'"
    if case == "prefix length a string":
        manifest["prefix_length"] = "2"
        return "'prefix_length' is '2'"
    if case == "prefix length a float":
        manifest["prefix_length"] = 2.5
        return "'prefix_length' is 2.5"
    if case == "past layers missing":
        del manifest["past"]["layers"]
        return "no 'past.layers'"
    if case == "graph outside":
        manifest["graphs"]["decoder"] = "../../outside/decoder.onnx"
        return "outside the export's folder"
    if case == "graph absolute":
        manifest["graphs"]["mapper"] = "/etc/passwd"
        return "outside the export's folder"
    if case == "tokenizer outside":
        manifest["tokenizer"] = "../.."
        return "outside the export's folder"
    raise AssertionError(case)


MANIFEST_CASES = [
    "no past",
    "no decoder graph",
    "prefix length a string",
    "prefix length a float",
    "past layers missing",
    "graph outside",
    "graph absolute",
    "tokenizer outside",
]


@pytest.mark.parametrize("case", MANIFEST_CASES)
def test_a_damaged_manifest_is_one_line_naming_it(exported, tmp_path: Path, case) -> None:
    import shutil

    from polycap.interop.onnx_runtime import OnnxCaptioner

    _, _, _, _, folder = exported
    broken = tmp_path / "a" / "b" / "broken"
    shutil.copytree(folder, broken)
    (tmp_path / "outside").mkdir()
    shutil.copy(folder / "decoder.onnx", tmp_path / "outside" / "decoder.onnx")  # loadable
    manifest = json.loads((broken / "polycap-onnx.json").read_text())
    says = _edit(manifest, case)
    (broken / "polycap-onnx.json").write_text(json.dumps(manifest))
    with pytest.raises(BadInput) as caught:
        OnnxCaptioner(broken, registries=make_registries(english_pack()))
    message = str(caught.value)
    assert "polycap-onnx.json" in message and says in message and "\n" not in message


def test_a_graph_linked_out_of_the_folder_is_refused(exported, tmp_path: Path) -> None:
    import shutil

    from polycap.interop.onnx_runtime import OnnxCaptioner

    _, _, _, _, folder = exported
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shutil.move(broken / "decoder.onnx", tmp_path / "decoder.onnx")
    (broken / "decoder.onnx").symlink_to(tmp_path / "decoder.onnx")
    with pytest.raises(BadInput, match="outside the export's folder"):
        OnnxCaptioner(broken, registries=make_registries(english_pack()))
