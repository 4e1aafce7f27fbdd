"""Re-ranker specs: ``Name``, ``Name(key=value, ...)``, ``--set key=value``, ``A() | B()``.

A spec names a class of :data:`graphrerank.rerankers.RERANKERS` (case-insensitive) in call
syntax; the values are Python literals, arithmetic on numbers (``10**6``), bare words
(strings), re-ranker specs themselves (for a setting that takes a re-ranker) and lists or
tuples of these. Stages joined by ``|`` become a
``graphrerank.rerankers.Pipeline``, the same as ``Pipeline([A(), B()])``. A setting is given
by name, except those a class takes by position (``Pipeline``'s stages). Nothing is evaluated:
the spec is parsed, and only literals and re-ranker names are accepted. Every problem is a
:class:`~graphrerank.cli.CLIError`.
"""

from __future__ import annotations

import ast
import inspect
import operator
from collections.abc import Iterable, Sequence
from typing import Any

from .. import rerankers
from .base import CLIError

__all__ = ["parse_reranker", "select_rerankers"]


def _registry() -> dict[str, type]:
    """The re-rankers the command line evaluates, by lower-case class name (read at each call:
    the registry may change at run time)."""
    return {cls.__name__.lower(): cls for cls in rerankers.RERANKERS}


def _resolve(name: str) -> type:
    table = _registry()
    cls = table.get(name.lower())
    local = {c.__name__.lower(): c for c in rerankers.RERANKERS_WITH_LOCAL}
    if cls is None and name.lower() in local:
        raise CLIError(
            f"{local[name.lower()].__name__} needs local descriptors besides the global ones; "
            "the command line evaluates global descriptors only: use it from Python "
            "(see the tutorial on learned re-rankers)"
        )
    if cls is None:
        known = ", ".join(c.__name__ for c in table.values())
        raise CLIError(f"unknown re-ranker {name!r}; available: {known}")
    return cls


def _unreadable(spec: str) -> CLIError:
    return CLIError(
        f"cannot read the re-ranker spec {spec!r}: write Name, Name(key=value, ...), "
        "Stage1(...) | Stage2(...) or Pipeline([Stage1(...), Stage2(...)])"
    )


def _is_reranker_node(node: ast.expr) -> bool:
    """``Name`` or ``Name(...)`` naming a re-ranker class (a setting that takes a re-ranker)."""
    func = node.func if isinstance(node, ast.Call) else node
    return isinstance(func, ast.Name) and func.id.lower() in _registry()


def _parse_value(text: str) -> Any:
    """A setting's value: a re-ranker spec (``KReciprocal(k1=10)``), a Python literal (``50``,
    ``0.9``, ``None``, ``'l2'``), else the text itself."""
    text = text.strip()
    lowered = {"none": None, "true": True, "false": False}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError:
        return text
    if _is_reranker_node(node):
        return _stage(node, text)
    try:
        return _constant(node)
    except ValueError:
        return text


def _constant(node: ast.expr) -> Any:
    """A Python literal, or arithmetic on numbers (``10**6``); ``ValueError`` otherwise."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        return _number(node)


_ARITHMETIC = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


def _number(node: ast.expr) -> int | float:
    """A number written as arithmetic on numbers (``10**6``, ``2 * 1024``, ``1 / 3``);
    ``ValueError`` for anything else (exponents are capped at 64: nothing is evaluated but
    numbers)."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _number(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        a, b = _number(node.left), _number(node.right)
        if isinstance(node.op, ast.Pow) and abs(b) > 64:
            raise ValueError("exponent above 64")
        try:
            value = _ARITHMETIC[type(node.op)](a, b)
        except (ArithmeticError, ValueError) as err:
            raise ValueError(str(err)) from None
        if type(value) not in (int, float):  # (-8) ** 0.5 is complex
            raise ValueError("not a real number")
        return value
    raise ValueError("not a number")


def _literal(node: ast.expr, where: str) -> Any:
    if _is_reranker_node(node):  # a re-ranker as a setting: RDiP(rescorer=KReciprocal())
        return _stage(node, ast.unparse(node))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):  # a pipeline as a value
        text = ast.unparse(node)
        return _pipeline([_stage(n, text) for n in _flatten_pipe(node)], text)
    if isinstance(node, ast.Name):  # a bare word: KNN(backend=torch)
        return _parse_value(node.id)
    if isinstance(node, (ast.List, ast.Tuple)):  # Pipeline([KNN(), Diffusion(k=20)])
        items = [_literal(e, where) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    try:
        return _constant(node)
    except ValueError:
        raise CLIError(f"{where}: the value {ast.unparse(node)!r} is not a literal") from None


def _check_settings(cls: type, settings: Iterable[str], where: str) -> None:
    defaults = cls.default_params()
    for name in settings:
        if name not in defaults:
            listing = ", ".join(f"{n}={d!r}" for n, d in defaults.items()) or "none"
            raise CLIError(f"{where}: {cls.__name__} has no setting {name!r}; settings: {listing}")


def _positional(cls: type) -> list[str]:
    """The settings ``cls`` takes by position (``Pipeline``: its stages), from its signature."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


def _stage(node: ast.expr, spec: str) -> Any:
    if isinstance(node, ast.Name):
        return _resolve(node.id)()
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        cls = _resolve(node.func.id)
        positional = _positional(cls)
        if len(node.args) > len(positional):
            if not positional:
                raise CLIError(
                    f"{spec!r}: settings must be given by name, e.g. {cls.__name__}(k=50)"
                )
            raise CLIError(
                f"{spec!r}: {cls.__name__} takes only {', '.join(positional)} by position; "
                "give the other settings by name"
            )
        if any(isinstance(a, ast.Starred) for a in node.args):
            raise CLIError(f"{spec!r}: '*' is not allowed in a re-ranker spec")
        kwargs = {name: _literal(a, repr(spec)) for name, a in zip(positional, node.args)}
        for kw in node.keywords:
            if kw.arg is None:
                raise CLIError(f"{spec!r}: '**' is not allowed in a re-ranker spec")
            if kw.arg in kwargs:
                raise CLIError(f"{spec!r}: the setting {kw.arg!r} is given twice")
            kwargs[kw.arg] = _literal(kw.value, repr(spec))
        _check_settings(cls, kwargs, repr(spec))
        return cls(**kwargs)
    raise _unreadable(spec)


def _flatten_pipe(node: ast.expr) -> list[ast.expr]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _flatten_pipe(node.left) + _flatten_pipe(node.right)
    return [node]


def _pipeline(stages: list[Any], spec: str) -> Any:
    pipeline = getattr(rerankers, "Pipeline", None)
    if pipeline is None:
        raise CLIError(
            f"{spec!r} chains stages with '|', but this version of graphrerank has no "
            "graphrerank.rerankers.Pipeline"
        )
    return pipeline(stages)


def parse_reranker(spec: str, settings: Sequence[str] = ()) -> Any:
    """Build a re-ranker from a command-line spec.

    Args:
        spec: ``Name``, ``Name(key=value, ...)`` (values are Python literals, or re-ranker
            specs for settings that take a re-ranker, or lists of these; a bare word is a
            string), or stages joined by ``|`` for a pipeline, which is the same as
            ``Pipeline([Stage1(...), Stage2(...)])``. Names are class names of
            :data:`graphrerank.rerankers.RERANKERS`, case-insensitive. Nothing is evaluated.
        settings: ``"key=value"`` strings applied after the spec's own settings.

    Returns:
        The re-ranker (not fitted); its settings are validated.

    Raises:
        CLIError: unknown name or setting, malformed spec, or a setting's value is invalid.

    Example:
        >>> parse_reranker("knn(metric='l2')", ["backend=torch"])
        KNN(metric='l2', backend='torch')
        >>> parse_reranker("Pipeline([DatabaseAugmentation(k=3), AlphaQueryExpansion(k=4)])")
        Pipeline([DatabaseAugmentation(k=3), AlphaQueryExpansion(k=4)])
        >>> parse_reranker("DatabaseAugmentation(k=3) | AlphaQueryExpansion(k=4)")
        Pipeline([DatabaseAugmentation(k=3), AlphaQueryExpansion(k=4)])
    """
    try:
        tree = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError:
        raise _unreadable(spec) from None
    stages = [_stage(n, spec) for n in _flatten_pipe(tree)]
    reranker = stages[0] if len(stages) == 1 else _pipeline(stages, spec)
    updates = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--set expects key=value, got {item!r}")
        updates[key.strip()] = _parse_value(value)
    if updates:
        _check_settings(type(reranker), updates, f"--set for {spec!r}")
        reranker.set_params(**updates)
    try:
        reranker.validate_params()
    except (ValueError, TypeError) as err:
        raise CLIError(f"{spec!r}: {err}") from None
    return reranker


def select_rerankers(
    entries: Sequence[tuple[str, Sequence[str]]] | None, *, default_all: bool, baseline: bool
) -> list[Any]:
    """The re-rankers a command runs, in order.

    Args:
        entries: ``(spec, settings)`` pairs of the ``--reranker`` / ``--set`` options, each
            read by :func:`parse_reranker`.
        default_all: without entries, every class of :data:`graphrerank.rerankers.RERANKERS`
            at its default settings (else the kNN baseline alone).
        baseline: put the kNN baseline at default settings first, unless it is listed.

    Returns:
        Re-rankers, not fitted.
    """
    knn = rerankers.KNN
    if entries:
        models = [parse_reranker(spec, settings) for spec, settings in entries]
    elif default_all:
        models = [cls() for cls in rerankers.RERANKERS]
    else:
        models = [knn()]
    if baseline and not any(
        type(m) is knn and m.get_params() == knn().get_params() for m in models
    ):
        models.insert(0, knn())
    return models
