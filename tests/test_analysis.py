"""sae_bilinear.analysis (and the weight-only sae_bilinear.spectra it re-exports): spectra, composites,
statistics, usage, top activations and the planted-manifold checks."""

from __future__ import annotations

import math

import pytest
import torch
from bilinear_factories import make_sae
from sae_lens.saes.sae import TrainStepInput

from sae_bilinear import (
    BilinearSAE,
    BilinearSAEConfig,
    BilinearTrainingSAE,
    BilinearTrainingSAEConfig,
    analysis,
    kernels,
    latent_pages,
)
from sae_bilinear.synthetic import Manifold, PlantedManifolds

torch.set_num_threads(1)


def degenerate(sae: BilinearSAE) -> BilinearSAE:
    """Latents 0..3: l ∥ r, l ∥ −r, l = 0, r = 0 (incl. their biases)."""
    with torch.no_grad():
        sae.W_right[0] = 2.5 * sae.W_left[0]
        sae.W_right[1] = -0.5 * sae.W_left[1]
        sae.W_left[2] = 0
        sae.W_right[3] = 0
        if sae.cfg.lifted:
            sae.b_right[0] = 2.5 * sae.b_left[0]
            sae.b_right[1] = -0.5 * sae.b_left[1]
            sae.b_left[2] = 0
            sae.b_right[3] = 0
    return sae


def lifted_tokens(sae, x):
    u = kernels.unit_tokens(x).unit
    return analysis.lift(u) if sae.cfg.lifted else u


# ---------------------------------------------------------------------------- spectra


@pytest.mark.parametrize("lifted", [False, True])
def test_closed_form_spectrum_matches_eigh(lifted):
    sae = degenerate(make_sae(lifted=lifted))
    Q = analysis.latent_matrices(sae)
    d = sae.cfg.d_in + int(lifted)
    assert Q.shape == (12, d, d)
    torch.testing.assert_close(Q, Q.transpose(-1, -2))
    exact = torch.linalg.eigvalsh(Q)
    exact = exact.gather(-1, exact.abs().argsort(-1, descending=True))
    spec = analysis.latent_spectrum(sae)
    assert spec.eigenvalues.shape == (12, 2) and spec.eigenvectors.shape == (12, d, 2)
    # The two closed-form eigenvalues are the two largest |λ|; every other one is 0.
    torch.testing.assert_close(spec.eigenvalues, exact[:, :2], atol=1e-10, rtol=1e-10)
    assert exact[:, 2:].abs().max() < 1e-10
    V, lam = spec.eigenvectors, spec.eigenvalues
    torch.testing.assert_close(
        V.transpose(-1, -2) @ V, torch.eye(2, dtype=V.dtype).expand(12, 2, 2), atol=1e-10, rtol=0
    )
    torch.testing.assert_close(Q @ V, V * lam.unsqueeze(-2), atol=1e-10, rtol=0)
    # Q = Σ λ v vᵀ: the pair is the whole form.
    torch.testing.assert_close((V * lam.unsqueeze(-2)) @ V.transpose(-1, -2), Q, atol=1e-10, rtol=0)
    # Degenerate rows: l ∥ r → (λ, 0); l ∥ −r → (−λ, 0); a zero factor → (0, 0).
    assert lam[0, 0] > 0 and lam[0, 1].abs() < 1e-12
    assert lam[1, 0] < 0 and lam[1, 1].abs() < 1e-12
    assert lam[2:4].abs().max() == 0
    # Single index: no batch dim, same numbers.
    one = analysis.latent_spectrum(sae, 5)
    torch.testing.assert_close(one.eigenvalues, lam[5])
    torch.testing.assert_close(analysis.latent_matrices(sae, 5), Q[5])


def test_closed_form_in_float32_and_sign_convention():
    sae = make_sae(d=32, F=64, dtype="float32")
    spec = analysis.latent_spectrum(sae)
    exact = torch.linalg.eigvalsh(analysis.latent_matrices(sae).double())
    exact = exact.gather(-1, exact.abs().argsort(-1, descending=True))[:, :2]
    torch.testing.assert_close(spec.eigenvalues.double(), exact, atol=1e-4, rtol=1e-5)
    # λ+ ≥ 0 pairs with l̂ + r̂, λ− ≤ 0 with l̂ − r̂.
    l_hat = sae.W_left / sae.W_left.norm(dim=-1, keepdim=True)
    r_hat = sae.W_right / sae.W_right.norm(dim=-1, keepdim=True)
    plus = spec.eigenvalues >= 0
    v_plus = torch.where(plus[:, :1], spec.eigenvectors[..., 0], spec.eigenvectors[..., 1])
    assert ((v_plus * (l_hat + r_hat)).sum(-1) > 0).all()


@pytest.mark.parametrize("lifted", [False, True])
def test_latent_is_the_quadratic_form_of_Q(lifted):
    sae = make_sae(lifted=lifted)
    x = torch.randn(20, sae.cfg.d_in, dtype=torch.float64) * 3
    u = lifted_tokens(sae, x)
    Q = analysis.latent_matrices(sae)
    f = torch.einsum("ni,fij,nj->nf", u, Q, u)
    torch.testing.assert_close(f, sae.encode(x))
    torch.testing.assert_close(analysis.latent_activations(sae, x), sae.encode(x))
    spec = analysis.latent_spectrum(sae)
    coords = torch.einsum("ni,fik->nfk", u, spec.eigenvectors)
    torch.testing.assert_close((coords.pow(2) * spec.eigenvalues).sum(-1), f)


def test_full_spectrum_sorted_by_magnitude():
    A = torch.randn(7, 7, dtype=torch.float64)
    spec = analysis.spectrum(A + A.T)
    assert (spec.eigenvalues.abs().diff() <= 1e-12).all()
    torch.testing.assert_close(
        spec.eigenvectors @ torch.diag(spec.eigenvalues) @ spec.eigenvectors.T, A + A.T, atol=1e-10, rtol=0
    )
    assert analysis.spectrum(A + A.T, k=3).eigenvalues.shape == (3,)


def test_effective_rank_and_stats():
    assert float(analysis.effective_rank(torch.tensor([1.0, -1.0]))) == pytest.approx(2.0)
    assert float(analysis.effective_rank(torch.tensor([3.0, 0.0, 0.0]))) == pytest.approx(1.0)
    assert float(analysis.effective_rank(torch.zeros(4))) == 0.0
    assert float(analysis.effective_dimension(torch.tensor([1.0, 1.0, 1.0, 1.0]), p=4)) == pytest.approx(4.0)
    assert float(analysis.captured_share(torch.tensor([4.0, -3.0, 2.0, 1.0]), k=3)) == pytest.approx(0.9)
    assert float(analysis.importance(torch.tensor([1.0, -2.0]))) == pytest.approx(5.0)
    assert float(analysis.hoyer_density(torch.ones(16))) == pytest.approx(1.0)
    assert float(analysis.hoyer_density(torch.tensor([0.0] * 15 + [3.0]))) == pytest.approx(0.0)


def test_subspace_angles():
    Q = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64)).Q
    assert analysis.subspace_angles(Q[:, :3], Q[:, :3] @ torch.randn(3, 3, dtype=torch.float64)).max() < 1e-5
    assert analysis.subspace_angles(Q[:, :2], Q[:, 2:5]).min() == pytest.approx(90.0)
    tilted = torch.stack([Q[:, 0], math.cos(0.3) * Q[:, 1] + math.sin(0.3) * Q[:, 7]], 1)
    torch.testing.assert_close(
        analysis.subspace_angles(Q[:, :2], tilted), torch.tensor([0.0, math.degrees(0.3)], dtype=torch.float64)
    )


# ---------------------------------------------------------------------------- composites


@pytest.mark.parametrize("lifted", [False, True])
def test_composite_matrix_is_weighted_sum_of_forms(lifted):
    sae = make_sae(lifted=lifted)
    v = torch.randn(12, dtype=torch.float64)
    v[::3] = 0
    C = analysis.composite_matrix(sae, v)
    torch.testing.assert_close(C, torch.einsum("f,fij->ij", v, analysis.latent_matrices(sae)))
    x = torch.randn(30, sae.cfg.d_in, dtype=torch.float64)
    u = lifted_tokens(sae, x)
    torch.testing.assert_close(analysis.composite_activations(sae, x, v), torch.einsum("ni,ij,nj->n", u, C, u))
    stats = analysis.composite_stats(sae, v, x)
    eig = torch.linalg.eigvalsh(C)
    assert stats.support == int((v.abs() >= 0.1 * v.abs().max()).sum())
    assert stats.effective_rank == pytest.approx(float(eig.abs().sum() ** 2 / eig.pow(2).sum()))
    assert stats.importance == pytest.approx(float(C.pow(2).sum()))
    assert stats.captured == pytest.approx(float(eig.abs().sort(descending=True).values[:3].sum() / eig.abs().sum()))
    assert 0.0 <= stats.density <= 1.0


def test_single_latent_stats_use_closed_form():
    sae = make_sae()
    w = analysis.latent_weights(sae, 4)
    stats = analysis.composite_stats(sae, w)
    lam = analysis.latent_spectrum(sae, 4).eigenvalues
    assert stats.support == 1 and stats.captured == pytest.approx(1.0)
    assert stats.effective_rank == pytest.approx(float(lam.abs().sum() ** 2 / lam.pow(2).sum()))


def test_mixed_clusters_and_bottleneck_rows():
    sae = make_sae(d=5, F=16, variant="mixed", bottleneck=4)
    D = sae.W_down.detach()
    N = analysis.mixing_overlap(sae)
    torch.testing.assert_close(torch.diagonal(N), torch.ones(16, dtype=N.dtype))
    torch.testing.assert_close(N, N.T)
    cols = D / D.norm(dim=0)
    torch.testing.assert_close(N, cols.T @ cols)
    w = analysis.cluster_weights(sae, 3, size=5)
    assert int((w != 0).sum()) == 5 and w[3] == pytest.approx(1.0)
    kept = (w != 0).nonzero().squeeze(-1)
    dropped = (w == 0).nonzero().squeeze(-1)
    assert N[3, kept].abs().min() >= N[3, dropped].abs().max()
    torch.testing.assert_close(w[kept], N[3, kept])
    assert (analysis.cluster_weights(sae, 3, size=5, signed=False) >= 0).all()
    torch.testing.assert_close(analysis.interaction_matrix(sae, [3, 7, 1]), N[[3, 7, 1]][:, [3, 7, 1]])
    # Bottleneck unit k reads h_k = (D f)_k = ũᵀ C_k ũ.
    x = torch.randn(25, 5, dtype=torch.float64)
    f = sae.encode(x)
    torch.testing.assert_close(
        analysis.composite_activations(sae, x, analysis.bottleneck_weights(sae, 2)), (f @ D.T)[:, 2]
    )
    direction = torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(analysis.direction_weights(sae, direction), D.T @ direction)
    with pytest.raises(ValueError, match="W_down"):
        analysis.mixing_overlap(make_sae())


@pytest.mark.parametrize("variant", ["vanilla", "mixed"])
def test_activation_direction_read_through_lifted_sae(variant):
    sae = make_sae(d=5, F=16, variant=variant, lifted=True, bottleneck=7 if variant == "mixed" else None)
    x = torch.randn(9, 5, dtype=torch.float64) * 2
    y = torch.randn(5, dtype=torch.float64)
    w = analysis.direction_weights(sae, y)
    u_hat = sae.decode(sae.encode(x)) / x.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(analysis.composite_activations(sae, x, w), u_hat @ y)
    with pytest.raises(ValueError, match="lifted"):
        analysis.direction_weights(make_sae(d=5, F=16), y)
    latent_space = torch.randn(16, dtype=torch.float64)
    torch.testing.assert_close(analysis.direction_weights(sae, latent_space), latent_space)
    with pytest.raises(ValueError, match="expected one of"):
        analysis.direction_weights(sae, torch.randn(11))
    ambiguous = make_sae(d=5, F=5, lifted=True)  # d_in == d_sae
    with pytest.raises(ValueError, match="ambiguous"):
        analysis.direction_weights(ambiguous, y)
    torch.testing.assert_close(analysis.direction_weights(ambiguous, y, space="latents"), y)


# ---------------------------------------------------------------------------- activations


def planted_latent_sae() -> tuple[BilinearSAE, torch.Tensor, torch.Tensor]:
    """Latent 0 = (e0·u)(e1·u) on tokens in the (e0, e1) plane; others random."""
    sae = make_sae(d=8, F=6, dtype="float32")
    with torch.no_grad():
        sae.W_left[0] = torch.eye(8)[0]
        sae.W_right[0] = torch.eye(8)[1]
    theta = torch.linspace(0, 2 * math.pi, 401)[:-1]
    circle = torch.zeros(400, 8)
    circle[:, 0], circle[:, 1] = theta.cos(), theta.sin()
    x = torch.cat([circle * 5, 0.2 * torch.randn(200, 8), torch.zeros(3, 8)])
    return sae, x, theta


def test_top_activations_of_a_latent():
    sae, x, theta = planted_latent_sae()
    contexts = [f"ctx {i}" for i in range(len(x))]
    tokens = [f"t{i}" for i in range(len(x))]
    top = analysis.top_activations(sae, x, 0, n=40, tokens=tokens, contexts=contexts)
    f = sae.encode(x)[:, 0]
    assert len(top.indices) == 40 and top.coordinates.shape == (40, 3)
    # Half the highest, half the lowest activations; zero tokens never chosen.
    expected_high = set(f.topk(20).indices.tolist())
    expected_low = set(f.topk(20, largest=False).indices.tolist())
    assert set(top.indices[:20].tolist()) == expected_high and set(top.indices[20:].tolist()) == expected_low
    assert (top.indices < 600).all()
    torch.testing.assert_close(top.values, f[top.indices])
    assert top.tokens == [tokens[i] for i in top.indices.tolist()]
    assert top.contexts == [contexts[i] for i in top.indices.tolist()]
    # Axes: the two eigenvectors (in the e0/e1 plane), then a residual direction.
    torch.testing.assert_close(top.axes.T @ top.axes, torch.eye(3), atol=1e-5, rtol=0)
    assert analysis.subspace_angles(top.axes[:, :2], torch.eye(8)[:, :2]).max() < 1e-3
    assert top.axis_eigenvalues[2] == 0 and top.axis_labels[2].startswith("residual")
    torch.testing.assert_close(top.axis_eigenvalues[:2].abs(), torch.tensor([0.5, 0.5]))
    # f = Σ λ_k c_k² on the two eigen-axes; circle tokens sit on the unit circle.
    torch.testing.assert_close(
        (top.coordinates[:, :2].pow(2) * top.axis_eigenvalues[:2]).sum(-1), top.values, atol=1e-5, rtol=0
    )
    torch.testing.assert_close(top.coordinates[:, :2].norm(dim=-1), torch.ones(40), atol=1e-4, rtol=0)
    for sign, check in (
        ("positive", lambda v: (v > 0).all()),
        ("negative", lambda v: (v < 0).all()),
        ("abs", lambda v: True),
    ):
        assert check(analysis.top_activations(sae, x, 0, n=10, sign=sign).values)
    with pytest.raises(ValueError, match="contexts"):
        analysis.top_activations(sae, x, 0, contexts=["a"])
    with pytest.raises(ValueError, match="exactly one"):
        analysis.top_activations(sae, x)


def test_top_activations_of_a_composite_use_full_spectrum():
    sae, x, _ = planted_latent_sae()
    w = torch.tensor([1.0, 0.5, -0.3, 0, 0, 0.2])
    top = analysis.top_activations(sae, x, weights=w, n=50, sign="abs")
    spec = analysis.composite_spectrum(sae, w)
    assert analysis.subspace_angles(top.axes, spec.eigenvectors[:, :3]).max() < 1e-3
    torch.testing.assert_close(top.values, analysis.composite_activations(sae, x, w)[top.indices])
    assert (top.axis_eigenvalues != 0).all()


def test_choose_top_latents_by_frequency():
    sae, x, _ = planted_latent_sae()
    ones = torch.ones(8) / 8**0.5
    with torch.no_grad():  # latent 3 reads the ones direction; the others are blind to it
        sae.W_left -= (sae.W_left @ ones).unsqueeze(-1) * ones  # pyright: ignore[reportAttributeAccessIssue]
        sae.W_left[3] = ones
        sae.W_right[3] = ones
    x = torch.ones(50, 8) + 0.01 * torch.randn(50, 8)
    assert analysis.choose_top_latents(sae, x, 1) == [3]
    usage = analysis.latent_usage(sae, x)
    assert set(usage) == {"frequency", "energy", "mean_abs", "max_abs"}
    assert float(usage["frequency"][3]) == 1.0
    assert len(analysis.choose_top_latents(sae, x, 4, by="energy")) == 4
    # A subset is the same numbers (computed alone for vanilla, sliced for mixed/TopK).
    some = analysis.latent_usage(sae, x, [3, 1])
    for name in usage:
        torch.testing.assert_close(some[name], usage[name][[3, 1]])
    for other in (make_sae(d=8, F=6, variant="mixed", bottleneck=4), make_topk_sae()):
        full, part = analysis.latent_usage(other, x), analysis.latent_usage(other, x, [3, 1])
        for name in full:
            torch.testing.assert_close(part[name], full[name][[3, 1]])


def make_topk_sae() -> BilinearSAE:
    torch.manual_seed(0)
    return BilinearSAE(BilinearSAEConfig(d_in=8, d_sae=6, sparsity="topk", k=2, dtype="float64"))


def test_topk_usage_counts_only_kept_latents():
    sae = make_topk_sae()
    x = torch.randn(40, 8, dtype=torch.float64)
    usage = analysis.latent_usage(sae, x)
    kept = (sae.encode(x) != 0).double()
    # At most k latents per token can count as active.
    assert float(usage["frequency"].sum()) <= 2.0 + 1e-9
    assert (usage["frequency"] <= kept.mean(0) + 1e-12).all()


# ---------------------------------------------------------------------------- planted manifolds


@pytest.fixture(scope="module")
def planted():
    """A vanilla bilinear SAE trained ~5 s on a circle + a paraboloid patch + linear features."""
    data = PlantedManifolds(
        d=16,
        manifolds=[
            Manifold("circle", probability=0.3),
            Manifold("paraboloid", dim=2, offset=1.0, radius=1.5, curvature=0.5, probability=0.3),
        ],
        n_linear=6,
        linear_probability=0.05,
        noise=0.02,
        seed=0,
    )
    torch.manual_seed(0)
    steps, warm_up, alpha = 400, 100, 0.1
    sae = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=16, d_sae=32, alpha=alpha, alpha_warm_up_steps=warm_up))
    optimiser = torch.optim.Adam(sae.parameters(), lr=1e-2)
    for step in range(steps):
        batch = data.sample(512).activations
        coefficient = alpha * min(1.0, step / warm_up)
        out = sae.training_forward_pass(TrainStepInput(batch, {"alpha": coefficient}, None, step, False))
        optimiser.zero_grad()
        out.loss.backward()
        optimiser.step()
    test = data.sample(8192)
    return data, sae.eval(), test


def manifold_composite(sae, test, m):
    """Weights = mean decoder coefficients g over manifold m's tokens: Σ ḡ_i Q_i is the SAE's
    reconstruction of E[ũ⊗ũ | m], whose top eigenvectors span the manifold's subspace."""
    with torch.no_grad():
        f = analysis.latent_activations(sae, test.activations[test.manifold == m])
        return sae.coefficients(f).mean(0)


@pytest.mark.slow
@pytest.mark.parametrize("m", [0, 1], ids=["circle", "paraboloid"])
def test_planted_manifold_subspace_is_recovered(planted, m):
    data, sae, test = planted
    basis = data.basis(m)
    k = basis.shape[1]
    weights = manifold_composite(sae, test, m)
    spec = analysis.composite_spectrum(sae, weights)
    angles = analysis.subspace_angles(spec.eigenvectors[:, :k], basis)
    # Baseline: top-k eigenvectors of the tokens' own second moment (the best any quadratic
    # form can do from these tokens; off by noise and co-occurring linear features only).
    u = kernels.unit_tokens(test.activations[test.manifold == m]).unit.double()
    pca = analysis.spectrum(u.T @ u / len(u)).eigenvectors[:, :k]
    baseline = analysis.subspace_angles(pca, basis)
    # Bound: a random k-plane in 16 dims has its largest principal angle above 60° with
    # overwhelming probability, the noise/sampling floor (baseline) is < 5°, so every angle
    # < 10° and within 5° of the baseline means the SAE's form spans the planted subspace.
    assert angles.max() < 10.0, (angles, baseline)
    assert (angles - baseline).max() < 5.0, (angles, baseline)
    # Its top eigenvalues stand out: the k-th is > 2× the (k+1)-th.
    lam = spec.eigenvalues.abs()
    assert lam[k - 1] > 2 * lam[k]


def procrustes_residual(points: torch.Tensor, target: torch.Tensor) -> float:
    """Relative RMS of points − target·R after the best rotation/reflection R (both centred)."""
    p = points.double() - points.double().mean(0)
    t = target.double() - target.double().mean(0)
    U, _, Vh = torch.linalg.svd(t.T @ p, full_matrices=False)
    fitted = t @ (U @ Vh)
    return float((p - fitted).norm() / p.norm())


@pytest.mark.slow
def test_planted_circle_projects_to_a_circle(planted, tmp_path):
    data, sae, test = planted
    weights = manifold_composite(sae, test, 0)
    top = analysis.top_activations(sae, test.activations, weights=weights, n=1500, sign="positive")
    assert (test.manifold[top.indices] == 0).float().mean() > 0.98
    radius = top.coordinates[:, :2].norm(dim=-1)
    assert float(radius.std() / radius.mean()) < 0.02  # near-constant radius in the top-2 plane
    angles = torch.atan2(top.coordinates[:, 1], top.coordinates[:, 0])
    assert torch.histc(angles, bins=8, min=-math.pi, max=math.pi).min() > 0  # the whole circle
    # The view is the planted circle up to a rotation: compare with the true (cos θ, sin θ).
    theta = test.coordinates[top.indices, 0]
    truth = torch.stack([theta.cos(), theta.sin()], -1)
    assert procrustes_residual(top.coordinates[:, :2], truth) < 0.05


@pytest.mark.slow
def test_planted_paraboloid_projects_to_its_surface(planted):
    data, sae, test = planted
    weights = manifold_composite(sae, test, 1)
    top = analysis.top_activations(sae, test.activations, weights=weights, n=400, sign="positive")
    on = test.manifold[top.indices] == 1
    assert on.float().mean() > 0.95
    # Ground truth: the planted point p = (t, offset + curvature|t|²) seen as u = p/|p|.
    local = test.local[top.indices][on][:, :3]
    truth = local / local.norm(dim=-1, keepdim=True)
    assert procrustes_residual(top.coordinates[on], truth) < 0.1
    # And it is curved: a plane through the points leaves a clear residual, the truth does not.
    centred = top.coordinates[on].double() - top.coordinates[on].double().mean(0)
    assert torch.linalg.svdvals(centred)[-1] / torch.linalg.svdvals(centred)[0] > 0.05


@pytest.mark.slow
def test_planted_latent_analysis_files(planted, tmp_path):
    data, sae, test = planted
    names = {-1: "off", 0: "circle", 1: "paraboloid"}
    contexts = [names[int(m)] for m in test.manifold]
    latent = analysis.choose_top_latents(sae, test.activations, 1)[0]
    report = latent_pages.analyze_latent(sae, latent, test.activations, contexts, tmp_path, n=200)
    assert report["latent"] == latent and report["stats"]["support"] == 1
    assert len(report["eigenvalues"]) == 2


# ---------------------------------------------------------------------------- pieces the atlas streams


def test_form_sketch_is_linear_and_keeps_inner_products():
    sae = make_sae(d=5, F=8, lifted=True, seed=3)
    sketch = analysis.form_sketch(sae, dims=20000, seed=1)
    assert sketch.shape == (8, 20000)
    torch.testing.assert_close(analysis.form_sketch(sae, dims=20000, seed=1), sketch)  # deterministic
    Q = analysis.latent_matrices(sae).reshape(8, -1)
    # E[S_i·S_j] = dims·<Q_i, Q_j>: the sketch's Gram matrix estimates the forms' (relative error ~ 1/√dims).
    gram, exact = sketch @ sketch.T / 20000, Q @ Q.T
    assert float((gram - exact).norm() / exact.norm()) < 0.05
    # Linear in Q: a_rᵀ Q_j b_r, checked against the explicit matrices.
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(6, 20000, generator=generator, dtype=torch.float64)
    b = torch.randn(6, 20000, generator=generator, dtype=torch.float64)
    explicit = torch.einsum("ir,fij,jr->fr", a[:, :5], analysis.latent_matrices(sae), b[:, :5])
    torch.testing.assert_close(sketch[:, :5], explicit)
    with pytest.raises(ValueError, match="dims"):
        analysis.form_sketch(sae, dims=0)


def test_token_latents_match_encode_and_mark_invalid_tokens():
    sae = make_sae(d=6, F=9, lifted=True, dtype="float32")
    x = torch.randn(7, 6)
    x[3] = 0
    x[5, 2] = float("nan")
    f, valid = analysis.token_latents(sae, x)
    assert valid.tolist() == [True, True, True, False, True, False, True]
    torch.testing.assert_close(f[valid], sae.encode(x[valid]))
    assert (f[~valid] == 0).all()
    torch.testing.assert_close(analysis.latent_activations(sae, x, batch_size=2), f)


def test_manifold_view_of_a_rank2_form_adds_one_residual_axis():
    sae, x, _ = planted_latent_sae()
    units = analysis.lifted_units(sae, x[:400])
    view = analysis.manifold_view(units, analysis.latent_spectrum(sae, 0))
    assert view.coordinates.shape == (400, 3) and view.axis_labels[2] == "residual PC0"
    torch.testing.assert_close(
        view.axes.T @ view.axes, torch.eye(3, dtype=torch.float64), atol=1e-6, rtol=0
    )  # float32 eigenvectors
    torch.testing.assert_close(view.coordinates, units @ view.axes)


def test_composite_matrices_batch_the_composite_matrix():
    sae = make_sae(d=5, F=9, lifted=True, seed=2)
    weights = torch.randn(4, 9, dtype=torch.float64)
    batch = analysis.composite_matrices(sae, weights)
    for b in range(4):
        torch.testing.assert_close(batch[b], analysis.composite_matrix(sae, weights[b]))
    fast = analysis.spectrum(batch, dtype=torch.float32)
    exact = analysis.spectrum(batch)
    torch.testing.assert_close(fast.eigenvalues, exact.eigenvalues, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="d_sae"):
        analysis.composite_matrices(sae, torch.randn(4, 8))
    with pytest.raises(ValueError, match="dtype"):
        analysis.spectrum(batch, dtype=torch.float16)
