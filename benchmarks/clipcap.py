"""polycap against the ClipCap reference loops, side by side (section ``clipcap``).

Each benchmark runs polycap's path and the reference re-implementation (benchmarks/reference.py)
in this process, on the same model weights and the same inputs, and prints reference rate,
polycap rate, their ratio, and whether the outputs agree. See docs/benchmarks.md.

The reference loops handle one image (or one caption entry) at a time, so their rate does not
depend on how many images they are given: they are timed on the first few of the polycap inputs
(the table shows how many) and their outputs are compared on exactly those.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.report import Section

BENCHMARKS = ("features", "train", "memory")  # decoding: benchmarks/decoding.py
GOALS = {"features": 10.0, "train": 1.5}
CAPTIONS_PER_IMAGE = 5


@dataclass
class Plan:
    """How much work each benchmark does (polycap side / reference side)."""

    max_length: int = 20
    feature_images: int = 32
    feature_reference_images: int = 4
    train_captions: int = 128
    train_batch: int = 16
    memory_sizes: tuple[int, ...] = (1_000, 10_000)


PLANS = {
    "full": Plan(),
    "quick": Plan(
        feature_images=8,
        feature_reference_images=1,
        train_captions=16,
        train_batch=4,
        memory_sizes=(200, 2_000),
    ),
    "gpu": Plan(
        feature_images=256,
        feature_reference_images=32,
        train_captions=512,
        train_batch=32,
    ),
}


@dataclass
class Result:
    """One row of the table."""

    name: str
    unit: str
    reference_items: int
    reference_seconds: float
    polycap_items: int
    polycap_seconds: float
    agree: bool
    agree_detail: str
    reference_cpu_seconds: float = 0.0
    polycap_cpu_seconds: float = 0.0
    goal: float | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reference_rate(self) -> float:
        return self.reference_items / self.reference_seconds

    @property
    def polycap_rate(self) -> float:
        return self.polycap_items / self.polycap_seconds

    @property
    def ratio(self) -> float:
        return self.polycap_rate / self.reference_rate

    @property
    def cpu_ratio(self) -> float:
        """The ratio by process CPU time (less disturbed than wall time on a shared machine)."""
        if not self.reference_cpu_seconds or not self.polycap_cpu_seconds:
            return float("nan")
        return (self.polycap_items / self.polycap_cpu_seconds) / (
            self.reference_items / self.reference_cpu_seconds
        )

    @property
    def goal_met(self) -> bool | None:
        return None if self.goal is None else self.ratio >= self.goal and self.agree

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "reference_rate": self.reference_rate,
            "polycap_rate": self.polycap_rate,
            "ratio": self.ratio,
            "cpu_ratio": self.cpu_ratio,
            "goal_met": self.goal_met,
        }


# -- timing ----------------------------------------------------------------------------------
class Clock:
    """Wall-clock timing that waits for the GPU when there is one."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.cpu = 0.0

    def sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def time(self, function: Callable[[], Any]) -> tuple[Any, float]:
        """``(function(), wall seconds)``; the process CPU seconds go to ``self.cpu``."""
        self.sync()
        start, cpu = time.perf_counter(), time.process_time()
        value = function()
        self.sync()
        self.cpu = time.process_time() - cpu
        return value, time.perf_counter() - start


@contextlib.contextmanager
def maybe_profile(enabled: bool, label: str, console: Any) -> Iterator[None]:
    """torch.profiler around a block; prints the top operators by self CPU (and GPU) time."""
    if not enabled:
        yield
        return
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    import torch

    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as profiler:
        yield
    console.print(f"[bold]profile: {label}[/bold]")
    averages = profiler.key_averages()
    console.print(averages.table(sort_by="self_cpu_time_total", row_limit=12))
    if torch.cuda.is_available():  # the tables end with the self CPU and self CUDA totals
        console.print(averages.table(sort_by="self_device_time_total", row_limit=12))


def autocast(device: str, precision: str) -> Any:
    """An autocast context for ``precision`` (nothing for fp32)."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.split(":")[0], dtype=dtype)


def dtype_of(precision: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# -- the benchmarks --------------------------------------------------------------------------
class Bench:
    """Shared state of one run: models, plan, device, precision, console."""

    def __init__(self, args: argparse.Namespace, plan: Plan, console: Any) -> None:
        self.args = args
        self.plan = plan
        self.device = args.device
        self.precision = args.precision
        self.console = console
        self.clock = Clock(args.device)
        self.workdir = Path(tempfile.mkdtemp(prefix="polycap-bench-"))
        self._models: Any = None
        self.gpu = args.device.startswith("cuda")

    def say(self, message: str) -> None:
        self.console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")

    @property
    def models(self) -> Any:
        if self._models is None:
            from benchmarks import workload

            self.say(f"building ViT-B-32 (random weights) + GPT-2 {self.args.decoder} decoder")
            self._models = workload.build_models(
                self.args.decoder, device=self.device, workdir=self.workdir
            )
        return self._models

    def side_by_side(
        self,
        label: str,
        ours: Callable[[], Any],
        theirs: Callable[[int, int], list[Any]],
        n_ref: int,
    ) -> dict[str, Any]:
        """Time the reference on the first half of its items, then polycap, then the reference
        on the second half: a change of load on a shared machine hits both sides alike."""
        half = n_ref // 2
        self.say(f"{label}: reference on {half}, then polycap, then reference on {n_ref - half}")
        first, first_s = self.clock.time(lambda: theirs(0, half))
        first_cpu = self.clock.cpu
        with maybe_profile(self.args.profile, f"polycap {label}", self.console):
            value, ours_s = self.clock.time(ours)
        ours_cpu = self.clock.cpu
        second, second_s = self.clock.time(lambda: theirs(half, n_ref))
        return {
            "ours": value,
            "ours_s": ours_s,
            "ours_cpu": ours_cpu,
            "theirs": [*first, *second],
            "theirs_s": first_s + second_s,
            "theirs_cpu": first_cpu + self.clock.cpu,
        }

    # -- features ----------------------------------------------------------------------------
    def features(self) -> Result:
        import torch

        from benchmarks import reference, workload
        from polycap.encoding import encode_images

        plan = self.plan
        encoder = self.models.encoder
        images = workload.write_images(self.workdir / "coco-like", plan.feature_images)
        entries = [path for path in images for _ in range(CAPTIONS_PER_IMAGE)]
        n_ref_entries = plan.feature_reference_images * CAPTIONS_PER_IMAGE
        clip, preprocess = encoder.clip, encoder.preprocess

        def ours() -> Any:
            with autocast(self.device, self.precision):
                return encode_images(
                    encoder, entries, batch_size=64, progress=False, use_cache=False
                )

        def theirs(start: int, stop: int) -> list[Any]:
            if start == stop:
                return []
            with autocast(self.device, self.precision):
                return [
                    reference.extract_features(
                        clip, preprocess, entries[start:stop], device=self.device
                    )
                ]

        with autocast(self.device, self.precision):
            encode_images(
                encoder, images if self.gpu else images[:2], progress=False, use_cache=False
            )
            reference.extract_features(clip, preprocess, images[:1], device=self.device)
        timed = self.side_by_side(
            f"features ({len(entries)} caption entries of {len(images)} images; reference "
            f"{n_ref_entries} entries one at a time)",
            ours,
            theirs,
            n_ref_entries,
        )
        encoded, ours_s, ours_cpu = timed["ours"], timed["ours_s"], timed["ours_cpu"]
        ref_features = torch.cat(timed["theirs"])
        theirs_s, theirs_cpu = timed["theirs_s"], timed["theirs_cpu"]
        row_of = {path: row for row, path in enumerate(encoded.paths)}
        ours_rows = encoded.features[[row_of[path] for path in entries[:n_ref_entries]]]
        difference = float((ours_rows - ref_features).abs().max())
        scale = float(ref_features.abs().max())
        tolerance = 1e-4 * scale if self.precision == "fp32" else 2e-2 * scale
        return Result(
            name=f"features, {len(images)} images x {CAPTIONS_PER_IMAGE} captions",
            unit="entries/s",
            reference_items=n_ref_entries,
            reference_seconds=theirs_s,
            polycap_items=len(entries),
            polycap_seconds=ours_s,
            reference_cpu_seconds=theirs_cpu,
            polycap_cpu_seconds=ours_cpu,
            agree=difference <= tolerance and len(encoded.paths) == len(images),
            agree_detail=f"max abs difference {difference:.1e}, features up to {scale:.1f}",
            goal=GOALS["features"],
            notes=[
                f"{CAPTIONS_PER_IMAGE} captions per image, 640x480 JPEGs; polycap "
                f"{len(images) / ours_s:.1f} images/s"
            ],
            extra={"images_per_s": len(images) / ours_s},
        )

    # -- training ----------------------------------------------------------------------------
    def train(self) -> Result:
        import torch

        from benchmarks import reference, workload
        from polycap.batching import bucketed_batches
        from polycap.training import (
            Fitting,
            PreparedData,
            TokenizedSet,
            TrainConfig,
            Trainer,
            collate,
            linear_warmup_decay,
        )

        plan = self.plan
        base = self.models.captioner
        n, batch_size = plan.train_captions, plan.train_batch
        lengths = workload.caption_lengths(n)
        ids = workload.caption_ids(lengths, base.end_token_id)
        rows = [i // CAPTIONS_PER_IMAGE for i in range(n)]
        clip_dim = base.config["encoder"]["embed_dim"]
        features = workload.random_features(len(set(rows)), clip_dim, seed=2).to(self.device)
        tokens = TokenizedSet(rows, ids)
        dataset = reference.PaddedCaptions(ids, rows, features, base.prefix_length)
        warmup = 5000  # ClipCap's default warmup

        # the same batch contents through both: the losses must be equal
        order = bucketed_batches(tokens.lengths, batch_size, seed=0)
        first = order[0]
        with torch.no_grad():
            ours_loss = float(
                base(
                    *(
                        t.to(self.device)
                        for t in collate(first, tokens, features, base.pad_token_id)
                    )
                ).loss
            )
            padded = [dataset[i] for i in first]
            theirs_loss = float(
                reference.caption_loss(
                    base, *(torch.stack([p[k] for p in padded]).to(self.device) for k in range(3))
                )
            )

        ours_model = copy.deepcopy(base).train()
        config = TrainConfig(
            language="en",
            data=Path("-"),
            output=self.workdir / "run",
            batch_size=batch_size,
            precision=self.precision,
            device=self.device,
            warmup_steps=warmup,
            progress=False,
        )
        trainer = Trainer(config)
        trainable = [p for p in ours_model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.lr)
        scheduler = linear_warmup_decay(optimizer, warmup, 10_000)
        prepared, optimizer = trainer.accelerator.prepare(ours_model, optimizer)
        fit = Fitting(prepared, optimizer, scheduler)
        data = PreparedData(tokens, TokenizedSet([], []), features, None, None, 0)

        ours_batches = bucketed_batches(tokens.lengths, batch_size, seed=1)

        def ours(batch: list[int]) -> int:
            trainer.train_batch(prepared, batch, data)
            trainer.optimizer_step(fit)
            return len(batch)

        ref_model = copy.deepcopy(base).train()
        ref_optimizer = torch.optim.AdamW(ref_model.trainable_parameters(), lr=2e-5)
        ref_scheduler = torch.optim.lr_scheduler.LambdaLR(
            ref_optimizer, lambda step: min(1.0, (step + 1) / warmup)
        )
        ref_batches = reference.batches(dataset, batch_size, seed=1)

        def theirs() -> int:  # the DataLoader's padding and collation count for the reference
            batch = next(ref_batches)
            reference.train_step(ref_model, batch, ref_optimizer, ref_scheduler)
            return int(batch[0].shape[0])

        # warm-up (allocator, kernels): forward + backward, gradients then dropped; on a GPU
        # every batch shape once (new shapes load kernels lazily), else the first batch
        for batch in ours_batches if self.gpu else [first]:
            with autocast(self.device, self.precision):
                ours_model(
                    *(
                        t.to(self.device)
                        for t in collate(batch, tokens, features, base.pad_token_id)
                    )
                ).loss.backward()
            ours_model.zero_grad(set_to_none=True)
        reference.caption_loss(
            ref_model, *(torch.stack([p[k] for p in padded]).to(self.device) for k in range(3))
        ).backward()
        ref_model.zero_grad(set_to_none=True)
        self.say(
            f"training: {n} captions in batches of {batch_size}, one polycap batch "
            f"(length-bucketed) then one reference batch (padded to {dataset.max_seq_len})"
        )
        ours_seen = theirs_seen = 0
        ours_s = theirs_s = ours_cpu = theirs_cpu = 0.0
        for batch in ours_batches:  # alternate, so that a change of load hits both sides
            seen, seconds = self.clock.time(lambda batch=batch: ours(batch))
            ours_seen, ours_s = ours_seen + seen, ours_s + seconds
            ours_cpu += self.clock.cpu
            if theirs_seen + batch_size <= n:  # the reference drops a last partial batch
                seen, seconds = self.clock.time(theirs)
                theirs_seen, theirs_s = theirs_seen + seen, theirs_s + seconds
                theirs_cpu += self.clock.cpu
        if self.args.profile:
            with maybe_profile(True, "polycap training (one more batch, not timed)", self.console):
                ours(ours_batches[0])
        real = sum(lengths)
        ours_tokens = sum(
            len(b) * max(lengths[i] for i in b)
            for b in bucketed_batches(tokens.lengths, batch_size, seed=1)
        )
        theirs_tokens = theirs_seen * dataset.max_seq_len
        relative = abs(ours_loss - theirs_loss) / max(1e-12, abs(theirs_loss))
        tolerance = 1e-5 if self.precision == "fp32" else 2e-2
        median = sorted(lengths)[n // 2]
        precision = (
            "fp32"
            if self.precision == "fp32"
            else f"polycap {self.precision} autocast, reference fp32"
        )
        return Result(
            name=f"training, {n} captions, batch {batch_size}",
            unit="samples/s",
            reference_items=theirs_seen,
            reference_seconds=theirs_s,
            polycap_items=ours_seen,
            polycap_seconds=ours_s,
            reference_cpu_seconds=theirs_cpu,
            polycap_cpu_seconds=ours_cpu,
            agree=relative <= tolerance,
            agree_detail=f"same batch: loss {ours_loss:.5f} vs {theirs_loss:.5f}",
            goal=GOALS["train"],
            notes=[
                f"caption tokens: median {median}, longest {max(lengths)}; "
                f"caption positions computed: reference {theirs_tokens} (padded to "
                f"{dataset.max_seq_len}), polycap {ours_tokens}, real {real} "
                f"(+{base.prefix_length} prefix positions per sample on both); mapper "
                f"trained, LM frozen; {precision}"
            ],
            extra={
                "real_tokens": real,
                "reference_tokens": theirs_tokens,
                "polycap_tokens": ours_tokens,
            },
        )

    # -- memory ------------------------------------------------------------------------------
    def memory(self) -> dict[str, Any]:
        """Peak RSS growth while encoding N images from disk, one fresh process per N."""
        from benchmarks import workload

        sizes = self.plan.memory_sizes
        folder = self.workdir / "memory-images"
        self.say(f"memory: writing {max(sizes)} 32x32 PNG images")
        workload.write_images(folder, max(sizes), size=(32, 32), suffix=".png")
        name, weights, config = workload.build_micro_clip(self.workdir / "micro-clip")
        rows = []
        for n in sizes:
            self.say(f"memory: encoding {n} images in a fresh process")
            command = [
                sys.executable,
                "-m",
                "benchmarks.memory",
                "--images",
                str(folder),
                "--n",
                str(n),
                "--encoder",
                name,
                "--weights",
                str(weights),
                "--config",
                str(config),
                "--cache",
                str(self.workdir / f"cache-{n}"),
                "--device",
                self.device,
            ]
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                check=False,
                cwd=Path(__file__).resolve().parents[1],
            )
            if done.returncode != 0:
                raise RuntimeError(f"memory worker failed:\n{done.stderr[-2000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        return {"encoder": name, "rows": rows}


# -- output ----------------------------------------------------------------------------------
def rate(value: float) -> str:
    if value < 1:
        return f"{value:.3f}"
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def times(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio < 10 else f"{ratio:.1f}x"


def rows_of(results: Sequence[Result], goals_apply: bool) -> list[list[str]]:
    """The cells of the results table (shared by the rich and the Markdown rendering)."""
    rows = []
    for r in results:
        if r.goal is None:
            goal = ""
        elif goals_apply:
            goal = f">= {r.goal:g}x: " + ("met" if r.goal_met else "MISSED")
        else:
            goal = f"(>= {r.goal:g}x at default sizes)"
        rows.append(
            [
                r.name,
                f"{rate(r.reference_rate)} {r.unit} ({r.reference_items} in "
                f"{r.reference_seconds:.1f} s)",
                f"{rate(r.polycap_rate)} {r.unit} ({r.polycap_items} in {r.polycap_seconds:.1f} s)",
                times(r.ratio) + ("" if math.isnan(r.cpu_ratio) else f" ({times(r.cpu_ratio)})"),
                goal,
                ("yes" if r.agree else "NO") + f" ({r.agree_detail})",
            ]
        )
    return rows


COLUMNS = (
    "benchmark",
    "reference (ClipCap loop)",
    "polycap",
    "ratio (by CPU time)",
    "goal",
    "outputs agree",
)


def memory_rows(memory: dict[str, Any]) -> list[list[str]]:
    return [
        [
            f"{row['n']:,}",
            f"{row['seconds']:.1f}",
            f"{row['n'] / row['seconds']:,.0f}",
            f"{row['rss_before_mb']:.0f} MB",
            f"{row['peak_growth_mb']:.1f} MB",
            f"{row['feature_mb']:.2f} MB",
        ]
        for row in memory["rows"]
    ]


MEMORY_COLUMNS = (
    "images",
    "seconds",
    "images/s",
    "RSS before",
    "peak RSS growth",
    "feature matrix",
)


def memory_title(memory: dict[str, Any]) -> str:
    return (
        f"peak RSS while encoding images streamed from disk ({memory['encoder']}, "
        "features cached to disk, one process per size)"
    )


def memory_summary(memory: dict[str, Any]) -> str | None:
    rows = memory["rows"]
    if len(rows) < 2:
        return None
    small, large = rows[0], rows[-1]
    per_image = (
        (large["peak_growth_mb"] - small["peak_growth_mb"]) * 1e6 / max(1, large["n"] - small["n"])
    )
    return (
        f"peak RSS growth {small['peak_growth_mb']:.1f} MB at {small['n']:,} images, "
        f"{large['peak_growth_mb']:.1f} MB at {large['n']:,}: {per_image:,.0f} bytes per "
        f"extra image, of which {large['feature_mb'] * 1e6 / large['n']:,.0f} are its "
        "feature row (returned in memory); no pixels are kept"
    )


def markdown(
    results: Sequence[Result],
    memory: dict[str, Any] | None,
    goals_apply: bool,
    notes: Sequence[str],
) -> str:
    """The tables and notes as Markdown (for docs/benchmarks.md)."""
    lines = []
    if results:
        lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in rows_of(results, goals_apply)]
        lines.append("")
        lines += [f"- {r.name}: {note}" for r in results for note in r.notes]
    if memory:
        lines += [
            "",
            memory_title(memory) + ":",
            "",
            "| " + " | ".join(MEMORY_COLUMNS) + " |",
            "|" + "---:|" * len(MEMORY_COLUMNS),
        ]
        lines += ["| " + " | ".join(row) + " |" for row in memory_rows(memory)]
        summary = memory_summary(memory)
        if summary:
            lines += ["", f"- {summary}"]
    lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def bench_section(options: Any) -> Section:
    """The ClipCap-reference tables (see the module docstring) as the ``clipcap`` section."""
    from benchmarks.report import Section

    plan_name = "quick" if options.quick else "gpu" if options.device.startswith("cuda") else "full"
    plan = dataclasses.replace(PLANS[plan_name], max_length=options.max_length)
    args = argparse.Namespace(
        device=options.device,
        precision=options.precision,
        decoder=options.decoder,
        profile=options.profile,
        peak_bandwidth=options.peak_bandwidth,
    )
    bench = Bench(args, plan, options.console)
    results: list[Result] = []
    memory = None
    runners: dict[str, Callable[[], Any]] = {
        "features": bench.features,
        "train": bench.train,
    }
    started = time.perf_counter()
    try:
        for key in BENCHMARKS:
            if not options.wants(key):
                continue
            if key == "memory":
                memory = bench.memory()
            else:
                results.append(runners[key]())
    finally:
        shutil.rmtree(bench.workdir, ignore_errors=True)  # images, caches, tokenizer
    goals_apply = options.decoder == "small" and plan_name == "full"
    footer = [
        f"{plan_name} plan, decoder GPT-2 {options.decoder}, encoder ViT-B-32, "
        f"{options.device}, {options.precision}; {time.perf_counter() - started:.0f} s"
    ]
    if not goals_apply:
        footer.append("goals are judged at the default sizes (full run, GPT-2 small decoder)")
    return Section(
        name=options.section_name("clipcap"),
        markdown=markdown(results, memory, goals_apply, footer),
        data={
            "plan": asdict(plan),
            "results": [r.to_json() for r in results],
            "memory": memory,
        },
    )
