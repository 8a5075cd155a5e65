"""The package's error convention, in one place.

A *user error* is something the person running the code can fix: a bad value, a missing or
damaged file, a folder that would be overwritten, a missing optional dependency, no network.
Every such error raised by this package derives from :class:`UserError`, whose message names
the value, field or file at fault and says how to fix it. The CLI prints a user error as one
line, ``sae-bilinear <cmd>: error: <message>``, and exits 2; any other exception is a bug and
keeps its traceback.

``UserError`` subclasses ``ValueError`` so that code which already catches ``ValueError`` keeps
working. Modules that need a more specific built-in base (``FileNotFoundError``,
``ImportError``, ``OSError``) derive from both.

This module imports nothing of ours, so every layer (kernels included) may use it.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix; the message says what and how."""


class ConfigError(UserError):
    """A configuration value of the wrong type or out of range (NaN and inf included)."""


class DataFileError(UserError):
    """A file that is missing, unreadable or damaged; the message names the file."""


class OutputExistsError(UserError, FileExistsError):
    """An output folder or file exists and ``--overwrite`` (or ``--resume``) was not given."""


class MissingDependencyError(UserError, ImportError):
    """An optional package is needed; the message gives the ``pip install`` command."""


class OfflineError(UserError, OSError):
    """The Hugging Face Hub (or another network resource) cannot be reached."""


class ConfigTypeError(ConfigError, TypeError):
    """A value of the wrong type; also a ``TypeError`` for code that catches that."""


class IndexRangeError(ConfigError, IndexError):
    """An index (a latent, a sequence position) out of range; also an ``IndexError``."""


class MissingFileError(DataFileError, FileNotFoundError):
    """A file or folder the user named does not exist; also a ``FileNotFoundError``."""


class NonFiniteResultError(UserError, ArithmeticError):
    """A computed result is NaN or ±inf; the message names it and the likely cause.

    A user error because the cause is an input (NaN weights, an edit value that overflows the
    dtype, a model that overflows in fp16), not the arithmetic of the package."""
