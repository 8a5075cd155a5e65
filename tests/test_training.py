"""Training a bilinear SAE with SAELens's own runner and trainer."""

from __future__ import annotations

import json

import pytest
import torch
from sae_lens import SAE, LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner
from sae_lens.config import LoggingConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

from sae_bilinear import BilinearSAE, BilinearTrainingSAE, BilinearTrainingSAEConfig
from sae_bilinear.errors import ConfigError
from sae_bilinear.train import (
    BilinearTrainingRunner,
    MuonWithAdamW,
    ShuffledBatches,
    TrainingSettings,
    runner_config_from_dict,
    train_on_activations,
)

D_MODEL = 32
HOOK = "blocks.1.hook_resid_pre"


def runner_config(output_path, steps: int = 120, lr: float = 3e-3, **sae_kwargs) -> LanguageModelSAERunnerConfig:
    sae_cfg = BilinearTrainingSAEConfig(
        d_in=D_MODEL, d_sae=128, lifted=True, alpha=0.05, alpha_warm_up_steps=20, **sae_kwargs
    )
    return LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name="tiny",
        hook_name=HOOK,
        dataset_path="",
        context_size=16,
        training_tokens=256 * steps,
        train_batch_size_tokens=256,
        n_batches_in_buffer=32,  # buffer (32 × 16 tokens) must cover a batch
        store_batch_size_prompts=8,
        lr=lr,
        logger=LoggingConfig(log_to_wandb=False),
        output_path=str(output_path),
        checkpoint_path=None,
        device="cpu",
        verbose=False,
        prepend_bos=False,
        n_batches_for_norm_estimate=2,
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_sae_lens_runner_trains_and_saved_folder_reloads(tmp_path, tiny_model, token_dataset):
    cfg = runner_config(tmp_path / "out", normalize_activations="expected_average_only_in")
    sae = LanguageModelSAETrainingRunner(cfg, override_dataset=token_dataset, override_model=tiny_model).run()
    assert isinstance(sae, BilinearTrainingSAE)
    errors = [row["reconstruction_error"] for row in sae.history]
    assert errors[-1] < 0.5 * errors[0], errors
    assert sae.history[-1]["explained_variance"] > 0.5
    assert 0.0 <= sae.history[-1]["dead_fraction"] <= 1.0
    # SAELens folded the norm scaling (a no-op for bilinear) and wrote its layout.
    assert sae.cfg.normalize_activations == "none"
    assert {"cfg.json", "sae_weights.safetensors", "sparsity.safetensors", "runner_cfg.json"} <= {
        p.name for p in (tmp_path / "out").iterdir()
    }
    loaded = SAE.load_from_disk(tmp_path / "out")
    assert isinstance(loaded, BilinearSAE)
    _, cache = tiny_model.run_with_cache(torch.randint(1, 64, (2, 16)), names_filter=HOOK)
    x = cache[HOOK]
    torch.testing.assert_close(loaded(x), sae(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded.reconstruction_error(x), sae.reconstruction_error(x), rtol=0, atol=0)
    # The metadata SAELens recorded: hook and L0 at the activity threshold.
    assert loaded.cfg.metadata.hook_name == HOOK
    assert 0 < loaded.cfg.metadata.l0 < 128


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_runner_with_muon_trains(tmp_path, tiny_model, token_dataset):
    cfg = runner_config(tmp_path / "muon", lr=0.03, variant="mixed")
    runner = BilinearTrainingRunner(cfg, override_dataset=token_dataset, override_model=tiny_model, optimizer="muon")
    sae = runner.run()
    errors = [row["reconstruction_error"] for row in sae.history]
    assert errors[-1] < 0.5 * errors[0], errors


def test_unknown_optimizer_is_a_clear_error(tmp_path, tiny_model, token_dataset):
    with pytest.raises(ValueError, match="unknown optimizer"):
        BilinearTrainingRunner(runner_config(tmp_path), override_model=tiny_model, optimizer="sgd")


def test_muon_wrapper_steps_matrices_and_biases():
    sae = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=8, d_sae=16, lifted=True, variant="mixed"))
    optimizer = MuonWithAdamW(sae.parameters(), lr=0.02)
    assert len(optimizer.param_groups) == 2
    before = {name: p.detach().clone() for name, p in sae.named_parameters()}
    from sae_lens.saes.sae import TrainStepInput

    out = sae.training_forward_pass(
        TrainStepInput(torch.randn(32, 8), {"alpha": 0.1}, None, n_training_steps=1, is_logging_step=False)
    )
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    assert all(not torch.equal(before[name], p) for name, p in sae.named_parameters())
    assert all(p.grad is None for p in sae.parameters())
    state = optimizer.state_dict()
    loaded = MuonWithAdamW(sae.parameters(), lr=0.02)
    loaded.load_state_dict(state)
    # The wrapper's groups stay the inner optimisers' own (an LR scheduler edits them).
    assert loaded.param_groups[0] is loaded.muon.param_groups[0]
    assert loaded.param_groups[1] is loaded.adamw.param_groups[0]
    with pytest.raises(ValueError, match="not Muon's"):
        loaded.load_state_dict(torch.optim.Adam(sae.parameters()).state_dict())


def test_train_on_cached_activations_bilinear_and_linear_baseline():
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 4, generator=generator))[0]
    activations = (torch.randn(4096, 4, generator=generator) @ basis.T) * 10 + 0.01 * torch.randn(
        4096, 16, generator=generator
    )
    settings = TrainingSettings(steps=150, batch_size=256, lr=3e-3)
    sae = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=16, d_sae=64, lifted=True, alpha=0.0))
    before = sae.reconstruction_error(activations[:512]).mean().item()
    trainer = train_on_activations(sae, activations, settings)
    after = sae.reconstruction_error(activations[:512]).mean().item()
    assert after < 0.3 * before, (before, after)
    assert trainer.n_training_steps == 150
    baseline = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=16, d_sae=64, k=4))
    train_on_activations(baseline, activations, settings)
    explained = (
        1 - (baseline(activations) - activations).pow(2).sum() / (activations - activations.mean(0)).pow(2).sum()
    )
    assert explained > 0.5


def test_cached_batches_cover_every_token_each_epoch():
    activations = torch.arange(12.0).unsqueeze(-1).repeat(1, 3)
    batches = ShuffledBatches(activations, batch_size=4, seed=1)
    epoch = torch.cat([next(batches) for _ in range(3)])
    assert sorted(epoch[:, 0].tolist()) == list(range(12))
    with pytest.raises(ValueError, match="cached tokens"):
        ShuffledBatches(activations, batch_size=100)
    with pytest.raises(ValueError, match="expects d_in"):
        train_on_activations(
            BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=4, d_sae=8)),
            activations,
            TrainingSettings(steps=1, batch_size=4),
        )


def _raw_config(output_path, steps: int = 20, **top) -> dict:
    raw = runner_config(output_path, steps=steps).to_dict()
    raw.pop("checkpoint_path")  # the default: output_path/checkpoints
    raw["n_checkpoints"] = 1
    raw["dataset_trust_remote_code"] = False  # SAELens's to_dict writes its default, True
    return raw | top


@pytest.mark.parametrize(
    "edit,named,suggestion",
    [
        (lambda raw: raw.update(lrr=0.1), "'lrr'", "'lr'"),
        (lambda raw: raw["sae"].update(alhpa=0.2), "'alhpa'", "'alpha'"),
        (lambda raw: raw["logger"].update(log_to_wanbd=False), "'log_to_wanbd'", "'log_to_wandb'"),
        (lambda raw: raw.update(sae_bilinear={"optimiser": "muon"}), "'optimiser'", "'optimizer'"),
        (lambda raw: raw["sae"].update(architecture="bilinaer"), "bilinaer", "'bilinear'"),
    ],
)
def test_unknown_train_config_keys_are_named_with_a_suggestion(tmp_path, edit, named, suggestion):

    raw = _raw_config(tmp_path / "out")
    edit(raw)
    with pytest.raises(ConfigError, match=named) as error:
        runner_config_from_dict(raw)
    assert f"did you mean {suggestion}" in str(error.value)


@pytest.mark.parametrize(
    "edit,named",
    [
        (lambda raw: raw.update(dataset_trust_remote_code=True), "dataset_trust_remote_code"),
        (lambda raw: raw.update(model_from_pretrained_kwargs={"trust_remote_code": True}),
         "model_from_pretrained_kwargs.trust_remote_code"),
    ],
)
def test_remote_code_in_a_train_config_needs_an_explicit_flag(tmp_path, edit, named):

    raw = _raw_config(tmp_path / "out")
    edit(raw)
    with pytest.raises(ConfigError, match=named):
        runner_config_from_dict(raw)
    cfg, _ = runner_config_from_dict(raw, allow_remote_code=True)
    assert cfg.dataset_trust_remote_code or cfg.model_from_pretrained_kwargs["trust_remote_code"]


def test_train_configs_do_not_trust_remote_code_by_default(tmp_path):

    raw = _raw_config(tmp_path / "out")
    raw.pop("dataset_trust_remote_code")  # SAELens's own default is True
    cfg, extras = runner_config_from_dict(raw)
    assert cfg.dataset_trust_remote_code is False
    assert extras == {"optimizer": "adam", "ns_dtype": "auto"}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_train_twice_into_one_output_path_is_refused_unless_overwrite(tmp_path, tiny_model, token_dataset):
    from sae_bilinear.errors import OutputExistsError
    from sae_bilinear.train import train_from_config

    out = tmp_path / "out"
    raw = _raw_config(out)
    train_from_config(raw, override_model=tiny_model, override_dataset=token_dataset)
    first = (out / "sae_weights.safetensors").read_bytes()
    assert (out / "cfg.json").exists() and list((out / "checkpoints").iterdir())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left
    with pytest.raises(OutputExistsError, match=str(out)):
        train_from_config(raw, override_model=tiny_model, override_dataset=token_dataset)
    assert (out / "sae_weights.safetensors").read_bytes() == first
    (out / "stale.txt").write_text("from an older run")
    raw["sae"]["alpha"] = 0.2
    sae = train_from_config(raw, override_model=tiny_model, override_dataset=token_dataset, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert sae.cfg.alpha == 0.2 and json.loads((out / "runner_cfg.json").read_text())["sae"]["alpha"] == 0.2
    # A resume of the finished run trains nothing and returns the SAE on disk.
    again = train_from_config(raw, override_model=tiny_model, override_dataset=token_dataset, resume=True)
    torch.testing.assert_close(again.W_left, sae.W_left, rtol=0, atol=0)
