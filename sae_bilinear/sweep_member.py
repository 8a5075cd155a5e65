"""Train one sweep member from stored activations, safely: its own folder, checkpoints, resume.

A member runs the same SAELens ``SAETrainer`` that ``LanguageModelSAETrainingRunner`` runs,
built from the member's runner config (``cfg.to_sae_trainer_config()``), but it reads the
group's activations from an :mod:`~sae_bilinear.activation_store` instead of running the
language model. That is the whole point of a sweep: one model pass, many SAEs.

Folder life cycle under the sweep's output folder ``out``:

* ``out/.<name>.partial/`` while it trains: ``checkpoints/<samples>/`` (SAELens's checkpoint
  layout: weights, cfg, sparsity, trainer state) and ``progress.json`` (step, tokens/s).
* ``out/<name>/`` once finished: the SAE in SAELens's layout (``cfg.json``,
  ``sae_weights.safetensors``, ``sparsity.safetensors``, ``runner_cfg.json``) plus
  ``metrics.json``. The partial folder is renamed in one step, so a finished-looking folder is
  always complete.
* ``out/.<name>.failed.json`` when it raised: the error, for the sweep's table.

A rerun skips finished members and resumes a partial one from its newest checkpoint: the
trainer state (optimiser, LR schedule, α warm-up, firing statistics) and weights come from
the checkpoint, and the batch stream is advanced by the steps already taken, so the resumed
member sees the batches an uninterrupted one would have seen.

This module runs inside Ray workers: it takes plain paths and mappings and returns a plain
mapping, so nothing large travels between processes.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from sae_lens.saes.sae import TrainingSAE, TrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import save_file
from torch import Tensor
from typing_extensions import override

from sae_bilinear import activation_store, kernels
from sae_bilinear.bilinear import BilinearTrainingSAE, explained_variance
from sae_bilinear.train import use_optimizer
from sae_bilinear.train_config import runner_config_from_dict

PROGRESS_FILE = "progress.json"
METRICS_FILE = "metrics.json"
CHECKPOINTS = "checkpoints"
DEFAULT_CHECKPOINTS = 4
"""Checkpoints per member: a kill loses at most a fifth of a member's steps."""


def final_folder(out: Path, name: str) -> Path:
    """Where a finished member lives."""
    return out / name


def partial_folder(out: Path, name: str) -> Path:
    """Where a member trains (hidden until it is finished)."""
    return out / f".{name}.partial"


def failure_file(out: Path, name: str) -> Path:
    """Where a failed member's error is kept."""
    return out / f".{name}.failed.json"


def is_finished(out: Path, name: str) -> bool:
    """True when ``out/<name>/`` holds a complete member (renamed into place last)."""
    return (final_folder(out, name) / METRICS_FILE).is_file()


def latest_checkpoint(partial: Path) -> Path | None:
    """The newest complete SAELens checkpoint of a partial member, if any."""
    root = partial / CHECKPOINTS
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.is_dir() and p.name.isdigit() and (p / "trainer_state.pt").is_file()]
    return max(done, key=lambda p: int(p.name)) if done else None


class _StoreBatches(Iterator[Tensor]):
    """SAELens ``DataProvider`` over a store: shuffled batches, skipping the ones already used."""

    def __init__(self, store: activation_store.ActivationStore, batch_size: int, seed: int, skip: int):
        self._inner = store.batches(batch_size, seed=seed)
        for _ in range(skip):
            next(self._inner)

    def __next__(self) -> Tensor:
        return next(self._inner)


class _ProgressTrainer(SAETrainer[Any, Any]):
    """SAELens's trainer that writes ``progress.json`` every few steps (the sweep polls it)."""

    progress_path: Path
    started: float
    start_samples: int

    @override
    def _update_pbar(self, step_output: Any, pbar: Any, update_interval: int = 100) -> None:
        super()._update_pbar(step_output, pbar, update_interval=update_interval)
        if self.n_training_steps % 5 == 0 or self.n_training_samples >= self.cfg.total_training_samples:
            elapsed = max(time.time() - self.started, 1e-9)
            _write_json(
                self.progress_path,
                {
                    "samples": self.n_training_samples,
                    "total_samples": self.cfg.total_training_samples,
                    "tokens_per_second": (self.n_training_samples - self.start_samples) / elapsed,
                    "time": time.time(),
                },
            )


def _write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (temp file + rename): a reader never sees half a file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(value, indent=1, allow_nan=False) + "\n")
    os.replace(temporary, path)


def _trainer_config(cfg: Any, partial: Path, n_checkpoints: int) -> Any:
    trainer_cfg = cfg.to_sae_trainer_config()
    trainer_cfg.checkpoint_path = str(partial / CHECKPOINTS)
    trainer_cfg.n_checkpoints = n_checkpoints
    trainer_cfg.save_final_checkpoint = False
    return trainer_cfg


HELDOUT_LIMIT = 8192
"""Held-out tokens scored per member (densities need all of them in one tensor)."""


@torch.no_grad()
def heldout_metrics(sae: Any, heldout: Tensor) -> dict[str, float]:
    """A member's held-out numbers: L0 and, for a bilinear SAE, the x⊗x error and mean Hoyer
    density; x̂ explained variance for any SAE that decodes (lifted bilinear or linear).

    L0 of a bilinear SAE counts latents at the activity threshold (``active_latents``), as
    SAELens's statistics do during training. Non-finite results are an error (a diverged
    member), never a number in the table.
    """
    x = heldout[:HELDOUT_LIMIT].to(next(sae.parameters()).device)
    f = sae.encode(x)
    metrics: dict[str, float] = {}
    decodes = True
    if isinstance(sae, BilinearTrainingSAE):
        metrics["error"] = float(sae.reconstruction_error(x).float().mean())
        metrics["hoyer_density"] = float(kernels.hoyer_density(f).mean())
        metrics["l0"] = float(sae.active_latents(f).float().sum(-1).mean())
        decodes = bool(sae.cfg.lifted)
        x_hat = sae.decode(f, input_norm=sae.token_norms(x)) if decodes else None
    else:
        metrics["l0"] = float((f != 0).float().sum(-1).mean())
        x_hat = sae.decode(f)
    if decodes and x_hat is not None:
        metrics["explained_variance"] = float(explained_variance(x, x_hat))
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise FloatingPointError(f"held-out {key} is {value}: the member diverged (try a smaller lr)")
    return metrics


def train_member(
    name: str,
    config: dict[str, Any],
    out: str,
    train_store: str,
    heldout_store: str,
    n_checkpoints: int = DEFAULT_CHECKPOINTS,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train (or resume, or skip) member ``name`` into ``out/<name>/``; returns its result row.

    Never raises for the member's own failure: the row then has ``status: failed`` and the
    error, and ``out/.<name>.failed.json`` keeps it, so one bad member does not stop a sweep.
    """
    out_path = Path(out)
    if is_finished(out_path, name):
        # a kill between the final rename and the clean-up leaves the partial folder behind
        shutil.rmtree(partial_folder(out_path, name), ignore_errors=True)
        return {"name": name, "status": "done", "skipped": True, **_read_metrics(out_path, name)}
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.time()
    try:
        metrics = _train(name, config, out_path, Path(train_store), Path(heldout_store), n_checkpoints)
    except Exception as error:  # noqa: BLE001 — one member's failure is its row, not the sweep's
        row = {
            "name": name,
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(),
            "seconds": time.time() - started,
        }
        _write_json(failure_file(out_path, name), row)
        return row
    failure_file(out_path, name).unlink(missing_ok=True)
    return {"name": name, "status": "done", "skipped": False, **metrics}


def _read_metrics(out: Path, name: str) -> dict[str, Any]:
    return json.loads((final_folder(out, name) / METRICS_FILE).read_text())


def _train(
    name: str, config: dict[str, Any], out: Path, train_store: Path, heldout_store: Path, n_checkpoints: int
) -> dict[str, Any]:
    started = time.time()
    config = copy.deepcopy(config)
    config["output_path"] = None  # the member decides where it writes
    cfg, extras = runner_config_from_dict(config)
    train = activation_store.ActivationStore.open(train_store)
    heldout = activation_store.ActivationStore.open(heldout_store)
    if train.d_in != cfg.sae.d_in:
        raise ValueError(f"member {name}: sae.d_in={cfg.sae.d_in} but the activations have d={train.d_in}")
    partial = partial_folder(out, name)
    partial.mkdir(parents=True, exist_ok=True)
    _write_json(partial / "runner_cfg.json", config)

    torch.manual_seed(cfg.seed)
    sae = TrainingSAE.from_dict(TrainingSAEConfig.from_dict(cfg.get_training_sae_cfg_dict()).to_dict())
    _set_metadata(sae, cfg)
    checkpoint = latest_checkpoint(partial)
    trainer_cfg = _trainer_config(cfg, partial, n_checkpoints)
    steps_done = 0
    if checkpoint is not None:
        state = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=True)
        steps_done = int(state["n_training_samples"]) // cfg.train_batch_size_tokens
    provider = _StoreBatches(train, cfg.train_batch_size_tokens, seed=cfg.seed, skip=steps_done)
    trainer = _ProgressTrainer(cfg=trainer_cfg, sae=sae, data_provider=provider)
    use_optimizer(trainer, extras.get("optimizer", "adam"), cfg.lr)
    if checkpoint is not None:
        trainer.load_trainer_state(checkpoint)
        sae.load_weights_from_checkpoint(checkpoint)
        # SAELens saves a checkpoint before counting the step it ends, so its saved step
        # counter is one behind; the sample count is exact. Count steps from samples, as the
        # batch stream above did when it skipped the batches already consumed.
        trainer.n_training_steps = steps_done
        _drop_passed_thresholds(trainer)
    trainer.progress_path = partial / PROGRESS_FILE
    trainer.started = time.time()
    trainer.start_samples = trainer.n_training_samples
    trainer.fit()

    final = partial / "final"
    if final.exists():
        shutil.rmtree(final)
    final.mkdir()
    sae.save_inference_model(str(final))
    save_file({"sparsity": trainer.log_feature_sparsity.contiguous()}, str(final / "sparsity.safetensors"))
    _write_json(final / "runner_cfg.json", config)
    metrics = {
        **heldout_metrics(sae.eval(), heldout.tensor()),
        "dead_fraction": float(trainer.dead_neurons.float().mean()),
        "steps": int(trainer.n_training_steps),
        "tokens": int(trainer.n_training_samples),
        "seconds": time.time() - started,
        "resumed_from_step": steps_done,
        "variant": getattr(cfg.sae, "variant", None),
        "alpha": getattr(cfg.sae, "alpha", None),
        "lifted": getattr(cfg.sae, "lifted", None),
        "architecture": cfg.sae.architecture(),
        "d_sae": cfg.sae.d_sae,
    }
    _write_json(final / METRICS_FILE, metrics)
    destination = final_folder(out, name)
    if destination.exists():
        raise FileExistsError(f"{destination} appeared while member {name} trained; not replacing it")
    os.rename(final, destination)
    shutil.rmtree(partial, ignore_errors=True)
    return metrics


def _drop_passed_thresholds(trainer: SAETrainer[Any, Any]) -> None:
    """Checkpoint thresholds already passed before the resume point are not written again."""
    while trainer.checkpoint_thresholds and trainer.n_training_samples > trainer.checkpoint_thresholds[0]:
        trainer.checkpoint_thresholds.pop(0)


def _set_metadata(sae: Any, cfg: Any) -> None:
    """The metadata SAELens's runner sets, so ``SAE.load_from_disk`` users see the hook and model."""
    meta = sae.cfg.metadata
    meta.model_name = cfg.model_name
    meta.hook_name = cfg.hook_name
    meta.dataset_path = cfg.dataset_path
    meta.model_class_name = cfg.model_class_name
    meta.hook_head_index = cfg.hook_head_index
    meta.context_size = cfg.context_size
    meta.prepend_bos = cfg.prepend_bos
    meta.model_from_pretrained_kwargs = cfg.model_from_pretrained_kwargs
