"""BilinearSAE / BilinearTrainingSAE inside SAELens: configs, encode/decode, save/load, folds."""

from __future__ import annotations

import inspect
import json
import re

import pytest
import torch
from helpers import exact_lifted_sae
from sae_lens import SAE
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
from sae_lens.saes.sae import TrainCoefficientConfig, TrainingSAE, TrainStepInput

import sae_bilinear
from sae_bilinear import (
    BilinearSAE,
    BilinearSAEConfig,
    BilinearTrainingSAE,
    BilinearTrainingSAEConfig,
    UnliftedDecodeError,
    kernels,
)
from sae_bilinear.bilinear_config import BilinearFields
from sae_bilinear.errors import ConfigError


def step_input(x: torch.Tensor, step: int = 0, alpha: float = 0.1, dead=None) -> TrainStepInput:
    return TrainStepInput(
        sae_in=x, coefficients={"alpha": alpha}, dead_neuron_mask=dead, n_training_steps=step, is_logging_step=False
    )


def test_registration_is_idempotent():
    sae_bilinear.register()
    sae_bilinear.register()
    assert SAE_CLASS_REGISTRY["bilinear"] == (BilinearSAE, BilinearSAEConfig)
    assert SAE_TRAINING_CLASS_REGISTRY["bilinear"] == (BilinearTrainingSAE, BilinearTrainingSAEConfig)


@pytest.mark.parametrize("variant", kernels.VARIANTS)
@pytest.mark.parametrize("lifted", [False, True])
def test_parameters_follow_the_public_contract(variant, lifted):
    sae = BilinearSAE(BilinearSAEConfig(d_in=8, d_sae=24, variant=variant, lifted=lifted))
    names = dict(sae.named_parameters())
    expected = {"W_left": (24, 8), "W_right": (24, 8)}
    if lifted:
        expected |= {"b_left": (24,), "b_right": (24,)}
    if kernels.is_mixed(variant):
        expected["W_down"] = (16, 24)  # bottleneck defaults to 2 * d_in
    assert {k: tuple(v.shape) for k, v in names.items()} == expected


def test_init_is_orthogonal():
    sae = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=16, d_sae=64))
    # F > d: orthonormal columns.
    torch.testing.assert_close(sae.W_left.T @ sae.W_left, torch.eye(16), atol=1e-5, rtol=0)
    small = BilinearSAE(BilinearSAEConfig(d_in=16, d_sae=8))
    torch.testing.assert_close(small.W_right @ small.W_right.T, torch.eye(8), atol=1e-5, rtol=0)


def test_decode_of_exact_reconstruction_returns_x():
    sae = exact_lifted_sae(5)
    x = torch.randn(2, 7, 5) * 40
    f = sae.encode(x)
    assert sae.reconstruction_error(x).abs().max().item() < 1e-6
    torch.testing.assert_close(sae.decode(f), x, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sae(x), x, rtol=1e-5, atol=1e-4)
    # Explicit norms work too, and a batch that was not encoded is refused.
    torch.testing.assert_close(sae.decode(f, input_norm=x.norm(dim=-1)), x, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="call encode"):
        sae.decode(f[0])


def test_unlifted_decode_is_a_clear_error():
    sae = BilinearSAE(BilinearSAEConfig(d_in=4, d_sae=8))
    x = torch.randn(3, 4)
    f = sae.encode(x)
    with pytest.raises(UnliftedDecodeError, match="lifted=True"):
        sae.decode(f)
    # The analysis path still works, and f(-x) = f(x) is why decoding cannot.
    assert sae.reconstruction_error(x).shape == (3,)
    torch.testing.assert_close(sae.encode(-x), f)


@pytest.mark.parametrize("variant", kernels.VARIANTS)
def test_reconstruction_error_is_the_full_kernel_error(variant):
    sae = BilinearSAE(BilinearSAEConfig(d_in=6, d_sae=10, variant=variant, lifted=True, dtype="float64"))
    x = torch.randn(4, 6, dtype=torch.float64)
    u = torch.cat([torch.ones(4, 1, dtype=torch.float64), x / x.norm(dim=-1, keepdim=True)], -1)
    L = torch.cat([sae.b_left[:, None], sae.W_left], -1).detach()
    R = torch.cat([sae.b_right[:, None], sae.W_right], -1).detach()
    f = (u @ L.T) * (u @ R.T)
    g = sae.coefficients(f).detach()
    X = torch.einsum("bi,bj->bij", u, u)
    X_hat = torch.einsum("bf,fi,fj->bij", g, L, R)
    expected = (X - X_hat).pow(2).sum((-1, -2)) / 4.0
    torch.testing.assert_close(sae.reconstruction_error(x).detach(), expected, rtol=1e-10, atol=0)


def test_topk_keeps_k_latents_by_magnitude():
    sae = BilinearSAE(BilinearSAEConfig(d_in=8, d_sae=32, sparsity="topk", k=5))
    x = torch.randn(6, 8)
    f = sae.encode(x)
    assert ((f != 0).sum(-1) == 5).all()
    dense = sae.encode_with_hidden_pre(x)[1]
    # The kept ones are the largest |f| (negative latents included).
    threshold = dense.abs().topk(5, dim=-1).values[:, -1:]
    assert ((f != 0) == (dense.abs() >= threshold)).all()


def test_invalid_tokens_give_zero_latents_and_no_nan():
    sae = BilinearSAE(BilinearSAEConfig(d_in=4, d_sae=8, lifted=True))
    x = torch.randn(4, 4)
    x[1] = 0
    x[2, 3] = float("nan")
    f = sae.encode(x)
    assert torch.isfinite(f).all() and f[1].abs().sum() == 0 and f[2].abs().sum() == 0
    out = sae.decode(f)
    assert torch.isfinite(out).all()
    assert torch.isfinite(sae.reconstruction_error(x)).all()


def test_save_and_load_round_trip(tmp_path):
    sae = BilinearSAE(BilinearSAEConfig(d_in=8, d_sae=16, variant="combined", lifted=True, bottleneck=5))
    sae.cfg.metadata.hook_name = "blocks.1.hook_resid_pre"
    sae.save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "bilinear" and cfg["variant"] == "combined" and cfg["bottleneck"] == 5
    loaded = SAE.load_from_disk(tmp_path)
    assert isinstance(loaded, BilinearSAE)
    x = torch.randn(3, 8)
    torch.testing.assert_close(loaded(x), sae(x), rtol=0, atol=0)
    # A training SAE loads the inference folder too (SAELens fine-tuning path).
    training = TrainingSAE.load_from_disk(tmp_path)
    assert isinstance(training, BilinearTrainingSAE)
    torch.testing.assert_close(training.encode(x), sae.encode(x), rtol=0, atol=0)


def test_training_sae_saves_inference_folder(tmp_path):
    sae = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=6, d_sae=12, lifted=True, alpha=0.3))
    sae.save_inference_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert "alpha" not in cfg and cfg["metadata"]["training_architecture_details"]["alpha"] == 0.3
    loaded = SAE.load_from_disk(tmp_path)
    x = torch.randn(2, 6)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x))


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"variant": "quadratic"}, "unknown bilinear variant"),
        ({"variant": "vanilla", "bottleneck": 4}, "only used by the mixed"),
        ({"sparsity": "topk"}, "needs k"),
        ({"sparsity": "topk", "k": 99}, "needs k"),
        ({"k": 3}, "only used with sparsity='topk'"),
        ({"sparsity": "l1"}, "sparsity must be"),
        ({"apply_b_dec_to_input": True}, "no b_dec"),
        ({"normalize_activations": "covariance_whitening"}, "cannot be folded"),
        ({"activity_threshold": 0.0}, "activity_threshold"),
        ({"bilinear_format_version": 99}, "newer sae-bilinear"),
        ({"d_sae": 0}, "d_sae must be a positive"),
    ],
)
@pytest.mark.parametrize("cfg_cls", [BilinearSAEConfig, BilinearTrainingSAEConfig])
def test_bad_config_is_a_clear_error(cfg_cls, kwargs, message):
    base = {"d_in": 8, "d_sae": 16}
    with pytest.raises(ValueError, match=message):
        cfg_cls(**(base | kwargs))


def test_missing_d_sae_is_a_clear_error():
    with pytest.raises(TypeError, match="d_sae"):
        BilinearSAEConfig(d_in=8)  # pyright: ignore[reportCallIssue]
    with pytest.raises(TypeError, match="d_sae"):
        BilinearTrainingSAEConfig(d_in=8)  # pyright: ignore[reportCallIssue]


def test_config_from_a_newer_version_is_refused_on_load(tmp_path):
    sae = BilinearSAE(BilinearSAEConfig(d_in=4, d_sae=8))
    sae.save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["bilinear_format_version"] = sae_bilinear.bilinear.FORMAT_VERSION + 1
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="newer sae-bilinear"):
        SAE.load_from_disk(tmp_path)


def test_bad_inputs_are_clear_errors():
    sae = BilinearSAE(BilinearSAEConfig(d_in=8, d_sae=16))
    with pytest.raises(ValueError, match="d_in=8"):
        sae.encode(torch.randn(3, 7))
    with pytest.raises(TypeError, match="floating-point"):
        sae.encode(torch.ones(3, 8, dtype=torch.int64))
    with pytest.raises(AttributeError, match="no W_enc"):
        _ = sae.W_enc
    with pytest.raises(NotImplementedError, match="no W_dec"):
        sae.fold_W_dec_norm()
    with pytest.raises(NotImplementedError, match="whitening"):
        sae.fold_activation_whitening(torch.zeros(8), torch.eye(8), torch.eye(8))


def test_activation_norm_scaling_fold_is_exact():
    sae = BilinearSAE(
        BilinearSAEConfig(d_in=6, d_sae=12, lifted=True, normalize_activations="expected_average_only_in")
    )
    x = torch.randn(5, 6) * 300
    s = 0.01
    # Trained on s·x, its outputs are at that scale; after folding it takes raw x.
    scaled_out = sae(x * s) / s
    latents = sae.encode(x * s)
    sae.fold_activation_norm_scaling_factor(s)
    assert sae.cfg.normalize_activations == "none"
    torch.testing.assert_close(sae(x), scaled_out, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sae.encode(x), latents)


def test_training_forward_pass_loss_and_firing_counts():
    cfg = BilinearTrainingSAEConfig(d_in=8, d_sae=32, variant="ordered", lifted=True, alpha=0.5)
    sae = BilinearTrainingSAE(cfg)
    x = torch.randn(20, 8) * 5
    x[3] = 0
    out = sae.training_forward_pass(step_input(x, alpha=0.25))
    tokens = kernels.unit_tokens(x)
    sparse, dense = sae.encode_with_hidden_pre(x)
    objective = kernels.kernel_error(
        dense, dense, sae.W_left, sae.W_right, sae.b_left, sae.b_right, tokens.valid, ordered=True
    ).error
    expected_error = objective[tokens.valid].mean()
    expected_density = kernels.density(sparse, tokens.valid, ordered=True)
    torch.testing.assert_close(out.losses["reconstruction_error"], expected_error)
    torch.testing.assert_close(out.loss, expected_error + 0.25 * expected_density)
    # feature_acts carry only latents above the activity threshold, and none on masked tokens.
    assert (out.feature_acts[3] == 0).all()
    assert ((out.feature_acts != 0) == (sae.active_latents(sparse) & tokens.valid[:, None])).all()
    # The full-X̂ error (logged) differs from the prefix-averaged objective.
    # A lazy metric: SAELens calls callables in metrics when it logs them.
    full = out.metrics["reconstruction_error"]()  # pyright: ignore[reportCallIssue]
    torch.testing.assert_close(full, sae.reconstruction_error(x)[tokens.valid].mean())
    assert torch.isfinite(out.sae_out).all()
    assert sae.history and sae.history[0]["step"] == 0.0
    assert {"loss", "reconstruction_error", "hoyer_density", "alpha", "explained_variance"} <= set(sae.history[0])


def test_unlifted_training_reports_no_activation_space_output():
    sae = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=8, d_sae=16))
    out = sae.training_forward_pass(step_input(torch.randn(4, 8)))
    assert torch.isnan(out.sae_out).all()
    assert "explained_variance" not in sae.history[0]
    out.loss.backward()
    assert torch.isfinite(sae.W_left.grad).all()


def test_alpha_warm_up_is_a_sae_lens_coefficient():
    sae = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=4, d_sae=8, alpha=0.7, alpha_warm_up_steps=100))
    coefficient = sae.get_coefficients()["alpha"]
    assert isinstance(coefficient, TrainCoefficientConfig)
    assert coefficient.value == 0.7 and coefficient.warm_up_steps == 100


def test_default_alpha_warm_up_is_a_quarter_of_the_run():
    assert sae_bilinear.default_alpha_warm_up_steps(1024) == 256  # the authors' 256 of 1024
    assert sae_bilinear.default_alpha_warm_up_steps(3) == 1  # at least one step
    for bad in (0, -4, 2.0, True, "100"):
        with pytest.raises(ConfigError, match="total_steps"):
            sae_bilinear.default_alpha_warm_up_steps(bad)


def test_kernel_knobs_are_documented_config_fields(tmp_path):

    sae = BilinearSAE(BilinearSAEConfig(d_in=4, d_sae=8, kernel_backward="autograd", kernel_tile_size=4))
    assert (sae.kernel_backward, sae.kernel_tile_size, sae.sparse_kernel) == ("autograd", 4, True)
    sae.sparse_kernel = False  # the model attribute writes the config field
    assert sae.cfg.sparse_kernel is False
    with pytest.raises(ConfigError, match="kernel_backward"):
        sae.kernel_backward = "magic"
    assert sae.cfg.kernel_backward == "autograd"  # a refused value leaves the old one
    sae.save_model(tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["kernel_tile_size"] == 4
    # Every field carries an attribute docstring (the CLI shows them as --help).
    source = inspect.getsource(BilinearFields)
    for name in ("kernel_backward", "kernel_tile_size", "kernel_memory_budget", "sparse_kernel", "variant", "k"):
        assert re.search(rf"\n    {name}: [^\n]+\n    \"\"\"", source), name


@pytest.mark.parametrize("lifted", [False, True])
def test_activity_threshold_means_the_same_lifted_or_not(lifted):
    """Every latent reaches 99.9 % of its peak on some unit token: the peak is a maximum, not
    a bound (the old lifted bound ||ũ||²·||Q̃||₂ was about twice what tokens reach)."""
    sae = BilinearSAE(BilinearSAEConfig(d_in=2, d_sae=12, lifted=lifted, activity_threshold=0.999))
    if lifted:
        with torch.no_grad():
            sae.b_left.copy_(torch.linspace(-1.5, 1.5, 12))
            sae.b_right.copy_(torch.linspace(0.8, -0.4, 12))
    theta = torch.linspace(0, 2 * torch.pi, 20001)
    f = sae.encode(3.0 * torch.stack([theta.cos(), theta.sin()], -1))
    assert sae.active_latents(f).any(0).all()
    assert (f.abs() <= sae.latent_peak() * (1 + 1e-5)).all()
