"""The manifold walk: move one activation along a bilinear latent's eigenvectors and record how
the latent and the model's output respond.

A bilinear latent ``f_j(u) = (l·u)(r·u)`` is the quadratic form of ``Q_j = (l rᵀ + r lᵀ)/2``,
of rank ≤ 2: :func:`latent_eigenvectors` gives its two eigenpairs in closed form.
:func:`walk_hook` moves the activation by ``t·||x||`` along one of them (a forward hook, like
those of :mod:`sae_bilinear.interventions`), and :func:`walk_manifold` runs a whole walk, one
forward pass per eigenvector with the steps batched. Only the encoder is needed, so unlifted
SAEs walk too. Every name here is re-exported by :mod:`sae_bilinear.interventions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from sae_lens.saes.sae import SAE
from torch import Tensor

from sae_bilinear import kernels
from sae_bilinear.analysis import rank2_spectrum
from sae_bilinear.checks import check_latent, check_model_hook, check_sae_hook, check_tokens, is_bilinear
from sae_bilinear.errors import ConfigError, ConfigTypeError, IndexRangeError
from sae_bilinear.sae_hooks import Positions, SAEHook, finite_amount
from sae_bilinear.values import check_finite_tensor, check_int

__all__ = ["LatentEigen", "WalkHook", "WalkResult", "latent_eigenvectors", "walk_hook", "walk_manifold"]


class LatentEigen(NamedTuple):
    """The non-zero eigenpairs of ``Q_j = (l rᵀ + r lᵀ)/2`` (the unlifted part of latent j)."""

    values: Tensor
    """``[2]`` eigenvalues ``(l·r ± |l||r|)/2``, sorted by decreasing ``|λ|``."""
    vectors: Tensor
    """``[2, d_in]`` unit eigenvectors ``∝ l/|l| ± r/|r|`` (rows), in the same order."""


def latent_eigenvectors(sae: SAE[Any], latent: int) -> LatentEigen:
    """Closed-form eigendecomposition of latent j's quadratic form on u (rank ≤ 2).

    ``(l rᵀ + r lᵀ)/2 · (l̂ ± r̂) = ½(l·r ± |l||r|)(l̂ ± r̂)``, computed by
    :func:`sae_bilinear.analysis.rank2_spectrum` on the unlifted rows (the bias part of a lifted
    latent is the linear term, which moves with u but has no direction of its own in u-space).
    """
    if not is_bilinear(sae):
        raise ConfigTypeError(
            f"eigenvectors of a latent's quadratic form need a bilinear SAE, got {type(sae).__name__}"
        )
    latent = check_latent(sae, latent)
    spectrum = rank2_spectrum(sae.W_left[latent].detach(), sae.W_right[latent].detach())
    return LatentEigen(values=spectrum.eigenvalues, vectors=spectrum.eigenvectors.T)


class WalkHook(SAEHook):
    """``x → x + t · ||x|| · v``: move along a unit direction, in units of the token's norm."""

    def __init__(
        self,
        sae: SAE[Any],
        direction: Tensor,
        t: float | Tensor,
        hook_name: str | None = None,
        positions: Positions = None,
    ):
        super().__init__(sae, hook_name, positions)
        self.direction = check_finite_tensor("direction", direction.detach(), shape=(sae.cfg.d_in,))
        t = finite_amount("t", t)
        if isinstance(t, Tensor) and t.ndim > 1:
            raise ConfigError(
                f"t must be a number or a 1-D tensor of one step per batch row, got shape {tuple(t.shape)}"
            )
        self.t = t

    def transform(self, x: Tensor) -> Tensor:
        t = torch.as_tensor(self.t, dtype=x.dtype, device=x.device)
        if t.ndim == 1:  # one step per batch row
            if t.shape[0] != x.shape[0]:
                raise ConfigError(f"t has {t.shape[0]} steps but the batch has {x.shape[0]} rows")
            t = t.reshape(-1, *([1] * (x.ndim - 1)))
        else:
            t = t.reshape(*([1] * x.ndim))
        norm = kernels.unit_tokens(x).norm.to(x.dtype).unsqueeze(-1)
        return x + t * norm * self.direction.to(device=x.device, dtype=x.dtype)


def walk_hook(
    sae: SAE[Any],
    latent: int,
    t: float | Tensor,
    *,
    eigen: int = 0,
    hook_name: str | None = None,
    positions: Positions = None,
) -> WalkHook:
    """Move the activation along eigenvector ``eigen`` (0: largest ``|λ|``) of latent j's ``Q_j``
    by ``t · ||x||``. ``t`` may be a tensor ``[batch]``: one step per batch row (a whole walk in one
    forward pass)."""
    if isinstance(eigen, bool) or eigen not in (0, 1):
        raise ConfigError(
            f"a bilinear latent has two eigenvectors with non-zero eigenvalue: eigen must be 0 or 1, got {eigen!r}"
        )
    return WalkHook(sae, latent_eigenvectors(sae, latent).vectors[eigen], t, hook_name, positions)


@dataclass
class WalkResult:
    """How latent j and the model's output respond when one activation moves along ``Q_j``'s
    eigenvectors. Index ``[k, i]`` is eigenvector ``eigen[k]`` at step ``ts[i]`` (``x + t·||x||·v``)."""

    latent: int
    position: int
    """Sequence position of the moved activation."""
    ts: Tensor
    """``[n_steps]`` step sizes, in units of the token's norm."""
    eigen: list[int]
    eigenvalues: Tensor
    """``[n_eigen]``."""
    eigenvectors: Tensor
    """``[n_eigen, d_in]``."""
    latent_values: Tensor
    """``[n_eigen, n_steps]``: latent j (before any TopK) of the moved activation."""
    logits: Tensor
    """``[n_eigen, n_steps, d_vocab]``: the model's output logits at ``position``."""
    lens_logits: Tensor | None
    """``[n_eigen, n_steps, d_vocab]``: logit lens of the moved activation itself
    (``unembed(ln_final(x_t))``); None when the hook is not on the residual stream."""
    clean_logits: Tensor
    """``[d_vocab]``: the unmodified model's logits at ``position``."""

    def kl_from_clean(self) -> Tensor:
        """``[n_eigen, n_steps]``: KL(clean ‖ moved) of the next-token distribution at ``position``
        (the clean output is the step with ``t = 0``, computed without moving)."""
        log_p = torch.log_softmax(self.clean_logits.double(), -1)
        log_q = torch.log_softmax(self.logits.double(), -1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)


def _is_residual_hook(hook_name: str) -> bool:
    return "resid" in hook_name


@torch.no_grad()
def walk_manifold(
    model: Any,
    sae: SAE[Any],
    tokens: Tensor,
    latent: int,
    *,
    ts: Tensor | Sequence[float] | None = None,
    eigen: Sequence[int] = (0, 1),
    position: int = -1,
    hook_name: str | None = None,
) -> WalkResult:
    """Walk one token's activation along latent j's top eigenvectors and record the response.

    For each eigenvector and step ``t``, the activation at ``position`` (of one sequence of
    ``tokens``) becomes ``x + t·||x||·v``; the rest of the forward pass runs on it. Recorded:
    latent j of the moved activation, the model's logits at ``position``, and the logit lens of
    the moved activation. One forward pass per eigenvector (the steps are batched).
    """
    hook = check_sae_hook(sae, hook_name)
    latent = check_latent(sae, latent)
    check_model_hook(model, hook)
    if not isinstance(tokens, Tensor):
        raise ConfigTypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2 or tokens.shape[0] != 1 or tokens.shape[1] == 0:
        raise ConfigError(f"walk_manifold takes one non-empty sequence of tokens, got shape {tuple(tokens.shape)}")
    tokens = check_tokens(model, tokens, min_length=1)
    length = tokens.shape[1]
    position = check_int("position", position)
    if not -length <= position < length:
        raise IndexRangeError(f"position {position} is outside the sequence of {length} tokens")
    position = position % length
    steps = torch.linspace(-1.0, 1.0, 21) if ts is None else finite_amount("ts", ts)
    if not isinstance(steps, Tensor) or steps.ndim != 1 or steps.numel() == 0:
        raise ConfigError("ts must be a non-empty 1-D sequence of finite step sizes")
    steps = steps.float()
    decomposition = latent_eigenvectors(sae, latent)
    eigen = list(eigen)
    for k in eigen:
        if isinstance(k, bool) or k not in (0, 1):
            raise ConfigError(f"eigen indices must be 0 or 1, got {k!r}")
    tokens = tokens.to(model.cfg.device)

    captured: list[Tensor] = []

    def grab(activation: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        captured.append(activation[0, position].detach())
        return activation

    clean_logits = model.run_with_hooks(tokens, fwd_hooks=[(hook, grab)])[0, position]
    x = captured[0].to(sae.device)
    if x.shape[-1] != sae.cfg.d_in:
        raise ConfigError(f"the activation at {hook!r} has size {x.shape[-1]}, the SAE reads d_in={sae.cfg.d_in}")
    norm = x.float().norm()
    lens = _is_residual_hook(hook) and x.shape[-1] == model.cfg.d_model and hasattr(model, "unembed")

    batch = tokens.expand(steps.numel(), -1)
    # Training SAEs give the latents before TopK/JumpReLU (what the walk records); others encode.
    encode_with_hidden_pre: Any = getattr(sae, "encode_with_hidden_pre", None)
    values, logits, lens_logits = [], [], []
    for k in eigen:
        vector = decomposition.vectors[k].to(device=x.device, dtype=x.dtype)
        moved = x + steps.to(x.device, x.dtype).unsqueeze(-1) * norm.to(x.dtype) * vector  # [n_steps, d]
        dense = encode_with_hidden_pre(moved)[1] if encode_with_hidden_pre is not None else sae.encode(moved)
        values.append(dense[:, latent].float().cpu())
        fn = WalkHook(sae, decomposition.vectors[k], steps, hook, positions=[position])
        out = model.run_with_hooks(batch, fwd_hooks=[(hook, fn)])
        logits.append(out[:, position].float().cpu())
        if lens:
            resid = moved.to(device=model.cfg.device, dtype=out.dtype).unsqueeze(1)
            if hasattr(model, "ln_final"):
                resid = model.ln_final(resid)
            lens_logits.append(model.unembed(resid)[:, 0].float().cpu())
    return WalkResult(
        latent=latent,
        position=position,
        ts=steps.cpu(),
        eigen=eigen,
        eigenvalues=decomposition.values[eigen].float().cpu(),
        eigenvectors=decomposition.vectors[eigen].float().cpu(),
        latent_values=torch.stack(values),
        logits=torch.stack(logits),
        lens_logits=torch.stack(lens_logits) if lens else None,
        clean_logits=clean_logits.float().cpu(),
    )
