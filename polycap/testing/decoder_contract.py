"""The decoder contract: what any causal LM behind a polycap prefix must do.

:func:`check_decoder_contract` loads a decoder folder through the pack's own loaders, puts a
fresh mapper in front of it and checks, on a tiny model: a few training steps fit three
captions (the loss falls, greedy decoding then writes exactly those captions and stops at the
end token, also when padding and end share one id); the KV cache changes nothing (greedy,
beam); a batch decodes as its images one at a time; beams are distinct; seeded sampling
repeats; a saved checkpoint loads back to the same captions. Every pack's conformance suite
runs it on a tiny GPT-2 and a tiny Llama (:data:`polycap.offline.tiny.DECODER_BUILDERS`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polycap.language import LanguagePack
from polycap.plugins import PluginHost
from polycap.util.batching import pad_right

CLIP_DIM = 8
STEPS = 80


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _registries(pack: LanguagePack) -> Any:
    from polycap.builtin import mappers
    from polycap.hookspecs import hookimpl

    class _Pack:
        @hookimpl
        def register_languages(self, register: Any) -> None:
            register(pack.code, pack)

    host = PluginHost(load_entry_points=False, builtins=False)
    host.add_plugin(mappers, "polycap.builtin.mappers")
    host.add_plugin(_Pack(), f"contract-{pack.code}")
    return host.registries


def _fit(model: Any, features: Any, texts: Sequence[str]) -> tuple[float, float]:
    """STEPS AdamW steps on (features, texts); the loss before and after."""
    import torch

    ids, mask = pad_right([model.encode_caption(text) for text in texts], model.pad_token_id)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(STEPS):
        loss = model(features, ids, mask).loss
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return losses[0], losses[-1]


def check_decoder_contract(
    pack: LanguagePack, directory: Path, texts: Sequence[str], work_dir: Path
) -> None:
    """Run the contract on the decoder + tokenizer saved in ``directory`` (see the module
    docstring); ``texts``: three or more captions in the pack's language; ``work_dir``: where
    the checkpoint is saved."""
    import torch

    from polycap.model.captioner import Captioner
    from polycap.model.generation import GenerationConfig, generate_ids

    registries = _registries(pack)
    model, kind = _contract_model(pack, directory, registries)
    who = f"pack {pack.code!r} with {kind}"
    texts = [pack.normalize(text) for text in texts[:3]]
    features = torch.randn(len(texts), CLIP_DIM, generator=torch.Generator().manual_seed(0))
    with _one_thread():
        before, after = _fit(model, features, texts)
        _require(after < before / 2, f"{who}: training did not fit ({before:.3f} -> {after:.3f})")
        greedy = GenerationConfig(max_length=40)
        ids = generate_ids(model, features, greedy)
        captions = [model.decode_caption(row[0]) for row in ids]
        _require(
            captions == texts,
            f"{who}: after fitting, greedy wrote {captions}, expected {texts} (end token, "
            f"pad id {model.pad_token_id} vs end id {model.end_token_id})",
        )
        for config in (greedy, GenerationConfig(max_length=12, beams=3, num_captions=3)):
            _check_consistent(model, features, config, who)
        sampling = GenerationConfig(max_length=12, sample=True, top_p=0.9, seed=3)
        _require(
            generate_ids(model, features, sampling) == generate_ids(model, features, sampling),
            f"{who}: seeded sampling does not repeat",
        )
        saved = model.save(Path(work_dir) / f"contract-{pack.code}-{kind}")
        loaded = Captioner.load(saved, registries=registries)
        _require(
            generate_ids(loaded, features, greedy) == ids,
            f"{who}: the saved checkpoint decodes differently",
        )


def _contract_model(pack: LanguagePack, directory: Path, registries: Any) -> tuple[Any, str]:
    """A seeded Captioner over the pack's decoder + tokenizer in ``directory``, and the
    decoder's class name."""
    import torch

    from polycap.model.captioner import Captioner
    from polycap.parts import EncoderSpec

    tokenizer = pack.load_tokenizer(str(directory))
    lm = pack.load_decoder(str(directory))
    torch.manual_seed(0)
    model = Captioner.build(
        pack,
        tokenizer,
        lm,
        EncoderSpec(name="contract", embed_dim=CLIP_DIM),
        prefix_length=2,
        train_lm=True,
        registries=registries,
    )
    return model, type(lm).__name__


def _check_consistent(model: Any, features: Any, config: Any, who: str) -> None:
    """One strategy decodes the same with and without KV cache, batched and one by one, and
    (for beams) returns distinct beams."""
    from polycap.model.generation import GenerationConfig, generate_ids

    plain = GenerationConfig(**{**config.to_json(), "use_cache": False})
    cached, uncached = (
        generate_ids(model, features, config),
        generate_ids(model, features, plain),
    )
    _require(cached == uncached, f"{who}: {config.strategy} differs with/without KV cache")
    single = [generate_ids(model, features[i : i + 1], config)[0] for i in range(len(features))]
    _require(single == cached, f"{who}: {config.strategy}: a batch differs from one by one")
    if config.beams > 1:
        _require(
            all(len({tuple(b) for b in beams}) == len(beams) for beams in cached),
            f"{who}: beams are not distinct",
        )


class _one_thread:
    """Tiny models run fastest on one thread (and the machine is shared)."""

    def __enter__(self) -> None:
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self.before)
