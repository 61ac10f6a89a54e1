#!/usr/bin/env python3
"""Run N processes of one command on this machine, as a multi-process JAX run on CPU devices.

    python launch/local.py --num_processes 2 --devices_per_process 4 -- \\
        lmjax train --config configs/quickstart.py --workdir runs/qs2

Each process gets JAX_PLATFORMS=cpu, XLA_FLAGS=--xla_force_host_platform_device_count=D,
the loopback coordinator 127.0.0.1:PORT and its index: appended as `--coordinator
--num_processes --process_id` when the command is `lmjax train` (or `python -m lmjax
train`, `python -m lmjax.train`), and always as the env vars LMJAX_COORDINATOR,
LMJAX_NUM_PROCESSES, LMJAX_PROCESS_ID (for any other program that calls
`lmjax.distributed.initialize()`). Output lines are prefixed with `[i]`. The launcher
waits for all of them; if one fails, it stops the others (SIGTERM, then SIGKILL after
--grace seconds) and exits with that process's status. Ctrl-C stops them all.
`--dry_run` prints the exact commands and environment instead of running them.

This exercises the multi-process code path (distributed init, per-process data loading,
sharded checkpoints) on one machine; it is not a way to go faster.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

_DEVICE_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_lmjax_train(cmd: list[str]) -> bool:
    """`lmjax train ...`, `python -m lmjax train ...` or `python -m lmjax.train ...`."""
    if len(cmd) >= 2 and os.path.basename(cmd[0]) == "lmjax" and cmd[1] == "train":
        return True
    for i in range(len(cmd) - 1):
        if cmd[i] == "-m":
            return cmd[i + 1] == "lmjax.train" or (cmd[i + 1] == "lmjax" and cmd[i + 2:i + 3] == ["train"])
    return False


def xla_flags(existing: str, devices: int) -> str:
    kept = [f for f in existing.split() if not f.startswith(_DEVICE_FLAG)]
    return " ".join(kept + [f"{_DEVICE_FLAG}={devices}"])


def plan(cmd: list[str], num_processes: int, devices_per_process: int, port: int,
         base_env: dict | None = None) -> list[tuple[list[str], dict[str, str]]]:
    """[(argv, env changes)] for each process."""
    base_env = os.environ if base_env is None else base_env
    coordinator = f"127.0.0.1:{port}"
    out = []
    for i in range(num_processes):
        env = {
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": xla_flags(base_env.get("XLA_FLAGS", ""), devices_per_process),
            "LMJAX_COORDINATOR": coordinator,
            "LMJAX_NUM_PROCESSES": str(num_processes),
            "LMJAX_PROCESS_ID": str(i),
        }
        argv = list(cmd)
        if is_lmjax_train(cmd):
            argv += ["--coordinator", coordinator, "--num_processes", str(num_processes), "--process_id", str(i)]
        out.append((argv, env))
    return out


def _pump(i: int, stream, lock: threading.Lock) -> None:
    for line in iter(stream.readline, b""):
        text = line.decode("utf-8", errors="replace").rstrip("\r\n")
        with lock:
            sys.stdout.write(f"[{i}] {text}\n")
            sys.stdout.flush()
    stream.close()


def _stop(procs, grace: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run(commands, grace: float = 10.0) -> int:
    """Start every process, stream their output, return 0 or the first failure's exit status."""
    lock = threading.Lock()
    procs, pumps = [], []
    for i, (argv, env) in enumerate(commands):
        p = subprocess.Popen(argv, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL)
        procs.append(p)
        t = threading.Thread(target=_pump, args=(i, p.stdout, lock), daemon=True)
        t.start()
        pumps.append(t)
    status = 0
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i, status = failed[0]
                with lock:
                    print(f"[launch] process {i} exited with status {status}; stopping the others", flush=True)
                _stop(procs, grace)
                break
            if all(c == 0 for c in codes):
                break
            time.sleep(0.1)
    except KeyboardInterrupt:
        _stop(procs, grace)
        status = 130
    for t in pumps:
        t.join(timeout=5)
    return status if status >= 0 else 128 - status  # killed by signal N -> 128 + N


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" in argv:
        split = argv.index("--")
        ours, cmd = argv[:split], argv[split + 1:]
    else:
        ours, cmd = argv, []
    p = argparse.ArgumentParser(prog="launch/local.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s --num_processes N --devices_per_process D [--port P] [--dry_run] -- COMMAND ...")
    p.add_argument("--num_processes", type=int, required=True)
    p.add_argument("--devices_per_process", type=int, default=1, help="simulated CPU devices per process")
    p.add_argument("--port", type=int, default=0, help="coordinator port on 127.0.0.1 (0 = a free one)")
    p.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL when stopping")
    p.add_argument("--dry_run", "--dry-run", action="store_true",
                   help="print the commands and environment, run nothing")
    a = p.parse_args(ours)
    if not cmd:
        p.error("give the command to run after `--`, e.g. -- lmjax train --config C --workdir W")
    if a.num_processes < 1 or a.devices_per_process < 1:
        p.error("--num_processes and --devices_per_process must be >= 1")
    if not 0 <= a.port < 65536:
        p.error("--port must be in [0, 65535]")
    port = a.port or (12355 if a.dry_run else free_port())
    commands = plan(cmd, a.num_processes, a.devices_per_process, port)
    if a.dry_run:
        for i, (argv_i, env) in enumerate(commands):
            print(f"# process {i}")
            print(" ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " + shlex.join(argv_i))
        return 0
    return run(commands, grace=a.grace)


if __name__ == "__main__":
    sys.exit(main())
