"""Forward-pass interventions through a (bilinear) SAE: splice, ablate, clamp, steer, walk.

Every hook here is a TransformerLens forward hook, ``fn(activation, hook) -> activation``, for
the SAE's hook point (``sae.cfg.metadata.hook_name``)::

    with interventions(model, [(hook_name, ablate_hook(sae, [12]))]):
        loss = model(tokens, return_type="loss")

or ``model.run_with_hooks(tokens, fwd_hooks=[(hook_name, fn)])``. They work with SAELens's
``HookedSAETransformer`` (with no SAE attached at that hook point); to edit the latents of an
SAE that *is* attached with ``add_sae``/``saes(...)``, put :func:`latent_edit_hook` at
``f"{hook_name}.hook_sae_acts_post"`` instead.

Splicing hooks (:func:`splice_hook` and the latent edits built on it) decode, so a bilinear SAE
must be lifted; :func:`steer_hook` needs the decoder directions too. :func:`walk_hook` and
:func:`walk_manifold` only need the encoder, so they also work on unlifted SAEs. The hooks also
accept SAELens's linear SAEs (standard, TopK, ...), except the manifold walk, which is about
bilinear latents.

``keep_error=True`` (the default for edits) adds the SAE's error term back,
``x_out = x + (x̂(f_edited) − x̂(f))``, so the edit of the latents is the only change: with no
edit, the activation passes through exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from sae_lens.saes.sae import SAE
from torch import Tensor

from sae_bilinear import kernels
from sae_bilinear.analysis import rank2_spectrum
from sae_bilinear.checks import (
    check_finite_parameters,
    check_latent,
    check_latents,
    check_model_hook,
    check_sae_hook,
    check_tokens,
    is_bilinear,
    stop_at_layer,
)
from sae_bilinear.errors import ConfigError, ConfigTypeError, IndexRangeError, NonFiniteResultError
from sae_bilinear.values import check_bool, check_finite_float, check_finite_result, check_finite_tensor, check_int

HookFn = Callable[[Tensor, Any], Tensor]
"""A TransformerLens forward hook: ``fn(activation, hook) -> activation``."""
LatentEdit = Callable[[Tensor], Tensor]
"""A function of the latents ``f [..., d_sae] -> f'`` applied before decoding."""
Positions = int | slice | Sequence[int] | None
"""Sequence positions an intervention applies to (None: all)."""


# ----------------------------------------------------------------------------------------------
# checks and small helpers
# ----------------------------------------------------------------------------------------------


def _decode(sae: SAE[Any], latents: Tensor, encoded: Tensor) -> Tensor:
    """x̂ of ``latents``, an edit of ``encoded`` (what ``sae.encode`` returned; bilinear: its token norms)."""
    return sae.decode(latents, input_norm=sae.encoded_norms(encoded)) if is_bilinear(sae) else sae.decode(latents)


def latent_directions(sae: SAE[Any]) -> Tensor:
    """``[d_sae, d_in]``: row j is how x̂ moves per unit of latent j (per unit of token norm for
    bilinear SAEs).

    Bilinear (lifted): row j of ``coefficients(I) @ decoder_directions()``, so that
    ``x̂ = ||x|| Σ_j f_j · row_j``; for mixed variants that is ``DᵀD @ directions``, computed as
    ``Dᵀ(D @ directions)`` (a latent spreads over the directions of its bottleneck partners).
    Linear SAEs: ``W_dec``.
    """
    if is_bilinear(sae):
        directions = sae.decoder_directions()  # raises UnliftedDecodeError when unlifted
        if sae.W_down is None:
            return directions
        return sae.W_down.T @ (sae.W_down @ directions)
    return sae.W_dec


def latent_direction(sae: SAE[Any], latent: int) -> Tensor:
    """``[d_in]``: row ``latent`` of :func:`latent_directions`."""
    latent = check_latent(sae, latent)
    return latent_directions(sae)[latent]


def latent_contribution(sae: SAE[Any], x: Tensor, latent: int) -> Tensor:
    """Latent j's part of the reconstruction of activations ``x`` [..., d_in].

    Bilinear: ``||x|| · f_j · direction_j``; linear: ``f_j · W_dec[j]``. Zeroing latent j before
    decoding removes exactly this from x̂.
    """
    latent = check_latent(sae, latent)
    f = sae.encode(x)[..., latent : latent + 1]
    contribution = f * latent_direction(sae, latent)
    if is_bilinear(sae):
        contribution = contribution * kernels.unit_tokens(sae.process_sae_in(x)).norm.unsqueeze(-1).to(f.dtype)
    return contribution


def _positions_index(positions: Positions) -> Any:
    """``positions`` as an index of dim 1 (None: all); ints are checked, a slice is kept."""
    if positions is None or isinstance(positions, slice):
        return positions
    if isinstance(positions, (str, bytes)) or not isinstance(positions, (int, Sequence, Tensor)):
        raise ConfigError(f"positions must be an int, a slice, a list of ints or None, got {positions!r}")
    if isinstance(positions, Tensor):
        positions = positions.tolist()
    items = [positions] if isinstance(positions, int) else list(positions)
    if not items:
        raise ConfigError("positions is empty: pass at least one sequence position (or None for all)")
    return [check_int(f"positions[{i}]", p) for i, p in enumerate(items)]


def _finite_amount(name: str, value: Any) -> float | Tensor:
    """A finite edit amount: a number, or a float tensor (one value per latent or per row)."""
    if isinstance(value, Tensor):
        return check_finite_tensor(name, value)
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return check_finite_tensor(name, torch.as_tensor([check_finite_float(f"{name}[{i}]", v) for i, v in enumerate(value)]))
    return check_finite_float(name, value)


class SAEHook:
    """A TransformerLens forward hook bound to an SAE and its hook point.

    Subclasses implement :meth:`transform` on activations ``[..., d_in]``. Calling the hook
    checks that it runs at the SAE's hook point and on activations of the SAE's size, runs the
    transform in the SAE's dtype/device and, with ``positions``, changes only those sequence
    positions (dim 1 of ``[batch, seq, d_in]``).
    """

    label: str = ""
    """What the hook does, for messages (e.g. ``"scale_hook(latent=3, factor=2)"``)."""

    def __init__(self, sae: SAE[Any], hook_name: str | None = None, positions: Positions = None):
        self.sae = sae
        self.hook_name = check_sae_hook(sae, hook_name)
        self.positions = _positions_index(positions)
        check_finite_parameters(sae)
        self.label = type(self).__name__

    def transform(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, activation: Tensor, hook: Any = None) -> Tensor:
        name = getattr(hook, "name", None)
        if name is not None and name != self.hook_name:
            raise ConfigError(
                f"{type(self).__name__} is for the SAE's hook point {self.hook_name!r} but was run at {name!r}"
            )
        if activation.shape[-1] != self.sae.cfg.d_in:
            raise ConfigError(
                f"the activation at {name or self.hook_name!r} has size {activation.shape[-1]}, "
                f"the SAE reads d_in={self.sae.cfg.d_in}"
            )
        out = self.transform(activation.to(device=self.sae.device)).to(device=activation.device, dtype=activation.dtype)
        if self.positions is not None:
            if activation.ndim < 3:
                raise ConfigError("positions= needs activations of shape [batch, seq, d_in]")
            result = activation.clone()
            result[:, self.positions] = out[:, self.positions]
            out = result
        self._check_finite(activation, out)
        return out

    def _check_finite(self, activation: Tensor, out: Tensor) -> None:
        """An edit that makes a token's activation NaN/inf, or so large that its squared norm
        overflows float32 (the model's next LayerNorm would then give NaN), is an error rather
        than silently NaN logits (e.g. a latent scaled by 1e30). Tokens that came in that way
        are left alone."""
        squared_out = out.detach().float().pow(2).sum(-1)
        squared_in = activation.detach().float().pow(2).sum(-1)
        bad = ~torch.isfinite(squared_out) & torch.isfinite(squared_in)
        if bool(bad.any()):
            raise NonFiniteResultError(
                f"{self.label} at {self.hook_name!r} made {int(bad.sum())} token activation(s) NaN/inf or "
                "so large that their squared norm overflows float32 (the model's next LayerNorm would "
                "give NaN logits): use a smaller edit value"
            )


# ----------------------------------------------------------------------------------------------
# latent edits
# ----------------------------------------------------------------------------------------------


def _edit_latents(latents: Sequence[int], update: Callable[[Tensor], Tensor]) -> LatentEdit:
    """An edit that replaces the given latents ``f[..., latents]`` by ``update(f[..., latents])``."""
    index = _edit_index(latents)

    def edit(f: Tensor) -> Tensor:
        f = f.clone()
        f[..., index] = update(f[..., index])
        return f

    return edit


def _edit_index(latents: Sequence[int]) -> list[int]:
    if isinstance(latents, Tensor):
        latents = latents.reshape(-1).tolist()
    if isinstance(latents, (int, str, bytes)) or not isinstance(latents, Sequence):
        latents = [latents]  # type: ignore[list-item]
    index = [check_int(f"latents[{i}]", j, lo=0) for i, j in enumerate(latents)]
    if not index:
        raise ConfigError("no latents given: pass at least one latent index")
    return index


def zero_latents(latents: Sequence[int]) -> LatentEdit:
    """Edit: set the given latents to 0."""
    return _edit_latents(latents, torch.zeros_like)


def set_latents(latents: Sequence[int], values: Tensor | Sequence[float] | float) -> LatentEdit:
    """Edit: set the given latents to fixed finite values (one per latent, or one for all)."""
    values = _finite_amount("values", values)
    return _edit_latents(
        latents, lambda current: torch.as_tensor(values, dtype=current.dtype, device=current.device).expand_as(current)
    )


def scale_latents(latents: Sequence[int], factor: float) -> LatentEdit:
    """Edit: multiply the given latents by a finite ``factor``."""
    factor = check_finite_float("factor", factor)
    return _edit_latents(latents, lambda current: current * factor)


def add_to_latents(latents: Sequence[int], amount: float) -> LatentEdit:
    """Edit: add a finite ``amount`` to the given latents."""
    amount = check_finite_float("amount", amount)
    return _edit_latents(latents, lambda current: current + amount)


def latent_edit_hook(edit: LatentEdit, d_sae: int | None = None) -> HookFn:
    """A hook on the latents themselves, for an SAE attached to a ``HookedSAETransformer``.

    Put it at ``f"{hook_name}.hook_sae_acts_post"`` (e.g. in ``run_with_hooks_with_saes``); the
    attached SAE then decodes the edited latents (and adds its error term back when attached
    with ``use_error_term=True``). Edited latents that are NaN/inf where the input was finite
    are an error.
    """
    if not callable(edit):
        raise ConfigError(f"edit must be a function of the latents (see zero_latents, ...), got {edit!r}")
    if d_sae is not None:
        check_int("d_sae", d_sae, lo=1)

    def hook_fn(latents: Tensor, hook: Any = None) -> Tensor:
        if d_sae is not None and latents.shape[-1] != d_sae:
            raise ConfigError(f"expected latents with {d_sae} entries, got shape {tuple(latents.shape)}")
        edited = edit(latents)
        bad = ~torch.isfinite(edited) & torch.isfinite(latents)
        if bool(bad.any()):
            raise NonFiniteResultError(
                f"the latent edit at {getattr(hook, 'name', 'the latents')!r} made {int(bad.sum())} finite "
                "latent value(s) NaN/inf: use a smaller edit value"
            )
        return edited

    return hook_fn


# ----------------------------------------------------------------------------------------------
# hooks at the SAE's hook point
# ----------------------------------------------------------------------------------------------


class SpliceHook(SAEHook):
    """``x → x̂(edit(f))``; with ``keep_error``, ``x → x + x̂(edit(f)) − x̂(f)``."""

    def __init__(
        self,
        sae: SAE[Any],
        edit: LatentEdit | None = None,
        keep_error: bool = False,
        hook_name: str | None = None,
        positions: Positions = None,
        label: str | None = None,
    ):
        super().__init__(sae, hook_name, positions)
        if is_bilinear(sae):
            sae.decoder_directions()  # an unlifted SAE cannot decode: fail now, not mid-run
        if edit is not None and not callable(edit):
            raise ConfigError(f"edit must be a function of the latents (see zero_latents, ...), got {edit!r}")
        self.edit = edit
        self.keep_error = check_bool("keep_error", keep_error)
        self.label = label or type(self).__name__

    def transform(self, x: Tensor) -> Tensor:
        latents = self.sae.encode(x)
        edited = latents if self.edit is None else self.edit(latents)
        if edited.shape != latents.shape:
            raise ConfigError(f"the latent edit changed the shape {tuple(latents.shape)} to {tuple(edited.shape)}")
        if not self.keep_error:
            return _decode(self.sae, edited, latents).to(x.dtype)
        if self.edit is None:
            return x
        return x + (_decode(self.sae, edited, latents) - _decode(self.sae, latents, latents)).to(x.dtype)


def splice_hook(
    sae: SAE[Any],
    edit: LatentEdit | None = None,
    *,
    keep_error: bool = False,
    hook_name: str | None = None,
    positions: Positions = None,
) -> SpliceHook:
    """Replace the activation by the SAE's reconstruction of (optionally edited) latents."""
    return SpliceHook(sae, edit, keep_error, hook_name, positions)


def splice_with_error_hook(
    sae: SAE[Any], edit: LatentEdit | None = None, *, hook_name: str | None = None, positions: Positions = None
) -> SpliceHook:
    """``x → x̂(edit(f)) + (x − x̂(f))``: the latent edit is the only change (none: exactly x)."""
    return SpliceHook(sae, edit, True, hook_name, positions)


def ablate_hook(
    sae: SAE[Any],
    latents: int | Sequence[int],
    *,
    mode: str = "zero",
    means: Tensor | None = None,
    keep_error: bool = True,
    hook_name: str | None = None,
    positions: Positions = None,
) -> SpliceHook:
    """Ablate latents before decoding: ``mode="zero"`` sets them to 0, ``"mean"`` to ``means[j]``
    (per-latent means ``[d_sae]``, e.g. from :func:`latent_means`)."""
    index = check_latents(sae, latents)
    if mode == "zero":
        edit = zero_latents(index)
    elif mode == "mean":
        if not isinstance(means, Tensor) or means.shape != (sae.cfg.d_sae,):
            raise ConfigError(f"mode='mean' needs means= of shape [{sae.cfg.d_sae}] (see latent_means)")
        edit = set_latents(index, check_finite_tensor("means", means)[index])
    else:
        raise ConfigError(f"mode must be 'zero' or 'mean', got {mode!r}")
    return SpliceHook(sae, edit, keep_error, hook_name, positions, label=f"ablate_hook(latents={index}, mode={mode!r})")


def clamp_hook(
    sae: SAE[Any],
    latent: int,
    value: float,
    *,
    keep_error: bool = True,
    hook_name: str | None = None,
    positions: Positions = None,
) -> SpliceHook:
    """Clamp latent j to a finite ``value`` on every token before decoding."""
    latent = check_latent(sae, latent)
    value = check_finite_float("value", value)
    label = f"clamp_hook(latent={latent}, value={value:g})"
    return SpliceHook(sae, set_latents([latent], value), keep_error, hook_name, positions, label=label)


def scale_hook(
    sae: SAE[Any],
    latent: int,
    factor: float,
    *,
    keep_error: bool = True,
    hook_name: str | None = None,
    positions: Positions = None,
) -> SpliceHook:
    """Multiply latent j by a finite ``factor`` before decoding (an x̂ that overflows the
    activation dtype is an error when the hook runs)."""
    latent = check_latent(sae, latent)
    factor = check_finite_float("factor", factor)
    label = f"scale_hook(latent={latent}, factor={factor:g})"
    return SpliceHook(sae, scale_latents([latent], factor), keep_error, hook_name, positions, label=label)


class SteerHook(SAEHook):
    """``x → x + strength · scale · direction_j`` (see :func:`steer_hook`)."""

    def __init__(
        self,
        sae: SAE[Any],
        latent: int,
        strength: float,
        unit: bool = False,
        hook_name: str | None = None,
        positions: Positions = None,
    ):
        super().__init__(sae, hook_name, positions)
        self.latent = check_latent(sae, latent)
        self.strength = check_finite_float("strength", strength)
        self.unit = check_bool("unit", unit)
        direction = latent_direction(sae, self.latent).detach()
        if unit:
            norm = direction.norm()
            if norm == 0:
                raise ConfigError(f"latent {self.latent} has a zero decoder direction: nothing to steer along")
            direction = direction / norm
        self.direction = direction
        self.label = f"steer_hook(latent={self.latent}, strength={self.strength:g})"

    def transform(self, x: Tensor) -> Tensor:
        step = self.strength * self.direction.to(x.dtype)
        if is_bilinear(self.sae) or self.unit:
            norm = kernels.unit_tokens(x).norm.to(x.dtype)
            return x + norm.unsqueeze(-1) * step
        return x + step


def steer_hook(
    sae: SAE[Any],
    latent: int,
    strength: float,
    *,
    unit: bool = False,
    hook_name: str | None = None,
    positions: Positions = None,
) -> SteerHook:
    """Steer along latent j's contribution to x̂.

    ``unit=False``: add exactly what raising latent j by ``strength`` adds to x̂ — bilinear:
    ``strength · ||x|| · direction_j`` (:func:`latent_direction`), linear: ``strength · W_dec[j]``.
    ``unit=True``: add ``strength · ||x||`` along the unit direction, so ``strength`` is a fraction
    of each token's norm (comparable across latents and SAEs). No encoding is needed, so it also
    steers tokens the SAE reconstructs badly.
    """
    return SteerHook(sae, latent, strength, unit, hook_name, positions)


# ----------------------------------------------------------------------------------------------
# the manifold walk
# ----------------------------------------------------------------------------------------------


class LatentEigen(NamedTuple):
    """The non-zero eigenpairs of ``Q_j = (l rᵀ + r lᵀ)/2`` (the unlifted part of latent j)."""

    values: Tensor
    """``[2]`` eigenvalues ``(l·r ± |l||r|)/2``, sorted by decreasing ``|λ|``."""
    vectors: Tensor
    """``[2, d_in]`` unit eigenvectors ``∝ l/|l| ± r/|r|`` (rows), in the same order."""


def latent_eigenvectors(sae: SAE[Any], latent: int) -> LatentEigen:
    """Closed-form eigendecomposition of latent j's quadratic form on u (rank ≤ 2).

    ``(l rᵀ + r lᵀ)/2 · (l̂ ± r̂) = ½(l·r ± |l||r|)(l̂ ± r̂)``, computed by
    :func:`sae_bilinear.analysis.rank2_spectrum` on the unlifted rows (the bias part of a lifted
    latent is the linear term, which moves with u but has no direction of its own in u-space).
    """
    if not is_bilinear(sae):
        raise ConfigTypeError(f"eigenvectors of a latent's quadratic form need a bilinear SAE, got {type(sae).__name__}")
    latent = check_latent(sae, latent)
    spectrum = rank2_spectrum(sae.W_left[latent].detach(), sae.W_right[latent].detach())
    return LatentEigen(values=spectrum.eigenvalues, vectors=spectrum.eigenvectors.T)


class WalkHook(SAEHook):
    """``x → x + t · ||x|| · v``: move along a unit direction, in units of the token's norm."""

    def __init__(
        self,
        sae: SAE[Any],
        direction: Tensor,
        t: float | Tensor,
        hook_name: str | None = None,
        positions: Positions = None,
    ):
        super().__init__(sae, hook_name, positions)
        self.direction = check_finite_tensor("direction", direction.detach(), shape=(sae.cfg.d_in,))
        t = _finite_amount("t", t)
        if isinstance(t, Tensor) and t.ndim > 1:
            raise ConfigError(f"t must be a number or a 1-D tensor of one step per batch row, got shape {tuple(t.shape)}")
        self.t = t

    def transform(self, x: Tensor) -> Tensor:
        t = torch.as_tensor(self.t, dtype=x.dtype, device=x.device)
        if t.ndim == 1:  # one step per batch row
            if t.shape[0] != x.shape[0]:
                raise ConfigError(f"t has {t.shape[0]} steps but the batch has {x.shape[0]} rows")
            t = t.reshape(-1, *([1] * (x.ndim - 1)))
        else:
            t = t.reshape(*([1] * x.ndim))
        norm = kernels.unit_tokens(x).norm.to(x.dtype).unsqueeze(-1)
        return x + t * norm * self.direction.to(device=x.device, dtype=x.dtype)


def walk_hook(
    sae: SAE[Any],
    latent: int,
    t: float | Tensor,
    *,
    eigen: int = 0,
    hook_name: str | None = None,
    positions: Positions = None,
) -> WalkHook:
    """Move the activation along eigenvector ``eigen`` (0: largest ``|λ|``) of latent j's ``Q_j``
    by ``t · ||x||``. ``t`` may be a tensor ``[batch]``: one step per batch row (a whole walk in one
    forward pass)."""
    if isinstance(eigen, bool) or eigen not in (0, 1):
        raise ConfigError(f"a bilinear latent has two eigenvectors with non-zero eigenvalue: eigen must be 0 or 1, got {eigen!r}")
    return WalkHook(sae, latent_eigenvectors(sae, latent).vectors[eigen], t, hook_name, positions)


@dataclass
class WalkResult:
    """How latent j and the model's output respond when one activation moves along ``Q_j``'s
    eigenvectors. Index ``[k, i]`` is eigenvector ``eigen[k]`` at step ``ts[i]`` (``x + t·||x||·v``)."""

    latent: int
    position: int
    """Sequence position of the moved activation."""
    ts: Tensor
    """``[n_steps]`` step sizes, in units of the token's norm."""
    eigen: list[int]
    eigenvalues: Tensor
    """``[n_eigen]``."""
    eigenvectors: Tensor
    """``[n_eigen, d_in]``."""
    latent_values: Tensor
    """``[n_eigen, n_steps]``: latent j (before any TopK) of the moved activation."""
    logits: Tensor
    """``[n_eigen, n_steps, d_vocab]``: the model's output logits at ``position``."""
    lens_logits: Tensor | None
    """``[n_eigen, n_steps, d_vocab]``: logit lens of the moved activation itself
    (``unembed(ln_final(x_t))``); None when the hook is not on the residual stream."""
    clean_logits: Tensor
    """``[d_vocab]``: the unmodified model's logits at ``position``."""

    def kl_from_clean(self) -> Tensor:
        """``[n_eigen, n_steps]``: KL(clean ‖ moved) of the next-token distribution at ``position``
        (the clean output is the step with ``t = 0``, computed without moving)."""
        log_p = torch.log_softmax(self.clean_logits.double(), -1)
        log_q = torch.log_softmax(self.logits.double(), -1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)


def _is_residual_hook(hook_name: str) -> bool:
    return "resid" in hook_name


@torch.no_grad()
def walk_manifold(
    model: Any,
    sae: SAE[Any],
    tokens: Tensor,
    latent: int,
    *,
    ts: Tensor | Sequence[float] | None = None,
    eigen: Sequence[int] = (0, 1),
    position: int = -1,
    hook_name: str | None = None,
) -> WalkResult:
    """Walk one token's activation along latent j's top eigenvectors and record the response.

    For each eigenvector and step ``t``, the activation at ``position`` (of one sequence of
    ``tokens``) becomes ``x + t·||x||·v``; the rest of the forward pass runs on it. Recorded:
    latent j of the moved activation, the model's logits at ``position``, and the logit lens of
    the moved activation. One forward pass per eigenvector (the steps are batched).
    """
    hook = check_sae_hook(sae, hook_name)
    latent = check_latent(sae, latent)
    check_model_hook(model, hook)
    if not isinstance(tokens, Tensor):
        raise ConfigTypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2 or tokens.shape[0] != 1 or tokens.shape[1] == 0:
        raise ConfigError(f"walk_manifold takes one non-empty sequence of tokens, got shape {tuple(tokens.shape)}")
    tokens = check_tokens(model, tokens, min_length=1)
    length = tokens.shape[1]
    position = check_int("position", position)
    if not -length <= position < length:
        raise IndexRangeError(f"position {position} is outside the sequence of {length} tokens")
    position = position % length
    steps = torch.linspace(-1.0, 1.0, 21) if ts is None else _finite_amount("ts", ts)
    if not isinstance(steps, Tensor) or steps.ndim != 1 or steps.numel() == 0:
        raise ConfigError("ts must be a non-empty 1-D sequence of finite step sizes")
    steps = steps.float()
    decomposition = latent_eigenvectors(sae, latent)
    eigen = list(eigen)
    for k in eigen:
        if isinstance(k, bool) or k not in (0, 1):
            raise ConfigError(f"eigen indices must be 0 or 1, got {k!r}")
    tokens = tokens.to(model.cfg.device)

    captured: list[Tensor] = []

    def grab(activation: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        captured.append(activation[0, position].detach())
        return activation

    clean_logits = model.run_with_hooks(tokens, fwd_hooks=[(hook, grab)])[0, position]
    x = captured[0].to(sae.device)
    if x.shape[-1] != sae.cfg.d_in:
        raise ConfigError(f"the activation at {hook!r} has size {x.shape[-1]}, the SAE reads d_in={sae.cfg.d_in}")
    norm = x.float().norm()
    lens = _is_residual_hook(hook) and x.shape[-1] == model.cfg.d_model and hasattr(model, "unembed")

    batch = tokens.expand(steps.numel(), -1)
    values, logits, lens_logits = [], [], []
    for k in eigen:
        vector = decomposition.vectors[k].to(device=x.device, dtype=x.dtype)
        moved = x + steps.to(x.device, x.dtype).unsqueeze(-1) * norm.to(x.dtype) * vector  # [n_steps, d]
        dense = sae.encode_with_hidden_pre(moved)[1] if hasattr(sae, "encode_with_hidden_pre") else sae.encode(moved)
        values.append(dense[:, latent].float().cpu())
        fn = WalkHook(sae, decomposition.vectors[k], steps, hook, positions=[position])
        out = model.run_with_hooks(batch, fwd_hooks=[(hook, fn)])
        logits.append(out[:, position].float().cpu())
        if lens:
            resid = moved.to(device=model.cfg.device, dtype=out.dtype).unsqueeze(1)
            if hasattr(model, "ln_final"):
                resid = model.ln_final(resid)
            lens_logits.append(model.unembed(resid)[:, 0].float().cpu())
    return WalkResult(
        latent=latent,
        position=position,
        ts=steps.cpu(),
        eigen=eigen,
        eigenvalues=decomposition.values[eigen].float().cpu(),
        eigenvectors=decomposition.vectors[eigen].float().cpu(),
        latent_values=torch.stack(values),
        logits=torch.stack(logits),
        lens_logits=torch.stack(lens_logits) if lens else None,
        clean_logits=clean_logits.float().cpu(),
    )


# ----------------------------------------------------------------------------------------------
# running interventions
# ----------------------------------------------------------------------------------------------


@contextmanager
def interventions(model: Any, fwd_hooks: Sequence[tuple[str, HookFn]]) -> Iterator[Any]:
    """Add forward hooks for the duration of a ``with`` block; they are removed on exit, also
    when the block raises (TransformerLens's ``model.hooks`` context, which resets in ``finally``).

    Checked before anything runs: every hook name exists in the model, and every
    :class:`SAEHook` sits at its SAE's hook point.
    """
    hooks = list(fwd_hooks)
    for name, fn in hooks:
        expected = getattr(fn, "hook_name", None)
        if expected is not None and name != expected:
            raise ConfigError(f"{type(fn).__name__} is for the SAE's hook point {expected!r}, not {name!r}")
        if name.rsplit(".", 1)[-1].startswith("hook_sae_"):
            if name not in model.hook_dict:
                raise ConfigError(f"no hook {name!r}: attach the SAE first (model.add_sae / model.saes(...))")
        else:
            check_model_hook(model, name)
    with model.hooks(fwd_hooks=hooks) as hooked:
        yield hooked


@torch.no_grad()
def latent_means(
    model: Any, sae: SAE[Any], tokens: Tensor, *, hook_name: str | None = None, batch_size: int = 8
) -> Tensor:
    """``[d_sae]`` mean of each latent over all positions of ``tokens`` (for mean-ablation)."""
    hook = check_sae_hook(sae, hook_name)
    check_model_hook(model, hook)
    batch_size = check_int("batch_size", batch_size, lo=1)
    if isinstance(tokens, Tensor) and tokens.numel() == 0:
        raise ConfigError("no tokens to average the latents over: the token tensor is empty")
    tokens = check_tokens(model, tokens, min_length=1)
    try:
        stop: int | None = stop_at_layer(hook)
    except ConfigError:
        stop = None
    total = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    count = 0
    for batch in torch.split(tokens, batch_size):
        _, cache = model.run_with_cache(batch.to(model.cfg.device), names_filter=hook, stop_at_layer=stop)
        latents = sae.encode(cache[hook].to(sae.device))
        total += latents.reshape(-1, latents.shape[-1]).double().sum(0).cpu()
        count += latents.shape[0] * latents.shape[1]
    means = total / count
    check_finite_result("latent_means", means, f"the SAE's latents at {hook!r} hold NaN/inf")
    return means.to(sae.W_left.dtype if is_bilinear(sae) else sae.W_dec.dtype)


def top_tokens(logits: Tensor, k: int = 10, largest: bool = True) -> list[tuple[int, float]]:
    """``k`` (token id, value) pairs of a 1-D logit vector, largest (or smallest) first."""
    k = min(check_int("k", k, lo=1), logits.shape[-1])
    result = logits.detach().float().topk(k, largest=largest)
    return [(int(i), float(v)) for v, i in zip(result.values, result.indices)]


def unembedding_effect(model: Any, sae: SAE[Any], latent: int) -> Tensor | None:
    """``[d_vocab]`` direct effect of latent j's direction on the logits, ``direction_j @ W_U``
    (final norm ignored: a linear read-out of which tokens the latent promotes or suppresses).

    None when the SAE's activations are not the size of the residual stream."""
    with torch.no_grad():
        direction = latent_direction(sae, latent)
        if direction.shape[-1] != model.cfg.d_model:
            return None
        return direction.to(model.W_U.dtype) @ model.W_U


__all__ = [
    "HookFn",
    "LatentEdit",
    "LatentEigen",
    "SAEHook",
    "SpliceHook",
    "SteerHook",
    "WalkHook",
    "WalkResult",
    "ablate_hook",
    "add_to_latents",
    "check_latent",
    "check_latents",
    "check_sae_hook",
    "clamp_hook",
    "interventions",
    "latent_contribution",
    "latent_direction",
    "latent_directions",
    "latent_edit_hook",
    "latent_eigenvectors",
    "latent_means",
    "scale_hook",
    "scale_latents",
    "set_latents",
    "splice_hook",
    "splice_with_error_hook",
    "steer_hook",
    "top_tokens",
    "unembedding_effect",
    "walk_hook",
    "walk_manifold",
]
