"""Training through SAELens: its runner and its trainer, plus Muon and cached activations.

Two ways in, both SAELens's own machinery:

* ``LanguageModelSAETrainingRunner(LanguageModelSAERunnerConfig(sae=BilinearTrainingSAEConfig(...)))``
  — the ordinary SAELens run. :class:`BilinearTrainingRunner` is that runner with a
  choice of optimiser (SAELens hard-codes Adam; the paper trains with Muon).
* :func:`train_on_activations` — SAELens's ``SAETrainer`` over activations collected once
  (so that the bilinear SAE and a linear baseline see exactly the same tokens).

Both resume exactly from their checkpoints (Muon included; see :mod:`sae_bilinear.checkpoints`)
and follow the package's output rule (:mod:`sae_bilinear.outputs`): a non-empty output folder
is refused unless ``overwrite`` or ``resume`` is given, and final SAEs are published atomically.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from sae_lens import LanguageModelSAETrainingRunner
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.constants import (
    ACTIVATIONS_STORE_STATE_FILENAME,
    SAE_CFG_FILENAME,
    TRAINER_STATE_FILENAME,
)
from sae_lens.saes.sae import TrainingSAE
from sae_lens.training.optim import get_lr_scheduler
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm
from typing_extensions import override

from sae_bilinear import data, models
from sae_bilinear.bilinear import BilinearTrainingSAE
from sae_bilinear.checkpoints import (
    MARKER_FILENAME,
    latest_checkpoint,
    prune_checkpoints,
    resume_trainer,
    write_marker,
)
from sae_bilinear.checks import check_context_size, check_hook, stop_at_layer
from sae_bilinear.errors import ConfigError, DataFileError
from sae_bilinear.hub import load_any_from_disk
from sae_bilinear.muon import Muon, NSDtype, check_ns_dtype
from sae_bilinear.outputs import (
    check_output_folder,
    prepare_output_folder,
    publish_folder,
    staging_folder,
)
from sae_bilinear.saelens_evals import BilinearEvaluator
from sae_bilinear.train_config import (
    OPTIMIZERS,
    SAE_BILINEAR_KEYS,
    OptimizerName,
    check_optimizer,
    check_train_config,
    check_train_config_keys,
    expand_config,
    read_config_file,
    runner_config_from_dict,
    set_dotted,
)
from sae_bilinear.values import check_bool, check_choice, check_finite_float, check_int, check_str

# The train-config names (OPTIMIZERS ... set_dotted) live in train_config; they still import from here.
__all__ = [
    "OPTIMIZERS",
    "SAE_BILINEAR_KEYS",
    "BilinearTrainingRunner",
    "MuonWithAdamW",
    "OptimizerName",
    "ResumableTrainer",
    "ShuffledBatches",
    "TrainingSettings",
    "check_train_config",
    "check_train_config_keys",
    "collect_activations",
    "expand_config",
    "read_config_file",
    "runner_config_from_dict",
    "set_dotted",
    "train_from_config",
    "train_on_activations",
    "use_optimizer",
]


class MuonWithAdamW(torch.optim.Optimizer):
    """:class:`~sae_bilinear.muon.Muon` for weight matrices, AdamW for everything else (biases).

    Muon updates only 2-D parameters. This wrapper exposes the param groups of both, so
    SAELens's LR schedulers and gradient clipping act on all of them. ``ns_dtype`` is the
    arithmetic of Muon's Newton–Schulz iterations (``"auto"``: the faster on the device).
    """

    def __init__(
        self,
        params: Any,
        lr: float = 0.03,
        momentum: float = 0.95,
        adamw_lr: float = 1e-3,
        adamw_betas: tuple[float, float] = (0.9, 0.999),
        ns_dtype: NSDtype = "auto",
    ):
        params = [p for p in params if p.requires_grad]
        matrices = [p for p in params if p.ndim == 2]
        others = [p for p in params if p.ndim != 2]
        if not matrices:
            raise ValueError("Muon needs at least one 2-D parameter")
        self.muon = Muon(matrices, lr=lr, momentum=momentum, weight_decay=0.0, nesterov=False, ns_dtype=ns_dtype)
        self.adamw = torch.optim.AdamW(others, lr=adamw_lr, betas=adamw_betas, weight_decay=0.0) if others else None
        super().__init__(matrices, {"lr": lr})
        # Share the inner optimisers' groups: schedulers then edit the lr actually used.
        self.param_groups = self.muon.param_groups + (self.adamw.param_groups if self.adamw else [])

    @override
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = self.muon.step(closure)
        if self.adamw is not None:
            self.adamw.step()
        return loss

    @override
    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        if self.adamw is not None:
            self.adamw.zero_grad(set_to_none)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict() if self.adamw else None}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "muon" not in state_dict:
            raise ConfigError(
                "the checkpoint's optimiser state is not Muon's (it was saved by another optimiser, "
                "e.g. Adam): resume with the optimiser the run started with"
            )
        self.muon.load_state_dict(state_dict["muon"])
        if self.adamw is not None and state_dict.get("adamw") is not None:
            self.adamw.load_state_dict(state_dict["adamw"])
        # torch's load_state_dict builds new group dicts: share them again, or the LR
        # scheduler would go on editing the old ones (and the LR would stop decaying).
        self.param_groups = self.muon.param_groups + (self.adamw.param_groups if self.adamw else [])


def use_optimizer(
    trainer: SAETrainer[Any, Any], optimizer: str, lr: float | None = None, ns_dtype: NSDtype = "auto"
) -> None:
    """Swap the Adam that SAELens's ``SAETrainer`` builds for another optimiser.

    The LR schedule is rebuilt from the trainer's own config, so warm-up/decay settings
    carry over. ``lr`` overrides ``trainer.cfg.lr`` for the new optimiser; ``ns_dtype`` is
    Muon's Newton–Schulz arithmetic.
    """
    check_optimizer(optimizer)
    if optimizer == "adam":
        return
    cfg = trainer.cfg
    lr = cfg.lr if lr is None else lr
    # SAELens annotates the attribute as Adam; the trainer only calls the Optimizer interface.
    trainer.optimizer = MuonWithAdamW(trainer.sae.parameters(), lr=lr, ns_dtype=ns_dtype)  # pyright: ignore[reportAttributeAccessIssue]
    assert cfg.lr_end is not None
    trainer.lr_scheduler = get_lr_scheduler(
        cfg.lr_scheduler_name,
        lr=lr,
        optimizer=trainer.optimizer,
        warm_up_steps=cfg.lr_warm_up_steps,
        decay_steps=cfg.lr_decay_steps,
        training_steps=cfg.total_training_steps,
        lr_end=cfg.lr_end * lr / cfg.lr if cfg.lr else cfg.lr_end,
        num_cycles=cfg.n_restart_cycles,
    )


class BilinearTrainingRunner(LanguageModelSAETrainingRunner):
    """SAELens's ``LanguageModelSAETrainingRunner`` with a choice of optimiser and exact resume.

    ``optimizer="adam"`` trains exactly as SAELens does; ``"muon"`` swaps in
    :class:`MuonWithAdamW` (at ``cfg.lr``) before training starts. With
    ``cfg.resume_from_checkpoint`` the checkpoint is loaded *after* that swap (SAELens loads it
    into its Adam first, which fails for Muon's state), through
    :func:`~sae_bilinear.checkpoints.resume_trainer` (step counter, history, clear errors).
    Each checkpoint gets a completion marker, and the final SAE is written to a staging folder
    whose files are moved into ``output_path`` with ``cfg.json`` last.
    """

    def __init__(self, cfg: Any, *args: Any, optimizer: str = "adam", ns_dtype: NSDtype = "auto", **kwargs: Any):
        check_optimizer(optimizer)
        check_ns_dtype(ns_dtype)
        super().__init__(cfg, *args, **kwargs)
        if isinstance(self.sae, BilinearTrainingSAE):
            # SAELens's evaluator reads W_enc/W_dec and decodes unlifted SAEs, which bilinear
            # SAEs cannot do; ours gives its eval metrics at the activity threshold instead
            # (SAELens annotates the attribute as its LLMSaeEvaluator; the trainer only calls it).
            self.evaluator = BilinearEvaluator.from_runner(self)  # pyright: ignore[reportAttributeAccessIssue]
        self.optimizer_name = optimizer
        self.ns_dtype: NSDtype = ns_dtype
        self.trainer: SAETrainer[Any, Any] | None = None
        """The trainer of the current ``run()`` (set once training starts)."""
        self.resumed_from_steps: int | None = None
        """Completed steps of the checkpoint this run resumed from, or None."""
        self._resume_from: str | None = None

    @override
    def run(self) -> Any:
        # SAELens would load the checkpoint into its own Adam before our optimiser swap:
        # hide the path from it and load in run_trainer_with_interruption_handling instead.
        self._resume_from = self.cfg.resume_from_checkpoint
        self.cfg.resume_from_checkpoint = None
        try:
            return super().run()
        finally:
            self.cfg.resume_from_checkpoint = self._resume_from

    @override
    def run_trainer_with_interruption_handling(self, trainer: Any) -> Any:
        use_optimizer(trainer, self.optimizer_name, ns_dtype=self.ns_dtype)
        self.trainer = trainer
        if self._resume_from is not None:
            self.resumed_from_steps = resume_trainer(trainer, self._resume_from, self.optimizer_name)
            try:
                self.activations_store.load_from_checkpoint(self._resume_from)
            except Exception as error:  # SafetensorError, OSError, KeyError: a missing or damaged file
                state = Path(self._resume_from) / ACTIVATIONS_STORE_STATE_FILENAME
                raise DataFileError(f"{state} is missing or damaged: {error}") from error
        return super().run_trainer_with_interruption_handling(trainer)

    @override
    def save_checkpoint(self, checkpoint_path: Path | None) -> None:
        super().save_checkpoint(checkpoint_path)
        # SAELens's interruption handler calls this alone (no weights, no trainer state): such
        # a folder is not a checkpoint one can resume from, so it gets no marker.
        if (
            checkpoint_path is not None
            and self.trainer is not None
            and (checkpoint_path / TRAINER_STATE_FILENAME).exists()
        ):
            write_marker(Path(checkpoint_path), self.trainer, self.optimizer_name)

    @override
    def save_final_sae(
        self, sae: TrainingSAE[Any], output_path: str, log_feature_sparsity: torch.Tensor | None = None
    ) -> None:
        staged = staging_folder(Path(output_path) / "final")
        try:
            super().save_final_sae(sae, str(staged), log_feature_sparsity)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        # cfg.json last: a folder without it is not an SAE, so a kill mid-move leaves none that looks whole.
        publish_folder(staged, output_path, last=[SAE_CFG_FILENAME])


@torch.no_grad()
def collect_activations(
    model: Any,
    tokens: Int[Tensor, "n_contexts context"],
    hook_name: str,
    batch_size: int = 8,
    skip_first: int = 0,
    progress: bool = True,
) -> Float[Tensor, "n_tokens d_in"]:
    """Activations at ``hook_name`` for every token, gathered once, stopping after the hook's block.

    ``skip_first`` drops that many leading positions of each context (e.g. 1 for BOS, whose
    activation norm is an outlier). Returns float32 on the CPU, one row per token.
    """
    if tokens.ndim != 2 or tokens.numel() == 0:
        raise ValueError(f"tokens must be a non-empty [n_contexts, context] tensor, got shape {tuple(tokens.shape)}")
    check_hook(model, hook_name)
    stop = stop_at_layer(hook_name) if hook_name.startswith("blocks.") else None
    chunks = []
    for start in tqdm(range(0, tokens.shape[0], batch_size), desc=f"collect {hook_name}", disable=not progress):
        batch = tokens[start : start + batch_size].to(model.cfg.device)
        _, cache = model.run_with_cache(batch, names_filter=hook_name, stop_at_layer=stop)
        acts = cache[hook_name][:, skip_first:]
        chunks.append(acts.reshape(-1, acts.shape[-1]).float().cpu())
    return torch.cat(chunks)


class ShuffledBatches(Iterator[Tensor]):
    """SAELens ``DataProvider`` over cached activations: endless shuffled epochs of batches.

    Its position (generator state, the epoch's order, the offset in it) is saved into and
    restored from a checkpoint folder, so a resumed run sees the batches an uninterrupted run
    would have seen.
    """

    STATE_FILENAME = "shuffled_batches.safetensors"

    def __init__(self, activations: Float[Tensor, "n_tokens d_in"], batch_size: int, seed: int = 0):
        if activations.ndim != 2:
            raise ValueError(f"cached activations must be [n_tokens, d_in], got shape {tuple(activations.shape)}")
        if activations.shape[0] < batch_size:
            raise ValueError(
                f"only {activations.shape[0]} cached tokens for a batch of {batch_size}: "
                "collect more or use a smaller batch"
            )
        self.activations = activations
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self._order = torch.empty(0, dtype=torch.long)
        self._position = 0

    def __next__(self) -> Tensor:
        if self._position + self.batch_size > self._order.numel():
            self._order = torch.randperm(self.activations.shape[0], generator=self.generator)
            self._position = 0
        index = self._order[self._position : self._position + self.batch_size]
        self._position += self.batch_size
        return self.activations[index]

    def save_state(self, folder: str | Path) -> Path:
        """Write the position into ``folder`` (safetensors)."""
        path = Path(folder) / self.STATE_FILENAME
        state = {
            "generator": self.generator.get_state(),
            "order": self._order.clone(),
            "position": torch.tensor([self._position]),
            "n_tokens": torch.tensor([self.activations.shape[0]]),
        }
        save_file(state, str(path))
        return path

    def load_state(self, folder: str | Path) -> None:
        """Restore the position saved by :meth:`save_state`; errors name a damaged or foreign file."""
        path = Path(folder) / self.STATE_FILENAME
        try:
            state = load_file(str(path))
            generator, order = state["generator"], state["order"]
            position, n_tokens = int(state["position"].item()), int(state["n_tokens"].item())
        except Exception as error:  # SafetensorError, OSError, KeyError: all mean a bad file
            raise DataFileError(f"{path} is missing or damaged ({error}); resume from another checkpoint") from error
        if n_tokens != self.activations.shape[0]:
            raise DataFileError(
                f"{path} was saved for {n_tokens} cached tokens, but this run has {self.activations.shape[0]}: "
                "resume with the settings (corpus, contexts) the run started with"
            )
        if generator.dtype != torch.uint8 or not 0 <= position <= order.numel() or (order.numel() not in (0, n_tokens)):
            raise DataFileError(f"{path} is damaged (inconsistent generator state, order or position)")
        self.generator.set_state(generator)
        self._order = order.to(torch.long)
        self._position = position


class ResumableTrainer(SAETrainer[Any, Any]):
    """SAELens's trainer with: the progress bar moving every 10 steps instead of 100; checkpoints
    that resume exactly (data position and a completion marker, only the latest kept); and a
    final checkpoint when training ends, taken before SAELens folds the activation scaler into
    the weights (so resuming a finished run trains no step and folds once)."""

    def __init__(self, *args: Any, optimizer_name: str = "adam", **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.optimizer_name = optimizer_name
        self.resumed_from_steps: int | None = None
        """Completed steps of the checkpoint training resumed from, or None."""
        self._saved_at_samples: int | None = None
        self.on_step: Callable[[int, Any], None] | None = None
        """Called after every optimiser step with ``(steps_done, sae)`` (e.g. to record a learning curve)."""

    @override
    def _update_pbar(self, step_output: Any, pbar: Any, update_interval: int = 100) -> None:
        super()._update_pbar(step_output, pbar, update_interval=10)

    @override
    def save_checkpoint(
        self, checkpoint_name: str, base_path: Path | str | None = None, wandb_aliases: list[str] | None = None
    ) -> None:
        base = base_path if base_path is not None else self.cfg.checkpoint_path
        folder = None if base is None else Path(base) / checkpoint_name
        if folder is not None:
            (folder / MARKER_FILENAME).unlink(missing_ok=True)  # incomplete until rewritten below
        super().save_checkpoint(checkpoint_name, base_path, wandb_aliases)
        if folder is None:
            return
        if isinstance(self.data_provider, ShuffledBatches):
            self.data_provider.save_state(folder)
        write_marker(folder, self, self.optimizer_name)
        prune_checkpoints(Path(base), keep=folder)  # type: ignore[arg-type]
        self._saved_at_samples = self.n_training_samples

    @override
    def _checkpoint_if_needed(self) -> None:
        # SAELens calls this once per step, after the optimiser step and before counting it.
        if self.on_step is not None:
            self.on_step(self.n_training_steps + 1, self.sae)
        super()._checkpoint_if_needed()
        finished = self.n_training_samples >= self.cfg.total_training_samples
        if self.cfg.checkpoint_path is not None and finished and self._saved_at_samples != self.n_training_samples:
            self.save_checkpoint(str(self.n_training_samples))


@dataclass
class TrainingSettings:
    """How :func:`train_on_activations` runs SAELens's trainer. Every field is validated."""

    steps: int = 300
    """Optimiser steps."""
    batch_size: int = 1024
    """Tokens per step."""
    lr: float = 1e-3
    """Peak learning rate (Adam default 1e-3; Muon ~0.03)."""
    optimizer: str = "adam"
    """``"adam"`` (SAELens's) or ``"muon"`` (the paper's, for the bilinear weight matrices)."""
    ns_dtype: NSDtype = "auto"
    """Muon's Newton–Schulz arithmetic: float32, bfloat16 or auto (the faster, measured once)."""
    lr_decay_fraction: float = 0.5
    """Final share of steps over which the LR decays linearly to 0 (the paper decays over all)."""
    device: str = "cpu"
    """Device for training (activations are moved batch by batch)."""
    seed: int = 0
    """Seed of the batch order."""
    dead_feature_window: int = 100
    """Steps without firing after which SAELens counts a latent dead."""
    checkpoint_path: str | None = None
    """Folder for checkpoints (one subfolder each; only the latest is kept). None: no checkpoints."""
    n_checkpoints: int = 0
    """Evenly spaced checkpoints during training; one more is written at the end."""
    resume: bool = False
    """Continue from the latest complete checkpoint in ``checkpoint_path`` (none yet: start at step 0)."""

    def __post_init__(self) -> None:
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        self.lr = check_finite_float("lr", self.lr, 0.0, lo_open=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_ns_dtype(self.ns_dtype)
        self.lr_decay_fraction = check_finite_float("lr_decay_fraction", self.lr_decay_fraction, 0.0, 1.0)
        check_str("device", self.device)
        check_int("seed", self.seed, 0)
        check_int("dead_feature_window", self.dead_feature_window, 1)
        if isinstance(self.checkpoint_path, Path):
            self.checkpoint_path = str(self.checkpoint_path)
        if self.checkpoint_path is not None:
            check_str("checkpoint_path", self.checkpoint_path)
        check_int("n_checkpoints", self.n_checkpoints, 0)
        check_bool("resume", self.resume)
        if self.resume and self.checkpoint_path is None:
            raise ConfigError("resume needs checkpoint_path (the folder the run wrote its checkpoints to)")


def train_on_activations(
    sae: TrainingSAE[Any],
    activations: Float[Tensor, "n_tokens d_in"],
    settings: TrainingSettings | None = None,
    on_step: Callable[[int, Any], None] | None = None,
) -> ResumableTrainer:
    """Train ``sae`` with SAELens's ``SAETrainer`` on cached activations; return the trainer.

    Works for any SAELens training SAE (bilinear or a linear baseline), so both see the
    same tokens in the same order. The trainer keeps SAELens's firing statistics
    (``trainer.feature_sparsity``, ``trainer.dead_neurons``). With ``settings.checkpoint_path``
    checkpoints are written there, and ``settings.resume`` continues the latest one exactly
    (``trainer.resumed_from_steps`` is then its step count, else None). ``on_step(steps_done, sae)``
    runs after every optimiser step (the SAE in training mode; wrap any evaluation in no_grad).
    """
    settings = settings or TrainingSettings()
    if activations.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"activations have d={activations.shape[-1]} but the SAE expects d_in={sae.cfg.d_in}")
    decay_steps = int(settings.steps * settings.lr_decay_fraction)
    cfg = SAETrainerConfig(
        total_training_samples=settings.steps * settings.batch_size,
        train_batch_size_samples=settings.batch_size,
        lr=settings.lr,
        lr_end=settings.lr,  # decay starts from the peak
        lr_decay_steps=decay_steps,
        device=settings.device,
        dead_feature_window=settings.dead_feature_window,
        feature_sampling_window=max(settings.steps, 1),
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=min(100, max(1, math.ceil(activations.shape[0] / settings.batch_size))),
        n_checkpoints=settings.n_checkpoints if settings.checkpoint_path is not None else 0,
        checkpoint_path=settings.checkpoint_path,
    )
    batches = ShuffledBatches(activations, settings.batch_size, settings.seed)
    trainer = ResumableTrainer(cfg=cfg, sae=sae, data_provider=batches, optimizer_name=settings.optimizer)
    if on_step is not None and not callable(on_step):
        raise ConfigError(f"on_step must be callable(steps_done, sae) or None, got {on_step!r}")
    trainer.on_step = on_step
    use_optimizer(trainer, settings.optimizer, settings.lr, settings.ns_dtype)
    checkpoint = latest_checkpoint(settings.checkpoint_path) if settings.resume else None
    if checkpoint is not None:
        trainer.resumed_from_steps = resume_trainer(trainer, checkpoint, settings.optimizer)
        batches.load_state(checkpoint)
    trainer.fit()
    return trainer


def train_from_config(
    raw: dict[str, Any],
    override_model: Any = None,
    override_dataset: Any = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_remote_code: bool = False,
) -> Any:
    """Run SAELens's runner on one config mapping; returns the trained SAE.

    The embedded model name (``smollm2-135m``) or a local model folder is loaded by
    :mod:`sae_bilinear.models`; ``dataset_path: kjv`` or a local text/JSONL file is read by
    :mod:`sae_bilinear.data`. Everything else goes to SAELens as is (Hub names need the Hub).

    Output: ``output_path`` must be missing or empty, unless ``overwrite`` (the whole folder is
    replaced) or ``resume``. Checkpoints go to ``output_path/checkpoints`` unless the config
    names a ``checkpoint_path`` (SAELens's default would add a random suffix, which no resume
    could find). ``resume`` continues from the latest complete checkpoint there (starting at
    step 0 if there is none yet; the config's ``n_checkpoints`` sets how many are written).
    All of this is checked before any model is loaded.
    """
    check_bool("resume", resume)
    check_bool("overwrite", overwrite)
    cfg, extras = runner_config_from_dict(raw, allow_remote_code=allow_remote_code)
    if "checkpoint_path" not in raw and cfg.output_path is not None:
        cfg.checkpoint_path = str(Path(cfg.output_path) / "checkpoints")
    _train_folders(cfg, resume=resume, overwrite=overwrite, apply=False)
    if resume and cfg.output_path is not None and (Path(cfg.output_path) / SAE_CFG_FILENAME).is_file():
        # cfg.json is published last, so its presence means the final SAE is complete.
        _log(f"{cfg.output_path} already holds the finished SAE: nothing to resume")
        return load_any_from_disk(cfg.output_path, device=cfg.device)
    if resume:
        latest = latest_checkpoint(cfg.checkpoint_path)
        _log(
            f"resuming from {latest}"
            if latest
            else f"no checkpoint under {cfg.checkpoint_path} yet: starting at step 0"
        )
        if latest is not None:
            cfg.resume_from_checkpoint = str(latest)
    model = override_model
    if model is None and (
        cfg.model_name.lower() in models.EMBEDDED_MODEL_ALIASES or Path(cfg.model_name).expanduser().is_dir()
    ):
        model = models.load_model(cfg.model_name, device=cfg.llm_device or cfg.device, dtype=cfg.dtype)
    if model is not None:
        check_hook(model, cfg.hook_name)
        check_context_size(model, cfg.context_size)
    dataset = override_dataset
    if dataset is None:
        corpus = data.load_corpus(cfg.dataset_path or None)
        if isinstance(corpus, data.TextCorpus):
            dataset = data.as_hf_dataset(corpus.train)
    _train_folders(cfg, resume=resume, overwrite=overwrite, apply=True)  # nothing is removed before here
    runner = BilinearTrainingRunner(
        cfg, override_dataset=dataset, override_model=model, optimizer=extras["optimizer"], ns_dtype=extras["ns_dtype"]
    )
    return runner.run()


def _train_folders(cfg: Any, *, resume: bool, overwrite: bool, apply: bool) -> None:
    """The output rule for ``output_path`` and a ``checkpoint_path`` outside it: checked only,
    or (``apply``) applied — overwrite then removes the old folders. Resume needs checkpoints."""
    if resume and cfg.checkpoint_path is None:
        raise ConfigError("resume needs checkpoints: set checkpoint_path (and n_checkpoints) in the config")
    resume = resume or cfg.resume_from_checkpoint is not None
    folders = [("output_path", cfg.output_path)]
    if cfg.checkpoint_path is not None and not (
        cfg.output_path is not None and Path(cfg.output_path).resolve() in Path(cfg.checkpoint_path).resolve().parents
    ):
        folders.append(("checkpoint_path", cfg.checkpoint_path))
    for what, folder in folders:
        if folder is not None:
            rule = prepare_output_folder if apply else check_output_folder
            rule(folder, overwrite=overwrite, resume=resume, what=what)


def _log(message: str) -> None:
    print(f"[sae-bilinear] {message}", flush=True)
