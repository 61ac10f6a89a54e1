"""What the benchmarks say about the machine they ran on, and how they wait for it to be quiet."""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os
import platform
import sys
import time

# Libraries whose versions a figure depends on; those not installed are left out.
LIBRARIES = ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "transformers", "transformer_lens", "sae_lens",
             "circuit_tracer")


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` knows."""
    return cpu_info().model_name


def machine(**extra) -> dict:
    """What every benchmark's JSON says about where it ran: the CPU (model, vendor, family,
    ISA flags, cores this process may use), the OS and Python, the installed versions of
    LIBRARIES, XLA_FLAGS, the load at the start; plus `extra`."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu_info().describe(), "platform": platform.platform(), "python": sys.version.split()[0],
            "versions": versions, "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None, **extra}


# ISA flags a reader of a benchmark's JSON may need: the figures of one CPU family are not another's.
NOTABLE_ISA = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_bf16", "amx_tile",
               "asimd", "sve")


@dataclasses.dataclass(frozen=True)
class CpuInfo:
    vendor: str  # "GenuineIntel", "AuthenticAMD", an ARM implementer, or what `platform` knows
    model_name: str
    family: int | None
    model: int | None
    cores: int
    isa: tuple[str, ...]  # the NOTABLE_ISA flags this CPU has

    @property
    def kind(self) -> str:
        """"intel", "amd", "arm" or "other": the family a README row names."""
        if self.vendor == "GenuineIntel":
            return "intel"
        if self.vendor == "AuthenticAMD":
            return "amd"
        if platform.machine().lower() in ("aarch64", "arm64"):
            return "arm"
        return "other"

    def describe(self) -> dict:
        return {**dataclasses.asdict(self), "kind": self.kind}


def parse_cpuinfo(text: str, cores: int) -> CpuInfo:
    """The first processor's entry of a /proc/cpuinfo text."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())

    def number(key):
        value = fields.get(key, "")
        try:
            return int(value, 0)
        except ValueError:
            return None

    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    return CpuInfo(vendor=fields.get("vendor_id") or fields.get("CPU implementer") or platform.processor() or "unknown",
                   model_name=fields.get("model name") or platform.processor() or platform.machine(),
                   family=number("cpu family"), model=number("model"), cores=cores,
                   isa=tuple(f for f in NOTABLE_ISA if f in flags))


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (Linux /proc/cpuinfo; elsewhere what `platform` knows)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        with open("/proc/cpuinfo") as f:
            return parse_cpuinfo(f.read(), cores)
    except OSError:
        return parse_cpuinfo("", cores)


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
