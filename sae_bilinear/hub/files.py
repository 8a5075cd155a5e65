"""Validated reading of SAE files, and the errors that name a bad one.

Every file is checked before any SAE is built: JSON configs (parse, object, architecture,
format version, every value through the config class's own validation), safetensors
weights (readable, tensor names, shapes, floating-point dtypes, finite values) and the
optional log-sparsity file. A bad file raises :class:`WeightFileError` whose message
starts with the file's path (or ``repo_id/path`` on the Hub), so nothing is half-loaded
and the user knows which file to replace. Weights are read with ``safetensors`` only,
never pickle.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
from sae_lens import SAE
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME
from sae_lens.loading.pretrained_sae_loaders import handle_config_defaulting, read_sae_components_from_disk
from sae_lens.registry import SAE_CLASS_REGISTRY
from sae_lens.saes.sae import SAEConfig
from sae_lens.util import str_to_dtype
from safetensors import safe_open

from sae_bilinear import kernels
from sae_bilinear.bilinear import ARCHITECTURE, FORMAT_VERSION, BilinearSAE, BilinearSAEConfig
from sae_bilinear.checks import parse_device
from sae_bilinear.errors import ConfigError, DataFileError

__all__ = [
    "MissingWeightFileError",
    "WeightFileError",
    "bilinear_disk_loader",
    "bilinear_loader",
    "load_any_from_disk",
    "load_from_disk",
]

FLOAT_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64"}
"""safetensors dtype codes a weight may have → torch dtype names; anything else is refused."""

_DAMAGED = "is not a readable safetensors file, it is damaged"
_REPLACE = "delete it and download or save it again"


class WeightFileError(DataFileError):
    """A config or weight file is unreadable, damaged, of an unknown architecture or kind,
    written by a newer version, or does not match its config. ``file`` names it."""

    def __init__(self, file: str | os.PathLike[str], problem: str):
        self.file = str(file)
        self.problem = problem
        super().__init__(f"{self.file}: {problem}")


class MissingWeightFileError(WeightFileError, FileNotFoundError):
    """A config or weight file that must exist is absent (locally, on the Hub or in the cache)."""


# --------------------------------------------------------------------------- arguments


def check_dtype(dtype: Any) -> None:
    """ConfigError unless ``dtype`` (a user's argument) is a dtype name SAELens knows."""
    try:
        str_to_dtype(dtype)
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"dtype {dtype!r} is not a dtype SAELens knows ({error})") from error


def dtype_of(name: Any, label: str) -> torch.dtype:
    """The torch dtype called ``name``; WeightFileError naming ``label`` (where it came from)."""
    try:
        return str_to_dtype(name)
    except (ValueError, TypeError, KeyError) as error:
        raise WeightFileError(label, f"dtype {name!r} is not a dtype SAELens knows ({error})") from error


# --------------------------------------------------------------------------- JSON and tensors


def read_json(path: Path, label: str) -> dict[str, Any]:
    """A JSON object from ``path``; errors name ``label``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingWeightFileError(label, "file not found") from None
    except IsADirectoryError:
        raise WeightFileError(label, "is a folder, expected a JSON file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise WeightFileError(label, f"is damaged: cannot be read as UTF-8 text ({error}); {_REPLACE}") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise WeightFileError(label, f"is not valid JSON, the file is damaged ({error}); {_REPLACE}") from error
    if not isinstance(data, dict):
        raise WeightFileError(label, f"must hold a JSON object, found {type(data).__name__}")
    return data


@contextmanager
def _open_safetensors(path: Path, label: str) -> Iterator[Any]:
    if not path.is_file():
        raise MissingWeightFileError(label, "file not found" if not path.exists() else "is not a file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            yield handle
    except WeightFileError:
        raise
    except Exception as error:  # SafetensorError, OSError: truncated, damaged, not safetensors
        raise WeightFileError(label, f"{_DAMAGED} ({error}); {_REPLACE}") from error


def tensor_header(path: Path, label: str) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names → (shape, safetensors dtype) from the header, without reading the data."""
    with _open_safetensors(path, label) as handle:
        return {
            key: (tuple(handle.get_slice(key).get_shape()), handle.get_slice(key).get_dtype())
            for key in handle.keys()  # noqa: SIM118
        }


def _check_float(label: str, name: str, stored: str) -> None:
    if stored not in FLOAT_DTYPES:
        raise WeightFileError(label, f"tensor {name!r} has dtype {stored}, expected a floating-point dtype")


def _check_finite(label: str, name: str, tensor: torch.Tensor) -> None:
    if not bool(torch.isfinite(tensor).all()):
        raise WeightFileError(label, f"tensor {name!r} holds NaN or infinite values")


def read_tensors(
    path: Path, label: str, expected: Mapping[str, tuple[int, ...]], dtype: torch.dtype, device: str
) -> dict[str, torch.Tensor]:
    """Read exactly the tensors ``expected`` (name → shape), validated, as ``dtype`` on ``device``."""
    header = tensor_header(path, label)
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    if missing or unexpected:
        parts = [
            f"missing tensor(s) {missing}" if missing else "",
            f"unexpected tensor(s) {unexpected}" if unexpected else "",
        ]
        raise WeightFileError(
            label, f"{' and '.join(p for p in parts if p)}; the config expects exactly {sorted(expected)}"
        )
    for name, shape in expected.items():
        got, stored = header[name]
        if got != tuple(shape):
            raise WeightFileError(label, f"tensor {name!r} has shape {list(got)}, the config expects {list(shape)}")
        _check_float(label, name, stored)
    with _open_safetensors(path, label) as handle:
        tensors = {name: handle.get_tensor(name) for name in expected}
    for name, tensor in tensors.items():
        _check_finite(label, name, tensor)
    return {name: tensor.to(device=device, dtype=dtype) for name, tensor in tensors.items()}


def check_all_tensors(path: Path, label: str) -> None:
    """Every tensor of ``path`` is floating-point and finite (read one at a time)."""
    header = tensor_header(path, label)
    for name, (_, stored) in header.items():
        _check_float(label, name, stored)
    with _open_safetensors(path, label) as handle:
        for name in header:
            _check_finite(label, name, handle.get_tensor(name))


# --------------------------------------------------------------------------- bilinear configs


def check_bilinear_cfg(cfg_dict: dict[str, Any], label: str) -> BilinearSAEConfig:
    """Validate a SAELens-layout config dict of a bilinear SAE; return the config object.

    The raw JSON values go to :class:`BilinearSAEConfig` unchanged, so its own checks
    (types and ranges) decide, and any refusal is reported against ``label``.
    """
    architecture = cfg_dict.get("architecture")
    if architecture != ARCHITECTURE:
        raise WeightFileError(
            label,
            f"architecture {architecture!r} is not {ARCHITECTURE!r}; sae-bilinear loads bilinear SAEs only "
            "(load other architectures with sae_bilinear.hub.load_any_from_disk or sae_lens.SAE.from_pretrained)",
        )
    version = cfg_dict.get("bilinear_format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise WeightFileError(label, f"bilinear_format_version must be an int, got {version!r}")
    if version > FORMAT_VERSION:
        raise WeightFileError(
            label,
            f"was written by a newer sae-bilinear (bilinear_format_version {version}; this one reads up to "
            f"{FORMAT_VERSION}): upgrade sae-bilinear to load it",
        )
    for key in ("d_in", "d_sae"):
        if key not in cfg_dict:
            raise WeightFileError(label, f"has no {key!r}")
    _check_metadata(cfg_dict, label)
    try:
        return BilinearSAEConfig.from_dict(cfg_dict)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise WeightFileError(label, f"is not a valid bilinear SAE config ({error})") from error


def _check_metadata(cfg_dict: Mapping[str, Any], label: str) -> None:
    metadata = cfg_dict.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise WeightFileError(label, f"'metadata' must be a JSON object, got {type(metadata).__name__}")


def expected_shapes(cfg: BilinearSAEConfig) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a bilinear SAE's weight file."""
    shapes: dict[str, tuple[int, ...]] = {"W_left": (cfg.d_sae, cfg.d_in), "W_right": (cfg.d_sae, cfg.d_in)}
    if cfg.lifted:
        shapes["b_left"] = (cfg.d_sae,)
        shapes["b_right"] = (cfg.d_sae,)
    if kernels.is_mixed(cfg.variant):
        assert cfg.bottleneck is not None  # filled by the config's validation
        shapes["W_down"] = (cfg.bottleneck, cfg.d_sae)
    return shapes


def apply_overrides(cfg_dict: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``cfg_dict`` with ``overrides`` on top (``metadata`` merged key by key)."""
    result = dict(cfg_dict)
    for key, value in (overrides or {}).items():
        if key == "metadata" and isinstance(value, Mapping):
            result["metadata"] = {**(result.get("metadata") or {}), **value}
        else:
            result[key] = value
    return result


def read_sae_lens_components(
    cfg_path: Path,
    weights_path: Path,
    *,
    cfg_label: str,
    weights_label: str,
    device: str,
    cfg_overrides: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Validated config dict and state dict of a bilinear SAE in SAELens's layout."""
    cfg_dict = apply_overrides(read_json(cfg_path, cfg_label), cfg_overrides)
    parse_device(device)
    cfg_dict["device"] = device
    cfg = check_bilinear_cfg(cfg_dict, cfg_label)
    dtype = dtype_of(cfg.dtype, cfg_label)
    state_dict = read_tensors(weights_path, weights_label, expected_shapes(cfg), dtype, device)
    return cfg_dict, state_dict


def read_sparsity(path: Path | None, label: str, d_sae: int, device: str) -> torch.Tensor | None:
    """The log-sparsity tensor [d_sae] of ``path`` (None when there is no file), validated."""
    if path is None:
        return None
    return read_tensors(path, label, {"sparsity": (d_sae,)}, torch.float32, device)["sparsity"]


def build_sae(cfg_dict: dict[str, Any], state_dict: dict[str, torch.Tensor]) -> BilinearSAE:
    """A :class:`BilinearSAE` from a validated config dict and state dict."""
    cfg = BilinearSAEConfig.from_dict(cfg_dict)
    device, cfg.device = cfg.device, "meta"  # as SAELens does: no throw-away initialisation
    sae = BilinearSAE(cfg)
    sae.cfg.device = device
    sae.load_state_dict(state_dict, assign=True)
    return sae.to(device=device, dtype=str_to_dtype(cfg.dtype))


# --------------------------------------------------------------------------- Hub downloads


def download(repo_id: str, filename: str, force_download: bool, revision: str | None = None) -> Path:
    """``hf_hub_download`` whose failures name ``repo_id/filename``."""
    try:
        return Path(
            hf_hub_download(repo_id=repo_id, filename=filename, revision=revision, force_download=force_download)
        )
    except LocalEntryNotFoundError as error:
        raise MissingWeightFileError(
            f"{repo_id}/{filename}",
            "is not in the local Hugging Face cache and the Hub cannot be reached (offline mode or no network)",
        ) from error
    except EntryNotFoundError as error:
        raise MissingWeightFileError(f"{repo_id}/{filename}", "not found in the Hub repository") from error


def download_optional(repo_id: str, filename: str, force_download: bool) -> Path | None:
    """:func:`download`, or None when the repository has no such file."""
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, force_download=force_download))
    except EntryNotFoundError:  # remote 404, or absent from the cache when offline
        return None


# --------------------------------------------------------------------------- loaders


def bilinear_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
    """SAELens ``PretrainedSaeHuggingfaceLoader`` for bilinear SAEs in SAELens's layout, validated.

    Like SAELens's default loader, but the config is checked (architecture, format version,
    fields) before the weights are downloaded, and the weights (names, shapes, dtypes,
    finiteness) before anything is returned; failures raise :class:`WeightFileError`.
    """
    cfg_path = download(repo_id, f"{folder_name}/{SAE_CFG_FILENAME}", force_download)
    cfg_label = f"{repo_id}/{folder_name}/{SAE_CFG_FILENAME}"
    cfg = check_bilinear_cfg(apply_overrides(read_json(cfg_path, cfg_label), cfg_overrides), cfg_label)
    weights_path = download(repo_id, f"{folder_name}/{SAE_WEIGHTS_FILENAME}", force_download)
    cfg_dict, state_dict = read_sae_lens_components(
        cfg_path,
        weights_path,
        cfg_label=cfg_label,
        weights_label=f"{repo_id}/{folder_name}/{SAE_WEIGHTS_FILENAME}",
        device=device,
        cfg_overrides=cfg_overrides,
    )
    sparsity_path = download_optional(repo_id, f"{folder_name}/{SPARSITY_FILENAME}", force_download)
    log_sparsity = read_sparsity(sparsity_path, f"{repo_id}/{folder_name}/{SPARSITY_FILENAME}", cfg.d_sae, device)
    return cfg_dict, state_dict, log_sparsity


def bilinear_disk_loader(
    path: str | os.PathLike[str], device: str = "cpu", cfg_overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """SAELens ``PretrainedSaeDiskLoader`` for a local bilinear SAE folder, validated."""
    folder = _sae_folder(path)
    return read_sae_lens_components(
        folder / SAE_CFG_FILENAME,
        folder / SAE_WEIGHTS_FILENAME,
        cfg_label=str(folder / SAE_CFG_FILENAME),
        weights_label=str(folder / SAE_WEIGHTS_FILENAME),
        device=device,
        cfg_overrides=cfg_overrides,
    )


def _sae_folder(path: str | os.PathLike[str]) -> Path:
    folder = Path(path)
    if folder.is_file() and folder.name == SAE_CFG_FILENAME:
        raise MissingWeightFileError(folder, f"is a file; pass the SAE folder that holds it ({folder.parent})")
    if not folder.exists():
        raise MissingWeightFileError(folder, f"not found (expected a SAELens SAE folder with {SAE_CFG_FILENAME})")
    if not folder.is_dir():
        raise MissingWeightFileError(folder, f"is not a folder (expected a SAELens SAE folder with {SAE_CFG_FILENAME})")
    return folder


def load_from_disk(path: str | os.PathLike[str], device: str = "cpu", dtype: str | None = None) -> BilinearSAE:
    """``SAE.load_from_disk`` with validation: a bad folder raises :class:`WeightFileError`."""
    if dtype is not None:
        check_dtype(dtype)
    sae = SAE.load_from_disk(Path(path), device=device, dtype=dtype, converter=bilinear_disk_loader)
    assert isinstance(sae, BilinearSAE)
    return sae


def _check_state_dict(sae: SAE[Any], state_dict: Mapping[str, torch.Tensor], label: str, cfg_label: str) -> None:
    """The tensors are exactly the ones the SAE built from the config has, with its shapes."""
    wanted = {name: tuple(tensor.shape) for name, tensor in sae.state_dict().items()}
    missing = sorted(set(wanted) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(wanted))
    if missing or unexpected:
        raise WeightFileError(
            label,
            f"has missing tensor(s) {missing} and unexpected tensor(s) {unexpected} for the SAE {cfg_label} "
            f"describes (it expects {sorted(wanted)})",
        )
    for name, shape in wanted.items():
        got = tuple(state_dict[name].shape)
        if got != shape:
            raise WeightFileError(label, f"tensor {name!r} has shape {list(got)}, {cfg_label} expects {list(shape)}")


def _any_config(folder: Path, device: str, dtype: str | None) -> tuple[dict[str, Any], SAEConfig, SAE[Any]]:
    """The validated config dict and config of any registered architecture, and its SAE on ``meta``."""
    cfg_label = str(folder / SAE_CFG_FILENAME)
    cfg_dict = read_json(folder / SAE_CFG_FILENAME, cfg_label)
    if dtype is not None:
        cfg_dict["dtype"] = dtype
    cfg_dict["device"] = device
    architecture = cfg_dict.get("architecture", "standard")  # SAELens's default for old files
    if not isinstance(architecture, str) or architecture not in SAE_CLASS_REGISTRY:
        raise WeightFileError(
            cfg_label,
            f"architecture {architecture!r} is not one SAELens knows ({', '.join(sorted(SAE_CLASS_REGISTRY))})",
        )
    sae_class = SAE_CLASS_REGISTRY[architecture][0]
    _check_metadata(cfg_dict, cfg_label)
    try:
        cfg_dict = handle_config_defaulting(cfg_dict)
        cfg = SAEConfig.from_dict(cfg_dict)
        dtype_of(cfg.dtype, cfg_label)
        cfg.device = "meta"  # as SAELens does: no throw-away initialisation
        sae = sae_class(cfg)
    except WeightFileError:
        raise
    except Exception as error:  # the config class or the SAE refused a value
        raise WeightFileError(cfg_label, f"is not a valid {architecture!r} SAE config ({error})") from error
    sae.cfg.device = device
    return cfg_dict, cfg, sae


def load_any_from_disk(path: str | os.PathLike[str], device: str = "cpu", dtype: str | None = None) -> SAE[Any]:
    """Load any SAELens SAE folder (bilinear, standard, topk, ...) with validation.

    Bilinear SAEs go through :func:`load_from_disk`. Others are built as SAELens's
    ``SAE.load_from_disk`` builds them (SAELens's own tensor reader included, so its
    conventions apply), with checks between the steps. A missing, damaged or inconsistent
    ``cfg.json`` or ``sae_weights.safetensors``, non-floating-point tensors and NaN/inf
    weights raise :class:`WeightFileError` naming the file (and tensor); a bad ``device``
    or ``dtype`` argument raises :class:`~sae_bilinear.errors.ConfigError`.
    """
    folder = _sae_folder(path)
    parse_device(device)
    if dtype is not None:
        check_dtype(dtype)
    cfg_label, weights_label = str(folder / SAE_CFG_FILENAME), str(folder / SAE_WEIGHTS_FILENAME)
    if read_json(folder / SAE_CFG_FILENAME, cfg_label).get("architecture") == ARCHITECTURE:
        return load_from_disk(folder, device=device, dtype=dtype)
    cfg_dict, cfg, sae = _any_config(folder, device, dtype)
    check_all_tensors(folder / SAE_WEIGHTS_FILENAME, weights_label)
    try:
        _, state_dict = read_sae_components_from_disk(
            cfg_dict, folder / SAE_WEIGHTS_FILENAME, device=device, dtype=str_to_dtype(cfg.dtype)
        )
    except (ValueError, KeyError) as error:  # e.g. a scaling_factor the config does not allow
        raise WeightFileError(weights_label, f"does not match {cfg_label} ({error})") from error
    sae.process_state_dict_for_loading(state_dict)
    _check_state_dict(sae, state_dict, weights_label, cfg_label)
    sae.load_state_dict(state_dict, assign=True)
    return sae.to(dtype=str_to_dtype(cfg.dtype), device=device)
