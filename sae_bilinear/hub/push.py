"""Push bilinear SAEs to the Hugging Face Hub, one folder each, and keep the repo's card.

SAELens's layout is kept (``{path_in_repo}/cfg.json``, ``sae_weights.safetensors``, optional
``sparsity.safetensors`` and ``metrics.json``), so ``SAE.from_pretrained(repo_id, folder)``
reads it back once ``sae_bilinear`` is imported. Everything is validated locally before
anything is sent.
"""

from __future__ import annotations

import json
import re
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi
from sae_lens import SAE, upload_saes_to_huggingface
from sae_lens.constants import SAE_CFG_FILENAME, SPARSITY_FILENAME
from sae_lens.saes.sae import TrainingSAE

from sae_bilinear.bilinear import ARCHITECTURE
from sae_bilinear.errors import ConfigError
from sae_bilinear.hub.card import README_FILENAME, card_rows, jsonable, model_card, summary
from sae_bilinear.hub.files import (
    MissingWeightFileError,
    WeightFileError,
    bilinear_disk_loader,
    download,
    read_json,
    read_sparsity,
)

__all__ = ["METRICS_FILENAME", "PushResult", "push", "push_many"]

METRICS_FILENAME = "metrics.json"
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
    return folder, cfg_dict


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
        metrics: ``{path_in_repo: {name: value}}``, merged over each folder's ``metrics.json``;
            uploaded as ``{path_in_repo}/metrics.json`` and shown in the card.
        revision: branch to push to.
        update_card: write/refresh ``README.md``; it lists every SAE folder of the repo,
            keeps text outside its generated block and existing front-matter keys.

    Everything is validated locally before anything is sent. The SAE folders are uploaded
    by SAELens's ``upload_saes_to_huggingface``; card and metrics follow in one commit.
    """
    items = list(saes.items()) if isinstance(saes, Mapping) else [(None, ref) for ref in saes]
    if not items:
        raise ConfigError("no SAEs to push")
    with tempfile.TemporaryDirectory(prefix="sae-bilinear-push-") as tmp:
        staged: dict[str, Path] = {}
        rows: dict[str, dict[str, Any]] = {}
        uploads: list[CommitOperationAdd] = []
        for index, (sae_id, ref) in enumerate(items):
            folder, cfg_dict = _stage(ref, Path(tmp), index)
            if sae_id is None:
                sae_id = _default_sae_id(cfg_dict) if isinstance(ref, SAE) else Path(ref).resolve().name
            sae_id = _check_sae_id(str(sae_id))
            if sae_id in staged:
                raise ConfigError(f"two SAEs would be pushed to the same folder {sae_id!r}")
            run_metrics: dict[str, Any] = {}
            if (folder / METRICS_FILENAME).is_file():
                run_metrics = read_json(folder / METRICS_FILENAME, str(folder / METRICS_FILENAME))
            run_metrics.update(jsonable(dict((metrics or {}).get(sae_id) or {})))
            if run_metrics:
                payload = json.dumps(jsonable(run_metrics), indent=2, sort_keys=True).encode()
                uploads.append(CommitOperationAdd(f"{sae_id}/{METRICS_FILENAME}", payload))
            staged[sae_id] = folder
            rows[sae_id] = summary(cfg_dict, run_metrics)
        unknown = set(metrics or {}) - set(staged)
        if unknown:
            raise ConfigError(f"metrics given for SAEs that are not pushed: {sorted(unknown)}")

        api = HfApi()
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        card_text = None
        if update_card:
            card_text = _updated_card(api, repo_id, revision, rows)
        upload_saes_to_huggingface(
            {sae_id: folder for sae_id, folder in staged.items()},
            hf_repo_id=repo_id,
            hf_revision=revision,
            show_progress=False,
            add_default_readme=False,
        )
        if card_text is not None:
            uploads.append(CommitOperationAdd(README_FILENAME, card_text.encode()))
        if uploads:
            api.create_commit(
                repo_id,
                uploads,
                commit_message=f"sae-bilinear: model card and metrics for {', '.join(staged)}",
                revision=revision,
            )
    return PushResult(repo_id, tuple(staged), str(repo_url).rstrip("/"), revision, update_card)


def _updated_card(api: HfApi, repo_id: str, revision: str, new_rows: Mapping[str, dict[str, Any]]) -> str:
    """The card after this push: rows of the existing card's index for folders still in
    the repo, rows read from ``cfg.json`` for folders it does not list, and ``new_rows``."""
    files = set(api.list_repo_files(repo_id, revision=revision))
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
