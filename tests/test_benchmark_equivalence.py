"""polycap's fast paths give what the ClipCap reference loops (benchmarks/reference.py) give.

Greedy: identical tokens; beam 5: identical best caption (and ranked beams); features:
allclose, each image encoded once; training: the same loss and gradients for the same batch
contents, bucketed (polycap) or padded to the data set's longest caption (reference).
Tiny models only; no timing here (the benchmark prints the speed ratios).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch
from helpers_lm import new_captioner

from polycap.model.generation import GenerationConfig, generate_ids

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ lives beside polycap/, not installed
    sys.path.insert(0, str(ROOT))
reference = importlib.import_module("benchmarks.reference")
workload = importlib.import_module("benchmarks.workload")

MAX = 12


@pytest.fixture(scope="module")
def fixed_length(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The benchmark's set-up at its tiny size: vocabulary 50257, end token unreachable."""
    model = workload.build_captioner("tiny", 24, tmp_path_factory.mktemp("bench"), seed=3)
    return model, workload.random_features(6, 24, seed=4)


def ours(model: object, features: torch.Tensor, beams: int = 1) -> list[list[int]]:
    config = GenerationConfig(max_length=MAX, beams=beams)
    return [captions[0] for captions in generate_ids(model, features, config)]


def test_greedy_matches_generate2_where_captions_end(trained) -> None:
    model, features, _ = trained
    expected = reference.caption_greedy(model, features, MAX)
    assert ours(model, features) == expected
    assert len({len(ids) for ids in expected}) > 1  # the stop token was reached, at varied steps
    assert max(len(ids) for ids in expected) < MAX


def test_greedy_matches_generate2_at_the_token_cap(fixed_length) -> None:
    model, features = fixed_length
    expected = reference.caption_greedy(model, features, MAX)
    assert ours(model, features) == expected
    assert all(len(ids) == MAX for ids in expected)  # the end token is unreachable


def test_reference_greedy_keeps_the_stop_token(trained) -> None:
    model, features, _ = trained
    with torch.no_grad():
        ids = reference.greedy(model.lm, model.prefix(features[:1]), model.end_token_id, MAX)
    assert ids[-1] == model.end_token_id
    assert reference.strip_stop(ids, model.end_token_id) == ids[:-1]


@pytest.mark.parametrize("which", ["trained", "fixed_length"])
def test_beam_best_caption_matches_generate_beam(which, trained, fixed_length) -> None:
    model, features = (trained[0], trained[1]) if which == "trained" else fixed_length
    assert ours(model, features, beams=5) == reference.caption_beam(model, features, MAX, 5)


def test_beam_ranking_matches_generate_beam(trained) -> None:
    model, features, _ = trained
    config = GenerationConfig(max_length=MAX, beams=5, num_captions=5)
    for image, captions in enumerate(generate_ids(model, features, config)):
        with torch.no_grad():
            beams = reference.beam(
                model.lm,
                model.prefix(features[image : image + 1]),
                model.end_token_id,
                beam_size=5,
                entry_length=MAX,
            )
        ranked: list[list[int]] = []
        for ids in beams:  # polycap returns distinct captions, best first
            ids = reference.strip_stop(ids, model.end_token_id)
            if ids not in ranked:
                ranked.append(ids)
        assert captions == ranked


def test_features_match_one_image_per_caption(tiny_clip, tmp_path: Path) -> None:
    from polycap.data.encoding import encode_images, load_encoder

    encoder = load_encoder(tiny_clip.name, pretrained=tiny_clip.weights)
    images = workload.write_images(tmp_path, 3, size=(48, 40))
    entries = [path for path in images for _ in range(5)]  # five captions per image
    encoded = encode_images(encoder, entries, progress=False, use_cache=False)
    assert encoded.paths == images and encoded.encoded == 3  # each image once
    expected = reference.extract_features(encoder.clip, encoder.preprocess, entries)
    row_of = {path: row for row, path in enumerate(encoded.paths)}
    got = encoded.features[[row_of[path] for path in entries]]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_reference_pads_every_caption_to_the_longest() -> None:
    lengths = workload.caption_lengths(200, median=12)
    assert max(lengths) == 36 and sorted(lengths)[100] in range(11, 14)
    ids = workload.caption_ids(lengths, end_token_id=0, vocab_size=300)
    dataset = reference.PaddedCaptions(ids, [0] * 200, torch.zeros(1, 4), prefix_length=3)
    assert dataset.max_seq_len == 36
    tokens, mask, _ = dataset[0]
    assert tokens.shape == (36,) and mask.shape == (39,)
    assert int(mask.sum()) == 3 + lengths[0]


def test_training_loss_and_gradients_match_for_the_same_batch() -> None:
    from polycap.train.trainer import TokenizedSet, collate
    from polycap.util.batching import bucketed_batches

    model = new_captioner(prefix_length=4, seed=2).train()
    lengths = workload.caption_lengths(24, median=5, seed=1)
    ids = workload.caption_ids(
        lengths, model.end_token_id, seed=1, vocab_size=model.lm.config.vocab_size
    )
    rows = [i // 5 for i in range(24)]
    features = workload.random_features(5, 16, seed=5)
    tokens = TokenizedSet(rows, ids)
    dataset = reference.PaddedCaptions(ids, rows, features, model.prefix_length)
    batch = max(
        bucketed_batches(tokens.lengths, 6, seed=0), key=lambda b: -max(lengths[i] for i in b)
    )  # shortest batch: most padding
    feats, input_ids, mask = collate(batch, tokens, features, model.pad_token_id)
    assert input_ids.shape[1] < dataset.max_seq_len

    def loss_and_grads(compute) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        loss = compute()
        loss.backward()
        return float(loss.detach()), [p.grad.clone() for p in model.trainable_parameters()]

    ours_loss, ours_grads = loss_and_grads(lambda: model(feats, input_ids, mask).loss)
    items = [dataset[i] for i in batch]
    theirs_loss, theirs_grads = loss_and_grads(
        lambda: reference.caption_loss(
            model, *(torch.stack([item[k] for item in items]) for k in range(3))
        )
    )
    assert ours_loss == pytest.approx(theirs_loss, rel=1e-5)
    for mine, theirs in zip(ours_grads, theirs_grads, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)


def lm_input_shapes(model: object, run) -> list[tuple[int, int]]:
    """(batch, length) of every LM call made by ``run()``."""
    shapes: list[tuple[int, int]] = []

    def record(_module, _args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        shapes.append(tuple(embeds.shape[:2]) if embeds is not None else (-1, -1))

    handle = model.lm.register_forward_pre_hook(record, with_kwargs=True)
    try:
        run()
    finally:
        handle.remove()
    return shapes


def test_reference_loops_rerun_the_whole_sequence_one_image_at_a_time(fixed_length) -> None:
    model, features = fixed_length
    prefix = model.prefix_length
    greedy = lm_input_shapes(model, lambda: reference.caption_greedy(model, features[:2], 5))
    assert greedy == [(1, prefix + step) for step in range(5)] * 2
    beam = lm_input_shapes(model, lambda: reference.caption_beam(model, features[:1], 5, 5))
    assert beam == [(1, prefix)] + [(5, prefix + step) for step in range(1, 5)]


def test_benchmark_options() -> None:
    run = importlib.import_module("benchmarks.run")
    quick = run.parse_args(["--quick"])
    assert quick.decoder == "tiny" and quick.precision == "fp32" and quick.device == "cpu"
    args = run.parse_args(["--sizes", "medium", "--only", "greedy", "beam", "--json"])
    assert args.decoder == "medium" and args.only == ["greedy", "beam"] and args.json == "-"
    assert run.parse_args([]).decoder == "small"


# -- the decoding benchmark's three sides: polycap, transformers' generate(), ClipCap ---------
peer = importlib.import_module("benchmarks.peer")

STRATEGIES = {
    "greedy": GenerationConfig(max_length=MAX),
    "beam": GenerationConfig(max_length=MAX, beams=5),
    "sample": GenerationConfig(max_length=MAX, sample=True, top_p=0.9, seed=3),
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_the_three_sides_give_identical_tokens_at_forced_lengths(strategy, fixed_length) -> None:
    model, features = fixed_length
    lengths = [3, 9, 5, MAX, 2, 7]  # end token included
    hook = workload.ForcedLengths(lengths, model.end_token_id)
    config = STRATEGIES[strategy]
    ours = [c[0] for c in generate_ids(model, features, config, logits_hook=hook)]
    assert [len(ids) + 1 for ids in ours] == lengths  # rows left the batch at their lengths
    assert peer.generate_ids(model, features, config, hook) == ours
    if strategy == "sample":  # no ClipCap sampler; a different seed draws other tokens
        other = GenerationConfig(**{**config.to_json(), "seed": 4})
        assert peer.generate_ids(model, features, other, hook) != ours
        return
    rows = [1, 3]
    caption = reference.caption_greedy if strategy == "greedy" else reference.caption_beam
    extra = () if strategy == "greedy" else (5,)
    clipcap = caption(model, features[rows], MAX, *extra, logits_hook=hook, images=rows)
    assert clipcap == [ours[i] for i in rows]


def test_greedy_matches_generate_where_captions_end_by_themselves(trained) -> None:
    model, features, _ = trained
    config = GenerationConfig(max_length=MAX)
    ours = [c[0] for c in generate_ids(model, features, config)]
    assert peer.generate_ids(model, features, config) == ours
    assert len({len(ids) for ids in ours}) > 1


def test_forced_lengths_and_the_workload() -> None:
    hook = workload.ForcedLengths([1, 3], end_token_id=2)
    scores = torch.zeros(3, 5)
    first = hook(0, torch.tensor([0, 1, 1]), scores.clone())
    assert first[0].argmax() == 2 and torch.isinf(first[0, [0, 1, 3, 4]]).all()
    assert torch.isinf(first[1:, 2]).all() and torch.isfinite(first[1:, [0, 1, 3, 4]]).all()
    lengths = workload.batch_lengths(64)
    assert len(lengths) == 64 and max(lengths) <= 36 and 10 <= sorted(lengths)[32] <= 14
    decoding = importlib.import_module("benchmarks.decoding")
    rows = decoding.quartile_rows([5, 1, 9, 3, 7, 2, 8, 4], 4)
    assert [sorted([5, 1, 9, 3, 7, 2, 8, 4])[k] for k in (1, 3, 5, 7)] == sorted(
        [5, 1, 9, 3, 7, 2, 8, 4][i] for i in rows
    )
