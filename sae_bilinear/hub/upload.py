"""Push bilinear SAEs to the Hugging Face Hub, one folder each, and keep the repo's card.

SAELens's layout is kept (``{path_in_repo}/cfg.json``, ``sae_weights.safetensors``, optional
``sparsity.safetensors`` and ``metrics.json``), so ``SAE.from_pretrained(repo_id, folder)``
reads it back once ``sae_bilinear`` is imported. Everything is validated locally before
anything is sent.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from sae_lens.constants import RUNNER_CFG_FILENAME, SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME, SPARSITY_FILENAME
from sae_lens.saes.sae import SAE, TrainingSAE

from sae_bilinear.bilinear import ARCHITECTURE
from sae_bilinear.errors import ConfigError, DataFileError, OfflineError, UserError
from sae_bilinear.evaluate import TRAINING_MEAN_FILENAME, load_training_mean
from sae_bilinear.hub.card import README_FILENAME, card_rows, jsonable, model_card, summary
from sae_bilinear.hub.files import (
    MissingWeightFileError,
    WeightFileError,
    bilinear_disk_loader,
    download,
    read_json,
    read_sparsity,
)

__all__ = ["METRICS_FILENAME", "PushResult", "push", "push_many", "run_metrics"]

METRICS_FILENAME = "metrics.json"
UPLOADED_FILES = (
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
    RUNNER_CFG_FILENAME,
    TRAINING_MEAN_FILENAME,
)
"""The files of an SAE folder that SAELens's ``upload_saes_to_huggingface`` sends, plus the training
mean (so ``evaluate`` of a downloaded SAE mean-ablates as its run did); we add ``metrics.json``."""
CommitOperation = CommitOperationAdd | CommitOperationDelete
_SAE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


@dataclass(frozen=True)
class PushResult:
    """What :func:`push`/:func:`push_many` uploaded; ``str()`` gives the folder's (or repo's) URL."""

    repo_id: str
    """The Hub repository pushed to."""
    paths_in_repo: tuple[str, ...]
    """The SAE folders written, in push order."""
    url: str
    """The repository's URL on the Hub."""
    revision: str = "main"
    """The branch pushed to."""
    card_updated: bool = True
    """Whether ``README.md`` was rewritten."""

    def __str__(self) -> str:
        if len(self.paths_in_repo) == 1:
            return f"{self.url}/tree/{self.revision}/{self.paths_in_repo[0]}"
        return self.url


# --------------------------------------------------------------------------- network errors


def _unreachable(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError)):  # OfflineModeIsEnabled is a ConnectionError
        return True
    # The HTTP client depends on the huggingface_hub version (requests, httpx, httpx2): match by name.
    return any(
        cls.__name__ in ("TransportError", "ConnectionError", "Timeout")
        and cls.__module__.startswith(("httpx", "requests", "urllib3"))
        for cls in type(error).__mro__
    )


@contextmanager
def _reaching_hub(repo_id: str) -> Iterator[None]:
    """Turn "no network", "offline mode" and "not allowed" into one-line user errors."""
    try:
        yield
    except UserError:
        raise
    except Exception as error:
        reason = " ".join(str(error).split())[:300]
        if isinstance(error, OfflineModeIsEnabled):
            raise OfflineError(
                f"cannot push to {repo_id}: HF_HUB_OFFLINE is set; unset it (and connect) to push"
            ) from error
        if _unreachable(error):
            raise OfflineError(
                f"cannot reach the Hugging Face Hub to push to {repo_id} ({type(error).__name__}: {reason}); "
                "check the network connection (and HF_ENDPOINT if set)"
            ) from error
        status = getattr(getattr(error, "response", None), "status_code", None)
        if isinstance(error, HfHubHTTPError) and status in (401, 403):
            raise UserError(
                f"the Hugging Face Hub refused to write {repo_id} (HTTP {status}); log in with `hf auth login` "
                "or set HF_TOKEN to a token with write access to that namespace"
            ) from error
        raise


# --------------------------------------------------------------------------- staging


def run_metrics(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The metrics a local SAE folder's run recorded, or ``{}``.

    The folder's own ``metrics.json`` if it has one. Otherwise the run's ``metrics.json``
    one folder up, as the main job writes it (``runs/<time>/sae/`` beside
    ``runs/<time>/metrics.json``): there the SAE's own block is the entry named like the
    folder if that is an object (e.g. ``baseline``), else the file's top-level values that
    are not objects or lists (the SAE's metrics, without the run's ``config``, the other
    SAEs' blocks and latent lists).
    """
    folder = Path(folder)
    own = folder / METRICS_FILENAME
    if own.is_file():
        return read_json(own, str(own))
    parent = folder.resolve().parent / METRICS_FILENAME
    if not parent.is_file():
        return {}
    run = read_json(parent, str(parent))
    block = run.get(folder.resolve().name)
    if isinstance(block, dict):
        return dict(block)
    return {key: value for key, value in run.items() if not isinstance(value, (dict, list))}


def _check_sae_id(sae_id: str) -> str:
    sae_id = sae_id.strip("/")
    if not _SAE_ID.match(sae_id) or any(part in (".", "..") for part in sae_id.split("/")):
        raise ConfigError(
            f"path_in_repo {sae_id!r} must be a folder name (letters, digits, '.', '_', '-', nested with '/')"
        )
    return sae_id


def _default_sae_id(cfg_dict: Mapping[str, Any]) -> str:
    metadata = cfg_dict.get("metadata") or {}
    parts = [metadata.get("hook_name") or "sae", str(cfg_dict.get("variant"))]
    if cfg_dict.get("lifted"):
        parts.append("lifted")
    parts.append(f"f{cfg_dict.get('d_sae')}")
    return re.sub(r"[^A-Za-z0-9._-]", "_", "-".join(parts))


def _stage(ref: Any, staging: Path, index: int) -> tuple[Path, dict[str, Any]]:
    """A validated local SAELens folder for ``ref`` (an SAE or a folder) and its cfg dict."""
    if isinstance(ref, SAE):
        if ref.cfg.architecture() != ARCHITECTURE:
            raise ConfigError(f"push uploads bilinear SAEs; got architecture {ref.cfg.architecture()!r}")
        folder = staging / f"sae{index}"
        if isinstance(ref, TrainingSAE):
            ref.save_inference_model(folder)
        else:
            ref.save_model(folder)
    else:
        folder = Path(ref)
        if not folder.is_dir():
            raise MissingWeightFileError(folder, "is not a folder (expected a SAELens folder with cfg.json)")
    cfg_dict, _ = bilinear_disk_loader(folder)
    sparsity = folder / SPARSITY_FILENAME
    if sparsity.exists():
        read_sparsity(sparsity, str(sparsity), int(cfg_dict["d_sae"]), "cpu")
    mean = folder / TRAINING_MEAN_FILENAME
    if mean.exists():  # validated by evaluate's own reader: a damaged file is named before anything is sent
        try:
            load_training_mean(mean, int(cfg_dict["d_in"]))
        except DataFileError as error:  # push reports every bad file of the folder as a WeightFileError
            raise WeightFileError(mean, str(error).removeprefix(f"{mean}: ")) from error
    runner_cfg = folder / RUNNER_CFG_FILENAME
    if runner_cfg.exists():
        read_json(runner_cfg, str(runner_cfg))
    return folder, cfg_dict


@dataclass
class _Staged:
    """One SAE ready to send: its validated folder, its files and its card row."""

    folder: Path
    files: dict[str, Path | bytes]
    """Name in the SAE's folder of the repo → local file or content."""
    row: dict[str, Any]


def _staged_files(folder: Path, run_metrics: Mapping[str, Any]) -> dict[str, Path | bytes]:
    files: dict[str, Path | bytes] = {name: folder / name for name in UPLOADED_FILES if (folder / name).is_file()}
    if run_metrics:
        files[METRICS_FILENAME] = json.dumps(jsonable(dict(run_metrics)), indent=2, sort_keys=True).encode()
    return files


def _folder_operations(staged: Mapping[str, _Staged], remote: set[str]) -> list[CommitOperation]:
    """Adds for every staged file, and deletes for the files of the same folders that this push
    does not replace (an old ``sparsity.safetensors`` or ``metrics.json``), so that no folder
    ever mixes two SAEs. Files of nested folders (other SAEs) are left alone."""
    operations: list[CommitOperation] = []
    for sae_id, item in staged.items():
        paths = {f"{sae_id}/{name}" for name in item.files}
        stale = sorted(path for path in remote if path.rsplit("/", 1)[0] == sae_id and path not in paths)
        operations += [CommitOperationDelete(path) for path in stale]
        operations += [CommitOperationAdd(f"{sae_id}/{name}", data) for name, data in item.files.items()]
    return operations


def push_many(
    saes: Mapping[str, Any] | Iterable[Any],
    repo_id: str,
    *,
    private: bool = False,
    metrics: Mapping[str, Mapping[str, Any]] | None = None,
    revision: str = "main",
    update_card: bool = True,
) -> PushResult:
    """Push several bilinear SAEs (a sweep) into one Hub repo, one folder each, and update its card.

    Args:
        saes: ``{path_in_repo: SAE or folder}``, or SAEs/folders (a folder keeps its name,
            an SAE gets ``{hook}-{variant}[-lifted]-f{d_sae}``).
        repo_id: ``namespace/name``; created if missing (``private`` applies then only).
        metrics: ``{path_in_repo: {name: value}}``, merged over each folder's run metrics
            (see :func:`run_metrics`); uploaded as ``{path_in_repo}/metrics.json`` and shown
            in the card.
        revision: branch to push to.
        update_card: write/refresh ``README.md``; it lists every SAE folder of the repo,
            keeps text outside its generated block and existing front-matter keys.

    Everything is validated locally before anything is sent. Then one commit writes the
    SAE folders (the files SAELens's ``upload_saes_to_huggingface`` sends, plus
    ``metrics.json``), removes files of those folders that this push does not replace, and
    updates the card, so the repo never holds a half-pushed or mixed SAE. No network
    raises :class:`~sae_bilinear.errors.OfflineError`.
    """
    items = list(saes.items()) if isinstance(saes, Mapping) else [(None, ref) for ref in saes]
    if not items:
        raise ConfigError("no SAEs to push")
    with tempfile.TemporaryDirectory(prefix="sae-bilinear-push-") as tmp:
        staged: dict[str, _Staged] = {}
        for index, (sae_id, ref) in enumerate(items):
            folder, cfg_dict = _stage(ref, Path(tmp), index)
            if sae_id is None:
                sae_id = _default_sae_id(cfg_dict) if isinstance(ref, SAE) else Path(ref).resolve().name
            sae_id = _check_sae_id(str(sae_id))
            if sae_id in staged:
                raise ConfigError(f"two SAEs would be pushed to the same folder {sae_id!r}")
            own = {} if isinstance(ref, SAE) else run_metrics(folder)
            own.update(jsonable(dict((metrics or {}).get(sae_id) or {})))
            staged[sae_id] = _Staged(folder, _staged_files(folder, own), summary(cfg_dict, own))
        unknown = set(metrics or {}) - set(staged)
        if unknown:
            raise ConfigError(f"metrics given for SAEs that are not pushed: {sorted(unknown)}")

        api = HfApi()
        with _reaching_hub(repo_id):
            repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
            remote = set(api.list_repo_files(repo_id, revision=revision))
            operations = _folder_operations(staged, remote)
            if update_card:
                rows = {sae_id: item.row for sae_id, item in staged.items()}
                card = _updated_card(api, repo_id, revision, rows, remote)
                operations.append(CommitOperationAdd(README_FILENAME, card.encode()))
            api.create_commit(
                repo_id, operations, commit_message=f"sae-bilinear: push {', '.join(staged)}", revision=revision
            )
    return PushResult(repo_id, tuple(staged), str(repo_url).rstrip("/"), revision, update_card)


def _updated_card(
    api: HfApi, repo_id: str, revision: str, new_rows: Mapping[str, dict[str, Any]], files: set[str]
) -> str:
    """The card after this push: rows of the existing card's index for folders still in
    the repo (``files``, as before the push), rows read from ``cfg.json`` for folders it
    does not list, and ``new_rows``."""
    folders = {path.rsplit("/", 1)[0] for path in files if path.endswith(f"/{SAE_CFG_FILENAME}")}
    existing = None
    if README_FILENAME in files:
        existing = download(repo_id, README_FILENAME, force_download=False, revision=revision).read_text(
            encoding="utf-8"
        )
    known = card_rows(existing or "")
    rows = {sae_id: row for sae_id, row in known.items() if sae_id in folders and isinstance(row, dict)}
    for sae_id in sorted(folders - set(rows) - set(new_rows)):
        label = f"{repo_id}/{sae_id}/{SAE_CFG_FILENAME}"
        try:
            cfg_dict = read_json(download(repo_id, f"{sae_id}/{SAE_CFG_FILENAME}", False, revision), label)
            run_metrics = None
            if f"{sae_id}/{METRICS_FILENAME}" in files:
                path = download(repo_id, f"{sae_id}/{METRICS_FILENAME}", False, revision)
                run_metrics = read_json(path, f"{repo_id}/{sae_id}/{METRICS_FILENAME}")
        except WeightFileError as error:
            warnings.warn(f"model card: skipping {sae_id!r} ({error})", stacklevel=3)
            continue
        rows[sae_id] = summary(cfg_dict, run_metrics)
    rows.update(new_rows)
    return model_card(repo_id, rows, existing)


def push(
    sae_or_dir: Any,
    repo_id: str,
    path_in_repo: str | None = None,
    *,
    private: bool = False,
    metrics: Mapping[str, Any] | None = None,
    revision: str = "main",
    update_card: bool = True,
) -> PushResult:
    """Push one bilinear SAE (an SAE object or a SAELens folder) to ``repo_id/path_in_repo``.

    ``path_in_repo`` defaults to the folder's name (or ``{hook}-{variant}[-lifted]-f{d_sae}``
    for an SAE object). ``metrics`` are merged over the folder's ``metrics.json``. The repo's
    ``README.md`` is updated to list this SAE next to the ones already there. See :func:`push_many`.
    """
    if path_in_repo is None:
        if isinstance(sae_or_dir, SAE):
            path_in_repo = _default_sae_id(sae_or_dir.cfg.to_dict())
        else:
            path_in_repo = Path(sae_or_dir).resolve().name
    sae_id = _check_sae_id(path_in_repo)
    return push_many(
        {sae_id: sae_or_dir},
        repo_id,
        private=private,
        metrics={sae_id: metrics} if metrics else None,
        revision=revision,
        update_card=update_card,
    )
