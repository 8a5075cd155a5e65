"""SAELens's evals, made meaningful for bilinear SAEs; and an evaluator for SAELens's trainer.

``sae_lens.evals.run_evals`` assumes a linear SAE in three places, which give a bilinear SAE
wrong numbers or a crash:

* L0 and feature density count ``latents != 0``. Bilinear latents are dense and signed, so
  every token would have L0 = d_sae. Here a latent counts where it reaches
  ``activity_threshold`` of its peak (:meth:`~sae_bilinear.BilinearSAE.active_latents`), as in
  training and in :mod:`sae_bilinear.evaluate`.
* Reconstruction metrics (CE/KL with the SAE spliced in, explained variance, MSE, L2 ratios)
  need ``decode``. An unlifted SAE has no activation-space decoder (``f(−x) = f(x)``); those
  metrics are skipped with a logged reason instead of crashing (which, in the trainer, lost
  the run at its first eval).
* Weight-based feature metrics read ``W_enc``/``W_dec``, which a bilinear SAE does not have:
  skipped with a logged reason.

:func:`run_evals` has SAELens's call shape and returns SAELens's result shape; any other SAE
goes straight to SAELens. :class:`BilinearEvaluator` is the ``evaluator`` callable
``SAETrainer`` takes (a drop-in for SAELens's ``LLMSaeEvaluator``); with a runner,
``runner.evaluator = BilinearEvaluator.from_runner(runner)`` before ``runner.run()``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from sae_lens import evals as sae_lens_evals
from sae_lens.evals import EvalConfig
from sae_lens.saes.sae import SAE
from sae_lens.training.activation_scaler import ActivationScaler
from sae_lens.training.activations_store import ActivationsStore
from sae_lens.training.prefetch import PrefetchingIterator
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary
from transformer_lens import HookedRootModule

from sae_bilinear.bilinear_core import BilinearMixin, SAEInputError
from sae_bilinear.errors import ConfigError

logger = logging.getLogger(__name__)

WEIGHT_METRICS_REASON = (
    "weight-based feature metrics skipped: they read W_enc/W_dec, and a bilinear SAE's latents are "
    "quadratic forms of W_left/W_right (see sae_bilinear.analysis for its weight-based statistics)"
)
UNLIFTED_REASON = (
    "reconstruction metrics (CE/KL with the SAE spliced in, explained variance, MSE, L2 norms) skipped: "
    "this bilinear SAE is unlifted, so f(-x) = f(x) and it has no activation-space reconstruction; "
    "train with lifted=True to splice it, and see the training metric reconstruction_error for its "
    "reconstruction of x⊗x"
)
_RECONSTRUCTION_FLAGS = ("compute_kl", "compute_ce_loss", "compute_l2_norms", "compute_variance_metrics")
_reported: set[str] = set()


def run_evals(
    sae: SAE[Any],
    activation_store: ActivationsStore,
    model: HookedRootModule,
    activation_scaler: ActivationScaler,
    eval_config: EvalConfig | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    exclude_special_tokens: Iterable[int] | bool = True,
    verbose: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``sae_lens.evals.run_evals`` with numbers that mean something for a bilinear SAE.

    Same arguments and result as SAELens's (``(metrics, feature_metrics)``). For a bilinear
    SAE: ``sparsity/l0``, ``sparsity/l1`` and ``feature_density`` are taken over the latents
    that reach ``activity_threshold`` of their peak; reconstruction metrics are computed for
    lifted SAEs and skipped (reason logged) for unlifted ones; weight-based feature metrics
    are skipped (reason logged). Any other SAE is evaluated by SAELens unchanged.
    """
    config = EvalConfig() if eval_config is None else eval_config
    kwargs = {} if model_kwargs is None else model_kwargs
    if not isinstance(sae, BilinearMixin):
        return sae_lens_evals.run_evals(
            sae, activation_store, model, activation_scaler, config, kwargs, exclude_special_tokens, verbose
        )
    if not sae.cfg.metadata.hook_name:
        raise ConfigError(
            "metadata.hook_name of this SAE is not set, so the evals do not know where to splice it: "
            "set sae.cfg.metadata.hook_name (a runner sets it when run() starts)"
        )
    view = cast(SAE[Any], ThresholdedView(sae))
    return sae_lens_evals.run_evals(
        view, activation_store, model, activation_scaler, bilinear_eval_config(sae, config), kwargs,
        exclude_special_tokens, verbose,
    )  # fmt: skip


def bilinear_eval_config(sae: BilinearMixin, eval_config: EvalConfig) -> EvalConfig:
    """``eval_config`` without the metrics ``sae`` cannot give; each skip is logged once per process."""
    skip: dict[str, bool] = {}
    if eval_config.compute_featurewise_weight_based_metrics:
        skip["compute_featurewise_weight_based_metrics"] = False
        _report(WEIGHT_METRICS_REASON)
    if not sae.cfg.lifted and any(getattr(eval_config, flag) for flag in _RECONSTRUCTION_FLAGS):
        skip |= dict.fromkeys(_RECONSTRUCTION_FLAGS, False)
        _report(UNLIFTED_REASON)
    return dataclasses.replace(eval_config, **skip)


def _report(reason: str) -> None:
    # The trainer evaluates every few hundred steps: say it once, not at every eval.
    if reason not in _reported:
        _reported.add(reason)
        logger.warning("bilinear SAE evals: %s", reason)


class ThresholdedView:
    """A bilinear SAE as ``sae_lens.evals`` should see it.

    ``encode`` returns the latents with those below the activity threshold set to 0, so
    SAELens's ``!= 0`` counts are L0 and feature density at the threshold; ``decode`` of such
    a tensor decodes the full latents it came from (the reconstruction is the SAE's own,
    unchanged by the counting). An unlifted SAE decodes to NaN: SAELens's sparsity pass calls
    ``decode`` whether or not it uses the result, and :func:`bilinear_eval_config` has turned
    off every metric that would. Everything else is the SAE's.
    """

    def __init__(self, sae: BilinearMixin):
        self._sae = sae
        self._full: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sae, name)

    def encode(self, x: Tensor) -> Tensor:
        latents = self._sae.encode(x)
        zero = torch.zeros((), dtype=latents.dtype, device=latents.device)
        counted = torch.where(self._sae.active_latents(latents), latents, zero)
        self._full[counted] = latents
        return counted

    def decode(self, feature_acts: Tensor) -> Tensor:
        latents = self._full.get(feature_acts)
        if latents is None:
            raise SAEInputError("ThresholdedView.decode() takes only what its encode() returned")
        if not self._sae.cfg.lifted:
            return torch.full((*latents.shape[:-1], self._sae.cfg.d_in), float("nan"), device=latents.device)
        return self._sae.decode(latents)


@dataclass
class BilinearEvaluator:
    """The ``evaluator`` of SAELens's ``SAETrainer`` for bilinear SAEs (``Evaluator`` protocol:
    ``(sae, data_provider, activation_scaler) -> metrics``).

    Runs the metrics SAELens's own ``LLMSaeEvaluator`` runs (CE loss, L2 norms, sparsity,
    variance), through :func:`run_evals`, so an unlifted SAE trains with ``log_to_wandb=True``
    and L0 is counted at the activity threshold. Other SAEs get SAELens's evals unchanged.
    """

    model: HookedRootModule
    """The language model the activations come from."""
    activations_store: ActivationsStore
    """SAELens's store the eval batches are drawn from (as ``LLMSaeEvaluator`` does)."""
    eval_batch_size_prompts: int | None = None
    """Prompts per eval batch; None: the store's batch size."""
    n_eval_batches: int = 10
    """Batches for the reconstruction and for the sparsity/variance metrics."""
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the model's forward."""

    @classmethod
    def from_runner(cls, runner: Any) -> BilinearEvaluator:
        """The evaluator for a ``LanguageModelSAETrainingRunner`` (its model, store and eval settings)."""
        return cls(
            model=runner.model,
            activations_store=runner.activations_store,
            eval_batch_size_prompts=runner.cfg.eval_batch_size_prompts,
            n_eval_batches=runner.cfg.n_eval_batches,
            model_kwargs=runner.cfg.model_kwargs,
        )

    def __call__(self, sae: Any, data_provider: Any, activation_scaler: ActivationScaler) -> dict[str, Any]:
        special = self.activations_store.exclude_special_tokens
        config = EvalConfig(
            batch_size_prompts=self.eval_batch_size_prompts,
            n_eval_reconstruction_batches=self.n_eval_batches,
            n_eval_sparsity_variance_batches=self.n_eval_batches,
            compute_ce_loss=True,
            compute_l2_norms=True,
            compute_sparsity_metrics=True,
            compute_variance_metrics=True,
        )
        # The evals draw from the store the prefetcher's thread also draws from: pause it.
        paused: AbstractContextManager[Any] = (
            data_provider.paused() if isinstance(data_provider, PrefetchingIterator) else nullcontext()
        )
        with paused:
            metrics, _ = run_evals(
                sae,
                self.activations_store,
                self.model,
                activation_scaler,
                config,
                self.model_kwargs,
                exclude_special_tokens=False if special is None else special.tolist(),
            )
        return metrics
