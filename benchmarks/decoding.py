"""Decoding, three ways: polycap's decoder, transformers' ``generate()``, the ClipCap loops.

Section ``decoding``. Same Captioner (random GPT-2 weights, see :mod:`benchmarks.workload`),
same image features, same strategy settings on every side; each caption's length is fixed in
advance by a logits hook all sides run (:class:`benchmarks.workload.ForcedLengths`), so the
sides do the same work and their tokens must be identical (the table says whether they are).

Workloads: ``coco-like`` (lengths drawn from a long-tailed data set, median 12 tokens, the data
set's longest 3x that) and ``fixed`` (every caption runs to the token cap). polycap drops a row
from the batch when its caption ends; ``generate`` keeps every row until the last one ends, and
for beam search runs the prefix once per beam. Timing: the polycap and ``generate`` runs
alternate (the order rotating each round), best of ``--repeats``; the ClipCap loops, which
decode one image at a time without a cache, run once on a few images chosen at the quartiles
of the batch's lengths.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.report import Section

BENCHMARKS = ("greedy", "beam", "sample")
ORDER = 10
GOAL = 1.5  # polycap / generate, greedy and beam 5, batch 64, coco-like lengths, on the CPU
CLIP_DIM = 512  # ViT-B-32's embedding size
MEDIAN, LONGEST_RATIO = 12, 3.0
GPU_COLUMNS = [  # the static-cache, compiled paths (CUDA)
    "polycap static cache + compiled, captions/s",
    "generate() static cache + compiled, captions/s",
]


@dataclass
class Case:
    """One row: a strategy on a workload."""

    strategy: str
    workload: str
    config: Any
    lengths: list[int]
    hook: Any
    references: list[int]  # images the ClipCap loop decodes

    @property
    def label(self) -> str:
        return "beam 5" if self.strategy == "beam" else self.strategy


@dataclass
class Timed:
    """What one side produced and how long it took (every run kept)."""

    ids: list[list[int]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    items: int = 0

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def rate(self) -> float:
        return self.items / self.best

    def run(self, function: Callable[[], list[list[int]]], sync: Callable[[], None]) -> None:
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        self.ids = function()
        sync()
        self.seconds.append(time.perf_counter() - start)
        self.cpu_seconds.append(time.process_time() - cpu)
        self.items = len(self.ids)


def build_model(options: Any, workdir: Path) -> Any:
    """The benchmark Captioner in the run's precision (weights cast, as one would serve it)."""
    import torch

    from benchmarks import workload

    model = workload.build_captioner(options.decoder, CLIP_DIM, workdir).to(options.device)
    if options.precision != "fp32":
        dtype = torch.bfloat16 if options.precision == "bf16" else torch.float16
        model = copy.deepcopy(model).to(dtype)
    return model.eval()


def cases(options: Any, end_token_id: int) -> list[Case]:
    """The rows this run measures."""
    from benchmarks import workload
    from polycap.model.generation import GenerationConfig

    n = 16 if options.quick else options.batch
    coco = workload.batch_lengths(n, median=MEDIAN, longest_ratio=LONGEST_RATIO)
    cap = max(max(coco), options.max_length)
    fixed_beam = n if options.quick else max(1, n // 4)  # beam 5 at the cap: the slowest row
    ref_greedy, ref_beam = (1, 1) if options.quick else (2, 1)
    made = []
    plans = [
        ("greedy", "coco-like", coco, GenerationConfig(max_length=cap), ref_greedy),
        ("beam", "coco-like", coco, GenerationConfig(max_length=cap, beams=5), ref_beam),
        (
            "sample",
            "coco-like",
            coco,
            GenerationConfig(max_length=cap, sample=True, top_p=0.9, seed=0),
            0,
        ),
        (
            "greedy",
            "fixed",
            [options.max_length] * n,
            GenerationConfig(max_length=options.max_length),
            ref_greedy,
        ),
        (
            "beam",
            "fixed",
            [options.max_length] * fixed_beam,
            GenerationConfig(max_length=options.max_length, beams=5),
            ref_beam,
        ),
    ]
    for strategy, name, lengths, config, refs in plans:
        if not options.wants(strategy):
            continue
        hook = workload.ForcedLengths(lengths, end_token_id)
        made.append(Case(strategy, name, config, lengths, hook, quartile_rows(lengths, refs)))
    return made


def quartile_rows(lengths: list[int], k: int) -> list[int]:
    """``k`` rows whose lengths sit at evenly spaced quantiles of ``lengths`` (so that a few
    one-at-a-time captions stand for the whole batch)."""
    if k <= 0:
        return []
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return sorted(order[int((j + 0.5) * len(order) / k)] for j in range(k))


def measure(case: Case, model: Any, features: Any, options: Any) -> dict[str, Any]:
    """Run the three sides of ``case``; every side's tokens and timings."""
    import torch

    from benchmarks import peer, reference
    from polycap.model.generation import generate_ids

    config, hook = case.config, case.hook

    def ours() -> list[list[int]]:
        return [c[0] for c in generate_ids(model, features, config, logits_hook=hook)]

    def theirs() -> list[list[int]]:
        return peer.generate_ids(model, features, config, hook)

    def clipcap() -> list[list[int]]:
        rows = case.references
        if case.strategy == "greedy":
            return reference.caption_greedy(
                model, features[rows], config.max_length, logits_hook=hook, images=rows
            )
        return reference.caption_beam(
            model, features[rows], config.max_length, 5, logits_hook=hook, images=rows
        )

    def sync() -> None:
        if options.device.startswith("cuda"):
            torch.cuda.synchronize()

    static = dataclasses.replace(config, cache="static", compile=True)

    def compiled() -> list[list[int]]:
        return [c[0] for c in generate_ids(model, features, static, logits_hook=hook)]

    runs = {"polycap": ours, "generate": theirs}
    if options.device.startswith("cuda") or options.extra.get("static"):  # the GPU path
        runs["polycap-static"] = compiled
        runs["generate-static"] = lambda: peer.generate_ids(model, features, static, hook)
        options.say(f"{case.label}: compiling the static-cache steps (one full run each)")
        compiled()
        runs["generate-static"]()
    sides = {name: Timed() for name in runs}
    # warm-up: a short call each (allocator, thread pool; on a GPU, kernels load lazily)
    short = dataclasses.replace(config, max_length=2)
    generate_ids(model, features[:2], short)
    peer.generate_ids(model, features[:2], short)
    label = f"{case.label}, {case.workload}, {features.shape[0]} images"
    names = list(runs)
    for round_ in range(options.repeats):
        order = names[round_ % len(names) :] + names[: round_ % len(names)]
        for name in order:
            options.say(f"{label}: {name} (round {round_ + 1} of {options.repeats})")
            sides[name].run(runs[name], sync)
        if round_ == 0 and case.references:
            options.say(f"{label}: ClipCap loop on {len(case.references)} images")
            sides["clipcap"] = Timed()
            sides["clipcap"].run(clipcap, sync)
    return sides


def row_steps(case: Case, n: int, prefix: int) -> tuple[int, int]:
    """Decoder rows x steps: polycap (finished rows leave; beam: the prefix once per image)
    and ``generate`` (every row to the end; beam: the prefix once per beam), prefix included."""
    width = case.config.beams
    generated = sum(case.lengths) * width
    longest = max(case.lengths)
    return n * prefix + generated, n * width * (prefix + longest)


@dataclass
class Row:
    """One measured case, ready for the table, the JSON and the goal lines."""

    cells: list[str]
    data: dict[str, Any]
    notes: list[str]
    goal: str | None


def summarise(case: Case, sides: dict[str, Timed], model: Any, options: Any) -> Row:
    """Rates, ratios, token agreement and the goal verdict of one case."""
    n = len(case.lengths)
    ours, theirs = sides["polycap"], sides["generate"]
    same = sum(a == b for a, b in zip(ours.ids, theirs.ids, strict=True))
    lengths_ok = [len(ids) + 1 for ids in ours.ids] == case.lengths
    ratio = ours.rate / theirs.rate
    cpu_ratio = min(theirs.cpu_seconds) / min(ours.cpu_seconds)
    clip, static = sides.get("clipcap"), sides.get("polycap-static")
    agree = [f"{same}/{n}"]
    if clip:
        clip_same = sum(clip.ids[k] == ours.ids[i] for k, i in enumerate(case.references))
        agree.append(f"ClipCap {clip_same}/{clip.items}")
    if static:
        agree.append(f"static cache {sum(a == b for a, b in zip(ours.ids, static.ids))}/{n}")
    if not lengths_ok:
        agree.append("LENGTHS DIFFER")
    ours_steps, theirs_steps = row_steps(case, n, model.prefix_length)
    cells = [
        case.label,
        f"{case.workload} (median {statistics.median(case.lengths):g}, longest "
        f"{max(case.lengths)})",
        f"{report_rate(clip.rate)} ({clip.items} in {clip.best:.1f} s)" if clip else "n/a",
        f"{report_rate(ours.rate)} ({ours.best:.2f} s)",
        f"{report_rate(theirs.rate)} ({theirs.best:.2f} s)",
        *static_cells(sides),
        f"**{ratio:.2f}x** ({cpu_ratio:.2f}x)",
        f"{ours.rate / clip.rate:.1f}x" if clip else "n/a",
        f"{theirs_steps / ours_steps:.2f}x",
        "; ".join(agree),
    ]
    bound = bandwidth(model, case, ours.best, options)
    notes = []
    if case.strategy == "greedy":
        notes.append(f"{case.label}, {case.workload}: {bandwidth_note(bound)}")
    goal = None
    if case.workload == "coco-like" and case.strategy in ("greedy", "beam") and not options.quick:
        if options.device == "cpu" and n == 64:
            met = cpu_ratio >= GOAL and same == n
            goal = (
                f"{case.label}, coco-like, batch 64: polycap {cpu_ratio:.2f}x generate() by "
                f"CPU time, {ratio:.2f}x by wall time (goal >= {GOAL}x with identical tokens, "
                f"judged by CPU time, which other programs on the machine disturb least): "
                f"{'met' if met else 'MISSED'}"
            )
        elif options.device.startswith("cuda") and static and bound.get("fraction_of_peak"):
            best = max(ours.rate, static.rate)
            met = best / theirs.rate >= 2.0 and bound["fraction_of_peak"] >= 0.5
            goal = (
                f"{case.label}, coco-like, batch {n}, GPU: polycap's best path "
                f"{best / theirs.rate:.2f}x generate(), default path at "
                f"{bound['fraction_of_peak']:.0%} of the bandwidth bound (goal >= 2x and "
                f">= 50% at batch 256, GPT-2 medium): {'met' if met else 'MISSED'}"
            )
    data = {
        "strategy": case.strategy,
        "workload": case.workload,
        "images": n,
        "lengths": case.lengths,
        "config": case.config.to_json(),
        "seconds": {name: side.seconds for name, side in sides.items()},
        "cpu_seconds": {name: side.cpu_seconds for name, side in sides.items()},
        "rates": {name: side.rate for name, side in sides.items()},
        "ratio_vs_generate": ratio,
        "cpu_ratio_vs_generate": cpu_ratio,
        "same_as_generate": same,
        "agreement": agree,
        "clipcap_images": case.references,
        "row_steps": {"polycap": ours_steps, "generate": theirs_steps},
        "bandwidth": bound,
    }
    return Row(cells, data, notes, goal)


def section(options: Any) -> Section:
    import torch

    from benchmarks import report
    from benchmarks.workload import random_features

    workdir = Path(tempfile.mkdtemp(prefix="polycap-bench-decoding-"))
    options.say(f"decoding: building the GPT-2 {options.decoder} captioner (random weights)")
    model = build_model(options, workdir)
    shutil.rmtree(workdir, ignore_errors=True)  # the tokenizer is loaded
    rows, bounds = [], []
    for case in cases(options, int(model.end_token_id)):
        features = random_features(len(case.lengths), CLIP_DIM, seed=1).to(options.device)
        rows.append(summarise(case, measure(case, model, features, options), model, options))
        if case.strategy == "greedy" and case.workload == "coco-like":
            costs = step_costs(model, features, options)
            bounds.append(cost_note(case, costs))
            rows[-1].data["step_costs"] = {**costs, "bound": cost_bound(case.lengths, costs)}
    gpu = options.device.startswith("cuda") or bool(options.extra.get("static"))
    columns = [
        "strategy",
        "caption lengths (tokens)",
        "ClipCap loop, captions/s",
        "polycap, captions/s",
        "generate(), captions/s",
        *(GPU_COLUMNS if gpu else []),
        "polycap / generate (by CPU time)",
        "polycap / ClipCap",
        "decoder rows x steps, generate / polycap",
        "same tokens as generate",
    ]
    notes = [note for row in rows for note in row.notes] + bounds
    notes.append(
        f"GPT-2 {options.decoder} decoder (random weights), prefix {model.prefix_length}, "
        f"{options.device}, {options.precision}, {torch.get_num_threads()} torch thread(s); "
        f"best of {options.repeats} alternating runs per side (the ClipCap loop once, on "
        "images at evenly spaced quantiles of the lengths); ratio by wall time, in brackets "
        "by process CPU time (less disturbed when other programs share the machine)"
    )
    notes.append(
        "every side runs the same logits hook, which ends each caption at its drawn length "
        "(end token included); sampling: top-p 0.9, seed 0 (polycap's exponential-race draws "
        "equal torch.multinomial's, so the tokens match generate's)"
    )
    if options.precision != "fp32":
        notes.append(
            f"{options.precision}: batches of different sizes round differently and near-ties "
            "in the logits flip; compare tokens in fp32"
        )
    goals = [row.goal for row in rows if row.goal]
    markdown = report.table(
        columns, [row.cells for row in rows], align="ll" + "r" * (len(columns) - 3) + "l"
    )
    markdown += "\n\n" + "\n".join(f"- {note}" for note in notes + goals)
    return report.Section(
        name=options.section_name("decoding"),
        markdown=markdown,
        data={
            "decoder": options.decoder,
            "goal": GOAL,
            "goals": goals,
            "rows": [row.data for row in rows],
        },
    )


def step_costs(model: Any, features: Any, options: Any) -> dict[str, Any]:
    """CPU seconds of polycap's decoding steps on the benchmark's decoder: the prefill of the
    whole batch, and one step (after 8, best of 3) by rows in the batch, largest first."""
    import torch

    from polycap.model.generation import CachedLM

    sizes = [n for n in (64, 48, 32, 24, 16, 12, 8, 4, 2, 1) if n <= features.shape[0]]
    decoder, steps = CachedLM(model.lm), {}
    with torch.inference_mode():
        start = time.process_time()
        logits, past = decoder.start(model.prefix(features))
        prefill = time.process_time() - start
        tokens = logits.max(dim=-1).indices
        for _ in range(8):
            logits, past = decoder.step(tokens, past)
        for n in sizes:
            past, tokens = decoder.select(past, torch.arange(n, device=tokens.device)), tokens[:n]
            best = float("inf")
            for _ in range(3):
                start = time.process_time()
                _, past = decoder.step(tokens, past)
                best = min(best, time.process_time() - start)
            steps[n] = best
    options.say(
        f"decode step costs: {', '.join(f'{n}: {t * 1e3:.0f} ms' for n, t in steps.items())}"
    )
    return {"prefill": prefill, "steps": steps}


def cost_bound(lengths: list[int], costs: dict[str, Any]) -> float:
    """polycap / ``generate`` on ``lengths`` (greedy) if both ran polycap's step at these
    measured costs: polycap's rows leave, ``generate``'s stay (linear between measured sizes)."""
    import numpy as np

    sizes = sorted(costs["steps"])
    seconds = [costs["steps"][n] for n in sizes]

    def cost(rows: int) -> float:
        return float(np.interp(rows, sizes, seconds))

    decode_steps = range(1, max(lengths))  # step s feeds the rows still running at token s
    ours = costs["prefill"] + sum(cost(sum(n > s for n in lengths)) for s in decode_steps)
    theirs = costs["prefill"] + len(decode_steps) * cost(len(lengths))
    return theirs / ours


def cost_note(case: Case, costs: dict[str, Any]) -> str:
    steps = ", ".join(f"{n}: {t * 1e3:.0f}" for n, t in sorted(costs["steps"].items()))
    return (
        f"{case.label}, {case.workload}: polycap's decode step by rows in the batch (CPU ms, "
        f"{steps}; the batch's prefill {costs['prefill'] * 1e3:,.0f}): a step reads every "
        "weight whatever the batch, so a row costs little beside the rest. At these costs, "
        "rows leaving the batch make this batch's greedy decoding at most "
        f"{cost_bound(case.lengths, costs):.2f}x faster than keeping them to the end "
        "(rows x steps says more: it counts rows as if each cost the same)"
    )


def bandwidth(model: Any, case: Case, seconds: float, options: Any) -> dict[str, Any]:
    """Memory-bandwidth view of polycap's decoding: bytes read per step (all decoder weights
    + the KV cache attention reads, averaged over the steps and the shrinking batch) x steps/s,
    against the device's peak (CUDA: from its properties; else ``--peak-bandwidth``)."""
    import torch

    lm = model.lm
    element = next(lm.parameters()).element_size()
    weight_bytes = sum(p.numel() for p in lm.parameters()) * element
    layers, width = lm.config.n_layer, lm.config.n_embd
    steps = max(case.lengths)
    prefix = model.prefix_length
    # per step s, every row still running reads prefix + s cached positions
    cached = sum(prefix + s for length in case.lengths for s in range(length))
    kv_bytes = 2 * layers * width * element * cached / steps
    steps_per_s = steps / seconds
    out: dict[str, Any] = {
        "weight_bytes": weight_bytes,
        "kv_bytes_per_step": kv_bytes,
        "steps_per_s": steps_per_s,
        "achieved_gb_s": (weight_bytes + kv_bytes) * steps_per_s / 1e9,
    }
    peak = options.peak_bandwidth
    if peak is None and options.device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.device(options.device))
        clock_khz = getattr(props, "memory_clock_rate", 0)
        bus_bits = getattr(props, "memory_bus_width", 0)
        if clock_khz and bus_bits:
            peak = 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9  # double data rate
    if peak:
        out["peak_gb_s"] = peak
        out["fraction_of_peak"] = out["achieved_gb_s"] / peak
    return out


def bandwidth_note(bound: dict[str, Any]) -> str:
    total = bound["weight_bytes"] + bound["kv_bytes_per_step"]
    line = (
        f"polycap's decode step reads {total / 1e6:,.0f} MB "
        f"(weights {bound['weight_bytes'] / 1e6:,.0f} MB + KV cache "
        f"{bound['kv_bytes_per_step'] / 1e6:,.0f} MB on average); "
        f"{bound['steps_per_s']:.2f} steps/s -> {bound['achieved_gb_s']:,.1f} GB/s"
    )
    if bound.get("peak_gb_s"):
        line += f" = {bound['fraction_of_peak']:.1%} of the {bound['peak_gb_s']:,.0f} GB/s peak"
    return line


def static_cells(sides: dict[str, Timed]) -> list[str]:
    """The GPU path's cells (static cache + compiled step: polycap, generate), when run."""
    cells = []
    for name in ("polycap-static", "generate-static"):
        side = sides.get(name)
        if side:
            cells.append(f"{report_rate(side.rate)} ({side.best:.2f} s)")
    return cells


def report_rate(value: float) -> str:
    if value < 1:
        return f"{value:.3f}"
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


bench_section = section
