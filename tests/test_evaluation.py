"""polycap eval: metric values against the reference implementations, per language, bad input."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_runner import flat, run_cli

from polycap.errors import BadInput
from polycap.eval.predictions import load_predictions, match_predictions
from polycap.eval.runner import ClipOptions, EvalContext, evaluate
from polycap.language import LanguagePack
from polycap.plugins import get_registries

FAST = ["bleu", "rouge-l", "cider-d", "chrf", "wer", "meteor", "spice"]  # meteor/spice: n/a
NO_JAVA = ["bleu", "rouge-l", "cider-d", "chrf", "wer"]

EN_PREDICTIONS = [
    "a red circle on a dark background",
    "two blue squares",
    "a green triangle in the middle",
    "three yellow circles",
]
EN_REFERENCES = [
    ["a red circle", "one red circle on a dark background"],
    ["two blue squares on a dark background", "there are two blue squares", "2 blue squares"],
    ["a green triangle", "a single green triangle in the middle of the picture"],
    ["three yellow circles on a dark background"],
]


def english() -> LanguagePack:
    return get_registries().languages.get("en")


def chinese() -> LanguagePack:
    """The zh pack when installed, else a stand-in that segments with jieba the same way."""
    registry = get_registries().languages
    if "zh" in registry:
        return registry.get("zh")
    pytest.importorskip("jieba")

    @dataclass
    class JiebaPack(LanguagePack):
        def eval_tokenize(self, text: str) -> list[str]:
            import jieba

            return [w for w in jieba.lcut(self.normalize(text)) if w.strip()]

    return JiebaPack(code="zh-test", name="Chinese (test)", default_lm="none", segmenter="jieba")


def japanese() -> LanguagePack:
    pytest.importorskip("polycap_ja")
    registry = get_registries().languages
    if "ja" not in registry:
        pytest.skip("polycap_ja is importable but not registered (not pip-installed)")
    return registry.get("ja")


def assert_agrees_with_coco(result, ctx: EvalContext, columns: tuple[str, ...]) -> None:
    """Our scores of ``columns`` are pycocoevalcap's on the same segmented captions."""
    coco = coco_scores(ctx)
    for column in columns:
        assert result.scores[column] == pytest.approx(coco[column], abs=1e-4), column


def coco_scores(ctx: EvalContext) -> dict[str, float]:
    """BLEU, ROUGE-L, CIDEr called directly from pycocoevalcap on the same segmented text."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    gts = {i: refs for i, refs in enumerate(ctx.segmented_references)}
    res = {i: [pred] for i, pred in enumerate(ctx.segmented_predictions)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores = {f"BLEU-{n + 1}": 100 * value for n, value in enumerate(bleu)}
    scores["ROUGE-L"] = 100 * Rouge().compute_score(gts, res)[0]
    scores["CIDEr-D"] = 100 * Cider().compute_score(gts, res)[0]
    return scores


def cider_d_by_formula(hyps: list[list[str]], refs: list[list[list[str]]]) -> float:
    """CIDEr-D written out from Vedantam et al. (2015) as the COCO code defines it: tf-idf
    n-gram vectors (n = 1..4, idf = log(N / df) over the references), clipped overlap,
    Gaussian length penalty with sigma 6, mean over references, x10."""

    def grams(tokens: list[str], n: int) -> Counter[tuple[str, ...]]:
        return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))

    count = len(hyps)
    df: Counter[tuple[str, ...]] = Counter()
    for image_refs in refs:
        df.update({g for r in image_refs for n in range(1, 5) for g in grams(r, n)})

    def vector(tokens: list[str], n: int) -> dict[tuple[str, ...], float]:
        return {
            g: tf * (math.log(count) - math.log(max(1.0, df[g])))
            for g, tf in grams(tokens, n).items()
        }

    total = 0.0
    for hyp, image_refs in zip(hyps, refs, strict=True):
        image_score = 0.0
        for ref in image_refs:
            penalty = math.exp(-((len(hyp) - len(ref)) ** 2) / (2 * 6.0**2))
            per_n = []
            for n in range(1, 5):
                vh, vr = vector(hyp, n), vector(ref, n)
                dot = sum(min(v, vr.get(g, 0.0)) * vr.get(g, 0.0) for g, v in vh.items())
                norms = math.sqrt(sum(v * v for v in vh.values())) * math.sqrt(
                    sum(v * v for v in vr.values())
                )
                per_n.append((dot / norms if norms else 0.0) * penalty)
            image_score += sum(per_n) / 4
        total += 10 * image_score / len(image_refs)
    return 100 * total / count


def test_english_metrics_match_reference_implementations() -> None:
    from sacrebleu.metrics import BLEU, CHRF

    ctx = EvalContext(english(), ["a", "b", "c", "d"], EN_PREDICTIONS, EN_REFERENCES)
    result = evaluate(ctx, NO_JAVA)
    assert_agrees_with_coco(
        result, ctx, ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "ROUGE-L", "CIDEr-D")
    )
    # sacrebleu directly: variable numbers of references as None-padded streams
    streams = [
        [refs[j] if j < len(refs) else None for refs in ctx.segmented_references] for j in range(3)
    ]
    direct = BLEU(tokenize="none", smooth_method="none").corpus_score(
        ctx.segmented_predictions, streams
    )
    assert result.scores["BLEU-4"] == pytest.approx(direct.score, abs=1e-9)
    raw_streams = [
        [refs[j] if j < len(refs) else None for refs in ctx.references] for j in range(3)
    ]
    chrf = CHRF().corpus_score(ctx.predictions, raw_streams).score
    assert result.scores["chrF"] == pytest.approx(chrf, abs=1e-9)
    assert result.scores["CIDEr-D"] == pytest.approx(
        cider_d_by_formula(ctx.prediction_tokens, ctx.reference_tokens), rel=1e-9
    )
    assert result.segmenter == "lowercase + regex word split"
    assert result.n_references == 8


def test_rouge_l_by_hand() -> None:
    ctx = EvalContext(english(), ["x"], ["a b c d"], [["a c d e f"]])
    result = evaluate(ctx, ["rouge-l"])
    lcs, beta = 3, 1.2  # "a c d"
    precision, recall = lcs / 4, lcs / 5
    expected = (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
    assert result.scores["ROUGE-L"] == pytest.approx(100 * expected)


def test_wer_matches_jiwer() -> None:
    jiwer = pytest.importorskip("jiwer")
    from polycap.eval.metrics.wer import corpus_wer

    refs = ["the cat sat on the mat", "a red circle", "two blue squares on a dark background"]
    hyps = ["the cat sit on mat", "a red red circle", "blue squares on the background"]
    ctx = EvalContext(english(), ["1", "2", "3"], hyps, [[r] for r in refs])
    result = evaluate(ctx, ["wer"])
    assert result.scores["WER"] == pytest.approx(100 * jiwer.wer(refs, hyps))
    assert "WER" in result.lower_is_better
    for row, ref, hyp in zip(result.per_image, refs, hyps, strict=True):
        assert row["WER"] == pytest.approx(100 * jiwer.wer(ref, hyp), abs=1e-4)
    # several references: each image against its best one, then corpus WER as jiwer has it
    multi = [["a b c d", "a x c"], ["q r s", "q r"]]
    hyp2 = [["a", "x", "c"], ["q", "r", "t"]]
    score, _, chosen = corpus_wer([[r.split() for r in refs] for refs in multi], hyp2)
    picked = [multi[i][c] for i, c in enumerate(chosen)]
    assert chosen == [1, 0]
    assert score == pytest.approx(jiwer.wer(picked, [" ".join(h) for h in hyp2]))


def _levenshtein_wer(references, hypotheses):
    """The hand-written WER polycap had before jiwer (kept here as the oracle): Levenshtein in
    words, each image against its lowest-rate reference (the first on ties)."""

    def distance(ref, hyp):
        previous = list(range(len(hyp) + 1))
        for i, r in enumerate(ref, 1):
            current = [i]
            for j, h in enumerate(hyp, 1):
                current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
            previous = current
        return previous[-1]

    edits = length = 0
    per_image, chosen = [], []
    for refs, hyp in zip(references, hypotheses, strict=True):
        rates = [(distance(r, hyp) / max(len(r), 1), i) for i, r in enumerate(refs)]
        rate, index = min(rates)
        edits += distance(refs[index], hyp)
        length += len(refs[index])
        per_image.append(rate)
        chosen.append(index)
    return edits / max(length, 1), per_image, chosen


WER_CASES = {
    "en": (EN_PREDICTIONS + ["", "circle"], EN_REFERENCES + [["a red circle"], ["", "circle"]]),
    "zh": (
        ["一个红色的圆形在黑色背景上", "两个蓝色的正方形", "三个黄色的三角形", "蓝色"],
        [
            ["一个红色的圆形", "黑色背景上有一个红色的圆形"],
            ["两个蓝色的正方形在黑色背景上", "有两个蓝色的正方形"],
            ["三个黄色的三角形"],
            ["一个蓝色的圆形", "蓝色的正方形"],
        ],
    ),
    "ja": (
        ["赤い丸が一つあります", "青い四角が二つ", "黄色い三角形が三つあります"],
        [
            ["赤い丸が一つ", "黒い背景に赤い丸が一つあります"],
            ["青い四角が二つあります"],
            ["三角形"],
        ],
    ),
}


@pytest.mark.parametrize("language", sorted(WER_CASES))
def test_wer_by_jiwer_equals_the_hand_written_wer(language: str) -> None:
    """Moving WER onto jiwer changed no score: corpus, per image and the chosen reference, on
    each pack's own segmentation (empty captions and an empty reference included)."""
    from polycap.eval.metrics.wer import corpus_wer

    pack = {"en": english, "zh": chinese, "ja": japanese}[language]()
    predictions, references = WER_CASES[language]
    ctx = EvalContext(pack, [str(i) for i in range(len(predictions))], predictions, references)
    ours = corpus_wer(ctx.reference_tokens, ctx.prediction_tokens)
    oracle = _levenshtein_wer(ctx.reference_tokens, ctx.prediction_tokens)
    assert ours[0] == pytest.approx(oracle[0], abs=1e-12)
    assert ours[1] == pytest.approx(oracle[1], abs=1e-12)
    assert ours[2] == oracle[2]
    result = evaluate(ctx, ["wer"])
    assert result.scores["WER"] == pytest.approx(100 * oracle[0])
    assert "jiwer" in result.to_json()["versions"]


def test_chinese_case_is_segmented_by_jieba() -> None:
    pack = chinese()
    predictions = ["一个红色的圆形在黑色背景上", "两个蓝色的正方形", "三个黄色的三角形"]
    references = [
        ["一个红色的圆形", "黑色背景上有一个红色的圆形"],
        ["两个蓝色的正方形在黑色背景上", "有两个蓝色的正方形"],
        ["三个黄色的三角形"],
    ]
    ctx = EvalContext(pack, ["a", "b", "c"], predictions, references)
    assert ctx.prediction_tokens[1] != list(predictions[1])  # words, not characters
    assert len(ctx.prediction_tokens[1]) > 1
    result = evaluate(ctx, FAST)
    assert_agrees_with_coco(result, ctx, ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D"))
    assert result.segmenter == pack.segmenter and "jieba" in result.segmenter
    assert result.to_json()["segmenter"] == pack.segmenter
    assert result.scores["METEOR"] is None
    assert "English only" in result.display("METEOR")


def test_japanese_case_is_segmented_by_the_ja_pack() -> None:
    pack = japanese()
    predictions = ["赤い丸が一つあります", "青い四角が二つ", "黄色い三角形が三つあります"]
    references = [
        ["赤い丸が一つ", "黒い背景に赤い丸が一つあります"],
        ["青い四角が二つあります", "二つの青い四角"],
        ["黄色い三角形が三つ"],
    ]
    ctx = EvalContext(pack, ["a", "b", "c"], predictions, references)
    assert len(ctx.prediction_tokens[0]) >= 3  # 赤い / 丸 / が / ...
    result = evaluate(ctx, FAST)
    assert_agrees_with_coco(result, ctx, ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D"))
    assert result.to_json()["segmenter"] == pack.segmenter


def test_unavailable_metrics_are_marked_with_a_reason() -> None:
    ctx = EvalContext(english(), ["a"], ["one red circle here"], [["one red circle here"]])
    result = evaluate(ctx, ["spice", "clipscore", "bleu"])
    assert result.scores["SPICE"] is None and result.display("SPICE").startswith("n/a (")
    assert result.display("CLIPScore") == "n/a (needs the images)"
    assert result.scores["BLEU-4"] == pytest.approx(100.0)
    data = result.to_json(per_image=True)
    assert data["not_applicable"]["SPICE"]
    assert "sacrebleu" in data["versions"] and "language pack" in data["versions"]
    assert data["per_image"][0]["BLEU-4"] == pytest.approx(100.0)


def test_unknown_metric_has_a_did_you_mean() -> None:
    from polycap.errors import UnknownName

    ctx = EvalContext(english(), ["a"], ["x"], [["x"]])
    with pytest.raises(UnknownName, match="Did you mean 'cider-d'"):
        evaluate(ctx, ["cider"])


@pytest.mark.slow
def test_meteor_runs_for_english_with_java() -> None:
    import shutil

    if shutil.which("java") is None:
        pytest.skip("no Java")
    ctx = EvalContext(english(), ["a", "b"], EN_PREDICTIONS[:2], EN_REFERENCES[:2])
    result = evaluate(ctx, ["meteor"])
    assert 0 < result.scores["METEOR"] <= 100


# -- CLIPScore -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory):
    """A few synthetic images with English captions (train file: 8 images, 2 captions each)."""
    from polycap.offline.synthetic import make_synthetic_set

    return make_synthetic_set(english(), tmp_path_factory.mktemp("shapes"), 10, seed=1)


def test_clipscore_follows_hessel_et_al(shapes, tiny_clip) -> None:
    import torch

    from polycap.data.captions import load_captions
    from polycap.data.encoding import encode_images, load_encoder

    refs = load_captions(shapes.train_file)
    images = refs.images()
    by_image = refs.by_image()
    predictions = [by_image[p][0] if i % 2 else "something else" for i, p in enumerate(images)]
    encoder = load_encoder(tiny_clip.name, pretrained=tiny_clip.weights)
    ctx = EvalContext(
        english(),
        [p.name for p in images],
        predictions,
        [by_image[p] for p in images],
        images,
        ClipOptions(encoder=encoder),
    )
    result = evaluate(ctx, ["clipscore"])
    assert result.details["clipscore"]["prompt"] == "A photo depicts "
    # by hand, from the same encoder
    norm = torch.nn.functional.normalize
    image = norm(encode_images(encoder, images, progress=False).features, dim=-1)
    cand = norm(encoder.encode_texts(["A photo depicts " + p for p in predictions]), dim=-1)
    clip_s, ref_s = [], []
    for i, path in enumerate(images):
        c = 2.5 * max(float(image[i] @ cand[i]), 0.0)
        r = norm(encoder.encode_texts(["A photo depicts " + t for t in by_image[path]]), dim=-1)
        best = max(float((r @ cand[i]).max()), 0.0)
        clip_s.append(c)
        ref_s.append(2 * c * best / (c + best) if c + best else 0.0)
    assert result.scores["CLIPScore"] == pytest.approx(100 * sum(clip_s) / len(images), abs=1e-3)
    assert result.scores["RefCLIPScore"] == pytest.approx(100 * sum(ref_s) / len(images), abs=1e-3)
    assert result.per_image[0]["CLIPScore"] == pytest.approx(100 * clip_s[0], abs=1e-3)


# -- predictions files and bad input -------------------------------------------------------------


def write_predictions(path: Path, refs, transform=lambda name: name) -> Path:
    by_image = refs.by_image()
    data = [{"image_name": transform(p.name), "caption": caps[0]} for p, caps in by_image.items()]
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_prediction_formats(tmp_path: Path, shapes) -> None:
    from polycap.data.captions import load_captions

    refs = load_captions(shapes.train_file)
    images = refs.images()
    first = refs.by_image()[images[0]][0]
    (tmp_path / "p.jsonl").write_text(
        "\n".join(json.dumps({"image": p.name, "caption": "x"}) for p in images) + "\n"
    )
    (tmp_path / "p.csv").write_text(
        "image,caption\n" + "".join(f"{p},x\n" for p in images), encoding="utf-8"
    )
    (tmp_path / "caption.json").write_text(
        json.dumps({"captions": [{"image": str(p), "captions": [first, "y"]} for p in images]})
    )
    (tmp_path / "retrieve.json").write_text(
        json.dumps(
            {
                "results": [
                    {"image": str(p), "captions": [{"caption": first, "score": 0.9}]}
                    for p in images
                ]
            }
        )
    )
    ids = {r.image: r.image_id for r in refs.records}
    (tmp_path / "coco.json").write_text(
        json.dumps([{"image_id": ids[p], "caption": "x"} for p in images])
    )
    for name in ("p.jsonl", "p.csv", "caption.json", "coco.json"):
        matched = match_predictions(refs, load_predictions(tmp_path / name), tmp_path / name)
        assert matched.images == images, name
    assert matched.predictions[0] == "x"
    for name in ("caption.json", "retrieve.json"):
        other = match_predictions(refs, load_predictions(tmp_path / name))
        assert other.images == images and other.predictions[0] == first


def test_predictions_that_do_not_match_the_references(tmp_path: Path, shapes) -> None:
    from polycap.data.captions import load_captions

    refs = load_captions(shapes.train_file)
    unknown = write_predictions(
        tmp_path / "unknown.json", refs, lambda n: "nope.png" if n.endswith("1.png") else n
    )
    with pytest.raises(
        BadInput,
        match=r"1 of 8 predictions name images that are not in the "
        r"references \(first: 'nope.png' at item 1\)",
    ):
        match_predictions(refs, load_predictions(unknown), unknown)
    few = tmp_path / "few.json"
    few.write_text(json.dumps([{"image": refs.images()[0].name, "caption": "x"}]))
    with pytest.raises(BadInput, match=r"no prediction for 7 of 8 reference images.*--partial"):
        match_predictions(refs, load_predictions(few), few)
    partial = match_predictions(refs, load_predictions(few), few, partial=True)
    assert len(partial.images) == 1 and len(partial.unmatched_references) == 7
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps([{"image": refs.images()[0].name, "caption": "x"}] * 2))
    with pytest.raises(BadInput, match="more than one prediction"):
        match_predictions(refs, load_predictions(twice), twice, partial=True)
    broken = tmp_path / "broken.json"
    broken.write_text('[{"image": "a.png"}]')
    with pytest.raises(BadInput, match=r"broken.json: item 0: 'caption' must be text"):
        load_predictions(broken)


def test_cli_eval_predictions_json(tmp_path: Path, shapes, capsys) -> None:
    from polycap.data.captions import load_captions

    refs = load_captions(shapes.train_file)
    predictions = write_predictions(tmp_path / "preds.json", refs)
    result = run_cli(
        [
            "eval",
            str(shapes.train_file),
            "-p",
            str(predictions),
            "--lang",
            "en",
            "--metrics",
            ",".join(NO_JAVA),
            "--json",
            "--per-image",
        ],
        capsys,
    )
    assert result.code == 0, result.err
    data = json.loads(result.out)
    assert data["segmenter"] == english().segmenter
    assert data["images"] == 8 and data["references"] == 16
    assert data["scores"]["BLEU-4"] == pytest.approx(100.0)
    assert data["scores"]["WER"] == pytest.approx(0.0)
    assert len(data["per_image"]) == 8 and "sacrebleu" in data["versions"]
    table = run_cli(
        [
            "eval",
            str(shapes.train_file),
            "-p",
            str(predictions),
            "--lang",
            "en",
            "--metrics",
            "bleu,spice",
        ],
        capsys,
    )
    assert table.code == 0 and "BLEU-4" in table.out and "n/a SPICE: " in table.out
    assert "segmenter: lowercase + regex word split" in flat(table.out)


def test_cli_eval_bad_input(tmp_path: Path, shapes, capsys) -> None:
    from polycap.data.captions import load_captions

    refs = load_captions(shapes.train_file)
    predictions = write_predictions(
        tmp_path / "preds.json", refs, lambda n: "other.png" if n.endswith("1.png") else n
    )
    result = run_cli(
        [
            "eval",
            str(shapes.train_file),
            "-p",
            str(predictions),
            "--lang",
            "en",
            "--metrics",
            "bleu",
        ],
        capsys,
    )
    assert result.code == 2
    assert "not in the references" in flat(result.err) and "Traceback" not in result.err
    result = run_cli(
        ["eval", str(shapes.train_file), "-p", str(predictions), "--lang", "xx"], capsys
    )
    assert result.code == 2 and "No language pack 'xx'" in flat(result.err)
    result = run_cli(["eval", str(shapes.train_file), "--lang", "en"], capsys)
    assert result.code == 2 and "--predictions" in flat(result.err)


def test_clipscore_does_not_start_a_download_by_default(shapes) -> None:
    from polycap.data.captions import load_captions
    from polycap.eval.metrics.clipscore import weights_cached

    options = ClipOptions()  # xlm-roberta-base-ViT-B-32 / laion5b_s13b_b90k
    if weights_cached(options.spec, options.pretrained):
        pytest.skip("the default CLIPScore weights are cached here")
    refs = load_captions(shapes.train_file)
    images = refs.images()[:2]
    by_image = refs.by_image()
    ctx = EvalContext(
        english(),
        ["a", "b"],
        [by_image[p][0] for p in images],
        [by_image[p] for p in images],
        images,
        options,
    )
    result = evaluate(ctx, ["clipscore"])
    assert "not downloaded" in result.display("CLIPScore")
    assert "--clip-download" in result.not_applicable["RefCLIPScore"]


def test_predictions_are_read_through_the_caption_format_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    from polycap import plugins
    from polycap.eval.predictions import Prediction
    from polycap.hookspecs import hookimpl

    class PipeFormat:
        """``image|caption`` lines in ``.pipe`` files."""

        name = "pipe"
        suffixes = (".pipe",)

        def sniff(self, path: Path) -> bool:
            return False

        def read(self, path: Path, images_dir: Path | None) -> list:
            return []

        def read_predictions(self, path: Path) -> list[Prediction]:
            lines = path.read_text(encoding="utf-8").splitlines()
            return [Prediction(*line.split("|"), f"line {n}") for n, line in enumerate(lines, 1)]

    @hookimpl
    def register_caption_formats(register) -> None:
        register("pipe", PipeFormat())

    host = plugins.PluginHost(load_entry_points=False)
    host.add_plugin(types.SimpleNamespace(register_caption_formats=register_caption_formats), "p")
    monkeypatch.setattr(plugins, "get_host", lambda: host)
    (tmp_path / "preds.pipe").write_text("a.png|a red circle\nb.png|two squares\n")
    found = load_predictions(tmp_path / "preds.pipe")
    assert [(p.key, p.caption) for p in found] == [
        ("a.png", "a red circle"),
        ("b.png", "two squares"),
    ]
    (tmp_path / "preds.tab").write_text("image\tcaption\na.png\tx\n")  # tsv's other suffix
    assert [(p.key, p.caption) for p in load_predictions(tmp_path / "preds.tab")] == [
        ("a.png", "x")
    ]
