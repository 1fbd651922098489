"""Run an ONNX export (:mod:`polycap.interop.onnx_export`) with ONNX Runtime, behind polycap's
loops.

:class:`OnnxCaptioner` looks like a :class:`~polycap.model.captioner.Captioner` to the code that
uses one (``prefix``, ``pack``, ``tokenizer``, ``config``, end and pad ids), and brings its own
:class:`OrtDecoderStep` (``decoder_step``) and image encoder (``image_encoder``), so
:func:`polycap.model.generation.generate_ids` / ``caption_features`` (greedy, beam, sampling, the
batch shrinking as captions end) and :func:`polycap.inference.pipeline.caption_images` run unchanged
over ONNX Runtime sessions. PyTorch is still used for the decoding loops' bookkeeping (argmax,
top-k, index_select on the cache), not for the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from polycap.errors import BadInput, first_line
from polycap.interop.onnx_export import FORMAT, FORMAT_VERSION, MANIFEST
from polycap.interop.onnx_manifest import check_manifest
from polycap.parts import ImageEncoder


def read_manifest(directory: Path) -> dict[str, Any]:
    """The export's manifest, checked (:mod:`polycap.interop.onnx_manifest`: keys, types,
    paths inside the folder); BadInput naming the file and the problem."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{directory}: not an ONNX export (no {MANIFEST})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadInput(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadInput(f"{path}: not a polycap ONNX manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise BadInput(
            f"{path}: format version {manifest['format_version']} is newer than this polycap "
            f"reads ({FORMAT_VERSION}); upgrade polycap"
        )
    return check_manifest(path, manifest)


def _session(path: Path, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session for ``path``; BadInput when missing or unreadable."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise BadInput(
            "running an ONNX export needs onnxruntime: pip install 'polycap[onnx]'"
        ) from None
    if not path.is_file():
        raise BadInput(f"{path}: missing (the ONNX export is incomplete)")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own Fail/InvalidGraph kinds
        first = first_line(error)
        raise BadInput(f"{path}: not a loadable ONNX graph ({first[:200]})") from None


class OrtDecoderStep:
    """The decoder graph as a :class:`~polycap.model.generation.DecoderStep`: the past is the
    ``present`` tensor the graph returned (``[L, 2, N, H, S, d]``), rows selected on axis 2."""

    def __init__(self, session: Any, past: dict[str, int], width: int) -> None:
        self.session = session
        self.layout = past
        self.width = width

    def _run(self, prefix: Any, input_ids: Any, past: Any) -> tuple[Any, Any]:
        import torch

        logits, present = self.session.run(
            ["logits", "present"],
            {
                "prefix": prefix.float().contiguous().numpy(),
                "input_ids": input_ids.contiguous().numpy(),
                "past": past.contiguous().numpy(),
            },
        )
        return torch.from_numpy(logits), torch.from_numpy(present)

    def start(self, prefix: Any) -> tuple[Any, Any]:
        import torch

        rows = prefix.shape[0]
        layout = self.layout
        empty_past = torch.zeros(layout["layers"], 2, rows, layout["heads"], 0, layout["head_dim"])
        return self._run(prefix, torch.zeros(rows, 0, dtype=torch.long), empty_past)

    def step(self, tokens: Any, past: Any) -> tuple[Any, Any]:
        import torch

        empty_prefix = torch.zeros(tokens.shape[0], 0, self.width)
        return self._run(empty_prefix, tokens[:, None].cpu(), past)

    def select(self, past: Any, rows: Any) -> Any:
        return past.index_select(2, rows.cpu())


class OrtImageEncoder(ImageEncoder):
    """The exported image tower: open_clip's preprocessing (from the manifest), ORT forward."""

    def __init__(self, session: Any, record: dict[str, Any], cache_key: str | None) -> None:
        from polycap.interop.clip_preprocess import fast_transform

        self.session = session
        self.backend = record.get("backend") or "open_clip"
        self.name = record["name"]
        self.pretrained = record.get("pretrained")
        self.embed_dim = int(record["embed_dim"])
        self.cache_key = cache_key
        settings = dict(record["preprocess"])
        settings["size"] = tuple(settings["size"])
        for key in ("mean", "std"):
            settings[key] = tuple(settings[key])
        self._settings = settings
        # open_clip's own transform only where the import-free one does not apply
        self._fast = fast_transform(settings)
        self._open_clip: Any = None

    def preprocess(self, image: Any) -> Any:
        if self._fast is not None and hasattr(image, "convert"):  # a PIL image
            return self._fast(image)
        if self._open_clip is None:
            from open_clip.transform import PreprocessCfg, image_transform_v2

            config = PreprocessCfg(**self._settings)
            self._open_clip = image_transform_v2(config, is_train=False)
        return self._open_clip(image)

    def encode_images(self, pixels: Any) -> Any:
        import torch

        (features,) = self.session.run(
            ["features"], {"pixels": pixels.float().contiguous().numpy()}
        )
        return torch.from_numpy(features)


class OnnxCaptioner:
    """An ONNX export loaded for captioning (see the module docstring)."""

    training = False

    def __init__(self, directory: Path, registries: Any = None, threads: int | None = None):
        import torch

        from polycap.plugins import get_registries

        self.directory = Path(directory)
        self.manifest = manifest = read_manifest(self.directory)
        self.config = dict(manifest["checkpoint"])
        code = manifest["language"]
        languages = (registries or get_registries()).languages
        if code not in languages:
            raise BadInput(
                f"{self.directory} is for language {code!r}, but no language pack {code!r} is "
                f"installed. Run: polycap plugins install {code}"
            )
        self.pack = languages.get(code)
        tokenizer_dir = self.directory / manifest["tokenizer"]
        if not tokenizer_dir.is_dir():
            raise BadInput(f"{tokenizer_dir}: missing (the ONNX export is incomplete)")
        self.tokenizer = self.pack.load_tokenizer(str(tokenizer_dir))
        self.stop_token = self.config.get("stop_token")
        self.end_token_id = int(manifest["stop_token_id"])
        self.pad_token_id = int(manifest["pad_token_id"])
        self.prefix_length = int(manifest["prefix_length"])
        self.threads = threads
        graphs = manifest["graphs"]
        self.mapper = _session(self.directory / graphs["mapper"], threads)
        self.decoder = _session(self.directory / graphs["decoder"], threads)
        self._encoder_graph = graphs.get("image_encoder")
        self.device = torch.device("cpu")

    # -- what the decoding loops and captioning use ---------------------------------------------
    def eval(self) -> OnnxCaptioner:
        return self

    def train(self, mode: bool = True) -> OnnxCaptioner:
        return self

    def prefix(self, features: Any) -> Any:
        """``[B, clip_dim]`` image features -> ``[B, P, D]`` prefix embeddings (mapper graph)."""
        import torch

        (prefix,) = self.mapper.run(
            ["prefix"], {"features": features.float().cpu().contiguous().numpy()}
        )
        return torch.from_numpy(prefix)

    def decode_caption(self, ids: list[int], finished: bool = True) -> str:
        """Generated ids -> text, by the checkpoint's own rule (:meth:`Captioner.decode_caption
        <polycap.model.captioner.Captioner.decode_caption>`)."""
        from polycap.model.captioner import Captioner

        return Captioner.decode_caption(self, ids, finished)  # type: ignore[arg-type]

    def decoder_step(self, config: Any) -> OrtDecoderStep:
        """The decoder graph behind the loops (always with its cache: ``use_cache`` is moot)."""
        return OrtDecoderStep(self.decoder, self.manifest["past"], int(self.manifest["lm_dim"]))

    def image_encoder(self, device: str = "cpu") -> OrtImageEncoder:
        """The exported image encoder; BadInput when the export has none."""
        if not self._encoder_graph:
            raise BadInput(
                f"{self.directory}: this ONNX export has no image encoder (exported with "
                "--no-encoder); caption image features instead"
            )
        record = self.manifest["encoder"]
        session = _session(self.directory / self._encoder_graph, self.threads)
        digest = record.get("graph_sha256")
        key = f"onnx:{record['name']}:sha256-{digest[:32]}" if digest else None
        return OrtImageEncoder(session, record, key)
