"""Where results are written: refuse to clobber, replace only on request, publish atomically.

The package's rule for every output folder (``sae-bilinear run --out``, ``train``'s
``output_path``): a missing or empty folder is used; a non-empty one is refused with
:class:`~sae_bilinear.errors.OutputExistsError` unless the caller resumes (the folder is kept
and continued) or overwrites (the whole folder is removed first, so no stale file of an older
run survives). Results are written into a hidden staging folder and moved into place when they
are complete, so a kill mid-write never leaves a truncated file that looks finished.

This module imports nothing of ours but :mod:`sae_bilinear.errors`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from sae_bilinear.errors import ConfigError, OutputExistsError


def check_output_folder(
    folder: str | Path, *, overwrite: bool = False, resume: bool = False, what: str = "output folder"
) -> bool:
    """Check ``folder`` against the package's rule (module docstring) without touching it.

    Returns whether the folder holds something (which ``overwrite`` would remove). Raises
    :class:`OutputExistsError` for a file at that path, or for a non-empty folder without
    ``overwrite``/``resume``; :class:`ConfigError` for both flags at once, or for
    ``overwrite`` of a folder that holds the working directory or is the home folder.
    """
    if overwrite and resume:
        raise ConfigError("overwrite and resume exclude each other: resume continues the folder, overwrite replaces it")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{what} {folder} is a file, not a folder: choose another path")
    occupied = folder.is_dir() and any(folder.iterdir())
    if occupied and not resume:
        if not overwrite:
            raise OutputExistsError(
                f"{what} {folder} is not empty: pass overwrite (--overwrite) to replace it, "
                "resume (--resume) to continue the run in it, or choose another folder"
            )
        _refuse_dangerous_removal(folder)
    return occupied


def prepare_output_folder(
    folder: str | Path, *, overwrite: bool = False, resume: bool = False, what: str = "output folder"
) -> Path:
    """Make ``folder`` ready to be written, following the package's rule (module docstring).

    Checks as :func:`check_output_folder`, then removes a non-empty folder entirely when
    ``overwrite`` is given, and returns the folder (created if missing).
    """
    folder = Path(folder)
    if check_output_folder(folder, overwrite=overwrite, resume=resume, what=what) and overwrite:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _refuse_dangerous_removal(folder: Path) -> None:
    """Overwrite removes a whole folder: never one that contains the working directory or home."""
    resolved = folder.resolve()
    protected = {Path(resolved.anchor), Path.home().resolve(), Path.cwd().resolve(), *Path.cwd().resolve().parents}
    if resolved in protected:
        raise ConfigError(
            f"refusing to overwrite {folder}: it is the working directory, one of its parents, or the home "
            "folder; write into a dedicated output folder"
        )


def staging_folder(target: str | Path) -> Path:
    """A fresh hidden folder beside ``target`` (same file system, so :func:`os.replace` is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))


def publish_folder(staged: str | Path, target: str | Path, last: Iterable[str] = ()) -> Path:
    """Move every entry of ``staged`` into ``target`` (created if needed), then remove ``staged``.

    Each entry moves with one atomic :func:`os.replace`; an entry already in ``target`` is
    replaced. Entries named in ``last`` move after all others (e.g. ``cfg.json`` of an SAE or
    ``metrics.json`` of a run, whose presence marks the whole as complete).
    """
    staged, target = Path(staged), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    last = list(last)
    entries = sorted(staged.iterdir(), key=lambda p: (p.name in last, last.index(p.name) if p.name in last else 0))
    for entry in entries:
        destination = target / entry.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(entry, destination)
    staged.rmdir()
    return target


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and one atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path
