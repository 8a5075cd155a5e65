"""Which exceptions a person fixes (one line, exit 2) and which are bugs (traceback).

A user error is a :class:`sae_bilinear.errors.UserError`; the standard library's errors for a
path the user gave (missing, a file where a folder belongs, no permission, exists already)
and for a JSON file that does not parse; and a missing optional package. Everything else
keeps its traceback.
"""

from __future__ import annotations

import json

from sae_bilinear.errors import UserError

PACKAGE = "sae_bilinear"
USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    json.JSONDecodeError,
)
LEGACY_BASES: tuple[type[BaseException], ...] = (ValueError, ImportError, OSError)


def _raised_by_package(error: BaseException) -> bool:
    """Whether a ``raise`` statement of this package raised ``error`` as a legacy user error.

    Until issue 13's conversion is merged, the package still signals bad input with plain
    ``ValueError`` (and ``ImportError``/``OSError`` subclasses such as ``WeightFileError``'s
    siblings). Such an error is one the package raised on purpose, so the innermost frame of
    its traceback is in ``sae_bilinear``; a ``ValueError`` from inside torch or numpy is not.
    Remove this once ``grep -rn "raise ValueError" sae_bilinear`` finds nothing.
    """
    if not isinstance(error, LEGACY_BASES) or error.__traceback__ is None:
        return False
    frame = error.__traceback__
    while frame.tb_next is not None:
        frame = frame.tb_next
    module = str(frame.tb_frame.f_globals.get("__name__", ""))
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def is_user_error(error: BaseException) -> bool:
    if isinstance(error, USER_ERRORS):
        return True
    if isinstance(error, ModuleNotFoundError):  # an optional package that is not installed
        return not (error.name or "").startswith(PACKAGE)
    return _raised_by_package(error)


def one_line(error: BaseException) -> str:
    """The error's message on one line (whitespace collapsed), or its type's name."""
    return " ".join(str(error).split()) or type(error).__name__
