"""The one home of the package's value checks: type and range, each error naming the value.

Values arrive from Python, from ``cfg.json``, from YAML and from the command line, so a value of
the wrong type is a real risk: JSON has ``"false"`` strings and ``2.0`` floats, Python has
``True == 1``. Every check here refuses those instead of coercing them (a ``bool`` is never a
number, ``2.0`` is never an int), refuses NaN and ±inf, and raises a
:class:`~sae_bilinear.errors.ConfigError` (:class:`~sae_bilinear.errors.ConfigTypeError` for a
value of the wrong type) of the form ``"<name> must be <what>, got <value>"``, plus a hint or a
did-you-mean where that says how to fix it.

* numbers and flags: :func:`check_int`, :func:`check_optional_int`, :func:`check_finite_float`,
  :func:`check_bool`;
* strings and names: :func:`check_str`, :func:`check_choice`, :func:`check_known_keys`,
  :func:`did_you_mean`;
* tensors and results: :func:`check_finite_tensor`, :func:`check_finite_result`;
* argparse ``type=`` functions built on these checks, for scripts' options: :func:`int_at_least`,
  :func:`finite_float`, :func:`one_of`, :func:`comma_list` (a failed check is argparse's usage error, which names
  the option and exits 2).

This module imports nothing of ours but :mod:`sae_bilinear.errors`, so every layer (the model's
config included) may use it. The checks of hooks, tokens, devices and SAEs against models, which
need a model, live in :mod:`sae_bilinear.checks`, which re-exports these.
"""

from __future__ import annotations

import argparse
import difflib
import math
import numbers
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor

from sae_bilinear.errors import ConfigError, ConfigTypeError, NonFiniteResultError, UserError

__all__ = [
    "check_bool",
    "check_choice",
    "check_finite_float",
    "check_finite_result",
    "check_finite_tensor",
    "check_int",
    "check_known_keys",
    "check_optional_int",
    "check_str",
    "comma_list",
    "did_you_mean",
    "finite_float",
    "int_at_least",
    "one_of",
]

T = TypeVar("T")


def _bound(number: float) -> str:
    return str(number) if isinstance(number, int) else f"{number:g}"  # an int bound in full (2**32 - 1)


def _interval(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_bound(lo)}, {_bound(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '≥'} {_bound(lo)}"
    if hi is not None:
        return f"{'<' if hi_open else '≤'} {_bound(hi)}"
    return ""


def _type_name(value: Any) -> str:
    return type(value).__name__


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None, *, hint: str = "") -> int:
    """``int(value)`` if ``value`` is an integer within ``[lo, hi]``; floats (even ``2.0``) and
    bools are refused. ``hint`` (e.g. ``" (the number of latents)"``) ends the message."""
    bounds = _interval(lo, hi, False, False)
    wanted = "a positive integer (≥ 1)" if lo == 1 and hi is None else f"an integer{' ' + bounds if bounds else ''}"
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        raise ConfigTypeError(f"{name} must be {wanted}, got {value!r} ({_type_name(value)}){hint}")
    number = int(value)
    if (lo is not None and number < lo) or (hi is not None and number > hi):
        raise ConfigError(f"{name} must be {wanted}, got {number}{hint}")
    return number


def check_optional_int(
    name: str, value: Any, lo: int | None = None, hi: int | None = None, *, hint: str = ""
) -> int | None:
    """None, or :func:`check_int`."""
    return None if value is None else check_int(name, value, lo, hi, hint=hint)


def check_finite_float(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    hint: str = "",
) -> float:
    """``value`` as a finite ``float`` within ``[lo, hi]`` (``lo_open``/``hi_open``: excluded).

    Ints are accepted (``2`` → ``2.0``); bools, strings, NaN and ±inf are not.
    """
    bounds = _interval(lo, hi, lo_open, hi_open)
    wanted = f"a finite number{' ' + bounds if bounds else ''}"
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ConfigTypeError(f"{name} must be {wanted}, got {value!r} ({_type_name(value)}){hint}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be {wanted}, got {number}{hint}")
    too_low = lo is not None and (number <= lo if lo_open else number < lo)
    too_high = hi is not None and (number >= hi if hi_open else number > hi)
    if too_low or too_high:
        raise ConfigError(f"{name} must be {wanted}, got {number:g}{hint}")
    return number


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a ``bool``; ``"false"``, ``0`` or ``None`` are refused (not guessed)."""
    if not isinstance(value, bool):
        raise ConfigTypeError(f"{name} must be true or false (a bool), got {value!r} ({_type_name(value)})")
    return value


def check_str(name: str, value: Any, *, empty: bool = False) -> str:
    """``value`` if it is a string, non-empty (not only spaces) unless ``empty``."""
    if not isinstance(value, str):
        raise ConfigTypeError(f"{name} must be a string, got {value!r} ({_type_name(value)})")
    if not empty and not value.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    return value


def did_you_mean(value: Any, choices: Iterable[Any]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices`` to ``value``, or ``""``."""
    close = difflib.get_close_matches(str(value), [str(choice) for choice in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(name: str, value: T, choices: Collection[T]) -> T:
    """``value`` if it is one of ``choices``; the message lists them (and the closest one)."""
    try:
        ok = value in choices
    except TypeError:  # an unhashable value asked of a set
        ok = False
    if not ok:
        options = ", ".join(repr(choice) for choice in choices)
        raise ConfigError(f"{name} must be one of {options}; got {value!r}{did_you_mean(value, choices)}")
    return value


def check_known_keys(section: str, mapping: Mapping[str, Any], known: Iterable[str], *, prefix: str = "") -> None:
    """A ConfigError naming the first key of ``mapping`` not in ``known``, with a did-you-mean.

    ``prefix`` is the section's dotted path (``"sae."``), so the message also gives the key as
    the user writes it (``--set sae.alpha=...``)."""
    known = sorted(known)
    for key in mapping:
        if key not in known:
            where = f"{prefix + key!r}: {section} has no {key!r}" if prefix else f"{key!r} in {section}"
            raise ConfigError(f"unknown key {where}{did_you_mean(key, known)}")


def check_finite_tensor(name: str, tensor: Any, shape: Sequence[int] | None = None) -> Tensor:
    """``tensor`` if it is a floating-point tensor of finite values (and of ``shape``, if given)."""
    if not isinstance(tensor, Tensor):
        raise ConfigTypeError(f"{name} must be a torch.Tensor, got {_type_name(tensor)}")
    if not tensor.is_floating_point():
        raise ConfigTypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}")
    if shape is not None and tuple(tensor.shape) != tuple(shape):
        raise ConfigError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        raise ConfigError(f"{name} holds {int(bad.sum())} NaN/inf value(s) of {tensor.numel()}; pass finite values")
    return tensor


def check_finite_result(name: str, value: float | Tensor, cause: str = "") -> None:
    """Raise :class:`~sae_bilinear.errors.NonFiniteResultError` if ``value`` (a number or tensor)
    is not all finite. ``cause`` says where to look (e.g. "the SAE's weights or the edit's value")."""
    finite = bool(torch.isfinite(value).all()) if isinstance(value, Tensor) else math.isfinite(value)
    if not finite:
        shown = "non-finite values" if isinstance(value, Tensor) else repr(value)
        raise NonFiniteResultError(f"{name} is {shown}, which is not a result" + (f": {cause}" if cause else ""))


# --- argparse types ----------------------------------------------------------------------------


def _argument(parse: Callable[[str], Any], check: Callable[[Any], Any], what: str) -> Callable[[str], Any]:
    """An argparse ``type=``: parse, then check; a failed parse or check becomes argparse's usage
    error (``argument --steps: the value must be ...``). ``what`` names the expected kind of text."""

    def convert(text: str) -> Any:
        try:
            return check(parse(text))
        except (ValueError, TypeError) as error:
            message = str(error) if isinstance(error, UserError) else f"expected {what}, got {text!r}"
            raise argparse.ArgumentTypeError(message) from None

    return convert


def int_at_least(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type=``: an integer in ``[minimum, maximum]`` (no upper bound by default)."""
    return _argument(int, lambda value: check_int("the value", value, minimum, maximum), "an integer")


def finite_float(
    minimum: float | None = None, strict: bool = False, *, maximum: float | None = None, strict_maximum: bool = False
) -> Callable[[str], float]:
    """An argparse ``type=``: a finite number (``nan`` and ``inf`` refused), ``≥ minimum`` (``>``
    when ``strict``) and ``≤ maximum`` (``<`` when ``strict_maximum``) where those are given."""
    return _argument(
        float,
        lambda value: check_finite_float("the value", value, minimum, maximum, lo_open=strict, hi_open=strict_maximum),
        "a number",
    )


def one_of(choices: Collection[str]) -> Callable[[str], str]:
    """An argparse ``type=``: one of ``choices`` (surrounding spaces ignored), for an item of
    :func:`comma_list`, where argparse's own ``choices=`` does not reach."""
    return _argument(str.strip, lambda value: check_choice("the value", value, choices), "one of the choices")


def comma_list(convert: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """An argparse ``type=`` for ``"1,2, 5"``: each comma-separated item through ``convert`` (an
    argparse type itself); at least one item."""

    def convert_all(text: str) -> list[Any]:
        items = [convert(part) for part in text.split(",") if part.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected one or more comma-separated values, got {text!r}")
        return items

    return convert_all
