"""Checkpoints of SAELens's trainer that resume exactly: Muon, LR schedule, α warm-up, step count.

SAELens writes a checkpoint folder (SAE weights, ``trainer_state.pt`` with the optimiser, LR
scheduler and coefficient schedulers, the activation scaler) and resumes from one with
``resume_from_checkpoint``. This module adds what an exact resume of our runs needs:

* a marker file, :data:`MARKER_FILENAME`, written last, so a folder left half-written by a
  kill is never taken for a checkpoint; it records the optimiser, the completed step count and
  the bilinear SAE's ``history``;
* the step counter: SAELens saves a checkpoint *before* advancing ``n_training_steps``, so a
  resumed trainer would label every later step one lower than an uninterrupted run did (and
  log, record history and reset sparsity windows one step off). :func:`resume_trainer` sets it
  to the number of completed steps;
* a check that ``torch.load`` (which SAELens calls on ``trainer_state.pt`` without arguments)
  defaults to ``weights_only=True``, so a checkpoint file cannot run code when loaded;
* errors that name a damaged file instead of a bare ``SafetensorError``/``OSError``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from packaging.version import Version
from sae_lens.constants import SAE_WEIGHTS_FILENAME, TRAINER_STATE_FILENAME
from sae_lens.training.sae_trainer import SAETrainer

from sae_bilinear.errors import ConfigError, DataFileError, MissingDependencyError

MARKER_FILENAME = "sae_bilinear_checkpoint.json"
"""Written last into a checkpoint folder; only folders holding it are resumed from."""
MARKER_FORMAT = 1
SAFE_TORCH = Version("2.6")
"""The first torch whose ``torch.load`` defaults to ``weights_only=True``."""
_TRUE_VALUES = ("1", "y", "yes", "true")  # torch's own reading of its environment flags


def check_torch_load_is_safe() -> None:
    """Refuse to resume unless a plain ``torch.load`` cannot unpickle arbitrary objects.

    SAELens loads ``trainer_state.pt`` with ``torch.load(path, map_location=...)``. That is
    safe only where ``weights_only=True`` is the default: torch ≥ 2.6, without
    ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` set in the environment.
    """
    if Version(Version(torch.__version__).base_version) < SAFE_TORCH:
        raise MissingDependencyError(
            f"resuming needs torch >= {SAFE_TORCH} (torch.load must default to weights_only=True, and SAELens "
            f"loads trainer_state.pt with a plain torch.load); this is torch {torch.__version__}: "
            "pip install -U torch"
        )
    if os.environ.get("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in _TRUE_VALUES:
        raise ConfigError(
            "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD is set, which lets torch.load run code from trainer_state.pt: "
            "unset it to resume"
        )


def completed_steps(trainer: SAETrainer[Any, Any]) -> int:
    """Steps the trainer has finished: its samples over the batch size (every step is a full batch)."""
    return trainer.n_training_samples // trainer.cfg.train_batch_size_samples


def write_marker(folder: Path, trainer: SAETrainer[Any, Any], optimizer: str) -> Path:
    """Mark ``folder`` as a complete checkpoint of ``trainer`` (call after every other file)."""
    marker = {
        "format": MARKER_FORMAT,
        "optimizer": optimizer,
        "n_training_steps": completed_steps(trainer),
        "n_training_samples": trainer.n_training_samples,
        "history": list(getattr(trainer.sae, "history", [])),
    }
    path = folder / MARKER_FILENAME
    temporary = folder / f".{MARKER_FILENAME}.tmp"
    temporary.write_text(json.dumps(marker))
    os.replace(temporary, path)  # the marker itself is never seen half-written
    return path


def read_marker(folder: str | Path) -> dict[str, Any]:
    """The marker of a checkpoint folder; :class:`DataFileError` naming the file if absent or damaged."""
    path = Path(folder) / MARKER_FILENAME
    if not path.is_file():
        raise DataFileError(f"{folder} is not a complete checkpoint ({MARKER_FILENAME} is missing)")
    try:
        marker = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataFileError(f"{path} is damaged ({error}); resume from an earlier checkpoint") from error
    expected = {"format": int, "optimizer": str, "n_training_steps": int, "n_training_samples": int, "history": list}
    for key, kind in expected.items():
        if not isinstance(marker.get(key) if isinstance(marker, dict) else None, kind):
            raise DataFileError(f"{path} is damaged: {key!r} is missing or not a {kind.__name__}")
    if marker["format"] > MARKER_FORMAT:
        raise DataFileError(
            f"{path} has format {marker['format']}; this sae-bilinear reads {MARKER_FORMAT}: upgrade it"
        )
    return marker


def latest_checkpoint(base: str | Path | None) -> Path | None:
    """The complete checkpoint under ``base`` with the most training samples, or None."""
    if base is None or not Path(base).is_dir():
        return None
    complete = [folder for folder in Path(base).iterdir() if (folder / MARKER_FILENAME).is_file()]
    if not complete:
        return None
    return max(complete, key=lambda folder: read_marker(folder)["n_training_samples"])


def prune_checkpoints(base: Path, keep: Path) -> None:
    """Remove every checkpoint folder under ``base`` but ``keep`` (call once ``keep`` is complete)."""
    for folder in base.iterdir():
        if folder.is_dir() and folder.resolve() != keep.resolve():
            shutil.rmtree(folder)


def resume_trainer(trainer: SAETrainer[Any, Any], checkpoint: str | Path, optimizer: str) -> int:
    """Load a complete checkpoint into ``trainer`` (and its SAE) so training continues exactly.

    ``trainer.optimizer`` must already be the run's optimiser (Muon's state does not fit the Adam
    SAELens builds). Restores SAELens's trainer state (optimiser, LR scheduler, α warm-up,
    firing statistics, activation scaler), the SAE weights and history, and sets the step
    counter to the completed steps. Returns that step count. The caller restores its data
    provider's position.
    """
    checkpoint = Path(checkpoint)
    check_torch_load_is_safe()
    marker = read_marker(checkpoint)
    if marker["optimizer"] != optimizer:
        raise ConfigError(
            f"checkpoint {checkpoint} was trained with optimizer {marker['optimizer']!r}, not {optimizer!r}: "
            "resume with the optimiser the run started with"
        )
    state_file = checkpoint / TRAINER_STATE_FILENAME
    try:
        trainer.load_trainer_state(checkpoint)
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, pickle.UnpicklingError) as error:
        if isinstance(error, ConfigError):
            raise
        raise DataFileError(f"{state_file} (or its activation scaler) is damaged: {error}") from error
    weights_file = checkpoint / SAE_WEIGHTS_FILENAME
    try:
        trainer.sae.load_weights_from_checkpoint(checkpoint)
    except Exception as error:  # safetensors raises its own SafetensorError, plus OSError/RuntimeError
        raise DataFileError(f"{weights_file} is damaged: {error}") from error
    steps = marker["n_training_steps"]
    if trainer.n_training_samples != marker["n_training_samples"] or completed_steps(trainer) != steps:
        raise DataFileError(
            f"{checkpoint}: {state_file.name} and {MARKER_FILENAME} disagree on the samples trained "
            f"({trainer.n_training_samples} vs {marker['n_training_samples']}); resume from an earlier checkpoint"
        )
    # SAELens saved before advancing its counter: continue at the next step's own number.
    trainer.n_training_steps = steps
    # Thresholds already passed would each write a redundant checkpoint on the next steps.
    trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t >= trainer.n_training_samples]
    if hasattr(trainer.sae, "history"):
        trainer.sae.history = [dict(row) for row in marker["history"]]
    return steps
