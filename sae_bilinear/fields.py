"""Type and range checks of configuration fields, each error naming the field.

Config values arrive from Python, from ``cfg.json`` and from the command line, so a value
of the wrong type is a real risk: JSON has ``"false"`` strings and ``2.0`` floats, Python has
``True == 1``. Every check here refuses those instead of coercing them, rejects NaN and
±inf for floats, and raises :class:`~sae_bilinear.errors.ConfigError` with a message of the
form ``"<field> must be <what>, got <value>"`` plus how to fix it where that is not obvious.

This module imports only :mod:`sae_bilinear.errors`, so every layer may use it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from sae_bilinear.errors import ConfigError


def _is_int(value: Any) -> bool:
    # bool is a subclass of int, and True must not pass for d_in=1.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_bool(name: str, value: Any) -> bool:
    """``value`` itself, if it is a real bool (not ``"false"``, not ``0``)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false (a bool), got {value!r} of type {type(value).__name__}")
    return value


def check_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None, hint: str = ""
) -> int:
    """``int(value)`` if ``value`` is an integer (not a bool, not ``2.0``) in ``[minimum, maximum]``."""
    if not _is_int(value):
        raise ConfigError(f"{name} must be an int, got {value!r} of type {type(value).__name__}{hint}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ConfigError(f"{name} must be {_range(minimum, maximum)}, got {value}{hint}")
    return value


def check_optional_int(
    name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None, hint: str = ""
) -> int | None:
    """None, or :func:`check_int`."""
    return None if value is None else check_int(name, value, minimum=minimum, maximum=maximum, hint=hint)


def check_float(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    open_minimum: bool = False,
    open_maximum: bool = False,
    hint: str = "",
) -> float:
    """``float(value)`` if ``value`` is a finite real number in the given (closed or open) range."""
    if not _is_real(value):
        raise ConfigError(f"{name} must be a number, got {value!r} of type {type(value).__name__}{hint}")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}{hint}")
    below = minimum is not None and (value <= minimum if open_minimum else value < minimum)
    above = maximum is not None and (value >= maximum if open_maximum else value > maximum)
    if below or above:
        low = "" if minimum is None else ("(" if open_minimum else "[") + f"{minimum:g}"
        high = "" if maximum is None else f"{maximum:g}" + (")" if open_maximum else "]")
        if minimum is None:
            where = f"{'<' if open_maximum else '<='} {maximum:g}"
        elif maximum is None:
            where = f"{'>' if open_minimum else '>='} {minimum:g}"
        else:
            where = f"in {low}, {high}"
        raise ConfigError(f"{name} must be {where}, got {value:g}{hint}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` if it is one of the strings ``choices``."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(repr(c) for c in options)}, got {value!r}")
    return value


def check_str(name: str, value: Any) -> str:
    """``value`` if it is a non-empty string."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an int in [{minimum}, {maximum}]"
    if minimum is not None:
        return "a positive int" if minimum == 1 else f"an int >= {minimum}"
    return f"an int <= {maximum}"
