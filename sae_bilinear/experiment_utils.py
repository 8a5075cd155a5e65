"""Shared helpers of the scripts in ``experiments/``: seeding, strict JSON, cached SmolLM2
activations, one bilinear training run, held-out metrics.

Not a stable public API: it serves those scripts (``python experiments/<script>.py``), which
import it as ``sae_bilinear.experiment_utils``. Each script passes its own folder, under which
its results (``results/<name>``) and the shared activation cache (``cache/``) are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from sae_bilinear import data, kernels, models
from sae_bilinear.bilinear import BilinearTrainingSAE, BilinearTrainingSAEConfig, default_alpha_warm_up_steps
from sae_bilinear.hub import load_any_from_disk
from sae_bilinear.plots import write_png
from sae_bilinear.train import TrainingSettings, collect_activations, train_on_activations
from sae_bilinear.values import finite_float, int_at_least

HOOK = "blocks.15.hook_resid_pre"
"""The embedded SmolLM2-135M's middle layer (30 blocks)."""
SEED_MAX = 2**32 - 1
"""The largest seed: :func:`setup` seeds numpy, whose ``np.random.seed`` takes 0 … 2³² − 1."""
seed_argument = int_at_least(0, SEED_MAX)
"""The argparse ``type=`` of every seed option of the scripts (0 … :data:`SEED_MAX`)."""
count_argument = int_at_least(1)
"""The argparse ``type=`` of a count (steps, tokens, contexts, latents, repeats): an integer ≥ 1."""
positive_argument = finite_float(0.0, strict=True)
"""The argparse ``type=`` of a learning rate or a scale: a finite number > 0."""
nonnegative_argument = finite_float(0.0)
"""The argparse ``type=`` of a loss weight such as α: a finite number ≥ 0."""


def load_script(path: Path, module_name: str) -> ModuleType:
    """The script at ``path`` (``experiments/``, ``benchmarks/`` and ``hooks/`` are not packages) as a
    fresh module, registered in ``sys.modules`` as ``module_name`` so that its dataclasses resolve
    their module. No ``sys.path`` edit: one script reaches another by its path."""
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def setup(seed: int = 0, threads: int = 1) -> None:
    """One torch thread (the machine is shared) and every RNG seeded."""
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def best_time(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of ``repeats`` runs of ``fn`` after one warm-up run (seconds)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def parser(docstring: str | None, name: str, folder: Path) -> argparse.ArgumentParser:
    """An argument parser with the flags every script shares: --out, --tiny, --seed, --cache.

    ``docstring`` is the script's ``__doc__``: its first paragraph describes the script.
    ``folder`` is the script's own folder: results default to ``folder/results/name``, the
    cache to ``folder/cache``, wherever the script is run from."""
    description = (docstring or "").split("\n\n")[0]
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=folder / "results" / name, help="folder for the JSON and PNG results")
    p.add_argument("--tiny", action="store_true", help="seconds-long smoke setting (tests); numbers are meaningless")
    p.add_argument(
        "--seed", type=seed_argument, default=0, help=f"seed of data order and initialisation (0 … {SEED_MAX})"
    )
    p.add_argument(
        "--cache", type=Path, default=folder / "cache", help="folder for cached activations and trained SAEs"
    )
    return p


def strict(value: Any) -> Any:
    """JSON-ready copy: tensors/numpy to Python, NaN/inf to None."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(strict(data), indent=1, allow_nan=False) + "\n")
    return path


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Save a matplotlib Figure (Agg, no pyplot state) as PNG."""
    return write_png(fig, path, dpi=dpi)


def markdown_table(rows: list[dict[str, Any]], columns: list[str], digits: int = 3) -> str:
    """A GitHub markdown table of ``rows`` (floats rounded to ``digits`` significant places)."""

    def cell(v: Any) -> str:
        if v is None:
            return "–"
        if isinstance(v, float):
            if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
                return f"{v:.{digits - 1}e}"
            return f"{v:.{digits}g}" if abs(v) >= 1 else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Activations of the embedded model, collected once and cached
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActivationSpec:
    """Which activations to collect: the cache file is keyed by every field."""

    hook: str = HOOK
    train_contexts: int = 192
    eval_contexts: int = 8
    context_size: int = 128
    corpus: str = "kjv"
    model: str = "smollm2-135m"

    @property
    def filename(self) -> str:
        hook = self.hook.replace(".", "_")
        return f"{self.model}_{self.corpus}_{hook}_t{self.train_contexts}_e{self.eval_contexts}_c{self.context_size}.pt"


TINY_MODEL = "tiny-qwen3"
"""A 2-layer, d=32 Qwen3 with random weights and the real tokenizer: the --tiny settings' model."""

TINY_SPEC = ActivationSpec(
    hook="blocks.1.hook_resid_pre", train_contexts=24, eval_contexts=2, context_size=32, model=TINY_MODEL
)


def load_model(name: str = "smollm2-135m") -> Any:
    """The embedded SmolLM2-135M (from its disk cache), or the random tiny Qwen3 for --tiny."""
    if name == TINY_MODEL:
        return models.qwen3_tiny(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=64)
    return models.load_model(name)


def model_activations(spec: ActivationSpec, cache: Path, model: Any = None) -> dict[str, Any]:
    """Train/held-out activations at ``spec.hook`` (BOS positions dropped), cached as one .pt.

    Returns ``train`` [N, d], ``heldout`` [M, d] (the held-out contexts' tokens), ``eval_tokens``
    [eval_contexts, context] (for splicing), ``tokens``/``contexts`` (a string per held-out
    token, for top-activation listings) and ``seconds`` (collection time, 0 when cached).
    ``model`` is loaded only when the cache is missing.
    """
    path = Path(cache) / spec.filename
    if path.is_file():
        stored = torch.load(path, weights_only=True)
        stored["seconds"] = 0.0
        stored["cache_file"] = str(path)
        return stored
    started = time.time()
    model = model if model is not None else load_model(spec.model)
    corpus = data.load_corpus(spec.corpus)
    assert isinstance(corpus, data.TextCorpus)
    prepend_bos = models.default_prepend_bos(model)
    skip = 1 if prepend_bos else 0
    tokenize = lambda texts, n: data.tokenize_contexts(  # noqa: E731
        texts, model.tokenizer, spec.context_size, prepend_bos=prepend_bos, max_contexts=n
    )
    train_tokens = tokenize(corpus.train, spec.train_contexts)
    eval_tokens = tokenize(corpus.heldout, spec.eval_contexts)
    train = collect_activations(model, train_tokens, spec.hook, skip_first=skip)
    heldout = collect_activations(model, eval_tokens, spec.hook, skip_first=skip, progress=False)
    tokens, contexts = token_strings(model.tokenizer, eval_tokens, skip)
    stored = {
        "train": train,
        "heldout": heldout,
        "eval_tokens": eval_tokens,
        "tokens": tokens,
        "contexts": contexts,
        "skip": skip,
        "bos": model.tokenizer.bos_token_id if prepend_bos else None,
        "spec": spec.__dict__,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(stored, path)
    stored["seconds"] = time.time() - started
    stored["cache_file"] = str(path)
    return stored


def token_strings(tokenizer: Any, tokens: torch.Tensor, skip: int, window: int = 12) -> tuple[list[str], list[str]]:
    """Per token (after the first ``skip`` of each row): its string and ``window`` tokens of context."""
    strings, contexts = [], []
    for row in tokens.tolist():
        pieces = [tokenizer.convert_tokens_to_string([p]) for p in tokenizer.convert_ids_to_tokens(row)]
        for position in range(skip, len(row)):
            strings.append(pieces[position])
            contexts.append("".join(pieces[max(skip, position - window) : position]) + "[[" + pieces[position] + "]]")
    return strings, contexts


# ----------------------------------------------------------------------------------------
# Training and held-out metrics of one bilinear SAE
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    variant: str = "vanilla"
    alpha: float = 0.1
    lifted: bool = False
    d_sae: int = 1152
    steps: int = 100
    batch_size: int = 512
    lr: float = 3e-3
    seed: int = 0

    @property
    def name(self) -> str:
        lift = "lifted" if self.lifted else "unlifted"
        return (
            f"{self.variant}-{lift}-a{round(self.alpha * 100):03d}-f{self.d_sae}-s{self.steps}-b{self.batch_size}"
            f"-lr{self.lr:g}-seed{self.seed}"
        )


LR = 1e-2
"""Adam learning rate of vanilla/ordered runs (100 steps on CPU: 1e-2 beat 3e-3 and 2e-2)."""
LR_MIXED = 3e-3
"""Adam learning rate of mixed/combined runs: at 1e-2 the bottleneck D overshoots (the error rises to
1.6 in the first 10 steps) and ends at 0.55 after 100 steps, against 0.34 at 3e-3 (mixed, α = 0.1)."""


def learning_rate(variant: str, lr: float = LR, lr_mixed: float = LR_MIXED) -> float:
    """The learning rate of a variant: ``lr_mixed`` for mixed/combined, ``lr`` otherwise."""
    return lr_mixed if variant in ("mixed", "combined") else lr


def add_training_arguments(p: argparse.ArgumentParser, steps: int = 100) -> None:
    """The sweep's training settings, shared by the scripts that reuse its SAEs."""
    p.add_argument("--d-sae", type=count_argument, default=1152, help="latents, ≥ 1 (2 × d_model for SmolLM2)")
    p.add_argument("--steps", type=count_argument, default=steps, help="optimiser steps per SAE, ≥ 1")
    p.add_argument("--batch-size", type=count_argument, default=512, help="tokens per step, ≥ 1")
    p.add_argument("--lr", type=positive_argument, default=LR, help="Adam learning rate, vanilla and ordered (> 0)")
    p.add_argument(
        "--lr-mixed", type=positive_argument, default=LR_MIXED, help="Adam learning rate, mixed and combined (> 0)"
    )


def run_spec(args: argparse.Namespace, variant: str, alpha: float, lifted: bool, seed: int) -> RunSpec:
    """The :class:`RunSpec` of one run from the options of :func:`add_training_arguments`."""
    return RunSpec(
        variant=variant,
        alpha=alpha,
        lifted=lifted,
        d_sae=args.d_sae,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=learning_rate(variant, args.lr, args.lr_mixed),
        seed=seed,
    )


def train_bilinear(activations: torch.Tensor, run: RunSpec, progress: bool = False) -> tuple[Any, float]:
    """Train one bilinear SAE with SAELens's trainer on cached activations; ``(sae, seconds)``.

    α warms up over the first quarter of the steps; the LR decays linearly over the second half.
    """
    torch.manual_seed(run.seed)
    cfg = BilinearTrainingSAEConfig(
        d_in=activations.shape[-1],
        d_sae=run.d_sae,
        variant=kernels.check_variant(run.variant),
        lifted=run.lifted,
        alpha=run.alpha,
        alpha_warm_up_steps=default_alpha_warm_up_steps(run.steps),
    )
    sae = BilinearTrainingSAE(cfg)
    settings = TrainingSettings(
        steps=run.steps,
        batch_size=run.batch_size,
        lr=run.lr,
        seed=run.seed,
        dead_feature_window=max(10, run.steps // 2),
    )
    started = time.time()
    sink = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
    with sink:
        train_on_activations(sae, activations, settings)
    return sae, time.time() - started


def cached_bilinear(activations: torch.Tensor, run: RunSpec, folder: Path) -> tuple[Any, float, bool]:
    """An inference :class:`BilinearSAE` for ``run``: loaded from ``folder/run.name`` when there,
    otherwise trained and saved there. ``(sae, training_seconds, was_cached)``."""
    path = Path(folder) / run.name
    meta = path / "experiment.json"
    if (path / "cfg.json").is_file() and meta.is_file():
        return load_any_from_disk(path, device="cpu"), float(json.loads(meta.read_text())["seconds"]), True
    sae, seconds = train_bilinear(activations, run)
    sae.save_inference_model(path)
    write_json(meta, {"run": run.__dict__, "seconds": seconds, "history": sae.history})
    return load_any_from_disk(path, device="cpu"), seconds, False


@torch.no_grad()
def heldout_metrics(sae: Any, activations: torch.Tensor, batch_size: int = 2048) -> dict[str, float]:
    """Mean x⊗x reconstruction error and Hoyer density (over all held-out tokens) of a bilinear SAE.

    Also the share of tokens with error < 0.1 and the fraction of latents whose Hoyer density is 0
    (never active on these tokens).
    """
    errors, latents = [], []
    for start in range(0, activations.shape[0], batch_size):
        x = activations[start : start + batch_size]
        errors.append(sae.reconstruction_error(x).double())
        latents.append(sae.encode(x).double())
    error = torch.cat(errors)
    f = torch.cat(latents)
    valid = kernels.unit_tokens(activations).valid
    h = kernels.hoyer_density(f, valid)
    return {
        "reconstruction_error": float(error[valid].mean()),
        "reconstruction_error_median": float(error[valid].median()),
        "tokens_below_0.1": float((error[valid] < 0.1).double().mean()),
        "hoyer_density": float(h.mean()),
        "dead_fraction": float((h == 0).double().mean()),
        "n_tokens": int(valid.sum()),
    }
