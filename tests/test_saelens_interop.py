"""SAELens's evals and its trainer's evaluator, with bilinear SAEs (issues 13 and 14)."""

from __future__ import annotations

import logging

import pytest
import torch
from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
from sae_lens import evals as sae_lens_evals
from sae_lens.config import LoggingConfig
from sae_lens.evals import EvalConfig, get_eval_everything_config
from sae_lens.training.activation_scaler import ActivationScaler

from sae_bilinear import BilinearTrainingSAEConfig, UnliftedDecodeError, saelens_evals
from sae_bilinear.errors import ConfigError
from sae_bilinear.saelens_evals import BilinearEvaluator, run_evals

D_MODEL, D_SAE = 32, 64
HOOK = "blocks.1.hook_resid_pre"


def runner(tiny_model, token_dataset, steps: int = 12, log_to_wandb: bool = False, **sae_kwargs):
    sae_cfg = BilinearTrainingSAEConfig(d_in=D_MODEL, d_sae=D_SAE, **sae_kwargs)
    cfg = LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name="tiny",
        hook_name=HOOK,
        dataset_path="",
        context_size=16,
        training_tokens=128 * steps,
        train_batch_size_tokens=128,
        n_batches_in_buffer=16,
        store_batch_size_prompts=8,
        eval_batch_size_prompts=4,
        n_eval_batches=2,
        lr=3e-3,
        logger=LoggingConfig(log_to_wandb=log_to_wandb, wandb_log_frequency=2, eval_every_n_wandb_logs=2),
        output_path=None,
        checkpoint_path=None,
        device="cpu",
        verbose=False,
        prepend_bos=False,
        n_batches_for_norm_estimate=2,
    )
    run = LanguageModelSAETrainingRunner(cfg, override_dataset=token_dataset, override_model=tiny_model)
    run.sae.cfg.metadata.hook_name = HOOK  # what run() records first; the evals need it
    return run


def everything() -> EvalConfig:
    return get_eval_everything_config(
        batch_size_prompts=4, n_eval_reconstruction_batches=2, n_eval_sparsity_variance_batches=2
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("lifted", [False, True])
def test_run_evals_counts_l0_at_the_activity_threshold(tiny_model, token_dataset, lifted, caplog):
    run = runner(tiny_model, token_dataset, lifted=lifted)
    saelens_evals._reported.clear()
    with caplog.at_level(logging.WARNING, logger="sae_bilinear.saelens_evals"):
        metrics, features = run_evals(
            run.sae, run.activations_store, tiny_model, ActivationScaler(), everything(), exclude_special_tokens=False
        )
    l0 = metrics["sparsity"]["l0"]
    assert 0 < l0 < D_SAE  # SAELens's != 0 count would say D_SAE
    # Feature density is the same count per latent: it sums to L0.
    assert sum(features["feature_density"]) == pytest.approx(l0, rel=1e-5)
    assert "encoder_norm" not in features  # weight metrics skipped (no W_enc), and said so
    assert "W_enc/W_dec" in caplog.text
    if lifted:
        quality = metrics["reconstruction_quality"]
        assert torch.isfinite(torch.tensor(quality["explained_variance"]))
        assert metrics["model_performance_preservation"]["ce_loss_with_sae"] > 0
        assert "unlifted" not in caplog.text
    else:
        assert {"model_performance_preservation", "reconstruction_quality", "shrinkage"}.isdisjoint(metrics)
        assert "unlifted" in caplog.text


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lifted_reconstruction_metrics_are_sae_lens_own(tiny_model, token_dataset):
    """CE/KL with the SAE spliced in are SAELens's numbers (the view changes only the counts),
    while SAELens alone counts every dense latent as firing."""
    run = runner(tiny_model, token_dataset, lifted=True)
    tokens = torch.randint(1, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    view = saelens_evals.ThresholdedView(run.sae)
    ours = sae_lens_evals.get_recons_loss(
        view, tiny_model, ActivationScaler(), tokens, compute_kl=True, compute_ce_loss=True
    )
    theirs = sae_lens_evals.get_recons_loss(
        run.sae, tiny_model, ActivationScaler(), tokens, compute_kl=True, compute_ce_loss=True
    )
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0)
    assert (ours["ce_loss_with_sae"] != ours["ce_loss_without_sae"]).any()  # the SAE was spliced in
    sparsity = EvalConfig(batch_size_prompts=4, n_eval_sparsity_variance_batches=1, compute_sparsity_metrics=True)
    theirs_metrics, _ = sae_lens_evals.run_evals(
        run.sae, run.activations_store, tiny_model, ActivationScaler(), sparsity, exclude_special_tokens=False
    )
    assert theirs_metrics["sparsity"]["l0"] == D_SAE  # the bug this module exists for


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sae_lens_evaluator_crashes_on_the_default_config_and_ours_does_not(tiny_model, token_dataset):
    run = runner(tiny_model, token_dataset)  # the default config: unlifted
    with pytest.raises(UnliftedDecodeError):
        run.evaluator(run.sae, run.activations_store, ActivationScaler())
    metrics = BilinearEvaluator.from_runner(run)(run.sae, run.activations_store, ActivationScaler())
    assert 0 < metrics["sparsity"]["l0"] < D_SAE


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_default_config_trains_with_wandb_logging_on(tiny_model, token_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = runner(tiny_model, token_dataset, steps=12, log_to_wandb=True)
    evaluator = BilinearEvaluator.from_runner(run)
    logged = []
    run.evaluator = lambda *args: logged.append(evaluator(*args)) or logged[-1]  # pyright: ignore[reportAttributeAccessIssue]
    sae = run.run()
    assert isinstance(sae.cfg, BilinearTrainingSAEConfig) and not sae.cfg.lifted
    assert len(logged) == 3  # steps 4, 8, 12: (n + 1) % (2 · 2) == 0
    assert all(0 < metrics["sparsity"]["l0"] < D_SAE for metrics in logged)
    assert list((tmp_path / "wandb").glob("offline-run-*"))  # wandb ran, offline


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_an_sae_without_a_hook_name_is_a_clear_error(tiny_model, token_dataset):

    run = runner(tiny_model, token_dataset)
    run.sae.cfg.metadata.hook_name = None
    with pytest.raises(ConfigError, match="hook_name"):
        run_evals(run.sae, run.activations_store, tiny_model, ActivationScaler(), everything())
