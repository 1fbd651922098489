"""Exports that work without polycap (issue 21).

A ``--to hf`` export loads with transformers alone (``AutoModel`` / ``AutoProcessor`` with
``trust_remote_code``) and captions as ``polycap caption`` does, greedy and beam; its stock
decoder folder takes the prefix as ``inputs_embeds`` (what a vLLM server of it is sent); a
``--to onnx`` export's ``run_onnx.py`` captions image files with numpy, onnxruntime, tokenizers
and Pillow. Each runs in a process where ``import polycap`` fails (``tests/no_polycap.py``), and
fails when the export lacks a file it needs. Neither export names a path of the machine that
built it; everything polycap writes honours the umask.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tiny_setup import tiny_captioner

from polycap.builtin.english import ENGLISH

HERE = Path(__file__).resolve().parent
CAPTIONS = ["a red circle", "two blue squares", "a green triangle", "three yellow circles"] * 5
MAX_LENGTH = 8


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint (frozen tiny GPT-2, tiny open_clip ViT with local weights, standardised
    features) and three images, one of them not square."""
    import torch

    root = tmp_path_factory.mktemp("standalone")
    model = tiny_captioner(ENGLISH, CAPTIONS, root)
    model.set_feature_stats(torch.randn(16, 64, generator=torch.Generator().manual_seed(0)))
    saved = os.umask(0o022)
    try:
        checkpoint = model.save(root / "checkpoint", training={"data": str(root / "train.json")})
    finally:
        os.umask(saved)
    images = root / "images"
    images.mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(images / "red.png")
    Image.new("RGB", (50, 30), (20, 30, 200)).save(images / "blue.png")
    noise = np.random.default_rng(0).integers(0, 256, (53, 71, 3), dtype=np.uint8)
    Image.fromarray(noise).save(images / "noise.png")
    paths = [images / name for name in ("red.png", "blue.png", "noise.png")]
    return {"root": root, "checkpoint": checkpoint, "images": images, "paths": paths}


@pytest.fixture(scope="module")
def hf_export(made, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "tiny-en"
    _cli(["export", str(made["checkpoint"]), "--to", "hf", str(out)])
    return out


@pytest.fixture(scope="module")
def onnx_export(made, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "tiny-en-onnx"
    _cli(["export", str(made["checkpoint"]), "--to", "onnx", str(out)])
    return out


def _cli(args: list[str]) -> str:
    """``polycap ARGS`` in a new process (as a user runs it); its stdout."""
    command = [sys.executable, "-m", "polycap", *args]
    done = subprocess.run(
        command, capture_output=True, text=True, env=_env(polycap=True), umask=0o022
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _env(polycap: bool = False) -> dict[str, str]:
    """The environment of a child process: offline; transformers' remote-code module cache in
    the temp folder; polycap's tree on the path only when it is wanted."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if polycap:
        env["PYTHONPATH"] = str(HERE.parent)
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_MODULES_CACHE"] = os.path.join(tempfile.gettempdir(), "polycap-test-hf-modules")
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    return env


def without_polycap(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python tests/no_polycap.py ARGS`` in ``cwd``: a process where polycap cannot load."""
    command = [sys.executable, str(HERE / "no_polycap.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=_env())


def polycap_captions(model: Path, paths: list[Path], *extra: str) -> list[str]:
    args = ["caption", *map(str, paths), "--model", str(model), "--json", "--device", "cpu"]
    out = _cli([*args, "--max-length", str(MAX_LENGTH), *extra])
    return [item["captions"][0] for item in json.loads(out)["captions"]]


TRANSFORMERS_CAPTIONS = f"MAX_LENGTH = {MAX_LENGTH}\n" + (
    """
import json, sys
from PIL import Image
from transformers import AutoModel, AutoProcessor

export, beams, paths = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
model = AutoModel.from_pretrained(export, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(export, trust_remote_code=True)
images = [Image.open(path).convert("RGB") for path in paths]
inputs = processor(images=images, return_tensors="pt")
ids = model.generate(**inputs, max_new_tokens=MAX_LENGTH, num_beams=beams)
print(json.dumps(processor.batch_decode(ids, skip_special_tokens=True)))
"""
)


def transformers_captions(export: Path, paths: list[Path], beams: int, cwd: Path):
    done = without_polycap(
        "-c", TRANSFORMERS_CAPTIONS, str(export), str(beams), *map(str, paths), cwd=cwd
    )
    return done, (json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else None)


def test_transformers_alone_captions_as_polycap_does(made, hf_export, tmp_path) -> None:
    for beams in (1, 3):
        extra = ("--beams", str(beams))
        expected = polycap_captions(hf_export, made["paths"], *extra)
        assert expected == polycap_captions(made["checkpoint"], made["paths"], *extra)
        done, captions = transformers_captions(hf_export, made["paths"], beams, tmp_path)
        assert done.returncode == 0, done.stderr
        assert captions == expected, beams
    greedy = polycap_captions(hf_export, made["paths"])
    assert greedy != polycap_captions(hf_export, made["paths"], "--beams", "3")  # both count


@pytest.mark.parametrize(
    "needed",
    ["image_encoder/open_clip_config.json", "feature_stats.safetensors", "steps_polycap.py"],
)
def test_transformers_alone_fails_without_a_file_it_needs(made, hf_export, tmp_path, needed):
    broken = tmp_path / "broken-export"
    shutil.copytree(hf_export, broken)
    (broken / needed).unlink()
    done, _ = transformers_captions(broken, made["paths"][:1], 1, tmp_path)
    assert done.returncode != 0
    assert Path(needed).name in done.stderr or Path(needed).stem in done.stderr, done.stderr[-2000:]


DECODER_CONTRACT = f"MAX_LENGTH = {MAX_LENGTH}\n" + (
    """
import base64, io, json, sys
import torch
from transformers import AutoModelForCausalLM

export, paths = sys.argv[1], sys.argv[2:]
sys.path.insert(0, export)
import vllm_client

processor, config, prefix = vllm_client.prefixes(vllm_client.Path(export), paths)
decoder = AutoModelForCausalLM.from_pretrained(export + "/" + config.decoder_folder)
captions = []
for row in prefix:
    body = vllm_client.request_body("polycap", row, MAX_LENGTH, config.stop_token_id)
    sent = torch.load(io.BytesIO(base64.b64decode(body["prompt_embeds"])), weights_only=True)
    assert torch.equal(sent, row) and sent.shape == (config.prefix_length, decoder.config.n_embd)
    ids = decoder.generate(
        inputs_embeds=sent[None], attention_mask=torch.ones(1, sent.shape[0], dtype=torch.long),
        max_new_tokens=body["max_tokens"], do_sample=False, eos_token_id=body["stop_token_ids"],
        pad_token_id=config.pad_token_id,
    )
    captions.append(processor.clean(processor.tokenizer.decode(ids[0], skip_special_tokens=True)))
print(json.dumps(captions))
"""
)


def test_the_stock_decoder_takes_the_prefix_as_vllm_is_sent_it(made, hf_export, tmp_path):
    """The contract the vLLM client relies on: the decoder folder, given the prefix the client
    serialises as ``prompt_embeds``, decodes greedily to polycap's captions."""
    done = without_polycap(
        "-c", DECODER_CONTRACT, str(hf_export), *map(str, made["paths"]), cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == polycap_captions(hf_export, made["paths"])


def test_the_image_processor_gives_open_clips_pixels(made, hf_export) -> None:
    """steps_polycap (Pillow + numpy) against open_clip's own transform, on odd sizes."""
    import torch

    from polycap.inference.pipeline import encoder_for, load_captioner
    from polycap.interop.standalone.steps_polycap import preprocess

    encoder = encoder_for(load_captioner(made["checkpoint"], device="cpu"))
    settings = json.loads((hf_export / "preprocessor_config.json").read_text())
    sizes = [(53, 71), (71, 53), (64, 64), (20, 300), (9, 9)]
    for size in sizes:
        noise = np.random.default_rng(sum(size)).integers(0, 256, (*size, 3), dtype=np.uint8)
        image = Image.fromarray(noise)
        ours = torch.from_numpy(preprocess(image, settings))
        assert torch.allclose(ours, encoder.preprocess(image), atol=1e-6), size


def test_the_export_names_its_parts_for_transformers(hf_export) -> None:
    config = json.loads((hf_export / "config.json").read_text())
    assert config["model_type"] == "polycap"
    assert config["auto_map"]["AutoModel"] == "modeling_polycap.PolycapModel"
    for file in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (hf_export / "decoder" / file).is_file(), file  # a stock transformers folder
    assert (hf_export / config["mapper"]["file"]).name == "mapper.safetensors"
    record = json.loads((hf_export / "polycap.json").read_text())
    assert record["lm_dir"] == "decoder" and not (hf_export / "lm").exists()  # the LM once
    for path in hf_export.glob("*.py"):  # the remote code imports no polycap module
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not any(n.split(".")[0] == "polycap" for n in names), path.name


def run_onnx(export: Path, paths: list[Path], cwd: Path) -> subprocess.CompletedProcess:
    args = [str(export / "run_onnx.py"), *map(str, paths), "--max-length", str(MAX_LENGTH)]
    return without_polycap(*args, cwd=cwd)


def test_run_onnx_alone_captions_as_polycap_does(made, onnx_export, tmp_path) -> None:
    done = run_onnx(onnx_export, made["paths"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = polycap_captions(onnx_export, made["paths"])
    assert expected == polycap_captions(made["checkpoint"], made["paths"])
    assert done.stdout.splitlines() == expected


@pytest.mark.parametrize("needed", ["tokenizer/tokenizer.json", "steps_polycap.py", "mapper.onnx"])
def test_run_onnx_fails_without_a_file_it_needs(made, onnx_export, tmp_path, needed) -> None:
    broken = tmp_path / "broken-onnx"
    shutil.copytree(onnx_export, broken)
    (broken / needed).unlink()
    done = run_onnx(broken, made["paths"][:1], tmp_path)
    assert done.returncode != 0 and not done.stdout
    assert Path(needed).name in done.stderr or Path(needed).stem in done.stderr, done.stderr[-2000:]


def test_the_onnx_manifest_describes_every_graph(onnx_export) -> None:
    import onnxruntime as ort

    manifest = json.loads((onnx_export / "polycap-onnx.json").read_text())
    for role, file in manifest["graphs"].items():
        session = ort.InferenceSession(str(onnx_export / file), providers=["CPUExecutionProvider"])
        described = manifest["tensors"][role]
        for kind, actual in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
            assert [t["name"] for t in described[kind]] == [t.name for t in actual]
            assert [len(t["shape"]) for t in described[kind]] == [len(t.shape) for t in actual]
    assert manifest["tensors"]["decoder"]["inputs"][1] == {
        "name": "input_ids", "shape": ["batch", "tokens"], "dtype": "int64"
    }  # fmt: skip
    preprocessing = manifest["preprocessing"]
    for key in ("size", "mean", "std", "interpolation", "resize_mode", "steps"):
        assert preprocessing[key], key
    assert manifest["prefix_length"] == 2 and "stop_token_id" in manifest["stop_rule"]


def _text_files(folder: Path):
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            try:
                yield path, path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # weights, graphs


def test_no_path_of_the_building_machine_in_either_export(made, hf_export, onnx_export) -> None:
    forbidden = {str(made["root"]), tempfile.gettempdir() + "/", str(Path.home()) + "/"}
    forbidden.add(str(HERE.parent))
    searched = 0
    for export in (hf_export, onnx_export):
        for path, text in _text_files(export):
            searched += 1
            for fragment in forbidden:
                assert fragment not in text, f"{path.relative_to(export)} names {fragment}"
    assert searched > 20
    record = json.loads((hf_export / "polycap.json").read_text())
    assert record["encoder"]["pretrained"] == record["encoder"]["bundled"]
    assert record["training"] == {"data": "train.json"}


def _modes(folder: Path) -> set[tuple[str, int]]:
    """The modes of ``folder``'s folders and files (a file hard-linked from another folder is
    that folder's file, and keeps its mode)."""
    found = {("dir", folder.stat().st_mode & 0o777)}
    for path in folder.rglob("*"):
        if path.is_file() and path.stat().st_nlink > 1:
            continue
        found.add(("dir" if path.is_dir() else "file", path.stat().st_mode & 0o777))
    return found


@pytest.fixture
def umask():
    """Set the process umask for one test, and restore it after."""
    saved = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def test_exports_and_checkpoints_honour_the_umask(made, hf_export, onnx_export, umask, tmp_path):
    from polycap.inference.pipeline import encoder_for, load_captioner
    from polycap.interop.sharing import export_hf

    for export in (hf_export, onnx_export):  # written by a polycap process under umask 022
        assert _modes(export) == {("dir", 0o755), ("file", 0o644)}, export
    assert _modes(made["checkpoint"]) == {("dir", 0o755), ("file", 0o644)}
    umask(0o027)
    model = load_captioner(made["checkpoint"], device="cpu")
    assert _modes(model.save(tmp_path / "checkpoint")) == {("dir", 0o750), ("file", 0o640)}
    assert _modes(export_hf(model, tmp_path / "hf", encoder=encoder_for(model))) == {
        ("dir", 0o750),
        ("file", 0o640),
    }


def test_run_folders_and_reports_honour_the_umask(umask, tmp_path, capsys) -> None:
    from polycap.eval.report import write_report
    from polycap.util.run_folder import RunFolder

    for mask, folder_mode, file_mode in ((0o022, 0o755, 0o644), (0o077, 0o700, 0o600)):
        umask(mask)
        run = RunFolder(tmp_path / f"run-{mask:o}")
        run.claim({"lr": 0.001}, resume=False, overwrite=False)
        report = write_report(tmp_path / f"report-{mask:o}.html", "scores", [])
        assert _modes(run.path) == {("dir", folder_mode), ("file", file_mode)}
        assert report.stat().st_mode & 0o777 == file_mode


def test_the_exported_beam_search_is_polycaps(trained, made) -> None:
    """The remote code's beam search (ranked by log-probability over length at every step, as
    polycap and ClipCap rank) against polycap's own, at several widths: on a trained model
    whose captions end at different lengths, and on a random one with a frequent stop token
    (flat distributions: beams that have ended compete with longer ones, where the ranking
    differs from transformers' own beam search)."""
    import torch

    from polycap.interop.standalone.modeling_polycap import beam_search
    from polycap.language import cut_at_end
    from polycap.model.generation import GenerationConfig, generate_ids

    flat = tiny_captioner(ENGLISH, CAPTIONS, made["root"] / "flat", stop_token=",")
    random_features = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    for model, features in ((trained[0], trained[1]), (flat, random_features)):
        ends = (int(model.end_token_id), int(model.pad_token_id))
        for width in (2, 3, 5):
            config = GenerationConfig(12, beams=width)
            expected = [c[0] for c in generate_ids(model, features, config)]
            with torch.inference_mode():
                found = beam_search(model.lm, model.prefix(features), width, 12, ends).tolist()
            assert [cut_at_end(row, ends[0]) for row in found] == expected, width
