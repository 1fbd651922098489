"""CLIPScore and RefCLIPScore (Hessel et al., 2021) with any encoder that has a text tower.

CLIP-S(c, v) = w * max(cos(E_c, E_v), 0) with w = 2.5; RefCLIP-S is the harmonic mean of
CLIP-S and max(max_r cos(E_c, E_r), 0). Captions and references get ``prompt`` in front
("A photo depicts " for English as in the paper; none for other languages by default).
"""

from __future__ import annotations

from typing import Any

from polycap.errors import BadInput
from polycap.eval.runner import EvalContext, MetricUnavailable
from polycap.parts import MetricScores

W = 2.5
ENGLISH_PROMPT = "A photo depicts "


def clip_prompt(ctx: EvalContext) -> str:
    """The prompt in force: the option, else Hessel's for English, else none."""
    if ctx.clip.prompt is not None:
        prompt = ctx.clip.prompt
        return prompt if not prompt or prompt.endswith(" ") else prompt + " "
    return ENGLISH_PROMPT if ctx.pack.code == "en" else ""


def load_clip_encoder(ctx: EvalContext) -> Any:
    """The CLIPScore encoder (given, or loaded once per context)."""
    if ctx.clip.encoder is not None:
        return ctx.clip.encoder
    if "clip_encoder_error" in ctx.cache:  # a shared cache: do not retry a failed load
        raise MetricUnavailable(ctx.cache["clip_encoder_error"])
    if "clip_encoder" not in ctx.cache:
        from polycap.data.encoding import load_encoder

        if not ctx.clip.download and weights_cached(ctx.clip.spec, ctx.clip.pretrained) is False:
            ctx.cache["clip_encoder_error"] = (
                f"weights {ctx.clip.pretrained!r} of {ctx.clip.spec!r} are not downloaded; "
                "pass --clip-download to fetch them, or --clip-encoder/--clip-pretrained FILE"
            )
            raise MetricUnavailable(ctx.cache["clip_encoder_error"])
        try:
            ctx.cache["clip_encoder"] = load_encoder(
                ctx.clip.spec, pretrained=ctx.clip.pretrained, device=ctx.clip.device
            )
        except BadInput as error:
            ctx.cache["clip_encoder_error"] = f"cannot load encoder {ctx.clip.spec!r}: {error}"
            raise MetricUnavailable(ctx.cache["clip_encoder_error"]) from None
    return ctx.cache["clip_encoder"]


def weights_cached(spec: str, pretrained: str | None) -> bool | None:
    """Whether an open_clip weights *tag* is already downloaded (Hugging Face or URL cache);
    None when ``pretrained`` is not a known tag of ``spec`` (a file, None, another backend)."""
    import os

    if pretrained is None or ":" in spec or os.path.exists(pretrained):
        return None
    import open_clip

    config = open_clip.get_pretrained_cfg(spec.replace("/", "-"), pretrained)
    if not config:
        return None
    if config.get("file"):
        return os.path.exists(config["file"])
    hub = config.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)  # as open_clip splits it
        names = [filename] if filename else ["open_clip_pytorch_model.bin"]
        names += [n.rsplit(".", 1)[0] + ".safetensors" for n in list(names)]
        names += ["open_clip_model.safetensors"]
        if any(isinstance(try_to_load_from_cache(repo, n), str) for n in names):
            return True
    url = config.get("url", "")
    if url:
        return os.path.exists(
            os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        )
    return False


def clip_scores(
    image: Any, candidate: Any, references: list[Any]
) -> tuple[list[float], list[float]]:
    """Per-image (CLIP-S, RefCLIP-S) on the 0-1 scale from L2-normalised embeddings:
    ``image`` [N, D], ``candidate`` [N, D], ``references`` a list of [R_i, D]."""
    import torch

    cos = (image * candidate).sum(dim=1)
    clip_s = W * torch.clamp(cos, min=0.0)
    ref_s = []
    for row, refs in zip(candidate, references, strict=True):
        ref_s.append(max(float((refs @ row).max()), 0.0) if len(refs) else 0.0)
    ref_t = torch.tensor(ref_s, dtype=clip_s.dtype)
    denominator = clip_s + ref_t
    harmonic = torch.where(
        denominator > 0,
        2 * clip_s * ref_t / denominator.clamp(min=1e-12),
        torch.zeros_like(denominator),
    )
    return [float(v) for v in clip_s], [float(v) for v in harmonic]


class ClipScore:
    """CLIPScore and RefCLIPScore (x100) with the encoder of :class:`ClipOptions`."""

    name = "clipscore"
    columns = ("CLIPScore", "RefCLIPScore")
    lower_is_better = False

    def unavailable(self, ctx: EvalContext) -> str | None:
        if ctx.images is None:
            return "needs the images"
        return None

    def compute(self, ctx: EvalContext) -> MetricScores:
        import torch

        from polycap.data.encoding import encode_images

        encoder = load_clip_encoder(ctx)
        assert ctx.images is not None
        encoded = encode_images(
            encoder,
            ctx.images,
            batch_size=ctx.clip.batch_size,
            cache_dir=ctx.clip.cache_dir,
            progress=False,
        )
        rows = dict(zip(map(str, encoded.paths), encoded.features, strict=True))
        keep = [i for i, path in enumerate(ctx.images) if str(path) in rows]
        if not keep:
            raise MetricUnavailable("no image could be read")
        prompt = clip_prompt(ctx)
        texts = [prompt + ctx.predictions[i] for i in keep]
        counts = [len(ctx.references[i]) for i in keep]
        texts += [prompt + ref for i in keep for ref in ctx.references[i]]
        try:
            text = encoder.encode_texts(texts)
        except BadInput as error:
            raise MetricUnavailable(str(error)) from None
        text = torch.nn.functional.normalize(text.float(), dim=-1)
        image = torch.stack([rows[str(ctx.images[i])] for i in keep]).float()
        image = torch.nn.functional.normalize(image, dim=-1)
        candidate, reference_rows = text[: len(keep)], text[len(keep) :]
        references = list(torch.split(reference_rows, counts))
        clip_s, ref_s = clip_scores(image, candidate, references)
        per_clip: list[float | None] = [None] * len(ctx)
        per_ref: list[float | None] = [None] * len(ctx)
        for position, index in enumerate(keep):
            per_clip[index] = 100.0 * clip_s[position]
            per_ref[index] = 100.0 * ref_s[position]
        return MetricScores(
            {
                "CLIPScore": 100.0 * sum(clip_s) / len(keep),
                "RefCLIPScore": 100.0 * sum(ref_s) / len(keep),
            },
            {"CLIPScore": per_clip, "RefCLIPScore": per_ref},  # type: ignore[dict-item]
            {
                "encoder": getattr(encoder, "name", ctx.clip.spec),
                "pretrained": getattr(encoder, "pretrained", ctx.clip.pretrained),
                "w": W,
                "prompt": prompt,
                "images_scored": len(keep),
                "images_unreadable": len(ctx) - len(keep),
            },
        )
