"""The authors' checkpoints (``tdooms/<model>-scope``): folder names, a SAELens loader, and
conversion of a local one into SAELens's layout.

Their folders are named ``{kind}-l{layer:02d}-x{expansion}-a{int(100α)}-b{int(100β)}[-tags]``
and hold ``config.json`` and ``model.safetensors`` (``left``, ``right`` [F, d], ``down``
[b, F]; biased checkpoints ``left.weight``/``left.bias``/...). Their ``layer`` is the input of
decoder layer ``layer`` (``model.model.layers[layer]``), i.e. TransformerLens's
``blocks.{layer}.hook_resid_pre``; their inputs are ``x/||x||``, as ours.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens import __version__ as SAE_LENS_VERSION

from sae_bilinear import kernels
from sae_bilinear.bilinear import ARCHITECTURE, FORMAT_VERSION
from sae_bilinear.checks import parse_device
from sae_bilinear.errors import ConfigError, OutputExistsError
from sae_bilinear.hub.files import (
    FLOAT_DTYPES,
    MissingWeightFileError,
    WeightFileError,
    apply_overrides,
    bilinear_disk_loader,
    build_sae,
    check_bilinear_cfg,
    check_dtype,
    download,
    dtype_of,
    read_json,
    read_tensors,
    tensor_header,
)

__all__ = [
    "BAE_CONFIG_FILENAME",
    "BAE_MODELS",
    "BAE_WEIGHTS_FILENAME",
    "BaeName",
    "bae_loader",
    "bae_name",
    "convert_bae",
    "parse_bae_name",
]

BAE_CONFIG_FILENAME = "config.json"
BAE_WEIGHTS_FILENAME = "model.safetensors"

# --------------------------------------------------------------------------- names


@dataclass(frozen=True)
class BaeName:
    """Parts of an authors' folder name ``{kind}-l{layer:02d}-x{expansion}-a{A}-b{B}[-{tags}]``.

    ``alpha_code``/``beta_code`` are the integers in the name, ``int(100·α)``: Python's
    ``int`` truncates, so ``a28`` is written for α = 0.29 as well as 0.28 (0.29·100 =
    28.999…). ``alpha``/``beta`` are ``code/100``, a lower bound on the true value; the
    exact α is in the folder's ``config.json``. ``tags`` are the ``-``-separated parts
    after ``b…`` (a tag that itself contains ``-`` comes back split; :attr:`folder` joins
    them again).
    """

    kind: str
    """The autoencoder kind (``vanilla``, ``ordered``, ``mixed``, ``combined``, ``rainbow``, ``biased``)."""
    layer: int
    """Their layer index: the input of decoder layer ``layer``."""
    expansion: int | float
    """Latents per input dimension."""
    alpha_code: int
    """``int(100·α)`` as written in the name."""
    beta_code: int
    """``int(100·β)`` as written in the name."""
    tags: tuple[str, ...] = ()
    """The ``-``-separated parts after ``b…``."""

    @property
    def alpha(self) -> float:
        return self.alpha_code / 100

    @property
    def beta(self) -> float:
        return self.beta_code / 100

    @property
    def hook_name(self) -> str:
        """TransformerLens hook of the authors' ``layer``: the input of block ``layer``."""
        return f"blocks.{self.layer}.hook_resid_pre"

    @property
    def folder(self) -> str:
        """The folder name again (``parse_bae_name(n).folder == n`` for zero-padded names)."""
        parts = [self.kind, f"l{self.layer:02d}", f"x{self.expansion}", f"a{self.alpha_code}", f"b{self.beta_code}"]
        return "-".join([*parts, *self.tags])


_BAE_NAME = re.compile(
    r"^(?P<kind>[A-Za-z][A-Za-z0-9_]*)-l(?P<layer>\d+)-x(?P<expansion>\d+(?:\.\d+)?)"
    r"-a(?P<alpha>\d+)-b(?P<beta>\d+)(?:-(?P<tags>.+))?$"
)


def parse_bae_name(folder_name: str) -> BaeName:
    """Parse an authors' folder name (a trailing ``/`` or leading path is ignored)."""
    name = folder_name.rstrip("/").rsplit("/", 1)[-1]
    match = _BAE_NAME.match(name)
    if match is None:
        raise ConfigError(
            f"{folder_name!r} is not an authors' folder name of the form "
            "'{kind}-l{layer:02d}-x{expansion}-a{int(alpha*100)}-b{int(beta*100)}[-{tags}]', "
            "e.g. 'mixed-l18-x16-a100-b0'"
        )
    expansion_text = match["expansion"]
    expansion: int | float = float(expansion_text) if "." in expansion_text else int(expansion_text)
    tags = tuple(match["tags"].split("-")) if match["tags"] else ()
    if any(not tag for tag in tags):
        raise ConfigError(f"{folder_name!r} has an empty tag")
    return BaeName(match["kind"], int(match["layer"]), expansion, int(match["alpha"]), int(match["beta"]), tags)


def bae_name(
    kind: str,
    layer: int,
    expansion: int | float = 16,
    alpha: float = 0.0,
    beta: float = 0.0,
    tags: Iterable[str] = (),
) -> str:
    """The authors' folder name, computed exactly as their ``Config.name`` does
    (``int(alpha*100)`` truncation included: ``bae_name("mixed", 18, 16, 0.29)`` → ``…-a28-b0``)."""
    if not isinstance(kind, str) or not kind or "-" in kind:
        raise ConfigError(f"kind must be a non-empty name without '-', got {kind!r}")
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ConfigError(f"layer must be a non-negative int, got {layer!r}")
    for key, value in (("expansion", expansion), ("alpha", alpha), ("beta", beta)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ConfigError(f"{key} must be a finite non-negative number, got {value!r}")
    tags = list(tags)
    if any(not isinstance(tag, str) or not tag for tag in tags):
        raise ConfigError(f"tags must be non-empty strings, got {tags!r}")
    return "-".join([kind, f"l{layer:02d}", f"x{expansion}", f"a{int(alpha * 100)}", f"b{int(beta * 100)}", *tags])


# --------------------------------------------------------------------------- config.json

_BAE_KINDS: dict[str, tuple[str, bool | None]] = {
    # kind in config.json → (our variant, lifted: True = must be biased, None = from the tensors)
    "vanilla": ("vanilla", None),
    "ordered": ("ordered", None),
    "mixed": ("mixed", None),
    "combined": ("combined", None),
    "rainbow": ("combined", None),  # legacy name of combined in their sweeps
    "biased": ("vanilla", True),  # nn.Linear encoder with biases: our lifted vanilla
}
BAE_MODELS = {
    # their lower-cased base-model names → Hugging Face ids (TransformerLens knows these too)
    "qwen3-0.6b-base": "Qwen/Qwen3-0.6B-Base",
    "qwen3-0.6b": "Qwen/Qwen3-0.6B",
    "qwen3-1.7b-base": "Qwen/Qwen3-1.7B-Base",
    "gemma-3-270m": "google/gemma-3-270m",
    "simplestories-35m": "SimpleStories/SimpleStories-35M",
}
"""The authors' base-model names (lower case) → Hugging Face model ids."""


def _bae_base_model(raw: Mapping[str, Any], repo_id: str | None) -> str | None:
    base = raw.get("base")
    if not isinstance(base, str) or not base:
        base = None
        if repo_id is not None:
            name = repo_id.rsplit("/", 1)[-1]
            base = name[: -len("-scope")] if name.endswith("-scope") else None
    if base is None:
        return None
    return BAE_MODELS.get(base.lower().rsplit("/", 1)[-1], base)


@dataclass(frozen=True)
class _BaeConfigInfo:
    kind: str
    variant: str
    lifted: bool | None
    layer: int
    alpha: float
    beta: float
    tags: tuple[str, ...]
    raw: dict[str, Any]


def _bae_config_info(raw: dict[str, Any], label: str, folder_name: str | None) -> _BaeConfigInfo:
    try:
        parsed: BaeName | None = parse_bae_name(folder_name) if folder_name else None
    except ConfigError:
        parsed = None
    kind = raw.get("kind", parsed.kind if parsed else None)
    if not isinstance(kind, str) or kind not in _BAE_KINDS:
        raise WeightFileError(
            label, f"unknown autoencoder kind {kind!r}; sae-bilinear converts the kinds {sorted(_BAE_KINDS)}"
        )
    variant, lifted = _BAE_KINDS[kind]
    layer = raw.get("layer", parsed.layer if parsed else None)
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise WeightFileError(label, f"'layer' must be a non-negative int, got {layer!r}")
    numbers = {}
    for key in ("alpha", "beta"):
        value = raw.get(key, getattr(parsed, key) if parsed else 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise WeightFileError(label, f"{key!r} must be a number, got {value!r}")
        numbers[key] = float(value)
    tags = raw.get("tags", list(parsed.tags) if parsed else [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise WeightFileError(label, f"'tags' must be a list of strings, got {tags!r}")
    if parsed is not None and parsed.kind != kind:
        warnings.warn(
            f"{label}: kind {kind!r} in the config but {parsed.kind!r} in the folder name; using the config",
            stacklevel=3,
        )
    return _BaeConfigInfo(kind, variant, lifted, layer, numbers["alpha"], numbers["beta"], tuple(tags), raw)


# --------------------------------------------------------------------------- model.safetensors


def _tensor_names(info: _BaeConfigInfo, keys: set[str], label: str) -> dict[str, str]:
    """Our parameter name → their tensor name, checked against the kind."""
    down_key = next((key for key in ("down", "down.weight") if key in keys), None)
    core = keys - {down_key}
    if core == {"left", "right"}:
        names = {"W_left": "left", "W_right": "right"}
    elif core == {"left.weight", "left.bias", "right.weight", "right.bias"}:
        names = {"W_left": "left.weight", "b_left": "left.bias", "W_right": "right.weight", "b_right": "right.bias"}
    else:
        raise WeightFileError(
            label,
            f"holds tensors {sorted(keys)}; an authors' bilinear autoencoder has 'left', 'right' "
            "(or biased 'left.weight', 'left.bias', 'right.weight', 'right.bias') and, for mixed/combined, 'down'",
        )
    if info.lifted and "b_left" not in names:
        raise WeightFileError(label, f"kind {info.kind!r} needs biased tensors (left.bias, right.bias)")
    mixed = kernels.is_mixed(info.variant)
    if mixed and down_key is None:
        raise WeightFileError(label, f"kind {info.kind!r} needs a 'down' tensor [bottleneck, F]; it is missing")
    if not mixed and down_key is not None:
        raise WeightFileError(label, f"has a {down_key!r} tensor, which kind {info.kind!r} does not use")
    if down_key is not None:
        names["W_down"] = down_key
    return names


def _expected_bae_shapes(
    header: Mapping[str, tuple[tuple[int, ...], str]], names: Mapping[str, str], label: str
) -> tuple[dict[str, tuple[int, ...]], int, int, int | None]:
    """Their tensor name → shape implied by ``left`` (and ``down``); also d_sae, d_in, bottleneck."""
    left_shape = header[names["W_left"]][0]
    if len(left_shape) != 2 or 0 in left_shape:
        raise WeightFileError(label, f"tensor {names['W_left']!r} has shape {list(left_shape)}, expected [F, d]")
    d_sae, d_in = left_shape
    expected: dict[str, tuple[int, ...]] = {names["W_left"]: (d_sae, d_in), names["W_right"]: (d_sae, d_in)}
    if "b_left" in names:
        expected[names["b_left"]] = (d_sae,)
        expected[names["b_right"]] = (d_sae,)
    bottleneck = None
    if "W_down" in names:
        down_key = names["W_down"]
        down_shape = header[down_key][0]
        if len(down_shape) != 2 or down_shape[1] != d_sae or down_shape[0] == 0:
            raise WeightFileError(label, f"tensor {down_key!r} has shape {list(down_shape)}, expected [b, {d_sae}]")
        bottleneck = down_shape[0]
        expected[down_key] = (bottleneck, d_sae)
    return expected, d_sae, d_in, bottleneck


def _warn_disagreements(raw: Mapping[str, Any], d_in: int, d_sae: int, label: str) -> None:
    d_model, expansion = raw.get("d_model"), raw.get("expansion")
    if not isinstance(d_model, int) or d_model <= 0:
        return
    if d_model != d_in:
        warnings.warn(
            f"{label}: d_model={d_model} in config.json but the tensors have d={d_in}; using the tensors",
            stacklevel=4,
        )
    elif isinstance(expansion, (int, float)) and int(d_model * expansion) != d_sae:
        warnings.warn(
            f"{label}: expansion={expansion} in config.json but the tensors have F={d_sae}; using the tensors",
            stacklevel=4,
        )


def _metadata(info: _BaeConfigInfo, folder_name: str | None, repo_id: str | None) -> dict[str, Any]:
    raw = info.raw
    context = raw.get("n_ctx", 256)
    return {
        "sae_lens_version": SAE_LENS_VERSION,
        "sae_lens_training_version": None,
        "model_name": _bae_base_model(raw, repo_id),
        "model_class_name": "HookedTransformer",
        "hook_name": f"blocks.{info.layer}.hook_resid_pre",
        "hook_head_index": None,
        # Their data: fineweb-edu, HF tokenizer defaults (Qwen3 adds no BOS), 256-token contexts.
        "prepend_bos": False,
        "context_size": context if isinstance(context, int) and not isinstance(context, bool) else 256,
        "dataset_path": "HuggingFaceFW/fineweb-edu",
        "training_architecture_details": {"alpha": info.alpha, "beta": info.beta},
        "bae_source": {
            "repo_id": repo_id,
            "folder": folder_name,
            "kind": info.kind,
            "layer": info.layer,
            "expansion": raw.get("expansion"),
            "bottleneck_factor": raw.get("bottleneck"),
            "alpha": info.alpha,
            "beta": info.beta,
            "tags": list(info.tags),
        },
    }


def _bae_components(
    info: _BaeConfigInfo,
    weights_path: Path,
    *,
    weights_label: str,
    folder_name: str | None,
    repo_id: str | None,
    device: str,
    dtype: str | None,
    cfg_overrides: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Map an authors' checkpoint onto our config dict and state dict. Shapes come from the tensors."""
    header = tensor_header(weights_path, weights_label)
    names = _tensor_names(info, set(header), weights_label)
    expected, d_sae, d_in, bottleneck = _expected_bae_shapes(header, names, weights_label)
    _warn_disagreements(info.raw, d_in, d_sae, weights_label)

    dtype_name = dtype or FLOAT_DTYPES.get(header[names["W_left"]][1], "float32")
    tensors = read_tensors(weights_path, weights_label, expected, dtype_of(dtype_name, "dtype"), device)
    state_dict = {ours: tensors[theirs] for ours, theirs in names.items()}
    cfg_dict: dict[str, Any] = {
        "architecture": ARCHITECTURE,
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": dtype_name,
        "device": device,
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",  # they normalise each token to unit norm, as we do
        "reshape_activations": "none",
        "variant": info.variant,
        "lifted": "b_left" in names,
        "bottleneck": bottleneck,
        "sparsity": "hoyer",
        "k": None,
        "bilinear_format_version": FORMAT_VERSION,
        "metadata": _metadata(info, folder_name, repo_id),
    }
    cfg_dict = apply_overrides(cfg_dict, cfg_overrides)
    if cfg_dict.get("dtype") != dtype_name:  # a dtype override from SAELens: convert the tensors too
        target = dtype_of(cfg_dict["dtype"], "dtype")
        state_dict = {name: tensor.to(target) for name, tensor in state_dict.items()}
    check_bilinear_cfg(cfg_dict, weights_label)
    return cfg_dict, state_dict


# --------------------------------------------------------------------------- loader and converter


def bae_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
    """SAELens ``PretrainedSaeHuggingfaceLoader`` for the authors' checkpoints::

        SAE.from_pretrained("tdooms/qwen3-0.6b-base-scope", "mixed-l18-x16-a100-b0", converter=bae_loader)

    Downloads ``{folder}/config.json`` (validated first) and ``{folder}/model.safetensors``
    and maps them to a ``"bilinear"`` config (unlifted, or lifted for biased checkpoints;
    hook ``blocks.{layer}.hook_resid_pre``) and state dict. No log-sparsity file exists.
    """
    parse_device(device)
    config_label = f"{repo_id}/{folder_name}/{BAE_CONFIG_FILENAME}"
    config_path = download(repo_id, f"{folder_name}/{BAE_CONFIG_FILENAME}", force_download)
    info = _bae_config_info(read_json(config_path, config_label), config_label, folder_name)
    weights_path = download(repo_id, f"{folder_name}/{BAE_WEIGHTS_FILENAME}", force_download)
    overrides = dict(cfg_overrides or {})
    cfg_dict, state_dict = _bae_components(
        info,
        weights_path,
        weights_label=f"{repo_id}/{folder_name}/{BAE_WEIGHTS_FILENAME}",
        folder_name=folder_name,
        repo_id=repo_id,
        device=device,
        dtype=overrides.pop("dtype", None),
        cfg_overrides=overrides,
    )
    return cfg_dict, state_dict, None


def _check_destination(src: Path, dst: Path, overwrite: bool) -> None:
    """Refuse a destination that would overwrite the source or the user's files."""
    source, target = src.resolve(), dst.resolve()
    if target == source or source in target.parents:
        raise ConfigError(f"dst_dir {dst} is src_dir {src} or inside it; choose a folder outside the authors' folder")
    if target in source.parents:
        raise ConfigError(f"dst_dir {dst} contains src_dir {src}; replacing it would delete the source")
    if dst.exists() and not dst.is_dir():
        raise OutputExistsError(f"{dst} exists and is not a folder; remove it or choose another dst_dir")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise OutputExistsError(f"{dst} is not empty; pass overwrite=True (--overwrite) to replace the whole folder")


def replace_folder(staging: Path, dst: Path) -> None:
    """Move the finished ``staging`` folder to ``dst``, replacing any old ``dst`` as a whole.

    Both renames stay on one file system (``staging`` is beside ``dst``), so each is atomic;
    if the second fails the old folder is put back.
    """
    if not dst.exists():
        os.replace(staging, dst)
        return
    holder = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
    old = holder / "previous"
    os.replace(dst, old)
    try:
        os.replace(staging, dst)
    except BaseException:
        os.replace(old, dst)
        holder.rmdir()
        raise
    shutil.rmtree(holder, ignore_errors=True)


def convert_bae(
    src_dir: str | os.PathLike[str],
    dst_dir: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    dtype: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Turn a local folder in the authors' layout into a SAELens folder for ``SAE.load_from_disk``.

    Args:
        src_dir: folder with ``config.json`` and ``model.safetensors``.
        dst_dir: output folder (``cfg.json`` + ``sae_weights.safetensors``); must not exist
            or be empty unless ``overwrite``, and must be neither ``src_dir``, inside it, nor
            a folder holding it.
        model_name: base model recorded in the metadata (default: from their config's
            ``base``, e.g. ``qwen3-0.6b-base`` → ``Qwen/Qwen3-0.6B-Base``).
        dtype: dtype of the written weights (default: as stored).
        overwrite: replace a non-empty ``dst_dir`` as a whole (nothing of the old folder stays).

    Everything is validated first and written to a temporary folder beside ``dst_dir``,
    renamed into place only once it reads back; a failure leaves ``dst_dir`` as it was.
    Returns ``dst_dir``.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    if dtype is not None:
        check_dtype(dtype)
    if not src.is_dir():
        raise MissingWeightFileError(src, "is not a folder (expected one holding config.json and model.safetensors)")
    _check_destination(src, dst, overwrite)
    config_label = str(src / BAE_CONFIG_FILENAME)
    info = _bae_config_info(read_json(src / BAE_CONFIG_FILENAME, config_label), config_label, src.resolve().name)
    cfg_dict, state_dict = _bae_components(
        info,
        src / BAE_WEIGHTS_FILENAME,
        weights_label=str(src / BAE_WEIGHTS_FILENAME),
        folder_name=src.resolve().name,
        repo_id=None,
        device="cpu",
        dtype=dtype,
        cfg_overrides={"metadata": {"model_name": model_name}} if model_name else None,
    )
    sae = build_sae(cfg_dict, state_dict)
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.converting-", dir=dst.parent))
    try:
        sae.save_model(staging)
        bilinear_disk_loader(staging)  # what was written reads back
        replace_folder(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dst
