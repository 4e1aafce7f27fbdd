"""Run first by ``graphrerank/__init__.py``: what must happen before any layer is imported.

``torch._dynamo`` is deferred before anything imports PyTorch Geometric (see
:func:`graphrerank._imports.defer_dynamo`).
"""

from ._imports import defer_dynamo

__all__: list[str] = []

defer_dynamo()
