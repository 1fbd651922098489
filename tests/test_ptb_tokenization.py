"""Scores comparable with the literature: `--tokenizer ptb` gives pycocoevalcap's own pipeline
(PTBTokenizer, then BLEU, METEOR, ROUGE-L, CIDEr) to 1e-6; `--also-english-tokenizer` shows
what an English-tokenizer harness reports for Japanese beside the MeCab scores."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cli_runner import flat, run_cli

from polycap.eval.runner import EvalContext, evaluate
from polycap.eval.segmentation import PTB_NAME, ptb_segmentation
from polycap.plugins import get_registries

pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="PTBTokenizer needs Java")

PREDICTIONS = [
    "A red circle, on a dark background.",
    "Two blue squares!",
    "a green triangle in the middle",
    "three yellow circles",
    "A man riding a wave on top of a surfboard.",
]
REFERENCES = [
    ["A red circle.", "One red circle on a dark background"],
    ["two blue squares on a dark background", "There are two blue squares.", "2 blue squares"],
    ["a green triangle", "a single green triangle in the middle of the picture"],
    ["three yellow circles on a dark background"],
    ["A surfer riding a large wave in the ocean.", "A man on a surfboard rides a wave."],
]


def coco_pipeline() -> dict[str, float]:
    """pycocoevalcap's COCOEvalCap steps, called directly: PTBTokenizer on references and
    results, then Bleu(4), Meteor, Rouge, Cider (x100, polycap's scale)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in r] for i, r in enumerate(REFERENCES)})
    res = tokenizer.tokenize({i: [{"caption": p}] for i, p in enumerate(PREDICTIONS)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n + 1}": value for n, value in enumerate(bleu)}
    meteor = Meteor()
    scores["METEOR"] = meteor.compute_score(gts, res)[0]
    meteor.meteor_p.kill()
    scores["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    scores["CIDEr-D"] = Cider().compute_score(gts, res)[0]
    return {column: 100.0 * float(value) for column, value in scores.items()}


@pytest.mark.slow
def test_ptb_scores_equal_pycocoevalcaps_pipeline() -> None:
    english = get_registries().languages.get("en")
    keys = [str(i) for i in range(len(PREDICTIONS))]
    ctx = EvalContext(english, keys, PREDICTIONS, REFERENCES, segmentation=ptb_segmentation())
    result = evaluate(ctx, ["bleu", "meteor", "rouge-l", "cider-d"])
    expected = coco_pipeline()
    assert set(expected) <= set(result.scores)
    for column, value in expected.items():
        assert result.scores[column] == pytest.approx(value, abs=1e-6), column
    assert result.segmenter == PTB_NAME
    # the pack's own segmentation keeps punctuation as words: a different number
    plain = evaluate(EvalContext(english, keys, PREDICTIONS, REFERENCES), ["bleu"])
    assert plain.scores["BLEU-4"] != pytest.approx(expected["BLEU-4"], abs=1e-3)


def test_english_tokenizer_side_by_side_for_japanese(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    if "ja" not in get_registries().languages:
        pytest.skip("polycap-ja not installed")
    names, refs, preds = [], [], []
    texts = ["赤い丸が一つある", "青い四角が二つ並ぶ", "緑の三角が三つある", "黄色い丸が二つある"]
    for i, text in enumerate(texts):
        names.append(f"img{i}.png")
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / names[-1])
        refs.append({"image_name": names[-1], "caption": text})
        preds.append({"image": names[-1], "caption": text[:-2] + "ない"})
    (tmp_path / "refs.json").write_text(json.dumps(refs, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "preds.json").write_text(json.dumps(preds, ensure_ascii=False), encoding="utf-8")
    args = ["eval", str(tmp_path / "refs.json"), "-p", str(tmp_path / "preds.json"), "--lang"]
    args += ["ja", "--metrics", "bleu,cider-d", "--also-english-tokenizer"]
    result = run_cli(args, capsys)
    assert result.code == 0, result.err
    out = flat(result.out)
    assert "Segmentation side by side" in out and "English tokenizer (PTB)" in out
    data = json.loads(run_cli([*args, "--json"], capsys).out)
    english = data["details"]["english_tokenizer"]
    assert english["segmenter"] == PTB_NAME
    assert data["segmenter"] == "MeCab (fugashi) + unidic-lite"
    # MeCab finds shared words; a whitespace-based English tokenizer sees one word per caption
    assert data["scores"]["BLEU-1"] > 40 and english["scores"]["BLEU-1"] < 1e-6
