"""Planted manifolds: synthetic activations whose curved features are known exactly.

A token is ``x = s·p + Σ_i a_i w_i + ε``: a point ``p`` on at most one planted manifold
(circle, sphere or paraboloid patch, living in its own random orthonormal subspace and
scaled by ``s``), plus sparse linear features ``w_i`` (SAELens's
:class:`~sae_lens.synthetic.FeatureDictionary` and :class:`~sae_lens.synthetic.ActivationGenerator`),
plus isotropic Gaussian noise ``ε``. Every token comes with its ground truth: which
manifold it lies on and its intrinsic coordinates there. A bilinear autoencoder reads
``u = x/||x||``, so a manifold is recovered when some latent (or composite latent) has
eigenvectors spanning the manifold's subspace (see :func:`sae_bilinear.analysis.subspace_angles`).

Everything is seeded: the same ``seed`` gives the same subspaces, features and samples.

Example::

    from sae_bilinear.synthetic import PlantedManifolds, Manifold
    data = PlantedManifolds(d=16, manifolds=[Manifold("circle"), Manifold("paraboloid", dim=2)], seed=0)
    batch = data.sample(4096)        # batch.activations [4096, 16], batch.manifold [4096], ...
    basis = data.bases[0]            # [16, 2]: the circle's plane
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

ManifoldKind = Literal["circle", "sphere", "paraboloid"]
KINDS: tuple[str, ...] = ("circle", "sphere", "paraboloid")


@dataclass(frozen=True)
class Manifold:
    """One planted curved feature.

    Args:
        kind: ``"circle"`` (a circle of radius ``radius``), ``"sphere"`` (the sphere
            S^dim of radius ``radius``), or ``"paraboloid"`` (the patch
            ``{(t, offset + curvature·|t|²) : t ∈ [−radius, radius]^dim}``).
        dim: intrinsic dimension (circle: must be 1; sphere S^dim; paraboloid: dim
            parameters).
        probability: share of tokens that lie on this manifold. Each token lies on at
            most one manifold, so the probabilities must sum to at most 1.
        radius: circle/sphere radius; half-width of the paraboloid patch.
        offset: circle/sphere: distance of the centre from the origin, along one more
            subspace direction (a "latitude" circle that does not surround the origin);
            paraboloid: height of the apex along its axis. Must be > 0 for a paraboloid,
            otherwise tokens near the apex have vanishing norm.
        curvature: paraboloid only: height gained per squared unit of ``t``.
        scale: multiplies the manifold point (its size against features and noise).
    """

    kind: ManifoldKind
    dim: int = 1
    probability: float = 0.2
    radius: float = 1.0
    offset: float = 0.0
    curvature: float = 1.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown manifold kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.kind == "circle" and self.dim != 1:
            raise ValueError("a circle has dim=1; use kind='sphere' for higher dimensions")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"probability must be in [0, 1], got {self.probability}")
        if self.radius <= 0 or self.scale <= 0:
            raise ValueError("radius and scale must be > 0")
        if self.kind == "paraboloid" and self.offset <= 0:
            raise ValueError("a paraboloid needs offset > 0 (the apex height); 0 puts tokens at the origin")

    @property
    def ambient_dim(self) -> int:
        """Dimension of the subspace the manifold spans."""
        if self.kind == "paraboloid":
            return self.dim + 1
        base = 2 if self.kind == "circle" else self.dim + 1
        return base + (1 if self.offset != 0 else 0)

    @property
    def coordinate_dim(self) -> int:
        """Number of ground-truth coordinates: angle (circle), unit vector (sphere), t (paraboloid)."""
        return {"circle": 1, "sphere": self.dim + 1, "paraboloid": self.dim}[self.kind]

    def points(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` points ``[n, ambient_dim]`` (local subspace coordinates) and their coordinates."""
        if self.kind == "circle":
            theta = torch.rand(n, generator=generator, dtype=torch.float64) * (2 * math.pi)
            local = self.radius * torch.stack([theta.cos(), theta.sin()], dim=-1)
            coords = theta.unsqueeze(-1)
        elif self.kind == "sphere":
            direction = torch.randn(n, self.dim + 1, generator=generator, dtype=torch.float64)
            direction = direction / direction.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            local = self.radius * direction
            coords = direction
        else:
            t = (2 * torch.rand(n, self.dim, generator=generator, dtype=torch.float64) - 1) * self.radius
            height = self.offset + self.curvature * t.pow(2).sum(-1, keepdim=True)
            return self.scale * torch.cat([t, height], dim=-1), t
        if self.offset != 0:
            local = torch.cat([local, torch.full((n, 1), float(self.offset), dtype=torch.float64)], dim=-1)
        return self.scale * local, coords


@dataclass
class PlantedBatch:
    """Samples with their ground truth. All tensors are float32 (manifold: int64)."""

    activations: Tensor
    """``[n, d]`` the tokens x."""
    manifold: Tensor
    """``[n]`` index into ``PlantedManifolds.manifolds`` of the token's manifold, −1 for none."""
    coordinates: Tensor
    """``[n, c]`` intrinsic coordinates on that manifold (NaN-padded; NaN off-manifold)."""
    local: Tensor
    """``[n, a]`` the clean manifold point in its subspace's basis (NaN-padded/NaN off-manifold)."""
    clean: Tensor
    """``[n, d]`` the token before noise."""
    linear: Tensor
    """``[n, n_linear]`` activations of the sparse linear features."""


@dataclass
class PlantedManifolds:
    """A seeded generator of planted-manifold activations in ``d`` dimensions.

    Args:
        d: activation dimension.
        manifolds: the planted curved features; their subspaces are random, orthonormal
            and mutually orthogonal (so their total ``ambient_dim`` must be ``<= d``).
        n_linear: number of sparse linear features (0 for none).
        linear_probability: firing probability of each linear feature.
        linear_magnitude: mean firing magnitude of a linear feature (std is a quarter of it).
        linear_orthogonal: project the linear features off the manifold subspaces, so a
            manifold's subspace holds nothing but the manifold.
        noise: std of the isotropic Gaussian noise added to every coordinate.
        seed: fixes subspaces, features and the sample stream.
    """

    d: int
    manifolds: Sequence[Manifold] = field(default_factory=lambda: (Manifold("circle"),))
    n_linear: int = 0
    linear_probability: float = 0.05
    linear_magnitude: float = 1.0
    linear_orthogonal: bool = True
    noise: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        self.manifolds = tuple(self.manifolds)
        total = sum(m.probability for m in self.manifolds)
        if total > 1.0 + 1e-9:
            raise ValueError(f"manifold probabilities sum to {total:.3g} > 1 (a token lies on at most one manifold)")
        widths = [m.ambient_dim for m in self.manifolds]
        if sum(widths) > self.d:
            raise ValueError(f"the manifolds need {sum(widths)} orthogonal dimensions but d={self.d}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        self._generator = torch.Generator().manual_seed(self.seed)
        if widths:
            gaussian = torch.randn(self.d, sum(widths), generator=self._generator, dtype=torch.float64)
            q, r = torch.linalg.qr(gaussian)
            signs = torch.sign(torch.diagonal(r))
            q = q * torch.where(signs == 0, torch.ones_like(signs), signs)  # unique QR: a fixed seed fixes q
            self.bases: list[Tensor] = list(q.split(widths, dim=1))
        else:
            self.bases = []
        self.feature_dict = None
        self.activation_generator = None
        if self.n_linear > 0:
            self._build_linear()

    def _build_linear(self) -> None:
        from sae_lens.synthetic import ActivationGenerator, FeatureDictionary

        linear_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=self._generator))
        feature_dict = FeatureDictionary(self.n_linear, self.d, initializer=None, seed=linear_seed)
        if self.linear_orthogonal and self.bases:
            with torch.no_grad():
                basis = torch.cat(self.bases, dim=1).to(torch.float32)
                vectors = feature_dict.feature_vectors
                vectors -= (vectors @ basis) @ basis.T
                vectors /= vectors.norm(dim=-1, keepdim=True).clamp(min=1e-8)
        self.feature_dict = feature_dict.requires_grad_(False)
        self.activation_generator = ActivationGenerator(
            self.n_linear,
            firing_probabilities=self.linear_probability,
            mean_firing_magnitudes=self.linear_magnitude,
            std_firing_magnitudes=self.linear_magnitude / 4,
        )

    def basis(self, index: int) -> Tensor:
        """``[d, ambient_dim]`` orthonormal basis of manifold ``index``'s subspace (float64)."""
        return self.bases[index]

    def sample(self, n: int) -> PlantedBatch:
        """``n`` fresh tokens with ground truth (advances the seeded stream)."""
        g = self._generator
        d = self.d
        probabilities = torch.tensor([m.probability for m in self.manifolds] + [0.0], dtype=torch.float64)
        probabilities[-1] = max(0.0, 1.0 - float(probabilities[:-1].sum()))
        which = torch.multinomial(probabilities, n, replacement=True, generator=g)
        which = torch.where(which == len(self.manifolds), torch.full_like(which, -1), which)

        clean = torch.zeros(n, d, dtype=torch.float64)
        c_max = max((m.coordinate_dim for m in self.manifolds), default=1)
        a_max = max((m.ambient_dim for m in self.manifolds), default=1)
        coordinates = torch.full((n, c_max), float("nan"), dtype=torch.float64)
        local = torch.full((n, a_max), float("nan"), dtype=torch.float64)
        for index, manifold in enumerate(self.manifolds):
            rows = (which == index).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            points, coords = manifold.points(rows.numel(), g)
            clean[rows] += points @ self.bases[index].T
            coordinates[rows, : coords.shape[1]] = coords
            local[rows, : points.shape[1]] = points

        if self.n_linear > 0:
            assert self.feature_dict is not None and self.activation_generator is not None
            linear_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=g))
            # ActivationGenerator draws from torch's global RNG: fork it so the stream is ours.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(linear_seed)
                linear = self.activation_generator.sample(n)
            clean += (linear @ self.feature_dict.feature_vectors).to(torch.float64)
        else:
            linear = torch.zeros(n, 0)

        noisy = clean + self.noise * torch.randn(n, d, generator=g, dtype=torch.float64) if self.noise > 0 else clean
        return PlantedBatch(
            activations=noisy.float(),
            manifold=which,
            coordinates=coordinates.float(),
            local=local.float(),
            clean=clean.float(),
            linear=linear.float(),
        )

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        """Endless stream of ``[batch_size, d]`` activations (for a training loop)."""
        while True:
            yield self.sample(batch_size).activations
