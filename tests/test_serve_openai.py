"""The OpenAI-compatible API of ``polycap serve``, called by the official ``openai`` client
against uvicorn on 127.0.0.1: the captions are ``polycap caption``'s for the same image and
options; errors come in OpenAI's shape with the right status."""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import threading
from pathlib import Path

import pytest
from cli_runner import run_cli
from serve_helpers import build_checkpoint, cli_captions, running_server

pytest.importorskip("openai")
pytest.importorskip("uvicorn")

CAPTIONS = ["a red circle", "two blue squares", "a green triangle", "three yellow circles"] * 5
# OpenAI request options -> the same options for `polycap caption`
OPTION_SETS = {
    "greedy": ({"max_tokens": 6}, ["--max-length", "6"]),
    "two choices": ({"max_tokens": 6, "n": 2}, ["--max-length", "6", "--num-captions", "2"]),
    "beam 3": (
        {"max_completion_tokens": 6, "n": 2, "extra_body": {"beams": 3}},
        ["--max-length", "6", "--num-captions", "2", "--beams", "3"],
    ),
    "sampled": (
        {"max_tokens": 6, "temperature": 0.8, "top_p": 0.9, "seed": 3},
        ["--max-length", "6", "--sample", "--temperature", "0.8", "--top-p", "0.9", "--seed", "3"],
    ),
    "temperature 0 is greedy": ({"max_tokens": 6, "temperature": 0}, ["--max-length", "6"]),
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from polycap.offline.synthetic import make_synthetic_set
    from polycap.plugins import get_registries

    english = get_registries().languages.get("en")
    shapes = make_synthetic_set(english, tmp_path_factory.mktemp("shapes"), 12, seed=4)
    return sorted(shapes.image_dir.glob("*.png"))[:3]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    japanese = ["赤い丸が一つ", "青い四角が二つ", "緑の三角", "黄色い丸が三つ"] * 5
    return {
        "en": build_checkpoint("en", CAPTIONS, tmp_path_factory.mktemp("openai-en")),
        "ja": build_checkpoint("ja", japanese, tmp_path_factory.mktemp("openai-ja")),
    }


def start(checkpoints, **settings):
    from polycap.serve.app import create_app
    from polycap.serve.models import load_models
    from polycap.serve.settings import ServeSettings

    models = load_models([f"{lang}={path}" for lang, path in checkpoints.items()])
    return running_server(create_app(models, ServeSettings(**settings)))


@pytest.fixture(scope="module")
def server(checkpoints):
    with start(checkpoints) as url:
        yield url


@pytest.fixture(scope="module")
def openai_client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server}/v1", api_key="not-needed", max_retries=0, timeout=120)


def data_url(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def ask(client, url: str, model: str = "polycap-en", **options):
    """A chat completion as alt-text tools send it: a text part and the image."""
    message = {
        "role": "user",
        "content": [
            {"type": "text", "text": "Write alt text for this image."},
            {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
        ],
    }
    return client.chat.completions.create(model=model, messages=[message], **options)


def test_models_lists_one_id_per_loaded_model(openai_client) -> None:
    listed = openai_client.models.list()
    assert [model.id for model in listed.data] == ["polycap-en", "polycap-ja"]
    assert {model.owned_by for model in listed.data} == {"polycap"}
    assert openai_client.models.retrieve("polycap-ja").id == "polycap-ja"


@pytest.mark.parametrize("name", list(OPTION_SETS))
def test_captions_equal_polycap_caption(openai_client, checkpoints, images, capsys, name):
    options, cli_options = OPTION_SETS[name]
    if name == "sampled":  # a seed's samples depend on the batch: the CLI one image at a time
        expected = {}
        for image in images:
            expected.update(cli_captions(run_cli, capsys, checkpoints["en"], [image], *cli_options))
    else:
        expected = cli_captions(run_cli, capsys, checkpoints["en"], images, *cli_options)
    for image in images:
        reply = ask(openai_client, data_url(image), **options)
        got = [choice.message.content for choice in reply.choices]
        assert got == expected[image.name], (name, image.name)
        assert reply.model == "polycap-en" and reply.object == "chat.completion"
        assert [choice.index for choice in reply.choices] == list(range(len(got)))
        assert {choice.message.role for choice in reply.choices} == {"assistant"}
        assert reply.usage.completion_tokens > 0


def test_the_model_id_chooses_the_language(openai_client, checkpoints, images, capsys) -> None:
    expected = cli_captions(run_cli, capsys, checkpoints["ja"], images[:1], "--max-length", "5")
    reply = ask(openai_client, data_url(images[0]), model="polycap-ja", max_tokens=5)
    assert reply.choices[0].message.content == expected[images[0].name][0]


def error_of(call):
    import openai

    with pytest.raises(openai.APIStatusError) as caught:
        call()
    error = caught.value
    return error.status_code, error.body


def test_errors_come_in_openais_shape(openai_client, images) -> None:
    url = data_url(images[0])
    status, body = error_of(lambda: ask(openai_client, url, model="polycap-zh"))
    assert status == 404 and body["code"] == "model_not_found" and body["param"] == "model"
    assert body["type"] == "invalid_request_error" and "polycap-en" in body["message"]

    status, body = error_of(lambda: ask(openai_client, url, n=0))
    assert status == 400 and body["param"] == "n" and body["type"] == "invalid_request_error"

    status, body = error_of(lambda: ask(openai_client, url, max_tokens=1000))
    assert status == 400 and "max_tokens: at most" in body["message"]

    status, body = error_of(lambda: ask(openai_client, "https://example.invalid/cat.png"))
    assert status == 400 and body["code"] == "remote_images_disabled"
    assert body["param"] == "messages[0].content[1].image_url"
    assert "--allow-remote-images" in body["message"]

    not_png = "data:image/png;base64," + base64.b64encode(b"not an image").decode()
    status, body = error_of(lambda: ask(openai_client, not_png))
    assert (
        status == 400
        and body["code"] == "invalid_image"
        and "not a readable image" in (body["message"])
    )

    status, body = error_of(lambda: ask(openai_client, url, stream=True))
    assert status == 400 and body["param"] == "stream"

    no_image = [{"role": "user", "content": "Describe the image."}]
    status, body = error_of(
        lambda: openai_client.chat.completions.create(model="polycap-en", messages=no_image)
    )
    assert status == 400 and "exactly one image_url" in body["message"]


def test_raw_error_bodies_have_all_four_fields(server, images) -> None:
    import httpx

    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    chat = f"{server}/v1/chat/completions"
    replies = [
        httpx.post(chat, content=b"{nope", timeout=30),
        httpx.post(chat, json={"model": "polycap-en"}, timeout=30),
        httpx.get(f"{server}/v1/models/" + "x" * 5_000, timeout=30),
        httpx.post(chat, json={"model": "x" * 1_000_000, "messages": [message]}, timeout=30),
        httpx.get(f"{server}/v1/nowhere", timeout=30),
    ]
    assert [reply.status_code for reply in replies] == [400, 400, 404, 404, 404]
    for reply in replies:
        assert list(reply.json()) == ["error"]
        error = reply.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert len(error["message"]) < 500  # a 1 MB model id is not echoed back whole
    assert replies[1].json()["error"]["param"] == "messages"
    assert replies[3].json()["error"]["code"] == "model_not_found"


# -- remote images ------------------------------------------------------------------------------


@contextlib.contextmanager
def file_server(folder: Path):
    """A static file server on 127.0.0.1 for ``folder``."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_remote_images_when_allowed_within_the_limits(checkpoints, images, tmp_path, capsys):
    from openai import OpenAI

    (tmp_path / "big.png").write_bytes(b"\x89PNG" + b"\x00" * 300_000)
    (tmp_path / images[1].name).write_bytes(images[1].read_bytes())
    expected = cli_captions(run_cli, capsys, checkpoints["en"], [images[1]], "--max-length", "6")
    with (
        file_server(tmp_path) as files,
        start(checkpoints, allow_remote_images=True, max_upload_bytes=200_000) as url,
    ):
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120)
        reply = ask(client, f"{files}/{images[1].name}", max_tokens=6)
        too_large = error_of(lambda: ask(client, f"{files}/big.png"))
        missing = error_of(lambda: ask(client, f"{files}/nothing.png"))
        scheme = error_of(lambda: ask(client, "file:///etc/passwd"))
    assert reply.choices[0].message.content == expected[images[1].name][0]
    assert too_large[0] == 413 and too_large[1]["code"] == "image_too_large"
    assert missing[0] == 400 and "HTTP 404" in missing[1]["message"]
    assert scheme[0] == 400 and scheme[1]["code"] == "invalid_image_url"


def test_the_openapi_schema_types_the_v1_routes(server) -> None:
    import httpx

    schema = httpx.get(f"{server}/openapi.json", timeout=30).json()
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    request_ref = chat["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    components = schema["components"]["schemas"]
    assert request_ref.rsplit("/", 1)[-1] in components
    assert "messages" in components["ChatCompletionRequest"]["properties"]
    answer = chat["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert answer.endswith("/ChatCompletion")
    assert "choices" in components["ChatCompletion"]["properties"]
    for ref in json.dumps(schema).split('"$ref": "')[1:]:  # every reference resolves
        assert ref.split('"', 1)[0].rsplit("/", 1)[-1] in components
