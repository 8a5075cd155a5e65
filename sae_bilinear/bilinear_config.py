"""Configuration of bilinear SAEs: the fields, their documentation and their checks.

The fields shared by the inference and the training config live once, in
:class:`BilinearFields`; each has an attribute docstring (the string right under it), which
the CLI turns into ``--help``. :func:`validate_bilinear_config` checks every field, SAELens's
own included, for type and range, and raises :class:`~sae_bilinear.errors.ConfigError` naming
the field: ``cfg.json`` files and command lines bring ``"false"`` strings, ``2.0`` floats and
NaN, and none of them may turn into a silently different model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from sae_lens.saes.sae import SAEConfig, TrainingSAEConfig
from typing_extensions import override

from sae_bilinear import kernels, values
from sae_bilinear.errors import ConfigError

ARCHITECTURE = "bilinear"
FORMAT_VERSION = 2
"""Version of the fields and weights this code reads and writes; a newer one is refused.

History: 1, the first; 2 added ``lift_scale`` (a version-1 file loads with ``lift_scale=1.0``,
the lift it was trained with, and is upgraded to version 2 in memory)."""

Sparsity = Literal["hoyer", "topk"]
SPARSITIES: tuple[str, ...] = ("hoyer", "topk")
NormalizeActivations = Literal["none", "expected_average_only_in"]
NORMALIZATIONS: tuple[str, ...] = ("none", "expected_average_only_in")
RESHAPES: tuple[str, ...] = ("none", "hook_z")
DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16")
DEFAULT_ALPHA_WARM_UP_STEPS = 256
"""The authors' α warm-up for their ~1024-step runs (a quarter of them)."""


def default_alpha_warm_up_steps(total_steps: int) -> int:
    """The α warm-up of a run of ``total_steps`` steps: its first quarter, at least one step.

    The one home of this default (the authors warm α up over 256 of their 1024 steps);
    training helpers, experiments and the main job call it instead of repeating ``// 4``.
    """
    total_steps = values.check_int("total_steps", total_steps, lo=1)
    return max(1, total_steps // 4)


@dataclass(kw_only=True)
class BilinearFields:
    """The fields every bilinear config has, beyond SAELens's (keyword-only)."""

    variant: kernels.Variant = "vanilla"
    """``"vanilla"`` (g = f), ``"ordered"`` (latents sorted by importance through the
    prefix-averaged loss), ``"mixed"`` (g = DᵀDf through a linear bottleneck) or
    ``"combined"`` (mixed + ordered)."""
    lifted: bool = False
    """Use ``ũ = [1, u]``, i.e. biased encoder rows. Needed to decode to the activation space
    (splicing), since ``f(−u) = f(u)`` without it."""
    lift_scale: float = 1.0
    """``c`` of the lift ``ũ = [c, u]`` (lifted only; finite, > 0): the encoder rows add ``c·b``,
    the target ``ũ⊗ũ`` has norm² ``(1 + c²)²`` and ``decode`` divides the off-diagonal block by
    ``c``. Against the ``u⊗u`` block, ``c`` weighs the activation-space part (the block
    ``decode`` reads) by ``2c²`` and the constant corner by ``c⁴``. 1.0 is the authors' lift."""
    bottleneck: int | None = None
    """Rows of ``W_down`` for mixed/combined; None means ``2 * d_in``."""
    sparsity: Sparsity = "hoyer"
    """``"hoyer"`` (dense latents, Hoyer density penalty) or ``"topk"`` (the ``k`` latents of
    largest ``|f|`` per token decode; the rest are zero)."""
    k: int | None = None
    """Latents kept per token with ``sparsity="topk"`` (in [1, d_sae]); None otherwise."""
    activity_threshold: float = 0.1
    """A latent counts as active on a token when ``|f_j|`` reaches this fraction of the
    largest value any unit token can give it (:func:`sae_bilinear.kernels.latent_peak`, exact
    for lifted and unlifted SAEs alike). Random directions in d dimensions give about 1/d of
    it, so 0.1 means the token is substantially aligned with the latent. Used for L0 and
    dead-latent counts, which are meaningless on dense signed latents. In (0, 1)."""
    bilinear_format_version: int = FORMAT_VERSION
    """Version of these fields; files from a newer sae-bilinear are refused."""
    apply_b_dec_to_input: bool = False
    """Must stay False: a bilinear SAE has no decoder bias to subtract."""
    kernel_backward: kernels.Backward = "fused"
    """How the dense kernel loss is differentiated: ``"fused"`` (hand-written, block-symmetric,
    about half the FLOPs) or ``"autograd"`` (the plain formulation; reference)."""
    kernel_tile_size: int | None = None
    """Rows per block of the F×F matrices in the fused kernel; None picks one."""
    kernel_memory_budget: int | None = None
    """Bytes allowed for F×F-type buffers in the fused kernel (Gram blocks are recomputed in
    the backward when keeping them would not fit); None: no limit."""
    sparse_kernel: bool = True
    """With TopK (vanilla/ordered), score only each token's k×k block of K when that costs
    fewer FLOPs than the dense kernel."""


@dataclass
class BilinearSAEConfig(BilinearFields, SAEConfig):
    """Configuration of an inference :class:`~sae_bilinear.BilinearSAE` (fields: :class:`BilinearFields`)."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @override
    def __post_init__(self) -> None:
        validate_bilinear_config(self)
        super().__post_init__()


@dataclass(kw_only=True)
class BilinearTrainingSAEConfig(BilinearFields, TrainingSAEConfig):
    """Configuration of a :class:`~sae_bilinear.BilinearTrainingSAE`, for SAELens's training runner.

    Fields: those of :class:`BilinearFields`, plus the training ones below.
    """

    alpha: float = 0.1
    """Weight of the Hoyer density penalty (loss = error + α·density), >= 0. The authors sweep
    0..1; 0.1 is their default."""
    alpha_warm_up_steps: int = DEFAULT_ALPHA_WARM_UP_STEPS
    """Steps over which α rises linearly from 0 (authors: 256 of 1024; for a run of n steps
    :func:`default_alpha_warm_up_steps` gives n // 4)."""
    init_scale: float = 1.0
    """The rows of ``W_left``/``W_right`` start orthogonal; this scales them (> 0). 1.0
    reproduces the authors' ``orthogonal_`` init."""
    decoder_init_norm: float | None = None
    """Must stay None: there is no separate decoder to initialise."""

    @override
    @classmethod
    def architecture(cls) -> str:
        return ARCHITECTURE

    @override
    def get_inference_config_class(self) -> type[SAEConfig]:
        # Direct, not through SAELens's registry: a config can be built before registration.
        return BilinearSAEConfig

    @override
    def __post_init__(self) -> None:
        validate_bilinear_config(self)
        validate_training_fields(self)
        super().__post_init__()


def validate_bilinear_config(cfg: Any) -> None:
    """Check every field of an inference or training config; fill ``bottleneck``.

    Raises :class:`~sae_bilinear.errors.ConfigError` naming the field and saying what to change.
    """
    cfg.bilinear_format_version = values.check_int("bilinear_format_version", cfg.bilinear_format_version, lo=1)
    if cfg.bilinear_format_version > FORMAT_VERSION:
        raise ConfigError(
            f"bilinear_format_version: this config was written by a newer sae-bilinear (format version "
            f"{cfg.bilinear_format_version}, this one reads up to {FORMAT_VERSION}); upgrade sae-bilinear to load it"
        )
    # Older versions lack only fields whose defaults reproduce them (version 1: lift_scale = 1),
    # so once filled in the config is one of this version, and is saved as such.
    cfg.bilinear_format_version = FORMAT_VERSION
    _check_sae_lens_fields(cfg)
    _check_architecture_fields(cfg)
    _check_kernel_fields(cfg)


def _check_sae_lens_fields(cfg: Any) -> None:
    cfg.d_in = values.check_int("d_in", cfg.d_in, lo=1, hint=" (the width of the hooked activations)")
    cfg.d_sae = values.check_int("d_sae", cfg.d_sae, lo=1, hint=" (the number of latents)")
    values.check_choice("dtype", cfg.dtype, DTYPES)
    values.check_str("device", cfg.device)
    try:
        torch.device(cfg.device)
    except RuntimeError as error:
        raise ConfigError(f"device must name a torch device such as 'cpu' or 'cuda', got {cfg.device!r}") from error
    values.check_bool("apply_b_dec_to_input", cfg.apply_b_dec_to_input)
    if cfg.apply_b_dec_to_input:
        raise ConfigError(
            "apply_b_dec_to_input: bilinear SAEs have no b_dec to subtract: set apply_b_dec_to_input=False "
            "(use lifted=True for an affine, i.e. biased, encoder)"
        )
    if cfg.normalize_activations == "covariance_whitening":
        raise ConfigError(
            "normalize_activations='covariance_whitening' cannot be folded into a bilinear SAE "
            "(each token is scaled to unit norm after whitening, which no weight change undoes); "
            "use 'none' or 'expected_average_only_in'"
        )
    if cfg.normalize_activations in ("layer_norm", "constant_norm_rescale"):
        raise ConfigError(
            f"normalize_activations={cfg.normalize_activations!r} is not supported by bilinear SAEs: their "
            "encoder already divides each token by its norm, and decode() needs that norm, not the "
            "per-token statistics SAELens keeps between calls; use 'none' or 'expected_average_only_in'"
        )
    values.check_choice("normalize_activations", cfg.normalize_activations, NORMALIZATIONS)
    values.check_choice("reshape_activations", cfg.reshape_activations, RESHAPES)


def _check_architecture_fields(cfg: Any) -> None:
    kernels.check_variant(cfg.variant)
    values.check_bool("lifted", cfg.lifted)
    cfg.lift_scale = values.check_finite_float("lift_scale", cfg.lift_scale, lo=0.0, lo_open=True)
    if not cfg.lifted and cfg.lift_scale != 1.0:
        raise ConfigError(
            f"lift_scale={cfg.lift_scale!r} only applies to lifted SAEs (ũ = [c, u]); "
            "set lifted=True or drop lift_scale"
        )
    if kernels.is_mixed(cfg.variant):
        if cfg.bottleneck is None:
            cfg.bottleneck = 2 * cfg.d_in
        cfg.bottleneck = values.check_int("bottleneck", cfg.bottleneck, lo=1, hint=" (rows of W_down)")
    elif cfg.bottleneck is not None:
        raise ConfigError(
            f"bottleneck={cfg.bottleneck!r} is only used by the mixed and combined variants, "
            f"not {cfg.variant!r}; drop it or choose variant='mixed'/'combined'"
        )
    if not isinstance(cfg.sparsity, str) or cfg.sparsity not in SPARSITIES:
        raise ConfigError(f"sparsity must be 'hoyer' or 'topk', got {cfg.sparsity!r}")
    if cfg.sparsity == "topk":
        if cfg.k is None:
            raise ConfigError(f"sparsity='topk' needs k in [1, d_sae={cfg.d_sae}], got k=None")
        cfg.k = values.check_int("k", cfg.k, lo=1, hi=cfg.d_sae, hint=" (sparsity='topk' needs k in [1, d_sae])")
    elif cfg.k is not None:
        raise ConfigError("k is only used with sparsity='topk'; drop it or set sparsity='topk'")
    cfg.activity_threshold = values.check_finite_float(
        "activity_threshold", cfg.activity_threshold, lo=0.0, hi=1.0, lo_open=True, hi_open=True
    )


def _check_kernel_fields(cfg: Any) -> None:
    values.check_choice("kernel_backward", cfg.kernel_backward, kernels.BACKWARDS)
    cfg.kernel_tile_size = values.check_optional_int("kernel_tile_size", cfg.kernel_tile_size, lo=1)
    cfg.kernel_memory_budget = values.check_optional_int("kernel_memory_budget", cfg.kernel_memory_budget, lo=1)
    values.check_bool("sparse_kernel", cfg.sparse_kernel)


def validate_training_fields(cfg: Any) -> None:
    """Check the training-only fields of a :class:`BilinearTrainingSAEConfig`."""
    cfg.alpha = values.check_finite_float("alpha", cfg.alpha, lo=0.0)
    cfg.alpha_warm_up_steps = values.check_int("alpha_warm_up_steps", cfg.alpha_warm_up_steps, lo=0)
    cfg.init_scale = values.check_finite_float("init_scale", cfg.init_scale, lo=0.0, lo_open=True)
    if cfg.decoder_init_norm is not None:
        raise ConfigError(
            f"decoder_init_norm must be None for a bilinear SAE (its decoder is tied to the encoder), "
            f"got {cfg.decoder_init_norm!r}; scale the initial weights with init_scale instead"
        )
