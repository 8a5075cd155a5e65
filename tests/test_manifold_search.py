"""manifold_search: rings found without labels on planted circles of known plane; the readout
and geometry measurements against brute force."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from sae_bilinear import analysis
from sae_bilinear import manifold_search as ms
from sae_bilinear.errors import ConfigError
from sae_bilinear.synthetic import Manifold, PlantedManifolds

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def planted():
    """An offset circle (plane c1, c2; offset along n) among sparse linear features, and a
    hand-made bilinear dictionary: latents 3 and 17 read n⊗c1 and n⊗c2 (the circle's two
    coordinates against the shared direction), latent 5 a near copy of 3 (a line, not a ring),
    the rest random."""
    data = PlantedManifolds(
        d=16,
        manifolds=[Manifold("circle", probability=0.1, offset=1.0, scale=2.0)],
        n_linear=12,
        linear_probability=0.1,
        noise=0.02,
        seed=0,
    )
    basis = data.basis(0).float()
    c1, c2, n = basis[:, 0], basis[:, 1], basis[:, 2]
    g = torch.Generator().manual_seed(1)
    left = torch.randn(40, 16, generator=g) / 4
    right = torch.randn(40, 16, generator=g) / 4
    left[3], right[3] = n, c1
    left[17], right[17] = n, c2
    left[5], right[5] = n, c1 + 0.05 * torch.randn(16, generator=g)
    sae = SimpleNamespace(W_left=left, W_right=right)
    batch = data.sample(8000)
    return SimpleNamespace(sae=sae, batch=batch, plane=basis[:, :2].double())


def test_find_circles_ranks_the_planted_pair_first(planted):
    found = ms.find_circles(planted.sae, planted.batch.activations, n_candidates=60, top=5)
    best = found[0]
    assert best.latents == (3, 17)
    assert float(analysis.subspace_angles(best.plane, planted.plane).max()) < 5.0
    on_circle = planted.batch.manifold[best.ring_tokens] == 0
    assert on_circle.double().mean() > 0.9  # the ring is made of the circle's tokens
    assert best.ring.score > found[1].ring.score
    assert all(c.latents != (3, 5) for c in found[:1])  # the line pair is no ring


def test_ring_fit_separates_ring_from_blob_and_line():
    g = torch.Generator().manual_seed(0)
    bulk = 0.1 * torch.randn(3000, 2, generator=g)
    theta = torch.rand(600, generator=g) * 2 * math.pi
    ring = torch.stack([theta.cos(), theta.sin()], 1) * 3 + 0.1 * torch.randn(600, 2, generator=g)
    blob = torch.randn(3600, 2, generator=g)
    t = torch.randn(600, generator=g) * 3
    line = torch.stack([t, 0.5 * t], 1) + 0.05 * torch.randn(600, 2, generator=g)
    score_ring = ms.ring_fit(torch.cat([bulk, ring])).score
    assert score_ring > 0.7
    assert ms.ring_fit(blob).score < 0.3
    assert ms.ring_fit(torch.cat([bulk, line])).score < 0.3
    # A ring through the bulk (a quadratic latent's circle) is found too.
    assert ms.ring_fit(torch.cat([bulk, ring + torch.tensor([3.0, 0.0])])).score > 0.6


def test_cyclic_order():
    angles = torch.arange(7) * 2 * math.pi / 7
    points = torch.stack([angles.cos(), angles.sin()], 1) + torch.tensor([5.0, -2.0])
    assert ms.cyclic_order(points) == (True, list(range(7)))
    assert ms.cyclic_order(points.flip(0).roll(1, 0))[0]  # reversed direction still cyclic
    swapped = points.clone()
    swapped[[2, 4]] = swapped[[4, 2]]
    assert not ms.cyclic_order(swapped)[0]


def test_pair_r2_matrix_matches_least_squares():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(200, 6, generator=g, dtype=torch.float64)
    y = torch.stack([f[:, 1] - 2 * f[:, 4], f[:, 4]], 1) + 0.3 * torch.randn(200, 2, generator=g, dtype=torch.float64)
    matrix = ms.pair_r2_matrix(f, y)
    for i, j in ((1, 4), (0, 2), (3, 5)):
        coefficients = ms.fit_readout(f[:, [i, j]], y)
        expected = ms.r2(ms.apply_readout(f[:, [i, j]], coefficients), y)
        assert matrix[i, j].item() == pytest.approx(expected, abs=1e-9)
        assert matrix[j, i].item() == pytest.approx(expected, abs=1e-9)
    assert matrix.diagonal().eq(-math.inf).all()
    pair = ms.best_pairs(f[:100], y[:100], f[100:], y[100:])
    assert pair.pair == (1, 4) and pair.r2_heldout > 0.8
    assert ms.single_r2(f[:100], y[:100], f[100:], y[100:]).pair == (4, 4)


def test_greedy_readout_picks_the_informative_latents():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(400, 10, generator=g, dtype=torch.float64)
    y = torch.stack([f[:, 7] + f[:, 2], f[:, 2] - 0.5 * f[:, 9]], 1)
    chosen, curve = ms.greedy_readout(f[:200], y[:200], f[200:], y[200:], max_k=4)
    assert set(chosen[:3]) == {2, 7, 9}
    assert curve[2] > 0.999 and curve[0] < curve[2]


def test_plane_angles_and_span_share():
    g = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(8, 4, generator=g, dtype=torch.float64)).Q
    plane = q[:, :2]
    inside = torch.stack([plane[:, 0] + plane[:, 1], plane[:, 0] - 2 * plane[:, 1], q[:, 3]], 1)
    outside = q[:, 2:4]
    angles = ms.plane_angles(torch.stack([inside[:, :2], outside]), plane)
    assert angles[0].item() < 1e-5 and angles[1].item() == pytest.approx(90.0, abs=1e-5)
    tokens = torch.randn(50, 8, generator=g, dtype=torch.float64)
    shares = ms.span_share(torch.stack([inside[:, :2], outside, torch.stack([plane[:, 0], q[:, 3]], 1)]), tokens, plane)
    assert shares[0].item() == pytest.approx(1.0) and shares[1].item() == pytest.approx(0.0, abs=1e-12)
    assert 0.1 < shares[2].item() < 0.9  # half the plane


def test_draw_circle_labels_the_arcs(planted, tmp_path):
    found = ms.find_circles(planted.sae, planted.batch.activations, n_candidates=60, top=1)
    # Name each circle token by its planted angle (a twelfth of the turn per name).
    angle = planted.batch.coordinates[:, 0]
    names = [
        f"m{int(a / (2 * math.pi) * 12) % 12}" if planted.batch.manifold[i] == 0 else "x"
        for i, a in enumerate(angle.tolist())
    ]
    path = ms.draw_circle(planted.sae, planted.batch.activations, found[0], tmp_path / "circle.png", tokens=names)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    f = analysis.latent_activations(planted.sae, planted.batch.activations)[:, [3, 17]].double()
    points = ms.standardise(f)
    ring = ms.ring_points(points)
    fit = ms.ring_fit(points)
    labels = ms.arc_labels(points[ring], fit.center, [names[i] for i in ring.nonzero().squeeze(1).tolist()])
    order = [int(label[1:]) for _, label, _ in labels if label != "x"]
    assert len(order) >= 10
    steps = [(b - a) % 12 for a, b in zip(order, order[1:] + order[:1], strict=False)]
    assert all(s == steps[0] for s in steps[:-1]) or all(s in (1, 11) for s in steps)  # going round, in order
    html = ms.circle_page(
        planted.sae, planted.batch.activations, found[0], tmp_path / "circle.html", tokens=names, n=100
    )
    assert "plotly" in html.read_text()[:5000].lower()


@pytest.mark.parametrize(
    "kwargs,field", [({"top": 0}, "top"), ({"n_candidates": -1}, "n_candidates"), ({"top": 2.5}, "top")]
)
def test_find_circles_bad_arguments(planted, kwargs, field):
    with pytest.raises(ConfigError, match=field):
        ms.find_circles(planted.sae, planted.batch.activations[:100], **kwargs)


def test_ring_fit_bad_shape():
    with pytest.raises(ConfigError, match="points"):
        ms.ring_fit(torch.zeros(10, 3))


def test_ring_fit_rejects_the_tail_of_a_blob():
    """Scattered points on one side of a dense blob are not a ring around anything."""
    g = torch.Generator().manual_seed(0)
    blob = torch.randn(5000, 2, generator=g)
    theta = torch.rand(200, generator=g) * 2 * math.pi
    tail = torch.stack([theta.cos(), theta.sin()], 1) * 1.5 + torch.tensor([-5.0, -4.0])
    fit = ms.ring_fit(torch.cat([blob, tail]))
    assert fit.score < 0.2


def test_type_ring_finds_a_circle_of_token_types():
    """Twelve token types placed around a ring (each a noisy cluster) among background tokens;
    the same points with the types shuffled across the ring draw no ring of types."""
    g = torch.Generator().manual_seed(0)
    background = 0.2 * torch.randn(4000, 2, generator=g)
    kind = torch.randint(0, 12, (1200,), generator=g)
    angle = kind.double() * 2 * math.pi / 12
    ring = 4 * torch.stack([angle.cos(), angle.sin()], 1) + 0.5 * torch.randn(1200, 2, generator=g, dtype=torch.float64)
    points = torch.cat([background.double(), ring])
    ids = torch.cat([torch.randint(100, 5000, (4000,), generator=g), kind + 10])
    fit = ms.type_ring(points, ids)
    assert fit.score > 0.75 and fit.purity > 0.9
    assert sorted(fit.types) == list(range(10, 22))
    order = [t - 10 for t in fit.types]
    steps = {(b - a) % 12 for a, b in zip(order, order[1:] + order[:1], strict=True)}
    assert steps in ({1}, {11})  # the types come round in order
    shuffled = torch.cat([ids[:4000], ids[4000:][torch.randperm(1200, generator=g)]])
    assert ms.type_ring(points, shuffled).score < 0.3  # every type everywhere: no ring of types
    with pytest.raises(ConfigError, match="token_ids"):
        ms.type_ring(points, ids[:10])


def test_find_circles_ranks_by_token_types_when_given(planted):
    angle = planted.batch.coordinates[:, 0]
    on = planted.batch.manifold == 0
    ids = torch.where(on, (angle / (2 * math.pi) * 12).long().clamp(0, 11), 1000 + torch.arange(on.shape[0]) % 50)
    found = ms.find_circles(planted.sae, planted.batch.activations, token_ids=ids, n_candidates=60, top=3)
    assert found[0].latents == (3, 17)
    assert found[0].types is not None and found[0].score == found[0].types.score
    assert set(found[0].types.types) <= set(range(12)) and len(found[0].types.types) >= 10


def test_draw_circle_with_token_types(planted, tmp_path):
    angle = planted.batch.coordinates[:, 0]
    on = planted.batch.manifold == 0
    ids = torch.where(on, (angle / (2 * math.pi) * 12).long().clamp(0, 11), 1000 + torch.arange(on.shape[0]) % 50)
    names = [f"m{int(i)}" if int(i) < 12 else "x" for i in ids]
    found = ms.find_circles(planted.sae, planted.batch.activations, token_ids=ids, n_candidates=60, top=1)
    path = ms.draw_circle(
        planted.sae, planted.batch.activations, found[0], tmp_path / "types.png", tokens=names, token_ids=ids
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="token_ids"):
        ms.draw_circle(planted.sae, planted.batch.activations, found[0], tmp_path / "bad.png", token_ids=ids[:5])
