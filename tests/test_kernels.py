"""Kernel-trick loss against naive materialisation of X = ũ⊗ũ in float64."""

from __future__ import annotations

import itertools

import pytest
import torch

from sae_bilinear import kernels

torch.set_default_dtype(torch.float32)

VARIANT_LIFT = list(itertools.product(kernels.VARIANTS, [False, True]))


def make_weights(d: int, F: int, variant: str, lifted: bool, bottleneck: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W_left = torch.randn(F, d, generator=g, dtype=torch.float64) / d**0.5
    W_right = torch.randn(F, d, generator=g, dtype=torch.float64) / d**0.5
    b_left = torch.randn(F, generator=g, dtype=torch.float64) if lifted else None
    b_right = torch.randn(F, generator=g, dtype=torch.float64) if lifted else None
    W_down = (
        torch.randn(bottleneck, F, generator=g, dtype=torch.float64) / F**0.5 if kernels.is_mixed(variant) else None
    )
    return W_left, W_right, b_left, b_right, W_down


def lift(v: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Row-wise [b, v] (or v when unlifted)."""
    if b is None:
        return v
    return torch.cat([b.unsqueeze(-1), v], dim=-1)


def naive_error(x, W_left, W_right, b_left, b_right, W_down, variant, k=None):
    """||X − X̂||²/||ũ||⁴ with X and X̂ written out in full (d² entries), float64.

    Ordered variants: the explicit mean over all F prefixes X̂_{≤k}.
    """
    u = x / x.norm(dim=-1, keepdim=True)
    u_lift = lift(u, None if b_left is None else torch.ones(u.shape[0], dtype=u.dtype))
    X = torch.einsum("bi,bj->bij", u_lift, u_lift)
    L, R = lift(W_left, b_left), lift(W_right, b_right)
    f = (u_lift @ L.T) * (u_lift @ R.T)
    assert torch.allclose(torch.einsum("bij,fi,fj->bf", X, L, R), f)  # <X, l⊗r> = f
    if k is not None:
        f_sparse = kernels.topk_by_magnitude(f, k)
    else:
        f_sparse = f
    g = f_sparse if W_down is None else (f_sparse @ W_down.T) @ W_down
    atoms = torch.einsum("fi,fj->fij", L, R)
    norm4 = u_lift.pow(2).sum(-1).pow(2)
    if kernels.is_ordered(variant):
        F = L.shape[0]
        errors = []
        for prefix in range(1, F + 1):
            X_hat = torch.einsum("bf,fij->bij", g[:, :prefix], atoms[:prefix])
            errors.append((X - X_hat).pow(2).sum((-1, -2)))
        return torch.stack(errors).mean(0) / norm4
    X_hat = torch.einsum("bf,fij->bij", g, atoms)
    return (X - X_hat).pow(2).sum((-1, -2)) / norm4


def kernel_objective(x, W_left, W_right, b_left, b_right, W_down, variant, k=None):
    tokens = kernels.unit_tokens(x)
    f = kernels.bilinear_latents(tokens.unit, W_left, W_right, b_left, b_right)
    f_sparse = f if k is None else kernels.topk_by_magnitude(f, k)
    g = f_sparse if W_down is None else kernels.mix(f_sparse, W_down)
    return kernels.kernel_error(
        f, g, W_left, W_right, b_left, b_right, tokens.valid, ordered=kernels.is_ordered(variant)
    ).error


@pytest.mark.parametrize("variant,lifted", VARIANT_LIFT)
def test_kernel_error_matches_naive_float64(variant, lifted):
    d, F = 5, 7
    weights = make_weights(d, F, variant, lifted)
    x = torch.randn(6, d, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 3
    expected = naive_error(x, *weights, variant)
    got = kernel_objective(x, *weights, variant)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("variant,lifted", VARIANT_LIFT)
def test_kernel_error_with_topk_matches_naive(variant, lifted):
    d, F = 4, 9
    weights = make_weights(d, F, variant, lifted, seed=3)
    x = torch.randn(5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for k in (1, 3, F):
        torch.testing.assert_close(
            kernel_objective(x, *weights, variant, k=k), naive_error(x, *weights, variant, k=k), rtol=1e-10, atol=0
        )


@pytest.mark.parametrize("variant,lifted", VARIANT_LIFT)
def test_kernel_error_gradients_by_gradcheck(variant, lifted):
    d, F = 3, 4
    weights = [w.requires_grad_() if w is not None else None for w in make_weights(d, F, variant, lifted, bottleneck=2)]
    x = torch.randn(3, d, dtype=torch.float64, generator=torch.Generator().manual_seed(4), requires_grad=True)
    present = [w for w in weights if w is not None]

    def loss(x, *params):
        it = iter(params)
        W_left, W_right, b_left, b_right, W_down = (next(it) if w is not None else None for w in weights)
        return kernel_objective(x, W_left, W_right, b_left, b_right, W_down, variant)

    assert torch.autograd.gradcheck(loss, (x, *present), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("variant,lifted", VARIANT_LIFT)
def test_kernel_gradients_equal_naive_gradients(variant, lifted):
    d, F = 4, 5
    weights = make_weights(d, F, variant, lifted)
    x = torch.randn(4, d, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    present = [w for w in weights if w is not None]

    def grads(fn):
        params = [w.clone().requires_grad_() for w in present]
        it = iter(params)
        full = [next(it) if w is not None else None for w in weights]
        fn(x, *full, variant).sum().backward()
        return [p.grad for p in params]

    for got, expected in zip(grads(kernel_objective), grads(naive_error), strict=False):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


def test_ordered_loss_uses_prefix_weights_closed_form():
    F = 6
    pair = kernels.prefix_pair_weights(F, dtype=torch.float64)
    single = kernels.prefix_weights(F, dtype=torch.float64)
    # Share of the F prefixes {0..k-1} that contain both i and j / contain j.
    for i in range(F):
        assert single[i] == sum(1 for k in range(1, F + 1) if i < k) / F
        for j in range(F):
            assert pair[i, j] == sum(1 for k in range(1, F + 1) if max(i, j) < k) / F


def test_mixed_equals_vanilla_with_mixed_coefficients():
    d, F = 5, 8
    W_left, W_right, b_left, b_right, W_down = make_weights(d, F, "mixed", True)
    x = torch.randn(7, d, dtype=torch.float64)
    tokens = kernels.unit_tokens(x)
    f = kernels.bilinear_latents(tokens.unit, W_left, W_right, b_left, b_right)
    g = (f @ W_down.T) @ W_down
    mixed = kernel_objective(x, W_left, W_right, b_left, b_right, W_down, "mixed")
    vanilla_with_g = kernels.kernel_error(f, g, W_left, W_right, b_left, b_right, tokens.valid).error
    torch.testing.assert_close(mixed, vanilla_with_g, rtol=1e-12, atol=0)
    # For mixed, the cross term gᵀf is ||D f||².
    cross = kernels.kernel_error(f, g, W_left, W_right, b_left, b_right, tokens.valid).cross
    torch.testing.assert_close(cross, (f @ W_down.T).pow(2).sum(-1))


def test_hoyer_density_extremes():
    n, F = 16, 3
    one_hot = torch.zeros(n, F)
    one_hot[5, 0] = 3.0
    one_hot[:, 1] = -2.0  # constant (sign does not matter)
    one_hot[:, 2] = torch.linspace(0.1, 1.0, n)
    h = kernels.hoyer_density(one_hot)
    assert h[0].item() == pytest.approx(0.0, abs=1e-7)
    assert h[1].item() == pytest.approx(1.0, abs=1e-6)
    assert 0.0 < h[2].item() < 1.0
    # Scale invariance: the reason latents do not shrink under it.
    torch.testing.assert_close(kernels.hoyer_density(one_hot * 1000.0), h)


def test_hoyer_density_of_dead_latent_and_masking():
    f = torch.zeros(4, 2)
    f[:, 1] = 1.0
    assert kernels.hoyer_density(f).tolist() == pytest.approx([0.0, 1.0])
    # Masked tokens do not count, even when their values are huge.
    f[0, 1] = 1e6
    valid = torch.tensor([False, True, True, True])
    assert kernels.hoyer_density(f, valid)[1].item() == pytest.approx(1.0, abs=1e-6)


def test_ordered_density_weights_are_harmonic_tails_with_mean_one():
    F = 10
    w = kernels.tail_harmonic_weights(F, dtype=torch.float64)
    for j in range(F):
        assert w[j].item() == pytest.approx(sum(1.0 / m for m in range(j + 1, F + 1)))
    assert w.mean().item() == pytest.approx(1.0)
    f = torch.randn(32, F)
    assert kernels.density(f, ordered=True).item() == pytest.approx(
        (kernels.hoyer_density(f) * w.float()).mean().item(), rel=1e-6
    )


def test_invalid_tokens_are_masked_never_nan():
    d, F = 4, 6
    W_left, W_right, b_left, b_right, _ = make_weights(d, F, "vanilla", True)
    params = [p.clone().requires_grad_() for p in (W_left, W_right, b_left, b_right)]
    x = torch.randn(5, d, dtype=torch.float64)
    x[1] = 0.0
    x[2, 0] = float("nan")
    x[3, 1] = float("inf")
    x.requires_grad_()
    tokens = kernels.unit_tokens(x)
    assert tokens.valid.tolist() == [True, False, False, False, True]
    L, R, bl, br = params
    f = kernels.bilinear_latents(tokens.unit, L, R, bl, br)
    error = kernels.kernel_error(f, f, L, R, bl, br, tokens.valid).error
    assert torch.isfinite(error).all()
    assert error[1:4].tolist() == [0.0, 0.0, 0.0]
    loss = kernels.masked_mean(error, tokens.valid) + kernels.density(f, tokens.valid)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in params)
    assert torch.isfinite(x.grad).all() and x.grad[1:4].abs().sum() == 0
    # No valid token at all: mean is 0, not NaN.
    none_valid = torch.zeros(3, dtype=torch.bool)
    assert kernels.masked_mean(torch.ones(3), none_valid).item() == 0.0


def _scaled_to_cancel(x, W_left, W_right):
    """Scale the weights so that 1, 2gᵀf and gᵀKg are all O(1) and nearly cancel."""
    tokens = kernels.unit_tokens(x)
    f = kernels.bilinear_latents(tokens.unit, W_left, W_right)
    parts = kernels.kernel_error(f, f, W_left, W_right, None, None, tokens.valid)
    c4 = (parts.cross / parts.quadratic).mean()  # minimises 1 - 2c⁴A + c⁸B on average
    c = c4.pow(0.25)
    return W_left * c, W_right * c


def test_bf16_inputs_accumulate_in_fp32():
    d, F, B = 256, 4096, 64
    g = torch.Generator().manual_seed(0)
    W_left = torch.nn.init.orthogonal_(torch.empty(F, d, dtype=torch.float64), generator=g)
    W_right = torch.nn.init.orthogonal_(torch.empty(F, d, dtype=torch.float64), generator=g)
    x = torch.randn(B, d, dtype=torch.float64, generator=g) * 50
    W_left, W_right = _scaled_to_cancel(x, W_left, W_right)
    # The same values, once rounded to bf16, are the inputs of both computations.
    x16, L16, R16 = (t.to(torch.bfloat16) for t in (x, W_left, W_right))
    reference = kernel_objective(x16.double(), L16.double(), R16.double(), None, None, None, "vanilla")
    assert (reference.abs() < 0.95).all(), "test setup: terms should cancel"
    got = kernel_objective(x16, L16, R16, None, None, None, "vanilla")
    assert got.dtype == torch.float32
    assert (got.double() - reference).abs().max().item() < 1e-2
    # For contrast: the same formula summed in bf16 throughout.
    tokens = kernels.unit_tokens(x16)
    f = kernels.bilinear_latents(tokens.unit, L16, R16)
    K = (L16 @ L16.T) * (R16 @ R16.T)
    naive16 = 1 - 2 * (f * f).sum(-1) + ((f @ K) * f).sum(-1)
    print("max |bf16 naive - float64| =", (naive16.double() - reference).abs().max().item())


def test_shape_errors_name_the_dimension():
    W = torch.randn(6, 4)
    with pytest.raises(Exception, match="d_in"):
        kernels.bilinear_latents(torch.randn(3, 5), W, W)
    with pytest.raises(Exception, match="d_sae"):
        kernels.kernel_error(torch.randn(3, 6), torch.randn(3, 7), W, W, None, None, torch.ones(3, dtype=torch.bool))
    # beartype's error or torch's: either is right, so no narrower type.
    with pytest.raises(Exception):  # noqa: B017
        kernels.unit_tokens(torch.ones(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown bilinear variant"):
        kernels.is_mixed("quadratic")


def test_latent_peak_bounds_every_activation():
    d, F = 6, 10
    for lifted in (False, True):
        W_left, W_right, b_left, b_right, _ = make_weights(d, F, "vanilla", lifted)
        peak = kernels.latent_peak(W_left, W_right, b_left, b_right)
        bound = kernels.latent_peak_bound(W_left, W_right, b_left, b_right)
        u = torch.nn.functional.normalize(torch.randn(5000, d, dtype=torch.float64), dim=-1)
        f = kernels.bilinear_latents(u, W_left, W_right, b_left, b_right)
        assert (f.abs() <= peak + 1e-12).all()
        # The closed-form bound is ||ũ||²·||Q̃_j||₂ (the top eigenvalue of Q̃_j); unlifted, the
        # peak attains it (at the top eigenvector), lifted it is only an upper bound.
        L, R = lift(W_left, b_left), lift(W_right, b_right)
        Q = 0.5 * (torch.einsum("fi,fj->fij", L, R) + torch.einsum("fi,fj->fij", R, L))
        spectral = torch.linalg.eigvalsh(Q).abs().amax(-1)
        torch.testing.assert_close(bound, spectral * (2.0 if lifted else 1.0))
        assert (peak <= bound * (1 + 1e-12)).all()
        if not lifted:
            torch.testing.assert_close(peak, spectral)


def _sphere_ascent(W_left, W_right, b_left, b_right, starts: int = 64, steps: int = 300) -> torch.Tensor:
    """max |f_j(u)| over unit u by projected gradient ascent from many random starts (float64)."""
    F, d = W_left.shape
    g = torch.Generator().manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(starts, F, d, dtype=torch.float64, generator=g), dim=-1)
    u.requires_grad_(True)
    optimiser = torch.optim.Adam([u], lr=0.05)

    def value(v):
        unit = torch.nn.functional.normalize(v, dim=-1)
        return (((unit * W_left).sum(-1) + b_left) * ((unit * W_right).sum(-1) + b_right)).abs()

    for _ in range(steps):
        optimiser.zero_grad()
        (-value(u).sum()).backward()
        optimiser.step()
    return value(u).detach().amax(0)


@pytest.mark.parametrize("d", [1, 2, 5])
def test_lifted_latent_peak_is_the_true_maximum_over_unit_tokens(d):
    F = 40
    W_left, W_right, b_left, b_right, _ = make_weights(d, F, "vanilla", True, seed=d)
    with torch.no_grad():
        W_right[:4] = 0.5 * W_left[:4]  # parallel rows: the reachable (p, q) is a segment
        W_left[4:6] = 0.0  # f linear in u
        b_left[6:8] = b_right[6:8] = 0.0  # no bias: the unlifted closed form
        b_left[8:10] = 5.0  # bias dominates
    peak = kernels.latent_peak(W_left, W_right, b_left, b_right)
    if d == 1:
        u = torch.tensor([[1.0], [-1.0]], dtype=torch.float64)
        reached = kernels.bilinear_latents(u, W_left, W_right, b_left, b_right).abs().amax(0)
    else:
        reached = _sphere_ascent(W_left, W_right, b_left, b_right)
        sampled = kernels.bilinear_latents(
            torch.nn.functional.normalize(torch.randn(20000, d, dtype=torch.float64), dim=-1),
            W_left, W_right, b_left, b_right,
        ).abs().amax(0)
        assert (sampled <= peak * (1 + 1e-12)).all()
    # Never exceeded, and reached by optimisation: the true maximum, not a bound.
    assert (reached <= peak * (1 + 1e-9)).all()
    torch.testing.assert_close(reached, peak, rtol=1e-6, atol=0)
    assert (peak < kernels.latent_peak_bound(W_left, W_right, b_left, b_right) * (1 - 1e-3))[10:].any()
    # Not differentiable, whatever the weights say.
    assert not kernels.latent_peak(W_left.requires_grad_(), W_right, b_left, b_right).requires_grad
