"""Bilinear SAE: the ``"bilinear"`` architecture for SAELens, a sibling of ``saes/topk_sae.py``.

Each latent is a quadratic form of the unit token ``u = x/||x||``::

    f_j = (l_j·u + b_lj)(r_j·u + b_rj)        (biases only when ``lifted``)

and the autoencoder reconstructs ``X = ũ⊗ũ`` (``ũ = [1, u]`` when lifted) by
``X̂ = Σ_j g_j l̃_j⊗r̃_j``, trained with the kernel-trick error of :mod:`sae_bilinear.kernels`.
A lifted SAE also decodes to the activation space: the off-diagonal block of ``X̂`` is
``û``, and ``x̂ = ||x|| û``, so it can be spliced into a forward pass.

SAELens's base classes assume a linear ``W_enc``/``W_dec``; this module overrides every
method that relies on them so that it is right for this architecture, or fails with a
clear message (never silently wrong).
"""

from __future__ import annotations

from typing import Any

import torch
from numpy.typing import NDArray
from sae_lens.saes.sae import SAE, TrainCoefficientConfig, TrainingSAE, TrainStepInput, TrainStepOutput
from torch import Tensor, nn
from typing_extensions import override

from sae_bilinear import kernels
from sae_bilinear.bilinear_config import (
    ARCHITECTURE,
    FORMAT_VERSION,
    BilinearFields,
    BilinearSAEConfig,
    BilinearTrainingSAEConfig,
    Sparsity,
    default_alpha_warm_up_steps,
    validate_bilinear_config,
)
from sae_bilinear.bilinear_core import (
    BilinearMixin,
    EncodedNorms,
    MagnitudeTopK,
    SAEInputError,
    SAEInputTypeError,
    UnliftedDecodeError,
)

__all__ = [
    "ARCHITECTURE",
    "FORMAT_VERSION",
    "BilinearFields",
    "BilinearMixin",
    "BilinearSAE",
    "BilinearSAEConfig",
    "BilinearTrainingSAE",
    "BilinearTrainingSAEConfig",
    "EncodedNorms",
    "MagnitudeTopK",
    "SAEInputError",
    "SAEInputTypeError",
    "Sparsity",
    "UnliftedDecodeError",
    "default_alpha_warm_up_steps",
    "explained_variance",
    "register",
    "validate_bilinear_config",
]


class BilinearSAE(BilinearMixin, SAE[BilinearSAEConfig]):
    """Inference bilinear SAE: ``encode``, ``decode`` (lifted), ``reconstruction_error``.

    Hook points: SAELens's ``hook_sae_input``, ``hook_sae_acts_pre`` (dense f),
    ``hook_sae_acts_post`` (after TopK), ``hook_sae_recons``, ``hook_sae_output``,
    ``hook_sae_error``, plus ``hook_sae_left``/``hook_sae_right`` (the two factors of f).
    """

    cfg: BilinearSAEConfig

    def __init__(self, cfg: BilinearSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._add_bilinear_hooks()


class BilinearTrainingSAE(BilinearMixin, TrainingSAE[BilinearTrainingSAEConfig]):
    """Training bilinear SAE, run by SAELens's ``LanguageModelSAETrainingRunner``/``SAETrainer``.

    The loss is the kernel-trick error (prefix-averaged for ordered/combined) plus
    ``alpha`` times the Hoyer density (tail-weighted for ordered/combined), with α warmed
    up over ``alpha_warm_up_steps``. ``TrainStepOutput.feature_acts`` carries the latents
    gated by :meth:`active_latents`, so the trainer's ``.bool()``-based L0 and dead-latent
    counts mean "reached ``activity_threshold`` of its peak" rather than "non-zero".
    """

    cfg: BilinearTrainingSAEConfig

    def __init__(self, cfg: BilinearTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._add_bilinear_hooks()
        self.history: list[dict[str, float]] = []
        """Scalars of every ``history_every``-th step (SAELens only logs to wandb)."""
        self.history_every = 10

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"alpha": TrainCoefficientConfig(value=self.cfg.alpha, warm_up_steps=self.cfg.alpha_warm_up_steps)}

    @override
    def calculate_aux_loss(
        self, step_input: TrainStepInput, feature_acts: Tensor, hidden_pre: Tensor, sae_out: Tensor
    ) -> dict[str, Tensor]:
        """``α·density`` of ``feature_acts`` over the batch's valid tokens, as SAELens's hook.

        :meth:`training_forward_pass` does not come through here: it already has the mask
        (and the TopK support) and calls :meth:`_density_penalty` with them.
        """
        sae_in = step_input.sae_in
        valid = kernels.unit_tokens(sae_in.reshape(-1, sae_in.shape[-1])).valid
        alpha = step_input.coefficients.get("alpha", self.cfg.alpha)
        return {
            "density_penalty": self._density_penalty(feature_acts.reshape(-1, feature_acts.shape[-1]), valid, alpha)
        }

    def _density_penalty(
        self, latents: Tensor, valid: Tensor, alpha: float, support: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        """``α`` × Hoyer density (ordered: harmonic-tail weighted) of ``latents`` [n, d_sae] over the
        ``valid`` [n] tokens; with the TopK ``support`` ``(indices, values)`` [n, k], in O(n·k)."""
        ordered = kernels.is_ordered(self.cfg.variant)
        if support is None:
            return alpha * kernels.density(latents, valid, ordered=ordered)
        indices, values = support
        return alpha * kernels.weighted_density(
            kernels.sparse_hoyer_density(values, indices, self.cfg.d_sae, valid), ordered
        )

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        tokens = self._unit_tokens(step_input.sae_in)
        sparse, dense, indices = self._encode_tokens_with_support(tokens)
        ordered = kernels.is_ordered(self.cfg.variant)
        flat_valid = tokens.valid.reshape(-1)
        support = None
        if indices is not None:
            # The k kept latents per token, read from the post-activations (hooks included):
            # loss, density and firing statistics then cost O(B·k) instead of O(B·F).
            flat_indices = indices.reshape(-1, indices.shape[-1])
            support = (flat_indices, sparse.reshape(-1, sparse.shape[-1]).gather(-1, flat_indices))
        objective = self._kernel_error(
            dense,
            sparse,
            tokens.valid,
            ordered=ordered,
            indices=indices,
            values=None if support is None else support[1],
        )
        error = kernels.masked_mean(objective.error, tokens.valid)
        alpha = step_input.coefficients.get("alpha", self.cfg.alpha)
        penalty = self._density_penalty(sparse.reshape(-1, sparse.shape[-1]), flat_valid, alpha, support)
        loss = error + penalty

        with torch.no_grad():
            if support is None:
                active = self.active_latents(sparse) & tokens.valid.unsqueeze(-1)
                firing = torch.where(active, sparse.detach(), torch.zeros_like(sparse))
                active_count = active.sum(-1)
            else:
                flat_indices, values = support[0], support[1].detach()
                peak = self.latent_peak().to(values.dtype)
                active_k = values.abs() >= self.cfg.activity_threshold * peak[flat_indices]
                active_k &= flat_valid.unsqueeze(-1)
                firing = torch.zeros_like(sparse).reshape(-1, sparse.shape[-1])
                firing = firing.scatter(-1, flat_indices, torch.where(active_k, values, torch.zeros_like(values)))
                firing = firing.reshape(sparse.shape)
                active_count = active_k.sum(-1).reshape(tokens.valid.shape)
            if self.cfg.lifted:
                sae_out = self._training_decode(sparse.detach(), indices, tokens.norm, step_input.sae_in.dtype)
            else:
                # x̂ does not exist without the lift; NaN makes any explained variance computed
                # from it visibly undefined instead of quietly wrong.
                sae_out = torch.full_like(step_input.sae_in, float("nan"))

        def hoyer() -> Tensor:
            if support is None:
                return kernels.hoyer_density(sparse.detach(), tokens.valid).mean()
            return kernels.sparse_hoyer_density(support[1].detach(), support[0], self.cfg.d_sae, flat_valid).mean()

        metrics: dict[str, Any] = {
            "hoyer_density": hoyer,
            "alpha": alpha,
            "l0_active": lambda: active_count.float()[tokens.valid].mean() if tokens.valid.any() else 0.0,
            "masked_tokens": lambda: (~tokens.valid).sum(),
        }
        if ordered:
            metrics["reconstruction_error"] = lambda: self._full_error(dense, sparse, tokens.valid, indices)
        else:
            metrics["reconstruction_error"] = error.detach()
        if step_input.dead_neuron_mask is not None:
            metrics["dead_fraction"] = step_input.dead_neuron_mask.float().mean()

        if step_input.n_training_steps % self.history_every == 0:
            self._record_history(step_input, loss, error, penalty, metrics, sae_out, tokens.valid)

        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=firing,
            hidden_pre=dense,
            loss=loss,
            losses={"reconstruction_error": error, "density_penalty": penalty},
            metrics=metrics,
        )

    def _training_decode(self, sparse: Tensor, indices: Tensor | None, norm: Tensor, dtype: torch.dtype) -> Tensor:
        """``decode(sparse)`` of inputs of ``dtype``; with TopK (no bottleneck) from the k kept
        latents only (B·k·d, not B·F·d)."""
        out_dtype = torch.promote_types(self.W_left.dtype, dtype)
        if indices is None or self.W_down is not None:
            return self._finish_decode(self.coefficients(sparse) @ self.decoder_directions(), norm, out_dtype)
        flat_indices = indices.reshape(-1, indices.shape[-1])
        values = sparse.reshape(-1, sparse.shape[-1]).gather(-1, flat_indices)
        unit_hat = nn.functional.embedding_bag(
            flat_indices, self.decoder_directions(), per_sample_weights=values, mode="sum"
        ).reshape(*sparse.shape[:-1], -1)
        return self._finish_decode(unit_hat, norm, out_dtype)

    @torch.no_grad()
    def _full_error(self, dense: Tensor, sparse: Tensor, valid: Tensor, indices: Tensor | None = None) -> Tensor:
        error = self._kernel_error(dense.detach(), sparse.detach(), valid, ordered=False, indices=indices).error
        return kernels.masked_mean(error, valid)

    @torch.no_grad()
    def _record_history(
        self,
        step_input: TrainStepInput,
        loss: Tensor,
        objective: Tensor,
        penalty: Tensor,
        metrics: dict[str, Any],
        sae_out: Tensor,
        valid: Tensor,
    ) -> None:
        def scalar(value: Any) -> float:
            value = value() if callable(value) else value
            return float(value.item() if isinstance(value, Tensor) else value)

        row = {
            "step": float(step_input.n_training_steps),
            "loss": scalar(loss),
            "objective": scalar(objective),
            "density_penalty": scalar(penalty),
            **{name: scalar(value) for name, value in metrics.items()},
        }
        if self.cfg.lifted and valid.any():
            row["explained_variance"] = float(explained_variance(step_input.sae_in[valid], sae_out[valid]))
        self.history.append(row)

    @override
    @torch.no_grad()
    def log_histograms(self) -> dict[str, NDArray[Any]]:
        return {"weights/latent_peak": self.latent_peak().float().cpu().numpy()}


def explained_variance(x: Tensor, x_hat: Tensor) -> Tensor:
    """``1 − Σ||x − x̂||² / Σ||x − mean(x)||²`` over a batch of tokens [n, d], in float32+."""
    dtype = kernels.accumulation_dtype(x.dtype)
    x, x_hat = x.to(dtype), x_hat.to(dtype)
    residual = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    return 1.0 - residual / total.clamp(min=torch.finfo(dtype).tiny)


def register() -> None:
    """Register ``"bilinear"`` with SAELens for inference and training. Idempotent."""
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )

    # Inference first: TrainingSAEConfig.__post_init__ looks the inference config up.
    if ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(ARCHITECTURE, BilinearSAE, BilinearSAEConfig)
    if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(ARCHITECTURE, BilinearTrainingSAE, BilinearTrainingSAEConfig)


# Importing the model registers it (SPEC §3): whoever can build a BilinearSAE can load one.
register()
