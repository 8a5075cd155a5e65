"""A tiny training run that records its state after every step; run by tests/test_resume.py.

As a script: ``python _resume_child.py MODE OPTIMIZER OUT LOG [--pause | --resume]``

* MODE ``activations``: :func:`sae_bilinear.train.train_on_activations` on fixed random
  activations (the main job's path); ``runner``: :class:`BilinearTrainingRunner` on a tiny
  random TransformerLens model (the ``train --config`` path).
* ``--pause``: once the first checkpoint is complete, touch ``OUT/paused`` and sleep (the test
  then SIGKILLs the process). ``--resume``: continue from the latest checkpoint under ``OUT``.

Every step appends one JSON line to LOG: the step's number, the learning rates, α, and exact
digests of the optimiser state and the parameters; a resume appends the same, with
``"event": "resumed"``, right after the checkpoint is loaded.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from sae_lens.training.sae_trainer import SAETrainer

from sae_bilinear import (
    BilinearTrainingSAE,
    BilinearTrainingSAEConfig,
    checkpoints,
    train,
)

STEPS = 24
BATCH = 64
D_IN = 16
LR = {"adam": 3e-3, "muon": 0.02}


def tensor_digest(value: Any) -> Any:
    """Exact, JSON-able summary of nested optimiser state: float64 sums and shapes of tensors."""
    if isinstance(value, torch.Tensor):
        return [list(value.shape), float(value.double().sum()), float(value.double().abs().sum())]
    if isinstance(value, dict):
        return {str(key): tensor_digest(item) for key, item in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [tensor_digest(item) for item in value]
    return value


def record(trainer: SAETrainer[Any, Any]) -> dict[str, Any]:
    """The state after a step (SAELens has not yet advanced ``n_training_steps``)."""
    optimizer_state = trainer.optimizer.state_dict()
    return {
        "step": trainer.n_training_steps,
        "samples": trainer.n_training_samples,
        "lr": [group["lr"] for group in trainer.optimizer.param_groups],
        "alpha": trainer.coefficient_schedulers["alpha"].value,
        "optimizer": tensor_digest(optimizer_state),
        "params": tensor_digest(dict(trainer.sae.named_parameters())),
    }


@contextmanager
def recording(log: Path) -> Iterator[list[dict[str, Any]]]:
    """Append :func:`record` of every training step to ``log`` (and to the yielded list)."""
    rows: list[dict[str, Any]] = []
    original = SAETrainer._train_step

    def train_step(self: SAETrainer[Any, Any], sae: Any, sae_in: torch.Tensor) -> Any:
        output = original(self, sae, sae_in)
        row = record(self)
        rows.append(row)
        with log.open("a") as file:
            file.write(json.dumps(row) + "\n")
        return output

    original_resume = train.resume_trainer

    def resume_trainer(trainer: SAETrainer[Any, Any], *args: Any, **kwargs: Any) -> int:
        steps = original_resume(trainer, *args, **kwargs)
        row = {"event": "resumed", **record(trainer)}
        rows.append(row)
        with log.open("a") as file:
            file.write(json.dumps(row) + "\n")
        return steps

    SAETrainer._train_step = train_step  # type: ignore[method-assign]
    train.resume_trainer = resume_trainer  # type: ignore[assignment]
    try:
        yield rows
    finally:
        SAETrainer._train_step = original  # type: ignore[method-assign]
        train.resume_trainer = original_resume  # type: ignore[assignment]


@contextmanager
def after_each_marker(action: Callable[[Path], None]) -> Iterator[None]:
    """While active, ``train.write_marker`` runs ``action(marker)`` once a checkpoint is complete."""
    original = train.write_marker

    def write_marker(*args: Any, **kwargs: Any) -> Path:
        path = original(*args, **kwargs)
        action(path)
        return path

    train.write_marker = write_marker  # type: ignore[assignment]
    try:
        yield
    finally:
        train.write_marker = original  # type: ignore[assignment]


def pause_after_first_checkpoint(out: Path) -> contextlib.AbstractContextManager[None]:
    """Once a checkpoint is complete (its marker written), signal and wait to be killed."""

    def pause(_marker: Path) -> None:
        (out / "paused").touch()
        time.sleep(600)

    return after_each_marker(pause)


def activations() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(D_IN, 4, generator=generator))[0]
    return (torch.randn(512, 4, generator=generator) @ basis.T) * 5 + 0.05 * torch.randn(512, D_IN, generator=generator)


def new_sae() -> BilinearTrainingSAE:
    torch.manual_seed(0)
    return BilinearTrainingSAE(
        BilinearTrainingSAEConfig(d_in=D_IN, d_sae=32, variant="mixed", lifted=True, alpha=0.1, alpha_warm_up_steps=12)
    )


def run_activations(optimizer: str, out: Path, resume: bool) -> BilinearTrainingSAE:
    sae = new_sae()
    settings = train.TrainingSettings(
        steps=STEPS, batch_size=BATCH, lr=LR[optimizer], optimizer=optimizer, ns_dtype="float32",
        checkpoint_path=str(out / "checkpoints"), n_checkpoints=3, resume=resume, dead_feature_window=5,
    )
    train.train_on_activations(sae, activations(), settings)
    return sae


def tiny_runner(optimizer: str, out: Path, resume: bool) -> train.BilinearTrainingRunner:
    from datasets import Dataset
    from sae_lens import LanguageModelSAERunnerConfig
    from sae_lens.config import LoggingConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    model = HookedTransformer(HookedTransformerConfig(
        n_layers=2, d_model=D_IN, n_ctx=16, d_head=4, n_heads=4, d_vocab=64, act_fn="gelu", d_mlp=32
    ))
    tokens = torch.randint(1, 64, (400, 16), generator=torch.Generator().manual_seed(0))
    cfg = LanguageModelSAERunnerConfig(
        sae=BilinearTrainingSAEConfig(
            d_in=D_IN, d_sae=32, variant="mixed", lifted=True, alpha=0.1, alpha_warm_up_steps=12
        ),
        model_name="tiny",
        hook_name="blocks.1.hook_resid_pre",
        dataset_path="",
        context_size=16,
        training_tokens=BATCH * STEPS,
        train_batch_size_tokens=BATCH,
        n_batches_in_buffer=8,
        store_batch_size_prompts=4,
        lr=LR[optimizer],
        lr_decay_steps=STEPS // 2,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(out / "sae"),
        n_checkpoints=3,
        device="cpu",
        verbose=False,
        prepend_bos=False,
        n_batches_for_norm_estimate=2,
        dead_feature_window=5,
    )
    cfg.checkpoint_path = str(out / "checkpoints")  # no random suffix: the resume must find it
    if resume:
        latest = checkpoints.latest_checkpoint(cfg.checkpoint_path)
        assert latest is not None, "no complete checkpoint to resume from"
        cfg.resume_from_checkpoint = str(latest)
    torch.manual_seed(0)
    return train.BilinearTrainingRunner(
        cfg, override_dataset=Dataset.from_dict({"tokens": tokens.tolist()}), override_model=model,
        optimizer=optimizer, ns_dtype="float32",
    )


def main(argv: list[str]) -> None:
    mode, optimizer, out, log = argv[0], argv[1], Path(argv[2]), Path(argv[3])
    torch.set_num_threads(1)
    resume = "--resume" in argv
    pause = pause_after_first_checkpoint(out) if "--pause" in argv else contextmanager(lambda: iter([None]))()
    with recording(log), pause:
        if mode == "activations":
            run_activations(optimizer, out, resume)
        else:
            tiny_runner(optimizer, out, resume).run()


if __name__ == "__main__":
    main(sys.argv[1:])
