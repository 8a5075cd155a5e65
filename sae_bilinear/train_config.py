"""Train configs: SAELens runner configs read from YAML/JSON, sweeps expanded, every key checked.

A train config is SAELens's ``LanguageModelSAERunnerConfig.to_dict()`` form (so a
``runner_cfg.json`` that SAELens wrote is a valid input) plus an optional ``sae_bilinear``
section for what SAELens has no field for (the optimiser). A sweep file (``base:`` +
``sweep:`` of dotted keys → value lists) describes one run per combination of its values.

:func:`check_train_config` is the one place that checks such a mapping before SAELens sees it
(unknown keys, which SAELens would drop silently or fail on with a bare ``TypeError``, and
remote code); :func:`runner_config_from_dict` builds the runner config from it; the CLI's
``train`` and ``sweep`` commands call the same checks.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from sae_lens.config import LoggingConfig

from sae_bilinear.checks import check_remote_code
from sae_bilinear.errors import ConfigError, DataFileError, UserError
from sae_bilinear.muon import check_ns_dtype
from sae_bilinear.values import check_known_keys, did_you_mean

OptimizerName = Literal["adam", "muon"]
OPTIMIZERS: tuple[str, ...] = ("adam", "muon")
"""The optimisers a run may train with: SAELens's Adam, or the paper's Muon."""
SAE_BILINEAR_KEYS = ("optimizer", "ns_dtype")
"""Keys of a train config's ``sae_bilinear`` section (what SAELens's config has no field for)."""
_VERSION_KEYS = ("sae_lens_version", "sae_lens_training_version")


def check_optimizer(optimizer: object, field: str = "optimizer") -> None:
    """A :class:`ConfigError` naming ``field`` unless ``optimizer`` is one of :data:`OPTIMIZERS`."""
    if optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"unknown {field} {optimizer!r}; expected one of {', '.join(OPTIMIZERS)}"
            f"{did_you_mean(optimizer, OPTIMIZERS)}"
        )


# --------------------------------------------------------------------------------------------
# files and sweeps
# --------------------------------------------------------------------------------------------


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON mapping; clear errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except UnicodeDecodeError as error:
        raise DataFileError(f"{path} is not UTF-8 text: {error}") from error
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise DataFileError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {error}") from error
    if not isinstance(raw, dict):
        raise DataFileError(f"{path} must hold a mapping of config keys, not {type(raw).__name__}")
    return raw


def set_dotted(config: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``config["a"]["b"]["c"] = value`` for ``dotted = "a.b.c"``, creating missing levels."""
    *parents, last = dotted.split(".")
    for depth, key in enumerate(parents):
        config = config.setdefault(key, {})
        if not isinstance(config, dict):
            raise ConfigError(f"cannot set {dotted!r}: {'.'.join(parents[: depth + 1])!r} is not a section")
    config[last] = value


def expand_config(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """The runs a config file describes: ``[(name, runner_config_dict)]``.

    A plain file is one run. A sweep file (``base:`` + ``sweep:`` of dotted keys → value
    lists) is the product of its lists, each run written under ``output_root/<name>``.
    """
    path = Path(path)
    raw = read_config_file(path)
    if "sweep" not in raw:
        return [(path.stem, raw)]
    check_known_keys(f"sweep file {path}", raw, ("base", "sweep", "output_root"))
    if "base" not in raw:
        raise ConfigError(f"{path}: a sweep needs a 'base' config file")
    if not isinstance(raw["sweep"], dict) or not all(isinstance(v, list) and v for v in raw["sweep"].values()):
        raise ConfigError(f"{path}: 'sweep' must map dotted keys to non-empty lists of values")
    base = read_config_file(path.parent / raw["base"])
    keys = list(raw["sweep"])
    runs = []
    for values in itertools.product(*(raw["sweep"][key] for key in keys)):
        config = copy.deepcopy(base)
        for key, value in zip(keys, values, strict=False):
            set_dotted(config, key, value)
        name = "-".join(_short_value(key, value) for key, value in zip(keys, values, strict=False))
        config["output_path"] = str(Path(raw.get("output_root", "runs/sweep")) / name)
        runs.append((name, config))
    return runs


def _short_value(key: str, value: Any) -> str:
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "alpha":
        return f"a{int(float(value) * 100)}"  # the authors' folder naming (int truncates)
    return str(value)


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------


def check_train_config_keys(raw: dict[str, Any]) -> None:
    """A ConfigError naming the first unknown key (top level, ``sae``, ``logger``), with a did-you-mean.

    SAELens's own ``from_dict`` drops unknown ``sae`` keys silently (a misspelt ``alhpa`` would
    train at the default α) and fails on unknown top-level keys with a bare ``TypeError``.
    """
    from sae_lens import LanguageModelSAERunnerConfig
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    check_known_keys("the train config", raw, [f.name for f in dataclasses.fields(LanguageModelSAERunnerConfig)])
    sae = raw["sae"]
    architecture = sae.get("architecture")
    if architecture not in SAE_TRAINING_CLASS_REGISTRY:
        known = ", ".join(sorted(SAE_TRAINING_CLASS_REGISTRY))
        raise ConfigError(
            f"sae.architecture {architecture!r} is not a registered SAELens training architecture"
            f"{did_you_mean(architecture, SAE_TRAINING_CLASS_REGISTRY)}; known: {known}"
        )
    config_class = SAE_TRAINING_CLASS_REGISTRY[architecture][1]
    sae_keys = [f.name for f in dataclasses.fields(config_class)] + ["architecture", "metadata"]
    check_known_keys("the sae section", sae, sae_keys, prefix="sae.")
    logger = raw.get("logger", {})  # absent: SAELens's default logger
    if not isinstance(logger, dict):
        raise ConfigError(f"the logger section must be a mapping, got {logger!r}")
    logger_keys = [f.name for f in dataclasses.fields(LoggingConfig)]
    check_known_keys("the logger section", logger, logger_keys, prefix="logger.")


def check_train_config(
    raw: dict[str, Any], *, allow_remote_code: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check a train config mapping; return ``(runner config dict, extras)``, defaults filled in.

    ``raw`` is not changed. The runner config dict gets ``sae.architecture`` = bilinear and
    ``dataset_trust_remote_code`` false (SAELens defaults it to true), loses SAELens's version
    keys, and is ready for ``LanguageModelSAERunnerConfig.from_dict``; ``extras`` is the
    ``sae_bilinear`` section (``optimizer``, ``ns_dtype``). An unknown key anywhere, or any
    ``trust_remote_code`` set true without ``allow_remote_code`` (an argument, never a config
    key: a config file cannot grant itself the right to run code), is a :class:`ConfigError`
    naming the key.
    """
    raw = copy.deepcopy(raw)
    extras = raw.pop("sae_bilinear", None) or {}
    if not isinstance(extras, dict):
        raise ConfigError(f"the sae_bilinear section must be a mapping, got {extras!r}")
    check_known_keys("the sae_bilinear section", extras, SAE_BILINEAR_KEYS, prefix="sae_bilinear.")
    check_optimizer(extras.setdefault("optimizer", "adam"), "sae_bilinear.optimizer")
    check_ns_dtype(extras.setdefault("ns_dtype", "auto"), "sae_bilinear.ns_dtype")
    if not isinstance(raw.get("sae"), dict):
        raise ConfigError("the config needs an 'sae' section (a mapping: d_in, d_sae, variant, ...)")
    raw["sae"].setdefault("architecture", "bilinear")
    # No logger default of our own: SAELens's (wandb on) holds, as for any SAELens config.
    for key in _VERSION_KEYS:
        raw.pop(key, None)
    # SAELens's to_dict writes dataset_trust_remote_code: true by default: set it to false.
    check_remote_code(raw, allow_remote_code, "config")
    raw.setdefault("dataset_trust_remote_code", False)
    check_train_config_keys(raw)
    return raw, extras


def runner_config_from_dict(raw: dict[str, Any], *, allow_remote_code: bool = False) -> tuple[Any, dict[str, Any]]:
    """``(LanguageModelSAERunnerConfig, extras)`` from a config mapping checked by :func:`check_train_config`."""
    from sae_lens import LanguageModelSAERunnerConfig

    raw, extras = check_train_config(raw, allow_remote_code=allow_remote_code)
    try:
        return LanguageModelSAERunnerConfig.from_dict(raw), extras
    except UserError:
        raise
    except (TypeError, ValueError, KeyError) as error:
        raise ConfigError(f"invalid train config: {error}") from error
