"""``polycap serve`` under hostile input: decoded-image memory bounded per image and in total
(bytes, not only pixels: the 16-bit 6300x6300 PNG), several images per request answered per
image, no server path in any answer, client values not echoed back whole."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from pathlib import Path

import pytest
from cli_runner import run_cli
from PIL import Image
from serve_helpers import build_bank, build_checkpoint, cli_captions, client, png_bytes, run

from polycap.serve.app import create_app
from polycap.serve.models import load_models
from polycap.serve.settings import ServeSettings

pytest.importorskip("fastapi")

CAPTIONS = ["a red circle", "two blue squares", "a green triangle", "three yellow circles"] * 5
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from polycap.offline.synthetic import make_synthetic_set
    from polycap.plugins import get_registries

    root = tmp_path_factory.mktemp("limits")
    shapes = make_synthetic_set(get_registries().languages.get("en"), root / "shapes", 12, seed=2)
    checkpoint = build_checkpoint("en", CAPTIONS, root / "en")
    bank = build_bank(shapes.train_file, checkpoint, root / "bank", "en")
    models = load_models([str(checkpoint)], [str(bank)])
    images = sorted(shapes.image_dir.glob("*.png"))[:4]
    return {"root": root, "checkpoint": checkpoint, "models": models, "images": images}


@pytest.fixture(scope="module")
def sixteen_bit() -> bytes:
    """A 16-bit greyscale PNG of 6300 x 6300 (under the default pixel limit): a small file
    that is about 80 MB per copy once decoded."""
    import numpy as np

    values = np.zeros((6300, 6300), dtype=np.uint16)
    values[:, 3000:] = 40_000  # something to see
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    data = buffer.getvalue()
    assert len(data) < 200_000
    return data


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_an_image_over_the_decode_budget_is_refused_from_its_header(setup, sixteen_bit) -> None:
    from polycap.serve.memory import decode_cost

    cost = decode_cost(sixteen_bit)
    assert (cost.width, cost.height, cost.mode) == (6300, 6300, "I;16")
    assert cost.bytes > 6300 * 6300 * 2 * 4  # bytes per pixel counted, not only pixels
    app = create_app(setup["models"], ServeSettings(decode_memory_bytes=256 * MiB))

    async def ask():
        async with client(app) as http:
            files = {"image": ("deep.png", sixteen_bit, "image/png")}
            native = await http.post("/caption", files=files)
            message = {"role": "user", "content": [image_part(sixteen_bit)]}
            chat = {"model": "polycap-en", "messages": [message]}
            openai = await http.post("/v1/chat/completions", json=chat)
            return native, openai

    native, openai = run(ask())
    assert native.status_code == 413, native.text
    assert list(native.json()) == ["error"]
    line = native.json()["error"]
    assert line.startswith("deep.png: decoding this 6300x6300 image (mode I;16) needs about")
    assert "decode budget of 256 MiB" in line
    assert openai.status_code == 413
    assert openai.json()["error"]["param"] == "messages[0].content[0].image_url"
    assert app.state.service.budget.peak == 0  # refused before anything was decoded


def image_part(data: bytes) -> dict:
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + encoded(data)}}


def deep_png(side: int) -> bytes:
    import numpy as np

    values = (np.arange(side * side, dtype=np.uint32).reshape(side, side) % 65536).astype(np.uint16)
    return png_bytes(Image.fromarray(values))


def test_decodes_wait_for_their_bytes(setup) -> None:
    """Three 16-bit images at once, a budget that holds one: all captioned, one at a time."""
    from polycap.serve.memory import decode_cost

    data = deep_png(1200)
    cost = decode_cost(data).bytes
    app = create_app(setup["models"], ServeSettings(decode_memory_bytes=cost * 3 // 2))

    async def ask():
        async with client(app) as http:
            return await asyncio.gather(
                *(http.post("/caption", json={"image": encoded(data)}) for _ in range(3))
            )

    replies = run(ask())
    assert [reply.status_code for reply in replies] == [200, 200, 200]
    budget = app.state.service.budget
    assert (budget.peak, budget.waits, budget.used) == (cost, 2, 0)


@pytest.mark.slow
def test_concurrent_decodes_share_the_budget(setup, sixteen_bit) -> None:
    """Two 16-bit 6300x6300 images at once under the default budget (1 GiB): each is
    captioned, one waits for the other, the bytes held never pass the budget."""
    from polycap.serve.memory import decode_cost

    settings = ServeSettings()
    app = create_app(setup["models"], settings)
    cost = decode_cost(sixteen_bit).bytes
    assert cost <= settings.decode_memory_bytes < 2 * cost

    async def ask():
        async with client(app) as http:
            files = {"image": ("deep.png", sixteen_bit, "image/png")}
            return await asyncio.gather(
                http.post("/caption", files=files, data={"max_length": "3"}),
                http.post("/caption", json={"image": encoded(sixteen_bit), "max_length": 3}),
            )

    replies = run(ask())
    assert [reply.status_code for reply in replies] == [200, 200], replies[0].text
    assert replies[0].json()["captions"] == replies[1].json()["captions"]
    budget = app.state.service.budget
    assert budget.peak == cost <= budget.limit and budget.waits == 1
    assert budget.used == 0  # all released


def test_several_images_are_answered_per_image(setup, capsys) -> None:
    images = setup["images"]
    expected = cli_captions(run_cli, capsys, setup["checkpoint"], images, "--max-length", "6")
    app = create_app(setup["models"], ServeSettings(max_images=5))
    corrupt = b"\x89PNG\r\n\x1a\n" + b"garbage" * 10

    async def ask():
        async with client(app) as http:
            files = [("images", (p.name, p.read_bytes(), "image/png")) for p in images]
            files.insert(1, ("images", ("corrupt.png", corrupt, "image/png")))
            multipart = await http.post("/caption", files=files, data={"max_length": "6"})
            as_json = await http.post(
                "/caption",
                json={"images": [encoded(p.read_bytes()) for p in images], "max_length": 6},
            )
            too_many = await http.post(
                "/caption", json={"images": [encoded(images[0].read_bytes())] * 6}
            )
            retrieved = await http.post("/retrieve", files=files[:3], data={"k": "2"})
            return multipart, as_json, too_many, retrieved

    multipart, as_json, too_many, retrieved = run(ask())
    assert multipart.status_code == 200, multipart.text
    results = multipart.json()["results"]
    assert [row["image"] for row in results] == [images[0].name, "corrupt.png"] + [
        p.name for p in images[1:]
    ]
    assert results[1]["status"] == 400
    assert results[1]["error"].startswith("corrupt.png: not a readable image")
    answered = [row for row in results if "captions" in row]
    assert [row["captions"] for row in answered] == [expected[p.name] for p in images]
    assert max(row["batch_size"] for row in answered) > 1  # one request's images batch
    assert [row["captions"] for row in as_json.json()["results"]] == [
        expected[p.name] for p in images
    ]
    assert [row["image"] for row in as_json.json()["results"]] == [
        f"images[{i}]" for i in range(len(images))
    ]
    assert too_many.status_code == 413 and "the limit is 5" in too_many.json()["error"]
    assert retrieved.status_code == 200
    assert [len(row.get("captions", [])) for row in retrieved.json()["results"]] == [2, 0, 2]


def test_no_server_path_reaches_a_client(setup) -> None:
    app = create_app(setup["models"])
    image = setup["images"][0]

    async def ask():
        async with client(app) as http:
            files = {"image": (image.name, image.read_bytes(), "image/png")}
            return [
                await http.get("/info"),
                await http.post("/retrieve", files=files, data={"mode": "image", "k": "3"}),
                await http.post("/retrieve", files=files, data={"mode": "text"}),
                await http.get("/v1/models"),
                await http.get("/openapi.json"),
            ]

    replies = run(ask())
    assert all(reply.status_code == 200 for reply in replies)
    neighbours = [row["neighbour"] for row in replies[1].json()["captions"]]
    assert neighbours and all(n and "/" not in n for n in neighbours)
    assert replies[1].json()["bank"] == "bank"
    root = str(setup["root"].resolve())
    for reply in replies:
        assert root not in reply.text and str(Path.home()) not in reply.text, reply.url
        assert "/tmp/" not in reply.text


def test_client_values_are_not_echoed_back_whole(setup) -> None:
    app = create_app(setup["models"])
    png = png_bytes(Image.new("RGB", (32, 32), (10, 200, 10)))
    huge = "x" * 1_000_000

    async def ask():
        async with client(app) as http:
            return [
                await http.post("/caption", json={"image": encoded(png), "language": huge}),
                await http.post("/caption", json={"image": encoded(png), huge: 1}),
                await http.post(
                    "/caption",
                    files={"image": ("a.png", png, "image/png")},
                    data={"language": huge},
                ),
                await http.post("/retrieve", json={"image": encoded(png), "language": huge}),
            ]

    replies = run(ask())
    assert [reply.status_code for reply in replies] == [404, 422, 400, 404]
    for reply in replies:
        line = reply.json()["error"]
        assert len(line) < 500 and "\n" not in line, line[:200]
    assert "1,000,000 characters" in replies[0].json()["error"]


def test_the_openapi_schema_types_every_answer(setup) -> None:
    app = create_app(setup["models"])

    async def ask():
        async with client(app) as http:
            return (await http.get("/openapi.json")).json()

    schema = run(ask())
    for path, method in [
        ("/health", "get"),
        ("/info", "get"),
        ("/caption", "post"),
        ("/retrieve", "post"),
        ("/v1/models", "get"),
        ("/v1/chat/completions", "post"),
    ]:
        answer = schema["paths"][path][method]["responses"]["200"]["content"]["application/json"]
        text = json.dumps(answer["schema"])
        assert "$ref" in text, (path, answer)  # a named model, not an untyped object
    caption = json.dumps(schema["paths"]["/caption"]["post"]["responses"]["200"])
    assert "CaptionResponse" in caption and "CaptionsResponse" in caption
    assert "ErrorResponse" in json.dumps(schema["paths"]["/caption"]["post"]["responses"])
