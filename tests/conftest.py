"""Test setup: 8 simulated CPU devices (so sharded code paths run), a private cache dir."""
import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    """Token shards go to a per-session temporary cache, never the user's ~/.cache."""
    os.environ["LMJAX_CACHE"] = str(tmp_path_factory.mktemp("lmjax_cache"))
    yield
