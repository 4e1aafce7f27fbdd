"""Run first by ``graphrerank/__init__.py``: what must happen before any layer is imported.

``torch._dynamo`` and ``requests`` are deferred before anything imports PyTorch Geometric (see
:func:`graphrerank._imports.defer_imports`); nothing here imports torch.
"""

from ._imports import defer_imports

__all__: list[str] = []

defer_imports()
