"""The base of every intervention: :class:`SAEHook`, a TransformerLens forward hook bound to an
SAE and its hook point, and the latents' directions in activation space.

:mod:`sae_bilinear.interventions` (splice, ablate, clamp, steer) and
:mod:`sae_bilinear.manifold_walk` (moving an activation along a latent's eigenvectors) build
their hooks on :class:`SAEHook`; both re-export what is here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from sae_lens.saes.sae import SAE
from torch import Tensor

from sae_bilinear import kernels
from sae_bilinear.checks import check_finite_parameters, check_latent, check_sae_hook, is_bilinear
from sae_bilinear.errors import ConfigError, NonFiniteResultError
from sae_bilinear.values import check_finite_float, check_finite_tensor, check_int

__all__ = [
    "HookFn",
    "Positions",
    "SAEHook",
    "finite_amount",
    "latent_contribution",
    "latent_direction",
    "latent_directions",
]

HookFn = Callable[[Tensor, Any], Tensor]
"""A TransformerLens forward hook: ``fn(activation, hook) -> activation``."""
Positions = int | slice | Sequence[int] | None
"""Sequence positions an intervention applies to (None: all)."""


# ----------------------------------------------------------------------------------------------
# the latents' directions
# ----------------------------------------------------------------------------------------------


def latent_directions(sae: SAE[Any]) -> Tensor:
    """``[d_sae, d_in]``: row j is how x̂ moves per unit of latent j (per unit of token norm for
    bilinear SAEs).

    Bilinear (lifted): row j of ``coefficients(I) @ decoder_directions()``, so that
    ``x̂ = ||x|| Σ_j f_j · row_j``; for mixed variants that is ``DᵀD @ directions``, computed as
    ``Dᵀ(D @ directions)`` (a latent spreads over the directions of its bottleneck partners).
    Linear SAEs: ``W_dec``.
    """
    if is_bilinear(sae):
        directions = sae.decoder_directions()  # raises UnliftedDecodeError when unlifted
        if sae.W_down is None:
            return directions
        return sae.W_down.T @ (sae.W_down @ directions)
    return sae.W_dec


def latent_direction(sae: SAE[Any], latent: int) -> Tensor:
    """``[d_in]``: row ``latent`` of :func:`latent_directions`."""
    latent = check_latent(sae, latent)
    return latent_directions(sae)[latent]


def latent_contribution(sae: SAE[Any], x: Tensor, latent: int) -> Tensor:
    """Latent j's part of the reconstruction of activations ``x`` [..., d_in].

    Bilinear: ``||x|| · f_j · direction_j``; linear: ``f_j · W_dec[j]``. Zeroing latent j before
    decoding removes exactly this from x̂.
    """
    latent = check_latent(sae, latent)
    f = sae.encode(x)[..., latent : latent + 1]
    contribution = f * latent_direction(sae, latent)
    if is_bilinear(sae):
        contribution = contribution * kernels.unit_tokens(sae.process_sae_in(x)).norm.unsqueeze(-1).to(f.dtype)
    return contribution


# ----------------------------------------------------------------------------------------------
# the hook
# ----------------------------------------------------------------------------------------------


def _positions_index(positions: Positions) -> Any:
    """``positions`` as an index of dim 1 (None: all); ints are checked, a slice is kept."""
    if positions is None or isinstance(positions, slice):
        return positions
    if isinstance(positions, (str, bytes)) or not isinstance(positions, (int, Sequence, Tensor)):
        raise ConfigError(f"positions must be an int, a slice, a list of ints or None, got {positions!r}")
    if isinstance(positions, Tensor):
        positions = positions.tolist()
    items = [positions] if isinstance(positions, int) else list(positions)
    if not items:
        raise ConfigError("positions is empty: pass at least one sequence position (or None for all)")
    return [check_int(f"positions[{i}]", p) for i, p in enumerate(items)]


def finite_amount(name: str, value: Any) -> float | Tensor:
    """A finite edit amount: a number, or a float tensor (one value per latent or per row)."""
    if isinstance(value, Tensor):
        return check_finite_tensor(name, value)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return check_finite_tensor(
            name, torch.as_tensor([check_finite_float(f"{name}[{i}]", v) for i, v in enumerate(value)])
        )
    return check_finite_float(name, value)


class SAEHook:
    """A TransformerLens forward hook bound to an SAE and its hook point.

    Subclasses implement :meth:`transform` on activations ``[..., d_in]``. Calling the hook
    checks that it runs at the SAE's hook point and on activations of the SAE's size, runs the
    transform in the SAE's dtype/device and, with ``positions``, changes only those sequence
    positions (dim 1 of ``[batch, seq, d_in]``).
    """

    label: str = ""
    """What the hook does, for messages (e.g. ``"scale_hook(latent=3, factor=2)"``)."""

    def __init__(self, sae: SAE[Any], hook_name: str | None = None, positions: Positions = None):
        self.sae = sae
        self.hook_name = check_sae_hook(sae, hook_name)
        self.positions = _positions_index(positions)
        check_finite_parameters(sae)
        self.label = type(self).__name__

    def transform(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, activation: Tensor, hook: Any = None) -> Tensor:
        name = getattr(hook, "name", None)
        if name is not None and name != self.hook_name:
            raise ConfigError(
                f"{type(self).__name__} is for the SAE's hook point {self.hook_name!r} but was run at {name!r}"
            )
        if activation.shape[-1] != self.sae.cfg.d_in:
            raise ConfigError(
                f"the activation at {name or self.hook_name!r} has size {activation.shape[-1]}, "
                f"the SAE reads d_in={self.sae.cfg.d_in}"
            )
        out = self.transform(activation.to(device=self.sae.device)).to(device=activation.device, dtype=activation.dtype)
        if self.positions is not None:
            if activation.ndim < 3:
                raise ConfigError("positions= needs activations of shape [batch, seq, d_in]")
            result = activation.clone()
            result[:, self.positions] = out[:, self.positions]
            out = result
        self._check_finite(activation, out)
        return out

    def _check_finite(self, activation: Tensor, out: Tensor) -> None:
        """An edit that makes a token's activation NaN/inf, or so large that its squared norm
        overflows float32 (the model's next LayerNorm would then give NaN), is an error rather
        than silently NaN logits (e.g. a latent scaled by 1e30). Tokens that came in that way
        are left alone."""
        squared_out = out.detach().float().pow(2).sum(-1)
        squared_in = activation.detach().float().pow(2).sum(-1)
        bad = ~torch.isfinite(squared_out) & torch.isfinite(squared_in)
        if bool(bad.any()):
            raise NonFiniteResultError(
                f"{self.label} at {self.hook_name!r} made {int(bad.sum())} token activation(s) NaN/inf or "
                "so large that their squared norm overflows float32 (the model's next LayerNorm would "
                "give NaN logits): use a smaller edit value"
            )
