"""Declared settings: what each setting of an estimator may be, stated once per class.

A re-ranker declares each setting once, its default and what it may be together
(scikit-learn's parameter constraints, in our own code)::

    kd: int = setting(50, Int(1))
    alpha: float = setting(0.99, Real(0, 1, high_open=True))
    batch_size: int | None = setting(None, Int(1) | None)

and :meth:`~graphrerank.rerankers.Reranker.validate_params` checks every one of them at
``fit``. Each check raises the ``TypeError`` / ``ValueError`` of :mod:`graphrerank._checks`,
whose message names the setting and the value. A bound may name another setting
(``Int(low="kd")``): ``RDiP``'s ``km >= kd``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ._checks import check_in, check_int, check_real

__all__ = [
    "PROGRESS",
    "AnyOf",
    "Bool",
    "Constraint",
    "Constraints",
    "Function",
    "InstanceOf",
    "Int",
    "OneOf",
    "Real",
    "check_params",
    "setting",
]


class Constraint:
    """What one setting may be. ``check`` raises naming the setting; ``describe`` reads
    as a phrase ("an integer >= 1")."""

    def check(self, value: Any, name: str, params: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def __or__(self, other: Constraint | None) -> AnyOf:
        return AnyOf(self, other)

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


#: A class's declaration: setting name -> constraint (``None``: anything goes).
Constraints = dict[str, "Constraint | None"]


def _bound(bound: int | float | str | None, params: Mapping[str, Any]):
    if isinstance(bound, str):  # another setting, already checked (or left to its own check)
        value = params.get(bound)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return bound


class Int(Constraint):
    """An integer (not a bool) in ``[low, high]``; a bound may name another setting."""

    def __init__(self, low: int | str | None = None, high: int | str | None = None) -> None:
        self.low, self.high = low, high

    def check(self, value: Any, name: str, params: Mapping[str, Any]) -> None:
        check_int(
            value,
            name,
            low=_bound(self.low, params),
            high=_bound(self.high, params),
            low_of=f"the setting {self.low}" if isinstance(self.low, str) else None,
            high_of=f"the setting {self.high}" if isinstance(self.high, str) else None,
        )

    def describe(self) -> str:
        parts = ["an integer"]
        if self.low is not None:
            parts.append(f">= {self.low}")
        if self.high is not None:
            parts.append(f"<= {self.high}")
        return " ".join(parts)


class Real(Constraint):
    """A real number (not NaN, not a bool) in an open or closed interval.

    Infinite values are refused unless ``allow_inf=True``: an unbounded side of the interval
    (``low`` or ``high`` left ``None``) means "any finite number", since a setting that is a
    weight, an exponent or a tolerance has no meaning at infinity (``beta=inf`` turns every
    score into NaN).
    """

    def __init__(
        self,
        low: float | None = None,
        high: float | None = None,
        *,
        low_open: bool = False,
        high_open: bool = False,
        allow_inf: bool = False,
    ) -> None:
        self.low, self.high, self.low_open, self.high_open = low, high, low_open, high_open
        self.allow_inf = allow_inf

    def check(self, value: Any, name: str, params: Mapping[str, Any]) -> None:
        value = check_real(
            value, name, low=self.low, high=self.high, low_open=self.low_open,
            high_open=self.high_open,
        )  # fmt: skip
        if not self.allow_inf and math.isinf(value):
            raise ValueError(f"{name} must be a finite real number, got {value}")

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            lo = "(" if self.low_open else "["
            hi = ")" if self.high_open else "]"
            return f"a real number in {lo}{self.low}, {self.high}{hi}"
        if self.low is not None:
            return f"a real number {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None:
            return f"a real number {'<' if self.high_open else '<='} {self.high}"
        return "a real number"


class OneOf(Constraint):
    """One of a fixed set of options (the literals of :mod:`graphrerank.typing`)."""

    def __init__(self, options: Sequence[Any]) -> None:
        self.options = tuple(options)

    def check(self, value: Any, name: str, params: Mapping[str, Any]) -> None:
        check_in(value, name, self.options)

    def describe(self) -> str:
        return "one of " + ", ".join(repr(o) for o in self.options)


class Bool(Constraint):
    """``True`` or ``False`` (not 0 / 1)."""

    def check(self, value: Any, name: str, params: Mapping[str, Any]) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")

    def describe(self) -> str:
        return "True or False"


class Function(Constraint):
    """A callable."""

    def __init__(self, what: str = "a callable") -> None:
        self.what = what

    def check(self, value: Any, name: str, params: Mapping[str, Any]) -> None:
        if not callable(value):
            raise TypeError(f"{name} must be {self.what}, got {type(value).__name__}")

    def describe(self) -> str:
        return self.what


class InstanceOf(Constraint):
    """An instance of a class (``cls`` may be a zero-argument function returning it, so that
    a module can name a class it must not import at load time)."""

    def __init__(self, cls: type | Callable[[], type], what: str) -> None:
        self._cls, self.what = cls, what

    def check(self, value: Any, name: str, params: Mapping[str, Any]) -> None:
        cls = self._cls if isinstance(self._cls, type) else self._cls()
        if not isinstance(value, cls):
            raise TypeError(f"{name} must be {self.what}, got {type(value).__name__}")

    def describe(self) -> str:
        return self.what


class _NoneConstraint(Constraint):
    def check(self, value: Any, name: str, params: Mapping[str, Any]) -> None:
        if value is not None:
            raise TypeError(f"{name} must be None, got {value!r}")

    def describe(self) -> str:
        return "None"


class AnyOf(Constraint):
    """Any of several constraints (``Int(1) | None``). ``None`` stands for "may be None".
    With one alternative besides ``None`` its own error is raised; with several, a
    ``TypeError`` that says what the setting may be (``what``, or every alternative)."""

    def __init__(self, *options: Constraint | None, what: str | None = None) -> None:
        flat: list[Constraint] = []
        for o in options:
            c = _NoneConstraint() if o is None else o
            flat.extend(c.options if isinstance(c, AnyOf) else [c])
        self.options = tuple(flat)
        self.what = what

    def check(self, value: Any, name: str, params: Mapping[str, Any]) -> None:
        if value is None and any(isinstance(o, _NoneConstraint) for o in self.options):
            return
        real = [o for o in self.options if not isinstance(o, _NoneConstraint)]
        errors: list[Exception] = []
        for o in real:
            try:
                o.check(value, name, params)
                return
            except (TypeError, ValueError) as err:
                errors.append(err)
        if len(real) == 1:
            raise errors[0]
        got = value if isinstance(value, (int, float, str, bool)) else type(value).__name__
        raise TypeError(f"{name} must be {self.describe()}, got {got!r}")

    def describe(self) -> str:
        return self.what or " or ".join(o.describe() for o in self.options)


#: The ``progress`` setting of long steps: ``None`` (a bar on a terminal only), ``True`` /
#: ``False``, or a callback ``callback(done, total)``.
PROGRESS = AnyOf(None, Bool(), Function(), what="None, True, False or a callable")

#: Upper bound of a count of rounds or layers (query-expansion iterations, propagation layers):
#: such counts converge or over-smooth long before it, and a huge value would loop for hours.
MAX_ROUNDS = 1000


def check_params(params: Mapping[str, Any], constraints: Mapping[str, Constraint | None]) -> None:
    """Check every setting in ``params`` that has a declared constraint (``None`` or no entry:
    anything goes, e.g. the settings of a user's own re-ranker that declares none)."""
    for name, value in params.items():
        c = constraints.get(name)
        if c is not None:
            c.check(value, name, params)


def setting(default: Any, constraint: Constraint | None = None, *, positional: bool = False):
    """Declare a setting of a re-ranker: its ``default`` and its ``constraint`` (``None``:
    anything goes), as a keyword-only dataclass field (``positional=True``: it may also be
    passed by position)."""
    return dataclasses.field(
        default=default, metadata={"constraint": constraint}, kw_only=not positional
    )
