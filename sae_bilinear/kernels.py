"""Pure tensor math of bilinear autoencoders. No SAELens import.

A bilinear latent is the quadratic form ``f_j = (l̃_j·ũ)(r̃_j·ũ)`` of a unit token ``u``
(``ũ = [c, u]`` and ``l̃ = [b_l, l]`` when lifted, which is the same as giving each encoder
row the bias ``c·b``; ``c`` is the lift scale, 1 by default). The autoencoder reconstructs
``X = ũ⊗ũ`` as ``X̂ = Σ_j g_j l̃_j⊗r̃_j``. Its squared error never needs the d² entries of ``X``:

    ||X − X̂||²_F = ||ũ||⁴ − 2 gᵀf + gᵀ K g,   K = (L̃L̃ᵀ) ∘ (R̃R̃ᵀ),   ||ũ||⁴ = (1 + c²)²

because ``<X, l̃_j⊗r̃_j> = f_j`` and ``<l̃_i⊗r̃_i, l̃_j⊗r̃_j> = K_ij``. ``c`` enters ``f`` (the
encoder) and ``||ũ||⁴`` only: the Gram matrices ``L̃L̃ᵀ = LLᵀ + b bᵀ`` are those of the stored
rows, whatever ``c``. The off-diagonal block of ``X`` is ``c·u``, so the activation-space
read-out divides by ``c`` (:func:`lifted_decoder`). It is a difference of
O(1) terms, so everything after the encoder runs in float32 (or float64) whatever the
input dtype, with autocast switched off.

Every public function is shape-checked at run time (jaxtyping + beartype): a wrong shape
raises an error that names the offending dimension.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, cast

import torch
from beartype import beartype
from jaxtyping import Bool, Float, Int, jaxtyped
from torch import Tensor

from sae_bilinear import kernel_autograd
from sae_bilinear.errors import ConfigError

Variant = Literal["vanilla", "ordered", "mixed", "combined"]
VARIANTS: tuple[str, ...] = ("vanilla", "ordered", "mixed", "combined")
Backward = Literal["fused", "autograd"]
BACKWARDS: tuple[str, ...] = ("fused", "autograd")

typechecked = jaxtyped(typechecker=beartype)


def check_variant(variant: object) -> Variant:
    """``variant`` itself, typed as a :data:`Variant`; a :class:`~sae_bilinear.errors.ConfigError`
    naming the valid variants when it is not one of them."""
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ConfigError(f"variant: unknown bilinear variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return cast(Variant, variant)


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


def check_lift_scale(lift_scale: float) -> float:
    """``lift_scale`` as a float; ValueError unless it is finite and > 0."""
    if isinstance(lift_scale, bool) or not isinstance(lift_scale, (int, float)):
        raise ValueError(f"lift_scale must be a finite number > 0, got {lift_scale!r}")
    if not math.isfinite(lift_scale) or lift_scale <= 0:
        raise ValueError(f"lift_scale must be a finite number > 0, got {lift_scale!r}")
    return float(lift_scale)


def scaled_bias(bias: Tensor | None, lift_scale: float) -> Tensor | None:
    """``c·b``: the bias a lifted encoder row adds for ``ũ = [c, u]`` (``b`` itself when c = 1, so
    the default lift is bit-identical to an unscaled one); None stays None."""
    if bias is None or lift_scale == 1.0:
        return bias
    return bias * lift_scale


def lifted_norm_sq(lifted: bool, lift_scale: float = 1.0) -> float:
    """``||ũ||²`` of a unit token: ``1 + c²`` lifted, 1 unlifted."""
    return 1.0 + check_lift_scale(lift_scale) ** 2 if lifted else 1.0


class UnitTokens(NamedTuple):
    """Tokens scaled to unit norm, with what is needed to undo it."""

    unit: Tensor
    """``x / ||x||`` (shape of x, in the requested dtype); exactly zero on invalid tokens."""
    norm: Tensor
    """``||x||`` (shape of x without its last dim), in float32 (float64 for float64 input);
    zero on invalid tokens."""
    valid: Tensor
    """True where the token is finite and has non-zero norm (shape of ``norm``)."""


@typechecked
def unit_tokens(x: Float[Tensor, "*batch d_in"], dtype: torch.dtype | None = None) -> UnitTokens:
    """Normalise each token to unit length; mask tokens that are zero or not finite.

    Every step runs in the accumulation dtype of ``x`` (float32, or float64 for float64
    input) and divides by ``max|x_i|`` before squaring, so the norm neither overflows
    (``x = 1e20`` in float32) nor underflows (``x = 1e-30``). Only the unit vector is cast,
    to ``dtype`` (default: the dtype of ``x``); ``||x||`` stays in the accumulation dtype, so
    a half-precision SAE can take float32 activations above 65504.

    Masked tokens become zero vectors (never NaN), so they drop out of every sum and
    their gradients are exactly zero.
    """
    accumulate = accumulation_dtype(x.dtype)
    finite = torch.isfinite(x).all(dim=-1)
    safe = torch.where(finite.unsqueeze(-1), x, torch.zeros((), dtype=x.dtype, device=x.device)).to(accumulate)
    peak = safe.abs().amax(dim=-1)
    valid = finite & (peak > 0)
    scaled = safe / torch.where(valid, peak, torch.ones_like(peak)).unsqueeze(-1)  # entries in [-1, 1]
    scaled_norm = torch.linalg.vector_norm(scaled, dim=-1)  # in [1, sqrt(d)]: no overflow, no underflow
    unit = (scaled / torch.where(valid, scaled_norm, torch.ones_like(scaled_norm)).unsqueeze(-1)).to(dtype or x.dtype)
    unit = torch.where(valid.unsqueeze(-1), unit, torch.zeros((), dtype=unit.dtype, device=x.device))
    norm = torch.where(valid, peak * scaled_norm, torch.zeros_like(peak))
    return UnitTokens(unit=unit, norm=norm, valid=valid)


@typechecked
def bilinear_latents(
    unit: Float[Tensor, "*batch d_in"],
    W_left: Float[Tensor, "d_sae d_in"],
    W_right: Float[Tensor, "d_sae d_in"],
    b_left: Float[Tensor, " d_sae"] | None = None,
    b_right: Float[Tensor, " d_sae"] | None = None,
    *,
    lift_scale: float = 1.0,
) -> Float[Tensor, "*batch d_sae"]:
    """The encoder: ``f = (W_left u + c·b_left) ∘ (W_right u + c·b_right)``, c = ``lift_scale``.

    Runs in the dtype of its inputs (and under any active autocast): it is the one part
    of the model whose precision does not suffer from cancellation.
    """
    c = check_lift_scale(lift_scale)
    left = torch.nn.functional.linear(unit, W_left, scaled_bias(b_left, c))
    right = torch.nn.functional.linear(unit, W_right, scaled_bias(b_right, c))
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
def gram(W: Float[Tensor, "d_sae d_in"], b: Float[Tensor, " d_sae"] | None = None) -> Float[Tensor, "d_sae d_sae"]:
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
    lift_scale: float = 1.0,
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
    lifted = _is_lifted(b_left, b_right)
    target = lifted_norm_sq(lifted, lift_scale) ** 2
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {', '.join(BACKWARDS)}, got {backward!r}")
    dtype = accumulation_dtype(latents.dtype)
    with torch.autocast(device_type=latents.device.type, enabled=False):
        f = latents.to(dtype)
        g = coefficients.to(dtype)
        L, R, bl, br = _cast_weights(dtype, W_left, W_right, b_left, b_right)
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
        error = _relative_error(cross, quadratic, valid, target)
    return KernelError(error=error, cross=cross, quadratic=quadratic)


def _is_lifted(b_left: Tensor | None, b_right: Tensor | None) -> bool:
    if (b_left is None) != (b_right is None):
        raise ValueError("b_left and b_right must both be given (lifted) or both be None")
    return b_left is not None


def _cast_weights(
    dtype: torch.dtype, W_left: Tensor, W_right: Tensor, b_left: Tensor | None, b_right: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """The encoder weights in the accumulation ``dtype`` (biases stay None when unlifted)."""
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return W_left.to(dtype), W_right.to(dtype), cast(b_left), cast(b_right)


def _relative_error(cross: Tensor, quadratic: Tensor, valid: Tensor, target: float) -> Tensor:
    # target = ||ũ||⁴ for unit u: 1 unlifted, (1 + c²)² lifted (4 at the default c = 1).
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
    lift_scale: float = 1.0,
) -> KernelError:
    """:func:`kernel_error` for coefficients ``g`` non-zero only at ``indices`` (TopK latents).

    ``g = zeros(B, F).scatter(-1, indices, values)`` (indices distinct per token, as
    ``torch.topk`` gives them). Only each token's k×k block of K is formed, from the
    gathered rows of L̃ and R̃: ``8Bk²d`` FLOPs for forward and backward, no F² term, and
    the ordered weights ``(F − max(i,j))/F`` use the latents' global indices. The result
    equals ``kernel_error(latents, g, ...)``. ``max_elements`` bounds the gathered
    ``[tokens, k, d]`` rows held at once (tokens are processed in chunks); ``lift_scale`` is
    ``c`` of ``ũ = [c, u]``, as in :func:`kernel_error`.
    """
    lifted = _is_lifted(b_left, b_right)
    target = lifted_norm_sq(lifted, lift_scale) ** 2
    d_sae = latents.shape[-1]
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= d_sae):
        raise ValueError(f"indices must lie in [0, d_sae={d_sae})")
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
            *_cast_weights(dtype, W_left, W_right, b_left, b_right),
            ordered=ordered,
            max_elements=max_elements,
        )
        error = _relative_error(cross, quadratic, valid, target)
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


PEAK_GRID = 64
"""Angles per lifted latent in the grid that seeds the search for its peak."""
PEAK_NEWTON_STEPS = 6
"""Newton steps from every grid angle (quadratic convergence: a few reach machine precision)."""
PEAK_CHUNK = 8192
"""Lifted latents processed at once (bounds the ``[chunk, PEAK_GRID]`` temporaries)."""


@typechecked
def latent_peak(
    W_left: Float[Tensor, "d_sae d_in"],
    W_right: Float[Tensor, "d_sae d_in"],
    b_left: Float[Tensor, " d_sae"] | None = None,
    b_right: Float[Tensor, " d_sae"] | None = None,
    *,
    lift_scale: float = 1.0,
) -> Float[Tensor, " d_sae"]:
    """Largest ``|f_j(u)|`` over unit tokens ``u``: the unit in which "latent j fires" is measured.

    Data-free and exact, lifted or not, so an activity threshold (a fraction of it) means the
    same for both.

    * Unlifted: ``f_j = uᵀQ_j u`` with ``Q_j = (l rᵀ + r lᵀ)/2``, whose non-zero eigenvalues
      are ``(l·r ± |l||r|)/2``; the peak is ``||Q_j||₂ = (|l||r| + |l·r|)/2``, attained at an
      eigenvector.
    * Lifted: ``f_j = (l·u + a)(r·u + b)`` (``a, b`` = ``c·b_l, c·b_r`` at lift scale ``c``)
      depends on ``u`` only through ``p = l·u`` and ``q = r·u``. With ``α, β`` the coordinates
      of ``l, r`` in an orthonormal basis of a plane holding both, unit ``u`` (``d_in ≥ 2``)
      reach every ``(p, q) = (α·w, β·w)`` with ``|w| = 1`` and none outside ``|w| ≤ 1``.
      ``(p + a)(q + b)`` has the indefinite Hessian ``[[0, 1], [1, 0]]``, so it has no interior maximum
      or minimum: the peak is ``max_θ |(α·w_θ + a)(β·w_θ + b)|`` with ``w_θ = (cos θ, sin θ)``,
      a trigonometric polynomial of degree 2 (at most four stationary points). It is maximised
      over a grid of :data:`PEAK_GRID` angles whose local maxima are refined by Newton steps on
      its derivative (a refined value only ever raises the grid's). ``d_in = 1``: ``u = ±1``.

    Not differentiable (it is a threshold); computed in float32 at least, returned in the
    weights' dtype. :func:`latent_peak_bound` is the looser closed form ``||ũ||²·||Q̃_j||₂``.
    """
    if b_left is None or b_right is None:
        return latent_peak_bound(W_left, W_right)
    c = check_lift_scale(lift_scale)
    a, b = scaled_bias(b_left, c), scaled_bias(b_right, c)
    assert a is not None and b is not None
    with torch.no_grad():
        chunks = [
            _lifted_peak(*(t[start : start + PEAK_CHUNK] for t in (W_left, W_right, a, b)))
            for start in range(0, W_left.shape[0], PEAK_CHUNK)
        ]
    return torch.cat(chunks).to(W_left.dtype)


def _lifted_peak(W_left: Tensor, W_right: Tensor, b_left: Tensor, b_right: Tensor) -> Tensor:
    """:func:`latent_peak` of lifted latents, in the accumulation dtype (see its docstring)."""
    dtype = accumulation_dtype(W_left.dtype)
    L, R = W_left.detach().to(dtype), W_right.detach().to(dtype)
    a, b = b_left.detach().to(dtype).unsqueeze(-1), b_right.detach().to(dtype).unsqueeze(-1)
    # Coordinates of l = (α1, 0) and r = (β1, β2) in an orthonormal basis of a plane holding both.
    left_norm = L.pow(2).sum(-1).sqrt()
    right_sq = R.pow(2).sum(-1)
    has_left = left_norm > 0
    beta1 = torch.where(has_left, (L * R).sum(-1) / torch.where(has_left, left_norm, 1.0), right_sq.sqrt())
    beta2 = (right_sq - beta1.square()).clamp(min=0.0).sqrt()
    alpha1, beta1, beta2 = left_norm.unsqueeze(-1), beta1.unsqueeze(-1), beta2.unsqueeze(-1)

    def factors(theta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``P = α·w + a``, ``Q = β·w + b`` and their derivatives in θ (``P'' = a − P``)."""
        c, s = theta.cos(), theta.sin()
        return alpha1 * c + a, beta1 * c + beta2 * s + b, -alpha1 * s, beta2 * c - beta1 * s

    if W_left.shape[-1] == 1:
        theta = torch.tensor([0.0, math.pi], dtype=dtype, device=L.device).expand(L.shape[0], 2)
        P, Q, _, _ = factors(theta)
        return (P * Q).abs().amax(-1)
    spacing = 2 * math.pi / PEAK_GRID
    grid = (torch.arange(PEAK_GRID, dtype=dtype, device=L.device) * spacing).expand(L.shape[0], PEAK_GRID)
    P, Q, _, _ = factors(grid)
    magnitude = (P * Q).abs()
    best = magnitude.amax(-1)
    # Refine the grid's local maxima of |f| (a degree-2 trigonometric polynomial has at most
    # four stationary points, hence at most four local maxima of |f| worth refining).
    local = (magnitude >= magnitude.roll(1, -1)) & (magnitude >= magnitude.roll(-1, -1))
    starts = torch.where(local, magnitude, -1.0).topk(min(4, PEAK_GRID), dim=-1).indices
    theta = grid.gather(-1, starts)
    for _ in range(PEAK_NEWTON_STEPS):
        P, Q, dP, dQ = factors(theta)
        slope = dP * Q + P * dQ
        curvature = (a - P) * Q + 2 * dP * dQ + P * (b - Q)
        step = torch.where(curvature != 0, slope / torch.where(curvature != 0, curvature, 1.0), 0.0)
        theta = theta - step.clamp(-spacing, spacing)
        P, Q, _, _ = factors(theta)
        best = torch.maximum(best, (P * Q).abs().amax(-1))
    return best


@typechecked
def latent_peak_bound(
    W_left: Float[Tensor, "d_sae d_in"],
    W_right: Float[Tensor, "d_sae d_in"],
    b_left: Float[Tensor, " d_sae"] | None = None,
    b_right: Float[Tensor, " d_sae"] | None = None,
    *,
    lift_scale: float = 1.0,
) -> Float[Tensor, " d_sae"]:
    """Closed-form bound on ``|f_j|``: ``||ũ||² · ||Q̃_j||₂``.

    ``Q̃_j = (l̃ r̃ᵀ + r̃ l̃ᵀ)/2`` has the two non-zero eigenvalues ``(l̃·r̃ ± |l̃||r̃|)/2``,
    so its spectral norm is ``(|l̃||r̃| + |l̃·r̃|)/2``; ``||ũ||² = 1`` (``1 + c²`` when lifted,
    with ``ũ = [c, u]`` and ``l̃ = [b_l, l]``). Exact (equal to :func:`latent_peak`) when
    unlifted; lifted, no unit ``u`` reaches it in general, because its eigenvector need not
    have the form ``[c, u]/√(1 + c²)``.
    """
    left_sq = W_left.pow(2).sum(-1)
    right_sq = W_right.pow(2).sum(-1)
    dot = (W_left * W_right).sum(-1)
    lift = 1.0
    if b_left is not None and b_right is not None:
        left_sq = left_sq + b_left.pow(2)
        right_sq = right_sq + b_right.pow(2)
        dot = dot + b_left * b_right
        lift = lifted_norm_sq(True, lift_scale)
    return lift * 0.5 * ((left_sq * right_sq).sqrt() + dot.abs())


@typechecked
def lifted_decoder(
    W_left: Float[Tensor, "d_sae d_in"],
    W_right: Float[Tensor, "d_sae d_in"],
    b_left: Float[Tensor, " d_sae"],
    b_right: Float[Tensor, " d_sae"],
    *,
    lift_scale: float = 1.0,
) -> Float[Tensor, "d_sae d_in"]:
    """Rows ``½(b_lj r_j + b_rj l_j)/c``: the off-diagonal block of ``l̃_j⊗r̃_j``, symmetrised.

    With ``ũ = [c, u]`` the blocks ``X[0, 1:]`` and ``X[1:, 0]`` both equal ``c·u``, and those
    of ``X̂ = Σ g_j l̃_j⊗r̃_j`` are ``Σ g_j b_lj r_j`` and ``Σ g_j b_rj l_j``; so
    ``û = g @ lifted_decoder(...)`` is the linear read-out of the reconstruction.
    """
    rows = 0.5 * (b_left.unsqueeze(-1) * W_right + b_right.unsqueeze(-1) * W_left)
    c = check_lift_scale(lift_scale)
    return rows if c == 1.0 else rows / c
