"""Run `lmjax` commands in one Python subprocess on one CPU device.

Without the 8 simulated devices of the test session, replicated single-example work
(training a tiny model, `lmjax explain`) is not done 8 times over, and one process lets
later commands reuse what earlier ones compiled. Every program compiles with LLVM at -O0
there (XLA's --xla_backend_optimization_level=0: about half the compile time, the same
results up to float rounding): for a few steps of a tiny model compiling is nearly all
the time.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

DRIVER = """
import json, sys, time, traceback
from lmjax.commands import main
codes = []
for args in json.loads(sys.argv[1]):
    start = time.perf_counter()
    try:
        codes.append(main(args))
    except Exception:  # a traceback: a bug, shown; the next commands still run
        traceback.print_exc()
        codes.append("traceback")
    print(f"lmjax exited {codes[-1]} ({args[0]}, {time.perf_counter() - start:.1f} s)", file=sys.stderr, flush=True)
    print(f"lmjax exited {codes[-1]}", flush=True)
print(json.dumps(codes))
"""


def run_lmjax(*commands, timeout: int = 900):
    """-> (exit codes, stdout, stderr) of `lmjax COMMAND...`, each command a list of
    arguments; stdout and stderr have a line `lmjax exited CODE` after each command (on
    stderr followed by the command and its wall time). A command that ends in a traceback
    (a bug, not an error lmjax reports) gets the code "traceback"."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
    flags = f"{flags} --xla_backend_optimization_level=0".strip()
    env = {**os.environ, "XLA_FLAGS": flags}
    run = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], capture_output=True, text=True,
                         env=env, timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), run.stdout, run.stderr


def outputs(text: str) -> list[str]:
    """Each command's part of stdout or stderr, in order."""
    return re.split(r"^lmjax exited \S+.*\n", text, flags=re.MULTILINE)[:-1]
