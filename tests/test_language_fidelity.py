"""Language fidelity on captions of known language (100 % and 0 %), the script check, the
one-line warning of `polycap eval` when predictions and references are in different languages,
and the published-numbers table of --benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_runner import flat, run_cli

from polycap.eval.metrics.fidelity import in_script, language_mismatch
from polycap.eval.runner import EvalContext, evaluate
from polycap.plugins import get_registries

pytest.importorskip("lingua")

JAPANESE = ["赤い丸が一つあります", "二匹の猫がソファで寝ている", "青い四角形が三つ並んでいる"]
RUSSIAN = ["два красных круга", "кошка спит на диване", "три синих квадрата на тёмном фоне"]
ENGLISH = ["two red circles", "a cat sleeping on a sofa", "three blue squares on a dark background"]


def pack(code: str):
    registry = get_registries().languages
    if code not in registry:
        pytest.skip(f"language pack {code!r} not installed")
    return registry.get(code)


def fidelity(code: str, predictions: list[str]) -> dict:
    references = [[text] for text in predictions]
    ctx = EvalContext(pack(code), [str(i) for i in range(3)], predictions, references)
    return evaluate(ctx, ["language-fidelity"])


@pytest.mark.parametrize(
    ("code", "right", "wrong"), [("ja", JAPANESE, ENGLISH), ("ru", RUSSIAN, ENGLISH)]
)
def test_fidelity_is_100_in_the_language_and_0_in_another(code, right, wrong) -> None:
    good = fidelity(code, right)
    assert good.scores == {"Fidelity": 100.0, "Script": 100.0}
    bad = fidelity(code, wrong)
    assert bad.scores == {"Fidelity": 0.0, "Script": 0.0}
    assert bad.details["language-fidelity"]["detected"] == {"en": 3}
    assert [row["Fidelity"] for row in bad.per_image] == [0.0, 0.0, 0.0]


def test_english_has_no_script_check_and_mixed_sets_count_each_caption() -> None:
    result = fidelity("en", [ENGLISH[0], JAPANESE[0], ENGLISH[2]])
    assert set(result.scores) == {"Fidelity"}
    assert result.scores["Fidelity"] == pytest.approx(200 / 3)


def test_script_check() -> None:
    assert in_script("赤い丸", "ja") and in_script("红色的圆", "zh") and in_script("빨간 원", "ko")
    assert in_script("красный круг", "ru")
    assert not in_script("a red circle", "ja") and not in_script("", "ja")
    assert not in_script("iphone 15 の写真", "ja")  # mostly Latin letters


def test_pack_without_identifier_language_is_not_applicable() -> None:
    import dataclasses

    plain = dataclasses.replace(pack("en"), identifier_language=None)
    ctx = EvalContext(plain, ["0"], ["a cat"], [["a cat"]])
    result = evaluate(ctx, ["language-fidelity"])
    assert result.scores["Fidelity"] is None
    assert "names no language" in result.not_applicable["Fidelity"]


def test_mismatch_needs_plainly_different_languages() -> None:
    message = language_mismatch(ENGLISH, [[t] for t in JAPANESE])
    assert message is not None and "'latin'" in message and "'kana'" in message
    assert language_mismatch(JAPANESE, [[t] for t in JAPANESE]) is None
    assert language_mismatch(["a cat"] + JAPANESE, [[t] for t in JAPANESE]) is None  # mostly ja


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture()
def japanese_set(tmp_path: Path) -> tuple[Path, list[str]]:
    from PIL import Image

    names = []
    for i in range(3):
        names.append(f"img{i}.png")
        Image.new("RGB", (8, 8), (30 * i, 0, 0)).save(tmp_path / names[-1])
    refs = [{"image_name": n, "caption": t} for n, t in zip(names, JAPANESE)]
    return write(tmp_path / "refs.json", refs), names


def test_eval_warns_in_one_line_when_languages_differ(
    japanese_set, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack("ja")
    refs, names = japanese_set
    english = write(
        tmp_path / "en.json", [{"image": n, "caption": t} for n, t in zip(names, ENGLISH)]
    )
    result = run_cli(
        ["eval", str(refs), "-p", str(english), "--lang", "ja", "--metrics", "chrf"], capsys
    )
    assert result.code == 0, result.err
    warnings = [line for line in result.err.splitlines() if line.startswith("Warning:")]
    assert len(warnings) == 1 and "plainly different languages" in warnings[0]
    same = write(
        tmp_path / "ja.json", [{"image": n, "caption": t} for n, t in zip(names, JAPANESE)]
    )
    result = run_cli(
        ["eval", str(refs), "-p", str(same), "--lang", "ja", "--metrics", "chrf"], capsys
    )
    assert result.code == 0 and "Warning" not in result.err


def test_benchmark_table_renders_published_numbers(
    japanese_set, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack("ja")
    refs, names = japanese_set
    preds = write(
        tmp_path / "ja.json", [{"image": n, "caption": t} for n, t in zip(names, JAPANESE)]
    )
    args = ["eval", str(refs), "-p", str(preds), "--lang", "ja", "--benchmark", "xm3600"]
    result = run_cli(args, capsys)
    assert result.code == 0, result.err
    out = flat(result.out)
    assert "this run beside published numbers" in out
    assert "Qwen2-VL-2B │ ja │ 8.4 │ 19.3" in out  # stored data, not code
    assert "polycap (this run) │ ja │" in out and "│ 100.0 │" in out
    assert "arXiv 2501.05122" in out and "arXiv 2412.03555v1, Table 13" in out
    data = json.loads(run_cli([*args, "--json"], capsys).out)
    rows = data["details"]["benchmark"]["rows"]
    assert rows[0]["system"] == "polycap (this run)" and rows[0]["Fidelity"] == "100.0"
    assert set(data["scores"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "CIDEr-D", "chrF",
                                   "Fidelity", "Script"}  # fmt: skip
    bad = run_cli([*args[:-1], "xm36"], capsys)
    assert bad.code == 2 and "unknown; known: coco-35l, xm3600" in flat(bad.err)
