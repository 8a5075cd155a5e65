"""The part of a bilinear SAE that inference and training share: parameters, encoder, decoder.

:class:`BilinearMixin` holds it; :mod:`sae_bilinear.bilinear` combines it with SAELens's
``SAE`` and ``TrainingSAE``. The module docstring of :mod:`sae_bilinear.bilinear` has the
math. Two rules shape this code:

* Precision: a token is normalised in float32 (float64 for float64 input) from the input as
  given, after dividing by ``max|x_i|``; only the unit vector is cast to the SAE's dtype and
  ``||x||`` stays in float32+, so no input overflows or underflows on its way in or out.
* Provenance: ``decode(f)`` without ``input_norm`` uses the norms of the very ``encode`` call
  that returned ``f`` (:class:`EncodedNorms`), and refuses any other tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from jaxtyping import Bool, Float
from sae_lens.saes.sae import SAE
from sae_lens.util import str_to_dtype
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary
from transformer_lens.hook_points import HookPoint
from typing_extensions import override

from sae_bilinear import kernels
from sae_bilinear.bilinear_config import BilinearSAEConfig, BilinearTrainingSAEConfig, validate_bilinear_config
from sae_bilinear.errors import ConfigError, UserError

_LINEAR_ONLY_ATTRIBUTES = ("W_enc", "W_dec", "b_dec", "b_enc")


class UnliftedDecodeError(UserError):
    """Raised when decoding to the activation space from an unlifted bilinear SAE."""


class SAEInputError(UserError):
    """A tensor given to a bilinear SAE has the wrong shape, dtype or provenance; the message
    names the argument and says what was expected."""


class SAEInputTypeError(SAEInputError, TypeError):
    """A tensor given to a bilinear SAE has a dtype it cannot take (e.g. integers)."""


class _Encoded(NamedTuple):
    """What :meth:`decode` needs from the :meth:`encode` call that made a latents tensor."""

    norm: Tensor
    """``||x||`` per token, float32 (float64 for float64 input); 0 on masked tokens."""
    dtype: torch.dtype
    """The dtype of the activations ``encode`` was given."""


class EncodedNorms:
    """The token norms behind every latents tensor :meth:`encode` returned, while it lives.

    Keyed by the tensor object itself, weakly: ``decode(f)`` uses the norms of the very call
    that produced ``f`` (another ``encode`` in between changes nothing), an entry disappears
    with its tensor, and a copy, slice or edit of ``f`` is a different tensor, so it is refused
    rather than decoded with the wrong norms. Entries made inside :meth:`scoped` (a
    ``forward``) are dropped when it ends.
    """

    def __init__(self) -> None:
        self._entries: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._scopes: list[list[Tensor]] = []

    def remember(self, latents: Sequence[Tensor], entry: _Encoded) -> None:
        for tensor in latents:
            self._entries[tensor] = entry
            if self._scopes:
                self._scopes[-1].append(tensor)

    def recall(self, latents: Tensor) -> _Encoded | None:
        return self._entries.get(latents)

    @contextmanager
    def scoped(self) -> Iterator[None]:
        made: list[Tensor] = []
        self._scopes.append(made)
        try:
            yield
        finally:
            self._scopes.pop()
            for tensor in made:
                self._entries.pop(tensor, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __deepcopy__(self, memo: dict[int, Any]) -> EncodedNorms:
        return EncodedNorms()  # a copied SAE has encoded nothing yet


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


def _config_field(name: str) -> property:
    """A model attribute that reads and (validated) writes ``cfg.<name>``."""

    def read(self: Any) -> Any:
        return getattr(self.cfg, name)

    def write(self: Any, value: Any) -> None:
        previous = getattr(self.cfg, name)
        setattr(self.cfg, name, value)
        try:
            validate_bilinear_config(self.cfg)
        except ConfigError:
            setattr(self.cfg, name, previous)
            raise

    return property(read, write, doc=f"``cfg.{name}`` (see :attr:`BilinearFields.{name}`); assignments are validated.")


if TYPE_CHECKING:
    # The mixin's methods run on an SAE (it is always listed before SAELens's base class);
    # type checkers see that base, so every SAELens attribute it uses is known and checked.
    _SAEBase = SAE[Any]
else:
    _SAEBase = object


class BilinearMixin(_SAEBase):
    """Parameters, encoder and decoder shared by the inference and the training class.

    Listed before the SAELens base class, so these methods override its linear ones.
    """

    cfg: BilinearSAEConfig | BilinearTrainingSAEConfig
    W_left: nn.Parameter
    W_right: nn.Parameter
    b_left: nn.Parameter | None
    b_right: nn.Parameter | None
    W_down: nn.Parameter | None
    hook_sae_left: HookPoint
    hook_sae_right: HookPoint
    _encoded: EncodedNorms
    _peak_cache: tuple[tuple[Any, ...], Tensor] | None

    def _add_bilinear_hooks(self) -> None:
        # The two linear forms whose product is f: hooking them is how one edits a
        # latent's factors (e.g. walking along an eigenvector).
        self.hook_sae_left = HookPoint()
        self.hook_sae_right = HookPoint()
        self._encoded = EncodedNorms()
        self._peak_cache = None
        self.setup()  # register the new hook points

    # The kernel knobs are config fields (saved, validated, documented there); these
    # properties keep ``sae.sparse_kernel = False`` working as a per-model switch.
    kernel_backward = _config_field("kernel_backward")
    kernel_tile_size = _config_field("kernel_tile_size")
    kernel_memory_budget = _config_field("kernel_memory_budget")
    sparse_kernel = _config_field("sparse_kernel")

    @override
    def initialize_weights(self) -> None:
        # Not calling super(): the base creates W_enc/W_dec/b_dec, which do not exist here.
        cfg = self.cfg
        dtype, device = str_to_dtype(cfg.dtype), torch.device(cfg.device)
        scale = cfg.init_scale if isinstance(cfg, BilinearTrainingSAEConfig) else 1.0

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
        if kernels.is_mixed(cfg.variant):
            assert cfg.bottleneck is not None  # filled in by the config's validation
            self.W_down = orthogonal(cfg.bottleneck, cfg.d_sae)
        else:
            self.W_down = None

    @override
    def get_activation_fn(self) -> Callable[[Tensor], Tensor]:
        if self.cfg.sparsity == "topk":
            assert self.cfg.k is not None  # checked by the config
            return MagnitudeTopK(self.cfg.k)
        return nn.Identity()

    def __getattr__(self, name: str) -> Any:
        if name in _LINEAR_ONLY_ATTRIBUTES:
            raise AttributeError(
                f"a bilinear SAE has no {name}: its latents are quadratic forms of W_left and W_right "
                "(see decoder_directions() for the linear read-out of a lifted SAE). SAELens tools that "
                "need a linear encoder/decoder do not apply to it."
            )
        return super().__getattr__(name)

    @override
    def process_state_dict_for_loading(self, state_dict: dict[str, Any]) -> None:
        # Before load_state_dict: a file whose weights disagree with its cfg.json gets a
        # message naming the dimension at fault, not torch's list of size mismatches.
        cfg = self.cfg
        expected = {"W_left": (cfg.d_sae, cfg.d_in), "W_right": (cfg.d_sae, cfg.d_in)}
        for name, shape in expected.items():
            found = state_dict.get(name)
            if isinstance(found, Tensor) and found.ndim == 2 and tuple(found.shape) != shape:
                raise ConfigError(
                    f"the weights do not match the config: {name} is [d_sae, d_in] = {list(found.shape)} but the "
                    f"config says d_sae={cfg.d_sae}, d_in={cfg.d_in}; fix d_in/d_sae in cfg.json or load the "
                    "weights that belong to it"
                )
        down = state_dict.get("W_down")
        if self.W_down is not None and isinstance(down, Tensor) and tuple(down.shape) != tuple(self.W_down.shape):
            raise ConfigError(
                f"the weights do not match the config: W_down is [bottleneck, d_sae] = {list(down.shape)} but the "
                f"config says bottleneck={cfg.bottleneck}, d_sae={cfg.d_sae} (bottleneck defaults to 2 * d_in); "
                "set bottleneck in cfg.json to the saved one"
            )
        super().process_state_dict_for_loading(state_dict)

    @override
    def process_sae_in(self, sae_in: Tensor) -> Tensor:
        """SAELens's input path (reshape, ``hook_sae_input``), left in the input's own dtype:
        :meth:`_unit_tokens` normalises in float32+ and casts only the unit vector."""
        self._check_input(sae_in)
        sae_in = self.reshape_fn_in(sae_in)
        sae_in = self.hook_sae_input(sae_in)
        return self.run_time_activation_norm_fn_in(sae_in)

    def _check_input(self, x: Any) -> None:
        if not isinstance(x, Tensor):
            raise SAEInputTypeError(f"x must be a torch.Tensor of activations [..., d_in], got {type(x).__name__}")
        if not torch.is_floating_point(x):
            raise SAEInputTypeError(f"bilinear SAE input must be a floating-point tensor, got {x.dtype}")
        if x.ndim == 0:
            raise SAEInputError(
                f"x must have at least one dimension (its last is d_in={self.cfg.d_in}), got a 0-d tensor; "
                "pass activations shaped [..., d_in], e.g. x.reshape(1, -1) for a single token"
            )
        if x.shape[-1] != self.cfg.d_in and self.cfg.reshape_activations == "none":
            raise SAEInputError(
                f"bilinear SAE expects inputs with last dimension d_in={self.cfg.d_in}, got shape {tuple(x.shape)}"
            )

    def _unit_tokens(self, x: Tensor) -> kernels.UnitTokens:
        """Unit tokens of raw activations: the unit vectors in the SAE's dtype, norms in float32+."""
        return kernels.unit_tokens(self.process_sae_in(x), dtype=self.W_left.dtype)

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
        c = self.cfg.lift_scale
        left = self.hook_sae_left(nn.functional.linear(unit, self.W_left, kernels.scaled_bias(self.b_left, c)))
        right = self.hook_sae_right(nn.functional.linear(unit, self.W_right, kernels.scaled_bias(self.b_right, c)))
        # In place on the fresh product (its backward needs only left and right): one B×F buffer less.
        pre = (left * right).masked_fill_(~tokens.valid.unsqueeze(-1), 0.0)
        pre = self.hook_sae_acts_pre(pre)
        activation = self.activation_fn
        if isinstance(activation, MagnitudeTopK):
            post, indices = activation.with_indices(pre)
        else:
            post, indices = activation(pre), None
        post = self.hook_sae_acts_post(post)
        return post, pre, indices

    def encode_with_hidden_pre(
        self, x: Float[Tensor, "*batch d_in"]
    ) -> tuple[Float[Tensor, "*batch d_sae"], Float[Tensor, "*batch d_sae"]]:
        """Latents ``(f_after_topk, f_dense)`` of raw activations ``x`` [..., d_in].

        Both tensors are remembered (weakly, see :class:`EncodedNorms`) with the token norms,
        so that ``decode`` of either, as returned, needs no ``input_norm``.
        """
        tokens = self._unit_tokens(x)
        post, pre = self._encode_tokens(tokens)
        self._encoded.remember((post, pre), _Encoded(tokens.norm, x.dtype))
        return post, pre

    @override
    def encode(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_sae"]:
        """Latents ``f`` [..., d_sae] of activations ``x`` [..., d_in]; zero for zero/NaN tokens."""
        return self.encode_with_hidden_pre(x)[0]

    def token_norms(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, " *batch"]:
        """``||x||`` per token as :meth:`decode` takes it (``input_norm``): float32 (float64 for
        float64 input), computed without overflow; 0 for zero or non-finite tokens."""
        return self._unit_tokens(x).norm

    @override
    def forward(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, "*batch d_in"]:
        # SAELens's forward decodes what it just encoded; the norms it remembered for that
        # are dropped when it returns, whoever keeps the latents (e.g. a run_with_cache).
        with self._encoded.scoped():
            return super().forward(x)

    def coefficients(self, latents: Float[Tensor, "*batch d_sae"]) -> Float[Tensor, "*batch d_sae"]:
        """Decoder coefficients ``g``: the latents, or ``DᵀDf`` for mixed/combined."""
        self._check_latents(latents, "latents")
        if self.W_down is None:
            return latents
        return kernels.mix(latents, self.W_down)

    def _check_latents(self, latents: Any, name: str) -> None:
        if not isinstance(latents, Tensor) or not torch.is_floating_point(latents) or latents.ndim == 0:
            raise SAEInputError(
                f"{name} must be a floating-point tensor [..., d_sae={self.cfg.d_sae}], got "
                f"{getattr(latents, 'dtype', type(latents).__name__)} of shape {tuple(getattr(latents, 'shape', ()))}"
            )
        if latents.shape[-1] != self.cfg.d_sae:
            raise SAEInputError(
                f"{name} must have last dimension d_sae={self.cfg.d_sae} (one value per latent), got shape "
                f"{tuple(latents.shape)}; are they from another SAE?"
            )

    def decoder_directions(self) -> Float[Tensor, "d_sae d_in"]:
        """``[d_sae, d_in]`` rows ``½(b_l r + b_r l)/c`` (c = ``lift_scale``): ``û = g @ rows`` (lifted only)."""
        if not self.cfg.lifted:
            raise UnliftedDecodeError(
                "this bilinear SAE is unlifted: f(-x) = f(x), so no function of its latents recovers "
                "the sign of x and it cannot decode to the activation space. Train with lifted=True to "
                "splice it into a model; the analysis (eigendecomposition, reconstruction_error) still works."
            )
        assert self.b_left is not None and self.b_right is not None
        return kernels.lifted_decoder(
            self.W_left, self.W_right, self.b_left, self.b_right, lift_scale=self.cfg.lift_scale
        )

    @override
    def decode(
        self, feature_acts: Float[Tensor, "*batch d_sae"], input_norm: Float[Tensor, " *batch"] | None = None
    ) -> Float[Tensor, "*batch d_in"]:
        """Activation-space reconstruction ``x̂ = ||x|| û`` of latents ``f`` (lifted only).

        ``input_norm`` is ``||x||`` per token (:meth:`token_norms`). Without it, ``feature_acts``
        must be a tensor :meth:`encode` returned (as SAELens's ``decode(encode(x))`` does; an
        in-place edit is fine), and the norms of that very call are used; anything else —
        a copy, slice or edit — needs ``input_norm``. ``x̂`` is computed in float32 at least
        and returned in the wider of the SAE's dtype and the dtype of ``x`` (with
        ``input_norm``: of ``input_norm``), so a float16 SAE decodes float32 activations
        above float16's range.
        """
        directions = self.decoder_directions()
        self._check_latents(feature_acts, "feature_acts")
        norm, dtype = self._norm_of(feature_acts, input_norm)
        unit_hat = self.coefficients(feature_acts.to(directions.dtype)) @ directions
        return self._finish_decode(unit_hat, norm, dtype)

    def encoded_norms(self, latents: Tensor) -> Float[Tensor, " *batch"]:
        """``||x||`` per token of the :meth:`encode` call that returned ``latents`` (that very
        tensor), e.g. to decode an edited copy: ``decode(edited, input_norm=sae.encoded_norms(f))``.

        Raises :class:`SAEInputError` for any other tensor.
        """
        return self._recall(latents).norm

    def _recall(self, latents: Tensor) -> _Encoded:
        encoded = self._encoded.recall(latents)
        if encoded is None or encoded.norm.shape != latents.shape[:-1]:
            raise SAEInputError(
                "decode() needs the token norms ||x|| of these latents, and they are not the tensor "
                "encode() returned (a copy, slice or edit, or latents kept past the forward() that made them): "
                "pass input_norm=sae.token_norms(x) (or sae.encoded_norms(f) for an edit of f), or call encode "
                "on the same batch first and decode exactly what it returned"
            )
        return encoded

    def _norm_of(self, feature_acts: Tensor, input_norm: Tensor | None) -> tuple[Tensor, torch.dtype]:
        """The token norms for decoding ``feature_acts``, and the dtype x̂ is returned in."""
        if input_norm is None:
            encoded = self._recall(feature_acts)
            return encoded.norm, torch.promote_types(self.W_left.dtype, encoded.dtype)
        if not isinstance(input_norm, Tensor) or not torch.is_floating_point(input_norm):
            raise SAEInputError(f"input_norm must be a floating-point tensor of token norms, got {input_norm!r}")
        if input_norm.shape != feature_acts.shape[:-1]:
            raise SAEInputError(
                f"input_norm must hold one norm per token, shape {tuple(feature_acts.shape[:-1])} for feature_acts "
                f"of shape {tuple(feature_acts.shape)}, got shape {tuple(input_norm.shape)}"
            )
        if not bool((torch.isfinite(input_norm) & (input_norm >= 0)).all()):
            raise SAEInputError(
                "input_norm must hold finite, non-negative token norms ||x||; got NaN, inf or negative "
                "values (a float16 norm overflows above 65504: use sae.token_norms(x), which is float32)"
            )
        return input_norm, torch.promote_types(self.W_left.dtype, input_norm.dtype)

    def _finish_decode(self, unit_hat: Tensor, norm: Tensor, dtype: torch.dtype) -> Tensor:
        """``û → x̂ = ||x|| û`` in float32+, cast to ``dtype``, through the reconstruction hook and
        SAELens's output reshaping."""
        accumulate = torch.promote_types(kernels.accumulation_dtype(unit_hat.dtype), norm.dtype)
        exact = unit_hat.to(accumulate) * norm.to(device=unit_hat.device, dtype=accumulate).unsqueeze(-1)
        sae_out = exact.to(dtype)
        if dtype == torch.float16 and bool((torch.isinf(sae_out) & torch.isfinite(exact)).any()):
            raise SAEInputError(
                "x̂ has entries beyond float16's range (65504): pass input_norm in float32, or load the SAE "
                "with dtype='float32'"
            )
        sae_out = self.hook_sae_recons(sae_out)
        sae_out = self.run_time_activation_norm_fn_out(sae_out)
        return self.reshape_fn_out(sae_out, self.d_head)

    def _uses_sparse_kernel(self, indices: Tensor | None) -> bool:
        """Whether the k×k-block kernel applies and costs fewer FLOPs than the dense one.

        It needs ``g`` to be the TopK latents themselves: mixed/combined decode through
        ``g = DᵀD f_topk``, which is dense, so they keep the dense kernel.
        """
        if indices is None or self.W_down is not None or not self.cfg.sparse_kernel:
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
        weights = (self.W_left, self.W_right, self.b_left, self.b_right)
        if self._uses_sparse_kernel(indices):
            assert indices is not None
            flat_indices = flat(indices)
            result = kernels.sparse_kernel_error(
                flat(dense),
                flat(sparse).gather(-1, flat_indices) if values is None else values,
                flat_indices,
                *weights,
                valid.reshape(-1),
                ordered=ordered,
                lift_scale=self.cfg.lift_scale,
            )
        else:
            result = kernels.kernel_error(
                flat(dense),
                flat(self.coefficients(sparse)),
                *weights,
                valid.reshape(-1),
                ordered=ordered,
                backward=self.cfg.kernel_backward,
                tile_size=self.cfg.kernel_tile_size,
                memory_budget=self.cfg.kernel_memory_budget,
                lift_scale=self.cfg.lift_scale,
            )
        return kernels.KernelError(*(t.reshape(batch_shape) for t in result))

    def reconstruction_error(self, x: Float[Tensor, "*batch d_in"]) -> Float[Tensor, " *batch"]:
        """Per-token relative error ``||X − X̂||²/||ũ||⁴`` of the full reconstruction [...].

        Every variant is scored on its full ``X̂`` (ordering changes only the training
        objective). Zero and non-finite tokens are masked: their error is 0.
        """
        tokens = self._unit_tokens(x)
        sparse, dense, indices = self._encode_tokens_with_support(tokens)
        return self._kernel_error(dense, sparse, tokens.valid, ordered=False, indices=indices).error

    def latent_peak(self) -> Float[Tensor, " d_sae"]:
        """Largest ``|f_j|`` any unit token gives latent j (:func:`kernels.latent_peak`), detached.

        Cached until a weight changes (an optimiser step, a load), so evaluation loops pay
        for it once.
        """
        key = (self.cfg.lift_scale, *((id(p), p.data_ptr(), p._version) for p in self.parameters()))
        if self._peak_cache is None or self._peak_cache[0] != key:
            b_left = None if self.b_left is None else self.b_left.detach()
            b_right = None if self.b_right is None else self.b_right.detach()
            peak = kernels.latent_peak(
                self.W_left.detach(), self.W_right.detach(), b_left, b_right, lift_scale=self.cfg.lift_scale
            )
            self._peak_cache = (key, peak)
        return self._peak_cache[1]

    def active_latents(self, latents: Float[Tensor, "*batch d_sae"]) -> Bool[Tensor, "*batch d_sae"]:
        """Boolean [..., d_sae]: ``|f_j|`` reaches ``activity_threshold`` of latent j's peak."""
        self._check_latents(latents, "latents")
        return latents.abs() >= self.cfg.activity_threshold * self.latent_peak().to(latents.dtype)

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
