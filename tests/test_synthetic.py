"""sae_bilinear.synthetic: planted manifolds with exact ground truth."""

from __future__ import annotations

import math

import pytest
import torch

from sae_bilinear.synthetic import Manifold, PlantedManifolds

torch.set_num_threads(1)

ALL = [
    Manifold("circle", probability=0.2, radius=2.0),
    Manifold("circle", probability=0.1, offset=0.5),
    Manifold("sphere", dim=2, probability=0.2),
    Manifold("paraboloid", dim=2, probability=0.2, offset=1.0, curvature=0.7, radius=1.5, scale=3.0),
]


def test_same_seed_same_data_other_seed_other_data():
    kwargs = dict(d=20, manifolds=ALL, n_linear=5, noise=0.05)
    a = PlantedManifolds(seed=3, **kwargs).sample(500)
    b = PlantedManifolds(seed=3, **kwargs).sample(500)
    c = PlantedManifolds(seed=4, **kwargs).sample(500)
    for name in ("activations", "manifold", "clean", "linear"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.activations, c.activations)
    # The stream advances: two draws differ, and the global RNG is left alone.
    gen = PlantedManifolds(seed=3, **kwargs)
    state = torch.random.get_rng_state()
    first, second = gen.sample(100), gen.sample(100)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not torch.equal(first.activations, second.activations)


def test_subspaces_are_orthonormal_and_linear_features_avoid_them():
    gen = PlantedManifolds(d=20, manifolds=ALL, n_linear=8, seed=0)
    assert [b.shape[1] for b in gen.bases] == [2, 3, 3, 3]
    basis = torch.cat(gen.bases, dim=1)
    torch.testing.assert_close(basis.T @ basis, torch.eye(11, dtype=basis.dtype))
    vectors = gen.feature_dict.feature_vectors.double()
    assert (vectors @ basis).abs().max() < 1e-6
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(8, dtype=torch.float64))


def test_ground_truth_reconstructs_the_clean_tokens():
    gen = PlantedManifolds(d=20, manifolds=ALL, n_linear=6, linear_probability=0.2, noise=0.0, seed=1)
    batch = gen.sample(4000)
    torch.testing.assert_close(batch.activations, batch.clean)
    linear_part = batch.linear @ gen.feature_dict.feature_vectors
    manifold_part = batch.clean - linear_part
    for index, manifold in enumerate(ALL):
        rows = batch.manifold == index
        assert rows.any()
        local = batch.local[rows][:, : manifold.ambient_dim].double()
        # The manifold part is exactly the local point in the manifold's basis ...
        torch.testing.assert_close(manifold_part[rows].double(), local @ gen.bases[index].T, atol=1e-5, rtol=1e-5)
        coords = batch.coordinates[rows].double()
        if manifold.kind == "circle":
            theta = coords[:, 0]
            expected = manifold.radius * torch.stack([theta.cos(), theta.sin()], -1)
            torch.testing.assert_close(local[:, :2], expected, atol=1e-5, rtol=1e-5)
            if manifold.offset:
                torch.testing.assert_close(local[:, 2], torch.full_like(theta, manifold.offset))
            assert coords[:, 1:].isnan().all()
        elif manifold.kind == "sphere":
            torch.testing.assert_close(
                local.norm(dim=-1), torch.full((len(local),), manifold.radius, dtype=torch.float64)
            )
            torch.testing.assert_close(local, manifold.radius * coords, atol=1e-5, rtol=1e-5)
        else:
            t = coords[:, :2]
            assert t.abs().max() <= manifold.radius
            torch.testing.assert_close(local[:, :2], manifold.scale * t, atol=1e-5, rtol=1e-5)
            height = manifold.scale * (manifold.offset + manifold.curvature * t.pow(2).sum(-1))
            torch.testing.assert_close(local[:, 2], height, atol=1e-4, rtol=1e-5)
    off = batch.manifold == -1
    assert off.any() and batch.coordinates[off].isnan().all() and batch.local[off].isnan().all()
    assert (manifold_part[off].abs().max()) < 1e-5


def test_shares_and_noise():
    gen = PlantedManifolds(
        d=12,
        manifolds=[Manifold("circle", probability=0.3), Manifold("sphere", dim=1, probability=0.5)],
        noise=0.1,
        seed=2,
    )
    batch = gen.sample(20000)
    shares = torch.bincount(batch.manifold + 1, minlength=3).double() / 20000
    torch.testing.assert_close(shares, torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64), atol=0.015, rtol=0)
    noise = batch.activations - batch.clean
    assert noise.std().item() == pytest.approx(0.1, rel=0.03)
    assert batch.linear.shape == (20000, 0)
    assert next(gen.batches(64)).shape == (64, 12)


def test_invalid_specs_are_refused():
    with pytest.raises(ValueError, match="kind"):
        Manifold("torus")
    with pytest.raises(ValueError, match="dim=1"):
        Manifold("circle", dim=2)
    with pytest.raises(ValueError, match="offset"):
        Manifold("paraboloid", dim=2)
    with pytest.raises(ValueError, match="sum"):
        PlantedManifolds(d=10, manifolds=[Manifold("circle", probability=0.7), Manifold("circle", probability=0.6)])
    with pytest.raises(ValueError, match="dimensions"):
        PlantedManifolds(d=4, manifolds=[Manifold("sphere", dim=2), Manifold("circle")])


def test_circle_tokens_are_on_a_circle_after_normalisation():
    """What the SAE sees: u = x/||x|| of a centred circle lies on the unit circle of its plane."""
    gen = PlantedManifolds(d=10, manifolds=[Manifold("circle", probability=1.0, radius=3.0)], noise=0.0, seed=5)
    batch = gen.sample(200)
    u = batch.activations / batch.activations.norm(dim=-1, keepdim=True)
    plane = u.double() @ gen.basis(0)
    torch.testing.assert_close(plane.norm(dim=-1), torch.ones(200, dtype=torch.float64), atol=1e-6, rtol=0)
    angle = torch.atan2(plane[:, 1], plane[:, 0])
    diff = torch.remainder(angle - batch.coordinates[:, 0].double() + math.pi, 2 * math.pi) - math.pi
    assert diff.abs().max() < 1e-5
