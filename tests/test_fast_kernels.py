"""The hand-written backward (dense, tiled) and the k×k-block sparse kernel against float64 references."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from sae_lens.saes.sae import TrainStepInput
from test_kernels import make_weights, naive_error

from sae_bilinear import (
    BilinearSAE,
    BilinearSAEConfig,
    BilinearTrainingSAE,
    BilinearTrainingSAEConfig,
    kernel_autograd,
    kernels,
)

torch.set_num_threads(1)

LIFT_ORDER = list(itertools.product([False, True], [False, True]))


def random_problem(B: int, F: int, d: int, lifted: bool, seed: int = 0, dtype=torch.float64):
    """Independent f, g and weights (so that every gradient path is exercised), float64 leaves."""
    gen = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()  # noqa: E731
    L, R = make(F, d), make(F, d)
    bl, br = (make(F), make(F)) if lifted else (None, None)
    f, g = make(B, F), make(B, F)
    return f, g, L, R, bl, br


def grads_of(fn, params):
    for p in params:
        p.grad = None
    out = fn()
    weights = torch.linspace(0.5, 1.5, out.shape[0], dtype=out.dtype)
    (out * weights).sum().backward()
    result = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return out.detach(), result


def present(*tensors):
    return [t for t in tensors if t is not None]


# --------------------------------------------------------------------------------------- dense


@pytest.mark.parametrize("variant,lifted", list(itertools.product(kernels.VARIANTS, [False, True])))
@pytest.mark.parametrize("tile_size", [None, 2, 3])
def test_fused_matches_naive_float64(variant, lifted, tile_size):
    """Values and weight/input gradients of the fused path equal the d²-materialising reference."""
    d, F = 4, 7
    weights = make_weights(d, F, variant, lifted, seed=11)
    x = torch.randn(5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(12)) * 2
    x[2] = 0.0  # a masked token
    params = [w.clone().requires_grad_() for w in weights if w is not None]
    xg = x.clone().requires_grad_()

    def rebuild(ps) -> tuple[Any, Any, Any, Any, Any]:
        """W_left, W_right, b_left, b_right, W_down: the present ones from ``ps``, the rest None."""
        it = iter(ps)
        W_left, W_right, b_left, b_right, W_down = (next(it) if w is not None else None for w in weights)
        return W_left, W_right, b_left, b_right, W_down

    def fused():
        W_left, W_right, b_left, b_right, W_down = rebuild(params)
        tokens = kernels.unit_tokens(xg)
        f = kernels.bilinear_latents(tokens.unit, W_left, W_right, b_left, b_right)
        f = torch.where(tokens.valid.unsqueeze(-1), f, torch.zeros_like(f))
        g = f if W_down is None else kernels.mix(f, W_down)
        return kernels.kernel_error(
            f, g, W_left, W_right, b_left, b_right, tokens.valid, kernels.is_ordered(variant), tile_size=tile_size
        ).error

    got, got_grads = grads_of(fused, [xg, *params])
    valid = torch.tensor([True, True, False, True, True])
    keep = torch.zeros_like(x)
    keep[valid] = x[valid]
    x_valid = x[valid].clone().requires_grad_()
    params_ref = [w.clone().requires_grad_() for w in weights if w is not None]
    expected = naive_error(x_valid, *rebuild(params_ref), variant)
    (expected * torch.linspace(0.5, 1.5, 5, dtype=torch.float64)[valid]).sum().backward()
    torch.testing.assert_close(got[valid], expected.detach(), rtol=1e-10, atol=1e-12)
    assert got[2].item() == 0.0
    for mine, ref in zip(got_grads[1:], params_ref, strict=False):
        torch.testing.assert_close(mine, ref.grad, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(got_grads[0][valid], x_valid.grad, rtol=1e-9, atol=1e-11)
    assert got_grads[0][2].abs().sum() == 0


@pytest.mark.parametrize("lifted,ordered", LIFT_ORDER)
@pytest.mark.parametrize("tile_size,memory_budget", [(None, None), (2, None), (3, 3 * 3 * 8 * 4)])
def test_fused_equals_autograd_path(lifted, ordered, tile_size, memory_budget):
    """Fused (kept or recomputed Gram blocks, any tile) and autograd agree on values and every gradient."""
    f, g, L, R, bl, br = random_problem(6, 11, 5, lifted, seed=1)
    valid = torch.tensor([True, False, True, True, True, True])
    params = present(f, g, L, R, bl, br)
    run = lambda backward, **kw: lambda: kernels.kernel_error(  # noqa: E731
        f, g, L, R, bl, br, valid, ordered, backward=backward, **kw
    ).error
    expected, expected_grads = grads_of(run("autograd"), params)
    got, got_grads = grads_of(run("fused", tile_size=tile_size, memory_budget=memory_budget), params)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(got_grads, expected_grads, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("lifted,ordered", LIFT_ORDER)
@pytest.mark.parametrize("tile_size,memory_budget", [(None, None), (2, None), (2, 4 * 2 * 2 * 8)])
def test_fused_gradcheck(lifted, ordered, tile_size, memory_budget):
    f, g, L, R, bl, br = random_problem(3, 5, 3, lifted, seed=2)
    valid = torch.tensor([True, True, False])
    inputs = present(f, g, L, R, bl, br)

    def fn(*args):
        it = iter(args)
        f, g, L, R = next(it), next(it), next(it), next(it)
        bl, br = (next(it), next(it)) if lifted else (None, None)
        out = kernels.kernel_error(
            f, g, L, R, bl, br, valid, ordered, tile_size=tile_size, memory_budget=memory_budget
        )
        return out.error, out.quadratic

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_tile_plan_respects_budget_and_recomputes():
    F, e = 1000, 4
    assert kernel_autograd.plan_tiles(500, e) == kernel_autograd.TilePlan(tile=500, save_grams=True)
    assert kernel_autograd.plan_tiles(F, e) == kernel_autograd.TilePlan(tile=512, save_grams=True)
    big = kernel_autograd.plan_tiles(8192, e)
    assert big.save_grams and big.tile == 1024
    # A budget that cannot hold the Gram blocks: recompute, with 4 tile² temporaries inside it.
    budget = 3 * 2**20
    plan = kernel_autograd.plan_tiles(8192, e, memory_budget=budget)
    assert not plan.save_grams and 4 * plan.tile**2 * e <= budget and plan.tile % 64 == 0
    plan = kernel_autograd.plan_tiles(F, e, tile_size=100, memory_budget=10**9)
    assert plan == kernel_autograd.TilePlan(tile=100, save_grams=True)
    with pytest.raises(ValueError, match="memory_budget"):
        kernel_autograd.plan_tiles(F, e, tile_size=500, memory_budget=1000)
    with pytest.raises(ValueError, match="too small"):
        kernel_autograd.plan_tiles(F, e, memory_budget=8)
    with pytest.raises(ValueError, match="tile_size"):
        kernel_autograd.plan_tiles(F, e, tile_size=0)


def test_fused_float32_is_close_to_float64():
    """fp32 fused values and gradients stay within fp32 rounding of the float64 result."""
    f64 = random_problem(32, 96, 16, True, seed=3)
    f32 = [t.detach().float().requires_grad_() for t in f64]
    valid = torch.ones(32, dtype=torch.bool)
    scale = lambda t: t / 96  # noqa: E731  # keep the terms O(1)

    def run(ps):
        f, g, L, R, bl, br = ps
        return lambda: kernels.kernel_error(scale(f), scale(g), L, R, bl, br, valid, True, tile_size=40).error

    ref, ref_grads = grads_of(run(f64), f64)
    got, got_grads = grads_of(run(f32), f32)
    assert got.dtype == torch.float32
    assert ((got.double() - ref).abs().max() / ref.abs().max()).item() < 1e-6
    for a, b in zip(got_grads, ref_grads, strict=False):
        assert ((a.double() - b).abs().max() / b.abs().max()).item() < 1e-5


def test_fused_backward_ignores_autocast_and_bf16_weights_get_grads():
    f, g, L, R, bl, br = random_problem(4, 9, 6, True, seed=4, dtype=torch.bfloat16)
    valid = torch.ones(4, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = kernels.kernel_error(f, g, L, R, bl, br, valid, tile_size=4).error
        assert out.dtype == torch.float32
        out.sum().backward()
    assert L.grad.dtype == torch.bfloat16 and torch.isfinite(L.grad.float()).all()
    f32, g32, L32, R32, bl32, br32 = (t.detach().float() for t in (f, g, L, R, bl, br))
    ref = kernels.kernel_error(f32, g32, L32, R32, bl32, br32, valid, backward="autograd")
    torch.testing.assert_close(out.detach(), ref.error, rtol=1e-5, atol=1e-5)


def test_fused_only_needed_gradients_and_no_grad_forward():
    f, g, L, R, bl, br = random_problem(3, 6, 4, False, seed=5)
    valid = torch.ones(3, dtype=torch.bool)
    L2, R2 = L.detach(), R.detach()
    kernels.kernel_error(f, g, L2, R2, None, None, valid, tile_size=4).error.sum().backward()
    assert f.grad is not None and g.grad is not None
    with torch.no_grad():
        a = kernels.kernel_error(f, g, L, R, None, None, valid, tile_size=4).error
    b = kernels.kernel_error(f, g, L, R, None, None, valid, backward="autograd").error
    torch.testing.assert_close(a, b.detach())
    with pytest.raises(Exception, match="backward"):
        kernels.kernel_error(f, g, L, R, None, None, valid, backward="magic")


# -------------------------------------------------------------------------------------- sparse


def sparse_problem(B, F, d, k, lifted, seed=0):
    f, _, L, R, bl, br = random_problem(B, F, d, lifted, seed=seed)
    indices = kernels.topk_indices(f.detach(), k)
    return f, indices, L, R, bl, br


@pytest.mark.parametrize("lifted,ordered", LIFT_ORDER)
@pytest.mark.parametrize("k", [1, 3, 8])
def test_sparse_equals_dense_on_scattered_coefficients(lifted, ordered, k):
    """sparse_kernel_error(f, f[idx], idx) = kernel_error(f, scatter(f[idx])): values and all gradients."""
    B, F, d = 5, 8, 4
    f, indices, L, R, bl, br = sparse_problem(B, F, d, k, lifted, seed=k)
    valid = torch.tensor([True, True, False, True, True])
    params = present(f, L, R, bl, br)

    def sparse():
        return kernels.sparse_kernel_error(
            f, f.gather(-1, indices), indices, L, R, bl, br, valid, ordered, max_elements=2 * k * d
        ).error

    def dense():
        g = torch.zeros_like(f).scatter(-1, indices, f.gather(-1, indices))
        return kernels.kernel_error(f, g, L, R, bl, br, valid, ordered, backward="autograd").error

    got, got_grads = grads_of(sparse, params)
    expected, expected_grads = grads_of(dense, params)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    for a, b in zip(got_grads, expected_grads, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("variant,lifted", list(itertools.product(["vanilla", "ordered"], [False, True])))
def test_sparse_matches_naive_topk_float64(variant, lifted):
    d, F = 4, 9
    weights = make_weights(d, F, variant, lifted, seed=3)
    x = torch.randn(5, d, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    W_left, W_right, b_left, b_right, _ = weights
    for k in (1, 3, F):
        tokens = kernels.unit_tokens(x)
        f = kernels.bilinear_latents(tokens.unit, W_left, W_right, b_left, b_right)
        idx = kernels.topk_indices(f, k)
        got = kernels.sparse_kernel_error(
            f, f.gather(-1, idx), idx, W_left, W_right, b_left, b_right, tokens.valid, kernels.is_ordered(variant)
        ).error
        torch.testing.assert_close(got, naive_error(x, *weights, variant, k=k), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lifted,ordered", LIFT_ORDER)
def test_sparse_gradcheck(lifted, ordered):
    B, F, d, k = 3, 6, 3, 2
    f, indices, L, R, bl, br = sparse_problem(B, F, d, k, lifted, seed=6)
    values = f.detach().gather(-1, indices).clone().requires_grad_()
    valid = torch.tensor([True, False, True])
    inputs = present(f, values, L, R, bl, br)

    def fn(*args):
        it = iter(args)
        f, v, L, R = next(it), next(it), next(it), next(it)
        bl, br = (next(it), next(it)) if lifted else (None, None)
        out = kernels.sparse_kernel_error(f, v, indices, L, R, bl, br, valid, ordered, max_elements=k * d)
        return out.error, out.quadratic

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_sparse_k_equals_F_and_bad_indices():
    B, F, d = 4, 6, 3
    f, indices, L, R, bl, br = sparse_problem(B, F, d, F, True, seed=7)
    valid = torch.ones(B, dtype=torch.bool)
    got = kernels.sparse_kernel_error(f, f.gather(-1, indices), indices, L, R, bl, br, valid, True).error
    expected = kernels.kernel_error(f, f, L, R, bl, br, valid, True).error
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="indices must lie"):
        kernels.sparse_kernel_error(f, f[:, :2], torch.full((B, 2), F), L, R, bl, br, valid)


# ------------------------------------------------------------------------ inside the training SAE


def tied_topk_sae(variant: str, lifted: bool, k: int, d_sae: int = 12, d_in: int = 6) -> BilinearTrainingSAE:
    """A TopK SAE whose latents come in exactly equal pairs: |f| ties at every token."""
    sae = BilinearTrainingSAE(
        BilinearTrainingSAEConfig(
            d_in=d_in, d_sae=d_sae, variant=variant, lifted=lifted, sparsity="topk", k=k, alpha=0.3, dtype="float64"
        )
    )
    with torch.no_grad():
        half = d_sae // 2
        for name in ("W_left", "W_right", "b_left", "b_right"):
            p = getattr(sae, name)
            if p is not None:
                p[half:] = p[:half]  # duplicated rows: f_j = f_{j+half}
    return sae


def step(x, alpha=0.3, n=1):
    return TrainStepInput(
        sae_in=x, coefficients={"alpha": alpha}, dead_neuron_mask=None, n_training_steps=n, is_logging_step=False
    )


@pytest.mark.parametrize("variant,lifted", list(itertools.product(kernels.VARIANTS, [False, True])))
@pytest.mark.parametrize("k", [1, 3, 12])
def test_training_topk_sparse_path_equals_dense_path(variant, lifted, k):
    """Ties in TopK, k = F, masked tokens, ordered weights: loss and gradients as the dense path gives them."""
    sae = tied_topk_sae(variant, lifted, k)
    x = torch.randn(7, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(k))
    x[1] = 0.0
    x[4, 2] = float("nan")

    def run(sparse_kernel: bool, backward: str):
        sae.sparse_kernel, sae.kernel_backward = sparse_kernel, backward
        sae.zero_grad(set_to_none=True)
        out = sae.training_forward_pass(step(x))
        out.loss.backward()
        return out, {n: p.grad.clone() for n, p in sae.named_parameters()}

    fast, fast_grads = run(True, "fused")
    slow, slow_grads = run(False, "autograd")
    torch.testing.assert_close(fast.loss, slow.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.sae_out, slow.sae_out, rtol=1e-12, atol=1e-12, equal_nan=True)
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], slow_grads[name], rtol=1e-10, atol=1e-12)
    assert torch.isfinite(fast.loss)
    assert (fast.feature_acts[[1, 4]] == 0).all()


def test_sparse_kernel_is_used_for_topk_but_not_mixed(monkeypatch):
    calls = {"sparse": 0, "dense": 0}
    real_sparse, real_dense = kernels.sparse_kernel_error, kernels.kernel_error

    def count(name, fn):
        def wrapped(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)

        return wrapped

    monkeypatch.setattr(kernels, "sparse_kernel_error", count("sparse", real_sparse))
    monkeypatch.setattr(kernels, "kernel_error", count("dense", real_dense))
    x = torch.randn(16, 8)
    for variant, expected in (("vanilla", "sparse"), ("ordered", "sparse"), ("mixed", "dense"), ("combined", "dense")):
        calls.update(sparse=0, dense=0)
        sae = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=8, d_sae=64, variant=variant, sparsity="topk", k=4))
        sae.training_forward_pass(step(x, n=3)).loss.backward()
        assert calls[expected] == 1 and sum(calls.values()) == 1, (variant, calls)
    # Inference: reconstruction_error of a TopK SAE uses the k×k blocks too, and equals the dense result.
    sae = BilinearSAE(BilinearSAEConfig(d_in=8, d_sae=64, sparsity="topk", k=4, lifted=True))
    calls.update(sparse=0, dense=0)
    fast = sae.reconstruction_error(x)
    assert calls == {"sparse": 1, "dense": 0}
    sae.sparse_kernel = False
    torch.testing.assert_close(fast, sae.reconstruction_error(x), rtol=1e-5, atol=1e-6)


def test_valid_mask_is_computed_once_per_step(monkeypatch):
    sae = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=8, d_sae=32, variant="ordered", lifted=True))
    x = torch.randn(10, 8)
    x[3] = 0
    calls = []
    real = kernels.unit_tokens
    monkeypatch.setattr(kernels, "unit_tokens", lambda t, **kw: calls.append(1) or real(t, **kw))
    out = sae.training_forward_pass(step(x, n=1))
    assert len(calls) == 1
    # Called on its own (SAELens's signature), it still masks the zero token.
    f = sae.encode(x)
    penalty = sae.calculate_aux_loss(step(x, alpha=0.3), f, out.hidden_pre, out.sae_out)
    valid = torch.ones(10, dtype=torch.bool)
    valid[3] = False
    torch.testing.assert_close(penalty["density_penalty"], 0.3 * kernels.density(f, valid, ordered=True))
    # Nothing kept alive between steps: no batch-sized tensor hangs off the model (the
    # density penalty gets the mask as an argument, not through a cache).
    assert not hasattr(sae, "_step_cache")
    held = [name for name, value in vars(sae).items() if isinstance(value, torch.Tensor) and value.shape[:1] == (10,)]
    assert held == [] and len(sae._encoded) <= 1  # only the f of the encode() above, weakly


@pytest.mark.parametrize("ordered", [False, True])
def test_sparse_hoyer_density_equals_dense(ordered):
    f, indices, *_ = sparse_problem(9, 12, 3, 4, False, seed=8)
    valid = torch.tensor([True] * 4 + [False] + [True] * 4)
    values = f.gather(-1, indices)
    dense = torch.zeros_like(f).scatter(-1, indices, values)
    params = [f]
    got, got_grads = grads_of(
        lambda: (
            kernels.sparse_hoyer_density(f.gather(-1, indices), indices, 12, valid).unsqueeze(0)
            * (2.0 if ordered else 1.0)
        ),
        params,
    )
    expected, expected_grads = grads_of(
        lambda: (
            kernels.hoyer_density(torch.zeros_like(f).scatter(-1, indices, f.gather(-1, indices)), valid).unsqueeze(0)
            * (2.0 if ordered else 1.0)
        ),
        params,
    )
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grads[0], expected_grads[0], rtol=1e-10, atol=1e-12)
    assert (kernels.hoyer_density(dense, valid) == 0).any()  # some latents never fire: zero, not NaN
    torch.testing.assert_close(
        kernels.weighted_density(kernels.sparse_hoyer_density(values, indices, 12, valid), ordered),
        kernels.density(dense, valid, ordered),
    )


# Peak memory of the fused/budget paths is a benchmark target, measured by
# benchmarks/perf_benchmark.py (its RSS probe is too noise-prone for a pass/fail test).


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_saved_blocks_are_released_after_backward_and_retain_graph_still_works(kind):
    f, g, L, R, bl, br = random_problem(4, 10, 3, True, seed=9)
    valid = torch.ones(4, dtype=torch.bool)
    if kind == "dense":
        out = kernels.kernel_error(f, g, L, R, bl, br, valid, True, tile_size=4)
    else:
        idx = kernels.topk_indices(f.detach(), 3)
        out = kernels.sparse_kernel_error(f, g.gather(-1, idx), idx, L, R, bl, br, valid, True)
    node: Any = out.quadratic.grad_fn  # the autograd Function's ctx: what it saved is an attribute
    out.error.sum().backward(retain_graph=True)
    first = [p.grad.clone() for p in (f, g, L, R, bl, br)]
    assert (node.grams if kind == "dense" else node.blocks) is None
    for p in (f, g, L, R, bl, br):
        p.grad = None
    out.error.sum().backward()  # recomputes what was released
    for a, p in zip(first, (f, g, L, R, bl, br), strict=False):
        torch.testing.assert_close(p.grad, a, rtol=1e-12, atol=1e-12)
