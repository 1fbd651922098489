"""``python -m benchmarks.cli_startup [N]``: how long ``polycap --help`` takes, run N times
(default 7) in fresh processes; prints min and median of the wall time and of the process's
CPU time (user + system, from ``resource.getrusage``), and the load average.

CPU time is the figure to read on a shared machine: wall time grows with the load. Not one of
``make bench``'s sections (it defines no ``BENCHMARKS``): it measures start-up, not throughput.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time


def measure(runs: int = 7) -> dict[str, float]:
    """Wall and CPU seconds of ``python -m polycap --help``: min and median over ``runs``."""
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "polycap", "--help"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=True,
        )
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    middle = runs // 2
    return {
        "wall_min": min(walls),
        "wall_median": sorted(walls)[middle],
        "cpu_min": min(cpus),
        "cpu_median": sorted(cpus)[middle],
        "load": os.getloadavg()[0],
    }


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    found = measure(runs)
    print(
        f"polycap --help, {runs} runs: wall min {found['wall_min']:.2f} s, median "
        f"{found['wall_median']:.2f} s; CPU min {found['cpu_min']:.2f} s, median "
        f"{found['cpu_median']:.2f} s (load average {found['load']:.1f}, {os.cpu_count()} CPUs)"
    )


if __name__ == "__main__":
    main()
