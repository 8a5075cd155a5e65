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

Three modules, one namespace: the hook base (:class:`SAEHook`, the latents' directions) lives in
:mod:`sae_bilinear.sae_hooks`, the manifold walk (:func:`walk_hook`, :func:`walk_manifold`,
:func:`latent_eigenvectors`) in :mod:`sae_bilinear.manifold_walk`; both are re-exported here,
so every name imports from ``sae_bilinear.interventions`` as before.

``keep_error=True`` (the default for edits) adds the SAE's error term back,
``x_out = x + (x̂(f_edited) − x̂(f))``, so the edit of the latents is the only change: with no
edit, the activation passes through exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from sae_lens.saes.sae import SAE
from torch import Tensor

from sae_bilinear import kernels
from sae_bilinear.checks import (
    check_latent,
    check_latents,
    check_model_hook,
    check_sae_hook,
    check_tokens,
    is_bilinear,
    stop_at_layer,
)
from sae_bilinear.errors import ConfigError, NonFiniteResultError
from sae_bilinear.manifold_walk import (
    LatentEigen,
    WalkHook,
    WalkResult,
    latent_eigenvectors,
    walk_hook,
    walk_manifold,
)
from sae_bilinear.sae_hooks import (
    HookFn,
    Positions,
    SAEHook,
    finite_amount,
    latent_contribution,
    latent_direction,
    latent_directions,
)
from sae_bilinear.values import check_bool, check_finite_float, check_finite_result, check_finite_tensor, check_int

LatentEdit = Callable[[Tensor], Tensor]
"""A function of the latents ``f [..., d_sae] -> f'`` applied before decoding."""


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


def _decode(sae: SAE[Any], latents: Tensor, encoded: Tensor) -> Tensor:
    """x̂ of ``latents``, an edit of ``encoded`` (what ``sae.encode`` returned; bilinear: its token norms)."""
    return sae.decode(latents, input_norm=sae.encoded_norms(encoded)) if is_bilinear(sae) else sae.decode(latents)


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
    values = finite_amount("values", values)
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
    return [(int(i), float(v)) for v, i in zip(result.values, result.indices, strict=False)]


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
