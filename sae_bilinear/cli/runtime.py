"""What the commands share once parsing is done: devices, SAE loading, held-out tokens.

This module imports torch and SAELens at the top, so the command modules import it inside
their ``execute`` functions, never at module level (see the package docstring).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from sae_bilinear import data, hub, models
from sae_bilinear.bilinear import ARCHITECTURE
from sae_bilinear.errors import ConfigError, DataFileError


def set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def check_device(device: str, option: str = "--device", fix: str = "--device cpu") -> None:
    """Raise :class:`ConfigError` unless ``device`` is a torch device this machine has."""
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{option} {device!r} is not a torch device; use e.g. cpu, cuda or cuda:1") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise ConfigError(f"{option} {device}: CUDA is not available ({why}); use {fix}")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"{option} {device}: there are {torch.cuda.device_count()} GPU(s), numbered from 0")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{option} {device}: MPS is not available on this machine; use {fix}")


def library_flags(function: Callable[..., Any], **flags: bool) -> dict[str, bool]:
    """The flags that are on, as keyword arguments for ``function``.

    ``--resume``/``--overwrite`` are passed to the library only when given, and refused
    clearly where the library function does not take them (yet).
    """
    on = {name: True for name, value in flags.items() if value}
    accepted = inspect.signature(function).parameters
    for name in on:
        if name not in accepted:
            option = "--" + name.replace("_", "-")
            where = f"{function.__module__}.{function.__name__}"
            raise ConfigError(f"{option} is not supported by this version of sae-bilinear ({where})")
    return on


def _architecture(folder: Path) -> str:
    label = folder / "cfg.json"
    try:
        cfg = json.loads(label.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataFileError(f"{label}: cannot be read as JSON ({error}); save the SAE again") from error
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str):
        raise DataFileError(f"{label}: has no 'architecture' (not a SAELens SAE config)")
    return cfg["architecture"]


def load_sae(folder: Path, device: str, *, command: str, bilinear_only: bool) -> Any:
    """The SAE in ``folder``, through the package's validating loader (any SAELens architecture:
    finite weights, float dtypes, checked cfg.json; a bad file is named)."""
    architecture = _architecture(folder)
    if architecture == ARCHITECTURE:
        return hub.load_from_disk(folder, device=device)
    if bilinear_only:
        raise ConfigError(
            f"{command} works on bilinear SAEs; {folder} holds a {architecture!r} SAE "
            "(`sae-bilinear evaluate` takes any SAELens SAE)"
        )
    return hub.load_any_from_disk(folder, device=device)


class HeldOut(NamedTuple):
    """A model with the held-out token contexts to run an SAE on."""

    model: Any
    """The ``HookedSAETransformer``."""
    hook_name: str
    """Where the SAE is spliced."""
    tokens: Tensor
    """``[n_contexts, context_size]`` token ids from the corpus's held-out split."""
    prepend_bos: bool
    """Whether each context starts with BOS (then position 0 is not scored)."""


def held_out(args: Any, sae: Any, *, command: str, default_context_size: int) -> HeldOut:
    """The model and held-out contexts for ``sae``: options first, then the SAE's metadata.

    Cheap checks (corpus, hook and context names) come before the model's forward passes.
    """
    meta = sae.cfg.metadata
    corpus_name = args.corpus or meta.dataset_path or data.DEFAULT_CORPUS
    corpus = data.load_corpus(corpus_name)
    if not isinstance(corpus, data.TextCorpus):
        raise ConfigError(
            f"{command} reads local text, and the corpus {corpus_name!r} is a Hub dataset; "
            "pass --corpus kjv or a local .txt/.jsonl file"
        )
    hook_name = args.hook_name or meta.hook_name
    if not hook_name:
        raise ConfigError("the SAE's cfg.json names no hook (metadata.hook_name); pass --hook-name")
    model_name = args.model or meta.model_name or models.EMBEDDED_MODEL_NAME
    model = models.load_model(model_name, device=args.device, dtype=args.dtype)
    models.check_hook(model, hook_name)
    context_size = args.context_size or meta.context_size or default_context_size
    models.check_context_size(model, context_size)
    prepend_bos = models.default_prepend_bos(model)
    tokens = data.tokenize_contexts(
        corpus.heldout, model.tokenizer, context_size, prepend_bos=prepend_bos, max_contexts=args.eval_contexts
    )
    return HeldOut(model, hook_name, tokens, prepend_bos)


def ignored_tokens(held: HeldOut) -> list[int] | None:
    """BOS is not scored, as in the main job and SAELens's evals (its activations are outliers)."""
    bos = held.model.tokenizer.bos_token_id
    return [bos] if held.prepend_bos and bos is not None else None
