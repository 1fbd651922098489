"""One caption path (issue 19): for a plain and a retrieval-augmented model, ``polycap caption
--json``, the Python API (``polycap.load(m).caption``), ``POST /caption`` and
``POST /v1/chat/completions`` give identical captions for the same images and options."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cli_runner import run_cli
from serve_helpers import build_bank, cli_captions, client, run
from tiny_setup import tiny_captioner

pytest.importorskip("fastapi")

CAPTIONS = ["a red circle", "two blue squares", "a green triangle", "three yellow circles"] * 5
OPTIONS = {  # Python / request options -> `polycap caption` options
    "greedy": ({"max_length": 8}, ["--max-length", "8"]),
    "beam 3": ({"max_length": 8, "beams": 3}, ["--max-length", "8", "--beams", "3"]),
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A plain checkpoint, a bank built with its encoder, and the same model recorded as
    retrieval-augmented with that bank (k=2): the prompt is all that differs."""
    from polycap.model.augmented import RetrievalSetup
    from polycap.offline.synthetic import make_synthetic_set
    from polycap.plugins import get_registries
    from polycap.retrieval.bank import Bank

    english = get_registries().languages.get("en")
    root = tmp_path_factory.mktemp("paths")
    shapes = make_synthetic_set(english, root / "shapes", 16, seed=6)
    model = tiny_captioner(english, CAPTIONS, root, seed=1, train_lm=True)
    plain = model.save(root / "plain")
    bank = build_bank(shapes.train_file, plain, root / "bank", "en")
    model.config["retrieval"] = RetrievalSetup.for_bank(Bank.open(bank), english, k=2).to_json()
    augmented = model.save(root / "augmented")
    images = sorted(shapes.image_dir.glob("*.png"))[:5]
    return {"plain": plain, "augmented": augmented, "images": images}


def api_captions(model: Path, images: list[Path], options: dict) -> dict[str, list[str]]:
    import polycap

    found = polycap.load(model, device="cpu").caption(images, **options)
    return {path.name: [caption] for path, caption in zip(images, found, strict=True)}


def server_captions(model: Path, images: list[Path], options: dict) -> dict[str, list[str]]:
    """``POST /caption`` with all the images in one request, and each image alone through
    ``/v1/chat/completions``: both must agree."""
    from polycap.serve.app import create_app
    from polycap.serve.models import load_models

    app = create_app(load_models([str(model)]))
    chat_options = {"max_tokens": options["max_length"], "beams": options.get("beams")}

    async def ask():
        async with client(app) as http:
            files = [("images", (p.name, p.read_bytes(), "image/png")) for p in images]
            fields = {key: str(value) for key, value in options.items()}
            native = await http.post("/caption", files=files, data=fields)
            chats = [
                await http.post("/v1/chat/completions", json=chat(p, chat_options)) for p in images
            ]
            return native, chats

    native, chats = run(ask())
    assert native.status_code == 200, native.text
    found = {row["image"]: row["captions"] for row in native.json()["results"]}
    for path, reply in zip(images, chats, strict=True):
        assert reply.status_code == 200, reply.text
        assert [c["message"]["content"] for c in reply.json()["choices"]] == found[path.name]
    return found


def chat(path: Path, options: dict) -> dict:
    url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    return {"model": "polycap-en", "messages": [message], **options}


@pytest.mark.parametrize("strategy", list(OPTIONS))
@pytest.mark.parametrize("which", ["plain", "augmented"])
def test_every_door_gives_the_same_captions(setup, capsys, which: str, strategy: str) -> None:
    model, images = setup[which], setup["images"]
    options, cli_options = OPTIONS[strategy]
    from_cli = cli_captions(run_cli, capsys, model, images, *cli_options)
    assert api_captions(model, images, options) == from_cli
    assert server_captions(model, images, options) == from_cli
    assert all(captions[0] for captions in from_cli.values())


@pytest.mark.parametrize("strategy", list(OPTIONS))
def test_the_augmented_prompt_changes_the_captions(setup, strategy: str) -> None:
    """Otherwise the test above could not tell the augmented path from plain decoding: the
    same model decoded without its bank's prompt (what an entry point bypassing the pipeline
    would give) captions at least one image differently."""
    import polycap
    from polycap.inference.pipeline import generation_config
    from polycap.model.generation import caption_features

    captioner = polycap.load(setup["augmented"], device="cpu")
    options = OPTIONS[strategy][0]
    features = captioner.features(setup["images"])
    bypass = caption_features(captioner.model, features, generation_config(options))
    assert [row[0] for row in bypass] != captioner.caption(setup["images"], **options)
