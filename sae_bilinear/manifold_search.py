"""Find circles among an SAE's latents without knowing what to look for.

A bilinear latent ``f_j = (l̃_j·ũ)(r̃_j·ũ)`` whose left factor lies near a direction ``m`` that
all tokens of a feature share reads, on those tokens, ``(m·ũ)(r̃_j·ũ) ≈ const · r̃_j·u``: *one
coordinate* of whatever the tokens do in the direction of ``r̃_j``. Two such latents with
different right factors carry two coordinates: a circle the tokens move on (the days of the
week, the months of the year) appears as a *ring* when the tokens are plotted in the plane of
the pair's activations ``(f_i, f_j)``. A signed pair can draw the whole ring, where
non-negative linear latents must tile it with arcs.

:func:`find_circles` searches for such pairs from the weights and unlabelled activations only:

1. **Candidates**: pairs that fire on the same tokens with uncorrelated values (cosine of
   ``f_i²`` and ``f_j²`` over the tokens, times ``1 − corr(f_i, f_j)²``), and pairs that share
   a factor (``|cos|`` of one factor of each, times the sine between the other two).
2. **Ring score** (:func:`ring_fit`): in the standardised ``(f_i, f_j)`` plane, the tokens far
   from the bulk make the ring (centre: a least-squares circle fit; radius: their median distance); the score
   is the product of its angular *coverage* (entropy of the angles around the centre), its
   *thinness* (1 − median |r − R|/R), its *hole* (a dip of the density of all tokens between
   the centre and the ring; a Gaussian blob has none) and *bulk* (the tokens the pair ignores sit
   at the centre or on the ring). A line, an arc, a blob, a blob's tail all score low.
3. **Plane** of a found pair: the span of the two latents' gradients at the ring tokens' mean
   (in activation space): the plane the circle lives in, comparable with a known plane through
   :func:`sae_bilinear.analysis.subspace_angles`.

:func:`draw_circle` draws a found pair (PNG: the tokens in the pair's plane, the ring
coloured by angle, and the most frequent token of each arc written next to it, so a reader
sees "Monday, Tuesday, …" going round) and :func:`circle_page` the 3D view of the pair's
composite ``Q_i + Q_j`` as an interactive HTML page.

The module also holds the measurements the real-manifold experiment scores a known circle with
(:func:`plane_angles`, :func:`cyclic_order`, :func:`best_pairs`, :func:`greedy_readout`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from sae_bilinear import analysis, plots
from sae_bilinear.errors import ConfigError

# ----------------------------------------------------------------------------------------
# Rings in a plane
# ----------------------------------------------------------------------------------------


class RingFit(NamedTuple):
    """How much a 2D point cloud looks like a ring (see :func:`ring_fit`)."""

    score: float
    """``coverage · thinness · hole · bulk`` in [0, 1]."""
    coverage: float
    """Entropy of the ring points' angles around the centre (``bins`` bins), over ``log bins``."""
    thinness: float
    """``1 − median|r − R| / R`` of the ring points, clipped to [0, 1]."""
    hole: float
    """``1 − min density(0.2R..0.8R) / density(0.8R..1.2R)`` of all points around the centre
    (densities per unit area, in rings of width 0.1R), clipped to [0, 1]."""
    bulk: float
    """Whether the bulk (the median of all points: the tokens the pair ignores) sits at the
    ring's centre or on the ring, as it does for a circle drawn by a pair of latents:
    ``max(1 − d/R, 1 − |d − R|/R)`` clipped to [0, 1], ``d`` its distance from the centre.
    Junk "rings" fitted to the scattered tail of a blob have the blob outside them."""
    center: tuple[float, float]
    """Centre: the least-squares circle through the ring points (standardised units)."""
    radius: float
    """Median distance R of the ring points from the centre."""
    n_ring: int
    """Points far from the bulk, which the ring is made of."""


EMPTY_RING = RingFit(0.0, 0.0, 0.0, 0.0, 0.0, (0.0, 0.0), 0.0, 0)


def standardise(points: Float[Tensor, "n 2"]) -> Tensor:
    """Each column divided by its root mean square (a pair of latents on a common scale)."""
    rms = points.pow(2).mean(0).sqrt()
    return points / rms.clamp(min=torch.finfo(points.dtype).tiny)


def ring_points(points: Float[Tensor, "n 2"], threshold: float = 0.4, quantile: float = 0.999) -> Tensor:
    """Mask of points far from the bulk: distance from the median point above ``threshold``
    times the ``quantile`` distance (the bulk of unrelated tokens sits near the median)."""
    center = points.median(dim=0).values
    r = (points - center).norm(dim=-1)
    return r > threshold * torch.quantile(r, quantile)


def fit_circle(points: Float[Tensor, "n 2"]) -> tuple[Tensor, float]:
    """Algebraic (Kåsa) least-squares circle through ``points``: ``(centre [2], radius)``."""
    p = points.to(torch.float64)
    design = torch.cat([p, torch.ones(p.shape[0], 1, dtype=p.dtype)], dim=1)
    target = p.pow(2).sum(-1, keepdim=True)
    solution = torch.linalg.lstsq(design, target).solution.squeeze(-1)
    center = solution[:2] / 2
    radius_sq = solution[2] + center.pow(2).sum()
    return center, float(radius_sq.clamp(min=0).sqrt())


def ring_fit(points: Float[Tensor, "n 2"], *, bins: int = 12, min_points: int = 12, threshold: float = 0.4) -> RingFit:
    """Ring score of a 2D point cloud (e.g. the standardised activations of a pair of latents).

    The points far from the bulk (:func:`ring_points`) make the ring; its centre is the
    least-squares circle through them (:func:`fit_circle`; a ring around the bulk and a ring
    through it, whose arc near the bulk is missing, are both found) and its radius R their
    median distance from it. A ring has its points all around the centre (coverage),
    at one radius (thinness), a dip in the density of *all* points somewhere between the
    centre and the ring (hole: a Gaussian blob's density only falls with the radius), and the
    bulk of the points at the centre or on the ring (bulk).
    """
    if points.ndim != 2 or points.shape[1] != 2:
        raise ConfigError(f"points must be [n, 2], got {tuple(points.shape)}")
    p = points.to(torch.float64)
    p = p[torch.isfinite(p).all(-1)]
    if p.shape[0] < min_points:
        return EMPTY_RING
    ring = ring_points(p, threshold)
    if int(ring.sum()) < min_points:
        return EMPTY_RING
    center, _ = fit_circle(p[ring])
    r_all = (p - center).norm(dim=-1)
    r = r_all[ring]
    radius = float(r.median())
    if not radius > 0:
        return EMPTY_RING
    offset = p[ring] - center
    angles = torch.atan2(offset[:, 1], offset[:, 0])
    hist = torch.histc(angles, bins=bins, min=-math.pi, max=math.pi)
    prob = hist / hist.sum()
    coverage = float(-(prob[prob > 0] * prob[prob > 0].log()).sum()) / math.log(bins)
    thinness = max(0.0, 1.0 - float((r - radius).abs().median()) / radius)
    scaled = r_all / radius

    def density(low: float, high: float) -> float:
        return float(((scaled >= low) & (scaled < high)).sum()) / (high**2 - low**2)

    band = density(0.8, 1.2)
    inside = min(density(0.2 + 0.1 * k, 0.3 + 0.1 * k) for k in range(6))
    hole = min(1.0, max(0.0, 1.0 - inside / band)) if band > 0 else 0.0
    distance = float((p.median(dim=0).values - center).norm()) / radius
    bulk = min(1.0, max(0.0, 1.0 - distance, 1.0 - abs(distance - 1.0)))
    return RingFit(
        coverage * thinness * hole * bulk,
        coverage,
        thinness,
        hole,
        bulk,
        (float(center[0]), float(center[1])),
        radius,
        int(ring.sum()),
    )


class TypeRing(NamedTuple):
    """A ring drawn by token *types*: the mean point of each frequent token far from the bulk."""

    score: float
    """``coverage · thinness · purity`` in [0, 1] (0 with fewer than ``min_types`` types)."""
    coverage: float
    """``1 − (largest angular gap between consecutive types)/(2π)`` around the fitted centre."""
    thinness: float
    """``1 − median|r − R|/R`` of the type means."""
    purity: float
    """Share of the tokens far from the bulk (:func:`ring_points`) whose type is on the ring: a
    circle of a few token types owns the pair's far tokens, a coincidence of many types does not."""
    types: list[int]
    """The token ids on the ring, in angular order."""
    means: Tensor
    """``[len(types), 2]`` their mean points, same order."""
    center: tuple[float, float]
    radius: float


EMPTY_TYPE_RING = TypeRing(0.0, 0.0, 0.0, 0.0, [], torch.zeros(0, 2), (0.0, 0.0), 0.0)


def type_ring(
    points: Float[Tensor, "n 2"],
    token_ids: Tensor,
    *,
    min_count: int = 5,
    min_types: int = 5,
    max_types: int = 24,
    threshold: float = 0.25,
) -> TypeRing:
    """Ring score of the *token types* a pair of latents separates (no labels: token ids only).

    Each token type seen at least ``min_count`` times gets its mean point; the types whose mean
    lies farther than ``threshold`` × the farthest type mean from the bulk (the median point),
    and farther than a fifth of the tokens' 99.9 % distance — at most ``max_types``, farthest
    first — are fitted with a circle. A circle of token types
    (days, months, hours, …) has them all around the centre (coverage: no big angular gap), at
    one radius (thinness), and owns the tokens the pair moves far from the bulk (purity).
    Averaging over a type's tokens removes the token-level noise that hides such a ring in the
    raw scatter.
    """
    p = points.to(torch.float64)
    ids = token_ids.reshape(-1).long()
    if ids.shape[0] != p.shape[0]:
        raise ConfigError(f"token_ids has {ids.shape[0]} entries but there are {p.shape[0]} points")
    types, inverse, counts = torch.unique(ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(types.shape[0], 2, dtype=p.dtype).index_add_(0, inverse, p)
    means = sums / counts.unsqueeze(1)
    frequent = counts >= min_count
    if int(frequent.sum()) < min_types:
        return EMPTY_TYPE_RING
    bulk = p.median(dim=0).values
    distance = (means - bulk).norm(dim=-1)
    distance[~frequent] = -1.0
    # Far in absolute terms too: half the distance at which single tokens count as far from
    # the bulk (types spread all over a ring average out near the bulk and do not qualify).
    floor = 0.2 * float(torch.quantile((p - bulk).norm(dim=-1), 0.999))
    far = (distance > max(threshold * float(distance.max()), floor)).nonzero(as_tuple=True)[0]
    far = far[distance[far].argsort(descending=True)][:max_types]
    if far.numel() < min_types:
        return EMPTY_TYPE_RING
    chosen = means[far]
    center, radius = fit_circle(chosen)
    if not radius > 0:
        return EMPTY_TYPE_RING
    offset = chosen - center
    angles = torch.atan2(offset[:, 1], offset[:, 0])
    order = angles.argsort()
    sorted_angles = angles[order]
    gaps = torch.diff(torch.cat([sorted_angles, sorted_angles[:1] + 2 * math.pi]))
    coverage = 1.0 - float(gaps.max()) / (2 * math.pi)
    r = offset.norm(dim=-1)
    thinness = max(0.0, 1.0 - float((r - radius).abs().median()) / radius)
    on_ring = torch.zeros(types.shape[0], dtype=torch.bool)
    on_ring[far] = True
    away = ring_points(p)
    purity = float(on_ring[inverse[away]].double().mean()) if bool(away.any()) else 0.0
    return TypeRing(
        coverage * thinness * purity,
        coverage,
        thinness,
        purity,
        types[far[order]].tolist(),
        chosen[order],
        (float(center[0]), float(center[1])),
        radius,
    )


def cyclic_order(points: Float[Tensor, "c 2"]) -> tuple[bool, list[int]]:
    """Whether classes 0..c−1 lie around their centroid in cyclic order (either direction).

    Returns ``(cyclic, order)``: ``order`` lists the classes by angle, starting at class 0.
    """
    centered = points.to(torch.float64) - points.to(torch.float64).mean(0)
    order = torch.atan2(centered[:, 1], centered[:, 0]).argsort().tolist()
    start = order.index(0)
    order = order[start:] + order[:start]
    n = len(order)
    forward = list(range(n))
    backward = [0] + list(range(n - 1, 0, -1))
    return order in (forward, backward), order


# ----------------------------------------------------------------------------------------
# A known plane: angles, shares, readouts
# ----------------------------------------------------------------------------------------


def activation_part(vectors: Tensor, lifted: bool) -> Tensor:
    """The activation-space part of eigenvectors ``[..., d', k]`` (drops the lift coordinate 0)."""
    return vectors[..., 1:, :] if lifted else vectors


def plane_angles(vectors: Float[Tensor, "n d k"], plane: Float[Tensor, "d p"]) -> Tensor:
    """Largest principal angle (degrees) between ``plane`` and the span of each ``vectors[i]``.

    ``k >= p``: 0 when the plane lies inside the span. Vectorised over ``n`` forms.
    """
    q_plane = torch.linalg.qr(plane.to(torch.float64)).Q
    q_span = torch.linalg.qr(vectors.to(torch.float64)).Q
    cosines = torch.linalg.svdvals(q_plane.T.unsqueeze(0) @ q_span).clamp(0.0, 1.0)
    return torch.rad2deg(
        torch.arccos(
            cosines[..., -1]
            if cosines.shape[-1] >= plane.shape[1]
            else torch.zeros(cosines.shape[0], dtype=cosines.dtype)
        )
    )


def span_share(vectors: Float[Tensor, "n d k"], centred: Float[Tensor, "t d"], plane: Float[Tensor, "d p"]) -> Tensor:
    """Share of the tokens' in-plane variance that lies in the span of each ``vectors[i]``.

    ``Σ_t ||Π_span Π_plane x_t||² / Σ_t ||Π_plane x_t||²`` for centred tokens ``x_t``.
    """
    q_plane = torch.linalg.qr(plane.to(torch.float64)).Q
    in_plane = centred.to(torch.float64) @ q_plane @ q_plane.T
    total = in_plane.pow(2).sum()
    q_span = torch.linalg.qr(vectors.to(torch.float64)).Q  # [n, d, k]
    kept = torch.einsum("td,ndk->ntk", in_plane, q_span).pow(2).sum((1, 2))
    return kept / total


def r2(prediction: Tensor, target: Tensor) -> float:
    """``1 − SSE/SST`` over all target columns (SST around each column's mean)."""
    sse = (target - prediction).pow(2).sum()
    sst = (target - target.mean(0)).pow(2).sum()
    return float(1.0 - sse / sst)


def fit_readout(features: Tensor, target: Tensor) -> Tensor:
    """Least-squares ``[1, features] → target`` coefficients ``[k + 1, t]``."""
    design = torch.cat([torch.ones(features.shape[0], 1, dtype=torch.float64), features.to(torch.float64)], 1)
    return torch.linalg.lstsq(design, target.to(torch.float64)).solution


def apply_readout(features: Tensor, coefficients: Tensor) -> Tensor:
    design = torch.cat([torch.ones(features.shape[0], 1, dtype=torch.float64), features.to(torch.float64)], 1)
    return design @ coefficients


def pair_r2_matrix(features: Float[Tensor, "n F"], target: Float[Tensor, "n t"]) -> Tensor:
    """In-sample R² of ``[1, f_i, f_j] → target`` for every pair ``(i, j)``, in closed form [F, F].

    The diagonal and pairs of (near-)collinear latents are −inf.
    """
    f = features.to(torch.float64)
    y = target.to(torch.float64)
    f = f - f.mean(0)
    y = y - y.mean(0)
    gram = f.T @ f
    cross = f.T @ y  # [F, t]
    total = y.pow(2).sum()
    diag = gram.diagonal()
    det = diag.unsqueeze(1) * diag.unsqueeze(0) - gram.pow(2)
    explained = (
        diag.unsqueeze(0).unsqueeze(-1) * cross.pow(2).unsqueeze(1)
        - 2 * gram.unsqueeze(-1) * cross.unsqueeze(1) * cross.unsqueeze(0)
        + diag.unsqueeze(1).unsqueeze(-1) * cross.pow(2).unsqueeze(0)
    ).sum(-1)
    ok = det > 1e-9 * (diag.unsqueeze(1) * diag.unsqueeze(0)).clamp(min=1e-300)
    out = torch.where(ok, explained / det.clamp(min=1e-300) / total, torch.full_like(det, -math.inf))
    return out.fill_diagonal_(-math.inf)


class PairReadout(NamedTuple):
    """The best pair of latents for a target, chosen on one split and scored on another."""

    pair: tuple[int, int]
    """The two latents."""
    r2_chosen: float
    """R² on the split the pair was chosen (and fitted) on."""
    r2_heldout: float
    """R² on the other split, with the readout fitted on the first."""


def best_pairs(
    features_a: Float[Tensor, "n F"],
    target_a: Float[Tensor, "n t"],
    features_b: Float[Tensor, "m F"],
    target_b: Float[Tensor, "m t"],
) -> PairReadout:
    """The pair with the best R² on split a, its linear readout fitted on a and scored on b."""
    scores = pair_r2_matrix(features_a, target_a)
    flat = int(scores.argmax())
    i, j = divmod(flat, scores.shape[1])
    if not math.isfinite(float(scores[i, j])):
        raise ValueError("no pair of latents is linearly independent on these tokens")
    coefficients = fit_readout(features_a[:, [i, j]], target_a)
    return PairReadout(
        (min(i, j), max(i, j)),
        float(scores[i, j]),
        r2(apply_readout(features_b[:, [i, j]], coefficients), target_b.to(torch.float64)),
    )


def single_r2(features_a: Tensor, target_a: Tensor, features_b: Tensor, target_b: Tensor) -> PairReadout:
    """Like :func:`best_pairs` for the best single latent (``pair = (j, j)``)."""
    f = features_a.to(torch.float64) - features_a.to(torch.float64).mean(0)
    y = target_a.to(torch.float64) - target_a.to(torch.float64).mean(0)
    scores = (f.T @ y).pow(2).sum(-1) / f.pow(2).sum(0).clamp(min=1e-300) / y.pow(2).sum()
    j = int(scores.argmax())
    coefficients = fit_readout(features_a[:, [j]], target_a)
    return PairReadout(
        (j, j), float(scores[j]), r2(apply_readout(features_b[:, [j]], coefficients), target_b.to(torch.float64))
    )


def greedy_readout(
    features_a: Float[Tensor, "n F"],
    target_a: Float[Tensor, "n t"],
    features_b: Float[Tensor, "m F"],
    target_b: Float[Tensor, "m t"],
    max_k: int = 32,
) -> tuple[list[int], list[float]]:
    """Orthogonal matching pursuit on split a; held-out R² on split b after each added latent.

    Returns ``(chosen latents, held-out R² after 1..k latents)``.
    """
    fa = features_a.to(torch.float64)
    ya = target_a.to(torch.float64)
    fa_c = fa - fa.mean(0)
    norms = fa_c.norm(dim=0)
    usable = norms > 1e-12 * norms.max().clamp(min=1e-300)
    unit = fa_c / norms.clamp(min=1e-300)
    residual = ya - ya.mean(0)
    chosen: list[int] = []
    scores: list[float] = []
    basis = torch.zeros(fa.shape[0], 0, dtype=torch.float64)
    for _ in range(min(max_k, int(usable.sum()))):
        gain = (unit.T @ residual).pow(2).sum(-1)
        gain[~usable] = -1
        if chosen:
            gain[chosen] = -1
        j = int(gain.argmax())
        chosen.append(j)
        column = fa_c[:, j] - basis @ (basis.T @ fa_c[:, j])
        if column.norm() > 1e-9 * norms[j]:
            basis = torch.cat([basis, (column / column.norm()).unsqueeze(1)], 1)
        residual = (ya - ya.mean(0)) - basis @ (basis.T @ (ya - ya.mean(0)))
        coefficients = fit_readout(features_a[:, chosen], target_a)
        scores.append(r2(apply_readout(features_b[:, chosen], coefficients), target_b.to(torch.float64)))
    return chosen, scores


# ----------------------------------------------------------------------------------------
# The search
# ----------------------------------------------------------------------------------------


@dataclass
class CircleCandidate:
    """A pair of latents whose activations trace a ring."""

    latents: tuple[int, int]
    """The two latents (indices into ``f``)."""
    ring: RingFit
    """The ring fit in the standardised ``(f_i, f_j)`` plane."""
    ring_tokens: Tensor
    """Indices (into the searched activations) of the tokens on the ring."""
    plane: Tensor
    """``[d_in, 2]`` orthonormal basis of the activation-space plane of the pair (gradients of
    the two latents at the ring tokens' mean unit activation)."""
    source: str
    """Which candidate list found the pair: ``"coactivation"`` or ``"shared-factor"``."""
    types: TypeRing | None = None
    """The ring of token types (:func:`type_ring`), when token ids were given."""

    @property
    def score(self) -> float:
        """What the search ranks by: the token-type ring score when token ids were given, else
        the point ring score."""
        return self.types.score if self.types is not None else self.ring.score


def _dense_latents(sae: Any, activations: Tensor) -> Tensor:
    return analysis.latent_activations(sae, activations).to(torch.float32)


def coactivation_pairs(f: Float[Tensor, "n F"], n: int, threshold: float = 0.3) -> list[tuple[int, int]]:
    """The ``n`` pairs that move far from their bulk on the same tokens, with uncorrelated values.

    With ``g = f − median(f)`` per latent, a latent's *far* tokens are those with ``|g|`` above
    ``threshold`` × its 99.9 % quantile; the score is the Jaccard overlap of the two far sets
    times ``1 − corr(g_i, g_j)²`` (two coordinates of one feature, not one coordinate twice).
    """
    g = f - f.median(dim=0).values
    magnitude = g.abs()
    far = (magnitude > threshold * torch.quantile(magnitude, 0.999, dim=0)).to(torch.float32)
    both = far.T @ far
    size = far.sum(0)
    jaccard = both / (size.unsqueeze(0) + size.unsqueeze(1) - both).clamp(min=1.0)
    centred = g - g.mean(0)
    centred = centred / centred.norm(dim=0).clamp(min=1e-30)
    corr = centred.T @ centred
    return _top_pairs(jaccard * (1 - corr.pow(2)), n)


def shared_factor_pairs(sae: Any, n: int) -> list[tuple[int, int]]:
    """The ``n`` pairs sharing a factor: ``max |cos|`` of one factor of each latent, times the
    sine between the other two (a pair reading two coordinates against a common direction)."""
    left, right, _, _ = analysis.factors(sae)
    left = left / left.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    right = right / right.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    best = torch.zeros(left.shape[0], left.shape[0], dtype=left.dtype)
    for a, b, other_a, other_b in (
        (left, left, right, right),
        (left, right, right, left),
        (right, left, left, right),
        (right, right, left, left),
    ):
        shared = (a @ b.T).abs()
        sine = (1 - (other_a @ other_b.T).pow(2)).clamp(min=0).sqrt()
        best = torch.maximum(best, shared * sine)
    return _top_pairs(best, n)


def _top_pairs(scores: Tensor, n: int) -> list[tuple[int, int]]:
    upper = torch.triu(torch.ones_like(scores, dtype=torch.bool), diagonal=1)
    flat = torch.where(upper, scores, torch.full_like(scores, -math.inf)).reshape(-1)
    n = min(n, int(upper.sum()))
    top = flat.topk(n).indices
    return [divmod(int(t), scores.shape[1]) for t in top if math.isfinite(float(flat[t]))]


def pair_plane(sae: Any, pair: tuple[int, int], unit_mean: Float[Tensor, " d"]) -> Tensor:
    """Orthonormal ``[d_in, 2]`` basis of the gradients of the pair's latents at ``unit_mean``.

    ``∇_u f_j = (r̃_j·ũ) l_j + (l̃_j·ũ) r_j``: near the ring tokens each latent varies along
    its gradient, so the two gradients span the plane the ring lives in.
    """
    left, right, _, lifted = analysis.factors(sae)
    u = unit_mean.to(left.dtype)
    u_lift = analysis.lift(u) if lifted else u
    columns = []
    for j in pair:
        gradient = (right[j] @ u_lift) * left[j] + (left[j] @ u_lift) * right[j]
        columns.append(gradient[1:] if lifted else gradient)
    return torch.linalg.qr(torch.stack(columns, 1).to(torch.float64)).Q


def find_circles(
    sae: Any,
    activations: Float[Tensor, "n d_in"],
    *,
    token_ids: Tensor | None = None,
    n_candidates: int = 300,
    top: int = 10,
    sample: int | None = 20_000,
    seed: int = 0,
    bins: int = 12,
) -> list[CircleCandidate]:
    """Pairs of latents whose activations trace rings, best first (unlabelled search).

    Args:
        sae: a bilinear SAE (or anything :func:`sae_bilinear.analysis.factors` reads).
        activations: raw activations ``[n, d_in]`` (no labels needed).
        token_ids: optional ``[n]`` token id of each activation. With them, pairs are ranked by
            the ring their token *types* draw (:func:`type_ring`: far less noisy on real text);
            without, by the ring of the points (:func:`ring_fit`).
        n_candidates: pairs taken from each candidate list (co-activation, shared factor).
        top: how many candidates to return.
        sample: score on at most this many tokens (a seeded random subset); ``None`` = all.
    """
    for name, value in (("n_candidates", n_candidates), ("top", top)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{name} must be a positive int, got {value!r}")
    if activations.ndim != 2 or activations.shape[0] < 2:
        raise ConfigError(f"activations must be [n >= 2, d_in], got {tuple(activations.shape)}")
    if token_ids is not None and token_ids.reshape(-1).shape[0] != activations.shape[0]:
        raise ConfigError(
            f"token_ids has {token_ids.reshape(-1).shape[0]} entries but there are {activations.shape[0]} activations"
        )
    x = activations
    if sample is not None and x.shape[0] > sample:
        index = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:sample].sort().values
        x = x[index]
    else:
        index = torch.arange(x.shape[0])
    ids = None if token_ids is None else token_ids.reshape(-1)[index]
    f = _dense_latents(sae, x)
    sources: dict[tuple[int, int], str] = {}
    for pair in shared_factor_pairs(sae, n_candidates):
        sources[pair] = "shared-factor"
    for pair in coactivation_pairs(f, n_candidates):
        sources[pair] = "coactivation"
    unit = x.to(torch.float64) / x.to(torch.float64).norm(dim=-1, keepdim=True).clamp(min=1e-30)
    found = []
    for pair, source in sources.items():
        points = standardise(f[:, list(pair)].to(torch.float64))
        ring = ring_fit(points, bins=bins)
        types = type_ring(points, ids) if ids is not None else None
        candidate_score = types.score if types is not None else ring.score
        if candidate_score <= 0:
            continue
        on_ring = ring_points(points)
        plane = pair_plane(sae, pair, unit[on_ring].mean(0))
        found.append(CircleCandidate(pair, ring, index[on_ring], plane, source, types))
    found.sort(key=lambda c: -c.score)
    return found[:top]


# ----------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------


def arc_labels(
    points: Float[Tensor, "n 2"], center: Sequence[float], tokens: Sequence[str], bins: int = 12
) -> list[tuple[float, str, int]]:
    """The most frequent token in each angular bin around ``center``: ``(angle, token, count)``."""
    offset = points.to(torch.float64) - torch.tensor(center, dtype=torch.float64)
    angles = torch.atan2(offset[:, 1], offset[:, 0])
    which = ((angles + math.pi) / (2 * math.pi) * bins).long().clamp(0, bins - 1)
    out = []
    for b in range(bins):
        members = (which == b).nonzero(as_tuple=True)[0].tolist()
        if members:
            token, count = Counter(tokens[i].strip() or repr(tokens[i]) for i in members).most_common(1)[0]  # pyright: ignore[reportAttributeAccessIssue]
            out.append((-math.pi + (b + 0.5) * 2 * math.pi / bins, token, count))
    return out


def draw_circle(
    sae: Any,
    activations: Float[Tensor, "n d_in"],
    candidate: CircleCandidate,
    path: str | Path,
    *,
    tokens: Sequence[str] | None = None,
    token_ids: Tensor | None = None,
    title: str | None = None,
    max_points: int = 20_000,
    seed: int = 0,
) -> Path:
    """PNG of a found pair: tokens in the standardised ``(f_i, f_j)`` plane, the ring's tokens
    coloured by their angle, the fitted circle, and (with ``tokens``) the most frequent token of
    each arc written around it. With ``token_ids`` and a candidate found by token types, the
    ring's types are drawn instead: each type's tokens coloured by its place on the ring, its
    mean marked and named, and the means joined in ring order."""
    from matplotlib.figure import Figure

    if tokens is not None and len(tokens) != activations.shape[0]:
        raise ConfigError(f"tokens has {len(tokens)} entries but there are {activations.shape[0]} activations")
    if token_ids is not None and token_ids.reshape(-1).shape[0] != activations.shape[0]:
        raise ConfigError(
            f"token_ids has {token_ids.reshape(-1).shape[0]} entries but there are {activations.shape[0]} activations"
        )
    n = activations.shape[0]
    index = (
        torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_points]
        if n > max_points
        else torch.arange(n)
    )
    index = torch.unique(torch.cat([index, candidate.ring_tokens.clamp(max=n - 1)]))
    f = _dense_latents(sae, activations[index])[:, list(candidate.latents)].to(torch.float64)
    # Standardise with the same statistics the search used: the RMS over the plotted tokens.
    points = standardise(f)
    on_ring = ring_points(points)
    fit = ring_fit(points)
    center, radius = torch.tensor(fit.center, dtype=torch.float64), fit.radius
    offset = points - center
    angle = torch.atan2(offset[:, 1], offset[:, 0])
    fig = Figure(figsize=(6.2, 6.0), dpi=110, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    p = points.numpy()
    ax.scatter(p[~on_ring.numpy(), 0], p[~on_ring.numpy(), 1], s=3, c="#bbbbbb", lw=0, label="other tokens")
    types = candidate.types.types if candidate.types is not None and token_ids is not None else []
    if types and token_ids is not None:
        _draw_types(ax, points, token_ids.reshape(-1)[index], types, tokens, index)
        artist = None
    else:
        artist = ax.scatter(
            p[on_ring.numpy(), 0],
            p[on_ring.numpy(), 1],
            s=7,
            c=angle[on_ring].numpy(),
            cmap="twilight",
            vmin=-math.pi,
            vmax=math.pi,
            lw=0,
        )
        theta = np.linspace(0, 2 * math.pi, 200)
        ax.plot(
            float(center[0]) + radius * np.cos(theta),
            float(center[1]) + radius * np.sin(theta),
            color="#444",
            lw=0.8,
            ls="--",
        )
    if not types and tokens is not None and int(on_ring.sum()):
        ring_tokens = [tokens[i] for i in index[on_ring].tolist()]
        for a, token, count in arc_labels(points[on_ring], center.tolist(), ring_tokens):  # pyright: ignore[reportArgumentType]
            x, y = float(center[0]) + 1.22 * radius * math.cos(a), float(center[1]) + 1.22 * radius * math.sin(a)
            ax.annotate(f"{token} ({count})", (x, y), ha="center", va="center", fontsize=8)
    if artist is not None:
        fig.colorbar(artist, ax=ax, shrink=0.7).set_label("angle around the ring", fontsize=8)
    ax.set_aspect("equal", adjustable="datalim")
    i, j = candidate.latents
    ax.set_xlabel(f"latent {i} (standardised)", fontsize=9)
    ax.set_ylabel(f"latent {j} (standardised)", fontsize=9)
    ring = candidate.ring
    ax.set_title(
        title
        or f"latents {i} & {j}: ring score {ring.score:.2f} (coverage {ring.coverage:.2f}, "
        f"thinness {ring.thinness:.2f}, hole {ring.hole:.2f})",
        fontsize=9,
    )
    return plots.write_png(fig, path)


def _draw_types(
    ax: Any, points: Tensor, ids: Tensor, types: list[int], tokens: Sequence[str] | None, index: Tensor
) -> None:
    """Each ring type's tokens coloured by its rank on the ring, its mean named, means joined."""
    from matplotlib import colormaps

    colors = colormaps["hsv"](np.linspace(0, 1, len(types), endpoint=False))
    means = []
    for rank, token_id in enumerate(types):
        members = (ids == token_id).nonzero(as_tuple=True)[0]
        if members.numel() == 0:
            continue
        q = points[members].numpy()
        ax.scatter(q[:, 0], q[:, 1], s=6, color=colors[rank], lw=0, alpha=0.6)
        mean = q.mean(0)
        means.append(mean)
        name = tokens[int(index[members[0]])].strip() if tokens is not None else str(token_id)
        ax.annotate(name, mean, fontsize=8, weight="bold", ha="center", va="bottom")
        ax.scatter([mean[0]], [mean[1]], s=25, color="black", marker="x")
    if len(means) >= 2:
        loop = np.array(means + means[:1])
        ax.plot(loop[:, 0], loop[:, 1], color="#333", lw=0.8, ls="--")


def circle_page(
    sae: Any,
    activations: Float[Tensor, "n d_in"],
    candidate: CircleCandidate,
    path: str | Path,
    *,
    tokens: Sequence[str] | None = None,
    contexts: Sequence[str] | None = None,
    n: int = 600,
) -> Path:
    """Interactive 3D page of the pair's composite ``Q_i + Q_j`` (its top-3 eigenvectors), the
    view :func:`sae_bilinear.analysis.top_activations` gives, with the tokens on hover."""
    d_sae = analysis.factors(sae).left.shape[0]
    weights = torch.zeros(d_sae)
    weights[list(candidate.latents)] = 1.0
    top = analysis.top_activations(sae, activations, weights=weights, n=n, tokens=tokens, contexts=contexts, sign="abs")
    i, j = candidate.latents
    figure = plots.manifold_figure(top, title=f"composite of latents {i} + {j} (ring score {candidate.ring.score:.2f})")
    return plots.write_html(
        figure,
        path,
        title=f"circle: latents {i} and {j}",
        description="Top-|activation| tokens of the pair's composite projected on its top-3 eigenvectors.",
    )
