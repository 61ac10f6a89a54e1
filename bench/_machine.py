"""What the benchmarks say about the machine they ran on, and how they wait for it to be quiet."""
from __future__ import annotations

import platform
import time


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def runnable_tasks():
    """Runnable tasks on the machine right now (Linux /proc/loadavg), or None elsewhere."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_quiet(max_s: float) -> bool:
    """Wait up to max_s seconds until no other task is runnable (we count as one).

    The machine may be shared: a timed step that starts while another process is busy is
    slowed for reasons that have nothing to do with the code under test. Returns whether
    the machine was quiet when the wait ended.
    """
    t0 = time.perf_counter()
    while True:
        n = runnable_tasks()
        if n is None or n <= 1:
            return True
        if time.perf_counter() - t0 >= max_s:
            return False
        time.sleep(0.02)
