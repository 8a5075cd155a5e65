"""The CLI's argument parser class, help format, argument types and shared options.

Every value a user types is checked here, at parse time, before anything is loaded: an
argparse ``type=`` function either returns a valid value or raises
``argparse.ArgumentTypeError`` with a message that says what was expected; argparse then
names the option (``argument --steps: ...``) and :class:`Parser` prints one line and exits 2.
Numbers are finite (``nan`` and ``inf`` are refused) and in range.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

HIDDEN = argparse.SUPPRESS
"""``help=HIDDEN`` keeps an old spelling working without listing it."""


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are one line: ``PROG: error: MESSAGE``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Shows ``(default: X)`` after every option's help that has a meaningful default.

    ``None`` and ``False`` defaults are not shown: for ``None`` the help text says what
    happens (e.g. "default: the SAE's hook"); ``False`` is a switch that is off.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = any(default is value for value in (None, False, argparse.SUPPRESS)) or default == []
        if unset or "%(default)" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class ExamplesHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """:class:`HelpFormatter` that keeps the description's and epilog's line breaks (examples)."""


# ------------------------------------------------------------------------------- value types


def _number(text: str, kind: type, what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r} (NaN and infinity are not allowed)")
    return value


def integer(minimum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int, at least ``minimum`` when given."""
    what = "an integer" if minimum is None else f"an integer ≥ {minimum}"

    def parse(text: str) -> int:
        value = _number(text, int, what)
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def real(minimum: float | None = None, *, strict: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float, ``≥ minimum`` (``> minimum`` when ``strict``)."""
    what = "a finite number"
    if minimum is not None:
        what += f" {'>' if strict else '≥'} {minimum:g}"

    def parse(text: str) -> float:
        value = _number(text, float, what)
        if minimum is not None and (value < minimum or (strict and value == minimum)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


positive_int = integer(1)
nonnegative_int = integer(0)
finite_float = real()
nonnegative_float = real(0.0)
positive_float = real(0.0, strict=True)


def latent_choice(text: str) -> int | str:
    """``--latent``: a latent index (≥ 0) or ``top`` (the most active ones)."""
    if text == "top":
        return text
    if text == "all":
        raise argparse.ArgumentTypeError(
            "every latent is what `sae-bilinear atlas SAE_DIR` is for (one pass, a browsable site); "
            "--latent takes an index or 'top'"
        )
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a latent index (an integer ≥ 0) or 'top', got {text!r}")
    return value


def _reject_constant(name: str) -> NoReturn:
    raise argparse.ArgumentTypeError(f"{name} is not allowed as a value (give a finite number)")


def assignment(text: str) -> tuple[str, Any]:
    """``--set KEY=VALUE``: ``(dotted key, value)``; the value is JSON where it parses
    (numbers, true/false/null, lists), else the string itself; NaN and infinity are refused."""
    key, sep, raw = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key.strip()):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a dotted KEY (e.g. sae.alpha=0.2), got {text!r}")
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def repo_id(text: str) -> str:
    """A Hugging Face repo id ``owner/name``."""
    if not _REPO_ID.fullmatch(text) or ".." in text or "--" in text:
        raise argparse.ArgumentTypeError(
            f"expected a Hugging Face repo id OWNER/NAME (letters, digits, '-', '_', '.'), got {text!r}"
        )
    return text


# ------------------------------------------------------------------------------- shared options


def add_alias(parser: argparse.ArgumentParser, old: str, dest: str, **kwargs: Any) -> None:
    """Accept ``old`` as a hidden spelling of the option stored in ``dest``."""
    parser.add_argument(old, dest=dest, help=HIDDEN, default=argparse.SUPPRESS, **kwargs)


def add_threads(parser: argparse.ArgumentParser) -> None:
    """``--threads``, accepted before and after the subcommand (the later one wins)."""
    parser.add_argument(
        "--threads", type=positive_int, default=argparse.SUPPRESS,
        help="torch CPU threads (default: torch's choice, usually the number of cores)",
    )


def add_device(parser: argparse.ArgumentParser, default: str, what: str = "the model and the SAE") -> None:
    parser.add_argument("--device", default=default, help=f"torch device for {what}, e.g. cpu, cuda, cuda:1")


def add_model_options(parser: argparse.ArgumentParser, *, eval_contexts: int, device: str, dtype: str,
                      dtypes: Sequence[str]) -> None:
    """The options that choose the model and the held-out text (evaluate, analyze)."""
    parser.add_argument(
        "--model", default=None, help="model name or local folder (default: the SAE's metadata model_name)"
    )
    parser.add_argument("--hook-name", default=None, help="hook the SAE reads (default: the SAE's metadata hook_name)")
    add_alias(parser, "--hook", dest="hook_name")
    parser.add_argument(
        "--corpus", default=None,
        help="'kjv' or a local .txt/.jsonl file or folder; its held-out split is used "
        "(default: the SAE's metadata dataset_path, else kjv)",
    )
    parser.add_argument("--eval-contexts", type=positive_int, default=eval_contexts, help="held-out contexts")
    add_alias(parser, "--contexts", dest="eval_contexts", type=positive_int)
    parser.add_argument(
        "--context-size", type=positive_int, default=None,
        help="tokens per context (default: the SAE's metadata context_size, else 128)",
    )
    add_device(parser, device)
    parser.add_argument("--dtype", default=dtype, choices=dtypes, help="model dtype")


def add_output_policy(parser: argparse.ArgumentParser, *, resume: bool) -> None:
    """``--overwrite`` (and ``--resume``): what to do when the output exists already."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace the output if it exists")
    if resume:
        group.add_argument(
            "--resume", action="store_true", help="continue the run in the output folder from its last checkpoint"
        )
