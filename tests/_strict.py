"""Strict skips: in CI a test may skip only where CI cannot help it (no accelerator).

With `LMJAX_STRICT=1` (or `CI=true`, which CI services set, unless `LMJAX_STRICT=0`) a
skip of any test not marked `@pytest.mark.accelerator` is reported as a failure naming
the skip's reason: a missing test dependency (torch, transformers, nbclient, tensorboard,
chromium, the shared data) is something CI installs, so its absence must not pass as
green. A module skipped while it is collected (`pytest.importorskip` at the top) becomes a
collection error, and the other tests still run. tests/conftest.py loads these hooks;
tests/test_strict.py runs them on a generated test file.
"""
from __future__ import annotations

import os

import pytest


def strict() -> bool:
    default = "1" if os.environ.get("CI", "").lower() == "true" else "0"
    return os.environ.get("LMJAX_STRICT", default) == "1"


def _reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return longrepr[2]
    return str(longrepr)


def _fail(report, what: str) -> None:
    report.outcome = "failed"
    report.longrepr = (f"strict mode (LMJAX_STRICT=1 or CI=true): {what} skipped, and only tests marked "
                       f"`accelerator` may skip here; install what it needs. {_reason(report.longrepr)}")


def pytest_configure(config):
    config.addinivalue_line("markers", "accelerator: needs a GPU or TPU; the only kind of test that may skip "
                                       "in strict mode (LMJAX_STRICT=1 or CI=true)")
    if strict():  # a module that cannot import its test dependency fails, the rest still runs
        config.option.continue_on_collection_errors = True


def pytest_report_header(config):
    return f"lmjax strict skips: {'on (skips fail unless marked accelerator)' if strict() else 'off'}"


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    if strict() and report.skipped:
        _fail(report, f"{collector.nodeid or 'a module'}")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if (strict() and report.skipped and not hasattr(report, "wasxfail")
            and item.get_closest_marker("accelerator") is None):
        _fail(report, item.nodeid)
    return report
