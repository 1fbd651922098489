"""``python -m benchmarks.run`` (``make bench``): run the benchmarks, print their tables and
write them into docs/benchmarks.md (generated sections) and docs/benchmarks.json.

Plugging a benchmark in: a module ``benchmarks/<name>.py`` that defines

- ``BENCHMARKS``: the names ``--only`` selects it by (e.g. ``("bank",)``), and
- ``bench_section(options: Options) -> Section | list[Section]``: run what ``options``
  asks for (``options.wants(name)``, ``options.quick``, ``options.device``, ...) and return
  the named Markdown section(s) (:class:`benchmarks.report.Section`).

Heavy imports go inside ``bench_section``: every module is imported to find the sections. The
writer replaces the text between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` in
docs/benchmarks.md (appending the markers when they are missing) and records the section's
``data`` with commit, machine and versions in docs/benchmarks.json. Use
``options.section_name(base)`` for the name, so that a GPU run writes its own section
(``base-cuda``) beside the CPU one.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import report


@dataclass
class Options:
    """What a benchmark run asks of every benchmark module."""

    quick: bool = False
    device: str = "cpu"
    precision: str = "fp32"
    decoder: str = "small"
    repeats: int = 3
    threads: int | None = None
    profile: bool = False
    max_length: int = 20
    batch: int = 64
    peak_bandwidth: float | None = None
    only: set[str] | None = None
    say: Callable[[str], None] = print
    console: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def wants(self, name: str) -> bool:
        return self.only is None or name in self.only

    def section_name(self, base: str) -> str:
        """``base`` on the CPU, ``base-cuda`` (``base-<device kind>``) elsewhere; a quick run
        adds ``-quick`` so that it never replaces the full tables."""
        kind = self.device.split(":")[0]
        name = base if kind == "cpu" else f"{base}-{kind}"
        return name + ("-quick" if self.quick else "")


def modules() -> list[ModuleType]:
    """Every ``benchmarks.*`` module that defines ``bench_section`` (in ``ORDER``, then by
    name)."""
    import benchmarks

    found = []
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if info.name in ("run", "report") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"benchmarks.{info.name}")
        if callable(getattr(module, "bench_section", None)):
            found.append(module)
    return sorted(found, key=lambda m: (getattr(m, "ORDER", 50), m.__name__))


def names(found: Sequence[ModuleType]) -> list[str]:
    return [name for module in found for name in getattr(module, "BENCHMARKS", ())]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="polycap's speed benchmarks; writes docs/benchmarks.md and its JSON.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run (a few minutes): fewer items, tiny decoder; written to *-quick "
        "sections only with --write",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument(
        "--precision",
        choices=("fp32", "bf16", "fp16"),
        default="fp32",
        help="decoding/encoding dtype; training uses autocast (reference fp32)",
    )
    parser.add_argument(
        "--decoder",
        "--sizes",
        dest="decoder",
        default=None,
        choices=("tiny", "small", "medium"),
        help="GPT-2 decoder size (default small, tiny with --quick)",
    )
    parser.add_argument(
        "--only", nargs="+", default=None, metavar="NAME", help="run only these benchmarks"
    )
    parser.add_argument("--max-length", type=int, default=20, help="token cap (default 20)")
    parser.add_argument("--batch", type=int, default=64, help="decoding batch (default 64)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per side, best kept (default 3)"
    )
    parser.add_argument(
        "--peak-bandwidth",
        type=float,
        default=None,
        help="memory bandwidth in GB/s for the decoding bound (CUDA: read from the device)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice, one per core)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="print a torch.profiler summary of each polycap path"
    )
    parser.add_argument(
        "--write",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write docs/benchmarks.md and docs/benchmarks.json (default: yes, except --quick "
        "and except sections that --only ran in part, such as decoding with --only greedy)",
    )
    parser.add_argument("--doc", type=Path, default=report.DOC, help=argparse.SUPPRESS)
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="PATH",
        help="the results JSON to PATH (or stdout) instead of docs/benchmarks.json",
    )
    args = parser.parse_args(argv)
    if args.decoder is None:
        args.decoder = "tiny" if args.quick else "small"
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    args.write_explicit = args.write is True
    if args.write is None:
        args.write = not args.quick
    return args


def options_from(args: argparse.Namespace, console: Any) -> Options:
    def say(message: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/dim] {message}")

    return Options(
        quick=args.quick,
        device=args.device,
        precision=args.precision,
        decoder=args.decoder,
        repeats=args.repeats,
        threads=args.threads,
        profile=args.profile,
        max_length=args.max_length,
        batch=args.batch,
        peak_bandwidth=args.peak_bandwidth,
        only=set(args.only) if args.only else None,
        say=say,
        console=console,
    )


def main(argv: Sequence[str] | None = None) -> int:
    import json

    from rich.console import Console
    from rich.markdown import Markdown

    args = parse_args(argv)
    console = Console(stderr=args.json == "-", width=160)
    found = modules()
    known = names(found)
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown:
        console.print(f"--only: no benchmark {', '.join(unknown)}; known: {', '.join(known)}")
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = options_from(args, console)
    from benchmarks.machine import load_average, overloaded

    warning = overloaded()
    if warning:
        console.print(f"[bold yellow]Warning:[/] {warning}", highlight=False)
    started = time.perf_counter()
    sections: list[report.Section] = []
    partial: list[str] = []  # sections of a module run with only some of its benchmarks
    for module in found:
        wanted = [options.wants(name) for name in getattr(module, "BENCHMARKS", ())]
        if not any(wanted):
            continue
        made = module.bench_section(options)
        load = load_average()
        for section in made if isinstance(made, list) else [made]:
            console.print(Markdown(f"## {section.name}\n\n{section.markdown}"))
            console.print(f"({section.name}: 1-minute load average {load} at its end)")
            if load is not None:
                section.data.setdefault("load_average", load)
            sections.append(section)
            if not all(wanted):
                partial.append(section.name)
    command = report.command_line()
    console.print(f"total {time.perf_counter() - started:.0f} s")
    if partial and not args.write_explicit:
        console.print(f"not written (only part of their benchmarks ran): {', '.join(partial)}")
        sections = [s for s in sections if s.name not in partial]
    if args.write and sections:
        report.write(sections, command, doc=args.doc, json_path=None if args.json else report.JSON)
        console.print(f"wrote {len(sections)} section(s) into {args.doc}")
    if args.json:
        info = report.provenance(command)
        payload = {s.name: {"provenance": info, "data": s.data} for s in sections}
        text = json.dumps(payload, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
