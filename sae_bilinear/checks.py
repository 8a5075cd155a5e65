"""One home for the checks of what a user hands the package.

Everything here raises a :class:`sae_bilinear.errors.UserError` subclass whose message names
the value, field or file at fault and says how to fix it; nothing here computes a result.

* **Values** (type and range, for every module's config fields and arguments) live in
  :mod:`sae_bilinear.values`, below the model, and are re-exported here:
  :func:`check_finite_float`, :func:`check_int`, :func:`check_bool`, :func:`check_choice`,
  :func:`check_finite_tensor`, :func:`check_finite_result`.
* **Where models run**: :func:`parse_dtype`, :func:`parse_device` (a CUDA/MPS device that
  this machine lacks is an error here, not a traceback deep inside torch).
* **Hook points**: :func:`hook_layer`, :func:`stop_at_layer`, :func:`check_hook`,
  :func:`check_model_hook`, :func:`resolve_hook_name`, :func:`check_sae_hook`.
* **Tokens and contexts**: :func:`check_context_size`, :func:`check_tokens`.
* **SAE against model**: :func:`is_bilinear`, :func:`sae_input`, :func:`probe_activation`,
  :func:`check_sae_fits`, :func:`check_can_splice`, :func:`check_finite_parameters`.
* **Latent indices**: :func:`check_latent`, :func:`check_latents`.
* **Remote code**: :func:`check_remote_code` (``trust_remote_code`` only with an explicit
  ``allow_remote_code=True``).
* **Optional packages**: :func:`require_package` (the ``pip install`` command in the message).

Import order: this module sits just above :mod:`sae_bilinear.bilinear` (it may import
``bilinear``, ``values`` and ``errors``), so ``models``, ``evaluate``, ``interventions``,
``train`` and the rest import their checks from here. The old names stay importable from
where they were (``models.check_hook``, ``evaluate.check_tokens``, ``interventions.check_latent``
...), re-exported from here.
"""

from __future__ import annotations

import difflib
import importlib.util
import numbers
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeGuard

import torch
from jaxtyping import Int
from sae_lens.saes.sae import SAE
from torch import Tensor

from sae_bilinear.bilinear import BilinearSAE, BilinearTrainingSAE
from sae_bilinear.errors import (
    ConfigError,
    ConfigTypeError,
    IndexRangeError,
    MissingDependencyError,
    MissingFileError,
    NonFiniteResultError,
)
from sae_bilinear.values import (
    check_bool,
    check_choice,
    check_finite_float,
    check_finite_result,
    check_finite_tensor,
    check_int,
)

__all__ = [
    "DTYPES",
    "ConfigTypeError",
    "IndexRangeError",
    "MissingFileError",
    "NonFiniteResultError",
    "check_bool",
    "check_can_splice",
    "check_choice",
    "check_context_size",
    "check_finite_float",
    "check_finite_parameters",
    "check_finite_result",
    "check_finite_tensor",
    "check_hook",
    "check_int",
    "check_latent",
    "check_latents",
    "check_model_hook",
    "check_remote_code",
    "check_sae_fits",
    "check_sae_hook",
    "check_tokens",
    "hook_layer",
    "is_bilinear",
    "parse_device",
    "parse_dtype",
    "probe_activation",
    "require_package",
    "resolve_hook_name",
    "sae_input",
    "stop_at_layer",
]


# ----------------------------------------------------------------------------------------------
# dtype and device
# ----------------------------------------------------------------------------------------------

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
"""The dtype names a model may be loaded in."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn ``"float32"``/``"bfloat16"``/``"float16"`` (or ``fp32``/``bf16``/``fp16``, or a
    ``torch.dtype``) into a floating ``torch.dtype``; anything else is a :class:`ConfigError`."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise ConfigError(f"Unsupported dtype {dtype}; use one of {sorted(set(DTYPES))}.")
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ConfigError(f"Unknown dtype {dtype!r}; use one of {sorted(set(DTYPES))}.")
    return DTYPES[key]


def parse_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``, refused with a clear message when torch does not understand it
    or when this machine has no such device (``cuda`` without CUDA, ``cuda:3`` with one GPU,
    ``mps`` off Apple silicon)."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ConfigError(f"Unknown device {device!r} (expected e.g. 'cpu', 'cuda', 'cuda:0').") from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
            raise ConfigError(
                f"device {device!r} asked for, but torch sees no CUDA GPU here (torch {torch.__version__}, "
                f"{build}); use device 'cpu' (--device cpu)."
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise ConfigError(
                f"device {device!r} asked for, but this machine has {count} CUDA device(s) "
                f"(cuda:0 .. cuda:{count - 1})."
            )
    if parsed.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"device {device!r} asked for, but MPS is not available here; use 'cpu'.")
    return parsed


# ----------------------------------------------------------------------------------------------
# optional packages and remote code
# ----------------------------------------------------------------------------------------------


def require_package(module: str, pip_command: str, purpose: str) -> Path:
    """The directory of the installed package ``module``, found without importing it; a
    :class:`~sae_bilinear.errors.MissingDependencyError` with ``pip_command`` if it is missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            f"{purpose} needs the {module!r} package, which is not installed. Install it with: "
            f"{pip_command}"
        )
    return Path(spec.origin).parent


_REMOTE_CODE_SUFFIX = "trust_remote_code"  # trust_remote_code, dataset_trust_remote_code, ...


def _remote_code_keys(settings: Mapping[str, Any], where: str) -> list[str]:
    """``where.key=value`` of every ``*trust_remote_code`` key set true, nested mappings searched."""
    found = []
    for key, value in settings.items():
        if isinstance(value, Mapping):
            found += _remote_code_keys(value, f"{where}.{key}")
        elif str(key).endswith(_REMOTE_CODE_SUFFIX) and value:
            found.append(f"{where}.{key}={value!r}")
    return found


def check_remote_code(settings: Mapping[str, Any], allow_remote_code: bool, where: str) -> None:
    """Refuse ``trust_remote_code``/``dataset_trust_remote_code`` (any ``*trust_remote_code`` key)
    set true in ``settings`` (keyword arguments or a config mapping, nested mappings searched)
    unless the caller passed ``allow_remote_code=True``. ``where`` names the settings in the message."""
    check_bool("allow_remote_code", allow_remote_code)
    found = [] if allow_remote_code else _remote_code_keys(settings, where)
    if found:
        raise ConfigError(
            f"{', '.join(found)} would run code downloaded with the model or dataset; "
            "this package refuses that unless you pass allow_remote_code=True "
            "(CLI: --allow-remote-code) after reading that code."
        )


# ----------------------------------------------------------------------------------------------
# hook points
# ----------------------------------------------------------------------------------------------

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.")
_HEAD_HOOK_SUFFIXES = ("hook_q", "hook_k", "hook_v", "hook_z")


def _check_hook_name(hook_name: Any) -> str:
    if not isinstance(hook_name, str) or not hook_name:
        raise ConfigTypeError(
            f"hook_name must be a hook point's name such as 'blocks.18.hook_resid_pre', got {hook_name!r}"
        )
    return hook_name


def hook_layer(hook_name: str) -> int:
    """The block index of a per-block TransformerLens hook: ``blocks.18.hook_resid_pre`` → 18."""
    match = _BLOCK_HOOK.match(_check_hook_name(hook_name))
    if match is None:
        raise ConfigError(
            f"{hook_name!r} is not a per-block hook name; expected 'blocks.<layer>.<hook>', "
            "e.g. 'blocks.18.hook_resid_pre'."
        )
    return int(match.group(1))


def stop_at_layer(hook_name: str) -> int:
    """The ``stop_at_layer`` that runs the model just far enough for ``hook_name`` to fire.

    TransformerLens's ``stop_at_layer=n`` runs blocks ``0 .. n-1``; every hook of block ``L``
    (``hook_resid_pre`` included: it fires inside block ``L``'s forward) needs ``L + 1``.
    So ``blocks.18.hook_resid_pre`` → 19 and ``blocks.5.hook_resid_post`` → 6, the same rule
    as SAELens's ``extract_stop_at_layer_from_tlens_hook_name``.
    """
    return hook_layer(hook_name) + 1


def check_hook(model: Any, hook_name: str) -> None:
    """Raise :class:`ConfigError` unless ``model`` (a HookedTransformer) has a hook point
    ``hook_name``. The message lists the closest valid names."""
    _check_hook_name(hook_name)
    if hook_name in model.hook_dict:
        return
    valid = list(model.hook_dict)
    close = difflib.get_close_matches(hook_name, valid, n=5, cutoff=0.6)
    if not close:
        suffix = hook_name.rsplit(".", 1)[-1]
        close = [name for name in valid if name.endswith(suffix)][:5] or valid[:5]
    n_layers = getattr(model.cfg, "n_layers", "?")
    raise ConfigError(
        f"Model {getattr(model.cfg, 'model_name', '?')} ({n_layers} blocks) has no hook "
        f"{hook_name!r}. Closest valid names: {', '.join(close)}."
    )


def check_model_hook(model: Any, hook_name: str) -> None:
    """:func:`check_hook`, and refuse a HookedSAETransformer with an SAE already attached at
    ``hook_name`` (its "clean" pass would already be spliced)."""
    attached: Any = getattr(model, "acts_to_saes", None)  # a property of HookedSAETransformer
    if callable(attached):
        attached = attached()
    if attached and hook_name in attached:
        raise ConfigError(
            f"an SAE is already attached to the model at {hook_name!r}, so a clean pass is not clean: "
            "call model.reset_saes() first"
        )
    check_hook(model, hook_name)


def resolve_hook_name(sae: SAE[Any], hook_name: str | None = None) -> str:
    """The hook to splice at: ``hook_name`` if given, else the one in the SAE's metadata."""
    name = hook_name if hook_name is not None else sae.cfg.metadata.hook_name
    if not name:
        raise ConfigError(
            "the SAE's metadata names no hook point (cfg.metadata.hook_name is unset): "
            "pass hook_name=..., e.g. 'blocks.18.hook_resid_pre'"
        )
    return _check_hook_name(name)


def check_sae_hook(sae: SAE[Any], hook_name: str | None = None) -> str:
    """The hook point to intervene at (default: the SAE's own); refuse one that differs from the
    hook the SAE was trained on, when its metadata names one."""
    trained = sae.cfg.metadata.hook_name
    if hook_name is not None and trained and hook_name != trained:
        raise ConfigError(
            f"this SAE was trained on {trained!r}, not {hook_name!r}: its latents mean nothing at another hook point"
        )
    return resolve_hook_name(sae, hook_name)


# ----------------------------------------------------------------------------------------------
# tokens and contexts
# ----------------------------------------------------------------------------------------------


def check_context_size(model: Any, context_size: int) -> None:
    """Raise :class:`ConfigError` unless ``context_size`` is a positive int that fits the
    model's context."""
    if not isinstance(context_size, numbers.Integral) or isinstance(context_size, bool) or context_size < 1:
        raise ConfigError(f"context_size must be a positive number of tokens, got {context_size!r}.")
    n_ctx = model.cfg.n_ctx
    if context_size > n_ctx:
        raise ConfigError(
            f"context_size {context_size} exceeds the model's context of {n_ctx} tokens "
            f"({model.cfg.model_name}); use a shorter context, or load the model with a larger "
            "n_ctx= if its positional embedding allows it."
        )


def check_tokens(model: Any, tokens: Tensor, min_length: int = 2) -> Int[Tensor, "batch seq"]:
    """Validate held-out tokens ``[batch, seq]`` (a 1-D tensor is one sequence); return them 2-D.

    Refused: an empty tensor, sequences shorter than ``min_length`` (CE needs a next token),
    non-integer ids (:class:`ConfigTypeError`), ids outside the vocabulary, contexts longer
    than the model's.
    """
    if not isinstance(tokens, Tensor):
        raise ConfigTypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2:
        raise ConfigError(f"tokens must have shape [batch, seq], got {tuple(tokens.shape)}")
    if tokens.numel() == 0:
        raise ConfigError(f"no tokens to evaluate on: the token tensor is empty (shape {tuple(tokens.shape)})")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise ConfigTypeError(f"tokens must be integer token ids, got dtype {tokens.dtype}")
    if tokens.shape[1] < min_length:
        raise ConfigError(
            f"sequences of {tokens.shape[1]} token(s) give no next-token loss: need at least {min_length} per sequence"
        )
    check_context_size(model, tokens.shape[1])
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= model.cfg.d_vocab:
        raise ConfigError(f"token ids must lie in [0, d_vocab={model.cfg.d_vocab}), got ids in [{low}, {high}]")
    return tokens


# ----------------------------------------------------------------------------------------------
# an SAE against a model
# ----------------------------------------------------------------------------------------------


def is_bilinear(sae: Any) -> TypeGuard[BilinearSAE | BilinearTrainingSAE]:
    """True for :class:`BilinearSAE` and :class:`BilinearTrainingSAE` (and type checkers then know it)."""
    return isinstance(sae, (BilinearSAE, BilinearTrainingSAE))


def sae_input(activation: Tensor, hook_name: str, head_index: int | None) -> Tensor:
    """The part of a hook's activation that the SAE reads, as SAELens's splice does.

    ``hook_q/k/v/z`` activations ``[b, s, heads, d_head]`` are flattened over heads, or reduced
    to ``head_index``; other hooks are returned as they are.
    """
    if any(suffix in hook_name for suffix in _HEAD_HOOK_SUFFIXES) and activation.ndim == 4:
        return activation[:, :, head_index] if head_index is not None else activation.flatten(-2, -1)
    return activation


def probe_activation(model: Any, hook_name: str, tokens: Tensor) -> Tensor:
    """The activation at ``hook_name`` for the first token of ``tokens`` (a 1-token forward pass,
    stopped right after the hook's block when the hook belongs to a block)."""
    captured: list[Tensor] = []

    def grab(activation: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        captured.append(activation.detach())
        return activation

    try:
        stop: int | None = stop_at_layer(hook_name)
    except ConfigError:
        stop = None  # not a per-block hook (hook_embed, ln_final...): run the whole model
    with torch.no_grad():
        model.run_with_hooks(tokens[:1, :1], fwd_hooks=[(hook_name, grab)], return_type=None, stop_at_layer=stop)
    if not captured:
        raise RuntimeError(f"hook {hook_name!r} did not fire on a forward pass of the model")
    return captured[0]


def check_sae_fits(model: Any, sae: SAE[Any], hook_name: str, tokens: Tensor) -> Tensor:
    """Raise :class:`ConfigError` when the SAE's ``d_in`` differs from the activation size at
    the hook; return the probed activation ``[1, 1, ...]`` (its trailing shape is one position's)."""
    probed = probe_activation(model, hook_name, tokens)
    size = sae_input(probed, hook_name, sae.cfg.metadata.hook_head_index).shape[-1]
    if size != sae.cfg.d_in:
        raise ConfigError(
            f"the SAE reads d_in={sae.cfg.d_in} features but the model's activation at {hook_name!r} has "
            f"{size}: the SAE was trained on another model or hook point"
        )
    return probed


def check_can_splice(sae: SAE[Any]) -> None:
    """Raise :class:`~sae_bilinear.UnliftedDecodeError` for a bilinear SAE that cannot decode."""
    if is_bilinear(sae):
        sae.decoder_directions()  # raises UnliftedDecodeError with the explanation when unlifted


def check_finite_parameters(sae: torch.nn.Module, what: str = "the SAE") -> None:
    """Refuse a module (an SAE) with NaN/inf in any parameter; the message names the parameter."""
    for name, parameter in sae.named_parameters():
        bad = ~torch.isfinite(parameter.detach())
        if bool(bad.any()):
            raise ConfigError(
                f"{what}'s parameter {name} holds {int(bad.sum())} NaN/inf value(s): the weights are "
                "damaged (or training diverged); load or train another SAE"
            )


# ----------------------------------------------------------------------------------------------
# latent indices
# ----------------------------------------------------------------------------------------------


def check_latent(sae: SAE[Any], latent: int) -> int:
    """Return ``latent`` as an int; refuse a non-integer (:class:`ConfigTypeError`) or one
    outside ``0 <= latent < d_sae`` (:class:`IndexRangeError`)."""
    d_sae = sae.cfg.d_sae
    if (
        isinstance(latent, Tensor)
        and latent.numel() == 1
        and not latent.is_floating_point()
        and latent.dtype != torch.bool
    ):
        latent = int(latent)
    if not isinstance(latent, numbers.Integral) or isinstance(latent, bool):
        raise ConfigTypeError(f"a latent index must be an int, got {latent!r}")
    latent = int(latent)
    if not 0 <= latent < d_sae:
        raise IndexRangeError(
            f"latent index {latent} is out of range: this SAE has {d_sae} latents (0..{d_sae - 1})"
        )
    return latent


def check_latents(sae: SAE[Any], latents: int | Sequence[int] | Tensor) -> list[int]:
    """Validate one or several latent indices (see :func:`check_latent`); at least one."""
    items: list[Any]
    if isinstance(latents, Tensor):
        items = [latents] if latents.ndim == 0 else list(latents.reshape(-1))
    elif isinstance(latents, (int, numbers.Integral, str)):
        items = [latents]  # check_latent refuses a str by name
    else:
        items = list(latents)
    checked = [check_latent(sae, j) for j in items]
    if not checked:
        raise ConfigError("no latents given: pass at least one latent index")
    return checked
