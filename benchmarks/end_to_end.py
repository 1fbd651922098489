"""Images in, captions out, against the captioners users pick: section ``end-to-end``.

256 JPEGs of 640 x 480 on disk (:func:`benchmarks.workload.write_images`) become caption strings:

- **polycap** through its real caption path, ``CaptionPipeline.caption_files`` (reader threads
  decoding and preprocessing, open_clip ViT-B/32 in batches, the MLP mapper, greedy decoding in
  batches with rows leaving as their captions end, the pack's detokenizer): GPT-2 small on
  PyTorch, the same model exported by ``polycap export --to onnx`` (encoder included) on ONNX
  Runtime in fp32 and in dynamic int8, and a 24-layer GPT-2-medium-sized decoder (rinna's
  japanese-gpt2-medium size) on PyTorch; all random weights;
- **SmolVLM-256M** and **Florence-2-base** (:mod:`benchmarks.vlm_peers`): published
  configurations, random weights, their processors, ``generate`` as their model cards show.

Every side produces the same number of tokens per caption: lengths drawn from COCO-like
captions (:func:`benchmarks.workload.batch_lengths`, median 12, end token included), forced by
a logits hook on polycap's side and a ``LogitsProcessor`` in ``generate``. All sides run with
the same torch thread count (ONNX Runtime sessions with the same number of threads), the timed
runs alternate (order rotating each round) and the best of ``--repeats`` is kept. The peers
take seconds per image, so they caption the first few of the same images (the table says how
many); their rate does not depend on how many they are given.

Cold start: ``polycap caption one.jpg -m MODEL`` (a checkpoint of the same ViT-B/32 + GPT-2
small, encoder weights bundled) and the peers' equivalent script (``python -m
benchmarks.vlm_peers FOLDER one.jpg``: ``from_pretrained``, processor, ``generate``) in fresh
processes, timed to their first line of output, with their peak resident memory
(:mod:`benchmarks.cold_start`). ``polycap caption`` over the whole folder gives the CLI's peak
memory at batch 64. The bounds beside the results come from this machine's measured matmul
GFLOP/s and copy GB/s (:mod:`benchmarks.machine`).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCHMARKS = ("end-to-end",)
ORDER = 25
CLIP_DIM = 512
GOALS = {"small": 30.0, "medium": 10.0, "smolvlm": 10.0, "florence": 5.0}
FIRST_CAPTION_GOAL_S = 3.0
PEAK_GOAL_MB = 1200.0


@dataclass
class Side:
    """One captioner under test: a callable captioning ``images`` paths, and its timings."""

    name: str
    run: Callable[[list[Path], list[int]], list[str]]
    images: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def rate(self) -> float:
        return self.images / min(self.seconds) if self.seconds else 0.0


@dataclass
class Plan:
    """Sizes of one run."""

    images: int
    peer_images: int
    batch: int
    repeats: int
    workdir: Path
    paths: list[Path] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)


def plan(options: Any, workdir: Path) -> Plan:
    from benchmarks import workload

    n = 16 if options.quick else 256
    made = Plan(n, 1 if options.quick else 4, min(options.batch, n), options.repeats, workdir)
    made.paths = workload.write_images(workdir / "images", n)
    made.lengths = workload.batch_lengths(n)
    return made


# -- polycap -------------------------------------------------------------------------------------
def polycap_side(name: str, pipeline: Any, run_plan: Plan, note: str = "") -> Side:
    """polycap's ``caption_files`` over the plan's images, lengths forced per batch."""
    from benchmarks.workload import BatchedForcedLengths
    from polycap.inference.pipeline import generation_config

    end = int(pipeline.model.end_token_id)

    def run(paths: list[Path], lengths: list[int]) -> list[str]:
        hook = BatchedForcedLengths(lengths, end)
        found = pipeline.caption_files(
            paths,
            generation_config(max_length=max(lengths)),
            batch_size=run_plan.batch,
            progress=False,
            logits_hook=hook,
        )
        return [captions[0] for captions in found.captions]

    return Side(name, run, run_plan.images, note=note)


def torch_pipeline(decoder: str, encoder: Any, workdir: Path, options: Any) -> Any:
    """polycap's pipeline around the benchmark captioner (on ``options.device``; weights cast
    to bf16/fp16 with ``--precision``, as :func:`benchmarks.decoding.build_model` does)."""
    import dataclasses

    from benchmarks import decoding
    from polycap.inference.pipeline import CaptionPipeline

    sized = dataclasses.replace(options, decoder=decoder)
    model = decoding.build_model(sized, workdir / f"tokenizer-{decoder}")
    pipeline = CaptionPipeline(model, device=options.device)
    pipeline.use_encoder(encoder)
    return pipeline


def onnx_pipelines(model: Any, encoder: Any, run_plan: Plan, options: Any) -> dict[str, Any]:
    """``polycap export --to onnx`` (fp32, int8) of ``model`` with ``encoder``, loaded as
    ``polycap caption -m FOLDER`` loads them; {} with a note when the export fails."""
    import torch

    from benchmarks.int8_agreement import VARIANTS
    from polycap.inference.pipeline import CaptionPipeline
    from polycap.interop.onnx_export import export_onnx
    from polycap.interop.onnx_runtime import OnnxCaptioner

    made: dict[str, Any] = {}
    for label, (int8, flag) in VARIANTS.items():
        folder = run_plan.workdir / ("onnx" + flag.replace("--", "-"))
        options.say(f"end-to-end: polycap export --to onnx {flag}")
        started = time.perf_counter()
        try:
            export_onnx(model, folder, encoder=encoder, int8=int8)
        except Exception as error:  # an exporter failure is a finding, not a crash
            options.say(f"end-to-end: ONNX export failed: {str(error).splitlines()[0][:200]}")
            return {}
        options.say(f"end-to-end: exported in {time.perf_counter() - started:.0f} s")
        pipeline = CaptionPipeline(OnnxCaptioner(folder, threads=torch.get_num_threads()))
        pipeline.encoder.cache_key = None  # timed runs must encode, not read a feature cache
        made[label] = pipeline
    return made


# -- the peers -----------------------------------------------------------------------------------
def peer_side(peer: Any, run_plan: Plan) -> Side:
    """A peer captioning the first ``peer_images`` images, a batch at a time as its model card
    calls it (``processor(images=..., text=...)``, then ``generate``)."""
    from PIL import Image

    def run(paths: list[Path], lengths: list[int]) -> list[str]:
        images = []
        for path in paths:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        captions = peer.caption(images, lengths)
        if peer.last_lengths != lengths:
            raise AssertionError(f"{peer.name}: generated {peer.last_lengths}, not {lengths}")
        return captions

    return Side(peer.name, run, run_plan.peer_images)


def build_peers(run_plan: Plan, options: Any) -> list[Side]:
    from benchmarks import vlm_peers

    sides = []
    for kind in ("smolvlm", "florence"):
        options.say(f"end-to-end: building {vlm_peers.PEERS[kind]} (random weights, saved)")
        folder = getattr(vlm_peers, f"build_{kind}")(run_plan.workdir / kind)
        peer = vlm_peers.Peer(folder, small_images=options.quick, device=options.device)
        sides.append(peer_side(peer, run_plan))
    return sides


# -- timing --------------------------------------------------------------------------------------
def timed_rounds(sides: list[Side], run_plan: Plan, options: Any) -> None:
    """Warm every side up on one image, then alternate the timed runs (order rotating)."""
    for side in sides:
        options.say(f"end-to-end: warm-up, {side.name}")
        side.run(run_plan.paths[:1], run_plan.lengths[:1])
    for round_ in range(run_plan.repeats):
        shift = round_ % len(sides)
        for side in sides[shift:] + sides[:shift]:
            paths, lengths = run_plan.paths[: side.images], run_plan.lengths[: side.images]
            options.say(f"end-to-end: {side.name}, {side.images} images, round {round_ + 1}")
            start, cpu = time.perf_counter(), time.process_time()
            side.captions = side.run(paths, lengths)
            side.seconds.append(time.perf_counter() - start)
            side.cpu_seconds.append(time.process_time() - cpu)
            options.say(f"end-to-end: {side.name}: {side.rate:.2f} captions/s (best so far)")


def stage_profile(pipeline: Any, run_plan: Plan) -> dict[str, float]:
    """The two stages ``caption_files`` runs one after the other, timed apart: reading +
    encoding (reader threads feeding the encoder) and captioning the features."""
    from benchmarks.workload import BatchedForcedLengths
    from polycap.data.encoding import encode_images
    from polycap.inference.pipeline import generation_config

    start = time.perf_counter()
    encoded = encode_images(
        pipeline.encoder, run_plan.paths, batch_size=run_plan.batch, progress=False
    )
    encode_s = time.perf_counter() - start
    hook = BatchedForcedLengths(run_plan.lengths, int(pipeline.model.end_token_id))
    start = time.perf_counter()
    pipeline.caption_features(
        encoded.features,
        generation_config(max_length=max(run_plan.lengths)),
        run_plan.batch,
        logits_hook=hook,
    )
    return {"encode": encode_s, "caption": time.perf_counter() - start}


# -- cold start ----------------------------------------------------------------------------------
def polycap_checkpoint(model: Any, encoder: Any, folder: Path) -> Path:
    """``model`` saved as a checkpoint a user would caption with: LM and the encoder's (random)
    weights bundled, so a cold ``polycap caption`` loads exactly these."""
    import torch

    weights = folder.parent / "vit-b-32-random.pt"
    torch.save(encoder.clip.state_dict(), weights)
    model.config["encoder"] = {**model.config["encoder"], "pretrained": str(weights)}
    model.config["save_lm"] = True
    return model.save(folder)


def cold_starts(checkpoint: Path, run_plan: Plan, options: Any) -> dict[str, dict[str, Any]]:
    """First caption from a cold process and peak memory, per side; and ``polycap caption``
    over the whole folder (peak memory at batch ``run_plan.batch``)."""
    import torch

    from benchmarks import cold_start

    one = str(run_plan.paths[0])
    threads = str(torch.get_num_threads())
    env = {"OMP_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cli = [sys.executable, "-m", "polycap", "caption"]
    device = options.device
    commands = {
        "polycap caption, one image": [*cli, one, "-m", str(checkpoint), "--device", device],
        f"polycap caption, {run_plan.images} images": [
            *cli,
            str(run_plan.workdir / "images"),
            "-m",
            str(checkpoint),
            "--device",
            device,
            "--batch-size",
            str(run_plan.batch),
        ],
    }
    for export in ("onnx", "onnx-int8-encoder", "onnx-int8"):  # the exports timed above
        if (run_plan.workdir / export).is_dir():
            command = [*cli, one, "-m", str(run_plan.workdir / export), "--device", device]
            commands[f"polycap caption -m {export.upper()}-EXPORT, one image"] = command
    for kind, name in (("smolvlm", "SmolVLM-256M"), ("florence", "Florence-2-base")):
        folder = str(run_plan.workdir / kind)
        script = [sys.executable, "-m", "benchmarks.vlm_peers", folder, one, device]
        commands[f"{name}, one image"] = script
    found = {}
    for label, command in commands.items():
        options.say(f"end-to-end: cold process: {label}")
        found[label] = cold_start.measure(command, env)
        if found[label].get("returncode"):
            options.say(f"end-to-end: {label} failed: {found[label].get('stderr_tail', '')}")
    return found


# -- bounds --------------------------------------------------------------------------------------
def bounds(pipeline: Any, run_plan: Plan, machine: dict[str, float]) -> dict[str, Any]:
    """What this machine allows polycap: encoder FLOPs per image at the measured GFLOP/s, and
    the decoder's steps (each reading every weight, and computing 2 FLOPs per weight per row)
    at the measured copy GB/s and GFLOP/s."""
    import torch

    from benchmarks.machine import decoder_step_bytes, forward_flops

    encoder, lm = pipeline.encoder, pipeline.model.lm
    pixels = torch.zeros(1, 3, 224, 224, device=encoder.device)
    encoder_flops = forward_flops(encoder.encode_images, encoder.clip, pixels)
    weight_bytes = decoder_step_bytes(lm)
    # 2 FLOPs per weight per row, but a position table is only looked up
    positions = sum(p.numel() for n, p in lm.named_parameters() if "wpe" in n)
    step_flops_per_row = 2 * (weight_bytes / 4 - positions)
    batches = [
        run_plan.lengths[i : i + run_plan.batch]
        for i in range(0, len(run_plan.lengths), run_plan.batch)
    ]
    steps = sum(max(batch) for batch in batches)
    row_steps = sum(sum(batch) for batch in batches)
    gflops, gb_s = machine["gflops"] * 1e9, machine["copy_gb_s"] * 1e9
    encode_s = run_plan.images * encoder_flops / gflops
    decode_read_s = steps * weight_bytes / gb_s
    decode_compute_s = row_steps * step_flops_per_row / gflops
    decode_s = max(decode_read_s, decode_compute_s)
    return {
        "encoder_gflops_per_image": encoder_flops / 1e9,
        "encoder_images_per_s": run_plan.images / encode_s,
        "decoder_mb_per_step": weight_bytes / 1e6,
        "decoder_steps": steps,
        "decoder_row_steps": row_steps,
        "decoder_read_s": decode_read_s,
        "decoder_compute_s": decode_compute_s,
        "decoder_captions_per_s": run_plan.images / decode_s,
        "captions_per_s": run_plan.images / (encode_s + decode_s),
    }


# -- the section ---------------------------------------------------------------------------------
def bench_section(options: Any) -> Any:
    import torch

    from benchmarks import int8_agreement, machine, workload
    from benchmarks.report import Section

    workdir = Path(tempfile.mkdtemp(prefix="polycap-bench-e2e-"))
    try:
        run_plan = plan(options, workdir)
        found = machine.measure(options.say)
        size = "tiny" if options.quick else "small"  # --quick: a smoke run
        options.say(f"end-to-end: {run_plan.images} JPEGs, building ViT-B-32 + GPT-2 {size}")
        encoder = workload.build_encoder(device=options.device)
        small = torch_pipeline(size, encoder, workdir, options)
        sides = [polycap_side(f"polycap, GPT-2 {size}, PyTorch", small, run_plan)]
        if options.device == "cpu":  # ONNX Runtime's CPU provider
            copy = workload.build_captioner(size, CLIP_DIM, workdir / "tokenizer-export")
            for label, pipeline in onnx_pipelines(copy, encoder, run_plan, options).items():
                name = f"polycap, GPT-2 {size}, {label}"
                sides.append(polycap_side(name, pipeline, run_plan))
        if not options.quick:
            medium = torch_pipeline("medium", encoder, workdir, options)
            name = "polycap, GPT-2 medium size (24 x 1024), PyTorch"
            sides.append(polycap_side(name, medium, run_plan))
        sides += build_peers(run_plan, options)
        checkpoint = polycap_checkpoint(small.model, encoder, workdir / "checkpoint")
        timed_rounds(sides, run_plan, options)
        profile = stage_profile(small, run_plan)
        again = machine.measure(options.say)  # the machine's best moment of the two
        found = {key: max(value, again[key]) for key, value in found.items()}
        limits = bounds(small, run_plan, found) if options.device == "cpu" else None
        cold = cold_starts(checkpoint, run_plan, options)
        agreement = int8_agreement.measure(*((200, 3) if options.quick else ()), say=options.say)
        threads = torch.get_num_threads()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    measured = (profile, limits, cold, found, agreement)
    return Section(
        options.section_name("end-to-end"),
        markdown(sides, run_plan, measured, options, threads),
        section_data(sides, run_plan, measured, threads),
    )


def section_data(sides: list[Side], run_plan: Plan, measured: tuple, threads: int) -> dict:
    """The section's JSON record: sizes, every run's timings, and the measurements."""
    profile, limits, cold, found, agreement = measured
    return {
        "images": run_plan.images,
        "peer_images": run_plan.peer_images,
        "batch": run_plan.batch,
        "threads": threads,
        "lengths": run_plan.lengths,
        "sides": {
            s.name: {
                "images": s.images,
                "seconds": s.seconds,
                "rate": s.rate,
                "cpu_seconds": s.cpu_seconds,
            }
            for s in sides
        },
        "profile": profile,
        "bounds": limits,
        "cold": cold,
        "machine": found,
        "int8_agreement": agreement,
    }


def verdict(met: bool, quick: bool) -> str:
    return "not judged (--quick)" if quick else ("met" if met else "MISSED")


def markdown(sides: list[Side], run_plan: Plan, found: tuple, options: Any, threads: int) -> str:
    from benchmarks import int8_agreement
    from benchmarks.int8_agreement import note
    from benchmarks.report import table

    profile, limits, cold, machine, agreement = found
    smol = next((s.rate for s in sides if s.name == "SmolVLM-256M"), 0.0)
    florence = next((s.rate for s in sides if s.name == "Florence-2-base"), 0.0)
    rows = [
        [
            side.name,
            str(side.images),
            f"{side.rate:,.2f}",
            f"{side.rate / smol:,.1f}x" if smol else "n/a",
            f"{side.rate / florence:,.1f}x" if florence else "n/a",
            f"{min(side.cpu_seconds) / side.images:,.3f}",
            f"{busy(side):.2f}",
        ]
        for side in sides
    ]
    columns = [
        "captioner",
        "images",
        "captions/s",
        "vs SmolVLM-256M",
        "vs Florence-2-base",
        "CPU s per caption",
        "cores busy",
    ]
    text = table(columns, rows, align="lrrrrrr")
    cold_rows = [
        [
            label,
            _seconds(c.get("first_line_s")),
            _seconds(c.get("total_s")),
            f"{c['peak_rss_mb']:,.0f} MB" if "peak_rss_mb" in c else "failed",
        ]
        for label, c in cold.items()
    ]
    text += "\n\nFrom a cold process (fresh interpreter, models loaded from disk):\n\n"
    text += table(["command", "first caption", "whole run", "peak RSS"], cold_rows, align="lrrr")
    notes = side_notes(run_plan, threads, options) + [
        profile_note(profile, run_plan),
    ]
    if limits:
        notes.append(bound_note(limits, machine, sides[0].rate))
    notes.append(note(agreement))
    kept = int8_agreement.kept(agreement)
    notes += goal_lines(sides, cold, options.quick, kept)
    return text + "\n\n" + "\n".join(f"- {note}" for note in notes) + "\n"


def busy(side: Side) -> float:
    """Process CPU time over wall time in the best run: how many cores the side kept busy
    (near the thread count: no idle time left for overlapping stages to fill)."""
    best = side.seconds.index(min(side.seconds))
    return side.cpu_seconds[best] / side.seconds[best]


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def side_notes(run_plan: Plan, threads: int, options: Any) -> list[str]:
    lengths = sorted(run_plan.lengths)
    return [
        f"{run_plan.images} JPEGs of 640x480 from disk to caption strings; every caption "
        f"{lengths[len(lengths) // 2]} tokens at the median, {max(lengths)} the longest (drawn "
        "from COCO-like lengths, end token included, forced on every side); greedy; "
        f"{threads} torch thread(s) for every side (ONNX Runtime: as many intra-op threads); "
        f"polycap in batches of {run_plan.batch}; best of {run_plan.repeats} alternating "
        "runs; random weights everywhere",
        f"the peers caption the first {run_plan.peer_images} of the same images in one "
        "`processor(images=..., text=prompt)` + `generate` call, as their model cards show: "
        "SmolVLM-256M with its chat prompt, its image split into 512-pixel tiles plus a "
        "global view (64 tokens each); Florence-2-base with `<CAPTION>` at 768x768 (577 "
        "tokens); greedy (Florence's card uses 3 beams, which would cost it more)",
    ]


def profile_note(profile: dict[str, float], run_plan: Plan) -> str:
    total = profile["encode"] + profile["caption"]
    return (
        f"where polycap's time goes (the first row's model, the two stages of `caption_files` "
        f"timed apart): reading + decoding + preprocessing + encoding {profile['encode']:.2f} s "
        f"({profile['encode'] / total:.0%}), captioning the features {profile['caption']:.2f} s "
        f"({profile['caption'] / total:.0%}); {run_plan.images / total:,.1f} captions/s"
    )


def bound_note(limits: dict[str, Any], machine: dict[str, float], rate: float) -> str:
    return (
        f"the bound on this machine ({machine['gflops']:,.0f} GFLOP/s fp32 matmul, "
        f"{machine['copy_gb_s']:,.1f} GB/s copy, the better of two measurements, before and "
        f"after the timed runs, with {machine['threads']} thread(s)): ViT-B/32 costs "
        f"{limits['encoder_gflops_per_image']:.1f} GFLOPs per image "
        f"-> at most {limits['encoder_images_per_s']:,.1f} images/s encoded; the decoder's "
        f"decode step reads {limits['decoder_mb_per_step']:,.0f} MB of weights "
        f"({limits['decoder_steps']} steps: {limits['decoder_read_s']:.2f} s at the copy "
        f"rate) and computes 2 FLOPs per weight per row ({limits['decoder_row_steps']} "
        f"row-steps: {limits['decoder_compute_s']:.2f} s) -> at most "
        f"{limits['decoder_captions_per_s']:,.1f} captions/s decoded; both stages one after "
        f"the other: at most {limits['captions_per_s']:,.1f} captions/s; measured "
        f"{rate:,.1f} ({rate / limits['captions_per_s']:.0%} of the bound)"
    )


def _export_label(variant: str) -> str:
    """The cold-start label's name for an int8 variant's export folder."""
    from benchmarks.int8_agreement import VARIANTS

    return ("ONNX" + VARIANTS[variant][1].replace("--", "-")).upper() + "-EXPORT"


def goal_lines(
    sides: list[Side], cold: dict[str, Any], quick: bool, kept: tuple[str, ...]
) -> list[str]:
    """Met or missed, per goal. Speed: polycap's best exact runtime (int8 only when its
    agreement on a trained model was kept). Cold start and memory: the best way of running
    `polycap caption` on one image (checkpoint or ONNX export)."""
    usable = [
        s
        for s in sides
        if s.name.startswith("polycap") and ("int8" not in s.name or s.name.endswith(kept))
    ]
    best = max((s for s in usable if "medium" not in s.name), key=lambda s: s.rate, default=None)
    small = best.rate if best else 0.0
    medium = next((s.rate for s in usable if "medium" in s.name), 0.0)
    by = {side.name: side.rate for side in sides}
    smol, florence = by.get("SmolVLM-256M", 0.0), by.get("Florence-2-base", 0.0)
    ways = {
        label: c
        for label, c in cold.items()
        if label.startswith("polycap")
        and label.endswith("one image")
        and ("INT8" not in label or any(_export_label(k) in label for k in kept))
        and c.get("first_line_s")
    }
    fastest = min(ways, key=lambda k: ways[k]["first_line_s"], default=None)
    leanest = min(ways, key=lambda k: ways[k]["peak_rss_mb"], default=None)
    first = ways[fastest]["first_line_s"] if fastest else float("inf")
    peak = ways[leanest]["peak_rss_mb"] if leanest else float("inf")
    name = best.name if best else "none"
    return [
        f"goal: >= {GOALS['small']:.0f} captions/s end to end, ViT-B/32 + GPT-2 small "
        f"({name}): {small:,.1f}: {verdict(small >= GOALS['small'], quick)}",
        f"goal: >= {GOALS['medium']:.0f} captions/s with the GPT-2-medium-sized decoder: "
        f"{medium:,.1f}: {verdict(medium >= GOALS['medium'], quick)}",
        f"goal: >= {GOALS['smolvlm']:.0f}x SmolVLM-256M at equal tokens: "
        f"{small / smol if smol else 0:,.1f}x: {verdict(bool(smol) and small >= 10 * smol, quick)}",
        f"goal: >= {GOALS['florence']:.0f}x Florence-2-base at equal tokens: "
        f"{small / florence if florence else 0:,.1f}x: "
        f"{verdict(bool(florence) and small >= 5 * florence, quick)}",
        f"goal: first caption within {FIRST_CAPTION_GOAL_S:.0f} s of starting a cold process "
        f"({fastest}): {first:.2f} s: {verdict(first <= FIRST_CAPTION_GOAL_S, quick)}",
        f"goal: peak memory under {PEAK_GOAL_MB / 1000:.1f} GB ({leanest}): {peak:,.0f} MB: "
        f"{verdict(peak < PEAK_GOAL_MB, quick)}",
    ]
