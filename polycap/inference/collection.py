"""Captioning a collection: thousands of images into a caption table, sidecars and/or their
own metadata, resumable, split across the processes of a launched run.

The images (``data/sources.py``) are listed in one order by every process; each takes its
contiguous share (:meth:`Processes.share`) and goes through it a batch at a time: ask every
sink what it still needs (``inference/sinks.py``), caption the images some sink needs through
:meth:`CaptionPipeline.caption_files` (the one caption path), and hand each sink its captions.
A batch is on disk when the next begins, so a run killed at any moment loses at most the batch
in flight, and a rerun skips whatever the sinks already hold. At the end the sinks merge what
the processes wrote (the caption table, the gallery) and the counts of every process come
together in one :class:`Summary`.

Tests pause a run at a chosen moment with ``POLYCAP_CAPTION_HOOK=pause@metadata:N`` (the N-th
image's new file complete, not yet renamed over it) or ``pause@batch:N`` (after the N-th batch):
the process writes ``POLYCAP_CAPTION_HOOK_FILE`` and waits to be killed.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.data.metadata import WriteOptions
from polycap.data.sources import Item, Selection, list_collection
from polycap.inference.sinks import (
    Captioned,
    MetadataSink,
    Outcome,
    SidecarSink,
    Sink,
    State,
    TableSink,
    now,
)
from polycap.util.progress import progress_bar

if TYPE_CHECKING:
    from polycap.inference.gallery import Gallery
    from polycap.inference.pipeline import CaptionPipeline
    from polycap.model.generation import GenerationConfig
    from polycap.util.distributed import Processes

HOOK_ENV = "POLYCAP_CAPTION_HOOK"
HOOK_FILE_ENV = "POLYCAP_CAPTION_HOOK_FILE"
SHOWN = 100  # unreadable images and failures listed by name, per process


@dataclass(frozen=True)
class Targets:
    """Where the captions go (any combination) and how."""

    output: Path | None = None
    sidecar: bool = False
    sidecar_ext: str = ".txt"
    write_metadata: bool = False
    overwrite: bool = False
    keep_times: bool = False
    report: Path | None = None

    @property
    def any(self) -> bool:
        return bool(self.output or self.sidecar or self.write_metadata or self.report)


@dataclass
class Summary:
    images: int = 0
    captioned: int = 0
    done: int = 0  # skipped: every sink had it
    kept: int = 0  # an existing description left in place
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    unreadable_count: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    no_metadata: Counter[str] = field(default_factory=Counter)  # reason -> images
    per_process: list[int] = field(default_factory=list)  # images captioned by each process
    seconds: float = 0.0

    def add(self, outcome: Outcome) -> None:
        flags = outcome.flags
        self.captioned += "captioned" in flags
        self.done += "done" in flags
        self.kept += "kept" in flags
        if "unreadable" in flags:
            self.unreadable_count += 1
            if len(self.unreadable) < SHOWN:
                self.unreadable.append((outcome.item.key, outcome.reason or "unreadable"))
        if "no-metadata" in flags:
            self.no_metadata[outcome.reason or "no metadata"] += 1
        if "failed" in flags and len(self.failed) < SHOWN:
            self.failed.append((outcome.item.key, outcome.reason or "not written"))

    @classmethod
    def merged(cls, parts: Sequence[Summary]) -> Summary:
        total = cls(per_process=[p.captioned for p in parts])
        for part in parts:
            total.images += part.images
            total.captioned += part.captioned
            total.done += part.done
            total.kept += part.kept
            total.unreadable += part.unreadable
            total.unreadable_count += part.unreadable_count
            total.failed += part.failed
            total.no_metadata.update(part.no_metadata)
            total.seconds = max(total.seconds, part.seconds)
        return total

    def to_json(self) -> dict[str, Any]:
        rate = self.captioned / self.seconds if self.seconds else 0.0
        return {
            "images": self.images,
            "captioned": self.captioned,
            "skipped_done": self.done,
            "kept": self.kept,
            "unreadable": [{"image": k, "reason": r} for k, r in self.unreadable],
            "unreadable_count": self.unreadable_count,
            "failed": [{"image": k, "reason": r} for k, r in self.failed],
            "no_metadata": dict(self.no_metadata),
            "processes": len(self.per_process),
            "per_process": self.per_process,
            "seconds": round(self.seconds, 2),
            "images_per_second": round(rate, 2),
        }


@dataclass(frozen=True)
class RunOptions:
    generation: GenerationConfig | None = None
    batch_size: int = 64
    progress: bool = True
    model_name: str = ""


class Hook:
    """The tests' pause points (``POLYCAP_CAPTION_HOOK``), counted per kind."""

    def __init__(self) -> None:
        spec = os.environ.get(HOOK_ENV, "")
        kind, _, count = spec.partition("@")[2].partition(":")
        self.kind, self.at = (kind, int(count)) if spec.startswith("pause@") else ("", 0)
        self.seen: Counter[str] = Counter()

    def reached(self, kind: str, *_: Any) -> None:
        self.seen[kind] += 1
        if kind == self.kind and self.seen[kind] == self.at:
            Path(os.environ[HOOK_FILE_ENV]).write_text(kind)
            while True:  # until killed
                time.sleep(1)


def open_sinks(
    items: list[Item], targets: Targets, pipeline: CaptionPipeline, options: RunOptions,
    procs: Processes,
) -> tuple[list[Sink], Gallery | None]:  # fmt: skip
    """The sinks ``targets`` asks for (each checks what it can before any work), and the
    gallery when ``--report`` is given."""

    sinks: list[Sink] = []
    if targets.output is not None:
        sinks.append(TableSink(targets.output, pipeline.language, options.model_name, procs))
    if targets.sidecar:
        sinks.append(SidecarSink(items, targets.sidecar_ext))
    if targets.write_metadata:
        hook = Hook()
        written = WriteOptions(
            pipeline.language,
            options.model_name,
            targets.keep_times,
            lambda temporary: hook.reached("metadata", temporary),
        )
        sinks.append(MetadataSink(items, written, targets.overwrite))
    gallery = None
    if targets.report is not None:
        from polycap.inference.gallery import Gallery

        gallery = Gallery(targets.report, pipeline.language, procs)
    return sinks, gallery


def caption_collection(
    pipeline: CaptionPipeline,
    selection: Selection,
    targets: Targets,
    options: RunOptions,
    procs: Processes,
) -> Summary:
    """List the collection, caption this process's share into the sinks, merge; the summary
    of every process."""
    collection = list_collection(selection)
    sinks, gallery = open_sinks(collection.items, targets, pipeline, options, procs)
    if procs.main:
        for stale in collection.stale:  # copies a killed run left; no process writes yet
            stale.unlink(missing_ok=True)
    procs.barrier("listing the collection")
    share = procs.share(len(collection.items))
    mine = collection.items[share.start : share.stop]
    summary = run_share(pipeline, mine, sinks, options, gallery)
    for sink in sinks:
        sink.finish(procs)
    if gallery is not None:
        gallery.finish(procs)
    return Summary.merged(procs.all_gather(summary, "gathering the summary"))


def run_share(
    pipeline: CaptionPipeline,
    items: list[Item],
    sinks: list[Sink],
    options: RunOptions,
    gallery: Gallery | None = None,
) -> Summary:
    """Caption ``items`` a batch at a time into ``sinks``."""

    summary = Summary(images=len(items))
    hook = Hook()
    started = time.perf_counter()
    with progress_bar("captioning", len(items), options.progress, unit="images") as advance:
        for begin in range(0, len(items), options.batch_size):
            batch = items[begin : begin + options.batch_size]
            outcomes = caption_batch(pipeline, batch, sinks, options)
            for outcome in outcomes:
                summary.add(outcome)
            if gallery is not None:
                gallery.add(outcomes)
            hook.reached("batch")
            advance(len(batch))
    summary.seconds = time.perf_counter() - started
    return summary


def _key(path: str | Path) -> str:
    return os.path.normpath(os.path.abspath(path))


def caption_batch(
    pipeline: CaptionPipeline, batch: list[Item], sinks: list[Sink], options: RunOptions
) -> list[Outcome]:
    """One batch: what the sinks need, captions for those images, each sink's writes."""
    states = [[sink.state(item) for sink in sinks] for item in batch]
    todo = [item for item, held in zip(batch, states) if any(s.kind == "todo" for s in held)]
    captions: dict[str, list[str]] = {}
    unreadable: dict[str, str] = {}
    if todo:
        found = pipeline.caption_files(
            [Path(item.file) for item in todo],
            options.generation,
            batch_size=options.batch_size,
            progress=False,
        )
        captions = {_key(p): c for p, c in zip(found.paths, found.captions)}
        unreadable = {_key(p): reason for p, reason in found.skipped}
    stamp = now()
    failed: dict[str, str] = {}
    for index, sink in enumerate(sinks):
        wanted = [
            Captioned(item, captions[_key(item.file)], stamp)
            for item, held in zip(batch, states)
            if held[index].kind == "todo" and _key(item.file) in captions
        ]
        for item, reason in sink.write(wanted):
            failed[item.key] = f"{sink.name}: {reason}"
    return [
        _outcome(item, held, captions.get(_key(item.file)), unreadable.get(_key(item.file)), failed)
        for item, held in zip(batch, states)
    ]


def _outcome(
    item: Item,
    held: list[State],
    captions: list[str] | None,
    unreadable: str | None,
    failed: dict[str, str],
) -> Outcome:
    kinds = {state.kind for state in held}
    flags = []
    reason = None
    if unreadable is not None:
        flags.append("unreadable")
        reason = unreadable
    elif captions is not None:
        flags.append("captioned")
    elif "kept" not in kinds and "done" in kinds:
        flags.append("done")
    if "kept" in kinds:
        flags.append("kept")
    unsupported = next((s for s in held if s.kind == "unsupported"), None)
    if unsupported is not None and unreadable is None:
        flags.append("no-metadata")
        reason = reason or unsupported.reason
    if item.key in failed:
        flags.append("failed")
        reason = failed[item.key]
    shown = captions or next((s.text for s in held if s.text), None)
    return Outcome(item, captions or ([shown] if shown else []), flags, reason)
