"""The tiny pytest run of ``check.py --quick``: one test of each outcome the check records
(pass, skip, a test stopped by the per-test time limit), so the plugin and the report are
exercised without the CUDA suite. Not part of the project's test suite (not under
``tests/``)."""

import time

import pytest


def test_passes():
    assert 1 + 1 == 2


def test_skips():
    pytest.skip("quick-suite skip")


def test_runs_past_the_limit():
    time.sleep(30)  # stopped by GPU_CHECK_TEST_TIMEOUT
