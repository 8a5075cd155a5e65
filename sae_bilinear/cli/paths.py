"""Argument types and checks for the folders and files the CLI reads and writes (no torch).

An input SAE folder is checked at parse time (exists, is a folder, holds ``cfg.json``), so
``evaluate SAE/cfg.json`` is answered with the folder to pass instead. An output is never
overwritten without ``--overwrite`` (or continued without ``--resume``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sae_bilinear.errors import OutputExistsError
from sae_bilinear.outputs import write_text_atomic as write_text_atomic  # the CLI writes through the library's

SAE_CONFIG = "cfg.json"
BAE_CONFIG = "config.json"


def sae_folder(text: str) -> Path:
    """A SAELens SAE folder: a directory that holds ``cfg.json``."""
    path = Path(text).expanduser()
    if path.is_file():
        hint = f"pass the folder that holds it: {path.parent}" if path.name == SAE_CONFIG else "pass an SAE folder"
        raise argparse.ArgumentTypeError(f"{text} is a file, not an SAE folder; {hint}")
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not (path / SAE_CONFIG).is_file():
        hint = "(SAELens layout: cfg.json + sae_weights.safetensors)"
        if (path / BAE_CONFIG).is_file():
            hint = f"(it looks like the authors' layout: convert it first with `sae-bilinear convert-bae {text} DST`)"
        raise argparse.ArgumentTypeError(f"{text} has no {SAE_CONFIG}, so it is not an SAE folder {hint}")
    return path


def input_folder(text: str) -> Path:
    """An existing directory."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} {'is a file, not a folder' if path.exists() else 'does not exist'}")
    return path


def output_folder(text: str) -> Path:
    """A folder to write: absent, or an existing directory (never a file)."""
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file; give a folder to write the outputs into")
    return path


def output_file(text: str) -> Path:
    """A file to write: absent, or an existing file (never a directory)."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name (e.g. {Path(text) / 'metrics.json'})")
    return path


def refuse_existing_output(path: Path, *, option: str, overwrite: bool, resume: bool | None = None) -> None:
    """Raise :class:`OutputExistsError` if ``path`` is a non-empty folder or a file and neither
    ``--overwrite`` nor ``--resume`` was given. ``resume=None``: the command has no ``--resume``."""
    if overwrite or resume or not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    fixes = "pass --overwrite to replace it" + ("" if resume is None else ", or --resume to continue it")
    what = "folder is not empty" if path.is_dir() else "file exists"
    raise OutputExistsError(f"{option} {path}: the {what}; {fixes}, or choose another {option}")
