"""``sae-bilinear``: train, evaluate, analyse and share bilinear SAEs. Thin: parses, then calls.

Layout: one module per command (``run``, ``train``, ``evaluate``, ``analyze``, ``compare``,
``convert_bae``, ``push``, ``releases``), each with ``NAME``, ``HELP``, ``DESCRIPTION``,
``add_arguments(parser)`` and ``execute(args) -> exit code``; :mod:`.parser` assembles them
(add a command: write its module, list it in ``parser.COMMANDS``). :mod:`.options` and
:mod:`.paths` hold the argument types, which check every value at parse time;
:mod:`.runtime` what the commands share after parsing (devices, SAE loading, held-out
tokens); :mod:`.user_errors` which exceptions are the user's to fix.

**Import exception.** ``--help`` and argument errors must not wait for torch and SAELens
(seconds), so everything imported at module level here is light (stdlib, ``sae_bilinear.errors``
and this package's parser modules; ``run``'s options are read from ``MainJobConfig``'s
source by :mod:`.sources`). Third-party libraries and the package's heavy modules
(including :mod:`.runtime`) are imported inside the command modules' functions, which run
only after parsing. This is the one place in the package where function-level imports of
our own modules are allowed.

**Errors.** A user error (see :mod:`.user_errors`) prints one line,
``sae-bilinear <command>: error: <message>``, and exits 2, as argparse does for a bad
option; any other exception is a bug and keeps its traceback. A closed stdout
(``sae-bilinear releases | head``) ends quietly with 141, as a SIGPIPE would.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from sae_bilinear.cli.parser import build_parser
from sae_bilinear.cli.user_errors import is_user_error, one_line

__all__ = ["build_parser", "main"]

BROKEN_PIPE_EXIT = 141
INTERRUPTED_EXIT = 130


def _drop_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # stdout is not a file (e.g. captured in tests)
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """The ``sae-bilinear`` console entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if getattr(args, "own_help", False):
        # ablate/steer/walk: everything after the command name is the experiment's (its --help too)
        args.arguments = argv[argv.index(args.command) + 1 :]
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if hasattr(args, "threads"):
            # torch is imported here, after parsing (see the module docstring).
            from sae_bilinear.cli.runtime import set_threads

            set_threads(args.threads)
        code = args.execute(args)
        sys.stdout.flush()  # a closed pipe fails here, inside the handler, not at exit
        return code
    except BrokenPipeError:
        _drop_stdout()
        return BROKEN_PIPE_EXIT
    except KeyboardInterrupt:
        print(f"sae-bilinear {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT
    except Exception as error:
        if not is_user_error(error):
            raise
        print(f"sae-bilinear {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
