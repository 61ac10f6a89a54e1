"""Multi-process runs: `jax.distributed.initialize` from flags, env vars or the cluster, and
the few collective helpers the data pipeline needs (barrier, all-true, broadcast).

How a process finds its peers, first match wins:

1. explicit: `--coordinator HOST:PORT --num_processes N --process_id I` (lmjax train), or
   the env vars LMJAX_COORDINATOR, LMJAX_NUM_PROCESSES, LMJAX_PROCESS_ID (all three);
2. auto: on a multi-host TPU (several TPU workers) or in a SLURM job with more than one
   task (SLURM_NTASKS > 1), `jax.distributed.initialize()` with no arguments, which reads
   the cluster's own description;
3. otherwise one process (nothing to initialize).

This must run before anything touches the devices (jax.devices(), any computation).
"""
from __future__ import annotations

import os
import urllib.request
from typing import Mapping

from lmjax.errors import LmjaxError

ENV_COORDINATOR = "LMJAX_COORDINATOR"
ENV_NUM_PROCESSES = "LMJAX_NUM_PROCESSES"
ENV_PROCESS_ID = "LMJAX_PROCESS_ID"

_TPU_METADATA = "http://metadata.google.internal/computeMetadata/v1/instance/attributes/worker-network-endpoints"


def explicit_args(coordinator=None, num_processes=None, process_id=None,
                  env: Mapping[str, str] | None = None) -> dict | None:
    """Flags, else env vars -> kwargs for jax.distributed.initialize, or None if none are given.

    Giving some but not all three is an error that names the missing ones.
    """
    env = os.environ if env is None else env
    values = {
        "coordinator_address": coordinator if coordinator is not None else env.get(ENV_COORDINATOR),
        "num_processes": num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES),
        "process_id": process_id if process_id is not None else env.get(ENV_PROCESS_ID),
    }
    names = {"coordinator_address": f"--coordinator / {ENV_COORDINATOR}",
             "num_processes": f"--num_processes / {ENV_NUM_PROCESSES}",
             "process_id": f"--process_id / {ENV_PROCESS_ID}"}
    given = {k: v for k, v in values.items() if v not in (None, "")}
    if not given:
        return None
    missing = [names[k] for k in values if k not in given]
    if missing:
        raise LmjaxError(f"multi-process run: {', '.join(missing)} missing (give all three of --coordinator "
                         "HOST:PORT, --num_processes N, --process_id I, or none)")
    try:
        n, i = int(given["num_processes"]), int(given["process_id"])
    except ValueError:
        raise LmjaxError(f"--num_processes and --process_id must be integers, got "
                         f"{given['num_processes']!r} and {given['process_id']!r}") from None
    if n < 1 or not 0 <= i < n:
        raise LmjaxError(f"--process_id {i} must be in [0, --num_processes={n})")
    host, sep, port = str(given["coordinator_address"]).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LmjaxError(f"--coordinator must be HOST:PORT, got {given['coordinator_address']!r}")
    return {"coordinator_address": str(given["coordinator_address"]), "num_processes": n, "process_id": i}


def _tpu_worker_count(env: Mapping[str, str]) -> int:
    hosts = env.get("TPU_WORKER_HOSTNAMES", "")
    if hosts:
        return len([h for h in hosts.split(",") if h.strip()])
    if not os.path.exists("/dev/accel0") and not os.path.isdir("/dev/vfio"):
        return 0  # not a TPU VM: don't ask a metadata server that isn't there
    try:  # a TPU VM: its metadata lists every worker of the slice
        req = urllib.request.Request(_TPU_METADATA, headers={"Metadata-Flavor": "Google"})
        with urllib.request.urlopen(req, timeout=2) as r:
            text = r.read().decode()
        return len([w for w in text.split(",") if w.strip()])
    except OSError:
        return 0


def auto_detect(env: Mapping[str, str] | None = None) -> str | None:
    """'tpu' (multi-host TPU), 'slurm' (SLURM job with >1 task) or None (single process)."""
    env = os.environ if env is None else env
    if env.get("MEGASCALE_COORDINATOR_ADDRESS") or _tpu_worker_count(env) > 1:
        return "tpu"
    try:
        if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
            return "slurm"
    except ValueError:
        pass
    return None


def initialize(coordinator=None, num_processes=None, process_id=None) -> str:
    """Join the run's processes (see the module docstring); returns 'explicit', 'tpu', 'slurm' or 'single'."""
    import jax

    args = explicit_args(coordinator, num_processes, process_id)
    if args is not None:
        if args["num_processes"] == 1:
            return "single"
        jax.distributed.initialize(**args)
        return "explicit"
    kind = auto_detect()
    if kind is None:
        return "single"
    jax.distributed.initialize()
    return kind


class ProcessGroup:
    """This process's place among the run's processes, with the collectives the data pipeline uses.

    The JAX implementation uses tiny computations over all devices (multihost_utils), so
    every process must make the same calls in the same order.
    """

    def __init__(self, index: int = 0, count: int = 1):
        self.index, self.count = index, count

    def barrier(self, name: str) -> None:
        """Wait until every process has reached the barrier of this name."""

    def all_true(self, flag: bool) -> bool:
        """True on every process iff `flag` is true on every process."""
        return bool(flag)

    def broadcast(self, value: int) -> int:
        """Process 0's `value`, on every process."""
        return int(value)


class JaxProcessGroup(ProcessGroup):
    def __init__(self):
        import jax

        super().__init__(jax.process_index(), jax.process_count())

    def barrier(self, name: str) -> None:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)

    def all_true(self, flag: bool) -> bool:
        import numpy as np
        from jax.experimental import multihost_utils

        return bool(np.all(multihost_utils.process_allgather(np.asarray(bool(flag)))))

    def broadcast(self, value: int) -> int:
        import numpy as np
        from jax.experimental import multihost_utils

        return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


def process_group() -> ProcessGroup:
    """The group of this run's processes (a trivial one when there is one process)."""
    import jax

    return JaxProcessGroup() if jax.process_count() > 1 else ProcessGroup()
