"""An SAE and the language model it was trained on, loaded together and checked against each other.

SAELens records the model an SAE was trained on in ``cfg.json`` (``metadata.model_name``). By
default :func:`model_for_sae` loads that model; given another name it first checks, through
:func:`canonical_model_name` (aliases compare equal), that the name is the SAE's model, so an SAE
is never run on a model it was not trained on (a :class:`~sae_bilinear.errors.ConfigError`).
:func:`load_model_and_sae` adds the hook and size checks every intervention needs.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
from sae_lens import SAE, HookedSAETransformer
from transformer_lens.loading_from_pretrained import get_official_model_name

from sae_bilinear import interventions as iv
from sae_bilinear import models, toy
from sae_bilinear.errors import ConfigError, DataFileError
from sae_bilinear.evaluate import check_model_hook, check_sae_fits
from sae_bilinear.hub import load_any_from_disk

Model = HookedSAETransformer
"""The language models loaded here (SAELens's ``HookedSAETransformer``)."""


class Loaded(NamedTuple):
    """What an experiment runs on."""

    model: Model
    """The language model, in eval mode."""
    sae: SAE[Any]
    """The SAE, checked to fit ``model`` at ``hook``."""
    hook: str
    """The hook point the SAE reads (and the experiment edits)."""


def load_sae(path: Path | str, device: str = "cpu") -> SAE[Any]:
    """A SAELens SAE from a folder, through the validating loader (finite weights, dtypes, cfg)."""
    if not (Path(path) / "cfg.json").is_file():
        raise DataFileError(f"{path} is not an SAE folder: it has no cfg.json (pass the folder SAELens saved)")
    return load_any_from_disk(path, device=device)


def canonical_model_name(name: str) -> str:
    """A model name reduced so that aliases compare equal: ``"smollm2-135m"`` and
    ``"HuggingFaceTB/SmolLM2-135M-Instruct"``, ``"toy"`` and ``"toy-bigram"``, ``"gpt2-small"`` and
    ``"gpt2"`` (TransformerLens aliases), a local folder and its name."""
    lowered = str(name).strip().rstrip("/").lower()
    if lowered in models.EMBEDDED_MODEL_ALIASES or lowered.endswith(models.SMOLLM2_MODEL_NAME.lower()):
        return models.SMOLLM2_MODEL_NAME.lower()
    if lowered in (toy.TOY_MODEL, toy.TOY_MODEL_NAME):
        return toy.TOY_MODEL_NAME
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lowered = get_official_model_name(str(name).strip()).lower()
    except ValueError:
        pass  # not a TransformerLens name: a local folder or a Hub id
    return lowered.rsplit("/", 1)[-1]


def _wrong_model(sae_path: Any, trained_on: str, given: str) -> ConfigError:
    return ConfigError(
        f"the SAE {sae_path} was trained on the model {trained_on!r} (metadata.model_name in its cfg.json), "
        f"not on --model {given!r}: leave out --model to use the SAE's own model, or pass an SAE of {given!r}"
    )


def _load_named_model(spec: str, sae: SAE[Any] | None, device: str) -> Model:
    """``"toy"`` or a toy folder (:mod:`sae_bilinear.toy`), else anything ``models.load_model`` takes."""
    canonical = canonical_model_name(spec)
    if canonical == toy.TOY_MODEL_NAME:
        own = sae is not None and sae.cfg.metadata.model_name == toy.TOY_MODEL_NAME
        model = toy.toy_model_for(sae) if sae is not None and own else toy.toy_model()
    elif toy.is_toy_folder(spec):
        model = toy.load_toy_model(spec)
    elif canonical == models.SMOLLM2_MODEL_NAME.lower() and not Path(spec).expanduser().is_dir():
        return models.load_model(models.EMBEDDED_MODEL_NAME, device=device)
    else:
        return models.load_model(spec, device=device)
    return model if device == "cpu" else model.to(device)


def model_for_sae(sae: SAE[Any], model: str | None = None, device: str = "cpu", sae_path: Any = "") -> Model:
    """The SAE's own model (``metadata.model_name``), or ``model`` after checking it is that one.

    A local folder is loaded before the check (its name is known only then); any other name is
    compared first, so a wrong model is refused before it is loaded.
    """
    trained_on = sae.cfg.metadata.model_name
    if model is None:
        if not trained_on:
            raise ConfigError(
                f"the SAE {sae_path} names no model (metadata.model_name is unset in its cfg.json): pass --model"
            )
        return _load_named_model(trained_on, sae, device)
    local = Path(model).expanduser().is_dir()
    if trained_on and not local and canonical_model_name(model) != canonical_model_name(trained_on):
        raise _wrong_model(sae_path, trained_on, model)
    loaded = _load_named_model(model, sae, device)
    names = {canonical_model_name(model), canonical_model_name(getattr(loaded.cfg, "model_name", "") or model)}
    if trained_on and canonical_model_name(trained_on) not in names:
        raise _wrong_model(sae_path, trained_on, model)
    return loaded


def load_model_and_sae(
    sae_path: Path | str | None, model: str | None = None, hook: str | None = None, device: str = "cpu", seed: int = 0
) -> Loaded:
    """The SAE at ``sae_path`` and its model, checked against each other before any work: the
    model is the SAE's, the hook is the SAE's and exists in the model, the sizes match.

    ``sae_path=None`` with ``model="toy"`` trains a toy SAE (:func:`sae_bilinear.toy.toy_sae`).
    """
    if sae_path is None:
        if model is None or canonical_model_name(model) != toy.TOY_MODEL_NAME:
            raise ConfigError("--sae SAE_DIR is required (only --model toy trains its own toy SAE)")
        language_model = _load_named_model(model, None, device)
        sae: SAE[Any] = toy.toy_sae(language_model, hook=hook or toy.TOY_HOOK, seed=seed).to(device)
    else:
        sae = load_sae(sae_path, device)
        iv.check_sae_hook(sae, hook)  # refuse a wrong --hook before loading the model
        language_model = model_for_sae(sae, model, device, sae_path)
    hook_name = iv.check_sae_hook(sae, hook)
    check_model_hook(language_model, hook_name)
    probe = torch.zeros(1, 1, dtype=torch.long, device=language_model.cfg.device)
    check_sae_fits(language_model, sae, hook_name, probe)
    return Loaded(language_model, sae, hook_name)
