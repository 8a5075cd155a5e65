"""Reading a bilinear SAE from its weights: spectra, composite latents, similarity, manifolds.

Latent j is the quadratic form ``f_j(ũ) = ũᵀ Q_j ũ`` with the symmetric matrix
``Q_j = (l̃_j r̃_jᵀ + r̃_j l̃_jᵀ)/2`` (``ũ = [1, u]`` and ``l̃ = [b_l, l]`` when lifted: the bias
is coordinate 0). ``Q_j`` has rank ≤ 2; its two eigenpairs have a closed form
(:func:`rank2_spectrum`). A *composite* latent ``Σ_i v_i Q_i`` (a cluster of a mixed
model's ``DᵀD``, a bottleneck row, or any direction read through the SAE) has a full
spectrum (:func:`spectrum`). Projecting the top-activating tokens on the top-3
``|eigenvalue|`` eigenvectors shows the manifold the latent reads (:func:`top_activations`).

Two SAEs are compared without data through their reconstruction operators
(:func:`operator_similarity`, :func:`matched_similarity`, :func:`compare`).

This module takes an SAE (a :class:`~sae_bilinear.BilinearSAE`, a training SAE, or any
object with ``W_left``, ``W_right`` and optionally ``b_left``, ``b_right``, ``W_down``) and,
where data is needed, activations passed in. It never loads a model.

Conventions: eigenvalues are sorted by ``|λ|``, largest first; eigenvectors are the
*columns* of ``eigenvectors`` (as in :func:`torch.linalg.eigh`). All arithmetic runs in
float32 at least (float64 inputs stay float64).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from sae_bilinear import kernels

# ----------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------


class Factors(NamedTuple):
    """The encoder rows of an SAE, lifted when the SAE is (coordinate 0 = bias)."""

    left: Tensor
    """``L̃`` [d_sae, d'] with d' = d_in (+1 when lifted)."""
    right: Tensor
    """``R̃`` [d_sae, d']."""
    down: Tensor | None
    """``D = W_down`` [bottleneck, d_sae] for mixed/combined, else None."""
    lifted: bool


def _param(sae: Any, name: str) -> Tensor | None:
    value = getattr(sae, name, None)
    return value.detach() if isinstance(value, Tensor) else None


def factors(sae: Any, dtype: torch.dtype | None = None) -> Factors:
    """``L̃, R̃`` (and ``D``) of an SAE, detached, in ``dtype`` (default: float32 at least)."""
    W_left, W_right = _param(sae, "W_left"), _param(sae, "W_right")
    if W_left is None or W_right is None:
        raise TypeError(f"{type(sae).__name__} has no W_left/W_right: not a bilinear SAE")
    b_left, b_right = _param(sae, "b_left"), _param(sae, "b_right")
    if (b_left is None) != (b_right is None):
        raise ValueError("b_left and b_right must both exist (lifted) or both be None")
    dtype = dtype or kernels.accumulation_dtype(W_left.dtype)
    left, right = W_left.to(dtype), W_right.to(dtype)
    lifted = b_left is not None
    if lifted:
        assert b_left is not None and b_right is not None
        left = torch.cat([b_left.to(dtype).unsqueeze(-1), left], dim=-1)
        right = torch.cat([b_right.to(dtype).unsqueeze(-1), right], dim=-1)
    down = _param(sae, "W_down")
    return Factors(left, right, None if down is None else down.to(dtype), lifted)


def is_lifted(sae: Any) -> bool:
    return _param(sae, "b_left") is not None


def _indices(idx: int | Sequence[int] | Tensor | None, d_sae: int, device: torch.device) -> tuple[Tensor, bool]:
    """Latent indices as a 1-d long tensor, and whether a single int was given."""
    if idx is None:
        return torch.arange(d_sae, device=device), False
    if isinstance(idx, int) or (isinstance(idx, Tensor) and idx.ndim == 0):
        index = int(idx)
        if not -d_sae <= index < d_sae:
            raise IndexError(f"latent {index} out of range for d_sae={d_sae}")
        return torch.tensor([index % d_sae], device=device), True
    out = torch.as_tensor(idx, device=device, dtype=torch.long).reshape(-1)
    if out.numel() and (out.min() < -d_sae or out.max() >= d_sae):
        raise IndexError(f"latent indices out of range for d_sae={d_sae}")
    return out % d_sae, False


def lift(unit: Tensor) -> Tensor:
    """``ũ = [1, u]`` [..., d+1]."""
    return torch.cat([torch.ones_like(unit[..., :1]), unit], dim=-1)


# ----------------------------------------------------------------------------------------
# Spectra
# ----------------------------------------------------------------------------------------


class Spectrum(NamedTuple):
    """Eigenpairs of symmetric forms, sorted by ``|λ|`` (largest first)."""

    eigenvalues: Tensor
    """``[..., k]``."""
    eigenvectors: Tensor
    """``[..., d', k]``: column i belongs to eigenvalue i (unit norm)."""


MATRIX_ELEMENT_LIMIT = 2**28
"""Refuse to materialise more than this many entries of ``Q_j`` at once (1 GiB in float32)."""


def latent_matrices(sae: Any, idx: int | Sequence[int] | Tensor | None = None) -> Tensor:
    """``Q_j = (l̃ r̃ᵀ + r̃ l̃ᵀ)/2``: ``[d', d']`` for an int ``idx``, else ``[n, d', d']``.

    ``f_j = ũᵀ Q_j ũ``. ``idx=None`` means all latents (refused above
    :data:`MATRIX_ELEMENT_LIMIT` entries: use :func:`latent_spectrum` instead).
    """
    left, right, _, _ = factors(sae)
    index, single = _indices(idx, left.shape[0], left.device)
    d = left.shape[-1]
    if index.numel() * d * d > MATRIX_ELEMENT_LIMIT:
        raise ValueError(
            f"{index.numel()} matrices of {d}×{d} is too many to hold; pass fewer indices or use latent_spectrum"
        )
    a, b = left[index], right[index]
    outer = a.unsqueeze(-1) * b.unsqueeze(-2)
    Q = 0.5 * (outer + outer.transpose(-1, -2))
    return Q[0] if single else Q


def _orthogonal_unit(w: Tensor) -> Tensor:
    """A unit vector orthogonal to each unit row ``w`` [..., d] (d >= 2): Gram–Schmidt on e_k."""
    k = w.abs().argmin(dim=-1, keepdim=True)
    e = torch.zeros_like(w).scatter(-1, k, 1.0)
    v = e - (e * w).sum(-1, keepdim=True) * w
    return v / torch.linalg.vector_norm(v, dim=-1, keepdim=True).clamp(min=torch.finfo(w.dtype).tiny)


def rank2_spectrum(left: Tensor, right: Tensor) -> Spectrum:
    """Closed-form eigenpairs of ``(a bᵀ + b aᵀ)/2`` for rows ``a = left``, ``b = right`` [..., d].

    With ``â = a/|a|``, ``b̂ = b/|b|``, ``c = â·b̂``, the two non-zero eigenpairs are
    ``λ± = (a·b ± |a||b|)/2 = |a||b|(c ± 1)/2`` with eigenvectors along ``â ± b̂``. Every
    other eigenvalue is 0. Degenerate cases: ``a ∥ b`` (one eigenvalue is 0; its
    eigenvector is any unit vector orthogonal to ``â``) and ``a = 0`` or ``b = 0`` (both 0,
    with an arbitrary orthonormal pair). Returned sorted by ``|λ|``: ``[..., 2]`` and
    ``[..., d, 2]``. Sign convention: the ``λ+`` eigenvector points along ``â + b̂``, the
    ``λ−`` one along ``â − b̂``.
    """
    if left.shape != right.shape:
        raise ValueError(f"left and right must have the same shape, got {tuple(left.shape)} and {tuple(right.shape)}")
    d = left.shape[-1]
    if d < 2:
        raise ValueError("rank2_spectrum needs d >= 2")
    dtype = kernels.accumulation_dtype(left.dtype)
    a, b = left.to(dtype), right.to(dtype)
    tiny = torch.finfo(dtype).tiny
    tol = math.sqrt(torch.finfo(dtype).eps)
    na = torch.linalg.vector_norm(a, dim=-1, keepdim=True)
    nb = torch.linalg.vector_norm(b, dim=-1, keepdim=True)
    zero = (na <= tiny) | (nb <= tiny)
    a_hat = a / na.clamp(min=tiny)
    b_hat = b / nb.clamp(min=tiny)
    # Any unit vector and one orthogonal to it, for the zero form.
    e0 = torch.zeros_like(a).index_fill(-1, torch.tensor([0], device=a.device), 1.0)
    e1 = torch.zeros_like(a).index_fill(-1, torch.tensor([1], device=a.device), 1.0)
    a_hat = torch.where(zero, e0, a_hat)
    b_hat = torch.where(zero, e0, b_hat)
    scale = torch.where(zero, torch.zeros_like(na), na * nb).squeeze(-1)
    cos = (a_hat * b_hat).sum(-1).clamp(-1.0, 1.0)

    plus = a_hat + b_hat
    minus = a_hat - b_hat
    n_plus = torch.linalg.vector_norm(plus, dim=-1, keepdim=True)
    n_minus = torch.linalg.vector_norm(minus, dim=-1, keepdim=True)
    # |â ± b̂|² = 2(1 ± c) ∈ [0, 4]; at most one of them is small.
    plus_ok = n_plus > tol
    v_plus = torch.where(plus_ok, plus / n_plus.clamp(min=tiny), torch.zeros_like(plus))
    v_minus = minus / n_minus.clamp(min=tiny)
    v_minus = v_minus - (v_minus * v_plus).sum(-1, keepdim=True) * v_plus  # exact ⊥ (round-off)
    minus_ok = (n_minus > tol) & ~zero
    v_minus = v_minus / torch.linalg.vector_norm(v_minus, dim=-1, keepdim=True).clamp(min=tiny)
    # Fallbacks: c ≈ +1 → λ− = 0 with any vector ⊥ â; c ≈ −1 → λ+ = 0 with any vector ⊥ â.
    v_minus = torch.where(minus_ok, v_minus, _orthogonal_unit(v_plus.where(plus_ok, a_hat)))
    v_plus = torch.where(plus_ok, v_plus, _orthogonal_unit(a_hat))
    v_plus = torch.where(zero, e0, v_plus)
    v_minus = torch.where(zero, e1, v_minus)

    lam_plus = 0.5 * scale * (1.0 + cos)
    lam_minus = -0.5 * scale * (1.0 - cos)
    values = torch.stack([lam_plus, lam_minus], dim=-1)
    vectors = torch.stack([v_plus, v_minus], dim=-1)
    # |λ+| >= |λ−| iff c >= 0.
    swap = (cos < 0).unsqueeze(-1)
    values = torch.where(swap, values.flip(-1), values)
    vectors = torch.where(swap.unsqueeze(-2), vectors.flip(-1), vectors)
    return Spectrum(values, vectors)


def latent_spectrum(sae: Any, idx: int | Sequence[int] | Tensor | None = None) -> Spectrum:
    """The two non-zero eigenpairs of every ``Q_j`` (or those in ``idx``), in closed form.

    ``[n, 2]`` eigenvalues and ``[n, d', 2]`` eigenvectors (no batch dim for an int
    ``idx``); see :func:`rank2_spectrum`. Costs ``O(F d)``: never forms a matrix.
    """
    left, right, _, _ = factors(sae)
    index, single = _indices(idx, left.shape[0], left.device)
    result = rank2_spectrum(left[index], right[index])
    if single:
        return Spectrum(result.eigenvalues[0], result.eigenvectors[0])
    return result


def spectrum(matrix: Tensor, k: int | None = None) -> Spectrum:
    """Full eigendecomposition of symmetric ``matrix`` [..., d, d] (symmetrised first), ``|λ|``-sorted.

    ``k`` keeps only the ``k`` largest ``|λ|``. Runs in float64 (d ~ 1000 takes well
    under a second on a CPU).
    """
    m = matrix.to(torch.float64)
    m = 0.5 * (m + m.transpose(-1, -2))
    values, vectors = torch.linalg.eigh(m)
    order = values.abs().argsort(dim=-1, descending=True, stable=True)
    values = values.gather(-1, order)
    vectors = vectors.gather(-1, order.unsqueeze(-2).expand_as(vectors))
    if k is not None:
        values, vectors = values[..., :k], vectors[..., :k]
    out_dtype = kernels.accumulation_dtype(matrix.dtype)
    return Spectrum(values.to(out_dtype), _fix_signs(vectors).to(out_dtype))


def _fix_signs(vectors: Tensor) -> Tensor:
    """Flip each column so its largest-magnitude entry is positive (eigh's sign is arbitrary)."""
    peak = vectors.abs().argmax(dim=-2, keepdim=True)
    sign = torch.sign(vectors.gather(-2, peak))
    return vectors * torch.where(sign == 0, torch.ones_like(sign), sign)


def effective_dimension(values: Tensor, dim: int = -1, p: float = 1.0) -> Tensor:
    """``(Σ|v|^p)² / Σ|v|^{2p}``: roughly how many entries of ``v`` are big (0 for a zero vector).

    ``p = 1`` on eigenvalues is the effective rank; the authors rank rows of ``DᵀD`` with
    ``p = 4``, which counts only the dominant entries.
    """
    dtype = kernels.accumulation_dtype(values.dtype)
    v = values.to(dtype).abs().pow(p)
    num = v.sum(dim).pow(2)
    den = v.pow(2).sum(dim)
    return torch.where(den > 0, num / den.clamp(min=torch.finfo(dtype).tiny), torch.zeros_like(num))


def effective_rank(eigenvalues: Tensor, dim: int = -1) -> Tensor:
    """``(Σ|λ|)² / Σλ²``: 2 for a balanced rank-2 latent, 1 for a rank-1 one."""
    return effective_dimension(eigenvalues, dim=dim, p=1.0)


def importance(eigenvalues: Tensor, dim: int = -1) -> Tensor:
    """``Σλ² = ||Q||²_F``: the size of the form."""
    return eigenvalues.to(kernels.accumulation_dtype(eigenvalues.dtype)).pow(2).sum(dim)


def captured_share(eigenvalues: Tensor, k: int = 3, dim: int = -1) -> Tensor:
    """Share of ``Σ|λ|`` held by the ``k`` largest ``|λ|``: how much the 3D view shows."""
    a = eigenvalues.to(kernels.accumulation_dtype(eigenvalues.dtype)).abs()
    top = a.topk(min(k, a.shape[dim]), dim=dim).values.sum(dim)
    total = a.sum(dim)
    return torch.where(total > 0, top / total.clamp(min=torch.finfo(a.dtype).tiny), torch.zeros_like(total))


def hoyer_density(values: Tensor, dim: int = 0) -> Tensor:
    """Hoyer density of ``values`` along ``dim`` (1 = equal everywhere, 0 = one non-zero).

    ``(||v||₁/||v||₂ − 1)/(√n − 1)``, as the training penalty (:func:`kernels.hoyer_density`).
    """
    moved = values.movedim(dim, 0)
    flat = moved.reshape(moved.shape[0], -1)
    return kernels.hoyer_density(flat).reshape(moved.shape[1:])


def subspace_angles(a: Tensor, b: Tensor) -> Tensor:
    """Principal angles in degrees (ascending) between the column spans of ``a`` [d, k1], ``b`` [d, k2].

    ``min(k1, k2)`` angles; 0 = shared direction, 90 = orthogonal. The span of ``a`` lies
    inside the span of ``b`` exactly when every angle is 0.
    """
    qa = torch.linalg.qr(a.to(torch.float64)).Q
    qb = torch.linalg.qr(b.to(torch.float64)).Q
    cos = torch.linalg.svdvals(qa.T @ qb).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.arccos(cos)).sort().values


# ----------------------------------------------------------------------------------------
# Composite latents
# ----------------------------------------------------------------------------------------


def composite_matrix(sae: Any, weights: Tensor) -> Tensor:
    """``C = Σ_i v_i Q_i`` [d', d'] for a weight vector ``v`` over the latents [d_sae].

    ``ũᵀ C ũ = Σ_i v_i f_i``: the composite latent's activation. Only non-zero weights
    cost anything.
    """
    left, right, _, _ = factors(sae)
    v = weights.to(device=left.device, dtype=left.dtype).reshape(-1)
    if v.shape[0] != left.shape[0]:
        raise ValueError(f"weights must have d_sae={left.shape[0]} entries, got {v.shape[0]}")
    support = v.nonzero(as_tuple=True)[0]
    a, b, w = left[support], right[support], v[support]
    half = (a * w.unsqueeze(-1)).T @ b
    return 0.5 * (half + half.T)


def composite_spectrum(sae: Any, weights: Tensor, k: int | None = None) -> Spectrum:
    """Full spectrum of :func:`composite_matrix` (``k``: keep the ``k`` largest ``|λ|``)."""
    return spectrum(composite_matrix(sae, weights), k=k)


def latent_weights(sae: Any, latent: int) -> Tensor:
    """One-hot weights: the composite of a single latent is ``Q_latent`` itself."""
    d_sae = factors(sae).left.shape[0]
    index, _ = _indices(latent, d_sae, torch.device("cpu"))
    return torch.zeros(d_sae).index_fill(0, index, 1.0)


def _require_down(sae: Any) -> Tensor:
    down = factors(sae).down
    if down is None:
        raise ValueError("this SAE has no W_down: bottleneck clusters exist only for the mixed and combined variants")
    return down


def mixing_overlap(sae: Any, rows: int | Sequence[int] | Tensor | None = None) -> Tensor:
    """Normalised ``DᵀD``: cosines between the columns of ``D`` (mixed/combined only).

    Entry (i, j) says how much latents i and j are read together by the bottleneck.
    ``rows`` picks rows (an int gives a vector [d_sae]); ``None`` gives all [d_sae, d_sae].
    """
    down = _require_down(sae)
    cols = down / torch.linalg.vector_norm(down, dim=0, keepdim=True).clamp(min=torch.finfo(down.dtype).tiny)
    index, single = _indices(rows, down.shape[1], down.device)
    out = cols[:, index].T @ cols
    return out[0] if single else out


def cluster_weights(sae: Any, latent: int, size: int = 10, signed: bool = True) -> Tensor:
    """Weights of the cluster of ``latent`` in a mixed model: its ``size`` strongest partners.

    Row ``latent`` of the normalised ``DᵀD`` (:func:`mixing_overlap`), keeping the
    ``size`` entries of largest magnitude (the latent itself, with weight 1, among them)
    and zeroing the rest. ``signed=True`` keeps the signs (``Σ_i v_i f_i`` is then what
    the bottleneck reads along with ``latent``); the authors' visualiser uses the
    magnitudes (``signed=False``).
    """
    row = mixing_overlap(sae, latent)
    size = max(1, min(size, row.shape[0]))
    top = row.abs().topk(size).indices
    values = row[top] if signed else row[top].abs()
    return torch.zeros_like(row).index_put((top,), values)


def bottleneck_weights(sae: Any, row: int) -> Tensor:
    """Weights of bottleneck unit ``row``: ``h_row = Σ_j D_row,j f_j = ũᵀ C_row ũ``."""
    down = _require_down(sae)
    if not -down.shape[0] <= row < down.shape[0]:
        raise IndexError(f"bottleneck row {row} out of range for bottleneck={down.shape[0]}")
    return down[row].clone()


def direction_weights(
    sae: Any, direction: Tensor, space: Literal["latents", "bottleneck", "activations"] | None = None
) -> Tensor:
    """Weights over latents of a direction read through the SAE (for :func:`composite_matrix`).

    - ``space="bottleneck"`` (mixed/combined; ``bottleneck`` entries): the bottleneck
      read-out ``wᵀ D f``, i.e. weights ``Dᵀ w``.
    - ``space="activations"`` (lifted SAEs; ``d_in`` entries): the component of the
      decoded ``û`` along ``w``, ``wᵀ û = Σ_j g_j (dec_j·w)`` with ``g = f`` or ``DᵀD f``.
    - ``space="latents"`` (``d_sae`` entries): the weights themselves.

    ``space=None`` infers it from the length of ``direction`` and refuses an ambiguous one.
    """
    left, right, down, lifted = factors(sae)
    w = direction.to(device=left.device, dtype=left.dtype).reshape(-1)
    d_sae, d_in = left.shape[0], left.shape[1] - int(lifted)
    sizes = {"latents": d_sae, "activations": d_in}
    if down is not None:
        sizes["bottleneck"] = down.shape[0]
    if space is None:
        matches = [name for name, size in sizes.items() if size == w.shape[0]]
        if len(matches) != 1:
            expected = ", ".join(f"{name}={size}" for name, size in sizes.items())
            raise ValueError(
                f"direction has {w.shape[0]} entries: "
                + ("ambiguous, pass space=" + " or ".join(repr(m) for m in matches) if matches else f"expected one of {expected}")
            )
        space = matches[0]  # type: ignore[assignment]
    if space not in sizes:
        raise ValueError(f"space={space!r} does not exist for this SAE (it has {', '.join(sizes)})")
    if w.shape[0] != sizes[space]:
        raise ValueError(f"a direction in the {space} space needs {sizes[space]} entries, got {w.shape[0]}")
    if space == "latents":
        return w.clone()
    if space == "bottleneck":
        assert down is not None
        return down.T @ w
    if not lifted:
        raise ValueError("an activation-space direction can only be read through a lifted SAE (unlifted ones do not decode)")
    decoder = kernels.lifted_decoder(left[:, 1:], right[:, 1:], left[:, 0], right[:, 0])
    coefficients = decoder @ w
    return down.T @ (down @ coefficients) if down is not None else coefficients


def interaction_matrix(sae: Any, latents: Sequence[int] | Tensor) -> Tensor:
    """Normalised ``DᵀD`` restricted to ``latents`` [k, k] (the heat map of a mixed cluster)."""
    index, _ = _indices(latents, factors(sae).left.shape[0], torch.device("cpu"))
    rows = mixing_overlap(sae, index.tolist())
    return rows[:, index.to(rows.device)]


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
    left = factors(sae).left
    return kernels.unit_tokens(x.to(left.device, kernels.accumulation_dtype(x.dtype)))


def _flat(activations: Tensor) -> Tensor:
    if activations.ndim < 1:
        raise ValueError("activations must have shape [..., d_in]")
    return activations.reshape(-1, activations.shape[-1])


def latent_activations(
    sae: Any, activations: Tensor, latents: int | Sequence[int] | Tensor | None = None, *, batch_size: int = 8192
) -> Tensor:
    """Dense latents ``f`` [N, n] (before any TopK) of activations [..., d_in], batched.

    Zero and non-finite tokens get 0.
    """
    left, right, _, lifted = factors(sae)
    index, single = _indices(latents, left.shape[0], left.device)
    a, b = left[index], right[index]
    x = _flat(activations)
    out = []
    for start in range(0, x.shape[0], batch_size):
        tokens = _unit(sae, x[start : start + batch_size])
        u = tokens.unit.to(a.dtype)
        u = lift(u) if lifted else u
        f = (u @ a.T) * (u @ b.T)
        out.append(torch.where(tokens.valid.unsqueeze(-1), f, torch.zeros_like(f)))
    f = torch.cat(out) if out else torch.zeros(0, index.numel(), dtype=a.dtype, device=a.device)
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
    left, right, down, lifted = factors(sae)
    d_sae = left.shape[0]
    topk = getattr(getattr(sae, "cfg", None), "sparsity", "hoyer") == "topk"
    subset = None if latents is None else _indices(list(latents) if not isinstance(latents, Tensor) else latents, d_sae, left.device)[0]
    local = subset is not None and down is None and not topk
    index = subset if local else torch.arange(d_sae, device=left.device)
    peak = kernels.latent_peak(
        left[index, int(lifted) :],
        right[index, int(lifted) :],
        left[index, 0] if lifted else None,
        right[index, 0] if lifted else None,
    )
    threshold = float(getattr(getattr(sae, "cfg", None), "activity_threshold", 0.1))
    x = _flat(activations)
    width = index.numel()
    sums = {name: torch.zeros(width, dtype=left.dtype, device=left.device) for name in ("frequency", "energy", "mean_abs")}
    max_abs = torch.zeros(width, dtype=left.dtype, device=left.device)
    count = 0
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start : start + batch_size]
        valid = _unit(sae, chunk).valid.to(left.device)
        f = latent_activations(sae, chunk, index, batch_size=batch_size)[valid]
        sparse = f if local else _sparse_latents(sae, f)
        g = sparse if local else _coefficients_of(sae, sparse)
        sums["frequency"] += (sparse.abs() >= threshold * peak).to(f.dtype).sum(0)
        sums["energy"] += (g * f).abs().sum(0)
        sums["mean_abs"] += f.abs().sum(0)
        if f.shape[0]:
            max_abs = torch.maximum(max_abs, f.abs().max(0).values)
        count += f.shape[0]
    out = {name: total / max(count, 1) for name, total in sums.items()}
    out["max_abs"] = max_abs
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
    valid = torch.cat([_unit(sae, x[s : s + batch_size]).valid for s in range(0, N, batch_size)]) if N else torch.zeros(0, dtype=torch.bool)
    values = torch.where(valid.to(values.device), values, torch.full_like(values, math.nan)).cpu()
    chosen = _select(values, n, sign)
    selected = x[chosen.to(x.device)]
    u = _unit(sae, selected).unit
    u = (lift(u) if lifted else u).to(torch.float64).cpu()

    dim = u.shape[-1]
    n_axes = min(3, dim)
    vals = eig.eigenvalues.to(torch.float64).cpu()
    vecs = eig.eigenvectors.to(torch.float64).cpu()
    scale = vals.abs().max() if vals.numel() else torch.tensor(0.0)
    nonzero = int((vals.abs() > 1e-9 * scale).sum()) if scale > 0 else 0
    k_eig = min(n_axes, nonzero)
    axes = vecs[:, :k_eig]
    labels = [f"v{i} (λ={float(vals[i]):.3g})" for i in range(k_eig)]
    if k_eig < n_axes:
        residual = u - (u @ axes) @ axes.T
        if u.shape[0] > 1:
            residual = residual - residual.mean(0, keepdim=True)
        extra = torch.linalg.svd(residual, full_matrices=True).Vh.T if residual.shape[0] else torch.eye(dim, dtype=u.dtype)
        fill = []
        basis = axes
        for column in extra.T:
            column = column - basis @ (basis.T @ column)
            norm = column.norm()
            if norm > 1e-6:
                basis = torch.cat([basis, (column / norm).unsqueeze(-1)], dim=1)
                fill.append(basis[:, -1])
            if basis.shape[1] == n_axes:
                break
        axes = basis
        labels += [f"residual PC{i}" for i in range(len(fill))]
    axes = _fix_signs(axes)
    coordinates = u @ axes
    if coordinates.shape[1] < 3:
        coordinates = torch.cat([coordinates, torch.zeros(coordinates.shape[0], 3 - coordinates.shape[1], dtype=coordinates.dtype)], 1)
    axis_values = torch.zeros(3, dtype=torch.float64)
    axis_values[:k_eig] = vals[:k_eig]
    return TopActivations(
        indices=chosen,
        values=values[chosen],
        coordinates=coordinates.float(),
        axes=axes.float(),
        axis_eigenvalues=axis_values.float(),
        axis_labels=labels,
        tokens=None if tokens is None else [tokens[i] for i in chosen.tolist()],
        contexts=None if contexts is None else [contexts[i] for i in chosen.tolist()],
        latent=latent,
        weights=None if v is None else v.detach().cpu(),
        lifted=lifted,
    )


# ----------------------------------------------------------------------------------------
# Similarity of two SAEs
# ----------------------------------------------------------------------------------------


def cross_kernel(sae_a: Any, sae_b: Any, *, symmetric: bool = True, rows: slice | None = None) -> Tensor:
    """Inner products between the latents' operators of two SAEs [F_a, F_b] (``rows``: a block).

    ``symmetric=False``: ``K_ab = (L̃_a L̃_bᵀ) ∘ (R̃_a R̃_bᵀ)``, entries ``<l_i⊗r_i, l'_j⊗r'_j>``
    (SPEC §2). ``symmetric=True``: entries ``<Q_i, Q'_j> = ½[(l·l')(r·r') + (l·r')(r·l')]``,
    invariant to swapping a latent's ``l`` and ``r`` (which leaves ``f`` unchanged).
    """
    a, b = factors(sae_a), factors(sae_b)
    _check_comparable(a, b)
    plain, swapped = _kernel_blocks(a, b, rows if rows is not None else slice(None), symmetric)
    return plain if swapped is None else 0.5 * (plain + swapped)


def _kernel_blocks(a: Factors, b: Factors, rows: slice, swapped: bool) -> tuple[Tensor, Tensor | None]:
    """``(L̃_a L̃_bᵀ)∘(R̃_a R̃_bᵀ)`` and, when ``swapped``, ``(L̃_a R̃_bᵀ)∘(R̃_a L̃_bᵀ)``, for a block of a's rows."""
    la, ra = a.left[rows], a.right[rows]
    lb, rb = b.left.to(la), b.right.to(la)
    plain = (la @ lb.T) * (ra @ rb.T)
    return plain, ((la @ rb.T) * (ra @ lb.T) if swapped else None)


def _check_comparable(a: Factors, b: Factors) -> None:
    if a.left.shape[1] != b.left.shape[1] or a.lifted != b.lifted:
        raise ValueError(
            "the two SAEs act on different spaces "
            f"(d'={a.left.shape[1]} lifted={a.lifted} vs d'={b.left.shape[1]} lifted={b.lifted}); "
            "only SAEs with the same d_in and the same lift can be compared"
        )


def _self_norms(f: Factors, symmetric: bool) -> Tensor:
    """``<Q_i, Q_i>`` (or ``|l_i|²|r_i|²``) per latent [F]."""
    ll = f.left.pow(2).sum(-1)
    rr = f.right.pow(2).sum(-1)
    if not symmetric:
        return ll * rr
    lr = (f.left * f.right).sum(-1)
    return 0.5 * (ll * rr + lr * lr)


class _Pass(NamedTuple):
    inner: float
    """``<M_a, M_b>`` with unsymmetrised atoms."""
    inner_symmetric: float | None
    """The same with symmetrised atoms (None when not asked for)."""
    kernel_sq: float
    """``||K_ab||²_F`` of the kernel used for ``cosines`` (symmetric if asked for)."""
    cosines: np.ndarray | None


def _kernel_pass(a: Factors, b: Factors, *, symmetric: bool, cosines: bool, block_size: int) -> _Pass:
    """One tiled sweep over ``K_ab``: operator inner products (both forms) and the cosine matrix.

    ``<M_a, M_b> = ||D_a K_ab D_bᵀ||²_F`` (``D = I`` without a bottleneck). Memory:
    ``O(block_size · F_b)`` plus ``bottleneck_a · F_b`` for a mixed ``a``; sums in float64.
    """
    _check_comparable(a, b)
    F_a, F_b = a.left.shape[0], b.left.shape[0]
    forms = ("plain", "symmetric") if symmetric else ("plain",)
    totals = dict.fromkeys(forms, 0.0)
    acc: dict[str, Tensor] = {}
    kernel_sq = 0.0
    out = np.empty((F_a, F_b), dtype=np.float32) if cosines else None
    if cosines:
        na = _self_norms(a, symmetric).sqrt()
        nb = _self_norms(b, symmetric).sqrt().to(na)
    down_b = None if b.down is None else b.down.to(a.left)
    for start in range(0, F_a, block_size):
        block = slice(start, min(start + block_size, F_a))
        plain, swapped = _kernel_blocks(a, b, block, symmetric)
        kernels_by_form = {"plain": plain}
        if swapped is not None:
            kernels_by_form["symmetric"] = 0.5 * (plain + swapped)
        for form, K in kernels_by_form.items():
            if a.down is not None:
                part = a.down[:, block].to(K) @ K  # [bottleneck_a, F_b]
                acc[form] = part if form not in acc else acc[form] + part
            else:
                projected = K @ down_b.T if down_b is not None else K
                totals[form] += float(projected.to(torch.float64).pow(2).sum())
        K = kernels_by_form["symmetric" if symmetric else "plain"]
        kernel_sq += float(K.to(torch.float64).pow(2).sum())
        if out is not None:
            denominator = na[block].unsqueeze(-1) * nb.unsqueeze(0)
            cos = torch.where(
                denominator > 0, K.abs() / denominator.clamp(min=torch.finfo(K.dtype).tiny), torch.zeros_like(K)
            )
            out[block] = cos.clamp(max=1.0).float().cpu().numpy()
    for form, part in acc.items():
        projected = part @ down_b.T if down_b is not None else part
        totals[form] += float(projected.to(torch.float64).pow(2).sum())
    return _Pass(totals["plain"], totals.get("symmetric"), kernel_sq, out)


def operator_inner(sae_a: Any, sae_b: Any, *, symmetric: bool = True, block_size: int = 2048) -> float:
    """``<M_a, M_b>_F``: inner product of the two reconstruction operators on the d²-space.

    ``M = E Dᵀ D Eᵀ`` where the columns of ``E`` are the latents' operators (``l̃⊗r̃``, or
    ``Q`` when ``symmetric``) and ``D = W_down`` (the identity for vanilla/ordered), so
    ``<M_a, M_b> = ||D_a K_ab D_bᵀ||²_F`` (``||K_ab||²_F`` for two vanilla SAEs). Tiled over
    rows of ``K_ab``: memory ``O(block_size · F_b)``. Accumulated in float64.
    """
    result = _kernel_pass(factors(sae_a), factors(sae_b), symmetric=symmetric, cosines=False, block_size=block_size)
    return result.inner_symmetric if symmetric else result.inner  # type: ignore[return-value]


def _similarity(ab: float, aa: float, bb: float) -> float:
    denominator = math.sqrt(max(aa, 0.0)) + math.sqrt(max(bb, 0.0))
    return 2.0 * math.sqrt(max(ab, 0.0)) / denominator if denominator > 0 else float("nan")


def operator_similarity(sae_a: Any, sae_b: Any, *, symmetric: bool = True, block_size: int = 2048) -> float:
    """Data-free, permutation-invariant similarity of two SAEs in [0, 1] (SPEC §2).

    ``2·||K_ab|| / (||K_aa|| + ||K_bb||)`` with ``||K_ab|| = sqrt(<M_a, M_b>)``
    (:func:`operator_inner`): 1 exactly when the two reconstruction operators are equal
    (e.g. a permuted copy), and never above 1 (Cauchy–Schwarz and AM–GM; the operators
    are positive semi-definite, so ``<M_a, M_b> >= 0``). ``symmetric=False`` is the
    paper's formula verbatim; ``symmetric=True`` (default) compares the operators on
    symmetric matrices, where the target ``X = ũ⊗ũ`` lives, so a latent stored as
    ``(r, l)`` instead of ``(l, r)`` — the same ``f`` — counts as identical.
    For mixed/combined SAEs ``DᵀD`` enters as the decoder does: ``M = E DᵀD Eᵀ``.
    """
    ab = operator_inner(sae_a, sae_b, symmetric=symmetric, block_size=block_size)
    aa = operator_inner(sae_a, sae_a, symmetric=symmetric, block_size=block_size)
    bb = operator_inner(sae_b, sae_b, symmetric=symmetric, block_size=block_size)
    return _similarity(ab, aa, bb)


class Matching(NamedTuple):
    """Optimal one-to-one matching of the latents of two SAEs."""

    rows: np.ndarray
    """Latents of a (sorted)."""
    cols: np.ndarray
    """Their partners in b."""
    scores: np.ndarray
    """``|<Q_i, Q'_j>| / (||Q_i|| ||Q'_j||)`` of each pair, in [0, 1]."""


def _match(cosines: np.ndarray) -> Matching:
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cosines, maximize=True)
    return Matching(rows, cols, cosines[rows, cols])


def matched_similarity(sae_a: Any, sae_b: Any, *, symmetric: bool = True, block_size: int = 2048) -> Matching:
    """Match latents one to one maximising the summed cosines ``|K_ab| / sqrt(K_aa,ii K_bb,jj)``.

    Uses :func:`scipy.optimize.linear_sum_assignment` on the ``F_a × F_b`` cosine matrix
    (held in float32: 1 GiB at F = 16k; fast when the SAEs are near-permutations of each
    other, cubic in the worst case). Dead latents (zero operator) score 0.
    """
    result = _kernel_pass(factors(sae_a), factors(sae_b), symmetric=symmetric, cosines=True, block_size=block_size)
    assert result.cosines is not None
    return _match(result.cosines)


def compare(
    sae_a: Any, sae_b: Any, *, symmetric: bool = True, matched: bool = True, block_size: int = 2048
) -> dict[str, Any]:
    """Weight-based similarity of two SAEs, as a JSON-ready dict.

    Keys: ``operator_similarity`` (the chosen form, ``symmetric`` by default),
    ``operator_similarity_unsymmetrised`` (SPEC §2's formula verbatim) and, when
    ``matched``, ``matched_similarity`` (mean optimal-assignment cosine),
    ``matched_median``, ``matched_above_0.9`` (share of pairs with cosine > 0.9),
    ``matched_energy`` (share of ``||K_ab||²`` on the matched pairs, the authors'
    "partial"; below 1 even for a copy unless its latents are mutually orthogonal);
    plus shapes, variants and ``seconds``. Cost: three sweeps over F×F kernels
    (``a``–``b``, ``a``–``a``, ``b``–``b``), each ``O(F² d)``, plus the assignment.
    """
    start = time.perf_counter()
    a, b = factors(sae_a), factors(sae_b)
    _check_comparable(a, b)
    ab = _kernel_pass(a, b, symmetric=True, cosines=matched, block_size=block_size)
    aa = _kernel_pass(a, a, symmetric=True, cosines=False, block_size=block_size)
    bb = _kernel_pass(b, b, symmetric=True, cosines=False, block_size=block_size)
    plain = _similarity(ab.inner, aa.inner, bb.inner)
    sym = _similarity(ab.inner_symmetric or 0.0, aa.inner_symmetric or 0.0, bb.inner_symmetric or 0.0)
    result: dict[str, Any] = {
        "symmetric": symmetric,
        "operator_similarity": sym if symmetric else plain,
        "operator_similarity_symmetrised": sym,
        "operator_similarity_unsymmetrised": plain,
    }
    if matched:
        cos = ab.cosines
        if not symmetric:  # the pass above built symmetric cosines; redo with the plain kernel
            cos = _kernel_pass(a, b, symmetric=False, cosines=True, block_size=block_size).cosines
        assert cos is not None
        match = _match(cos)
        n = match.scores.size
        result["matched_similarity"] = float(match.scores.mean()) if n else float("nan")
        result["matched_median"] = float(np.median(match.scores)) if n else float("nan")
        result["matched_above_0.9"] = float((match.scores > 0.9).mean()) if n else float("nan")
        # |K_ij| = cos_ij · ||atom_i|| ||atom'_j||, so the matched entries need no second sweep.
        na = _self_norms(a, symmetric).sqrt().double().cpu().numpy()
        nb = _self_norms(b, symmetric).sqrt().double().cpu().numpy()
        on_match = float(np.sum((match.scores.astype(np.float64) * na[match.rows] * nb[match.cols]) ** 2))
        total = ab.kernel_sq if symmetric else float(
            sum(
                float(_kernel_blocks(a, b, slice(s, s + block_size), False)[0].double().pow(2).sum())
                for s in range(0, a.left.shape[0], block_size)
            )
        )
        result["matched_energy"] = on_match / total if total > 0 else float("nan")
    result.update(
        d_in=a.left.shape[1] - int(a.lifted),
        lifted=a.lifted,
        d_sae_a=a.left.shape[0],
        d_sae_b=b.left.shape[0],
        variant_a=_variant(sae_a),
        variant_b=_variant(sae_b),
        seconds=time.perf_counter() - start,
    )
    return result


def _variant(sae: Any) -> str:
    cfg = getattr(sae, "cfg", None)
    variant = getattr(cfg, "variant", None)
    if variant is None:
        variant = "mixed" if _param(sae, "W_down") is not None else "vanilla"
    return str(variant)


# ----------------------------------------------------------------------------------------
# One latent, written to disk
# ----------------------------------------------------------------------------------------


def _strict_json(value: Any) -> Any:
    """NaN/inf → None, so the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value


def _top_dims(vector: Tensor, lifted: bool, k: int) -> dict[str, Any]:
    body = vector[1:] if lifted else vector
    k = min(k, body.shape[0])
    order = body.abs().topk(k).indices
    out: dict[str, Any] = {"top_dims": [{"dim": int(i), "value": float(body[i])} for i in order]}
    if lifted:
        out["bias"] = float(vector[0])
    return out


def analyze_latent(
    sae: Any,
    latent: int,
    activations: Tensor,
    contexts: Sequence[str] | None = None,
    out_dir: str | Path = ".",
    *,
    tokens: Sequence[str] | None = None,
    n: int = 500,
    mode: Literal["latent", "cluster"] | None = None,
    cluster_size: int = 10,
    top_dims: int = 10,
    n_listed: int = 25,
    png: bool = True,
) -> dict[str, Any]:
    """Analyse one latent and write ``latent_J.html``, ``latent_J.png`` and ``latent_J.json``.

    Args:
        latent: J.
        activations: ``[..., d_in]`` raw activations to find its top tokens in.
        contexts, tokens: per-token strings (length N) shown on hover and in the JSON.
        mode: ``"latent"`` (the rank-2 form ``Q_J``) or ``"cluster"`` (``Σ v_i Q_i`` over
            J's ``cluster_size`` strongest partners in the normalised ``DᵀD``, as the
            authors visualise mixed models). Default: cluster for mixed/combined, else latent.
        n: tokens in the manifold view (half highest, half lowest activations).
        top_dims: input dimensions listed per eigenvector.
        n_listed: tokens listed at each end in the JSON.

    Returns the JSON content, with the written paths under ``files`` and also as the
    top-level keys ``html``, ``png`` (when ``png``) and ``json``. The HTML holds the
    interactive 3D manifold, the spectrum and (mixed) the interaction heat map; it embeds
    plotly.js, so it opens offline.
    """
    from sae_bilinear import plots

    left, _, down, lifted = factors(sae)
    d_sae = left.shape[0]
    index, _ = _indices(latent, d_sae, torch.device("cpu"))
    latent = int(index[0])
    if mode is None:
        mode = "cluster" if down is not None else "latent"
    if mode == "cluster" and down is None:
        raise ValueError("mode='cluster' needs a mixed or combined SAE (it has no W_down)")
    if mode not in ("latent", "cluster"):
        raise ValueError(f"mode must be 'latent' or 'cluster', got {mode!r}")

    if mode == "latent":
        weights = latent_weights(sae, latent)
        eig = latent_spectrum(sae, latent)
        top = top_activations(sae, activations, latent, n=n, tokens=tokens, contexts=contexts)
    else:
        weights = cluster_weights(sae, latent, size=cluster_size)
        eig = composite_spectrum(sae, weights)
        top = top_activations(sae, activations, weights=weights, n=n, tokens=tokens, contexts=contexts)
    stats = composite_stats(sae, weights, activations, eigenvalues=eig.eigenvalues)
    usage = latent_usage(sae, activations, [latent])
    members = weights.nonzero(as_tuple=True)[0]
    members = members[weights[members].abs().argsort(descending=True)]

    values = eig.eigenvalues.detach().cpu().double()
    vectors = eig.eigenvectors.detach().cpu().double()
    scale = values.abs().max() if values.numel() else torch.tensor(0.0)
    kept = values.abs() > 1e-9 * scale if scale > 0 else torch.zeros_like(values, dtype=torch.bool)
    listed_values = values[kept][:64]

    order = top.values.argsort(descending=True)

    def listing(ids: Tensor) -> list[dict[str, Any]]:
        rows = []
        for i in ids.tolist():
            rows.append(
                {
                    "index": int(top.indices[i]),
                    "token": None if top.tokens is None else top.tokens[i],
                    "context": None if top.contexts is None else top.contexts[i],
                    "activation": float(top.values[i]),
                    "coordinates": [float(c) for c in top.coordinates[i]],
                }
            )
        return rows

    report: dict[str, Any] = {
        "latent": latent,
        "mode": mode,
        "variant": _variant(sae),
        "lifted": lifted,
        "d_in": left.shape[1] - int(lifted),
        "d_sae": d_sae,
        "members": [{"latent": int(j), "weight": float(weights[j])} for j in members],
        "eigenvalues": [float(x) for x in listed_values],
        "eigenvectors": [
            {"eigenvalue": float(values[i]), **_top_dims(vectors[:, i], lifted, top_dims)}
            for i in range(min(3, int(kept.sum())))
        ],
        "axes": top.axis_labels,
        "stats": asdict(stats),
        "usage": {name: float(value[0]) for name, value in usage.items()},
        "top_tokens": listing(order[: n_listed]),
        "bottom_tokens": listing(order.flip(0)[: n_listed]),
    }

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"latent_{latent}"
    title = f"latent {latent}" + (f" (cluster of {len(members)})" if mode == "cluster" else "")
    interactions = None
    if down is not None:
        ids = members.tolist() if mode == "cluster" else cluster_weights(sae, latent, cluster_size).nonzero(as_tuple=True)[0].tolist()
        interactions = (interaction_matrix(sae, ids).cpu(), [str(i) for i in ids])
    figures = [plots.manifold_figure(top, title=f"{title}: manifold"), plots.spectrum_figure(values[kept], title=f"{title}: spectrum")]
    if interactions is not None:
        figures.append(plots.interaction_figure(interactions[0], interactions[1], title=f"{title}: normalised DᵀD"))
    summary = (
        f"{report['variant']} bilinear SAE, d_in={report['d_in']}, d_sae={d_sae}, lifted={lifted}. "
        f"Effective rank {stats.effective_rank:.2f}, importance {stats.importance:.3g}, "
        f"top-3 share {stats.captured:.2f}, Hoyer density {stats.density if stats.density is not None else float('nan'):.3f}, "
        f"active on {100 * report['usage']['frequency']:.2f}% of tokens."
    )
    files = {"html": str(plots.write_html(figures, stem.with_suffix(".html"), title=title, description=summary))}
    if png:
        static = plots.latent_png_figure(top, values[kept], interactions=interactions, title=title)
        files["png"] = str(plots.write_png(static, stem.with_suffix(".png")))
    files["json"] = str(stem.with_suffix(".json"))
    report["files"] = files
    report.update(files)  # also top-level: report["html"], report["png"], report["json"]
    stem.with_suffix(".json").write_text(json.dumps(_strict_json(report), indent=1, allow_nan=False))
    return report
