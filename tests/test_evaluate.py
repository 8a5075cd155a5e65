"""Splice evaluation on a toy transformer: CE ordering, exact SAEs, SAELens cross-checks, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

import sae_bilinear.evaluate as evaluate_module
from sae_bilinear import BilinearSAE, BilinearSAEConfig, UnliftedDecodeError, kernels
from sae_bilinear.bilinear import explained_variance
from sae_bilinear.evaluate import METRIC_KEYS, SpliceMetrics, evaluate_splice
from sae_bilinear.toy import TOY_HOOK, sample_tokens

torch.set_num_threads(1)
HOOK = TOY_HOOK


@pytest.fixture(scope="module")
def tokens(toy):
    return sample_tokens(toy[0], 12, 32, seed=123)


def exact_sae(d: int, hook: str = HOOK) -> BilinearSAE:
    """Lifted SAE with one latent per pair (a, b) of lifted coordinates: X̂ = ũ⊗ũ, so x̂ = x."""
    n = d + 1
    sae = BilinearSAE(BilinearSAEConfig(d_in=d, d_sae=n * n, lifted=True, metadata=SAEMetadata(hook_name=hook)))
    eye = torch.eye(n)
    pairs = torch.cartesian_prod(torch.arange(n), torch.arange(n))
    with torch.no_grad():
        sae.b_left.copy_(eye[pairs[:, 0], 0])
        sae.W_left.copy_(eye[pairs[:, 0], 1:])
        sae.b_right.copy_(eye[pairs[:, 1], 0])
        sae.W_right.copy_(eye[pairs[:, 1], 1:])
    return sae


def linear_sae(kind: str, d: int, d_sae: int = 64) -> StandardSAE | TopKSAE:
    metadata = SAEMetadata(hook_name=HOOK)
    if kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=d, d_sae=d_sae, k=8, metadata=metadata))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=d, d_sae=d_sae, metadata=metadata))
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_(0, 0.2)
    return sae


def hooks_left(model) -> int:
    return sum(len(point._forward_hooks) for point in model.hook_dict.values())


def test_trained_sae_orders_the_losses(toy, tokens):
    model, sae = toy
    metrics = evaluate_splice(model, sae, tokens, batch_size=5, progress=False)
    assert isinstance(metrics, SpliceMetrics)
    assert metrics.ce_clean <= metrics.ce_spliced <= metrics.ce_zero_ablated
    assert metrics.ce_clean < metrics.ce_mean_ablated
    assert 0.0 <= metrics.ce_loss_recovered <= 1.0
    assert metrics.kl >= 0.0
    assert 0.5 < metrics.explained_variance <= 1.0
    assert 0.0 <= metrics.reconstruction_error < 0.5
    assert 0.0 <= metrics.hoyer_density <= 1.0
    assert 0.0 <= metrics.dead_fraction <= 1.0
    assert 0.0 < metrics.l0 <= sae.cfg.d_sae
    assert metrics.n_tokens == tokens.numel()
    recovered = (metrics.ce_zero_ablated - metrics.ce_spliced) / (metrics.ce_zero_ablated - metrics.ce_clean)
    assert metrics.ce_loss_recovered == pytest.approx(recovered)
    assert hooks_left(model) == 0


def test_to_dict_has_exactly_the_documented_keys_and_is_json(toy, tokens):
    model, sae = toy
    result = evaluate_splice(model, sae, tokens[:2], progress=False).to_dict()
    assert list(result) == list(METRIC_KEYS)
    assert set(result) == {
        "ce_clean", "ce_spliced", "ce_zero_ablated", "ce_mean_ablated", "ce_loss_recovered", "kl",
        "explained_variance", "reconstruction_error", "hoyer_density", "l0", "dead_fraction", "n_tokens",
    }  # fmt: skip
    json.loads(json.dumps(result, allow_nan=False))


def test_exact_sae_splices_without_cost(toy, tokens):
    model, _ = toy
    metrics = evaluate_splice(model, exact_sae(model.cfg.d_model), tokens[:4], progress=False)
    assert metrics.ce_spliced == pytest.approx(metrics.ce_clean, abs=1e-4)
    assert metrics.ce_loss_recovered == pytest.approx(1.0, abs=1e-4)
    assert metrics.kl == pytest.approx(0.0, abs=1e-5)
    assert metrics.explained_variance == pytest.approx(1.0, abs=1e-5)
    assert metrics.reconstruction_error == pytest.approx(0.0, abs=1e-5)


def test_batching_does_not_change_the_metrics(toy, tokens):
    model, sae = toy
    one = evaluate_splice(model, sae, tokens, batch_size=len(tokens), progress=False).to_dict()
    many = evaluate_splice(model, sae, tokens, batch_size=5, progress=False).to_dict()
    for key in METRIC_KEYS:
        assert many[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key


def test_matches_hooked_sae_transformer_and_direct_computation(toy, tokens):
    """ce_spliced = run_with_saes; mean-ablation, EV, Hoyer, L0, dead from first principles."""
    model, sae = toy
    batch = tokens[:6]
    metrics = evaluate_splice(model, sae, batch, progress=False)
    with torch.no_grad():
        spliced = model.run_with_saes(batch, saes=[sae], return_type="loss")
        clean, cache = model.run_with_cache(batch, names_filter=HOOK, return_type="loss")
        x = cache[HOOK].reshape(-1, model.cfg.d_model)
        mean = x.mean(0)
        mean_ablated = model.run_with_hooks(
            batch, return_type="loss", fwd_hooks=[(HOOK, lambda a, hook: mean.expand_as(a))]
        )
        f = sae.encode(x)
        x_hat = sae.decode(f)
        active = sae.active_latents(f)
    assert not model.acts_to_saes
    assert metrics.ce_spliced == pytest.approx(float(spliced), rel=1e-5)
    assert metrics.ce_clean == pytest.approx(float(clean), rel=1e-5)
    assert metrics.ce_mean_ablated == pytest.approx(float(mean_ablated), rel=1e-5)
    assert metrics.explained_variance == pytest.approx(float(explained_variance(x, x_hat)), rel=1e-4)
    assert metrics.hoyer_density == pytest.approx(float(kernels.hoyer_density(f).mean()), rel=1e-5)
    assert metrics.l0 == pytest.approx(float(active.float().sum(-1).mean()), rel=1e-6)
    assert metrics.dead_fraction == pytest.approx(float((~active.any(0)).float().mean()))
    with torch.no_grad():
        error = sae.reconstruction_error(x).mean()
    assert metrics.reconstruction_error == pytest.approx(float(error), rel=1e-5)


def test_given_mean_activation_is_used(toy, tokens):
    model, sae = toy
    zero = torch.zeros(model.cfg.d_model)
    metrics = evaluate_splice(model, sae, tokens[:3], mean_activation=zero, progress=False)
    assert metrics.ce_mean_ablated == pytest.approx(metrics.ce_zero_ablated, rel=1e-6)


def test_ignored_tokens_are_not_counted(toy, tokens):
    model, sae = toy
    batch = tokens[:4]
    ignored = int(batch[0, 0])
    metrics = evaluate_splice(model, sae, batch, ignore_tokens=[ignored], progress=False)
    assert metrics.n_tokens == int((batch != ignored).sum())
    assert metrics.ce_clean <= metrics.ce_spliced <= metrics.ce_zero_ablated


@pytest.mark.parametrize("kind", ["standard", "topk"])
def test_linear_baselines_use_the_same_function(toy, tokens, kind):
    model, _ = toy
    sae = linear_sae(kind, model.cfg.d_model)
    metrics = evaluate_splice(model, sae, tokens[:4], progress=False)
    result = metrics.to_dict()
    assert result["reconstruction_error"] is None  # no x⊗x reconstruction in a linear SAE
    for key in METRIC_KEYS:
        if key != "reconstruction_error" and result[key] is not None:
            assert math.isfinite(result[key]), key
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[:4], names_filter=HOOK)
        f = sae.encode(cache[HOOK].reshape(-1, model.cfg.d_model))
    assert metrics.l0 == pytest.approx(float((f != 0).float().sum(-1).mean()))
    if kind == "topk":
        assert metrics.l0 == pytest.approx(8.0)


# ------------------------------------------------------------------------------------------
# bad input: clear errors before any forward pass over the data
# ------------------------------------------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the evaluation started before the input was checked")

    monkeypatch.setattr(evaluate_module, "get_recons_loss", fail)


def test_hook_the_model_lacks(toy, tokens, no_work):
    model, sae = toy
    with pytest.raises(ValueError, match=r"has no hook 'blocks\.7\.hook_resid_pre'"):
        evaluate_splice(model, sae, tokens, hook_name="blocks.7.hook_resid_pre", progress=False)


def test_sae_without_hook_metadata(toy, tokens, no_work):
    model, _ = toy
    sae = BilinearSAE(BilinearSAEConfig(d_in=model.cfg.d_model, d_sae=8, lifted=True))
    with pytest.raises(ValueError, match="names no hook point"):
        evaluate_splice(model, sae, tokens, progress=False)


def test_d_in_mismatch(toy, tokens, no_work):
    model, _ = toy
    sae = BilinearSAE(BilinearSAEConfig(d_in=16, d_sae=8, lifted=True, metadata=SAEMetadata(hook_name=HOOK)))
    with pytest.raises(ValueError, match=r"d_in=16 .* has 32"):
        evaluate_splice(model, sae, tokens, progress=False)


def test_unlifted_sae_cannot_be_spliced(toy, tokens, no_work):
    model, _ = toy
    sae = BilinearSAE(BilinearSAEConfig(d_in=model.cfg.d_model, d_sae=8, metadata=SAEMetadata(hook_name=HOOK)))
    with pytest.raises(UnliftedDecodeError, match="unlifted"):
        evaluate_splice(model, sae, tokens, progress=False)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (torch.zeros(0, 8, dtype=torch.long), ValueError, "empty"),
        (torch.zeros(3, 0, dtype=torch.long), ValueError, "empty"),
        (torch.zeros(3, 1, dtype=torch.long), ValueError, "at least 2"),
        (torch.zeros(2, 40, dtype=torch.long), ValueError, "exceeds the model's context"),
        (torch.full((2, 8), 64), ValueError, r"d_vocab=64"),
        (torch.zeros(2, 8), TypeError, "integer token ids"),
    ],
)
def test_bad_tokens(toy, no_work, bad, error, message):
    model, sae = toy
    with pytest.raises(error, match=message):
        evaluate_splice(model, sae, bad, progress=False)


def test_attached_sae_is_refused(toy, tokens, no_work):
    model, sae = toy
    with model.saes(saes=[sae]):
        with pytest.raises(ValueError, match="already attached"):
            evaluate_splice(model, sae, tokens, progress=False)


def test_hooks_are_removed_when_the_evaluation_raises(toy, tokens, monkeypatch):
    model, sae = toy
    calls = {"n": 0}
    original = sae.encode

    def broken(x):
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("boom")
        return original(x)

    monkeypatch.setattr(sae, "encode", broken)
    with pytest.raises(RuntimeError, match="boom"):
        evaluate_splice(model, sae, tokens, batch_size=2, progress=False)
    assert hooks_left(model) == 0
    assert len(model.hook_dict[HOOK]._forward_hooks) == 0
