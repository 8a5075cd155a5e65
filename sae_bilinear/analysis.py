"""Reading a bilinear SAE on data: latent activations, usage, statistics, top activations.

The weight-only math (factors, the closed-form spectrum of each ``Q_j``, composite latents
``Σ_i v_i Q_i``, mixing clusters) lives in :mod:`sae_bilinear.spectra`; every public name of
it is re-exported here, so ``from sae_bilinear.analysis import latent_spectrum`` works.
This module adds what needs activations: the latents' values on tokens
(:func:`latent_activations`, :func:`composite_activations`), how often each latent fires
(:func:`latent_usage`, :func:`choose_top_latents`), a composite's statistics
(:func:`composite_stats`) and its top-activating tokens projected on the top-3 ``|λ|``
eigenvectors — the manifold the latent reads (:func:`top_activations`).

Cross-SAE scores are in :mod:`sae_bilinear.similarity`; the per-latent HTML/PNG/JSON pages
in :mod:`sae_bilinear.latent_pages`; figures in :mod:`sae_bilinear.plots`. This module never
loads a model and never writes a file: activations are passed in.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from sae_bilinear import kernels, similarity
from sae_bilinear.spectra import (
    MATRIX_ELEMENT_LIMIT,
    Factors,
    Spectrum,
    bottleneck_weights,
    captured_share,
    cluster_weights,
    composite_matrices,
    composite_matrix,
    composite_spectrum,
    direction_weights,
    effective_dimension,
    effective_rank,
    factors,
    fix_signs,
    form_sketch,
    hoyer_density,
    importance,
    interaction_matrix,
    is_lifted,
    latent_indices,
    latent_matrices,
    latent_spectrum,
    latent_weights,
    lift,
    lift_scale,
    mixing_overlap,
    rank2_spectrum,
    spectrum,
    subspace_angles,
    top_dims,
    variant_name,
)
from sae_bilinear.spectra import top_dims as _top_dims  # noqa: F401 (old private name, used by experiments/)


@dataclass
class CompositeStats:
    """Summary of a (composite) latent, as the authors' visualiser shows it."""

    support: int
    """Latents with ``|v_i| >= support_threshold · max|v|``."""
    effective_rank: float
    """``(Σ|λ|)²/Σλ²``."""
    importance: float
    """``Σλ²``."""
    captured: float
    """``top-3 |λ| / Σ|λ|``."""
    density: float | None
    """Hoyer density of the composite's activations over the given tokens (None: no tokens)."""


def composite_stats(
    sae: Any,
    weights: Tensor,
    activations: Tensor | None = None,
    *,
    eigenvalues: Tensor | None = None,
    support_threshold: float = 0.1,
    top: int = 3,
) -> CompositeStats:
    """Support, effective rank, importance, captured share and Hoyer density of ``Σ v_i Q_i``.

    ``eigenvalues`` skips the eigendecomposition when already known; ``activations``
    [..., d_in] gives the density (otherwise None).
    """
    v = weights.reshape(-1)
    vmax = v.abs().max()
    support = int((v.abs() >= support_threshold * vmax).sum()) if vmax > 0 else 0
    if eigenvalues is None:
        if support == 1 and vmax > 0:
            j = int(v.abs().argmax())
            eigenvalues = latent_spectrum(sae, j).eigenvalues * v[j].to(factors(sae).left.dtype)
        else:
            eigenvalues = composite_spectrum(sae, v).eigenvalues
    density = None
    if activations is not None:
        values = composite_activations(sae, activations, v)
        density = float(hoyer_density(values.reshape(-1)))
    return CompositeStats(
        support=support,
        effective_rank=float(effective_rank(eigenvalues)),
        importance=float(importance(eigenvalues)),
        captured=float(captured_share(eigenvalues, k=top)),
        density=density,
    )


# ----------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------


def _unit(sae: Any, activations: Tensor) -> kernels.UnitTokens:
    """Unit tokens of raw activations [N, d_in], through the SAE's own input processing."""
    x = activations
    process = getattr(sae, "process_sae_in", None)
    if callable(process):
        with torch.no_grad():
            x = process(x)
    device = sae.W_left.device  # not factors(): it copies every row (the atlas calls this per latent)
    return kernels.unit_tokens(x.to(device, kernels.accumulation_dtype(x.dtype)))  # pyright: ignore[reportAttributeAccessIssue]


def _flat(activations: Tensor) -> Tensor:
    if activations.ndim < 1:
        raise ValueError("activations must have shape [..., d_in]")
    return activations.reshape(-1, activations.shape[-1])


def token_latents(
    sae: Any, activations: Tensor, latents: int | Sequence[int] | Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Dense latents ``f`` [N, n] of activations [..., d_in] in one batch, and the valid mask [N].

    Invalid tokens (zero or non-finite) get ``f = 0``. :func:`latent_activations` is the
    batched form.
    """
    left, right, _, lifted = factors(sae)
    index, _ = latent_indices(latents, left.shape[0], left.device)
    tokens = _unit(sae, _flat(activations))
    u = tokens.unit.to(left.dtype)
    u = lift(u) if lifted else u
    f = (u @ left[index].T) * (u @ right[index].T)
    valid = tokens.valid.to(f.device)
    return torch.where(valid.unsqueeze(-1), f, torch.zeros_like(f)), valid


def latent_activations(
    sae: Any, activations: Tensor, latents: int | Sequence[int] | Tensor | None = None, *, batch_size: int = 8192
) -> Tensor:
    """Dense latents ``f`` [N, n] (before any TopK) of activations [..., d_in], batched.

    Zero and non-finite tokens get 0.
    """
    left = factors(sae).left
    index, single = latent_indices(latents, left.shape[0], left.device)
    x = _flat(activations)
    out = [token_latents(sae, x[start : start + batch_size], index)[0] for start in range(0, x.shape[0], batch_size)]
    f = torch.cat(out) if out else torch.zeros(0, index.numel(), dtype=left.dtype, device=left.device)
    return f[:, 0] if single else f


def composite_activations(sae: Any, activations: Tensor, weights: Tensor, *, batch_size: int = 8192) -> Tensor:
    """``Σ_i v_i f_i`` [N] over activations [..., d_in] (only latents with non-zero weight run)."""
    v = weights.reshape(-1)
    support = v.nonzero(as_tuple=True)[0]
    if support.numel() == 0:
        return torch.zeros(_flat(activations).shape[0])
    f = latent_activations(sae, activations, support, batch_size=batch_size)
    return f @ v[support].to(device=f.device, dtype=f.dtype)


def _coefficients_of(sae: Any, f: Tensor) -> Tensor:
    down = factors(sae).down
    return kernels.mix(f, down.to(f.dtype)) if down is not None else f


def _sparse_latents(sae: Any, f: Tensor) -> Tensor:
    cfg = getattr(sae, "cfg", None)
    if cfg is not None and getattr(cfg, "sparsity", "hoyer") == "topk" and getattr(cfg, "k", None):
        return kernels.topk_by_magnitude(f, int(cfg.k))
    return f


class UsageSums:
    """Streaming sums behind :func:`latent_usage`: feed it the dense latents of valid tokens.

    Built once per SAE (``index``: the latents scored; ``local``: score them alone, which is
    exact only for vanilla/ordered Hoyer SAEs), then :meth:`add` per batch and
    :meth:`result` at the end. The atlas drives it from its own single pass over the data.
    """

    def __init__(self, sae: Any, index: Tensor, *, local: bool = False) -> None:
        left, right, _, lifted = factors(sae)
        self.sae, self.index, self.local = sae, index, local
        self.peak = kernels.latent_peak(
            left[index, int(lifted) :],
            right[index, int(lifted) :],
            left[index, 0] if lifted else None,
            right[index, 0] if lifted else None,
        )
        self.threshold = float(getattr(getattr(sae, "cfg", None), "activity_threshold", 0.1))
        width = index.numel()
        self.sums = {
            name: torch.zeros(width, dtype=left.dtype, device=left.device)
            for name in ("frequency", "energy", "mean_abs")
        }
        self.max_abs = torch.zeros(width, dtype=left.dtype, device=left.device)
        self.count = 0

    def add(self, f: Tensor) -> None:
        """Dense latents ``f`` [n_valid, len(index)] of a batch of valid tokens."""
        sparse = f if self.local else _sparse_latents(self.sae, f)
        g = sparse if self.local else _coefficients_of(self.sae, sparse)
        self.sums["frequency"] += (sparse.abs() >= self.threshold * self.peak).to(f.dtype).sum(0)
        self.sums["energy"] += (g * f).abs().sum(0)
        self.sums["mean_abs"] += f.abs().sum(0)
        if f.shape[0]:
            self.max_abs = torch.maximum(self.max_abs, f.abs().max(0).values)
        self.count += f.shape[0]

    def result(self) -> dict[str, Tensor]:
        """``frequency``, ``energy``, ``mean_abs`` (means over valid tokens) and ``max_abs``."""
        out = {name: total / max(self.count, 1) for name, total in self.sums.items()}
        out["max_abs"] = self.max_abs
        return out


def latent_usage(
    sae: Any, activations: Tensor, latents: Sequence[int] | Tensor | None = None, *, batch_size: int = 8192
) -> dict[str, Tensor]:
    """Per-latent usage over activations: ``frequency``, ``energy``, ``mean_abs``, ``max_abs``.

    - ``frequency``: share of valid tokens where ``|f_j|`` reaches ``activity_threshold``
      (the SAE config's, default 0.1) of the latent's peak ``||ũ||²·max|λ(Q_j)|``;
    - ``energy``: mean ``|g_j f_j|``, latent j's share of ``<X, X̂>`` (what it reconstructs);
    - ``mean_abs`` / ``max_abs``: of the dense ``f_j``.

    TopK SAEs are scored on their kept latents (frequency, energy). ``latents`` restricts
    the output (``[len(latents)]`` instead of ``[d_sae]``); for vanilla/ordered Hoyer SAEs
    only those latents are computed (``O(N·d)`` per latent), otherwise all are (``g``
    and TopK need every latent).
    """
    left, _, down, _ = factors(sae)
    d_sae = left.shape[0]
    topk = getattr(getattr(sae, "cfg", None), "sparsity", "hoyer") == "topk"
    subset = (
        None
        if latents is None
        else latent_indices(list(latents) if not isinstance(latents, Tensor) else latents, d_sae, left.device)[0]
    )
    local = subset is not None and down is None and not topk
    index = subset if local and subset is not None else torch.arange(d_sae, device=left.device)
    sums = UsageSums(sae, index, local=local)
    x = _flat(activations)
    for start in range(0, x.shape[0], batch_size):
        f, valid = token_latents(sae, x[start : start + batch_size], index)
        sums.add(f[valid])
    out = sums.result()
    if subset is not None and not local:
        out = {name: value[subset] for name, value in out.items()}
    return out


def choose_top_latents(
    sae: Any,
    activations: Tensor,
    n: int = 1,
    *,
    by: Literal["frequency", "energy", "mean_abs", "max_abs"] = "frequency",
    batch_size: int = 8192,
) -> list[int]:
    """The ``n`` most active latents over ``activations`` [..., d_in] (for ``--latent top``).

    ``by="frequency"`` (default) ranks by how often a latent reaches its activity
    threshold, ties broken by ``energy``; see :func:`latent_usage` for the others.
    """
    usage = latent_usage(sae, activations, batch_size=batch_size)
    score = usage[by].to(torch.float64)
    if by == "frequency":
        energy = usage["energy"].to(torch.float64)
        score = score + 1e-9 * energy / energy.max().clamp(min=1e-30)
    n = max(0, min(n, score.shape[0]))
    return score.topk(n).indices.tolist()


@dataclass
class TopActivations:
    """Top-activating tokens of a latent (or composite) and their 3D manifold coordinates."""

    indices: Tensor
    """``[n]`` positions in the flattened activations."""
    values: Tensor
    """``[n]`` the latent's (dense) activation on them."""
    coordinates: Tensor
    """``[n, 3]`` ``ũ`` projected on ``axes``."""
    axes: Tensor
    """``[d', 3]`` orthonormal projection axes: top-3 ``|λ|`` eigenvectors, completed by the
    principal directions of the tokens' residual when the form has rank < 3."""
    axis_eigenvalues: Tensor
    """``[3]`` eigenvalue of each axis (0 for a residual axis)."""
    axis_labels: list[str]
    tokens: list[str] | None
    contexts: list[str] | None
    latent: int | None
    weights: Tensor | None
    """The composite's weights over latents (None for a single latent)."""
    lifted: bool


def _form(sae: Any, latent: int | None, weights: Tensor | None) -> tuple[Spectrum, Tensor | None]:
    if (latent is None) == (weights is None):
        raise ValueError("give exactly one of latent (a single latent) or weights (a composite)")
    if latent is not None:
        return latent_spectrum(sae, latent), None
    assert weights is not None
    return composite_spectrum(sae, weights), weights.reshape(-1)


def _select(values: Tensor, n: int, sign: str) -> Tensor:
    valid = torch.isfinite(values)
    n = min(n, int(valid.sum()))
    if n <= 0:
        return torch.zeros(0, dtype=torch.long)
    masked_high = torch.where(valid, values, torch.full_like(values, -math.inf))
    masked_low = torch.where(valid, values, torch.full_like(values, math.inf))
    if sign == "positive":
        return masked_high.topk(n).indices
    if sign == "negative":
        return masked_low.topk(n, largest=False).indices
    if sign == "abs":
        return torch.where(valid, values.abs(), torch.full_like(values, -math.inf)).topk(n).indices
    if sign != "both":
        raise ValueError(f"sign must be 'both', 'positive', 'negative' or 'abs', got {sign!r}")
    high = masked_high.topk(n - n // 2).indices
    taken = torch.zeros_like(valid).index_fill(0, high, True)
    low = torch.where(taken, torch.full_like(values, math.inf), masked_low).topk(n // 2, largest=False).indices
    return torch.cat([high, low])


def lifted_units(sae: Any, activations: Tensor) -> Tensor:
    """``ũ`` [N, d'] (float64, CPU) of activations [..., d_in]: unit tokens, lifted when the SAE is."""
    u = _unit(sae, _flat(activations)).unit
    return (lift(u) if is_lifted(sae) else u).to(torch.float64).cpu()


class ManifoldView(NamedTuple):
    """Tokens projected on a form's top-3 ``|λ|`` eigenvectors (see :func:`manifold_view`)."""

    coordinates: Tensor
    """``[n, 3]`` ``ũ·axis``."""
    axes: Tensor
    """``[d', 3]`` orthonormal axes: top-3 ``|λ|`` eigenvectors, then residual principal directions."""
    axis_eigenvalues: Tensor
    """``[3]`` eigenvalue of each axis (0 for a residual axis)."""
    axis_labels: list[str]
    """``"v0 (λ=…)"`` or ``"residual PC0"`` per axis."""


def _principal_directions(residual: Tensor) -> Tensor:
    """Unit principal directions [d', r] of the rows of ``residual`` [n, d'], largest first.

    From the eigenvectors of the smaller Gram matrix (``R Rᵀ`` when n < d', else ``Rᵀ R``):
    a few ms for a few hundred tokens, where an SVD of ``R`` takes tens.
    """
    n, d = residual.shape
    if n < d:
        _, vectors = torch.linalg.eigh(residual @ residual.T)
        directions = residual.T @ vectors.flip(-1)
    else:
        directions = torch.linalg.eigh(residual.T @ residual)[1].flip(-1)
    return directions / directions.norm(dim=0, keepdim=True).clamp(min=torch.finfo(residual.dtype).tiny)


def _complete_axes(units: Tensor, axes: Tensor, n_axes: int) -> tuple[Tensor, int]:
    """Extend orthonormal ``axes`` [d', k] to ``n_axes`` columns with the principal directions
    of the units' residual (then coordinate axes, if the tokens span too little)."""
    residual = units - (units @ axes) @ axes.T
    if units.shape[0] > 1:
        residual = residual - residual.mean(0, keepdim=True)
    candidates = [lambda: _principal_directions(residual)] if residual.shape[0] else []
    candidates.append(lambda: torch.eye(units.shape[-1], dtype=units.dtype))
    basis, added = axes, 0
    for make in candidates:
        for column in make().T:
            if basis.shape[1] == n_axes:
                return basis, added
            column = column - basis @ (basis.T @ column)
            norm = column.norm()
            if norm > 1e-6:
                basis = torch.cat([basis, (column / norm).unsqueeze(-1)], dim=1)
                added += 1
    return basis, added


def manifold_view(units: Tensor, eig: Spectrum) -> ManifoldView:
    """Project lifted unit tokens ``units`` [n, d'] (:func:`lifted_units`) on the form's top-3 ``|λ|`` eigenvectors.

    The activation is ``Σ_k λ_k (ũ·v_k)²`` over all eigenpairs, so the top-3 axes show most of
    it. A form with fewer than three non-zero eigenvalues (a single latent has two) gets
    the principal directions of the tokens' residual as its remaining axes, so the
    picture still shows how the tokens spread. Axis signs are fixed (largest entry > 0).
    """
    u = units.to(torch.float64).cpu()
    n_axes = min(3, u.shape[-1])
    vals = eig.eigenvalues.to(torch.float64).cpu()
    vecs = eig.eigenvectors.to(torch.float64).cpu()
    scale = vals.abs().max() if vals.numel() else torch.tensor(0.0)
    nonzero = int((vals.abs() > 1e-9 * scale).sum()) if scale > 0 else 0
    k_eig = min(n_axes, nonzero)
    axes, added = _complete_axes(u, vecs[:, :k_eig], n_axes) if k_eig < n_axes else (vecs[:, :k_eig], 0)
    labels = [f"v{i} (λ={float(vals[i]):.3g})" for i in range(k_eig)] + [f"residual PC{i}" for i in range(added)]
    axes = fix_signs(axes)
    coordinates = u @ axes
    if coordinates.shape[1] < 3:
        coordinates = torch.cat([coordinates, coordinates.new_zeros(coordinates.shape[0], 3 - coordinates.shape[1])], 1)
    axis_values = torch.zeros(3, dtype=torch.float64)
    axis_values[:k_eig] = vals[:k_eig]
    return ManifoldView(coordinates, axes, axis_values, labels)


def top_activations(
    sae: Any,
    activations: Tensor,
    latent: int | None = None,
    *,
    n: int = 500,
    tokens: Sequence[str] | None = None,
    contexts: Sequence[str] | None = None,
    weights: Tensor | None = None,
    sign: Literal["both", "positive", "negative", "abs"] = "both",
    batch_size: int = 8192,
) -> TopActivations:
    """Top-activating tokens of ``latent`` (or of the composite ``weights``) and their 3D view.

    Args:
        activations: ``[..., d_in]`` raw activations (flattened to ``[N, d_in]``).
        latent: the latent to read; or pass ``weights`` [d_sae] for a composite.
        n: how many tokens to keep.
        tokens, contexts: strings per token (length N), carried along for display.
        sign: ``"both"``: the ``n − n//2`` highest and ``n//2`` lowest activations (a
            bilinear latent is signed: both ends show the surface); ``"positive"``,
            ``"negative"``: one end; ``"abs"``: largest ``|f|``.

    The coordinates are ``ũ·v_k`` for the top-3 ``|λ|`` eigenvectors ``v_k`` (so the
    activation is ``Σ_k λ_k (ũ·v_k)²`` plus the smaller eigenvalues' part). A single latent
    has only two non-zero eigenvalues: its third axis is the principal direction of the
    selected tokens' residual, so the picture still shows how they spread.
    """
    x = _flat(activations)
    N = x.shape[0]
    for name, seq in (("tokens", tokens), ("contexts", contexts)):
        if seq is not None and len(seq) != N:
            raise ValueError(f"{name} has {len(seq)} entries but there are {N} activations")
    eig, v = _form(sae, latent, weights)
    lifted = is_lifted(sae)
    if latent is not None:
        values = latent_activations(sae, x, latent, batch_size=batch_size)
    else:
        assert v is not None
        values = composite_activations(sae, x, v, batch_size=batch_size)
    valid = (
        torch.cat([_unit(sae, x[s : s + batch_size]).valid for s in range(0, N, batch_size)])
        if N
        else torch.zeros(0, dtype=torch.bool)
    )
    values = torch.where(valid.to(values.device), values, torch.full_like(values, math.nan)).cpu()
    chosen = _select(values, n, sign)
    view = manifold_view(lifted_units(sae, x[chosen.to(x.device)]), eig)
    return TopActivations(
        indices=chosen,
        values=values[chosen],
        coordinates=view.coordinates.float(),
        axes=view.axes.float(),
        axis_eigenvalues=view.axis_eigenvalues.float(),
        axis_labels=view.axis_labels,
        tokens=None if tokens is None else [tokens[i] for i in chosen.tolist()],  # pyright: ignore[reportArgumentType]
        contexts=None if contexts is None else [contexts[i] for i in chosen.tolist()],  # pyright: ignore[reportArgumentType]
        latent=latent,
        weights=None if v is None else v.detach().cpu(),
        lifted=lifted,
    )


_MOVED_TO_SIMILARITY = (
    "Matching",
    "compare",
    "cross_kernel",
    "matched_similarity",
    "operator_inner",
    "operator_similarity",
)


def __getattr__(name: str) -> Any:
    """Deprecated: the cross-SAE scores moved to :mod:`sae_bilinear.similarity` (this warns)."""
    if name in _MOVED_TO_SIMILARITY:
        warnings.warn(
            f"sae_bilinear.analysis.{name} moved to sae_bilinear.similarity.{name}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(similarity, name)
    raise AttributeError(f"module 'sae_bilinear.analysis' has no attribute {name!r}")


__all__ = [
    "MATRIX_ELEMENT_LIMIT",
    "CompositeStats",
    "Factors",
    "ManifoldView",
    "Spectrum",
    "TopActivations",
    "UsageSums",
    "bottleneck_weights",
    "captured_share",
    "choose_top_latents",
    "cluster_weights",
    "composite_activations",
    "composite_matrices",
    "composite_matrix",
    "composite_spectrum",
    "composite_stats",
    "direction_weights",
    "effective_dimension",
    "effective_rank",
    "factors",
    "fix_signs",
    "form_sketch",
    "hoyer_density",
    "importance",
    "interaction_matrix",
    "is_lifted",
    "latent_activations",
    "latent_indices",
    "latent_matrices",
    "latent_spectrum",
    "latent_usage",
    "latent_weights",
    "lift",
    "lift_scale",
    "lifted_units",
    "manifold_view",
    "mixing_overlap",
    "rank2_spectrum",
    "spectrum",
    "subspace_angles",
    "token_latents",
    "top_activations",
    "top_dims",
    "variant_name",
]
