"""Export a captioner as ONNX graphs that ONNX Runtime runs (``polycap export --to onnx``).

An export is a folder::

    polycap-onnx.json     the manifest: graphs, their inputs and outputs, the KV-cache layout,
                          language, tokenizer folder, stop and pad tokens, generation defaults,
                          image preprocessing, and the checkpoint's own record
    image_encoder.onnx    pixels [B, 3, H, W] -> image features [B, clip_dim] (open_clip)
    mapper.onnx           features [B, clip_dim] -> prefix [B, P, D] (normalising and
                          standardising as the checkpoint does)
    decoder.onnx          (prefix [N, P, D], input_ids [N, T], past [L, 2, N, H, S, d]) ->
                          (logits [N, V] for the next token, present [L, 2, N, H, S+P+T, d])
    tokenizer/            the tokenizer (save_pretrained)
    run_onnx.py           captions image files without polycap (numpy, onnxruntime,
    steps_polycap.py      tokenizers, Pillow): :mod:`polycap.interop.onnx_standalone`

The decoder is one graph for both phases: the first call feeds the prefix with no tokens and an
empty past; each later call feeds one token per row (an empty prefix) and the past it got back,
so decoding is incremental. :mod:`polycap.interop.onnx_runtime` runs it behind polycap's own
decoding loops. Graphs are traced with ``torch.onnx.export`` (the dynamo exporter); batch, prefix,
token and past lengths are dynamic.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from polycap.data.encoding import file_digest
from polycap.errors import BadInput
from polycap.interop.hf_standalone import caption_text_rule
from polycap.interop.onnx_standalone import add_standalone
from polycap.interop.portable import portable
from polycap.interop.targets import check_target
from polycap.model.lm_keywords import lm_keywords
from polycap.parts import EncoderSpec
from polycap.util.atomic import atomic_folder, write_json
from polycap.version import __version__

MANIFEST = "polycap-onnx.json"
FORMAT = "polycap-onnx"
FORMAT_VERSION = 1
ENCODER_GRAPH = "image_encoder.onnx"
MAPPER_GRAPH = "mapper.onnx"
DECODER_GRAPH = "decoder.onnx"
TOKENIZER_DIR = "tokenizer"
OPSET = 18

EXTERNAL_DATA_BYTES = 1_800_000_000  # larger graphs keep their weights in a .data file (2 GB cap)


def is_onnx_export(path: Path) -> bool:
    """Whether ``path`` is a folder written by :func:`export_onnx`."""
    return (Path(path) / MANIFEST).is_file()


def cache_layout(lm: Any) -> dict[str, int]:
    """Layers, key/value heads and head size of ``lm``'s KV cache, read off one tiny call."""
    import torch

    from polycap.model.generation import _output_cache

    width = lm.get_input_embeddings().embedding_dim
    with torch.inference_mode():
        out = lm(inputs_embeds=torch.zeros(1, 2, width, device=lm.device), use_cache=True)
    layers = cache_tensors(_output_cache(out))
    _, heads, _, head_dim = layers[0][0].shape
    return {"layers": len(layers), "heads": int(heads), "head_dim": int(head_dim)}


def cache_tensors(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) per layer of a transformers cache object or a legacy tuple cache."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(layer[0], layer[1]) for layer in cache]


def _decoder_module(lm: Any) -> Any:
    """``lm`` as a module over plain tensors: (prefix, input_ids, past) -> (logits, present)."""
    import torch
    from torch import nn
    from transformers import DynamicCache

    from polycap.model.generation import _output_cache

    keywords = lm_keywords(lm)

    class DecoderGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = lm

        def forward(self, prefix: Any, input_ids: Any, past: Any) -> tuple[Any, Any]:
            tokens = self.lm.get_input_embeddings()(input_ids)
            embeds = torch.cat([prefix, tokens.to(prefix.dtype)], dim=1)
            cache = DynamicCache()
            for layer in range(past.shape[0]):
                cache.update(past[layer, 0], past[layer, 1], layer)
            out = self.lm(
                inputs_embeds=embeds,
                use_cache=True,
                **{keywords.cache: cache},
                **keywords.keep_last(1),
            )
            present = torch.stack(
                [torch.stack([k, v]) for k, v in cache_tensors(_output_cache(out))]
            )
            return out.logits[:, -1].float(), present

    return DecoderGraph().eval()


def _mapper_module(model: Any) -> Any:
    from torch import nn

    class MapperGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, features: Any) -> Any:
            return self.model.prefix(features)

    return MapperGraph().eval()


def _encoder_module(clip: Any) -> Any:
    from torch import nn

    class EncoderGraph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clip = clip

        def forward(self, pixels: Any) -> Any:
            return self.clip.encode_image(pixels).float()

    return EncoderGraph().eval()


def _export(module: Any, example: tuple, path: Path, names: dict[str, Any]) -> None:
    """``torch.onnx.export`` (dynamo) of ``module`` on ``example`` into ``path``; ``names``:
    input name -> its dynamic dimensions ``{axis: name}``, then ``outputs``: output names."""
    import contextlib
    import io
    import logging
    import warnings

    import torch
    from torch.export import Dim

    outputs = names.pop("outputs")
    dims: dict[str, Any] = {}
    shapes = {
        name: {axis: dims.setdefault(label, Dim(label)) for axis, label in axes.items()}
        for name, axes in names.items()
    }
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with (
        torch.no_grad(),
        contextlib.redirect_stdout(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=list(names),
            output_names=outputs,
            dynamic_shapes=shapes,
            opset_version=OPSET,
            dynamo=True,
            external_data=size > EXTERNAL_DATA_BYTES,
            verbose=False,
        )


def export_decoder(lm: Any, path: Path, prefix_length: int) -> dict[str, int]:
    """Write ``lm`` as the decoder graph; returns its cache layout."""
    import torch

    layout = cache_layout(lm)
    width = lm.get_input_embeddings().embedding_dim
    dtype = lm.get_input_embeddings().weight.dtype
    # example sizes of at least 2 everywhere: size-0/1 example dims would be specialised
    batch, tokens, past = 2, 2, 3
    example = (
        torch.zeros(batch, max(prefix_length, 2), width, dtype=dtype),
        torch.zeros(batch, tokens, dtype=torch.long),
        torch.zeros(
            layout["layers"], 2, batch, layout["heads"], past, layout["head_dim"], dtype=dtype
        ),
    )
    names = {
        "prefix": {0: "batch", 1: "prefix_length"},
        "input_ids": {0: "batch", 1: "tokens"},
        "past": {2: "batch", 4: "past_length"},
        "outputs": ["logits", "present"],
    }
    _export(_decoder_module(lm), example, path, names)
    return layout


def export_mapper(model: Any, path: Path) -> None:
    import torch

    clip_dim = int(model.config["encoder"]["embed_dim"])
    example = (torch.zeros(2, clip_dim),)
    names = {"features": {0: "batch"}, "outputs": ["prefix"]}
    _export(_mapper_module(model), example, path, names)


def export_encoder(encoder: Any, path: Path) -> dict[str, Any]:
    """Write an open_clip encoder's image tower; returns its preprocessing settings."""
    import torch

    clip = getattr(encoder, "clip", None)
    preprocess = getattr(getattr(clip, "visual", None), "preprocess_cfg", None)
    if clip is None or not preprocess:
        raise BadInput(
            f"encoder {encoder.spec!r} ({encoder.backend}): only open_clip image encoders "
            "export to ONNX; use --no-encoder to export the mapper and decoder alone"
        )
    height, width = preprocess["size"]
    example = (torch.zeros(2, 3, height, width),)
    names = {"pixels": {0: "batch"}, "outputs": ["features"]}
    _export(_encoder_module(clip.float().eval()), example, path, names)
    return {key: list(v) if isinstance(v, tuple) else v for key, v in preprocess.items()}


def export_onnx(
    model: Any,
    directory: Path,
    encoder: Any | None,
    generation: Any = None,
    say: Any = None,
    int8: bool | str = False,
    force: bool = False,
) -> Path:
    """Write ``model`` (a Captioner) and ``encoder`` (None: features only) as an ONNX export
    into ``directory``, atomically; returns the folder. ``int8``: dynamic int8 quantisation of
    the graphs' weights (:func:`quantize_int8`): True for every graph, ``"encoder"`` for the
    image encoder's alone (the decoder, whose near-ties decide the words, stays fp32).
    ``directory`` is replaced only when it is empty or an earlier ONNX export, or with
    ``force`` another polycap model (:func:`polycap.interop.targets.check_target`)."""
    from polycap.model.generation import GenerationConfig

    directory = Path(directory)
    if int8 not in (False, True, "encoder"):
        raise BadInput(f"int8 must be True, False or 'encoder', not {int8!r}")
    if int8 == "encoder" and encoder is None:
        raise BadInput("int8 for the image encoder only needs the encoder (not --no-encoder)")
    if model.config.get("retrieval"):
        raise BadInput(
            "a retrieval-augmented model does not export to ONNX (its prompts come from a "
            "caption bank at each caption; the ONNX graphs decode from the image alone): "
            "export it with --to hf, which bundles the bank"
        )
    check_target(directory, "onnx", force)
    say = say or (lambda message: None)
    generation = generation or GenerationConfig()
    model = model.float().eval()
    with atomic_folder(directory) as work:
        say("decoder graph (with its KV cache)")
        layout = export_decoder(model.lm, work / DECODER_GRAPH, model.prefix_length)
        say("mapper graph")
        export_mapper(model, work / MAPPER_GRAPH)
        preprocess = digest = None
        if encoder is not None:
            say("image encoder graph")
            preprocess = export_encoder(encoder, work / ENCODER_GRAPH)
        graphs = [DECODER_GRAPH, MAPPER_GRAPH] + ([ENCODER_GRAPH] if encoder is not None else [])
        if int8:
            say("int8 quantisation (dynamic)")
            quantize_int8(work, [ENCODER_GRAPH] if int8 == "encoder" else graphs)
        if encoder is not None:
            digest = file_digest(work / ENCODER_GRAPH)
        model.tokenizer.save_pretrained(str(work / TOKENIZER_DIR))
        encoder_graph = ENCODER_GRAPH if encoder is not None else None
        encoder_info = {"preprocess": preprocess, "graph_sha256": digest}
        manifest = _manifest(model, encoder_graph, encoder_info, layout, generation, int8)
        rule = caption_text_rule(model.pack)
        manifest |= add_standalone(work, manifest["graphs"], preprocess, rule)
        write_json(work / MANIFEST, manifest)
    return directory


def _manifest(
    model: Any,
    encoder_graph: str | None,
    encoder_info: dict[str, Any],
    layout: dict[str, Any],
    generation: Any,
    int8: bool | str,
) -> dict[str, Any]:
    """The export's manifest: graphs, encoder spec + ``encoder_info`` (preprocess, graph
    digest), tokenizer, special ids, past-cache ``layout``, generation defaults, checkpoint."""

    spec = portable(EncoderSpec.from_json(model.config["encoder"]).to_json(cache_key=False))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "polycap_version": __version__,
        "language": model.config["language"],
        "graphs": {
            "image_encoder": encoder_graph,
            "mapper": MAPPER_GRAPH,
            "decoder": DECODER_GRAPH,
        },
        "encoder": {**spec, **encoder_info},
        "tokenizer": TOKENIZER_DIR,
        "stop_token_id": int(model.end_token_id),
        "stop_token": model.tokenizer.convert_ids_to_tokens(int(model.end_token_id)),
        "pad_token_id": int(model.pad_token_id),
        "prefix_length": int(model.prefix_length),
        "lm_dim": int(model.lm.get_input_embeddings().embedding_dim),
        "vocab_size": int(model.lm.get_output_embeddings().weight.shape[0]),
        "past": {"shape": "[layers, 2, batch, heads, length, head_dim]", **layout},
        "quantization": _quantization(int8),
        "generation": asdict(generation),
        "checkpoint": portable(model.config),
    }


def _quantization(int8: bool | str) -> str | None:
    if int8 == "encoder":
        return "dynamic int8 weights (image encoder only)"
    return "dynamic int8 weights" if int8 else None


def quantize_int8(directory: Path, graphs: list[str]) -> None:
    """Dynamic int8 quantisation (``onnxruntime.quantization.quantize_dynamic``, QInt8
    weights; activations quantised at run time) of ``graphs`` in ``directory``, in place."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its advice to pre-process goes to the root logger
    try:
        for graph in graphs:
            path = directory / graph
            quantized = path.with_name(path.stem + ".int8.onnx")
            quantize_dynamic(str(path), str(quantized), weight_type=QuantType.QInt8)
            quantized.replace(path)
    finally:
        root.setLevel(level)
