"""Hypothesis profiles of the hardening suite.

``ci`` (the default) keeps the whole directory to well under two minutes and is reproducible
(derandomised); ``long`` (``GRAPHRERANK_HYPOTHESIS=long``) runs many more, random, examples
and is meant to be run by hand::

    GRAPHRERANK_HYPOTHESIS=long pytest tests/hardening
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    max_examples=25,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=_QUIET,
)
settings.register_profile(
    "long",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=_QUIET,
)
settings.load_profile(os.environ.get("GRAPHRERANK_HYPOTHESIS", "ci"))
