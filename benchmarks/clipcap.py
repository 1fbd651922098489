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
        """Judged by the CPU-time ratio when there is one (load on a shared machine disturbs
        it least), else by wall time."""
        if self.goal is None:
            return None
        ratio = self.ratio if math.isnan(self.cpu_ratio) else self.cpu_ratio
        return ratio >= self.goal and self.agree

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
        from polycap.data.encoding import encode_images

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
    def train(self) -> list[Result]:
        """Mapper only (LM frozen: ClipCap's ``--only_prefix``), then the LM fine-tuned too."""
        data = TrainData.build(self.plan, self.models.captioner, self.device)
        return [self.train_run(data, train_lm=False), self.train_run(data, train_lm=True)]

    def train_run(self, data: TrainData, train_lm: bool) -> Result:
        """One polycap batch (bucketed, through ``Trainer``), then one reference batch (padded
        to the data set's longest caption), alternating over an epoch."""
        from polycap.train.trainer import PhaseTimes

        base = self.models.captioner
        ours = PolycapTraining(self, data, train_lm)
        theirs = ReferenceTraining(data, base, train_lm)
        ours.warm_up(data.batches if self.gpu else [data.check])  # GPU: every shape once
        theirs.warm_up(data.check)
        label = "LM fine-tuned" if train_lm else "mapper only, LM frozen"
        self.say(
            f"training ({label}): {data.n} captions in batches of {data.batch_size}, one "
            "polycap batch (length-bucketed) then one reference batch (padded to "
            f"{data.dataset.max_seq_len})"
        )
        totals: dict[str, list[Any]] = {"ours": [0, 0.0, 0.0], "theirs": [0, 0.0, 0.0]}
        phases = ours.trainer.phases = PhaseTimes(self.device)
        for batch in data.batches:  # alternate, so that a change of load hits both sides
            self.count(totals["ours"], lambda batch=batch: ours.step(batch))
            if totals["theirs"][0] + data.batch_size <= data.n:  # it drops a last part batch
                self.count(totals["theirs"], theirs.step)
        ours.trainer.phases = None
        if self.args.profile:
            with maybe_profile(True, f"polycap training, {label} (one batch)", self.console):
                ours.step(data.batches[0])
        return train_result(data, base, totals, phases, label, self.args)

    def count(self, total: list[Any], step: Callable[[], int]) -> None:
        """Run ``step``; add its items, wall and CPU seconds to ``total``."""
        seen, seconds = self.clock.time(step)
        total[0] += seen
        total[1] += seconds
        total[2] += self.clock.cpu

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


# -- training ----------------------------------------------------------------------------------
WARMUP = 5000  # ClipCap's default warmup steps
PHASES = ("data", "forward", "backward", "optimizer")


@dataclass
class TrainData:
    """The training benchmark's captions, features and batches, and the reference's padded
    data set."""

    tokens: Any  # polycap.train.trainer.TokenizedSet
    features: Any
    dataset: Any  # reference.PaddedCaptions
    lengths: list[int]
    batch_size: int
    batches: list[list[int]]  # polycap's epoch, length-bucketed
    check: list[int]  # the batch both sides compute the loss of

    @property
    def n(self) -> int:
        return len(self.lengths)

    @classmethod
    def build(cls, plan: Plan, base: Any, device: str) -> TrainData:
        from benchmarks import reference, workload
        from polycap.train.trainer import TokenizedSet
        from polycap.util.batching import bucketed_batches

        n, batch_size = plan.train_captions, plan.train_batch
        lengths = workload.caption_lengths(n)
        ids = workload.caption_ids(lengths, base.end_token_id)
        rows = [i // CAPTIONS_PER_IMAGE for i in range(n)]
        clip_dim = base.config["encoder"]["embed_dim"]
        features = workload.random_features(len(set(rows)), clip_dim, seed=2).to(device)
        tokens = TokenizedSet(rows, ids)
        dataset = reference.PaddedCaptions(ids, rows, features, base.prefix_length)
        batches = bucketed_batches(tokens.lengths, batch_size, seed=1)
        check = bucketed_batches(tokens.lengths, batch_size, seed=0)[0]
        return cls(tokens, features, dataset, lengths, batch_size, batches, check)

    def collated(self, batch: list[int], model: Any) -> list[Any]:
        """polycap's inputs for ``batch`` (features, right-padded ids, mask) on the device."""
        from polycap.train.trainer import collate

        inputs = collate(batch, self.tokens, self.features, model.pad_token_id)
        return [t.to(model.device) for t in inputs]

    def padded(self, batch: list[int], model: Any) -> list[Any]:
        """The reference's inputs for ``batch`` (tokens padded to the longest, mask, features)."""
        import torch

        items = [self.dataset[i] for i in batch]
        return [torch.stack([item[k] for item in items]).to(model.device) for k in range(3)]

    def polycap_positions(self) -> int:
        return sum(len(b) * max(self.lengths[i] for i in b) for b in self.batches)


def trainable_copy(base: Any, train_lm: bool) -> Any:
    """A copy of the benchmark captioner in train mode; with ``train_lm`` the LM trains too."""
    model = copy.deepcopy(base)
    if train_lm:
        model.train_lm = True
        model.config["train_lm"] = True
        model.lm.requires_grad_(True)
    return model.train()


class PolycapTraining:
    """polycap's side: a ``Trainer`` (its optimizer, schedule and Accelerate set-up) running
    ``train_batch`` + ``optimizer_step`` on length-bucketed batches."""

    def __init__(self, bench: Bench, data: TrainData, train_lm: bool) -> None:
        from polycap.train.trainer import (
            Fitting,
            PreparedData,
            TokenizedSet,
            TrainConfig,
            Trainer,
            linear_warmup_decay,
            make_optimizer,
        )

        self.data = data
        self.model = trainable_copy(bench.models.captioner, train_lm)
        config = TrainConfig(
            language="en",
            data=Path("-"),
            output=bench.workdir / "run",
            batch_size=data.batch_size,
            precision=bench.precision,
            device=bench.device,
            warmup_steps=WARMUP,
            progress=False,
            train_lm=train_lm,
        )
        self.trainer = Trainer(config)
        optimizer = make_optimizer(self.model.trainable_parameters(), config)
        scheduler = linear_warmup_decay(optimizer, WARMUP, 10_000)
        prepared, optimizer = self.trainer.accelerator.prepare(self.model, optimizer)
        self.fit = Fitting(prepared, optimizer, scheduler)
        self.prepared = PreparedData(
            data.tokens, TokenizedSet([], []), data.features, None, None, 0
        )
        self.autocast = autocast(bench.device, bench.precision)

    def step(self, batch: list[int]) -> int:
        self.trainer.train_batch(self.fit.model, batch, self.prepared)
        self.trainer.optimizer_step(self.fit)
        return len(batch)

    def warm_up(self, batches: list[list[int]]) -> None:
        """Forward + backward, gradients dropped (allocator, kernels)."""
        for batch in batches:
            with self.autocast:
                self.model(*self.data.collated(batch, self.model)).loss.backward()
            self.model.zero_grad(set_to_none=True)


class ReferenceTraining:
    """The reference side: ClipCap's train loop (``reference.train_step``) over its padded data
    set, with AdamW over what it trains (as train.py builds it) and its warm-up schedule."""

    def __init__(self, data: TrainData, base: Any, train_lm: bool) -> None:
        import torch

        from benchmarks import reference

        self.data = data
        self.model = trainable_copy(base, train_lm)
        self.optimizer = torch.optim.AdamW(self.model.trainable_parameters(), lr=2e-5)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: min(1.0, (step + 1) / WARMUP)
        )
        self.batches = reference.batches(data.dataset, data.batch_size, seed=1)

    def step(self) -> int:  # the DataLoader's padding and collation count for the reference
        from benchmarks import reference

        batch = next(self.batches)
        reference.train_step(self.model, batch, self.optimizer, self.scheduler)
        return int(batch[0].shape[0])

    def warm_up(self, batch: list[int]) -> None:
        from benchmarks import reference

        reference.caption_loss(self.model, *self.data.padded(batch, self.model)).backward()
        self.model.zero_grad(set_to_none=True)


def same_batch_losses(data: TrainData, base: Any) -> tuple[float, float]:
    """The loss of one batch's contents, polycap's way and the reference's: they must agree."""
    import torch

    from benchmarks import reference

    with torch.no_grad():
        ours = float(base(*data.collated(data.check, base)).loss)
        theirs = float(reference.caption_loss(base, *data.padded(data.check, base)))
    return ours, theirs


def train_result(
    data: TrainData, base: Any, totals: dict[str, list[Any]], phases: Any, label: str, args: Any
) -> Result:
    """The table row of one training run (both sides' totals, the phases of polycap's steps)."""
    ours_loss, theirs_loss = same_batch_losses(data, base)
    relative = abs(ours_loss - theirs_loss) / max(1e-12, abs(theirs_loss))
    tolerance = 1e-5 if args.precision == "fp32" else 2e-2
    precision = "fp32" if args.precision == "fp32" else f"polycap {args.precision} autocast"
    (ours_n, ours_s, ours_cpu), (theirs_n, theirs_s, theirs_cpu) = totals["ours"], totals["theirs"]
    shares = phases.shares()
    return Result(
        name=f"training ({label}), {data.n} captions, batch {data.batch_size}",
        unit="samples/s",
        reference_items=theirs_n,
        reference_seconds=theirs_s,
        polycap_items=ours_n,
        polycap_seconds=ours_s,
        reference_cpu_seconds=theirs_cpu,
        polycap_cpu_seconds=ours_cpu,
        agree=relative <= tolerance,
        agree_detail=f"same batch: loss {ours_loss:.5f} vs {theirs_loss:.5f}",
        goal=GOALS["train"],
        notes=[
            f"caption tokens: median {sorted(data.lengths)[data.n // 2]}, longest "
            f"{max(data.lengths)}; caption positions computed: reference "
            f"{theirs_n * data.dataset.max_seq_len} (padded to {data.dataset.max_seq_len}), "
            f"polycap {data.polycap_positions()}, real {sum(data.lengths)} "
            f"(+{base.prefix_length} prefix positions per sample on both); {precision}"
        ],
        extra={
            "real_tokens": sum(data.lengths),
            "reference_tokens": theirs_n * data.dataset.max_seq_len,
            "polycap_tokens": data.polycap_positions(),
            "phases": {name: shares.get(name, 0.0) for name in PHASES},
            "phase_cpu_seconds": phases.cpu,
        },
    )


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


def phase_lines(results: Sequence[Result]) -> list[str]:
    """The table of polycap's training steps by phase (shares of their CPU time)."""
    timed = [r for r in results if "phases" in r.extra]
    if not timed:
        return []
    from benchmarks.report import table

    rows = [
        [r.name, rate(r.polycap_rate), *(f"{r.extra['phases'][name]:.1%}" for name in PHASES)]
        for r in timed
    ]
    columns = ["training", "samples/s", *PHASES]
    return [
        "",
        "polycap's training steps by phase (share of their CPU time; `data`: collating the "
        "batch from the features and caption ids, `optimizer`: gradient clipping, AdamW, the "
        "schedule and zeroing the gradients):",
        "",
        *table(columns, rows, "l" + "r" * (len(columns) - 1)).splitlines(),
    ]


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
        lines += phase_lines(results)
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
                made = runners[key]()
                results.extend(made if isinstance(made, list) else [made])
    finally:
        shutil.rmtree(bench.workdir, ignore_errors=True)  # images, caches, tokenizer
    goals_apply = options.decoder == "small" and plan_name == "full"
    footer = [
        f"{plan_name} plan, decoder GPT-2 {options.decoder}, encoder ViT-B-32, "
        f"{options.device}, {options.precision}; {time.perf_counter() - started:.0f} s; "
        "ratios by wall time, in brackets by process CPU time, by which the goals are judged "
        "(other programs on a shared machine disturb it least)"
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
