"""Releases: SAEs by name, from ``hub_configs/releases.yaml``.

The file follows the schema of SAELens's ``pretrained_saes.yaml`` (release → ``repo_id``,
``model``, ``conversion_func``, ``saes: [{id, path, ...}]``). SAELens 6.54 offers plugins
no way to add releases, so :func:`from_pretrained` resolves the name here and then calls
SAELens's own loader with ours (:func:`~sae_bilinear.hub.files.bilinear_loader`, or
:func:`~sae_bilinear.hub.bae.bae_loader` for the authors' layout).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml
from sae_lens import SAE

from sae_bilinear.checks import parse_device
from sae_bilinear.errors import UserError
from sae_bilinear.hub.bae import bae_loader
from sae_bilinear.hub.files import (
    MissingWeightFileError,
    WeightFileError,
    apply_overrides,
    bilinear_loader,
    check_dtype,
)

__all__ = [
    "RELEASES_ENV",
    "Release",
    "ReleaseNotFoundError",
    "format_releases",
    "from_pretrained",
    "from_pretrained_with_cfg_and_sparsity",
    "list_releases",
    "load_releases",
    "releases_files",
]

RELEASES_ENV = "SAE_BILINEAR_RELEASES"
"""Extra release files (``os.pathsep``-separated) read after the packaged ones; later files win."""

RELEASE_COLUMNS = ("release", "sae_id", "repo_id", "path", "model", "hook", "format")
"""Keys of a :func:`list_releases` row, in display order."""


class ReleaseNotFoundError(UserError):
    """A release name or SAE id is not in ``hub_configs/``; the message lists what exists."""


@dataclass(frozen=True)
class Release:
    """One release of ``hub_configs/releases.yaml`` (SAELens ``pretrained_saes.yaml`` schema)."""

    name: str
    """The release's name, the key in the YAML file."""
    repo_id: str
    """The Hugging Face model repository holding its SAEs."""
    model: str
    """The model its SAEs were trained on."""
    conversion_func: str | None
    """``None``/``"sae_lens"`` for SAELens's layout, ``"bae"`` for the authors'."""
    saes: dict[str, dict[str, Any]]
    """SAE id → its entry (``path`` and optional ``hook``, ``l0``, ``neuronpedia``, ...)."""
    config_overrides: dict[str, Any] | None = None
    """Config values applied over every SAE's own."""
    links: dict[str, Any] | None = None
    """Links to show with the release (paper, code, ...)."""
    source: str = ""
    """The YAML file it came from."""


# --------------------------------------------------------------------------- release files


def releases_files() -> list[Path]:
    """Release files read by :func:`load_releases`, in order (later files win).

    The source checkout's ``hub_configs/releases.yaml`` if present, else the packaged copy
    (``sae_bilinear/hub_configs/releases.yaml`` in an installed wheel); then any files in
    the ``SAE_BILINEAR_RELEASES`` environment variable (``os.pathsep``-separated).
    """
    files: list[Path] = []
    root = Path(__file__).resolve().parents[2]  # sae_bilinear/hub/releases.py → the checkout
    checkout = root / "hub_configs" / "releases.yaml"
    if checkout.is_file() and (root / "pyproject.toml").is_file():
        files.append(checkout)
    else:
        files.extend(_packaged_releases())
    extra = os.environ.get(RELEASES_ENV, "")
    files.extend(Path(item) for item in extra.split(os.pathsep) if item)
    return files


def _packaged_releases() -> list[Path]:
    """``releases.yaml`` shipped inside an installed wheel (package ``sae_bilinear.hub_configs``)."""
    for package, parts in (
        ("sae_bilinear.hub_configs", ("releases.yaml",)),
        ("sae_bilinear", ("hub_configs", "releases.yaml")),
    ):
        try:
            candidate = resources.files(package).joinpath(*parts)
            if candidate.is_file():
                return [Path(str(candidate))]
        except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, TypeError):
            continue
    return []


def _read_yaml(path: Path) -> Any:
    label = str(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingWeightFileError(label, "release file not found") from None
    except (OSError, UnicodeDecodeError) as error:
        raise WeightFileError(label, f"is damaged: cannot be read as UTF-8 text ({error})") from error
    except yaml.YAMLError as error:
        raise WeightFileError(label, f"is not valid YAML ({' '.join(str(error).split())})") from error


def _parse_saes(label: str, name: str, entries: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(entries, list):
        raise WeightFileError(label, f"release {name!r}: 'saes' must be a list of {{id, path}} entries")
    saes: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or "id" not in entry or "path" not in entry:
            raise WeightFileError(label, f"every SAE of release {name!r} needs 'id' and 'path', got {entry!r}")
        sae_id = str(entry["id"])
        if sae_id in saes:
            raise WeightFileError(label, f"release {name!r} lists SAE id {sae_id!r} twice")
        saes[sae_id] = {**entry, "path": str(entry["path"])}
    return saes


def _parse_release(label: str, name: str, value: Any) -> Release:
    if not isinstance(value, dict):
        raise WeightFileError(label, f"release {name!r} must be a mapping")
    for key in ("repo_id", "model", "saes"):
        if key not in value:
            raise WeightFileError(label, f"release {name!r} has no {key!r}")
    for key in ("config_overrides", "links"):
        if value.get(key) is not None and not isinstance(value[key], dict):
            raise WeightFileError(label, f"release {name!r}: {key!r} must be a mapping")
    conversion = value.get("conversion_func")
    if conversion is not None and not isinstance(conversion, str):
        raise WeightFileError(label, f"release {name!r}: 'conversion_func' must be a name, got {conversion!r}")
    return Release(
        name=name,
        repo_id=str(value["repo_id"]),
        model=str(value["model"]),
        conversion_func=conversion,
        saes=_parse_saes(label, name, value["saes"] or []),
        config_overrides=value.get("config_overrides"),
        links=value.get("links"),
        source=label,
    )


def _parse_releases(path: Path) -> dict[str, Release]:
    data = _read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise WeightFileError(path, "expected a mapping of release names")
    return {str(name): _parse_release(str(path), str(name), value) for name, value in data.items()}


def load_releases(paths: Iterable[str | os.PathLike[str]] | None = None) -> dict[str, Release]:
    """Releases by name, read from ``paths`` (default :func:`releases_files`); later files win."""
    releases: dict[str, Release] = {}
    for path in releases_files() if paths is None else [Path(p) for p in paths]:
        releases.update(_parse_releases(Path(path)))
    return releases


# --------------------------------------------------------------------------- listing


def list_releases(paths: Iterable[str | os.PathLike[str]] | None = None) -> list[dict[str, Any]]:
    """One row per SAE of every release, for ``sae-bilinear releases``.

    Keys (:data:`RELEASE_COLUMNS`): ``release``, ``sae_id``, ``repo_id``, ``path``, ``model``,
    ``hook`` (or None), ``format`` (``"sae_lens"`` or ``"bae"``, the authors' layout).
    """
    rows = []
    for release in load_releases(paths).values():
        for sae_id, entry in release.saes.items():
            rows.append(
                {
                    "release": release.name,
                    "sae_id": sae_id,
                    "repo_id": release.repo_id,
                    "path": entry["path"],
                    "model": release.model,
                    "hook": entry.get("hook"),
                    "format": "bae" if release.conversion_func == "bae" else "sae_lens",
                }
            )
    return rows


def format_releases(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = RELEASE_COLUMNS) -> str:
    """``rows`` (from :func:`list_releases`) as a plain-text table: a header line, then one
    line per SAE, columns padded to their widest cell; ``-`` for a missing value."""
    cells = [[str(column).upper() for column in columns]]
    for row in rows:
        cells.append(["-" if row.get(column) is None else str(row.get(column)) for column in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in cells]
    if not rows:
        lines.append("(no releases; add some to hub_configs/releases.yaml or $" + RELEASES_ENV + ")")
    return "\n".join(lines)


# --------------------------------------------------------------------------- loading by name


_LOADERS = {None: bilinear_loader, "sae_lens": bilinear_loader, "sae_bilinear": bilinear_loader, "bae": bae_loader}


def _describe(names: Iterable[str], limit: int = 30) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "") if names else "(none)"


def _release_entry(release: str, sae_id: str) -> Release:
    releases = load_releases()
    if release not in releases:
        raise ReleaseNotFoundError(
            f"release {release!r} is not among sae-bilinear's releases ({_describe(releases)}; read from "
            f"{', '.join(map(str, releases_files())) or 'no release file'}). For a Hub repo that is not a release use "
            "`import sae_bilinear; SAE.from_pretrained(repo_id, folder)` "
            "(or converter=bae_loader for the authors' layout)."
        )
    entry = releases[release]
    if sae_id not in entry.saes:
        raise ReleaseNotFoundError(
            f"SAE id {sae_id!r} is not in release {release!r}; its ids are: {_describe(entry.saes)}"
        )
    return entry


def from_pretrained_with_cfg_and_sparsity(
    release: str,
    sae_id: str,
    device: str = "cpu",
    dtype: str = "float32",
    force_download: bool = False,
    converter: Any = None,
    fold_W_dec_norm: bool = False,
) -> tuple[SAE[Any], dict[str, Any], torch.Tensor | None]:
    """:func:`from_pretrained`, also returning the config dict and the log-sparsity (or None)."""
    parse_device(device)
    check_dtype(dtype)
    entry = _release_entry(release, sae_id)
    if converter is None:
        if entry.conversion_func not in _LOADERS:
            raise ReleaseNotFoundError(
                f"release {release!r} ({entry.source}) has conversion_func {entry.conversion_func!r}; "
                f"sae-bilinear knows {sorted(k for k in _LOADERS if k)}"
            )
        converter = _LOADERS[entry.conversion_func]
    release_overrides = dict(entry.config_overrides or {})

    def loader(
        repo_id: str, folder_name: str, device: str, force_download: bool, cfg_overrides: dict[str, Any] | None
    ) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
        merged = apply_overrides(release_overrides, cfg_overrides)
        return converter(
            repo_id=repo_id, folder_name=folder_name, device=device, force_download=force_download, cfg_overrides=merged
        )

    with warnings.catch_warnings():
        # Bilinear latents depend on x/||x|| only, so an activation-norm scaling factor is
        # irrelevant; SAELens warns that our release (unknown to it) lists none.
        warnings.filterwarnings("ignore", message="norm_scaling_factor not found")
        return SAE.from_pretrained_with_cfg_and_sparsity(
            entry.repo_id,
            entry.saes[sae_id]["path"],
            device=device,
            dtype=dtype,
            force_download=force_download,
            converter=loader,
            fold_W_dec_norm=fold_W_dec_norm,
        )


def from_pretrained(
    release: str,
    sae_id: str,
    device: str = "cpu",
    dtype: str = "float32",
    force_download: bool = False,
    converter: Any = None,
    fold_W_dec_norm: bool = False,
) -> SAE[Any]:
    """Load an SAE of a release in ``hub_configs/`` by name, with SAELens's signature.

    The release gives the Hub ``repo_id`` and the SAE's folder; SAELens's
    ``SAE.from_pretrained`` then downloads (or reads from the cache, also offline with
    ``HF_HUB_OFFLINE=1``) and builds it, through :func:`bilinear_loader` for our releases
    and :func:`bae_loader` for the authors' (``conversion_func: bae``). An unknown release
    or id raises :class:`ReleaseNotFoundError` listing what exists.
    """
    return from_pretrained_with_cfg_and_sparsity(
        release, sae_id, device, dtype, force_download, converter, fold_W_dec_norm
    )[0]
