"""Pure tensor math of bilinear autoencoders. No SAELens import.

A bilinear latent is the quadratic form ``f_j = (l̃_j·ũ)(r̃_j·ũ)`` of a unit token ``u``
(``ũ = [1, u]`` when lifted, which is the same as giving each encoder row a bias). The
autoencoder reconstructs ``X = ũ⊗ũ`` as ``X̂ = Σ_j g_j l̃_j⊗r̃_j``. Its squared error never
needs the d² entries of ``X``:

    ||X − X̂||²_F = ||ũ||⁴ − 2 gᵀf + gᵀ K g,   K = (L̃L̃ᵀ) ∘ (R̃R̃ᵀ)

because ``<X, l̃_j⊗r̃_j> = f_j`` and ``<l̃_i⊗r̃_i, l̃_j⊗r̃_j> = K_ij``. It is a difference of
O(1) terms, so everything after the encoder runs in float32 (or float64) whatever the
input dtype, with autocast switched off.

Every public function is shape-checked at run time (jaxtyping + beartype): a wrong shape
raises an error that names the offending dimension.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from beartype import beartype
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from sae_bilinear import kernel_autograd

Variant = Literal["vanilla", "ordered", "mixed", "combined"]
VARIANTS: tuple[str, ...] = ("vanilla", "ordered", "mixed", "combined")
Backward = Literal["fused", "autograd"]
BACKWARDS: tuple[str, ...] = ("fused", "autograd")

typechecked = jaxtyped(typechecker=beartype)


def check_variant(variant: str) -> None:
    """Raise a ValueError naming the valid variants when ``variant`` is not one of them."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown bilinear variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def is_mixed(variant: str) -> bool:
    """Mixed and combined variants decode through the bottleneck ``g = DᵀD f``."""
    check_variant(variant)
    return variant in ("mixed", "combined")


def is_ordered(variant: str) -> bool:
    """Ordered and combined variants average the error over all prefixes of the latents."""
    check_variant(variant)
    return variant in ("ordered", "combined")


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, float64 stays float64: the kernel loss never sums in bf16."""
    return torch.promote_types(dtype, torch.float32)


class UnitTokens(NamedTuple):
    """Tokens scaled to unit norm, with what is needed to undo it."""

    unit: Tensor
    """``x / ||x||`` (shape of x); exactly zero on invalid tokens."""
    norm: Tensor
    """``||x||`` (shape of x without its last dim); zero on invalid tokens."""
    valid: Tensor
    """True where the token is finite and has non-zero norm (shape of ``norm``)."""


@typechecked
def unit_tokens(x: Float[Tensor, "*batch d_in"]) -> UnitTokens:
    """Normalise each token to unit length; mask tokens that are zero or not finite.

    Masked tokens become zero vectors (never NaN), so they drop out of every sum and
    their gradients are exactly zero.
    """
    finite = torch.isfinite(x).all(dim=-1)
    safe = torch.where(finite.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device))
    norm = torch.linalg.vector_norm(safe.to(accumulation_dtype(x.dtype)), dim=-1)
    valid = finite & (norm > 0)
    safe_norm = torch.where(valid, norm, torch.ones_like(norm))
    unit = (safe.to(norm.dtype) / safe_norm.unsqueeze(-1)).to(x.dtype)
    unit = torch.where(valid.unsqueeze(-1), unit, torch.zeros((), dtype=x.dtype, device=x.device))
    return UnitTokens(unit=unit, norm=torch.where(valid, norm, torch.zeros_like(norm)), valid=valid)


@typechecked
def bilinear_latents(
    unit: Float[Tensor, "*batch d_in"],
    W_left: Float[Tensor, "d_sae d_in"],
    W_right: Float[Tensor, "d_sae d_in"],
    b_left: Float[Tensor, " d_sae"] | None = None,
    b_right: Float[Tensor, " d_sae"] | None = None,
) -> Float[Tensor, "*batch d_sae"]:
    """The encoder: ``f = (W_left u + b_left) ∘ (W_right u + b_right)``.

    Runs in the dtype of its inputs (and under any active autocast): it is the one part
    of the model whose precision does not suffer from cancellation.
    """
    left = torch.nn.functional.linear(unit, W_left, b_left)
    right = torch.nn.functional.linear(unit, W_right, b_right)
    return left * right


@typechecked
def mix(
    latents: Float[Tensor, "*batch d_sae"], W_down: Float[Tensor, "bottleneck d_sae"]
) -> Float[Tensor, "*batch d_sae"]:
    """Decoder coefficients of the mixed variants: ``g = DᵀD f``."""
    return (latents @ W_down.T) @ W_down


@typechecked
def topk_by_magnitude(latents: Float[Tensor, "*batch d_sae"], k: int) -> Float[Tensor, "*batch d_sae"]:
    """Keep the ``k`` latents of largest ``|f|`` per token (signs kept), zero the rest.

    Ties are broken by ``torch.topk`` (deterministic for a given input).
    """
    d_sae = latents.shape[-1]
    if not 1 <= k <= d_sae:
        raise ValueError(f"k must be in [1, d_sae={d_sae}], got {k}")
    if k == d_sae:
        return latents
    indices = topk_indices(latents, k)
    return torch.zeros_like(latents).scatter(-1, indices, latents.gather(-1, indices))


@typechecked
def gram(
    W: Float[Tensor, "d_sae d_in"], b: Float[Tensor, " d_sae"] | None = None
) -> Float[Tensor, "d_sae d_sae"]:
    """Gram matrix of the (lifted) rows: ``W̃W̃ᵀ = WWᵀ + b bᵀ``, without concatenating."""
    G = W @ W.T
    if b is not None:
        G = torch.addr(G, b, b)
    return G


@typechecked
def prefix_weights(d_sae: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Cross-term weights of the ordered loss: ``(F − j)/F`` for 0-based latent j.

    Latent j appears in the prefixes k = j+1..F, i.e. in F − j of the F prefixes.
    """
    j = torch.arange(d_sae, device=device, dtype=dtype)
    return (d_sae - j) / d_sae


@typechecked
def prefix_pair_weights(
    d_sae: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Float[Tensor, "d_sae d_sae"]:
    """Kernel weights of the ordered loss: ``(F − max(i, j))/F`` = share of prefixes holding both."""
    w = prefix_weights(d_sae, device=device, dtype=dtype)
    return torch.minimum(w.unsqueeze(0), w.unsqueeze(1))


@typechecked
def tail_harmonic_weights(
    d_sae: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> Float[Tensor, " d_sae"]:
    """Density weights of the ordered variants: ``Σ_{m=j+1}^{F} 1/m`` for 0-based j.

    Early (important) latents are pushed hardest to be sparse. The weights average to 1,
    so the weighted density stays in [0, 1].
    """
    inverse = 1.0 / torch.arange(1, d_sae + 1, device=device, dtype=torch.float64)
    tail = inverse.flip(0).cumsum(0).flip(0)
    return tail.to(dtype)


class KernelError(NamedTuple):
    """Per-token reconstruction error of ``X = ũ⊗ũ`` by the kernel trick."""

    error: Tensor
    """``||X − X̂||²_F / ||ũ||⁴`` per token (ordered: averaged over all prefixes); 0 where masked."""
    cross: Tensor
    """``gᵀf`` per token (weighted by prefix share when ordered): the ``<X, X̂>`` term."""
    quadratic: Tensor
    """``gᵀKg`` per token (weighted when ordered): the ``||X̂||²`` term."""


@typechecked
def kernel_error(
    latents: Float[Tensor, "batch d_sae"],
    coefficients: Float[Tensor, "batch d_sae"],
    W_left: Float[Tensor, "d_sae d_in"],
    W_right: Float[Tensor, "d_sae d_in"],
    b_left: Float[Tensor, " d_sae"] | None,
    b_right: Float[Tensor, " d_sae"] | None,
    valid: Bool[Tensor, " batch"],
    ordered: bool = False,
    *,
    backward: Backward = "fused",
    tile_size: int | None = None,
    memory_budget: int | None = None,
) -> KernelError:
    """Relative error ``||X − X̂||²/||ũ||⁴`` of every token, from F×F Gram matrices only.

    Args:
        latents: ``f``, the encoder output on unit tokens (defines ``<X, l̃_j⊗r̃_j>``).
        coefficients: ``g``, the decoder weights of ``l̃_j⊗r̃_j`` (``f``, a TopK of ``f``,
            or ``DᵀDf``).
        W_left, W_right, b_left, b_right: encoder rows; biases present iff lifted.
        valid: tokens to score; the others get error 0.
        ordered: average the error over the F prefixes ``X̂_{≤k}``.
        backward: ``"fused"`` (default): ``gᵀKg`` by the block-symmetric kernel with a
            hand-written backward (:mod:`sae_bilinear.kernel_autograd`), about half the
            FLOPs and at most ~1.1 F² numbers kept; ``"autograd"``: the plain formulation
            ``((g @ K) * g).sum(-1)`` differentiated by autograd (reference; 5–6 F×F buffers).
        tile_size, memory_budget: fused only: rows per block of the F×F matrices, and a
            bound in bytes on the F×F-type buffers (Gram blocks are then recomputed in the
            backward when keeping them would not fit); see
            :func:`sae_bilinear.kernel_autograd.plan_tiles`.

    All arithmetic after the inputs runs in float32 at least, with autocast off.
    Gradients reach ``latents``, ``coefficients`` and the weights.
    """
    if (b_left is None) != (b_right is None):
        raise ValueError("b_left and b_right must both be given (lifted) or both be None")
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {', '.join(BACKWARDS)}, got {backward!r}")
    lifted = b_left is not None
    dtype = accumulation_dtype(latents.dtype)
    with torch.autocast(device_type=latents.device.type, enabled=False):
        f = latents.to(dtype)
        g = coefficients.to(dtype)
        L, R = W_left.to(dtype), W_right.to(dtype)
        bl = None if b_left is None else b_left.to(dtype)
        br = None if b_right is None else b_right.to(dtype)
        d_sae = f.shape[-1]
        if ordered:
            cross = (g * f * prefix_weights(d_sae, device=f.device, dtype=dtype)).sum(-1)
        else:
            cross = (g * f).sum(-1)
        if backward == "fused":
            quadratic = kernel_autograd.dense_quadratic(
                g, L, R, bl, br, ordered=ordered, tile_size=tile_size, memory_budget=memory_budget
            )
        else:
            K = gram(L, bl) * gram(R, br)
            if ordered:
                K = K * prefix_pair_weights(d_sae, device=f.device, dtype=dtype)
            quadratic = ((g @ K) * g).sum(-1)
        error = _relative_error(cross, quadratic, valid, lifted)
    return KernelError(error=error, cross=cross, quadratic=quadratic)


def _relative_error(cross: Tensor, quadratic: Tensor, valid: Tensor, lifted: bool) -> Tensor:
    # ||ũ||⁴ for unit u: 1 unlifted, (1 + 1)² = 4 lifted.
    target = 4.0 if lifted else 1.0
    error = (target - 2.0 * cross + quadratic) / target
    return torch.where(valid, error, torch.zeros_like(error))


@typechecked
def sparse_kernel_error(
    latents: Float[Tensor, "batch d_sae"],
    values: Float[Tensor, "batch k"],
    indices: Int[Tensor, "batch k"],
    W_left: Float[Tensor, "d_sae d_in"],
    W_right: Float[Tensor, "d_sae d_in"],
    b_left: Float[Tensor, " d_sae"] | None,
    b_right: Float[Tensor, " d_sae"] | None,
    valid: Bool[Tensor, " batch"],
    ordered: bool = False,
    *,
    max_elements: int | None = None,
) -> KernelError:
    """:func:`kernel_error` for coefficients ``g`` non-zero only at ``indices`` (TopK latents).

    ``g = zeros(B, F).scatter(-1, indices, values)`` (indices distinct per token, as
    ``torch.topk`` gives them). Only each token's k×k block of K is formed, from the
    gathered rows of L̃ and R̃: ``8Bk²d`` FLOPs for forward and backward, no F² term, and
    the ordered weights ``(F − max(i,j))/F`` use the latents' global indices. The result
    equals ``kernel_error(latents, g, ...)``. ``max_elements`` bounds the gathered
    ``[tokens, k, d]`` rows held at once (tokens are processed in chunks).
    """
    if (b_left is None) != (b_right is None):
        raise ValueError("b_left and b_right must both be given (lifted) or both be None")
    d_sae = latents.shape[-1]
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= d_sae):
        raise ValueError(f"indices must lie in [0, d_sae={d_sae})")
    lifted = b_left is not None
    dtype = accumulation_dtype(latents.dtype)
    with torch.autocast(device_type=latents.device.type, enabled=False):
        f = latents.to(dtype).gather(-1, indices)
        v = values.to(dtype)
        if ordered:
            cross = (v * f * ((d_sae - indices).to(dtype) / d_sae)).sum(-1)
        else:
            cross = (v * f).sum(-1)
        quadratic = kernel_autograd.sparse_quadratic(
            v,
            indices,
            W_left.to(dtype),
            W_right.to(dtype),
            None if b_left is None else b_left.to(dtype),
            None if b_right is None else b_right.to(dtype),
            ordered=ordered,
            max_elements=max_elements,
        )
        error = _relative_error(cross, quadratic, valid, lifted)
    return KernelError(error=error, cross=cross, quadratic=quadratic)


def topk_indices(latents: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` largest ``|f|`` per token, exactly those :func:`topk_by_magnitude` keeps."""
    d_sae = latents.shape[-1]
    if not 1 <= k <= d_sae:
        raise ValueError(f"k must be in [1, d_sae={d_sae}], got {k}")
    return latents.abs().topk(k, dim=-1, sorted=False).indices


@typechecked
def masked_mean(values: Float[Tensor, " batch"], valid: Bool[Tensor, " batch"]) -> Float[Tensor, ""]:
    """Mean over valid tokens; 0 (not NaN) when no token is valid."""
    count = valid.sum().clamp(min=1).to(values.dtype)
    return torch.where(valid, values, torch.zeros_like(values)).sum() / count


@typechecked
def hoyer_density(
    latents: Float[Tensor, "batch d_sae"], valid: Bool[Tensor, " batch"] | None = None
) -> Float[Tensor, " d_sae"]:
    """Hoyer density of each latent over the batch, in [0, 1].

    ``h_j = (||f_·j||₁/||f_·j||₂ − 1)/(√n − 1)``: 1 when equally active on all n tokens, 0
    when active on a single one. Scale-invariant, so latents neither shrink nor die under
    it. A latent that is exactly zero on every token has density 0; with n < 2 tokens the
    density is 0 (nothing to compare).
    """
    dtype = accumulation_dtype(latents.dtype)
    f = latents.to(dtype)
    if valid is None:
        n = f.shape[0]
    else:
        f = torch.where(valid.unsqueeze(-1), f, torch.zeros((), dtype=dtype, device=f.device))
        n = int(valid.sum())
    l1 = f.abs().sum(0)
    l2 = torch.linalg.vector_norm(f, dim=0)
    alive = l2 > 0
    ratio = l1 / torch.where(alive, l2, torch.ones_like(l2))
    scale = max(math.sqrt(n) - 1.0, 1e-12)
    return torch.where(alive, (ratio - 1.0) / scale, torch.zeros_like(ratio)).clamp(min=0.0)


@typechecked
def density(
    latents: Float[Tensor, "batch d_sae"], valid: Bool[Tensor, " batch"] | None = None, ordered: bool = False
) -> Float[Tensor, ""]:
    """Sparsity penalty: mean Hoyer density; ordered variants weight latent j by its harmonic tail."""
    return weighted_density(hoyer_density(latents, valid), ordered)


@typechecked
def sparse_hoyer_density(
    values: Float[Tensor, "batch k"],
    indices: Int[Tensor, "batch k"],
    d_sae: int,
    valid: Bool[Tensor, " batch"] | None = None,
) -> Float[Tensor, " d_sae"]:
    """:func:`hoyer_density` of latents that are zero outside ``indices`` (TopK), in O(B·k).

    Equal to ``hoyer_density(zeros(B, F).scatter(-1, indices, values), valid)``, with the
    same zero gradient for latents that never fire.
    """
    dtype = accumulation_dtype(values.dtype)
    v = values.to(dtype)
    if valid is None:
        n = v.shape[0]
    else:
        v = torch.where(valid.unsqueeze(-1), v, torch.zeros((), dtype=dtype, device=v.device))
        n = int(valid.sum())
    flat = indices.reshape(-1)
    l1 = torch.zeros(d_sae, dtype=dtype, device=v.device).index_add(0, flat, v.abs().reshape(-1))
    sq = torch.zeros(d_sae, dtype=dtype, device=v.device).index_add(0, flat, v.square().reshape(-1))
    alive = sq > 0
    l2 = torch.where(alive, sq, torch.ones_like(sq)).sqrt()
    scale = max(math.sqrt(n) - 1.0, 1e-12)
    return torch.where(alive, (l1 / l2 - 1.0) / scale, torch.zeros_like(l1)).clamp(min=0.0)


def weighted_density(h: Tensor, ordered: bool) -> Tensor:
    """Mean of per-latent densities ``h``; ordered variants weight latent j by its harmonic tail."""
    if ordered:
        h = h * tail_harmonic_weights(h.shape[0], device=h.device, dtype=h.dtype)
    return h.mean()


@typechecked
def latent_peak(
    W_left: Float[Tensor, "d_sae d_in"],
    W_right: Float[Tensor, "d_sae d_in"],
    b_left: Float[Tensor, " d_sae"] | None = None,
    b_right: Float[Tensor, " d_sae"] | None = None,
) -> Float[Tensor, " d_sae"]:
    """Largest ``|f_j|`` any token can produce: ``||ũ||² · max|λ(Q_j)|``.

    ``Q_j = (l̃ r̃ᵀ + r̃ l̃ᵀ)/2`` has the two non-zero eigenvalues ``(l̃·r̃ ± |l̃||r̃|)/2``,
    so its spectral norm is ``(|l̃||r̃| + |l̃·r̃|)/2``. ``||ũ||² = 1`` (2 when lifted). The
    bound is data-free, per latent and scale-aware: the natural unit for "is it firing".
    """
    left_sq = W_left.pow(2).sum(-1)
    right_sq = W_right.pow(2).sum(-1)
    dot = (W_left * W_right).sum(-1)
    lift = 1.0
    if b_left is not None and b_right is not None:
        left_sq = left_sq + b_left.pow(2)
        right_sq = right_sq + b_right.pow(2)
        dot = dot + b_left * b_right
        lift = 2.0
    return lift * 0.5 * ((left_sq * right_sq).sqrt() + dot.abs())


@typechecked
def lifted_decoder(
    W_left: Float[Tensor, "d_sae d_in"],
    W_right: Float[Tensor, "d_sae d_in"],
    b_left: Float[Tensor, " d_sae"],
    b_right: Float[Tensor, " d_sae"],
) -> Float[Tensor, "d_sae d_in"]:
    """Rows ``½(b_lj r_j + b_rj l_j)``: the off-diagonal block of ``l̃_j⊗r̃_j``, symmetrised.

    With ``ũ = [1, u]`` the blocks ``X[0, 1:]`` and ``X[1:, 0]`` both equal u, so
    ``û = g @ lifted_decoder(...)`` is the linear read-out of the reconstruction.
    """
    return 0.5 * (b_left.unsqueeze(-1) * W_right + b_right.unsqueeze(-1) * W_left)
