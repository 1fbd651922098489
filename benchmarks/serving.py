"""Load test of ``polycap serve``: throughput and latency with request batching on and off.

Section ``serve``. A checkpoint is saved once (the decoder a GPT-2 of ``--decoder`` size with
random weights and its end token made unreachable, so that every caption runs to the token cap;
see :mod:`benchmarks.workload`), and ``polycap serve`` is started on it in its own process on
127.0.0.1, twice: ``--max-batch 32`` (batching) and ``--max-batch 1`` (none). Each time, a
fixed number of concurrent clients (closed loop: each sends its next request when the last is
answered) post 640x480 JPEGs to ``POST /caption`` until the request budget is spent or the time
limit is reached, whichever comes first: the test always stops by itself. A failed request is
any answer other than 200, or no answer within the client timeout.

Reported per mode: requests answered, failed, wall seconds, requests/s, latency p50/p95/p99
(seconds, from sending to the full answer), the mean batch the server decoded (``batch_size``
of the answers), and the throughput ratio. Run on its own::

    python -m benchmarks.serving                # 2,000 requests, 32 clients; prints the table
    python -m benchmarks.serving --requests 200 --clients 8 --decoder tiny
    python -m benchmarks.run --only serve       # the same, written into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.report import Section

BENCHMARKS = ("serve",)
ORDER = 90
GOAL = 3.0  # batched / unbatched throughput at 32 clients, GPT-2 small, on the CPU
ENCODER_NOTES = {
    "ViT-B-32": "224 px, as served in practice",
    "polycap-tiny-vit": "64 px, so that the decoder dominates",
}
WARMUP = 4  # requests before the measured ones (first calls allocate and compile)
ENCODERS = {"ViT-B-32": 512, "polycap-tiny-vit": 64}  # open_clip name -> embedding size


@dataclass
class Plan:
    """How much load, on which model."""

    requests: int = 2000
    clients: int = 32
    max_seconds: float = 240.0
    max_length: int = 20
    decoder: str = "small"
    encoder: str = "ViT-B-32"
    max_batch: int = 32
    batch_wait_ms: float = 5.0
    device: str = "cpu"
    images: int = 64
    timeout: float = 600.0


@dataclass
class Phase:
    """One mode's run."""

    label: str
    max_batch: int
    ok: int = 0
    failed: int = 0
    seconds: float = 0.0
    unfinished: int = 0
    latencies: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        """The ``q`` quantile of the latencies (nearest rank)."""
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    @property
    def mean_batch(self) -> float:
        return sum(self.batch_sizes) / len(self.batch_sizes) if self.batch_sizes else math.nan

    def summary(self) -> dict[str, Any]:
        data = asdict(self)
        del data["latencies"], data["batch_sizes"]
        data["errors"] = self.errors[:5]
        data.update(
            throughput=self.throughput,
            p50=self.percentile(0.50),
            p95=self.percentile(0.95),
            p99=self.percentile(0.99),
            mean_batch=self.mean_batch,
        )
        return data


# -- the model and the server -----------------------------------------------------------------
def save_checkpoint(plan: Plan, workdir: Path) -> Path:
    """The benchmark captioner (random weights), saved with its LM as a checkpoint folder."""
    from benchmarks import workload

    model = workload.build_captioner(plan.decoder, ENCODERS[plan.encoder], workdir)
    model.config["encoder"]["name"] = plan.encoder
    model.config["save_lm"] = True  # random weights: no hub id to load them from
    return Path(model.save(workdir / "checkpoint"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(checkpoint: Path, plan: Plan, max_batch: int, log: Path) -> tuple[Any, str]:
    """``polycap serve`` in its own process on 127.0.0.1; returns it and its URL when healthy."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "polycap", "serve", "--model", str(checkpoint)]
    command += ["--port", str(port), "--device", plan.device, "--log-level", "warning"]
    command += ["--max-batch", str(max_batch), "--batch-wait-ms", str(plan.batch_wait_ms)]
    handle = open(log, "w", encoding="utf-8")  # noqa: SIM115 (closed with the process)
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"polycap serve exited: {log.read_text(encoding='utf-8')[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    stop_server(process)
    raise RuntimeError("polycap serve did not answer /health within 300 s")


def stop_server(process: Any) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- the load -----------------------------------------------------------------------------------
async def _load(url: str, images: list[bytes], plan: Plan, phase: Phase, count: int) -> None:
    """``plan.clients`` closed-loop clients share ``count`` requests; at the time limit the
    requests still in flight are abandoned (counted in ``phase.unfinished``, not as failed)."""
    import httpx

    issued = 0
    limits = httpx.Limits(max_connections=plan.clients, max_keepalive_connections=plan.clients)
    data = {"max_length": str(plan.max_length)}

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < count:
            index = issued
            issued += 1
            files = {"image": (f"{index}.jpg", images[index % len(images)], "image/jpeg")}
            started = time.perf_counter()
            try:
                reply = await http.post(url + "/caption", files=files, data=data)
            except httpx.HTTPError as error:
                phase.failed += 1
                phase.errors.append(f"{type(error).__name__}: {error}")
                continue
            elapsed = time.perf_counter() - started
            if reply.status_code != 200:
                phase.failed += 1
                phase.errors.append(f"HTTP {reply.status_code}: {reply.text[:200]}")
                continue
            phase.ok += 1
            phase.latencies.append(elapsed)
            phase.batch_sizes.append(int(reply.json()["batch_size"]))

    async with httpx.AsyncClient(limits=limits, timeout=plan.timeout) as http:
        started = time.perf_counter()
        tasks = [asyncio.ensure_future(client(http)) for _ in range(plan.clients)]
        _done, pending = await asyncio.wait(tasks, timeout=plan.max_seconds)
        phase.seconds = time.perf_counter() - started
        phase.unfinished = len(pending)  # each client has at most one request in flight
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def run_phase(
    checkpoint: Path, images: list[bytes], plan: Plan, label: str, max_batch: int, workdir: Path
) -> Phase:
    """Start a server with ``max_batch``, warm it up, measure, stop it."""
    process, url = start_server(checkpoint, plan, max_batch, workdir / f"server-{label}.log")
    try:
        warm = Phase(label, max_batch)
        asyncio.run(_load(url, images, plan, warm, WARMUP))  # not counted
        phase = Phase(label, max_batch)
        asyncio.run(_load(url, images, plan, phase, plan.requests))
        return phase
    finally:
        stop_server(process)


def measure(plan: Plan, say: Any = print) -> list[Phase]:
    """Both modes on one saved checkpoint: batching first, then none."""
    from benchmarks import workload

    workdir = Path(tempfile.mkdtemp(prefix="polycap-serve-bench-"))
    try:
        checkpoint = save_checkpoint(plan, workdir)
        paths = workload.write_images(workdir / "images", plan.images)
        images = [path.read_bytes() for path in paths]
        phases = []
        for label, max_batch in (("batching", plan.max_batch), ("no batching", 1)):
            say(f"serve: {label} (--max-batch {max_batch}), {plan.clients} clients")
            phases.append(run_phase(checkpoint, images, plan, label, max_batch, workdir))
            say(f"serve: {label}: {phases[-1].ok} ok, {phases[-1].throughput:.2f} req/s")
        return phases
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- the table ----------------------------------------------------------------------------------
COLUMNS = [
    "encoder",
    "mode",
    "answered",
    "failed",
    "seconds",
    "req/s",
    "p50 s",
    "p95 s",
    "p99 s",
    "mean batch",
]


def ratio(phases: Sequence[Phase]) -> float:
    """Throughput with batching / without (the first phase / the second)."""
    return phases[0].throughput / phases[1].throughput if phases[1].throughput else math.nan


def rows(runs: Sequence[tuple[Plan, list[Phase]]]) -> list[list[str]]:
    return [
        [
            plan.encoder,
            f"{p.label} (--max-batch {p.max_batch})",
            f"{p.ok}",
            f"{p.failed}",
            f"{p.seconds:.1f}",
            f"{p.throughput:.2f}",
            f"{p.percentile(0.50):.2f}",
            f"{p.percentile(0.95):.2f}",
            f"{p.percentile(0.99):.2f}",
            f"{p.mean_batch:.1f}",
        ]
        for plan, phases in runs
        for p in phases
    ]


def markdown(runs: Sequence[tuple[Plan, list[Phase]]]) -> str:
    from benchmarks.report import table

    plan = runs[0][0]
    cut = sum(p.unfinished for _, phases in runs for p in phases)
    limit = (
        f" At the time limit the requests still in flight ({cut} in all) were abandoned; they "
        "count neither as answered nor as failed."
        if cut
        else ""
    )
    verdicts = []
    for each, phases in runs:
        met = ratio(phases) >= GOAL and not any(p.failed for p in phases)
        verdicts.append(
            f"with {each.encoder} **{ratio(phases):.2f}x** (goal {GOAL:g}x with no failed "
            f"request: {'met' if met else 'not met'})"
        )
    return (
        f"`polycap serve` on 127.0.0.1, {plan.clients} concurrent clients (closed loop), each "
        f"mode stopping after {plan.requests} requests or {plan.max_seconds:.0f} s; GPT-2 "
        f"{plan.decoder} decoder (random weights, vocabulary 50257, every caption "
        f"{plan.max_length} tokens), 640x480 JPEG uploads, device {plan.device}; batching "
        f"waits up to {plan.batch_wait_ms:g} ms. Encoders (random weights): "
        + "; ".join(f"{each.encoder} ({ENCODER_NOTES[each.encoder]})" for each, _ in runs)
        + "."
        f"{limit}\n\n"
        + table(COLUMNS, rows(runs), "llrrrrrrrr")
        + "\n\nThroughput with batching over without: "
        + "; ".join(verdicts)
        + ". The clients run on the same machine as the server and share its cores."
    )


def print_table(runs: Sequence[tuple[Plan, list[Phase]]]) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    Console(width=140).print(Markdown(markdown(runs)))


def plans_from(options: Any) -> list[Plan]:
    """The plans ``python -m benchmarks.run`` asks for (``--quick``: a tiny smoke run)."""
    if options.quick:
        base = Plan(requests=64, clients=8, max_seconds=60, decoder="tiny")
        encoders = ["polycap-tiny-vit"]
    else:
        base = Plan(decoder=options.decoder)
        encoders = list(ENCODERS)
    base.max_length = options.max_length
    base.device = options.device
    return [replace(base, encoder=encoder) for encoder in encoders]


def run_all(plans: Sequence[Plan], say: Any) -> list[tuple[Plan, list[Phase]]]:
    return [(plan, measure(plan, say)) for plan in plans]


def section_data(runs: Sequence[tuple[Plan, list[Phase]]]) -> dict[str, Any]:
    return {
        "runs": [
            {"plan": asdict(plan), "ratio": ratio(phases), "phases": [p.summary() for p in phases]}
            for plan, phases in runs
        ]
    }


def bench_section(options: Any) -> Section:
    from benchmarks.report import Section

    runs = run_all(plans_from(options), options.say)
    return Section(options.section_name("serve"), markdown(runs), section_data(runs))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = Plan()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.serving",
        description="Load test of polycap serve on 127.0.0.1: batching on vs off.",
    )
    parser.add_argument("--requests", type=int, default=defaults.requests)
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds, help="per mode")
    parser.add_argument("--max-length", type=int, default=defaults.max_length)
    parser.add_argument("--decoder", choices=("tiny", "small", "medium"), default="small")
    parser.add_argument(
        "--encoder", nargs="+", choices=tuple(ENCODERS), default=list(ENCODERS), help="one or both"
    )
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch)
    parser.add_argument("--batch-wait-ms", type=float, default=defaults.batch_wait_ms)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--write", action="store_true", help="also write the section into docs/benchmarks.md"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base = Plan(
        requests=args.requests,
        clients=args.clients,
        max_seconds=args.max_seconds,
        max_length=args.max_length,
        decoder=args.decoder,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        device=args.device,
    )
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    plans = [replace(base, encoder=encoder) for encoder in args.encoder]
    runs = run_all(plans, lambda message: print(message, file=sys.stderr))
    print_table(runs)
    if args.write:
        from benchmarks import report

        name = "serve" if base.device == "cpu" else f"serve-{base.device.split(':')[0]}"
        command = "python -m benchmarks.serving " + " ".join(sys.argv[1:])
        report.write([report.Section(name, markdown(runs), section_data(runs))], command.strip())
    failed = any(p.failed for _, phases in runs for p in phases)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
