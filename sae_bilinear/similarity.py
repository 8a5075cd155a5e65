"""How alike two bilinear SAEs are, from their weights alone (exact, data-free, permutation-invariant).

Each latent is an operator on the d'²-space (``l̃⊗r̃``, or its symmetric part ``Q``); the
cross kernel ``K_ab`` holds the inner products between the two SAEs' operators
(:func:`cross_kernel`). Two scores come from it:

- the reconstruction operators ``M = E DᵀD Eᵀ`` compared as wholes:
  ``2·sqrt(<M_a, M_b>) / (||M_a|| + ||M_b||)`` (:func:`operator_similarity`), invariant to any
  permutation of latents and rotation of a bottleneck;
- the paper's score ``2·||K_ab||_F / (||K_aa||_F + ||K_bb||_F)`` on the plain kernel
  (:func:`paper_similarity`; SPEC §2), which equals the unsymmetrised operator similarity for
  vanilla/ordered SAEs and ignores ``W_down`` for mixed/combined ones;
- a one-to-one matching of latents by cosine (:func:`matched_similarity`).

:func:`compare` reports them all as one JSON-ready dict. Every sweep over ``K_ab`` is tiled
(memory ``O(block · F_b)``) and accumulated in float64.
"""

from __future__ import annotations

import math
import time
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from sae_bilinear.errors import ConfigError
from sae_bilinear.spectra import Factors, factors, variant_name


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
    plain_kernel_sq: float
    """``||K_ab||²_F`` of the plain kernel ``(L̃_a L̃_bᵀ)∘(R̃_a R̃_bᵀ)`` (no ``W_down``): the paper's."""
    cosines: np.ndarray | None


def _kernel_pass(a: Factors, b: Factors, *, symmetric: bool, cosines: bool, block_size: int) -> _Pass:
    """One tiled sweep over ``K_ab``: operator inner products (both forms) and the cosine matrix.

    ``<M_a, M_b> = ||D_a K_ab D_bᵀ||²_F`` (``D = I`` without a bottleneck). Memory:
    ``O(block_size · F_b)`` plus ``bottleneck_a · F_b`` for a mixed ``a``; sums in float64.
    """
    _check_comparable(a, b)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size must be a positive int, got {block_size!r}")
    F_a, F_b = a.left.shape[0], b.left.shape[0]
    forms = ("plain", "symmetric") if symmetric else ("plain",)
    totals = dict.fromkeys(forms, 0.0)
    acc: dict[str, Tensor] = {}
    kernel_sq = plain_kernel_sq = 0.0
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
                totals[form] += float(projected.to(torch.float64).pow(2).sum())  # pyright: ignore[reportArgumentType]
        K = kernels_by_form["symmetric" if symmetric else "plain"]
        kernel_sq += float(K.to(torch.float64).pow(2).sum())
        plain_kernel_sq += float(plain.to(torch.float64).pow(2).sum())
        if out is not None:
            denominator = na[block].unsqueeze(-1) * nb.unsqueeze(0)
            cos = torch.where(
                denominator > 0, K.abs() / denominator.clamp(min=torch.finfo(K.dtype).tiny), torch.zeros_like(K)
            )
            out[block] = cos.clamp(max=1.0).float().cpu().numpy()
    for form, part in acc.items():
        projected = part @ down_b.T if down_b is not None else part
        totals[form] += float(projected.to(torch.float64).pow(2).sum())  # pyright: ignore[reportArgumentType]
    return _Pass(totals["plain"], totals.get("symmetric"), kernel_sq, plain_kernel_sq, out)


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
    are positive semi-definite, so ``<M_a, M_b> >= 0``). ``symmetric=False`` uses the plain
    atoms ``l̃⊗r̃`` (for vanilla/ordered SAEs this is the paper's formula,
    :func:`paper_similarity`); ``symmetric=True`` (default) compares the operators on
    symmetric matrices, where the target ``X = ũ⊗ũ`` lives, so a latent stored as
    ``(r, l)`` instead of ``(l, r)`` — the same ``f`` — counts as identical.
    For mixed/combined SAEs ``DᵀD`` enters as the decoder does: ``M = E DᵀD Eᵀ``.
    """
    ab = operator_inner(sae_a, sae_b, symmetric=symmetric, block_size=block_size)
    aa = operator_inner(sae_a, sae_a, symmetric=symmetric, block_size=block_size)
    bb = operator_inner(sae_b, sae_b, symmetric=symmetric, block_size=block_size)
    return _similarity(ab, aa, bb)


def paper_similarity(sae_a: Any, sae_b: Any, *, block_size: int = 2048) -> float:
    """The paper's score ``2·||K_ab||_F / (||K_aa||_F + ||K_bb||_F)`` (SPEC §2), in [0, 1].

    ``K_ab = (L̃_a L̃_bᵀ) ∘ (R̃_a R̃_bᵀ)`` is the plain cross kernel (entries
    ``<l_i⊗r_i, l'_j⊗r'_j>``); ``W_down`` plays no part. For vanilla/ordered SAEs it equals
    ``operator_similarity(symmetric=False)``; it is the number to hold against the paper's
    "> 98 % between runs".
    """
    a, b = factors(sae_a), factors(sae_b)
    passes = [
        _kernel_pass(x, y, symmetric=False, cosines=False, block_size=block_size) for x, y in ((a, b), (a, a), (b, b))
    ]
    return _similarity(*(p.plain_kernel_sq for p in passes))


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
    ``operator_similarity_symmetrised`` and ``operator_similarity_unsymmetrised`` (both
    forms of :func:`operator_similarity`), ``paper_similarity`` (SPEC §2's formula verbatim,
    :func:`paper_similarity`; equal to the unsymmetrised one for vanilla/ordered) and, when
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
        "paper_similarity": _similarity(ab.plain_kernel_sq, aa.plain_kernel_sq, bb.plain_kernel_sq),
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
        total = ab.kernel_sq if symmetric else ab.plain_kernel_sq
        result["matched_energy"] = on_match / total if total > 0 else float("nan")
    result.update(
        d_in=a.left.shape[1] - int(a.lifted),
        lifted=a.lifted,
        d_sae_a=a.left.shape[0],
        d_sae_b=b.left.shape[0],
        variant_a=variant_name(sae_a),
        variant_b=variant_name(sae_b),
        seconds=time.perf_counter() - start,
    )
    return result


class Neighbours(NamedTuple):
    """Nearest forms of each latent (or composite) of one SAE, by the cosine of their operators."""

    indices: Tensor
    """``[n, k]`` the neighbours, closest (largest ``|cos|``) first."""
    cosines: Tensor
    """``[n, k]`` signed ``<Q_i, Q_j> / (||Q_i|| ||Q_j||)`` (−1: the same form, sign flipped)."""


def _top_by_magnitude(cos: Tensor, rows: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` largest ``|cos|`` per row, the row's own column (``rows``) excluded."""
    cos = cos.clone()
    cos[torch.arange(cos.shape[0], device=cos.device), rows] = 0.0
    top = cos.abs().topk(k, dim=-1).indices
    return top, cos.gather(-1, top)


def nearest(sae: Any, k: int = 8, *, composites: bool = False, block_size: int = 1024) -> Neighbours:
    """Each latent's ``k`` nearest latents of the same SAE by ``|cos(Q_i, Q_j)|`` (data-free).

    ``composites=True`` does the same for the bottleneck rows of a mixed/combined SAE, whose
    forms are ``C_r = Σ_j D_rj Q_j`` (so ``<C_r, C_s> = (D K Dᵀ)_rs`` with ``K`` the
    symmetric kernel). Tiled over rows of ``K``: memory ``O(block_size · F)``; cost ``O(F² d)``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive int, got {k!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size must be a positive int, got {block_size!r}")
    f = factors(sae)
    F = f.left.shape[0]
    if composites and f.down is None:
        raise ConfigError("composites=True needs a mixed or combined SAE (this one has no W_down)")
    n = f.down.shape[0] if composites and f.down is not None else F
    k = min(k, n - 1)
    if k < 1:
        empty = torch.zeros(n, 0)
        return Neighbours(empty.long(), empty)
    if composites:
        assert f.down is not None
        acc = torch.zeros(f.down.shape[0], F, dtype=f.left.dtype, device=f.left.device)
        for start in range(0, F, block_size):
            block = slice(start, min(start + block_size, F))
            plain, swapped = _kernel_blocks(f, f, block, True)
            assert swapped is not None
            acc += f.down[:, block] @ (0.5 * (plain + swapped))
        gram = acc @ f.down.T
        norms = gram.diagonal().clamp(min=0).sqrt()
        cos = gram / (norms.unsqueeze(-1) * norms.unsqueeze(0)).clamp(min=torch.finfo(gram.dtype).tiny)
        top, values = _top_by_magnitude(cos, torch.arange(n, device=cos.device), k)
        return Neighbours(top.cpu(), values.float().cpu())
    norms = _self_norms(f, True).sqrt()
    tops, values = [], []
    for start in range(0, F, block_size):
        block = slice(start, min(start + block_size, F))
        plain, swapped = _kernel_blocks(f, f, block, True)
        assert swapped is not None
        denominator = (norms[block].unsqueeze(-1) * norms.unsqueeze(0)).clamp(min=torch.finfo(norms.dtype).tiny)
        top, value = _top_by_magnitude(
            0.5 * (plain + swapped) / denominator, torch.arange(block.start, block.stop, device=norms.device), k
        )
        tops.append(top.cpu())
        values.append(value.float().cpu())
    return Neighbours(torch.cat(tops), torch.cat(values))


__all__ = [
    "Matching",
    "Neighbours",
    "compare",
    "cross_kernel",
    "matched_similarity",
    "nearest",
    "operator_inner",
    "operator_similarity",
    "paper_similarity",
]
