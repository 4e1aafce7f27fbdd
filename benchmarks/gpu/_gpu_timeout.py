"""A pytest plugin of ``check.py``: a per-test time limit, a deadline for the whole run and a
line-per-test report, with no package beyond pytest.

Loaded with ``-p _gpu_timeout`` (this folder on ``PYTHONPATH``) and driven by environment
variables, so that it adds no command-line option:

* ``GPU_CHECK_TEST_TIMEOUT``: seconds one test (setup, call and teardown each) may run; a
  ``SIGALRM`` then raises :class:`TestTimeout` inside it, which fails that test and lets the
  run go on. Code stuck inside one C call (a kernel that never returns) is not interrupted: the
  caller's hard time limit covers that.
* ``GPU_CHECK_DEADLINE``: a Unix time after which the tests not yet started are skipped with
  the reason :data:`BUDGET_REASON` (the run ends in time and says what it did not run).
* ``GPU_CHECK_REPORT``: a file that receives one JSON line per test phase outcome as it is
  known (written by the controlling process only, so a killed run keeps what it did).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

#: The skip reason of the tests the deadline left out.
BUDGET_REASON = "gpu check: test time budget spent"


class TestTimeout(Exception):
    """A test ran past ``GPU_CHECK_TEST_TIMEOUT``."""

    __test__ = False  # not a test class


def _limit() -> float:
    return float(os.environ.get("GPU_CHECK_TEST_TIMEOUT", "0") or 0)


def _deadline() -> float:
    return float(os.environ.get("GPU_CHECK_DEADLINE", "0") or 0)


def _alarm(seconds: float, what: str):
    if (
        seconds <= 0
        or not hasattr(signal, "setitimer")
        or threading.current_thread() is not threading.main_thread()
    ):
        return None  # signals reach the main thread only: no limit elsewhere

    def handler(signum, frame):
        raise TestTimeout(f"{what} exceeded the per-test time limit of {seconds:g} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    return old


def _clear(old) -> None:
    if old is None:
        return
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def _guarded(phase: str):
    @pytest.hookimpl(hookwrapper=True)
    def hook(item, *args, **kwargs):
        old = _alarm(_limit(), f"{phase} of {item.nodeid}")
        try:
            yield
        finally:
            _clear(old)

    return hook


pytest_runtest_call = _guarded("the call")
pytest_runtest_teardown = _guarded("the teardown")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    deadline = _deadline()
    if deadline and time.time() > deadline:
        pytest.skip(BUDGET_REASON)


class _SetupGuard:
    pytest_runtest_setup = staticmethod(_guarded("the setup"))


def _write(config, record: dict) -> None:
    path = os.environ.get("GPU_CHECK_REPORT")
    if not path or hasattr(config, "workerinput"):  # xdist workers: the controller writes
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


_CONFIG = []


def pytest_configure(config):
    _CONFIG.append(config)
    config.pluginmanager.register(_SetupGuard(), "gpu_check_setup_guard")


def pytest_runtest_logreport(report):
    if not _CONFIG:
        return
    if report.when != "call" and report.outcome == "passed":
        return  # setup / teardown that passed: the call's report says it
    message = ""
    if report.outcome == "skipped" and isinstance(report.longrepr, tuple):
        message = str(report.longrepr[2])
    elif report.outcome == "failed":
        message = str(getattr(report, "longreprtext", "") or report.longrepr)
    _write(
        _CONFIG[0],
        {
            "nodeid": report.nodeid,
            "when": report.when,
            "outcome": report.outcome,
            "duration": round(float(report.duration), 4),
            "message": message[-2000:],
        },
    )


def pytest_collectreport(report):
    if _CONFIG and report.outcome == "failed":
        _write(
            _CONFIG[0],
            {
                "nodeid": report.nodeid,
                "when": "collect",
                "outcome": "error",
                "duration": 0.0,
                "message": str(report.longrepr)[-2000:],
            },
        )
