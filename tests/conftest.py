"""Test setup: 8 simulated CPU devices (so sharded code paths run), a private cache dir,
the shared reference data, a session-wide compilation cache, and strict skips in CI
(tests/_strict.py)."""
import atexit
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# JAX's persistent compilation cache for this session (and the subprocesses it starts),
# unless one is given: a program that another test or process already compiled (the same
# train step of another run) is loaded instead (tests/test_train.py: ~20% less CPU).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="lmjax-tests-compiled-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
# Reference data lmjax does not ship ($LMJAX_DATA/..., lmjax/data/reference.py): the
# checkout's shared folder next to the repository unless the variable says otherwise.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("LMJAX_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))
DATA = os.environ["LMJAX_DATA"]

import pytest  # noqa: E402

# pytest registers every pytest_* name of a conftest as a hook, imported ones included.
from _strict import (  # noqa: E402,F401
    pytest_configure,
    pytest_make_collect_report,
    pytest_report_header,
    pytest_runtest_makereport,
)


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    """Token shards go to a per-session temporary cache, never the user's ~/.cache."""
    os.environ["LMJAX_CACHE"] = str(tmp_path_factory.mktemp("lmjax_cache"))
    yield


def data_file(*parts: str) -> str:
    """A file of the shared reference data; skipped if absent (a failure in strict mode)."""
    path = os.path.join(DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"reference data {os.path.join(*parts)} not found under LMJAX_DATA={DATA}")
    return path
