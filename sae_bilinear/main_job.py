"""The main job (``sae-bilinear run``): train on a real model, splice back, analyse, report.

models → data → activations at the hook (collected once) → SAELens trainer (bilinear, and a
linear baseline on the same activations and parameter budget) → splice evaluation on
held-out text → eigen-analysis of the most active latents → ``report.html``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sae_bilinear import analysis, data, evaluate, models, report
from sae_bilinear.atlas import build_atlas
from sae_bilinear.atlas_scores import token_text
from sae_bilinear.bilinear import BilinearTrainingSAE, BilinearTrainingSAEConfig, default_alpha_warm_up_steps
from sae_bilinear.checks import parse_device
from sae_bilinear.errors import ConfigError, DataFileError
from sae_bilinear.hub import load_any_from_disk
from sae_bilinear.kernels import VARIANTS, Variant
from sae_bilinear.latent_pages import analyze_latent
from sae_bilinear.muon import NSDtype, check_ns_dtype
from sae_bilinear.outputs import check_output_folder, prepare_output_folder, publish_folder, write_text_atomic
from sae_bilinear.train import OPTIMIZERS, TrainingSettings, collect_activations, train_on_activations
from sae_bilinear.values import check_bool, check_choice, check_finite_float, check_int, check_str

BASELINES = ("topk", "standard", "none")
DTYPES = ("float32", "bfloat16", "float16")
STAGING = ".partial"
"""Hidden folder inside ``out`` where a run's results are written before being moved into place."""
CHECKPOINTS = "checkpoints"
JOB_CONFIG = "job_config.json"
"""The settings a run started with (``out/job_config.json``), checked when it is resumed."""
RESUMABLE_CHANGES = frozenset({"device", "eval_contexts", "n_latents", "checkpoints", "atlas"})
"""Settings a resumed run may change: they do not alter what was trained."""


@dataclass
class MainJobConfig:
    """Settings of ``sae-bilinear run``; the defaults run in minutes on 2 CPU cores.

    Every field is checked (type, range, NaN/inf, choices) when the config is built, before
    any model is loaded; a bad value is a :class:`~sae_bilinear.errors.ConfigError` naming it.
    """

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
    variant: Variant = "mixed"
    """vanilla | ordered | mixed | combined."""
    alpha: float = 0.1
    """Hoyer density weight (>= 0); warmed up over the first quarter of the steps."""
    steps: int = 150
    """Optimiser steps."""
    batch_size: int = 1024
    """Tokens per step."""
    lr: float = 1e-3
    """Peak learning rate (see benchmarks/results/optimizer_comparison_smollm2-135m.json)."""
    optimizer: str = "adam"
    """``adam`` (SAELens's) or ``muon``."""
    ns_dtype: NSDtype = "auto"
    """Muon's Newton–Schulz arithmetic: float32 | bfloat16 | auto (the faster on the device)."""
    baseline: str = "topk"
    """Linear SAELens baseline trained on the same activations: topk | standard | none."""
    baseline_k: int = 32
    """k of the TopK baseline (>= 1)."""
    n_latents: int = 2
    """Latents (most often active) given a manifold page in the report."""
    device: str = "cpu"
    """Device for the model and the SAEs."""
    dtype: str = "float32"
    """Model dtype: float32 | bfloat16 | float16."""
    seed: int = 0
    """Seed of the SAE init and batch order."""
    atlas: bool = True
    """Write the atlas of the bilinear SAE (every latent and composite, browsable) into ``out/atlas``
    and link it from the report (1–3 minutes on 2 CPU cores at the defaults: one eigendecomposition per composite)."""
    checkpoints: int = 4
    """Checkpoints during each training (one more at its end; only the latest is kept, in
    ``out/checkpoints``, removed once the run is done); a killed run continues with ``resume``."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field; a :class:`ConfigError` names the first bad one."""
        for name in ("model", "hook_name", "corpus"):
            check_str(name, getattr(self, name))
        check_bool("atlas", self.atlas)
        for name in (
            "context_size",
            "train_contexts",
            "eval_contexts",
            "expansion",
            "steps",
            "batch_size",
            "baseline_k",
        ):
            check_int(name, getattr(self, name), 1)
        for name in ("n_latents", "seed", "checkpoints"):
            check_int(name, getattr(self, name), 0)
        check_choice("variant", self.variant, VARIANTS)
        self.alpha = check_finite_float("alpha", self.alpha, 0.0)
        self.lr = check_finite_float("lr", self.lr, 0.0, lo_open=True)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_ns_dtype(self.ns_dtype)
        check_choice("baseline", self.baseline, BASELINES)
        check_choice("dtype", self.dtype, DTYPES)
        parse_device(check_str("device", self.device))
        most_tokens = self.train_contexts * self.context_size
        if most_tokens < self.batch_size:
            raise ConfigError(
                f"train_contexts × context_size = {most_tokens} tokens is fewer than one batch of "
                f"batch_size={self.batch_size}: raise train_contexts or lower batch_size"
            )


def _log(message: str) -> None:
    print(f"[sae-bilinear] {message}", flush=True)


def _baseline_sae(config: MainJobConfig, d_in: int, bilinear_params: int) -> Any:
    """A SAELens linear SAE with (about) the bilinear SAE's parameter count."""
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    d_sae = max(1, round((bilinear_params - d_in) / (2 * d_in + 1)))  # W_enc, W_dec, b_enc, b_dec
    torch.manual_seed(config.seed)
    # SAELens's usual normalisation for raw residuals (norms in the hundreds); folded after training.
    norm = "expected_average_only_in"
    if config.baseline == "topk":
        k = min(config.baseline_k, d_sae)
        return TopKTrainingSAE(
            TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, normalize_activations=norm, device=config.device)
        )
    return StandardTrainingSAE(
        StandardTrainingSAEConfig(
            d_in=d_in, d_sae=d_sae, l1_coefficient=1.0, normalize_activations=norm, device=config.device
        )
    )


def _set_metadata(sae: Any, config: MainJobConfig, model: Any) -> None:
    meta = sae.cfg.metadata
    meta.model_name = config.model
    meta.hook_name = config.hook_name
    meta.context_size = config.context_size
    meta.prepend_bos = models.default_prepend_bos(model)
    meta.dataset_path = config.corpus


def _finished_run(config: MainJobConfig, out: Path, *, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """Check ``out`` against the output rule, without touching it; on resume check the settings
    match the run's. Returns the metrics of a finished run when resuming one (nothing to do)."""
    check_bool("resume", resume)
    check_bool("overwrite", overwrite)
    check_output_folder(out, overwrite=overwrite, resume=resume, what="output folder")
    recorded = out / JOB_CONFIG
    if not (resume and recorded.is_file()):
        return None
    try:
        before = json.loads(recorded.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataFileError(f"{recorded} is damaged ({error}); start the run again with overwrite") from error
    settings = dataclasses.asdict(config)
    changed = sorted(k for k in settings if k not in RESUMABLE_CHANGES and before.get(k) != settings[k])
    if changed:
        details = ", ".join(f"{k}: {before.get(k)!r} → {settings[k]!r}" for k in changed)
        raise ConfigError(f"cannot resume {out} with other settings ({details}): use the run's own, or overwrite")
    metrics = out / "metrics.json"  # published last: the run is complete
    if not metrics.is_file():
        return None
    try:
        return json.loads(metrics.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataFileError(f"{metrics} is damaged ({error}); start the run again with overwrite") from error


def _start_run_folder(config: MainJobConfig, out: Path, *, resume: bool, overwrite: bool) -> Path:
    """Apply the output rule (overwrite removes the old run), record the settings, and return a
    fresh staging folder (a killed run's half-written results are dropped)."""
    prepare_output_folder(out, overwrite=overwrite, resume=resume, what="output folder")
    write_text_atomic(out / JOB_CONFIG, json.dumps(dataclasses.asdict(config), indent=2))
    stage = out / STAGING
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    return stage


def run_main_job(
    config: MainJobConfig, out: str | Path, model: Any = None, *, resume: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Run the whole job into ``out``; returns the metrics written to ``metrics.json``.

    ``model`` may be passed in (tests, notebooks); otherwise ``config.model`` is loaded.
    Every setting, the output folder and the corpus are checked before the model is loaded;
    hook and context length right after. ``out`` must be missing or empty unless ``overwrite``
    (the whole folder is replaced) or ``resume`` (training continues from the latest
    checkpoint in ``out/checkpoints``; a finished run is returned as it is). Results are
    written into ``out/.partial`` and moved into ``out`` at the end, ``metrics.json`` last.
    """
    started = time.time()
    config.validate()  # the fields may have been edited since construction
    out = Path(out)
    finished = _finished_run(config, out, resume=resume, overwrite=overwrite)
    if finished is not None:
        _log(f"{out} already holds a finished run: nothing to resume")
        return finished

    corpus = data.load_corpus(config.corpus)
    if not isinstance(corpus, data.TextCorpus):
        raise ConfigError(
            f"corpus: the main job reads local text; {config.corpus!r} is a Hub dataset (use `train --config`)"
        )
    if model is None:
        _log(f"loading {config.model}")
        model = models.load_model(config.model, device=config.device, dtype=config.dtype)
    models.check_hook(model, config.hook_name)
    models.check_context_size(model, config.context_size)
    stage = _start_run_folder(config, out, resume=resume, overwrite=overwrite)  # nothing is written before here

    prepend_bos = models.default_prepend_bos(model)
    tokenize = lambda texts, n: data.tokenize_contexts(  # noqa: E731
        texts, model.tokenizer, config.context_size, prepend_bos=prepend_bos, max_contexts=n
    )
    train_tokens = tokenize(corpus.train, config.train_contexts)
    eval_tokens = tokenize(corpus.heldout, config.eval_contexts)
    _log(
        f"{corpus.name}: {train_tokens.shape[0]} training and {eval_tokens.shape[0]} held-out contexts "
        f"of {config.context_size}"
    )

    skip = 1 if prepend_bos else 0  # BOS activations are norm outliers, not text
    activations = collect_activations(model, train_tokens, config.hook_name, skip_first=skip)
    d_in = activations.shape[-1]
    if activations.shape[0] < config.batch_size:
        raise ConfigError(
            f"batch_size: {activations.shape[0]} training tokens are fewer than one batch of {config.batch_size}"
        )
    # Mean-ablation replaces the activation by its mean over the training tokens (the usual
    # reference), not over the evaluated ones.
    mean_activation = activations.mean(0)
    training_mean = evaluate.TrainingMean(mean_activation, int(activations.shape[0]))
    mean_source = f"training activations: mean over the {activations.shape[0]} training tokens (BOS excluded)"

    torch.manual_seed(config.seed)
    sae_cfg = BilinearTrainingSAEConfig(
        d_in=d_in,
        d_sae=config.expansion * d_in,
        variant=config.variant,
        lifted=True,
        alpha=config.alpha,
        alpha_warm_up_steps=default_alpha_warm_up_steps(config.steps),
        device=config.device,
    )
    sae = BilinearTrainingSAE(sae_cfg)
    settings = TrainingSettings(
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=config.optimizer,
        ns_dtype=config.ns_dtype,
        device=config.device,
        seed=config.seed,
        dead_feature_window=max(10, config.steps // 2),
        checkpoint_path=str(out / CHECKPOINTS / "bilinear"),
        n_checkpoints=config.checkpoints,
        resume=resume,
    )
    _log(f"training bilinear {config.variant} SAE, d_sae={sae_cfg.d_sae}, {config.steps} steps")
    train_started = time.time()
    trainer = train_on_activations(sae, activations, settings)
    resumed_from = {"bilinear": trainer.resumed_from_steps}
    bilinear_seconds = time.time() - train_started
    _set_metadata(sae, config, model)
    sae.save_inference_model(stage / "sae")
    # Saved with the SAE, so that `evaluate` of this folder ablates to the same mean as the run.
    evaluate.save_training_mean(stage / "sae", mean_activation, training_mean.n_tokens, config.hook_name)
    (stage / "history.json").write_text(json.dumps(sae.history, indent=1))

    results: dict[str, Any] = {}
    _log("splice evaluation of the bilinear SAE")
    inference = _load_sae(stage / "sae", config.device)
    # BOS positions are excluded, as SAELens's evals do: their activations are norm outliers.
    ignore = [model.tokenizer.bos_token_id] if prepend_bos and model.tokenizer.bos_token_id is not None else None
    splice = evaluate.evaluate_splice(
        model,
        inference,
        eval_tokens,
        hook_name=config.hook_name,
        ignore_tokens=ignore,
        mean_activation=mean_activation,
        mean_source=training_mean.label,
    )
    results["bilinear"] = splice.to_dict()

    baseline_seconds = None
    if config.baseline != "none":
        n_params = sum(p.numel() for p in sae.parameters())
        baseline = _baseline_sae(config, d_in, n_params)
        _log(f"training SAELens {config.baseline} baseline, d_sae={baseline.cfg.d_sae} (same parameter budget)")
        train_started = time.time()
        baseline_settings = dataclasses.replace(
            settings, optimizer="adam", checkpoint_path=str(out / CHECKPOINTS / "baseline")
        )
        resumed_from["baseline"] = train_on_activations(baseline, activations, baseline_settings).resumed_from_steps
        baseline_seconds = time.time() - train_started
        _set_metadata(baseline, config, model)
        baseline.save_inference_model(stage / "baseline")
        evaluate.save_training_mean(stage / "baseline", mean_activation, training_mean.n_tokens, config.hook_name)
        _log("splice evaluation of the baseline")
        results["baseline"] = evaluate.evaluate_splice(
            model,
            _load_sae(stage / "baseline", config.device),
            eval_tokens,
            hook_name=config.hook_name,
            ignore_tokens=ignore,
            mean_activation=mean_activation,
            mean_source=training_mean.label,
        ).to_dict()

    _log("eigen-analysis of the most active latents")
    eval_acts, contexts, token_strs = token_activations(model, eval_tokens, config.hook_name, skip)
    latents = analysis.choose_top_latents(inference, eval_acts, n=config.n_latents)
    latent_pages = []
    for latent in latents:
        summary = analyze_latent(inference, latent, eval_acts, contexts, stage / "latents", tokens=token_strs)
        latent_pages.append({"latent": latent, **{k: summary[k] for k in summary if k in ("html", "png", "json")}})

    metrics = {
        **results["bilinear"],
        "model": config.model,
        "hook": config.hook_name,
        "tokens": int(activations.shape[0]),
        "eval_tokens": splice.n_tokens,
        "mean_ablation": training_mean.label,
        "mean_ablation_source": mean_source,
        "training_seconds": bilinear_seconds,
        "seconds": None,  # filled below
        "resumed_from_steps": resumed_from,
        "config": dataclasses.asdict(config),
        "baseline": None
        if config.baseline == "none"
        else {
            "kind": config.baseline,
            "d_sae": baseline.cfg.d_sae,
            "training_seconds": baseline_seconds,
            **results["baseline"],
        },
        "latents": latents,
    }
    metrics["seconds"] = time.time() - started
    (stage / "metrics.json").write_text(json.dumps(metrics, indent=2))
    atlas_dir = None
    if config.atlas:
        _log("atlas of every latent and composite")
        atlas_dir = stage / "atlas"
        build_atlas(inference, model, eval_tokens, atlas_dir, hook_name=config.hook_name, skip_first=skip)
    report.write_report(stage, metrics, sae.history, latent_pages, atlas_dir=atlas_dir)
    # metrics.json last: its presence marks the run complete (a resume then returns it).
    publish_folder(stage, out, last=["metrics.json"])
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)  # a finished run resumes from metrics.json
    _log(f"done in {metrics['seconds']:.0f} s: {out / 'report.html'}")
    return metrics


def _load_sae(folder: Path, device: str) -> Any:
    """The SAE just written, read back through the validating loader (finite weights, dtypes, cfg)."""
    return load_any_from_disk(folder, device=device)


@torch.no_grad()
def token_activations(
    model: Any, tokens: torch.Tensor, hook_name: str, skip: int
) -> tuple[torch.Tensor, list[str], list[str]]:
    """Held-out activations with, per token, its string and a short context ending at it."""
    acts = collect_activations(model, tokens, hook_name, skip_first=skip, progress=False)
    # One decode per distinct id, by the atlas's token_text (the same strings as its corpus).
    vocab = {i: token_text(model.tokenizer, i) for i in set(tokens.reshape(-1).tolist())}
    contexts, token_strs = [], []
    for row in tokens.tolist():
        texts = [vocab[i] for i in row]
        for position in range(skip, len(row)):
            token_strs.append(texts[position])
            contexts.append("".join(texts[max(skip, position - 12) : position]) + "[[" + texts[position] + "]]")
    return acts, contexts, token_strs
