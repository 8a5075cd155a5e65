"""Type and range checks for configuration values, each failing with a ConfigError naming the field.

Shared by the settings dataclasses (:class:`~sae_bilinear.train.TrainingSettings`,
:class:`~sae_bilinear.main_job.MainJobConfig`). ``bool`` is never accepted as a number (it is
an ``int`` to Python, but ``steps=True`` is a mistake), and NaN/inf are never accepted.
This module imports nothing of ours but :mod:`sae_bilinear.errors`.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import Any

from sae_bilinear.errors import ConfigError


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum]; a ConfigError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        bound = "positive (>= 1)" if minimum == 1 else f">= {minimum}"
        raise ConfigError(f"{name} must be {bound}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_float(
    name: str, value: Any, minimum: float | None = None, maximum: float | None = None, *, exclusive_minimum: bool = False
) -> float:
    """``value`` as a finite float in range (``exclusive_minimum``: strictly above ``minimum``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if minimum is not None and (value <= minimum if exclusive_minimum else value < minimum):
        raise ConfigError(f"{name} must be {'>' if exclusive_minimum else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_str(name: str, value: Any, *, empty: bool = False) -> str:
    """``value`` as a string (non-empty unless ``empty``)."""
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r} ({type(value).__name__})")
    if not empty and not value.strip():
        raise ConfigError(f"{name} must not be empty")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool (the strings "true"/"false" are not bools)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r} ({type(value).__name__})")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """``value`` as one of ``choices``, with a did-you-mean for a near miss."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}{did_you_mean(value, choices)}")
    return value


def did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_known_keys(section: str, mapping: dict[str, Any], known: Iterable[str]) -> None:
    """A ConfigError naming the first key of ``mapping`` not in ``known``, with a did-you-mean."""
    known = sorted(known)
    for key in mapping:
        if key not in known:
            raise ConfigError(f"unknown key {key!r} in {section}{did_you_mean(key, known)}")
