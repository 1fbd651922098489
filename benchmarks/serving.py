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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from benchmarks.report import Section

BENCHMARKS = ("serve",)
ORDER = 90
GOAL = 3.0  # batched / unbatched throughput at 32 clients, GPT-2 small, on the CPU
WARMUP = 4  # requests before the measured ones (first calls allocate and compile)
ENCODERS = {"ViT-B-32": 512, "polycap-tiny-vit": 64}  # open_clip name -> embedding size


@dataclass
class Plan:
    """How much load, on which model."""

    requests: int = 2000
    clients: int = 32
    max_seconds: float = 300.0
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
    """``plan.clients`` closed-loop clients share ``count`` requests (and the time limit)."""
    import httpx

    issued = 0
    deadline = time.monotonic() + plan.max_seconds
    limits = httpx.Limits(max_connections=plan.clients, max_keepalive_connections=plan.clients)
    data = {"max_length": str(plan.max_length)}

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal issued
        while issued < count and time.monotonic() < deadline:
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
        await asyncio.gather(*(client(http) for _ in range(plan.clients)))


def run_phase(
    checkpoint: Path, images: list[bytes], plan: Plan, label: str, max_batch: int, workdir: Path
) -> Phase:
    """Start a server with ``max_batch``, warm it up, measure, stop it."""
    process, url = start_server(checkpoint, plan, max_batch, workdir / f"server-{label}.log")
    try:
        warm = Phase(label, max_batch)
        asyncio.run(_load(url, images, plan, warm, WARMUP))  # not counted
        phase = Phase(label, max_batch)
        started = time.perf_counter()
        asyncio.run(_load(url, images, plan, phase, plan.requests))
        phase.seconds = time.perf_counter() - started
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
def rows(phases: Sequence[Phase], plan: Plan) -> list[list[str]]:
    return [
        [
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
        for p in phases
    ]


COLUMNS = ["mode", "answered", "failed", "seconds", "req/s", "p50 s", "p95 s", "p99 s", "batch"]


def markdown(phases: Sequence[Phase], plan: Plan) -> str:
    from benchmarks.report import table

    ratio = phases[0].throughput / phases[1].throughput if phases[1].throughput else math.nan
    stopped = [p.label for p in phases if p.ok + p.failed < plan.requests]
    limit = (
        f" {', '.join(stopped)} stopped at the {plan.max_seconds:.0f} s limit before the "
        "request budget was spent."
        if stopped
        else ""
    )
    goal = "met" if ratio >= GOAL and not any(p.failed for p in phases) else "not met"
    return (
        f"`polycap serve` on 127.0.0.1, {plan.clients} concurrent clients (closed loop), "
        f"budget {plan.requests} requests or {plan.max_seconds:.0f} s per mode; GPT-2 "
        f"{plan.decoder} decoder (random weights, vocabulary 50257, every caption "
        f"{plan.max_length} tokens), encoder {plan.encoder} (random weights), 640x480 JPEG "
        f"uploads, device {plan.device}; batching waits up to {plan.batch_wait_ms:g} ms."
        f"{limit}\n\n"
        + table(COLUMNS, rows(phases, plan), "lrrrrrrrr")
        + f"\n\nBatching gives **{ratio:.2f}x** the throughput of no batching "
        f"(goal {GOAL:g}x with zero failed requests: {goal}). The load runs on the same "
        "machine as the server and shares its cores."
    )


def print_table(phases: Sequence[Phase], plan: Plan) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    Console(width=140).print(Markdown(markdown(phases, plan)))


def plan_from(options: Any) -> Plan:
    """The plan ``python -m benchmarks.run`` asks for (``--quick``: a tiny smoke run)."""
    extra = getattr(options, "extra", {}) or {}
    if options.quick:
        plan = Plan(requests=64, clients=8, max_seconds=60, decoder="tiny")
        plan.encoder = "polycap-tiny-vit"
    else:
        plan = Plan(decoder=options.decoder)
    plan.max_length = options.max_length
    plan.device = options.device
    for key, value in extra.get("serve", {}).items():
        setattr(plan, key, value)
    return plan


def bench_section(options: Any) -> Section:
    from benchmarks.report import Section

    plan = plan_from(options)
    phases = measure(plan, options.say)
    data = {"plan": asdict(plan), "phases": [p.summary() for p in phases]}
    return Section(options.section_name("serve"), markdown(phases, plan), data)


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
    parser.add_argument("--encoder", choices=tuple(ENCODERS), default=defaults.encoder)
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch)
    parser.add_argument("--batch-wait-ms", type=float, default=defaults.batch_wait_ms)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--write", action="store_true", help="also write the section into docs/benchmarks.md"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan(
        requests=args.requests,
        clients=args.clients,
        max_seconds=args.max_seconds,
        max_length=args.max_length,
        decoder=args.decoder,
        encoder=args.encoder,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        device=args.device,
    )
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    phases = measure(plan, lambda message: print(message, file=sys.stderr))
    print_table(phases, plan)
    if args.write:
        from benchmarks import report

        data = {"plan": asdict(plan), "phases": [p.summary() for p in phases]}
        name = "serve" if plan.device == "cpu" else f"serve-{plan.device.split(':')[0]}"
        command = "python -m benchmarks.serving " + " ".join(sys.argv[1:])
        report.write([report.Section(name, markdown(phases, plan), data)], command.strip())
    return 0 if not any(p.failed for p in phases) else 1


if __name__ == "__main__":
    raise SystemExit(main())
