"""Hostile inputs to the model (issue 13): every bad value is refused by name, nothing is silently wrong.

Table-driven: each case asserts the exception type and that the message names the field or
argument at fault.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import exact_lifted_sae
from sae_lens import SAE

from sae_bilinear import BilinearSAE, BilinearSAEConfig, BilinearTrainingSAEConfig, SAEInputError
from sae_bilinear.errors import ConfigError, UserError

BASE = {"d_in": 8, "d_sae": 16}

# (field overrides, text the message must contain)
BAD_FIELDS = [
    ({"d_in": True}, "d_in"),
    ({"d_in": 8.0}, "d_in"),
    ({"d_in": "8"}, "d_in"),
    ({"d_in": 0}, "d_in"),
    ({"d_sae": False}, "d_sae"),
    ({"d_sae": -3}, "d_sae"),
    ({"lifted": "false"}, "lifted"),
    ({"lifted": 1}, "lifted"),
    ({"lifted": None}, "lifted"),
    ({"variant": 3}, "variant"),
    ({"variant": "Vanilla"}, "variant"),
    ({"variant": "mixed", "bottleneck": 0}, "bottleneck"),
    ({"variant": "mixed", "bottleneck": 4.0}, "bottleneck"),
    ({"variant": "mixed", "bottleneck": True}, "bottleneck"),
    ({"sparsity": "l1"}, "sparsity"),
    ({"sparsity": "topk", "k": 2.0}, "k"),
    ({"sparsity": "topk", "k": True}, "k"),
    ({"sparsity": "topk", "k": 0}, "k"),
    ({"sparsity": "topk", "k": 17}, "k"),
    ({"activity_threshold": float("nan")}, "activity_threshold"),
    ({"activity_threshold": float("inf")}, "activity_threshold"),
    ({"activity_threshold": 1.0}, "activity_threshold"),
    ({"activity_threshold": "0.1"}, "activity_threshold"),
    ({"activity_threshold": True}, "activity_threshold"),
    ({"bilinear_format_version": 0}, "bilinear_format_version"),
    ({"bilinear_format_version": "1"}, "bilinear_format_version"),
    ({"apply_b_dec_to_input": "false"}, "apply_b_dec_to_input"),
    ({"kernel_backward": "magic"}, "kernel_backward"),
    ({"kernel_tile_size": 0}, "kernel_tile_size"),
    ({"kernel_tile_size": 64.0}, "kernel_tile_size"),
    ({"kernel_memory_budget": -1}, "kernel_memory_budget"),
    ({"sparse_kernel": "yes"}, "sparse_kernel"),
    ({"dtype": "float8"}, "dtype"),
    ({"dtype": torch.float32}, "dtype"),
    ({"device": "gpu"}, "device"),
    ({"device": ""}, "device"),
    ({"normalize_activations": "layer_norm"}, "normalize_activations"),
    ({"normalize_activations": "constant_norm_rescale"}, "normalize_activations"),
    ({"normalize_activations": "sometimes"}, "normalize_activations"),
    ({"reshape_activations": "hook_q"}, "reshape_activations"),
]

BAD_TRAINING_FIELDS = [
    ({"alpha": float("nan")}, "alpha"),
    ({"alpha": float("inf")}, "alpha"),
    ({"alpha": -0.1}, "alpha"),
    ({"alpha": "0.1"}, "alpha"),
    ({"alpha_warm_up_steps": -1}, "alpha_warm_up_steps"),
    ({"alpha_warm_up_steps": 2.5}, "alpha_warm_up_steps"),
    ({"init_scale": float("nan")}, "init_scale"),
    ({"init_scale": 0.0}, "init_scale"),
    ({"init_scale": -1.0}, "init_scale"),
    ({"decoder_init_norm": 0.1}, "decoder_init_norm"),
]


@pytest.mark.parametrize("overrides,field", BAD_FIELDS)
@pytest.mark.parametrize("cfg_cls", [BilinearSAEConfig, BilinearTrainingSAEConfig])
def test_bad_config_field_is_refused_by_name(cfg_cls, overrides, field):
    with pytest.raises(ConfigError, match=field) as caught:
        cfg_cls(**(BASE | overrides))
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("overrides,field", BAD_TRAINING_FIELDS)
def test_bad_training_field_is_refused_by_name(overrides, field):
    with pytest.raises(ConfigError, match=field):
        BilinearTrainingSAEConfig(**(BASE | overrides))


def test_good_values_pass_and_are_normalised():
    import numpy as np

    cfg = BilinearTrainingSAEConfig(d_in=np.int64(8), d_sae=16, alpha=1, sparsity="topk", k=np.int32(3))
    assert type(cfg.d_in) is int and type(cfg.k) is int and type(cfg.alpha) is float
    assert BilinearSAEConfig(d_in=8, d_sae=16, variant="mixed").bottleneck == 16  # 2 * d_in


@pytest.mark.parametrize(
    "key,value",
    [("lifted", "false"), ("d_in", True), ("k", 2.0), ("activity_threshold", float("nan")), ("variant", "Mixed")],
)
def test_a_cfg_json_with_a_bad_value_is_refused_on_load(tmp_path, key, value):
    sae = BilinearSAE(BilinearSAEConfig(d_in=8, d_sae=16, sparsity="topk", k=2))
    sae.save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg[key] = value
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=key):
        SAE.load_from_disk(tmp_path)


@pytest.mark.parametrize(
    "edit,field",
    [({"d_in": 4}, "d_in"), ({"d_sae": 8}, "d_sae"), ({"bottleneck": 5}, "bottleneck")],
)
def test_weights_that_disagree_with_cfg_json_name_the_dimension(tmp_path, edit, field):
    sae = BilinearSAE(BilinearSAEConfig(d_in=8, d_sae=16, variant="mixed", bottleneck=6))
    sae.save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg.update(edit)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=field):
        SAE.load_from_disk(tmp_path)


def lifted_sae(**kwargs) -> BilinearSAE:
    return BilinearSAE(BilinearSAEConfig(d_in=8, d_sae=16, lifted=True, **kwargs))


@pytest.mark.parametrize(
    "call,exception,text",
    [
        (lambda sae: sae.encode(torch.tensor(1.0)), SAEInputError, "0-d"),
        (lambda sae: sae.encode(torch.randn(3, 7)), SAEInputError, "d_in=8"),
        (lambda sae: sae.encode(torch.ones(3, 8, dtype=torch.int64)), TypeError, "floating-point"),
        (lambda sae: sae.encode([[0.0] * 8]), TypeError, "torch.Tensor"),
        (lambda sae: sae.reconstruction_error(torch.tensor(2.0)), SAEInputError, "0-d"),
        (lambda sae: sae.decode(torch.randn(3, 16)), SAEInputError, "input_norm"),
        (lambda sae: sae.decode(torch.randn(3, 12), input_norm=torch.ones(3)), SAEInputError, "d_sae=16"),
        (lambda sae: sae.decode(torch.randn(3, 16), input_norm=torch.ones(4)), SAEInputError, "input_norm"),
        (lambda sae: sae.decode(torch.randn(3, 16), input_norm=torch.ones(3, 1)), SAEInputError, "input_norm"),
        (
            lambda sae: sae.decode(torch.randn(3, 16), input_norm=torch.ones(3, dtype=torch.long)),
            SAEInputError,
            "input_norm",
        ),
        (lambda sae: sae.decode(torch.tensor(1.0), input_norm=torch.ones(())), SAEInputError, "feature_acts"),
        (
            lambda sae: sae.decode(torch.randn(3, 16), input_norm=torch.tensor([1.0, math.nan, 1.0])),
            SAEInputError,
            "input_norm",
        ),
        (lambda sae: sae.decode(torch.randn(3, 16), input_norm=-torch.ones(3)), SAEInputError, "input_norm"),
        (lambda sae: sae.active_latents(torch.randn(2, 5)), SAEInputError, "d_sae=16"),
        (lambda sae: sae.encoded_norms(torch.randn(2, 16)), SAEInputError, "token_norms"),
    ],
)
def test_bad_tensors_are_clear_errors(call, exception, text):
    with pytest.raises(exception, match=text) as caught:
        call(lifted_sae())
    assert isinstance(caught.value, UserError)


def test_mixed_latents_of_the_wrong_width_blame_d_sae_not_W_down():
    sae = BilinearSAE(BilinearSAEConfig(d_in=8, d_sae=16, variant="mixed", lifted=True))
    with pytest.raises(SAEInputError, match="d_sae=16") as caught:
        sae.decode(torch.randn(3, 12), input_norm=torch.ones(3))
    assert "W_down" not in str(caught.value)
    with pytest.raises(SAEInputError, match="d_sae=16"):
        sae.coefficients(torch.randn(3, 12))


# --- decode uses the norms of the very latents encode returned ---------------------------------


def test_decode_of_earlier_latents_uses_their_own_norms():
    sae = exact_lifted_sae(4)
    x1, x2 = torch.randn(3, 4) * 10, torch.randn(3, 4) * 1000
    f1 = sae.encode(x1)
    f2 = sae.encode(x2)  # same shape: the old code decoded f1 with x2's norms
    torch.testing.assert_close(sae.decode(f1), x1, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sae.decode(f2), x2, rtol=1e-5, atol=1e-2)
    f1[:, 0] = f1[:, 0]  # an in-place edit keeps the tensor, hence its norms
    torch.testing.assert_close(sae.decode(f1), x1, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "derive",
    [lambda f: f.clone(), lambda f: f[:2], lambda f: f * 1.0, lambda f: f.detach().clone().requires_grad_(False)],
)
def test_decode_of_latents_encode_did_not_return_is_refused(derive):
    sae = exact_lifted_sae(4)
    x = torch.randn(3, 4)
    f = sae.encode(x)
    with pytest.raises(SAEInputError, match="input_norm"):
        sae.decode(derive(f))
    # The way to decode an edit: the norms of the latents it was made from.
    edited = f.clone()
    torch.testing.assert_close(sae.decode(edited, input_norm=sae.encoded_norms(f)), x, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(sae.decode(edited, input_norm=sae.token_norms(x)), x, rtol=1e-5, atol=1e-4)


def test_norms_are_forgotten_after_forward_and_when_the_latents_die():
    sae = exact_lifted_sae(4)
    kept = []
    sae.hook_sae_acts_post.add_hook(lambda tensor, hook: kept.append(tensor))
    x = torch.randn(3, 4)
    torch.testing.assert_close(sae(x), x, rtol=1e-5, atol=1e-4)
    assert len(kept) == 1 and len(sae._encoded) == 0  # cleared after forward
    with pytest.raises(SAEInputError, match="input_norm"):
        sae.decode(kept[0])
    sae.reset_hooks()
    f = sae.encode(x)
    assert len(sae._encoded) == 1  # post and pre are one tensor without TopK
    del f
    assert len(sae._encoded) == 0  # weak: gone with the latents


# --- precision: no overflow, no underflow, no fp16 casts of the norm ---------------------------


@pytest.mark.parametrize("scale", [1e20, 1e-30, 1e30])
def test_extreme_float32_inputs_round_trip(scale):
    sae = exact_lifted_sae(4)
    x = torch.randn(5, 4) * scale
    out = sae.decode(sae.encode(x))
    assert torch.isfinite(out).all() and (out != 0).all()
    torch.testing.assert_close(out / scale, x / scale, rtol=1e-5, atol=1e-5)
    # Latents depend on the direction only, whatever the scale.
    torch.testing.assert_close(sae.encode(x), sae.encode(x / scale), rtol=1e-5, atol=1e-6)


def test_fp16_sae_takes_float32_activations_above_65504():
    half = exact_lifted_sae(4, dtype="float16")
    full = exact_lifted_sae(4)
    x = torch.randn(6, 4) * 1e5
    x[0] = torch.tensor([7e4, 0.0, 0.0, 0.0])  # one entry above float16's range
    f16 = half.encode(x)
    assert f16.dtype == torch.float16 and torch.isfinite(f16).all()
    torch.testing.assert_close(f16.float(), full.encode(x), rtol=2e-3, atol=2e-3)
    out = half.decode(f16)
    assert out.dtype == torch.float32  # the wider of the SAE's and the input's dtypes
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, x, rtol=2e-3, atol=0.0)
    assert half.reconstruction_error(x).abs().max() < 1e-2  # not masked: scored like any token


def test_fp16_decode_that_cannot_fit_is_an_error_not_inf():
    half = exact_lifted_sae(4, dtype="float16")
    x = torch.full((2, 4), 1e4, dtype=torch.float16)
    f = half.encode(x)
    out = half.decode(f)  # float16 in, float16 out, and it fits
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    # Latents scaled ×8 (an edit) with float16 norms: x̂ = 8x would need 8e4 > 65504.
    with pytest.raises(SAEInputError, match="float16"):
        half.decode(f * 8, input_norm=half.encoded_norms(f).half())
    # A norm that already overflowed float16 is refused, not multiplied out to inf.
    with pytest.raises(SAEInputError, match="input_norm"):
        half.decode(f, input_norm=torch.full((2,), float("inf"), dtype=torch.float16))


def test_norms_are_kept_in_float32_or_float64():
    x = torch.randn(3, 4, dtype=torch.float16)
    assert exact_lifted_sae(4, "float16").token_norms(x).dtype == torch.float32
    x64 = torch.randn(3, 4, dtype=torch.float64) * 1e200
    norms = exact_lifted_sae(4, "float64").token_norms(x64)
    assert norms.dtype == torch.float64 and torch.isfinite(norms).all()
    torch.testing.assert_close(norms / 1e200, (x64 / 1e200).norm(dim=-1))
    assert math.isclose(float(norms[0] / 1e200), float((x64[0] / 1e200).norm()), rel_tol=1e-12)
