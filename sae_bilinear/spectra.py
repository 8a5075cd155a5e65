"""Reading a bilinear SAE from its weights alone: factors, spectra, composite latents.

Latent j is the quadratic form ``f_j(ũ) = ũᵀ Q_j ũ`` with the symmetric matrix
``Q_j = (l̃_j r̃_jᵀ + r̃_j l̃_jᵀ)/2`` (``ũ = [1, u]`` and ``l̃ = [c·b_l, l]`` when lifted: the
bias, times the SAE's ``lift_scale`` c, is coordinate 0; the model's ``ũ = [c, u]`` with rows
``[b_l, l]`` gives the same ``f``, so every form here is one over ``[1, u]``). ``Q_j`` has
rank ≤ 2; its two eigenpairs have a closed form (:func:`rank2_spectrum`). A *composite* latent
``Σ_i v_i Q_i`` (a cluster of a mixed model's ``DᵀD``, a bottleneck row, or any direction read
through the SAE) has a full spectrum (:func:`spectrum`).

Every function here takes an SAE (a :class:`~sae_bilinear.BilinearSAE`, a training SAE, or
any object with ``W_left``, ``W_right`` and optionally ``b_left``, ``b_right``, ``W_down``) and
needs no data. What needs activations lives in :mod:`sae_bilinear.analysis`, which also
re-exports every public name of this module (``from sae_bilinear.analysis import spectrum``
keeps working).

Conventions: eigenvalues are sorted by ``|λ|``, largest first; eigenvectors are the
*columns* of ``eigenvectors`` (as in :func:`torch.linalg.eigh`). All arithmetic runs in
float32 at least (float64 inputs stay float64).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

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
        c = lift_scale(sae)  # folded into the bias column: the forms act on [1, u] whatever c
        left = torch.cat([c * b_left.to(dtype).unsqueeze(-1), left], dim=-1)
        right = torch.cat([c * b_right.to(dtype).unsqueeze(-1), right], dim=-1)
    down = _param(sae, "W_down")
    return Factors(left, right, None if down is None else down.to(dtype), lifted)


def is_lifted(sae: Any) -> bool:
    return _param(sae, "b_left") is not None


def lift_scale(sae: Any) -> float:
    """``c`` of a lifted SAE's ``ũ = [c, u]`` (``cfg.lift_scale``; 1.0 for objects without one)."""
    return kernels.check_lift_scale(getattr(getattr(sae, "cfg", None), "lift_scale", 1.0))


def latent_indices(idx: int | Sequence[int] | Tensor | None, d_sae: int, device: torch.device) -> tuple[Tensor, bool]:
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
    index, single = latent_indices(idx, left.shape[0], left.device)
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
    index, single = latent_indices(idx, left.shape[0], left.device)
    result = rank2_spectrum(left[index], right[index])
    if single:
        return Spectrum(result.eigenvalues[0], result.eigenvectors[0])
    return result


def spectrum(matrix: Tensor, k: int | None = None, *, dtype: torch.dtype = torch.float64) -> Spectrum:
    """Full eigendecomposition of symmetric ``matrix`` [..., d, d] (symmetrised first), ``|λ|``-sorted.

    ``k`` keeps only the ``k`` largest ``|λ|``. Runs in ``dtype``: float64 by default (d ~
    1000 takes well under a second on a CPU); float32 halves the time, for the atlas's
    thousands of composites (eigenvalues then carry ~1e-6 relative error).
    """
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    m = matrix.to(dtype)
    m = 0.5 * (m + m.transpose(-1, -2))
    values, vectors = torch.linalg.eigh(m)
    order = values.abs().argsort(dim=-1, descending=True, stable=True)
    values = values.gather(-1, order)
    vectors = vectors.gather(-1, order.unsqueeze(-2).expand_as(vectors))
    if k is not None:
        values, vectors = values[..., :k], vectors[..., :k]
    out_dtype = kernels.accumulation_dtype(matrix.dtype)
    return Spectrum(values.to(out_dtype), fix_signs(vectors).to(out_dtype))


def fix_signs(vectors: Tensor) -> Tensor:
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


def composite_matrices(sae: Any, weights: Tensor) -> Tensor:
    """``C_b = Σ_i v_bi Q_i`` [b, d', d'] for a batch of weight vectors ``weights`` [b, d_sae].

    The batched :func:`composite_matrix` (one matmul per batch; memory ``b · d_sae · d'``).
    """
    left, right, _, _ = factors(sae)
    v = weights.to(device=left.device, dtype=left.dtype)
    if v.ndim != 2 or v.shape[1] != left.shape[0]:
        raise ValueError(f"weights must be [b, d_sae={left.shape[0]}], got {tuple(v.shape)}")
    half = (v.unsqueeze(-1) * left).transpose(1, 2) @ right  # [b, d', d']: Lᵀ diag(v_b) R
    return 0.5 * (half + half.transpose(1, 2))


def composite_spectrum(sae: Any, weights: Tensor, k: int | None = None) -> Spectrum:
    """Full spectrum of :func:`composite_matrix` (``k``: keep the ``k`` largest ``|λ|``)."""
    return spectrum(composite_matrix(sae, weights), k=k)


def latent_weights(sae: Any, latent: int) -> Tensor:
    """One-hot weights: the composite of a single latent is ``Q_latent`` itself."""
    d_sae = factors(sae).left.shape[0]
    index, _ = latent_indices(latent, d_sae, torch.device("cpu"))
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
    index, single = latent_indices(rows, down.shape[1], down.device)
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
                + (
                    "ambiguous, pass space=" + " or ".join(repr(m) for m in matches)
                    if matches
                    else f"expected one of {expected}"
                )
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
        raise ValueError(
            "an activation-space direction can only be read through a lifted SAE (unlifted ones do not decode)"
        )
    c = lift_scale(sae)  # factors() holds c·b; the decoder wants b and c
    decoder = kernels.lifted_decoder(left[:, 1:], right[:, 1:], left[:, 0] / c, right[:, 0] / c, lift_scale=c)
    coefficients = decoder @ w
    return down.T @ (down @ coefficients) if down is not None else coefficients


def interaction_matrix(sae: Any, latents: Sequence[int] | Tensor) -> Tensor:
    """Normalised ``DᵀD`` restricted to ``latents`` [k, k] (the heat map of a mixed cluster)."""
    index, _ = latent_indices(latents, factors(sae).left.shape[0], torch.device("cpu"))
    rows = mixing_overlap(sae, index.tolist())
    return rows[:, index.to(rows.device)]


def top_dims(vector: Tensor, lifted: bool, k: int) -> dict[str, Any]:
    """The ``k`` largest-magnitude input dimensions of an eigenvector [d'] (and its bias entry).

    ``{"top_dims": [{"dim", "value"}, ...]}`` plus ``"bias"`` (coordinate 0) when lifted.
    """
    body = vector[1:] if lifted else vector
    k = min(k, body.shape[0])
    order = body.abs().topk(k).indices
    out: dict[str, Any] = {"top_dims": [{"dim": int(i), "value": float(body[i])} for i in order]}
    if lifted:
        out["bias"] = float(vector[0])
    return out


def variant_name(sae: Any) -> str:
    """The SAE's variant (``cfg.variant``; inferred from ``W_down`` for a config-less object)."""
    cfg = getattr(sae, "cfg", None)
    variant = getattr(cfg, "variant", None)
    if variant is None:
        variant = "mixed" if _param(sae, "W_down") is not None else "vanilla"
    return str(variant)


def form_sketch(sae: Any, dims: int = 128, seed: int = 0) -> Tensor:
    """A random linear sketch of every ``Q_j`` [d_sae, dims]: ``S_jr = a_rᵀ Q_j b_r`` (data-free).

    With ``a_r, b_r`` independent standard normal vectors, ``E[S_i·S_j] = dims·<Q_i, Q_j>``
    (for any matrices ``X, Y``: ``E[(aᵀXb)(aᵀYb)] = <X, Y>``), so the sketch keeps the
    geometry of the forms in the d'²-space at ``O(d_sae·dims·d')`` cost, never forming a
    matrix. Linear in ``Q``: the sketch of a composite ``Σ_j v_j Q_j`` is ``v @ S``. Used for
    the atlas's 2-D map. Deterministic for a given ``seed``.
    """
    if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
        raise ValueError(f"dims must be a positive int, got {dims!r}")
    left, right, _, _ = factors(sae)
    generator = torch.Generator().manual_seed(seed)
    a = torch.randn(left.shape[1], dims, generator=generator, dtype=torch.float64).to(left)
    b = torch.randn(left.shape[1], dims, generator=generator, dtype=torch.float64).to(left)
    # a ᵀ Q b with Q = (l rᵀ + r lᵀ)/2.
    return 0.5 * ((left @ a) * (right @ b) + (right @ a) * (left @ b))


__all__ = [
    "MATRIX_ELEMENT_LIMIT",
    "Factors",
    "Spectrum",
    "bottleneck_weights",
    "captured_share",
    "cluster_weights",
    "composite_matrices",
    "composite_matrix",
    "composite_spectrum",
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
    "latent_indices",
    "latent_matrices",
    "latent_spectrum",
    "latent_weights",
    "lift",
    "lift_scale",
    "mixing_overlap",
    "rank2_spectrum",
    "spectrum",
    "subspace_angles",
    "top_dims",
    "variant_name",
]
