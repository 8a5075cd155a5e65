"""Experiment 5: planted manifolds with ground truth — bilinear against linear SAEs.

Synthetic activations (``sae_bilinear.synthetic.PlantedManifolds``) in d dimensions: sparse
linear features (SAELens's ``FeatureDictionary``/``ActivationGenerator``) plus, on some
tokens, a point on one planted curved feature — a circle around the origin, a circle off
the origin, a sphere S² and a paraboloid patch, each in its own random orthonormal subspace
— plus noise. Every token carries its ground truth (which manifold, intrinsic coordinates).

Trained on the same tokens, in the same order, at an equal parameter budget:
lifted bilinear SAEs (vanilla with the Hoyer penalty; mixed with a small bottleneck; and with
magnitude-TopK sparsity, for an equal-L0 comparison), SAELens TopK SAEs (several k) and a
SAELens standard (ReLU + L1) SAE. Untrained inits and a hand-made *oracle* bilinear
SAE (built from the ground truth) calibrate every metric.

Per SAE and planted manifold (held-out tokens; readouts fitted on one half, scored on the other):

* ``coord_r2@k`` — R² of a linear readout, from the k latents chosen greedily (orthogonal
  matching pursuit), of the manifold's coordinate as a sparse feature: on the manifold's
  tokens its coordinate (circle: cos θ, sin θ; sphere: the unit vector; paraboloid: t), on
  every other token 0. A latent must be selective *and* carry the coordinate; ``k90`` = fewest
  latents reaching R² ≥ 0.9 (≤ 16). ``k = 1`` is the best single latent; ``k > 1`` a composite;
* ``member_r2@k`` — the same for the indicator "token lies on this manifold";
* ``angle_max`` — largest principal angle (degrees) between the subspace the coordinate moves in
  and the subspace of that readout (the top singular directions of its ≤ 8 latents'
  directions, each weighted by its readout coefficient; linear SAE: decoder rows; bilinear:
  the two eigenvectors of the latent's quadratic block weighted by |λ|, and its linear part);
* ``recovered`` = ``coord_r2@4 ≥ 0.8`` and ``angle_max ≤ 20°`` (fixed before any run): a
  composite of at most 4 latents carries the manifold;
* ``tiling`` — latents whose direction lies mostly in the subspace (share of the latent's
  operator, or of its decoder row, > 0.5) and that are active on ≥ 2 % of the manifold's tokens.

Per SAE: parameters, L0 (bilinear: ``|f| ≥ activity_threshold · peak``), Hoyer density,
fraction of variance unexplained of x (lifted bilinear SAEs decode ``x̂ = ||x||·û``), the x⊗x
error (bilinear), and the MCC of decoder directions against the linear features
(``sae_lens.synthetic.mean_correlation_coefficient``).

Writes ``results.json``, ``table.md`` and the PNGs into ``--out``.

    python experiments/planted_manifolds.py          # default, a few minutes on one core
    python experiments/planted_manifolds.py --tiny   # seconds (tests)
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from sae_bilinear import analysis, kernels
from sae_bilinear import experiment_utils as common
from sae_bilinear.bilinear import BilinearTrainingSAE, BilinearTrainingSAEConfig, default_alpha_warm_up_steps
from sae_bilinear.errors import ConfigError, UserError
from sae_bilinear.synthetic import Manifold, PlantedBatch, PlantedManifolds
from sae_bilinear.train import TrainingSettings, train_on_activations
from sae_bilinear.values import check_finite_float, check_int, finite_float, int_at_least

HERE = Path(__file__).resolve().parent
NAME = "planted_manifolds"
K_MAX = 16
R2_KS = (1, 2, 4, 8)
RECOVERED_R2, RECOVERED_ANGLE = 0.8, 20.0
TILING_SHARE, TILING_FIRE = 0.5, 0.02

MANIFOLDS = (
    Manifold("circle", probability=0.15, radius=1.0, scale=2.0),
    Manifold("circle", probability=0.15, radius=1.0, offset=0.7, scale=2.0),
    Manifold("sphere", dim=2, probability=0.15, radius=1.0, scale=2.0),
    Manifold("paraboloid", dim=2, probability=0.15, radius=1.0, offset=0.5, curvature=1.0, scale=2.0),
)
LABELS = ("circle", "offset circle", "sphere S²", "paraboloid")
MIN_D = sum(m.ambient_dim for m in MANIFOLDS)
"""The smallest ``--d``: the manifolds' subspaces are mutually orthogonal."""
MANIFOLD_COLUMNS = (
    "coord_r2@1",
    "coord_r2@2",
    "coord_r2@4",
    "coord_r2@8",
    "k90",
    "member_r2@2",
    "angle_max",
    "tiling",
    "recovered",
)
"""The per-manifold scores of the results table."""


def make_generator(
    d: int = 48,
    n_linear: int = 32,
    linear_probability: float = 0.08,
    noise: float = 0.02,
    seed: int = 0,
    manifolds: tuple[Manifold, ...] = MANIFOLDS,
) -> PlantedManifolds:
    return PlantedManifolds(
        d=d, manifolds=manifolds, n_linear=n_linear, linear_probability=linear_probability, noise=noise, seed=seed
    )


def coordinate_target(manifold: Manifold, coordinates: Tensor) -> Tensor:
    """The ground-truth coordinate as a vector: circle (cos θ, sin θ), sphere its unit vector, paraboloid t."""
    c = coordinates[:, : manifold.coordinate_dim].double()
    if manifold.kind == "circle":
        return torch.cat([c.cos(), c.sin()], dim=-1)
    return c


# ----------------------------------------------------------------------------------------
# Uniform views of bilinear and linear SAEs
# ----------------------------------------------------------------------------------------


class LinearView:
    """A SAELens linear SAE (TopK, standard): ReLU/TopK latents, decoder rows as directions."""

    kind = "linear"

    def __init__(self, sae: Any):
        self.sae = sae

    @torch.no_grad()
    def latents(self, x: Tensor) -> Tensor:
        return self.sae.encode(x.float()).double()

    def active(self, f: Tensor) -> Tensor:
        return f > 0

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.sae.decode(self.sae.encode(x.float())).double()

    def decoder(self) -> Tensor:
        return self.sae.W_dec.detach().double()

    def directions(self) -> Tensor:
        """``[F, 1, d]`` the unit decoder rows."""
        w = self.decoder()
        return (w / w.norm(dim=-1, keepdim=True).clamp(min=1e-12)).unsqueeze(1)

    def in_share(self, basis: Tensor) -> Tensor:
        w = self.decoder()
        return (w @ basis).pow(2).sum(-1) / w.pow(2).sum(-1).clamp(min=1e-30)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.sae.parameters())


class BilinearView:
    """A bilinear SAE, or any object with ``W_left``/``W_right`` (+ ``b_left``/``b_right``, ``W_down``).

    The factors are copied (float64) when the view is made: make it after training.
    """

    kind = "bilinear"

    def __init__(self, sae: Any, activity_threshold: float | None = None):
        self.sae = sae
        self.left, self.right, self.down, self.lifted = analysis.factors(sae, dtype=torch.float64)
        cfg: Any = getattr(sae, "cfg", None)
        self.threshold = activity_threshold or float(getattr(cfg, "activity_threshold", 0.1))
        self.topk = int(cfg.k) if getattr(cfg, "sparsity", "hoyer") == "topk" else None
        off = int(self.lifted)
        self.l, self.r = self.left[:, off:], self.right[:, off:]
        self.bl = self.left[:, 0] if self.lifted else None
        self.br = self.right[:, 0] if self.lifted else None

    @torch.no_grad()
    def latents(self, x: Tensor) -> Tensor:
        """The code the SAE decodes from: dense ``f`` (Hoyer), or its magnitude-TopK (``sparsity="topk"``)."""
        f = analysis.latent_activations(self.sae, x.double()).double()
        return kernels.topk_by_magnitude(f, self.topk) if self.topk else f

    def active(self, f: Tensor) -> Tensor:
        """``|f_j|`` reaches ``activity_threshold`` of latent j's peak (TopK: and was kept)."""
        peak = kernels.latent_peak(self.l, self.r, self.bl, self.br)
        return (f.abs() >= self.threshold * peak) & (f != 0)

    def linear_part(self) -> Tensor:
        """``[F, d]`` rows ``½(b_l r + b_r l)`` (zero when unlifted): the decoder of û."""
        if self.bl is None or self.br is None:  # unlifted
            return torch.zeros_like(self.l)
        return kernels.lifted_decoder(self.l, self.r, self.bl, self.br)

    def decoder(self) -> Tensor:
        """Effective decoder rows: latent j's contribution to û per unit of f_j (``DᵀD`` included)."""
        dec = self.linear_part()
        return dec if self.down is None else self.down.T @ (self.down @ dec)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor | None:
        if not self.lifted:
            return None
        x = x.double()
        f = self.latents(x)
        g = f if self.down is None else kernels.mix(f, self.down)
        return (g @ self.linear_part()) * x.norm(dim=-1, keepdim=True)

    def directions(self) -> Tensor:
        """``[F, 3, d]``: the two eigenvectors of the quadratic block weighted by |λ|, and √2 × the linear part."""
        spectrum = analysis.rank2_spectrum(self.l, self.r)
        weighted = spectrum.eigenvectors * spectrum.eigenvalues.abs().unsqueeze(-2)  # [F, d, 2]
        return torch.cat([weighted.transpose(1, 2), math.sqrt(2) * self.linear_part().unsqueeze(1)], dim=1)

    def in_share(self, basis: Tensor) -> Tensor:
        """Share of ``||Q̃_j||²_F`` (constant entry excluded) inside the lifted subspace ``[1] ⊕ span(basis)``."""

        def frob(left: Tensor, right: Tensor) -> Tensor:  # ||½(l rᵀ + r lᵀ)||²_F
            return 0.5 * (left.pow(2).sum(-1) * right.pow(2).sum(-1) + (left * right).sum(-1).pow(2))

        lb, rb = self.l @ basis, self.r @ basis
        q = self.linear_part()
        inside = frob(lb, rb) + 2 * (q @ basis).pow(2).sum(-1)
        total = frob(self.l, self.r) + 2 * q.pow(2).sum(-1)
        return inside / total.clamp(min=1e-30)

    @property
    def n_params(self) -> int:
        return sum(t.numel() for t in (self.l, self.r, self.bl, self.br, self.down) if t is not None)


def oracle_bilinear(gen: PlantedManifolds) -> SimpleNamespace:
    """A hand-made lifted bilinear SAE from the ground truth.

    One linear latent ``w·u`` per linear feature; per manifold basis vector ``b`` a linear
    latent ``b·u`` and a quadratic one ``(b·u)²`` (their sum over a manifold's basis is its
    membership ``|Bᵀu|²``).
    """
    d = gen.d
    rows_l, rows_r, bias_l, bias_r = [], [], [], []

    def add(left: Tensor, right: Tensor, b_l: float, b_r: float) -> None:
        rows_l.append(left)
        rows_r.append(right)
        bias_l.append(b_l)
        bias_r.append(b_r)

    zero = torch.zeros(d, dtype=torch.float64)
    if gen.feature_dict is not None:
        for w in gen.feature_dict.feature_vectors.detach().double():
            add(w, zero, 0.0, 1.0)
    for basis in gen.bases:
        for b in basis.T:
            add(b, zero, 0.0, 1.0)
            add(b, b, 0.0, 0.0)
    return SimpleNamespace(
        W_left=torch.stack(rows_l),
        W_right=torch.stack(rows_r),
        b_left=torch.tensor(bias_l, dtype=torch.float64),
        b_right=torch.tensor(bias_r, dtype=torch.float64),
    )


# ----------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------


def r2_score(y: Tensor, y_hat: Tensor) -> float:
    """Pooled R² over all target columns: ``1 − Σ(y − ŷ)² / Σ(y − ȳ)²``."""
    total = (y - y.mean(0)).pow(2).sum()
    return float(1 - (y - y_hat).pow(2).sum() / total.clamp(min=1e-30))


def greedy_readout(
    f_fit: Tensor, y_fit: Tensor, f_test: Tensor, y_test: Tensor, k_max: int = K_MAX
) -> tuple[list[float], list[int], list[Tensor]]:
    """Orthogonal matching pursuit: R² on the test half after each of the first ``k_max`` latents.

    At each step the latent whose standardised activation correlates most with the residual
    (summed over target columns) is added; the readout is refitted by least squares with an
    intercept on the fit half. Returns ``(r2 per k, chosen latents in order, coefficients per
    k)``; the coefficients ``[k, targets]`` act on standardised activations, so their size is
    each latent's importance in the readout.
    """
    f_fit, f_test, y_fit, y_test = f_fit.double(), f_test.double(), y_fit.double(), y_test.double()
    mean, std = f_fit.mean(0), f_fit.std(0)
    usable = std > 1e-12 * max(float(std.max()), 1e-300)
    z_fit = (f_fit - mean) / std.clamp(min=1e-30)
    z_test = (f_test - mean) / std.clamp(min=1e-30)
    residual = y_fit - y_fit.mean(0)
    chosen: list[int] = []
    scores: list[float] = []
    coefficients: list[Tensor] = []
    for _ in range(min(k_max, int(usable.sum()))):
        score = (z_fit.T @ residual).pow(2).sum(-1)
        score[~usable] = -1
        if chosen:
            score[chosen] = -1
        chosen.append(int(score.argmax()))
        design = torch.cat([torch.ones_like(z_fit[:, :1]), z_fit[:, chosen]], dim=1)
        coef = torch.linalg.lstsq(design, y_fit).solution
        residual = y_fit - design @ coef
        test_design = torch.cat([torch.ones_like(z_test[:, :1]), z_test[:, chosen]], dim=1)
        scores.append(r2_score(y_test, test_design @ coef))
        coefficients.append(coef[1:])
    return scores, chosen, coefficients


def r2_at(scores: list[float], k: int) -> float | None:
    return scores[min(k, len(scores)) - 1] if scores else None


def latents_needed(scores: list[float], level: float = 0.9) -> int | None:
    return next((i + 1 for i, s in enumerate(scores) if s >= level), None)


def subspace_of(directions: Tensor, dim: int) -> Tensor:
    """``[d, dim]`` top right-singular vectors of the stacked (weighted) directions ``[n, d]``."""
    _, _, vh = torch.linalg.svd(directions.double(), full_matrices=False)
    return vh[:dim].T


def coordinate_basis(gen: PlantedManifolds, index: int) -> Tensor:
    """The subspace the coordinate moves in: the manifold's subspace without an offset circle's
    constant axis (the last basis column; see ``Manifold.points``)."""
    manifold, basis = gen.manifolds[index], gen.basis(index).double()
    if manifold.kind in ("circle", "sphere") and manifold.offset != 0:
        return basis[:, :-1]
    return basis


def readout_geometry(view: Any, chosen: list[int], coef: Tensor, basis: Tensor) -> Tensor:
    """Principal angles (degrees) between ``basis`` and the readout's subspace: each chosen
    latent's directions (normalised) weighted by its readout importance, top ``dim`` singular
    directions."""
    if not chosen:
        return torch.full((basis.shape[1],), 90.0, dtype=torch.float64)
    blocks = view.directions()[chosen]  # [k, r, d]
    norms = blocks.flatten(1).norm(dim=-1).clamp(min=1e-30)
    weight = coef.norm(dim=-1) / norms
    stacked = (blocks * weight[:, None, None]).reshape(-1, basis.shape[0])
    return analysis.subspace_angles(subspace_of(stacked, basis.shape[1]), basis)


def manifold_metrics(
    view: Any, f: Tensor, active: Tensor, batch: PlantedBatch, gen: PlantedManifolds, index: int, rng: torch.Generator
) -> dict[str, Any]:
    """Recovery metrics of one planted manifold (see the module docstring)."""
    manifold = gen.manifolds[index]
    basis = gen.basis(index).double()
    on = batch.manifold == index
    n_on = int(on.sum())
    order = torch.randperm(f.shape[0], generator=rng)
    fit, test = order[: order.numel() // 2], order[order.numel() // 2 :]
    # The feature as a sparse code would carry it: its coordinate on its tokens, 0 elsewhere.
    y = torch.zeros(f.shape[0], manifold.coordinate_dim + int(manifold.kind == "circle"), dtype=torch.float64)
    y[on] = coordinate_target(manifold, batch.coordinates[on])
    coord, chosen, coefficients = greedy_readout(f[fit], y[fit], f[test], y[test])
    member = on.double().unsqueeze(-1)
    member_scores, _, _ = greedy_readout(f[fit], member[fit], f[test], member[test], k_max=4)
    k_geo = min(8, len(chosen))
    angles = readout_geometry(
        view, chosen[:k_geo], coefficients[k_geo - 1] if k_geo else torch.zeros(0), coordinate_basis(gen, index)
    )
    share = view.in_share(basis)
    fire = active[on].double().mean(0) if n_on else torch.zeros(f.shape[1], dtype=torch.float64)
    tiling = (share > TILING_SHARE) & (fire >= TILING_FIRE)
    result = {
        "manifold": index,
        "kind": manifold.kind,
        "tokens": n_on,
        **{f"coord_r2@{k}": r2_at(coord, k) for k in R2_KS},
        "coord_r2_curve": coord,
        "k90": latents_needed(coord),
        **{f"member_r2@{k}": r2_at(member_scores, k) for k in (1, 2, 4)},
        "angles": angles.tolist(),
        "angle_max": float(angles.max()),
        "best_share": float(torch.where(fire >= TILING_FIRE, share, torch.zeros_like(share)).max()),
        "tiling": int(tiling.sum()),
        "tiling_latents": tiling.nonzero(as_tuple=True)[0].tolist(),
        "chosen": chosen[:8],
    }
    r2_4 = result["coord_r2@4"]
    result["recovered"] = bool(r2_4 is not None and r2_4 >= RECOVERED_R2 and result["angle_max"] <= RECOVERED_ANGLE)
    return result


def sae_metrics(view: Any, batch: PlantedBatch, gen: PlantedManifolds, seed: int = 0) -> dict[str, Any]:
    from sae_lens.synthetic import mean_correlation_coefficient

    x = batch.activations
    f = view.latents(x)
    active = view.active(f)
    out: dict[str, Any] = {
        "kind": view.kind,
        "n_params": view.n_params,
        "d_sae": int(f.shape[1]),
        "l0": float(active.double().sum(-1).mean()),
        "hoyer_density": float(kernels.hoyer_density(f).mean()),
        "dead_fraction": float((~active.any(0)).double().mean()),
    }
    x_hat = view.reconstruct(x)
    if x_hat is not None:
        xd = x.double()
        out["fvu"] = float((xd - x_hat).pow(2).sum() / (xd - xd.mean(0)).pow(2).sum())
    if view.kind == "bilinear":
        out["xx_error"] = xx_error(view, x)
    if gen.feature_dict is not None:
        truth = gen.feature_dict.feature_vectors.detach().float()
        out["mcc"] = float(mean_correlation_coefficient(truth, view.decoder().float()))
    rng = torch.Generator().manual_seed(seed)
    out["manifolds"] = [manifold_metrics(view, f, active, batch, gen, i, rng) for i in range(len(gen.manifolds))]
    return out


def xx_error(view: BilinearView, x: Tensor) -> float:
    """Mean per-token error of ``ũ⊗ũ`` (kernel trick; / ||ũ||⁴), from the view's factors."""
    tokens = kernels.unit_tokens(x.double())
    f = kernels.bilinear_latents(tokens.unit, view.l, view.r, view.bl, view.br)
    code = kernels.topk_by_magnitude(f, view.topk) if view.topk else f  # what the SAE decodes from
    g = code if view.down is None else kernels.mix(code, view.down)
    err = kernels.kernel_error(f, g, view.l, view.r, view.bl, view.br, tokens.valid).error
    return float(kernels.masked_mean(err, tokens.valid))


def chance_mcc(n_true: int, n_latents: int, d: int, seed: int = 0) -> float:
    """MCC of random unit directions: the chance level of the linear-feature score."""
    from sae_lens.synthetic import mean_correlation_coefficient

    g = torch.Generator().manual_seed(seed)
    return float(
        mean_correlation_coefficient(torch.randn(n_true, d, generator=g), torch.randn(n_latents, d, generator=g))
    )


# ----------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------


@dataclass
class Budget:
    d: int
    bilinear_latents: int

    @property
    def params(self) -> int:
        return 2 * self.bilinear_latents * (self.d + 1)

    def linear_latents(self) -> int:
        """SAELens linear SAE width with (about) the same parameters: W_enc, W_dec, b_enc, b_dec."""
        return max(1, round((self.params - self.d) / (2 * self.d + 1)))

    def mixed_latents(self, bottleneck: int) -> int:
        return max(1, round(self.params / (2 * (self.d + 1) + bottleneck)))


def train(sae: Any, x: Tensor, steps: int, batch_size: int, lr: float, seed: int) -> float:
    import contextlib
    import io

    started = time.time()
    with contextlib.redirect_stderr(io.StringIO()):
        train_on_activations(
            sae,
            x,
            TrainingSettings(
                steps=steps, batch_size=batch_size, lr=lr, seed=seed, dead_feature_window=max(10, steps // 4)
            ),
        )
    return time.time() - started


def build_saes(spec: str, budget: Budget, steps: int, seed: int) -> tuple[Any, Any]:
    """``(training SAE, view)`` for a spec like ``bilinear:vanilla:0.1``, ``topk:4``, ``standard:0.03``,
    ``init:bilinear``, ``init:topk``."""
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    torch.manual_seed(seed)
    kind, *rest = spec.split(":")
    d = budget.d
    if kind in ("bilinear", "bilinear-topk") or spec == "init:bilinear":
        variant = kernels.check_variant(rest[0] if kind != "init" else "vanilla")
        alpha = float(rest[1]) if kind == "bilinear" else 0.0
        topk = {"sparsity": "topk", "k": int(rest[1])} if kind == "bilinear-topk" else {}
        bottleneck = max(1, d // 2) if variant in ("mixed", "combined") else None
        width = budget.mixed_latents(bottleneck) if bottleneck else budget.bilinear_latents
        sae = BilinearTrainingSAE(
            BilinearTrainingSAEConfig(
                d_in=d,
                d_sae=width,
                variant=variant,
                lifted=True,
                alpha=alpha,
                bottleneck=bottleneck,
                alpha_warm_up_steps=default_alpha_warm_up_steps(steps),
                **topk,
            )
        )
        return sae, BilinearView(sae)
    width = budget.linear_latents()
    if kind == "topk" or spec == "init:topk":
        k = int(rest[0]) if kind == "topk" else 4
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=width, k=k))
        return sae, LinearView(sae)
    if kind == "standard":
        sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=width, l1_coefficient=float(rest[0])))
        return sae, LinearView(sae)
    raise ValueError(f"unknown SAE spec {spec!r}")


SPEC_FORMS = "bilinear:VARIANT:ALPHA, bilinear-topk:VARIANT:K, topk:K, standard:L1 or init:bilinear|topk"
"""The forms of an SAE spec of ``--saes`` (:func:`build_saes`)."""


def check_spec(spec: str) -> str:
    """``spec`` if :func:`build_saes` can build it: a known kind and variant, a finite α ≥ 0 or L1
    ≥ 0, an integer k ≥ 1; else a :class:`~sae_bilinear.errors.ConfigError` naming the spec."""
    kind, *rest = spec.split(":")
    try:
        if kind == "bilinear" and len(rest) == 2:
            kernels.check_variant(rest[0])
            check_finite_float("ALPHA", float(rest[1]), 0.0)
        elif kind == "bilinear-topk" and len(rest) == 2:
            kernels.check_variant(rest[0])
            check_int("K", int(rest[1]), 1)
        elif kind == "topk" and len(rest) == 1:
            check_int("K", int(rest[0]), 1)
        elif kind == "standard" and len(rest) == 1:
            check_finite_float("L1", float(rest[0]), 0.0)
        elif not (kind == "init" and rest in (["bilinear"], ["topk"])):
            raise ValueError
    except ValueError as error:  # a ConfigError is a ValueError: keep its message
        detail = f" ({error})" if isinstance(error, UserError) else ""
        raise ConfigError(f"bad SAE spec {spec!r}{detail}; expected {SPEC_FORMS}") from None
    return spec


def sae_spec_argument(text: str) -> str:
    """The argparse ``type=`` of ``--saes``: :func:`check_spec` as a usage error."""
    try:
        return check_spec(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def label_of(spec: str) -> str:
    kind, *rest = spec.split(":")
    if kind == "bilinear":
        return f"bilinear {rest[0]} α={rest[1]}"
    if kind == "bilinear-topk":
        return f"bilinear {rest[0]} TopK k={rest[1]}"
    if kind == "topk":
        return f"TopK k={rest[0]}"
    if kind == "standard":
        return f"standard L1={rest[0]}"
    if kind == "init":
        return f"{rest[0]} (untrained init)"
    return spec


# ----------------------------------------------------------------------------------------
# Plots
# ----------------------------------------------------------------------------------------


def plot_recovery(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    n = len(LABELS)
    fig = Figure(figsize=(3.6 * n, 3.6), layout="constrained")
    axes = fig.subplots(1, n)
    for m, ax in enumerate(axes):
        for i, row in enumerate(rows):
            curve = row["manifolds"][m]["coord_r2_curve"]
            style = "--" if row["kind"] == "bilinear" else "-"
            if row["spec"].startswith("init") or row["spec"] == "oracle":
                style = ":"
            ax.plot(range(1, len(curve) + 1), curve, style, marker=".", color=f"C{i % 10}", label=row["label"])
        ax.axhline(0.9, color="0.6", lw=0.6)
        ax.set_ylim(-0.05, 1.02)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("latents in the readout (greedy)")
        ax.set_title(f"{LABELS[m]}: coordinate R²", fontsize=9)
    axes[0].set_ylabel("held-out R²")
    axes[-1].legend(fontsize=6, loc="lower right")
    common.save_figure(fig, path, dpi=100)


def plot_tradeoff(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax, ax2, ax3 = fig.subplots(1, 3)
    colour = {r["spec"]: f"C{i % 10}" for i, r in enumerate(rows)}  # as in recovery.png
    trained = [r for r in rows if "fvu" in r and not r["spec"].startswith("init")]
    for r in trained:
        marker = "o" if r["kind"] == "bilinear" else "s"
        ax.scatter(r["l0"], r["fvu"], marker=marker, color=colour[r["spec"]], label=r["label"])
        ax2.scatter(r["hoyer_density"], r["fvu"], marker=marker, color=colour[r["spec"]])
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("FVU of x")
    ax.set_yscale("log")
    ax2.set_xlabel("Hoyer density")
    ax2.set_yscale("log")
    ax.legend(fontsize=6, loc="upper right")
    ax.set_title("reconstruction vs L0 (circles: bilinear)", fontsize=9)
    ax2.set_title("reconstruction vs Hoyer density", fontsize=9)
    width = 0.8 / max(1, len(trained))
    for i, r in enumerate(trained):
        ax3.bar(
            [m + i * width for m in range(len(LABELS))],
            [mm["tiling"] for mm in r["manifolds"]],
            width=width,
            color=colour[r["spec"]],
        )
    ax3.set_xticks([m + 0.4 - width / 2 for m in range(len(LABELS))], LABELS, fontsize=8)
    ax3.set_ylabel("latents tiling the manifold")
    ax3.set_title("latents mostly inside the subspace, firing on it", fontsize=9)
    common.save_figure(fig, path, dpi=100)


def plot_circle(views: list[tuple[str, Any, dict]], batch: PlantedBatch, path: Path, index: int = 0) -> None:
    """Activation of the latents that read the circle (coordinate readout picks) against θ."""
    from matplotlib.figure import Figure

    on = batch.manifold == index
    theta = batch.coordinates[on, 0].double()
    order = theta.argsort()
    fig = Figure(figsize=(4 * len(views), 3.2), layout="constrained")
    axes = fig.subplots(1, len(views), squeeze=False)[0]
    for ax, (label, view, row) in zip(axes, views, strict=False):
        f = view.latents(batch.activations[on])
        m = row["manifolds"][index]
        picks = sorted(set(m["chosen"][:4]) | set(m["tiling_latents"]))[:12]
        for j, latent in enumerate(picks):
            values = f[order, latent]
            scale = values.abs().max().clamp(min=1e-12)
            ax.plot(theta[order], values / scale, ".", ms=1.5, color=f"C{j % 10}")
        ax.set_title(f"{label}: {len(picks)} latents\n(tiling {m['tiling']}, R²@2 {m['coord_r2@2']:.2f})", fontsize=8)
        ax.set_xlabel("θ on the circle")
    axes[0].set_ylabel("activation / max")
    common.save_figure(fig, path, dpi=100)


# ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__, NAME, HERE)
    p.add_argument(
        "--d",
        type=int_at_least(MIN_D),
        default=48,
        help=f"activation dimension (≥ {MIN_D}, the manifolds' orthogonal subspaces)",
    )
    p.add_argument("--n-linear", type=int_at_least(0), default=32, help="sparse linear features (≥ 0)")
    p.add_argument(
        "--linear-probability",
        type=finite_float(0.0, maximum=1.0),
        default=0.08,
        help="firing probability of each linear feature (in [0, 1])",
    )
    p.add_argument("--noise", type=finite_float(0.0), default=0.02, help="std of the Gaussian noise (≥ 0)")
    p.add_argument(
        "--latents",
        type=common.count_argument,
        default=96,
        help="bilinear (vanilla) latents, ≥ 1; the others match its parameters",
    )
    p.add_argument("--train-tokens", type=common.count_argument, default=65536, help="training tokens (≥ 1)")
    p.add_argument(
        "--test-tokens",
        type=int_at_least(2),
        default=16384,
        help="held-out tokens, ≥ 2 (readouts are fitted on one half, scored on the other)",
    )
    p.add_argument("--steps", type=common.count_argument, default=2000, help="optimiser steps per SAE (≥ 1)")
    p.add_argument("--batch-size", type=common.count_argument, default=512, help="tokens per step (≥ 1)")
    p.add_argument("--lr", type=common.positive_argument, default=3e-3, help="Adam learning rate (> 0)")
    p.add_argument(
        "--saes",
        type=sae_spec_argument,
        nargs="+",
        default=[
            "bilinear:vanilla:0.1",
            "bilinear:vanilla:0.3",
            "bilinear:mixed:0.1",
            "bilinear-topk:vanilla:4",
            "bilinear-topk:vanilla:8",
            "topk:2",
            "topk:4",
            "topk:8",
            "standard:0.03",
            "init:bilinear",
            "init:topk",
        ],
        help="SAEs to train: bilinear:VARIANT:ALPHA (Hoyer), bilinear-topk:VARIANT:K, topk:K, standard:L1, "
        "init:bilinear|topk",
    )
    args = p.parse_args(argv)
    common.setup(args.seed)
    if args.tiny:
        args.d, args.n_linear, args.latents = 16, 4, 24
        args.train_tokens, args.test_tokens, args.steps, args.batch_size = 2048, 1024, 20, 256
        args.saes = ["bilinear:vanilla:0.1", "bilinear-topk:vanilla:2", "topk:2", "init:bilinear"]
    started = time.time()
    gen = make_generator(args.d, args.n_linear, args.linear_probability, args.noise, args.seed)
    train_x = gen.sample(args.train_tokens).activations
    test = gen.sample(args.test_tokens)
    budget = Budget(args.d, args.latents)

    rows, circle_views = [], []
    oracle_view = BilinearView(oracle_bilinear(gen))
    rows.append(
        {
            "spec": "oracle",
            "label": "oracle bilinear (ground truth)",
            "seconds": 0.0,
            **sae_metrics(oracle_view, test, gen, args.seed),
        }
    )
    for spec in args.saes:
        sae, view = build_saes(spec, budget, args.steps, args.seed)
        seconds = (
            0.0 if spec.startswith("init") else train(sae, train_x, args.steps, args.batch_size, args.lr, args.seed)
        )
        sae.eval()
        view = type(view)(sae)  # a view copies the factors it reads: take them after training
        row = {"spec": spec, "label": label_of(spec), "seconds": seconds, **sae_metrics(view, test, gen, args.seed)}
        rows.append(row)
        if spec in ("bilinear:vanilla:0.1", "topk:4", "standard:0.03", "topk:2"):
            circle_views.append((row["label"], view, row))
        print(
            f"{row['label']}: {seconds:.0f}s, L0 {row['l0']:.2f}, FVU {row.get('fvu', float('nan')):.3f}, "
            f"MCC {row.get('mcc', float('nan')):.3f}, "
            + ", ".join(
                f"{LABELS[m['manifold']]} R²@2 {m['coord_r2@2']:.2f} tiling {m['tiling']}" for m in row["manifolds"]
            ),
            flush=True,
        )

    summary_cols = ["label", "n_params", "d_sae", "l0", "hoyer_density", "fvu", "xx_error", "mcc", "dead_fraction"]
    table = "## SAEs (held-out tokens)\n\n" + common.markdown_table(rows, summary_cols)
    per_manifold = []
    for r in rows:
        for m in r["manifolds"]:
            per_manifold.append(
                {
                    "label": r["label"],
                    "manifold": LABELS[m["manifold"]],
                    **{k: m[k] for k in MANIFOLD_COLUMNS},
                }
            )
    per_manifold.sort(key=lambda r: (LABELS.index(r["manifold"]), 0))
    table += "\n\n## Per planted manifold\n\n" + common.markdown_table(
        per_manifold,
        ["manifold", "label", *MANIFOLD_COLUMNS],
    )
    chance = chance_mcc(args.n_linear, budget.linear_latents(), args.d, args.seed) if args.n_linear else None
    table += f"\n\nMCC of random directions (chance): {chance:.3f}\n" if chance is not None else "\n"
    out = args.out
    result = {
        "command": "python experiments/planted_manifolds.py" + (" --tiny" if args.tiny else ""),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "manifolds": [
            {"label": LABELS[i], **m.__dict__, "ambient_dim": m.ambient_dim} for i, m in enumerate(gen.manifolds)
        ],
        "budget": {
            "params": budget.params,
            "linear_latents": budget.linear_latents(),
            "bilinear_latents": args.latents,
        },
        "criteria": {
            "recovered": f"coord_r2@4 >= {RECOVERED_R2} and angle_max <= {RECOVERED_ANGLE}",
            "tiling": f"share > {TILING_SHARE} and active on >= {TILING_FIRE:.0%} of the manifold's tokens",
        },
        "mcc_chance": chance,
        "saes": rows,
        "seconds": time.time() - started,
    }
    common.write_json(out / "results.json", result)
    (out / "table.md").write_text(table)
    plot_recovery(rows, out / "recovery.png")
    plot_tradeoff(rows, out / "tradeoff.png")
    if circle_views:
        plot_circle(circle_views, test, out / "circle_latents.png")
    print(table)
    print(f"wrote {out} in {result['seconds']:.0f}s")
    return result


if __name__ == "__main__":
    main()
