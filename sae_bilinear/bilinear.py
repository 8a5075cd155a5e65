"""Bilinear SAE: the ``"bilinear"`` architecture for SAELens, a sibling of ``saes/topk_sae.py``.

Each latent is a quadratic form of the unit token ``u = x/||x||``::

    f_j = (l_j·u + b_lj)(r_j·u + b_rj)        (biases only when ``lifted``)

and the autoencoder reconstructs ``X = ũ⊗ũ`` (``ũ = [1, u]`` when lifted) by
``X̂ = Σ_j g_j l̃_j⊗r̃_j``, trained with the kernel-trick error of :mod:`sae_bilinear.kernels`.
A lifted SAE also decodes to the activation space: the off-diagonal block of ``X̂`` is
``û``, and ``x̂ = ||x|| û``, so it can be spliced into a forward pass.

SAELens's base classes assume a linear ``W_enc``/``W_dec``; this module overrides every
method that relies on them so that it is right for this architecture, or fails with a
clear message (never silently wrong).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple

import torch
from numpy.typing import NDArray
from sae_lens.saes.sae import (
    SAE,
    SAEConfig,
    TrainCoefficientConfig,
    TrainingSAE,
    TrainingSAEConfig,
    TrainStepInput,
    TrainStepOutput,
)
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from typing_extensions import override

from sae_lens.util import str_to_dtype

from sae_bilinear import kernels

ARCHITECTURE = "bilinear"
FORMAT_VERSION = 1
"""Version of the fields and weights this code reads and writes; a newer one is refused."""

Sparsity = Literal["hoyer", "topk"]
_UNSUPPORTED_NORMALIZATION = ("covariance_whitening",)
_LINEAR_ONLY_ATTRIBUTES = ("W_enc", "W_dec", "b_dec", "b_enc")


class UnliftedDecodeError(ValueError):
    """Raised when decoding to the activation space from an unlifted bilinear SAE."""


def validate_bilinear_config(cfg: Any) -> None:
    """Check the bilinear fields of an inference or training config; fill ``bottleneck``.

    Raises ValueError with a message that says what to change.
    """
    kernels.check_variant(cfg.variant)
    if cfg.bilinear_format_version > FORMAT_VERSION:
        raise ValueError(
            f"this config was written by a newer sae-bilinear (format version {cfg.bilinear_format_version}, "
            f"this one reads up to {FORMAT_VERSION}); upgrade sae-bilinear to load it"
        )
    if not isinstance(cfg.d_in, int) or cfg.d_in < 1:
        raise ValueError(f"d_in must be a positive int, got {cfg.d_in!r}")
    if not isinstance(cfg.d_sae, int) or cfg.d_sae < 1:
        raise ValueError(f"d_sae must be a positive int (the number of latents), got {cfg.d_sae!r}")
    if kernels.is_mixed(cfg.variant):
        if cfg.bottleneck is None:
            cfg.bottleneck = 2 * cfg.d_in
        if not isinstance(cfg.bottleneck, int) or cfg.bottleneck < 1:
            raise ValueError(f"bottleneck must be a positive int, got {cfg.bottleneck!r}")
    elif cfg.bottleneck is not None:
        raise ValueError(
            f"bottleneck={cfg.bottleneck} is only used by the mixed and combined variants, "
            f"not {cfg.variant!r}; drop it or choose variant='mixed'/'combined'"
        )
    if cfg.sparsity not in ("hoyer", "topk"):
        raise ValueError(f"sparsity must be 'hoyer' or 'topk', got {cfg.sparsity!r}")
    if cfg.sparsity == "topk":
        if cfg.k is None or not 1 <= cfg.k <= cfg.d_sae:
            raise ValueError(f"sparsity='topk' needs k in [1, d_sae={cfg.d_sae}], got k={cfg.k!r}")
    elif cfg.k is not None:
        raise ValueError("k is only used with sparsity='topk'; drop it or set sparsity='topk'")
    if not 0.0 < cfg.activity_threshold < 1.0:
        raise ValueError(f"activity_threshold must be in (0, 1), got {cfg.activity_threshold}")
    if cfg.apply_b_dec_to_input:
        raise ValueError(
            "bilinear SAEs have no b_dec to subtract: set apply_b_dec_to_input=False "
            "(use lifted=True for an affine, i.e. biased, encoder)"
        )
    if cfg.normalize_activations in _UNSUPPORTED_NORMALIZATION:
        raise ValueError(
            "normalize_activations='covariance_whitening' cannot be folded into a bilinear SAE "
            "(each token is scaled to unit norm after whitening, which no weight change undoes); "
            "use 'none' or 'expected_average_only_in'"
        )


@dataclass
class BilinearSAEConfig(SAEConfig):
    """Configuration of an inference :class:`BilinearSAE`.

    Args:
        variant: ``"vanilla"`` (g = f), ``"ordered"`` (latents sorted by importance through
            the prefix-averaged loss), ``"mixed"`` (g = DᵀDf through a linear bottleneck),
            or ``"combined"`` (mixed + ordered).
        lifted: use ``ũ = [1, u]``, i.e. biased encoder rows. Needed to decode to the
            activation space (splicing), since ``f(−u) = f(u)`` without it.
        bottleneck: rows of ``W_down`` for mixed/combined; ``None`` means ``2 * d_in``.
        sparsity: ``"hoyer"`` (dense latents, Hoyer density penalty) or ``"topk"`` (the
            ``k`` latents of largest ``|f|`` per token decode; the rest are zero).
        k: latents kept per token with ``sparsity="topk"``.
        activity_threshold: a latent counts as active on a token when ``|f_j|`` reaches
            this fraction of its largest possible value ``||ũ||²·||Q_j||₂``. Random
            directions in d dimensions give about 1/d of it, so 0.1 means the token
            is substantially aligned with the latent's eigen-directions. Used for L0
            and dead-latent counts, which are meaningless on dense signed latents.
        bilinear_format_version: version of these fields; files from a newer
            sae-bilinear are refused.
        apply_b_dec_to_input: must stay False (no decoder bias exists).
    """

    variant: str = "vanilla"
    lifted: bool = False
    bottleneck: int | None = None
    sparsity: str = "hoyer"
    k: int | None = None
    activity_threshold: float = 0.1
    bilinear_format_version: int = FORMAT_VERSION
    apply_b_dec_to_input: bool = False

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @override
    def __post_init__(self) -> None:
        super().__post_init__()
        validate_bilinear_config(self)


@dataclass(kw_only=True)
class BilinearTrainingSAEConfig(TrainingSAEConfig):
    """Configuration of a :class:`BilinearTrainingSAE`, for SAELens's training runner.

    Args:
        variant, lifted, bottleneck, sparsity, k, activity_threshold,
        bilinear_format_version, apply_b_dec_to_input: as in :class:`BilinearSAEConfig`.
        alpha: weight of the Hoyer density penalty (loss = error + α·density). The
            authors sweep 0..1; 0.1 is their default.
        alpha_warm_up_steps: steps over which α rises linearly from 0 (authors: 256).
        init_scale: the rows of ``W_left``/``W_right`` start orthogonal; this scales
            them. 1.0 reproduces the authors' ``orthogonal_`` init.
        decoder_init_norm: unused (there is no separate decoder); kept None.
    """

    variant: str = "vanilla"
    lifted: bool = False
    bottleneck: int | None = None
    sparsity: str = "hoyer"
    k: int | None = None
    activity_threshold: float = 0.1
    bilinear_format_version: int = FORMAT_VERSION
    apply_b_dec_to_input: bool = False
    alpha: float = 0.1
    alpha_warm_up_steps: int = 256
    init_scale: float = 1.0
    decoder_init_norm: float | None = None

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @override
    def __post_init__(self) -> None:
        validate_bilinear_config(self)
        if self.alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {self.alpha}")
        if self.alpha_warm_up_steps < 0:
            raise ValueError(f"alpha_warm_up_steps must be >= 0, got {self.alpha_warm_up_steps}")
        super().__post_init__()


class _StepCache(NamedTuple):
    """What training_forward_pass hands to calculate_aux_loss (SAELens fixes that signature)."""

    sae_in: Tensor
    """The step's input tensor itself: the cache applies only to a call with this very tensor."""
    valid: Tensor
    """Valid-token mask, flattened [n]."""
    feature_acts: Tensor
    """The post-activations the support was read from."""
    support: tuple[Tensor, Tensor] | None
    """TopK ``(indices, values)`` [n, k], or None."""


class MagnitudeTopK(nn.Module):
    """Keep the ``k`` latents of largest ``|f|`` per token, signs kept (bilinear latents are signed)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    @override
    def forward(self, latents: Tensor) -> Tensor:
        return kernels.topk_by_magnitude(latents, self.k)

    def with_indices(self, latents: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(forward(latents), indices kept)``; indices are None when ``k = d_sae`` (nothing dropped)."""
        if self.k == latents.shape[-1]:
            return latents, None
        indices = kernels.topk_indices(latents, self.k)
        return torch.zeros_like(latents).scatter(-1, indices, latents.gather(-1, indices)), indices


class _BilinearMixin:
    """Parameters, encoder and decoder shared by the inference and the training class.

    Listed before the SAELens base class, so these methods override its linear ones.
    """

    cfg: Any
    W_left: nn.Parameter
    W_right: nn.Parameter
    b_left: nn.Parameter | None
    b_right: nn.Parameter | None
    W_down: nn.Parameter | None

    def _add_bilinear_hooks(self) -> None:
        # The two linear forms whose product is f: hooking them is how one edits a
        # latent's factors (e.g. walking along an eigenvector).
        self.hook_sae_left = HookPoint()
        self.hook_sae_right = HookPoint()
        self._input_norm: Tensor | None = None
        self.setup()  # type: ignore[attr-defined]  # register the new hook points

    @override
    def initialize_weights(self) -> None:
        # Not calling super(): the base creates W_enc/W_dec/b_dec, which do not exist here.
        cfg = self.cfg
        dtype, device = str_to_dtype(cfg.dtype), torch.device(cfg.device)
        scale = getattr(cfg, "init_scale", 1.0)

        def orthogonal(rows: int, cols: int) -> nn.Parameter:
            if device.type == "meta":
                return nn.Parameter(torch.empty(rows, cols, dtype=dtype, device=device))
            # QR has no half-precision kernels: initialise in float32 (at least), then cast.
            weight = torch.empty(rows, cols, dtype=kernels.accumulation_dtype(dtype), device=device)
            nn.init.orthogonal_(weight, gain=scale)
            return nn.Parameter(weight.to(dtype))

        self.W_left = orthogonal(cfg.d_sae, cfg.d_in)
        self.W_right = orthogonal(cfg.d_sae, cfg.d_in)
        if cfg.lifted:
            # Small equal-sign biases: every latent starts with a linear part, so û is
            # informative from step one; zero biases would make decode() return 0.
            bias = torch.full((cfg.d_sae,), 1.0 / cfg.d_sae**0.5, dtype=dtype, device=device)
            self.b_left = nn.Parameter(bias.clone())
            self.b_right = nn.Parameter(bias.clone())
        else:
            self.b_left = None
            self.b_right = None
        self.W_down = orthogonal(cfg.bottleneck, cfg.d_sae) if kernels.is_mixed(cfg.variant) else None

    @override
    def get_activation_fn(self) -> Callable[[Tensor], Tensor]:
        if self.cfg.sparsity == "topk":
            return MagnitudeTopK(self.cfg.k)
        return nn.Identity()

    def __getattr__(self, name: str) -> Any:
        if name in _LINEAR_ONLY_ATTRIBUTES:
            raise AttributeError(
                f"a bilinear SAE has no {name}: its latents are quadratic forms of W_left and W_right "
                "(see decoder_directions() for the linear read-out of a lifted SAE). SAELens tools that "
                "need a linear encoder/decoder do not apply to it."
            )
        return super().__getattr__(name)  # type: ignore[misc]

    @override
    def process_sae_in(self, sae_in: Tensor) -> Tensor:
        if not torch.is_floating_point(sae_in):
            raise TypeError(f"bilinear SAE input must be a floating-point tensor, got {sae_in.dtype}")
        if sae_in.shape[-1] != self.cfg.d_in and self.cfg.reshape_activations == "none":
            raise ValueError(
                f"bilinear SAE expects inputs with last dimension d_in={self.cfg.d_in}, got shape {tuple(sae_in.shape)}"
            )
        sae_in = sae_in.to(self.W_left.dtype)
        sae_in = self.reshape_fn_in(sae_in)  # type: ignore[attr-defined]
        sae_in = self.hook_sae_input(sae_in)  # type: ignore[attr-defined]
        return self.run_time_activation_norm_fn_in(sae_in)  # type: ignore[attr-defined]

    def _encode_tokens(self, tokens: kernels.UnitTokens) -> tuple[Tensor, Tensor]:
        """Latents of unit tokens: ``(post, pre)``, post = after TopK (or equal to pre).

        Masked (zero or non-finite) tokens get all-zero latents, lifted or not.
        """
        post, pre, _ = self._encode_tokens_with_support(tokens)
        return post, pre

    def _encode_tokens_with_support(self, tokens: kernels.UnitTokens) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(post, pre, indices)``: as :meth:`_encode_tokens`, plus the TopK support.

        ``indices`` [..., k] are the latents TopK kept (None without TopK, or when k = d_sae),
        taken from the same ``torch.topk`` call that zeroes the others, so the sparse kernel
        and the dense post-activations always agree, ties included.
        """
        unit = tokens.unit
        left = self.hook_sae_left(nn.functional.linear(unit, self.W_left, self.b_left))  # type: ignore[attr-defined]
        right = self.hook_sae_right(nn.functional.linear(unit, self.W_right, self.b_right))  # type: ignore[attr-defined]
        # In place on the fresh product (its backward needs only left and right): one B×F buffer less.
        pre = (left * right).masked_fill_(~tokens.valid.unsqueeze(-1), 0.0)
        pre = self.hook_sae_acts_pre(pre)  # type: ignore[attr-defined]
        activation = self.activation_fn  # type: ignore[attr-defined]
        if isinstance(activation, MagnitudeTopK):
            post, indices = activation.with_indices(pre)
        else:
            post, indices = activation(pre), None
        post = self.hook_sae_acts_post(post)  # type: ignore[attr-defined]
        return post, pre, indices

    def encode_with_hidden_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Latents ``(f_after_topk, f_dense)`` of raw activations ``x`` [..., d_in]."""
        tokens = kernels.unit_tokens(self.process_sae_in(x))
        # Remembered for decode(), as SAELens's layer_norm mode remembers its statistics.
        self._input_norm = tokens.norm
        return self._encode_tokens(tokens)

    @override
    def encode(self, x: Tensor) -> Tensor:
        """Latents ``f`` [..., d_sae] of activations ``x`` [..., d_in]; zero for zero/NaN tokens."""
        return self.encode_with_hidden_pre(x)[0]

    def coefficients(self, latents: Tensor) -> Tensor:
        """Decoder coefficients ``g``: the latents, or ``DᵀDf`` for mixed/combined."""
        if self.W_down is None:
            return latents
        return kernels.mix(latents, self.W_down)

    def decoder_directions(self) -> Tensor:
        """``[d_sae, d_in]`` rows ``½(b_l r + b_r l)``: ``û = g @ rows`` (lifted only)."""
        if not self.cfg.lifted:
            raise UnliftedDecodeError(
                "this bilinear SAE is unlifted: f(-x) = f(x), so no function of its latents recovers "
                "the sign of x and it cannot decode to the activation space. Train with lifted=True to "
                "splice it into a model; the analysis (eigendecomposition, reconstruction_error) still works."
            )
        assert self.b_left is not None and self.b_right is not None
        return kernels.lifted_decoder(self.W_left, self.W_right, self.b_left, self.b_right)

    @override
    def decode(self, feature_acts: Tensor, input_norm: Tensor | None = None) -> Tensor:
        """Activation-space reconstruction ``x̂ = ||x|| û`` of latents ``f`` (lifted only).

        ``input_norm`` is ``||x||`` per token; by default the norms of the batch last
        passed to :meth:`encode` are used (SAELens calls ``decode(encode(x))``).
        """
        directions = self.decoder_directions()
        if input_norm is None:
            input_norm = self._input_norm
            if input_norm is None or input_norm.shape != feature_acts.shape[:-1]:
                raise ValueError(
                    "decode() needs the token norms ||x||: call encode() on the same batch first, "
                    "or pass input_norm"
                )
        unit_hat = self.coefficients(feature_acts) @ directions
        return self._finish_decode(unit_hat, input_norm)

    def _finish_decode(self, unit_hat: Tensor, input_norm: Tensor) -> Tensor:
        """``û → x̂ = ||x|| û``, through the reconstruction hook and SAELens's output reshaping."""
        sae_out = unit_hat * input_norm.to(unit_hat.dtype).unsqueeze(-1)
        sae_out = self.hook_sae_recons(sae_out)  # type: ignore[attr-defined]
        sae_out = self.run_time_activation_norm_fn_out(sae_out)  # type: ignore[attr-defined]
        return self.reshape_fn_out(sae_out, self.d_head)  # type: ignore[attr-defined]

    kernel_backward: kernels.Backward = "fused"
    """How the dense kernel loss is differentiated: ``"fused"`` (hand-written, default) or ``"autograd"``."""
    kernel_tile_size: int | None = None
    """Rows per block of the F×F matrices in the fused kernel (None: automatic)."""
    kernel_memory_budget: int | None = None
    """Bytes allowed for F×F-type buffers in the fused kernel (None: no limit)."""
    sparse_kernel: bool = True
    """With TopK (vanilla/ordered), score only each token's k×k block of K when that is cheaper."""

    def _uses_sparse_kernel(self, indices: Tensor | None) -> bool:
        """Whether the k×k-block kernel applies and costs fewer FLOPs than the dense one.

        It needs ``g`` to be the TopK latents themselves: mixed/combined decode through
        ``g = DᵀD f_topk``, which is dense, so they keep the dense kernel.
        """
        if indices is None or self.W_down is not None or not self.sparse_kernel:
            return False
        k, d_sae, d_in = indices.shape[-1], self.cfg.d_sae, self.cfg.d_in
        tokens = max(1, indices.numel() // max(k, 1))
        return 8 * tokens * k * k * d_in < 6 * d_sae * d_sae * d_in + 3 * tokens * d_sae * d_sae

    def _kernel_error(
        self,
        dense: Tensor,
        sparse: Tensor,
        valid: Tensor,
        ordered: bool,
        indices: Tensor | None = None,
        values: Tensor | None = None,
    ) -> kernels.KernelError:
        """Kernel error per token; ``indices`` (and optionally ``values = sparse[indices]``, flattened
        to [n, k]) is the TopK support, which selects the k×k-block kernel when it applies."""
        batch_shape = dense.shape[:-1]
        flat = lambda t: t.reshape(-1, t.shape[-1])  # noqa: E731
        if self._uses_sparse_kernel(indices):
            assert indices is not None
            flat_indices = flat(indices)
            result = kernels.sparse_kernel_error(
                flat(dense),
                flat(sparse).gather(-1, flat_indices) if values is None else values,
                flat_indices,
                self.W_left,
                self.W_right,
                self.b_left,
                self.b_right,
                valid.reshape(-1),
                ordered=ordered,
            )
        else:
            result = kernels.kernel_error(
                flat(dense),
                flat(self.coefficients(sparse)),
                self.W_left,
                self.W_right,
                self.b_left,
                self.b_right,
                valid.reshape(-1),
                ordered=ordered,
                backward=self.kernel_backward,
                tile_size=self.kernel_tile_size,
                memory_budget=self.kernel_memory_budget,
            )
        return kernels.KernelError(*(t.reshape(batch_shape) for t in result))

    def reconstruction_error(self, x: Tensor) -> Tensor:
        """Per-token relative error ``||X − X̂||²/||ũ||⁴`` of the full reconstruction [...].

        Every variant is scored on its full ``X̂`` (ordering changes only the training
        objective). Zero and non-finite tokens are masked: their error is 0.
        """
        tokens = kernels.unit_tokens(self.process_sae_in(x))
        sparse, dense, indices = self._encode_tokens_with_support(tokens)
        return self._kernel_error(dense, sparse, tokens.valid, ordered=False, indices=indices).error

    def active_latents(self, latents: Tensor) -> Tensor:
        """Boolean [..., d_sae]: ``|f_j|`` reaches ``activity_threshold`` of latent j's peak."""
        peak = kernels.latent_peak(self.W_left, self.W_right, self.b_left, self.b_right)
        return latents.abs() >= self.cfg.activity_threshold * peak.to(latents.dtype)

    @override
    @torch.no_grad()
    def fold_activation_norm_scaling_factor(self, scaling_factor: float) -> None:
        # Exact no-op on the weights: latents depend on x/||x|| only, and decode() rescales
        # by the norm of the input it is given, so raw inputs already give raw-scale outputs.
        self.cfg.normalize_activations = "none"

    @override
    def fold_activation_whitening(self, mean: Tensor, whitening_matrix: Tensor, unwhitening_matrix: Tensor) -> None:
        raise NotImplementedError(
            "covariance whitening cannot be folded into a bilinear SAE: tokens are scaled to unit norm "
            "after whitening, which no change of W_left/W_right undoes"
        )

    @override
    def fold_W_dec_norm(self) -> None:
        raise NotImplementedError(
            "a bilinear SAE has no W_dec to normalise: its decoder is tied to the encoder "
            "(X̂ = Σ g_j l_j⊗r_j), and its Hoyer penalty is already scale-invariant"
        )

    @override
    def get_W_dec_norm(self) -> Tensor:
        raise NotImplementedError("a bilinear SAE has no W_dec; see kernels.latent_peak for a per-latent scale")


class BilinearSAE(_BilinearMixin, SAE[BilinearSAEConfig]):
    """Inference bilinear SAE: ``encode``, ``decode`` (lifted), ``reconstruction_error``.

    Hook points: SAELens's ``hook_sae_input``, ``hook_sae_acts_pre`` (dense f),
    ``hook_sae_acts_post`` (after TopK), ``hook_sae_recons``, ``hook_sae_output``,
    ``hook_sae_error``, plus ``hook_sae_left``/``hook_sae_right`` (the two factors of f).
    """

    def __init__(self, cfg: BilinearSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._add_bilinear_hooks()


class BilinearTrainingSAE(_BilinearMixin, TrainingSAE[BilinearTrainingSAEConfig]):
    """Training bilinear SAE, run by SAELens's ``LanguageModelSAETrainingRunner``/``SAETrainer``.

    The loss is the kernel-trick error (prefix-averaged for ordered/combined) plus
    ``alpha`` times the Hoyer density (tail-weighted for ordered/combined), with α warmed
    up over ``alpha_warm_up_steps``. ``TrainStepOutput.feature_acts`` carries the latents
    gated by :meth:`active_latents`, so the trainer's ``.bool()``-based L0 and dead-latent
    counts mean "reached ``activity_threshold`` of its peak" rather than "non-zero".
    """

    def __init__(self, cfg: BilinearTrainingSAEConfig, use_error_term: bool = False):
        super().__init__(cfg, use_error_term)
        self._add_bilinear_hooks()
        self.history: list[dict[str, float]] = []
        """Scalars of every ``history_every``-th step (SAELens only logs to wandb)."""
        self.history_every = 10
        self._step_cache: _StepCache | None = None

    @override
    def get_coefficients(self) -> dict[str, float | TrainCoefficientConfig]:
        return {"alpha": TrainCoefficientConfig(value=self.cfg.alpha, warm_up_steps=self.cfg.alpha_warm_up_steps)}

    @override
    def calculate_aux_loss(
        self, step_input: TrainStepInput, feature_acts: Tensor, hidden_pre: Tensor, sae_out: Tensor
    ) -> dict[str, Tensor]:
        # Hoyer density over the valid tokens of the batch (ordered: harmonic-tail weighted).
        ordered = kernels.is_ordered(self.cfg.variant)
        cache = self._step_cache
        if cache is not None and cache.sae_in is step_input.sae_in:
            # Called from training_forward_pass: the mask (and the TopK support) are known.
            valid = cache.valid
            if cache.support is not None and cache.feature_acts is feature_acts:
                indices, values = cache.support
                h = kernels.sparse_hoyer_density(values, indices, self.cfg.d_sae, valid)
                density = kernels.weighted_density(h, ordered)
                return {"density_penalty": step_input.coefficients.get("alpha", self.cfg.alpha) * density}
        else:
            valid = kernels.unit_tokens(step_input.sae_in.reshape(-1, step_input.sae_in.shape[-1])).valid
        density = kernels.density(feature_acts.reshape(-1, feature_acts.shape[-1]), valid, ordered=ordered)
        return {"density_penalty": step_input.coefficients.get("alpha", self.cfg.alpha) * density}

    @override
    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        tokens = kernels.unit_tokens(self.process_sae_in(step_input.sae_in))
        sparse, dense, indices = self._encode_tokens_with_support(tokens)
        ordered = kernels.is_ordered(self.cfg.variant)
        flat_valid = tokens.valid.reshape(-1)
        support = None
        if indices is not None:
            # The k kept latents per token, read from the post-activations (hooks included):
            # loss, density and firing statistics then cost O(B·k) instead of O(B·F).
            flat_indices = indices.reshape(-1, indices.shape[-1])
            support = (flat_indices, sparse.reshape(-1, sparse.shape[-1]).gather(-1, flat_indices))
        objective = self._kernel_error(
            dense, sparse, tokens.valid, ordered=ordered, indices=indices, values=None if support is None else support[1]
        )
        error = kernels.masked_mean(objective.error, tokens.valid)
        # SAELens's calculate_aux_loss signature has no room for the mask: hand it over here.
        self._step_cache = _StepCache(step_input.sae_in, flat_valid, sparse, support)
        try:
            penalty = self.calculate_aux_loss(step_input, sparse, dense, step_input.sae_in)["density_penalty"]
        finally:
            self._step_cache = None
        alpha = step_input.coefficients.get("alpha", self.cfg.alpha)
        loss = error + penalty

        with torch.no_grad():
            if support is None:
                active = self.active_latents(sparse) & tokens.valid.unsqueeze(-1)
                firing = torch.where(active, sparse.detach(), torch.zeros_like(sparse))
                active_count = active.sum(-1)
            else:
                flat_indices, values = support[0], support[1].detach()
                peak = kernels.latent_peak(self.W_left, self.W_right, self.b_left, self.b_right)
                active_k = values.abs() >= self.cfg.activity_threshold * peak.to(values.dtype)[flat_indices]
                active_k &= flat_valid.unsqueeze(-1)
                firing = torch.zeros_like(sparse).reshape(-1, sparse.shape[-1])
                firing = firing.scatter(-1, flat_indices, torch.where(active_k, values, torch.zeros_like(values)))
                firing = firing.reshape(sparse.shape)
                active_count = active_k.sum(-1).reshape(tokens.valid.shape)
            if self.cfg.lifted:
                sae_out = self._training_decode(sparse.detach(), indices, tokens.norm)
            else:
                # x̂ does not exist without the lift; NaN makes any explained variance computed
                # from it visibly undefined instead of quietly wrong.
                sae_out = torch.full_like(step_input.sae_in, float("nan"))

        def hoyer() -> Tensor:
            if support is None:
                return kernels.hoyer_density(sparse.detach(), tokens.valid).mean()
            return kernels.sparse_hoyer_density(support[1].detach(), support[0], self.cfg.d_sae, flat_valid).mean()

        metrics: dict[str, Any] = {
            "hoyer_density": hoyer,
            "alpha": alpha,
            "l0_active": lambda: active_count.float()[tokens.valid].mean() if tokens.valid.any() else 0.0,
            "masked_tokens": lambda: (~tokens.valid).sum(),
        }
        if ordered:
            metrics["reconstruction_error"] = lambda: self._full_error(dense, sparse, tokens.valid, indices)
        else:
            metrics["reconstruction_error"] = error.detach()
        if step_input.dead_neuron_mask is not None:
            metrics["dead_fraction"] = step_input.dead_neuron_mask.float().mean()

        if step_input.n_training_steps % self.history_every == 0:
            self._record_history(step_input, loss, error, penalty, metrics, sae_out, tokens.valid)

        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=firing,
            hidden_pre=dense,
            loss=loss,
            losses={"reconstruction_error": error, "density_penalty": penalty},
            metrics=metrics,
        )

    def _training_decode(self, sparse: Tensor, indices: Tensor | None, norm: Tensor) -> Tensor:
        """``decode(sparse)``; with TopK (no bottleneck) from the k kept latents only (B·k·d, not B·F·d)."""
        if indices is None or self.W_down is not None:
            return self.decode(sparse, input_norm=norm)
        flat_indices = indices.reshape(-1, indices.shape[-1])
        values = sparse.reshape(-1, sparse.shape[-1]).gather(-1, flat_indices)
        unit_hat = nn.functional.embedding_bag(
            flat_indices, self.decoder_directions(), per_sample_weights=values, mode="sum"
        ).reshape(*sparse.shape[:-1], -1)
        return self._finish_decode(unit_hat, norm)

    @torch.no_grad()
    def _full_error(self, dense: Tensor, sparse: Tensor, valid: Tensor, indices: Tensor | None = None) -> Tensor:
        error = self._kernel_error(dense.detach(), sparse.detach(), valid, ordered=False, indices=indices).error
        return kernels.masked_mean(error, valid)

    @torch.no_grad()
    def _record_history(
        self,
        step_input: TrainStepInput,
        loss: Tensor,
        objective: Tensor,
        penalty: Tensor,
        metrics: dict[str, Any],
        sae_out: Tensor,
        valid: Tensor,
    ) -> None:
        def scalar(value: Any) -> float:
            value = value() if callable(value) else value
            return float(value.item() if isinstance(value, Tensor) else value)

        row = {
            "step": float(step_input.n_training_steps),
            "loss": scalar(loss),
            "objective": scalar(objective),
            "density_penalty": scalar(penalty),
            **{name: scalar(value) for name, value in metrics.items()},
        }
        if self.cfg.lifted and valid.any():
            row["explained_variance"] = float(explained_variance(step_input.sae_in[valid], sae_out[valid]))
        self.history.append(row)

    @override
    @torch.no_grad()
    def log_histograms(self) -> dict[str, NDArray[Any]]:
        peak = kernels.latent_peak(self.W_left, self.W_right, self.b_left, self.b_right)
        return {"weights/latent_peak": peak.detach().float().cpu().numpy()}


def explained_variance(x: Tensor, x_hat: Tensor) -> Tensor:
    """``1 − Σ||x − x̂||² / Σ||x − mean(x)||²`` over a batch of tokens [n, d], in float32+."""
    dtype = kernels.accumulation_dtype(x.dtype)
    x, x_hat = x.to(dtype), x_hat.to(dtype)
    residual = (x - x_hat).pow(2).sum()
    total = (x - x.mean(0)).pow(2).sum()
    return 1.0 - residual / total.clamp(min=torch.finfo(dtype).tiny)


def register() -> None:
    """Register ``"bilinear"`` with SAELens for inference and training. Idempotent."""
    from sae_lens.registry import (
        SAE_CLASS_REGISTRY,
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_class,
        register_sae_training_class,
    )

    # Inference first: TrainingSAEConfig.__post_init__ looks the inference config up.
    if ARCHITECTURE not in SAE_CLASS_REGISTRY:
        register_sae_class(ARCHITECTURE, BilinearSAE, BilinearSAEConfig)
    if ARCHITECTURE not in SAE_TRAINING_CLASS_REGISTRY:
        register_sae_training_class(ARCHITECTURE, BilinearTrainingSAE, BilinearTrainingSAEConfig)
