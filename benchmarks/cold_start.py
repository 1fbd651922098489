"""A command from a cold process: seconds to its first line of output, seconds to its end, and
its peak resident memory.

``python -m benchmarks.cold_start CMD ARGS...`` runs ``CMD`` as its only child and prints one
JSON line: ``first_line_s`` (from starting the child to the first line it writes to stdout),
``total_s``, ``peak_rss_mb`` (``resource.getrusage(RUSAGE_CHILDREN).ru_maxrss``: the child's
peak, since it is the only child this process waits for), ``returncode`` and ``first_line``.
:func:`measure` runs that wrapper in a fresh process per call, so every side's peak is its own.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any


def run(command: list[str]) -> dict[str, Any]:
    """Run ``command`` (this process's only child) and measure it."""
    started = time.perf_counter()
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    assert child.stdout is not None
    first_line, first_s = "", None
    for line in child.stdout:
        if line.strip() and first_s is None:
            first_s = time.perf_counter() - started
            first_line = line.strip()
    stderr = child.stderr.read() if child.stderr else ""
    returncode = child.wait()
    total = time.perf_counter() - started
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "first_line_s": first_s,
        "total_s": total,
        "peak_rss_mb": peak_kb / 1024,
        "returncode": returncode,
        "first_line": first_line[:200],
        "stderr_tail": stderr[-600:] if returncode else "",
    }


def measure(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """:func:`run` in a fresh wrapper process (so the peak is this command's alone)."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.cold_start", *command],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"returncode": out.returncode, "stderr_tail": out.stderr[-600:]}
    return json.loads(lines[-1])


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:])))
