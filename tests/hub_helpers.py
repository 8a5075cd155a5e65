"""Shared builders for the Hub tests: tiny SAEs, authors'-layout folders, a hand-built HF
cache, damaged files, and the stand-in Hub fixture. Imported by the test modules (pytest's
default import mode puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from conftest import no_network as no_network  # re-exported: the hub tests import it from here
from hub_server import StandInHub, git_blob_sha1, redirect_hub
from safetensors.torch import load_file, save_file

from sae_bilinear import BilinearSAE, BilinearSAEConfig, hub

AUTHORS_REPO = "tdooms/qwen3-0.6b-base-scope"
AUTHORS_RELEASE = "qwen3-0.6b-base-bae-scope"
UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing must be sent in offline tests


# --------------------------------------------------------------------------- fixtures and helpers


def refuse_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights are safetensors only: any torch.load from here on fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load (pickle) must never be called by sae_bilinear.hub")

    monkeypatch.setattr(torch, "load", refuse)


def stand_in_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[StandInHub]:
    """A stand-in Hub on 127.0.0.1, huggingface_hub pointed at it, a fresh cache; stopped
    after (the body of the test modules' ``stand_in`` fixture)."""
    with StandInHub() as server:
        redirect_hub(monkeypatch, server.url, tmp_path / "hf-cache")
        monkeypatch.delenv(hub.RELEASES_ENV, raising=False)
        yield server
        assert server.unhandled == [], f"requests the stand-in did not understand: {server.unhandled}"


def make_sae(variant="mixed", lifted=True, d_in=8, d_sae=24, bottleneck=6, seed=0, alpha=0.3) -> BilinearSAE:
    cfg = BilinearSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        variant=variant,
        lifted=lifted,
        bottleneck=bottleneck if variant in ("mixed", "combined") else None,
    )
    cfg.metadata.model_name = "Qwen/Qwen3-0.6B-Base"
    cfg.metadata.hook_name = "blocks.18.hook_resid_pre"
    cfg.metadata.training_architecture_details = {"alpha": alpha}
    sae = BilinearSAE(cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)
    return sae


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card[4 : card.index("\n---", 4)])


def card_table(card: str, heading: str) -> list[str]:
    """The rows (lines starting "| `") of the card's table under ``heading`` (e.g. "## SAEs")."""
    lines = card.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("## ") or line.startswith("<!--"):
            break
        if line.startswith("| `"):
            rows.append(line)
    return rows


def write_bae(
    folder: Path,
    kind="mixed",
    d=8,
    expansion=3,
    bottleneck=2,
    biased=False,
    alpha=0.29,
    layer=18,
    seed=0,
    extra_config=None,
    tensors=None,
) -> dict[str, torch.Tensor]:
    """An authors'-layout folder with random weights; returns the tensors."""
    generator = torch.Generator().manual_seed(seed)
    features = d * expansion
    if tensors is None:
        left, right = (torch.randn(features, d, generator=generator) for _ in range(2))
        tensors = {"left.weight": left, "right.weight": right} if biased else {"left": left, "right": right}
        if biased:
            tensors["left.bias"] = torch.randn(features, generator=generator)
            tensors["right.bias"] = torch.randn(features, generator=generator)
        if kind in ("mixed", "combined"):
            tensors["down"] = torch.randn(d * bottleneck, features, generator=generator)
    config = {  # what their Config (a transformers PretrainedConfig) dumps, abridged
        "layer": layer,
        "d_model": d,
        "n_ctx": 256,
        "expansion": expansion,
        "bottleneck": None,
        "alpha": alpha,
        "beta": 0.0,
        "warmup": 256,
        "kind": kind,
        "tags": [],
        "base": "qwen3-0.6b-base",
        "transformers_version": "4.56.0",
        "return_dict": True,
        "kwargs": {},
    }
    config.update(extra_config or {})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return tensors


def naive_latents(x: torch.Tensor, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The authors' encoder, in float64: u = x/||x||, f = (left·u [+ b]) * (right·u [+ b])."""
    u = x.double() / x.double().norm(dim=-1, keepdim=True)
    if "left" in tensors:
        return (u @ tensors["left"].double().T) * (u @ tensors["right"].double().T)
    left = u @ tensors["left.weight"].double().T + tensors["left.bias"].double()
    right = u @ tensors["right.weight"].double().T + tensors["right.bias"].double()
    return left * right


def folder_files(folder: Path, prefix: str) -> dict[str, bytes]:
    return {f"{prefix}/{p.name}": p.read_bytes() for p in folder.iterdir() if p.is_file()}


def write_releases(path: Path, release: str, repo_id: str, ids: list[str], conversion_func=None) -> Path:
    entry = {"repo_id": repo_id, "model": "Qwen/Qwen3-0.6B-Base", "saes": [{"id": i, "path": i} for i in ids]}
    if conversion_func:
        entry["conversion_func"] = conversion_func
    path.write_text(yaml.safe_dump({release: entry}))
    return path


def build_cache(cache: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """The standard HF cache layout: blobs/<etag>, snapshots/<commit>/<path> -> blob, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo_id.replace("/", "--"))
    for path, data in files.items():
        blob = root / "blobs" / git_blob_sha1(data)
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        pointer = root / "snapshots" / commit / path
        pointer.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return commit


def saelens_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "sae"
    make_sae("mixed", True).save_model(folder)
    return folder


def edit_cfg(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(changes)
    (folder / "cfg.json").write_text(json.dumps(cfg))


def edit_weights(folder: Path, edit) -> None:
    tensors = load_file(str(folder / "sae_weights.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "sae_weights.safetensors"))


def truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
