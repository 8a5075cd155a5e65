"""The main job (``sae-bilinear run``): train on a real model, splice back, analyse, report.

models → data → activations at the hook (collected once) → SAELens trainer (bilinear, and a
linear baseline on the same activations and parameter budget) → splice evaluation on
held-out text → eigen-analysis of the most active latents → ``report.html``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae_bilinear import analysis, data, evaluate, models, report
from sae_bilinear.bilinear import BilinearTrainingSAE, BilinearTrainingSAEConfig
from sae_bilinear.latent_pages import analyze_latent
from sae_bilinear.train import TrainingSettings, collect_activations, train_on_activations

BASELINES = ("topk", "standard", "none")


@dataclass
class MainJobConfig:
    """Settings of ``sae-bilinear run``; the defaults run in minutes on 2 CPU cores."""

    model: str = models.EMBEDDED_MODEL_NAME
    """Model name: the embedded ``smollm2-135m``, a local HF folder, or a TransformerLens name."""
    hook_name: str = "blocks.15.hook_resid_pre"
    """Hook whose activations are encoded (SmolLM2 has 30 blocks: 15 is the middle)."""
    corpus: str = data.DEFAULT_CORPUS
    """``kjv`` (the King James Bible, packaged) or a local .txt/.jsonl file or folder."""
    context_size: int = 128
    """Tokens per context."""
    train_contexts: int = 256
    """Contexts whose activations train the SAEs (BOS positions are dropped)."""
    eval_contexts: int = 16
    """Held-out contexts for the splice evaluation."""
    expansion: int = 2
    """d_sae = expansion × d_model (the paper uses 16 on a GPU)."""
    variant: str = "mixed"
    """vanilla | ordered | mixed | combined."""
    alpha: float = 0.1
    """Hoyer density weight."""
    steps: int = 150
    """Optimiser steps."""
    batch_size: int = 1024
    """Tokens per step."""
    lr: float = 1e-3
    """Peak learning rate (see benchmarks/results/optimizer_comparison_smollm2-135m.json)."""
    optimizer: str = "adam"
    """``adam`` (SAELens's) or ``muon``."""
    baseline: str = "topk"
    """Linear SAELens baseline trained on the same activations: topk | standard | none."""
    baseline_k: int = 32
    """k of the TopK baseline."""
    n_latents: int = 2
    """Latents (most often active) given a manifold page in the report."""
    device: str = "cpu"
    """Device for the model and the SAEs."""
    dtype: str = "float32"
    """Model dtype."""
    seed: int = 0
    """Seed of the SAE init and batch order."""

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        for name in ("train_contexts", "eval_contexts", "expansion", "steps", "batch_size", "context_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def _log(message: str) -> None:
    print(f"[sae-bilinear] {message}", flush=True)


def _baseline_sae(kind: str, d_in: int, bilinear_params: int, k: int, seed: int) -> Any:
    """A SAELens linear SAE with (about) the bilinear SAE's parameter count."""
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    d_sae = max(1, round((bilinear_params - d_in) / (2 * d_in + 1)))  # W_enc, W_dec, b_enc, b_dec
    torch.manual_seed(seed)
    # SAELens's usual normalisation for raw residuals (norms in the hundreds); folded after training.
    norm = "expected_average_only_in"
    if kind == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=min(k, d_sae), normalize_activations=norm))
    return StandardTrainingSAE(
        StandardTrainingSAEConfig(d_in=d_in, d_sae=d_sae, l1_coefficient=1.0, normalize_activations=norm)
    )


def _set_metadata(sae: Any, config: MainJobConfig, model: Any) -> None:
    meta = sae.cfg.metadata
    meta.model_name = config.model
    meta.hook_name = config.hook_name
    meta.context_size = config.context_size
    meta.prepend_bos = models.default_prepend_bos(model)
    meta.dataset_path = config.corpus


def run_main_job(config: MainJobConfig, out: str | Path, model: Any = None) -> dict[str, Any]:
    """Run the whole job into ``out``; returns the metrics written to ``metrics.json``.

    ``model`` may be passed in (tests, notebooks); otherwise ``config.model`` is loaded.
    Checks (hook, context length, corpus size) run before any expensive work.
    """
    started = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if model is None:
        _log(f"loading {config.model}")
        model = models.load_model(config.model, device=config.device, dtype=config.dtype)
    models.check_hook(model, config.hook_name)
    models.check_context_size(model, config.context_size)

    corpus = data.load_corpus(config.corpus)
    if not isinstance(corpus, data.TextCorpus):
        raise ValueError(f"the main job reads local text; {config.corpus!r} is a Hub dataset (use `train --config`)")
    prepend_bos = models.default_prepend_bos(model)
    tokenize = lambda texts, n: data.tokenize_contexts(  # noqa: E731
        texts, model.tokenizer, config.context_size, prepend_bos=prepend_bos, max_contexts=n
    )
    train_tokens = tokenize(corpus.train, config.train_contexts)
    eval_tokens = tokenize(corpus.heldout, config.eval_contexts)
    _log(f"{corpus.name}: {train_tokens.shape[0]} training and {eval_tokens.shape[0]} held-out contexts of {config.context_size}")

    skip = 1 if prepend_bos else 0  # BOS activations are norm outliers, not text
    activations = collect_activations(model, train_tokens, config.hook_name, skip_first=skip)
    d_in = activations.shape[-1]
    if activations.shape[0] < config.batch_size:
        raise ValueError(f"{activations.shape[0]} training tokens are fewer than one batch of {config.batch_size}")

    torch.manual_seed(config.seed)
    sae_cfg = BilinearTrainingSAEConfig(
        d_in=d_in,
        d_sae=config.expansion * d_in,
        variant=config.variant,
        lifted=True,
        alpha=config.alpha,
        alpha_warm_up_steps=config.steps // 4,
        device=config.device,
    )
    sae = BilinearTrainingSAE(sae_cfg)
    settings = TrainingSettings(
        steps=config.steps, batch_size=config.batch_size, lr=config.lr, optimizer=config.optimizer,
        device=config.device, seed=config.seed, dead_feature_window=max(10, config.steps // 2),
    )
    _log(f"training bilinear {config.variant} SAE, d_sae={sae_cfg.d_sae}, {config.steps} steps")
    train_started = time.time()
    train_on_activations(sae, activations, settings)
    bilinear_seconds = time.time() - train_started
    _set_metadata(sae, config, model)
    sae.save_inference_model(out / "sae")
    (out / "history.json").write_text(json.dumps(sae.history, indent=1))

    results: dict[str, Any] = {}
    _log("splice evaluation of the bilinear SAE")
    inference = _inference_copy(out / "sae", config.device)
    # BOS positions are excluded, as SAELens's evals do: their activations are norm outliers.
    ignore = [model.tokenizer.bos_token_id] if prepend_bos and model.tokenizer.bos_token_id is not None else None
    results["bilinear"] = evaluate.evaluate_splice(
        model, inference, eval_tokens, hook_name=config.hook_name, ignore_tokens=ignore
    ).to_dict()

    baseline_seconds = None
    if config.baseline != "none":
        n_params = sum(p.numel() for p in sae.parameters())
        baseline = _baseline_sae(config.baseline, d_in, n_params, config.baseline_k, config.seed)
        _log(f"training SAELens {config.baseline} baseline, d_sae={baseline.cfg.d_sae} (same parameter budget)")
        train_started = time.time()
        baseline_settings = dataclasses.replace(settings, optimizer="adam")
        train_on_activations(baseline, activations, baseline_settings)
        baseline_seconds = time.time() - train_started
        _set_metadata(baseline, config, model)
        baseline.save_inference_model(out / "baseline")
        _log("splice evaluation of the baseline")
        results["baseline"] = evaluate.evaluate_splice(
            model, _inference_copy(out / "baseline", config.device), eval_tokens, hook_name=config.hook_name,
            ignore_tokens=ignore,
        ).to_dict()

    _log("eigen-analysis of the most active latents")
    eval_acts, contexts, token_strs = token_activations(model, eval_tokens, config.hook_name, skip)
    latents = analysis.choose_top_latents(inference, eval_acts, n=config.n_latents)
    latent_pages = []
    for latent in latents:
        summary = analyze_latent(
            inference, latent, eval_acts, contexts, out / "latents", tokens=token_strs
        )
        latent_pages.append({"latent": latent, **{k: summary[k] for k in summary if k in ("html", "png", "json")}})

    metrics = {
        **results["bilinear"],
        "model": config.model,
        "hook": config.hook_name,
        "tokens": int(activations.shape[0]),
        "eval_tokens": int(results["bilinear"]["n_tokens"]),
        "training_seconds": bilinear_seconds,
        "seconds": None,  # filled below
        "config": dataclasses.asdict(config),
        "baseline": None if config.baseline == "none" else {
            "kind": config.baseline,
            "d_sae": baseline.cfg.d_sae,
            "training_seconds": baseline_seconds,
            **results["baseline"],
        },
        "latents": latents,
    }
    metrics["seconds"] = time.time() - started
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    report.write_report(out, metrics, sae.history, latent_pages)
    _log(f"done in {metrics['seconds']:.0f} s: {out / 'report.html'}")
    return metrics


def _inference_copy(folder: Path, device: str) -> Any:
    from sae_lens import SAE

    return SAE.load_from_disk(folder, device=device)


@torch.no_grad()
def token_activations(model: Any, tokens: torch.Tensor, hook_name: str, skip: int) -> tuple[torch.Tensor, list[str], list[str]]:
    """Held-out activations with, per token, its string and a short context ending at it."""
    acts = collect_activations(model, tokens, hook_name, skip_first=skip, progress=False)
    tokenizer = model.tokenizer
    contexts, token_strs = [], []
    for row in tokens.tolist():
        pieces = tokenizer.convert_ids_to_tokens(row)
        texts = [tokenizer.convert_tokens_to_string([p]) for p in pieces]
        for position in range(skip, len(row)):
            token_strs.append(texts[position])
            contexts.append("".join(texts[max(skip, position - 12) : position]) + "[[" + texts[position] + "]]")
    return acts, contexts, token_strs
