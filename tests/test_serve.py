"""``polycap serve``: the HTTP API on tiny local models, batching under concurrency, bad input."""

from __future__ import annotations

import base64
import json
import random
import struct
import zlib
from pathlib import Path

import pytest
from cli_runner import run_cli
from PIL import Image
from serve_helpers import build_bank, build_checkpoint, cli_captions, client, png_bytes, run

from polycap.serve.app import create_app
from polycap.serve.models import load_models
from polycap.serve.settings import ServeSettings

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

CAPTIONS = ["a red circle", "two blue squares", "a green triangle", "three yellow circles"] * 5
OPTION_SETS = {  # request fields -> the same options for `polycap caption`
    "greedy": ({"max_length": 6}, ["--max-length", "6"]),
    "beam": (
        {"beams": 3, "num_captions": 2, "max_length": 6},
        ["--beams", "3", "--num-captions", "2", "--max-length", "6"],
    ),
    "sampled": (
        {"sample": True, "top_p": 0.9, "seed": 3, "max_length": 6},
        ["--sample", "--top-p", "0.9", "--seed", "3", "--max-length", "6"],
    ),
    "penalised": (
        {"repetition_penalty": 1.5, "no_repeat_ngram_size": 1, "max_length": 6},
        ["--repetition-penalty", "1.5", "--no-repeat-ngram-size", "1", "--max-length", "6"],
    ),
}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory):
    from polycap.offline.synthetic import make_synthetic_set
    from polycap.plugins import get_registries

    english = get_registries().languages.get("en")
    return make_synthetic_set(english, tmp_path_factory.mktemp("shapes"), 30, seed=4)


@pytest.fixture(scope="module")
def images(shapes) -> list[Path]:
    return sorted(shapes.image_dir.glob("*.png"))[:16]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint("en", CAPTIONS, tmp_path_factory.mktemp("serve-en"))


@pytest.fixture(scope="module")
def bank(shapes, checkpoint, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bank(shapes.train_file, checkpoint, tmp_path_factory.mktemp("b") / "bank", "en")


@pytest.fixture(scope="module")
def models(checkpoint, bank):
    return load_models([str(checkpoint)], [str(bank)])


def make_app(models, **settings):
    app = create_app(models, ServeSettings(**settings))
    return app


def post_caption(http, path: Path, fields: dict):
    files = {"image": (path.name, path.read_bytes(), "image/png")}
    data = {
        key: str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in fields.items()
    }
    return http.post("/caption", files=files, data=data)


# -- the API ------------------------------------------------------------------------------------


def test_caption_by_upload_and_by_json_match_the_cli(models, checkpoint, images, capsys) -> None:
    app = make_app(models)
    image = images[0]

    async def both():
        async with client(app) as http:
            upload = await post_caption(http, image, {"max_length": 6})
            encoded = base64.b64encode(image.read_bytes()).decode()
            as_json = await http.post("/caption", json={"image": encoded, "max_length": 6})
            data_url = await http.post(
                "/caption", json={"image": f"data:image/png;base64,{encoded}", "max_length": 6}
            )
            return upload, as_json, data_url

    upload, as_json, data_url = run(both())
    expected = cli_captions(run_cli, capsys, checkpoint, [image], "--max-length", "6")
    for reply in (upload, as_json, data_url):
        assert reply.status_code == 200, reply.text
        assert reply.json()["captions"] == expected[image.name]
        assert reply.json()["language"] == "en"
    assert upload.json()["image"] == image.name
    import polycap

    assert polycap.load(checkpoint).caption(image, max_length=6) == expected[image.name][0]


def test_concurrent_requests_are_batched_and_each_gets_what_the_cli_gives(
    models, checkpoint, images, capsys
) -> None:
    app = make_app(models, max_batch=8, batch_wait_ms=50)
    sampled_images = images[:3]
    jobs = [(name, path) for name in ("greedy", "beam", "penalised") for path in images]
    jobs += [("sampled", path) for path in sampled_images]
    random.Random(0).shuffle(jobs)

    async def all_at_once():
        import asyncio

        async with client(app) as http:
            replies = await asyncio.gather(
                *(post_caption(http, path, OPTION_SETS[name][0]) for name, path in jobs)
            )
        return replies

    replies = run(all_at_once())
    expected = {
        name: cli_captions(run_cli, capsys, checkpoint, images, *OPTION_SETS[name][1])
        for name in ("greedy", "beam", "penalised")
    }
    expected["sampled"] = {}  # a seed's samples depend on the batch: the CLI one image at a time
    for path in sampled_images:
        expected["sampled"].update(
            cli_captions(run_cli, capsys, checkpoint, [path], *OPTION_SETS["sampled"][1])
        )
    batch_sizes = {"greedy": [], "beam": [], "penalised": [], "sampled": []}
    for (name, path), reply in zip(jobs, replies, strict=True):
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["captions"] == expected[name][path.name], (name, path.name)
        batch_sizes[name].append(body["batch_size"])
    assert max(batch_sizes["greedy"]) > 1 and max(batch_sizes["beam"]) > 1  # really batched
    assert max(batch_sizes["penalised"]) > 1  # repetition settings batch like any others
    assert max(batch_sizes["greedy"] + batch_sizes["beam"] + batch_sizes["penalised"]) <= 8
    assert batch_sizes["sampled"] == [1, 1, 1]  # seeded sampling decodes alone
    assert len({tuple(c) for c in expected["greedy"].values()}) > 1  # images differ
    batcher = app.state.service.batcher
    assert batcher.items == len(jobs) and batcher.batches < len(jobs)


def test_batching_off_answers_one_request_per_batch(models, images) -> None:
    app = make_app(models, max_batch=1)

    async def some():
        import asyncio

        async with client(app) as http:
            return await asyncio.gather(
                *(post_caption(http, p, {"max_length": 4}) for p in images[:4])
            )

    assert [reply.json()["batch_size"] for reply in run(some())] == [1, 1, 1, 1]


def test_retrieve_matches_the_cli(models, bank, images, capsys) -> None:
    app = make_app(models)

    async def ask():
        async with client(app) as http:
            files = {"image": (images[1].name, images[1].read_bytes(), "image/png")}
            return await http.post("/retrieve", files=files, data={"k": "3"})

    reply = run(ask())
    assert reply.status_code == 200, reply.text
    result = run_cli(
        ["retrieve", str(images[1]), "--bank", str(bank), "--k", "3", "--json"], capsys
    )
    assert result.code == 0, result.err
    expected = json.loads(result.out)["results"][0]["captions"]
    got = reply.json()["captions"]
    assert [row["caption"] for row in got] == [row["caption"] for row in expected]
    assert [row["caption_id"] for row in got] == [row["caption_id"] for row in expected]


def test_health_info_and_openapi(models, checkpoint, bank) -> None:
    app = make_app(models)

    async def ask():
        async with client(app) as http:
            return [
                await http.get(path) for path in ("/health", "/info", "/openapi.json", "/docs", "/")
            ]

    health, info, openapi, docs, page = run(ask())
    assert health.json() == {"status": "ok", "languages": ["en"]}
    body = info.json()
    assert body["models"][0]["language"] == "en"
    assert body["models"][0]["model"] == f"{checkpoint.parent.name}/checkpoint"  # a name
    assert body["models"][0]["id"] == "polycap-en"
    assert body["models"][0]["encoder"]["name"] == "polycap-tiny-vit"
    assert body["models"][0]["bank"] == {
        "name": "bank",
        "captions": body["models"][0]["bank"]["captions"],
        "images": body["models"][0]["bank"]["images"],
        "text_embeddings": True,
        "encoder": "polycap-tiny-vit",
    }
    assert body["models"][0]["bank"]["captions"] > 0
    assert {"polycap", "torch", "transformers", "fastapi"} <= set(body["versions"])
    content = openapi.json()["paths"]["/caption"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(content)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert page.status_code == 200 and 'id="files"' in page.text


# -- several models ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def japanese_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    captions = ["赤い丸が一つ", "青い四角が二つ", "緑の三角", "黄色い丸が三つ"] * 5
    return build_checkpoint("ja", captions, tmp_path_factory.mktemp("serve-ja"))


def test_each_request_chooses_its_language(checkpoint, japanese_checkpoint, images, capsys) -> None:
    models = load_models([f"en={checkpoint}", f"ja={japanese_checkpoint}"])
    app = make_app(models)

    async def ask():
        async with client(app) as http:
            english = await post_caption(http, images[2], {"max_length": 5})
            japanese = await post_caption(http, images[2], {"language": "ja", "max_length": 5})
            russian = await post_caption(http, images[2], {"language": "ru"})
            return english, japanese, russian

    english, japanese, russian = run(ask())
    assert english.json()["language"] == "en"
    assert japanese.json()["language"] == "ja"
    expected = cli_captions(run_cli, capsys, japanese_checkpoint, [images[2]], "--max-length", "5")
    assert japanese.json()["captions"] == expected[images[2].name]
    assert russian.status_code == 404
    assert russian.json() == {"error": "no model loaded for language 'ru' (loaded: en, ja)"}


def test_a_model_given_under_the_wrong_language_is_refused(checkpoint) -> None:
    from polycap.errors import BadInput

    with pytest.raises(BadInput, match="trained for language 'en', not 'ja'"):
        load_models([f"ja={checkpoint}"])


# -- bad input ----------------------------------------------------------------------------------


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A small PNG file whose header declares ``width`` x ``height`` grey pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * (width + 1) * 4, 9)  # a few rows; the rest never decoded
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def good_png() -> bytes:
    return png_bytes(Image.new("RGB", (40, 40), (200, 30, 30)))


BAD_REQUESTS = {
    "not an image": (400, {"files": {"image": ("notes.txt", b"hello", "text/plain")}}, "notes.txt"),
    "truncated image": (
        400,
        {"files": {"image": ("cut.png", good_png()[:60], "image/png")}},
        "cut.png: not a readable image",
    ),
    "decompression bomb": (
        413,
        {"files": {"image": ("bomb.png", bomb_png(), "image/png")}},
        "100000x100000",
    ),
    "too many pixels for the limit": (
        413,
        {"files": {"image": ("big.png", png_bytes(Image.new("RGB", (300, 300))), "image/png")}},
        "more than the limit of 50,000",
    ),
    "over the size limit": (
        413,
        {"files": {"image": ("huge.png", b"\x89PNG" + b"\x00" * 300_000, "image/png")}},
        "too large",
    ),
    "unknown option": (
        422,
        {"files": {"image": ("a.png", good_png(), "image/png")}, "data": {"beems": "3"}},
        "unknown option 'beems'",
    ),
    "invalid option value": (
        422,
        {"files": {"image": ("a.png", good_png(), "image/png")}, "data": {"beams": "0"}},
        "beams:",
    ),
    "beam search and sampling": (
        422,
        {
            "files": {"image": ("a.png", good_png(), "image/png")},
            "data": {"beams": "2", "sample": "true"},
        },
        "not both",
    ),
    "longer than the LM": (
        422,
        {"files": {"image": ("a.png", good_png(), "image/png")}, "data": {"max_length": "1000"}},
        "max_length: at most",
    ),
    "language with no model": (
        404,
        {"files": {"image": ("a.png", good_png(), "image/png")}, "data": {"language": "zh"}},
        "no model loaded for language 'zh'",
    ),
    "no image": (400, {"data": {"beams": "2"}, "files": {"other": ("x", b"x")}}, "no image"),
    "bad base64": (400, {"json": {"image": "***"}}, "not valid base64"),
    "JSON unknown option": (
        422,
        {"json": {"image": base64.b64encode(good_png()).decode(), "colour": 1}},
        "unknown option 'colour'",
    ),
    "not JSON": (
        400,
        {"content": b"{nope", "headers": {"content-type": "application/json"}},
        "not valid JSON",
    ),
    "wrong content type": (
        415,
        {"content": b"abc", "headers": {"content-type": "text/plain"}},
        "unsupported content type",
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_4xx_with_one_line(models, case: str) -> None:
    status, request, fragment = BAD_REQUESTS[case]
    app = make_app(models, max_upload_bytes=200_000, max_pixels=50_000)

    async def ask():
        async with client(app) as http:
            return await http.post("/caption", **request)

    reply = run(ask())
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert list(body) == ["error"] and "\n" not in body["error"], body
    assert fragment in body["error"]
    assert "Traceback" not in reply.text


def test_bad_input_on_retrieve_and_unknown_paths(checkpoint, models) -> None:
    without_bank = make_app(load_models([str(checkpoint)]))
    with_bank = make_app(models)
    upload = {"files": {"image": ("a.png", good_png(), "image/png")}}

    async def ask():
        async with client(without_bank) as http:
            no_bank = await http.post("/retrieve", **upload)
            missing = await http.get("/nowhere")
        async with client(with_bank) as http:
            consensus = await http.post("/retrieve", data={"consensus": "true"}, **upload)
            bad_mode = await http.post("/retrieve", data={"mode": "sound"}, **upload)
        return no_bank, missing, consensus, bad_mode

    no_bank, missing, consensus, bad_mode = run(ask())
    assert (no_bank.status_code, no_bank.json()) == (
        404,
        {"error": "no bank loaded for language 'en'"},
    )
    assert missing.status_code == 404 and list(missing.json()) == ["error"]
    assert consensus.status_code == 422 and "mode=image" in consensus.json()["error"]
    assert bad_mode.status_code == 422 and bad_mode.json()["error"].startswith("mode:")


def test_uploads_are_never_written_to_disk(models, monkeypatch) -> None:
    """A 2 MB upload (over Starlette's 1 MB spooling threshold) stays in memory."""
    import tempfile

    def refuse(*args, **kwargs):
        raise AssertionError("an upload was about to be written to a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    noise = Image.frombytes("RGB", (900, 800), random.Random(1).randbytes(900 * 800 * 3))
    data = png_bytes(noise)
    assert len(data) > 2 * 1024 * 1024
    app = make_app(models)

    async def ask():
        async with client(app) as http:
            files = {"image": ("noise.png", data, "image/png")}
            return await http.post("/caption", files=files, data={"max_length": "3"})

    reply = run(ask())
    assert reply.status_code == 200, reply.text


# -- the command --------------------------------------------------------------------------------


def test_polycap_serve_runs_on_loopback(checkpoint, images) -> None:
    """The real command in its own process: it binds 127.0.0.1, serves, stops on SIGTERM."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "polycap", "serve", "--model", str(checkpoint)]
    command += ["--port", str(port), "--device", "cpu", "--log-level", "warning"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "polycap serve did not come up"
            time.sleep(0.3)
        files = {"image": (images[0].name, images[0].read_bytes(), "image/png")}
        reply = httpx.post(f"http://127.0.0.1:{port}/caption", files=files, timeout=60)
        assert reply.status_code == 200 and reply.json()["captions"]
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    assert "serving en" in out and f"http://127.0.0.1:{port}/" in out
    assert "Traceback" not in err


def test_polycap_serve_with_a_bad_model_is_one_line(tmp_path, capsys) -> None:
    result = run_cli(["serve", "--model", str(tmp_path / "nothing")], capsys)
    assert result.code == 2
    assert "nothing: no such checkpoint" in " ".join(result.err.split())
    assert "Traceback" not in result.err
