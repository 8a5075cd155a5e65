"""The lift scale ``ũ = [c, u]`` (config field ``lift_scale``): the math at c ≠ 1, the default
c = 1 unchanged, the version-2 format, and experiments/lift_scale.py in its --tiny mode."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from sae_lens import SAE

from sae_bilinear import (
    BilinearSAE,
    BilinearSAEConfig,
    BilinearTrainingSAE,
    BilinearTrainingSAEConfig,
    analysis,
    hub,
    kernels,
)
from sae_bilinear.bilinear_config import FORMAT_VERSION
from sae_bilinear.errors import ConfigError
from sae_bilinear.experiment_utils import load_script

SCALES = [0.5, 2.0, 3.0]
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name: str) -> ModuleType:
    """``experiments/<name>.py`` as a module, by path (as tests/test_experiments.py loads them)."""
    return load_script(EXPERIMENTS / f"{name}.py", f"experiments_{name}")

def exact_lifted_sae(d: int, lift_scale: float) -> BilinearSAE:
    """Latent (a, b) = ũ_a ũ_b for every pair of coordinates of ũ = [c, u]: X̂ = ũ⊗ũ exactly."""
    n = d + 1
    sae = BilinearSAE(BilinearSAEConfig(d_in=d, d_sae=n * n, lifted=True, lift_scale=lift_scale, dtype="float64"))
    basis = torch.eye(n, dtype=torch.float64)
    assert sae.b_left is not None and sae.b_right is not None
    with torch.no_grad():
        for j, (a, b) in enumerate((a, b) for a in range(n) for b in range(n)):
            sae.b_left[j], sae.W_left[j] = basis[a, 0], basis[a, 1:]
            sae.b_right[j], sae.W_right[j] = basis[b, 0], basis[b, 1:]
    return sae


def random_sae(lift_scale: float, **fields) -> BilinearSAE:
    torch.manual_seed(0)
    cfg = BilinearSAEConfig(d_in=5, d_sae=12, lifted=True, lift_scale=lift_scale, dtype="float64", **fields)
    sae = BilinearSAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return sae


def naive_error(sae: BilinearSAE, x: torch.Tensor) -> torch.Tensor:
    """``||ũ⊗ũ − Σ g_j l̃_j⊗r̃_j||² / ||ũ||⁴`` with every d'×d' matrix written out."""
    c = sae.cfg.lift_scale
    u = x / x.norm(dim=-1, keepdim=True)
    lifted = torch.cat([torch.full_like(u[:, :1], c), u], dim=-1)
    assert sae.b_left is not None and sae.b_right is not None
    left = torch.cat([sae.b_left[:, None], sae.W_left], dim=-1).detach()
    right = torch.cat([sae.b_right[:, None], sae.W_right], dim=-1).detach()
    f = (lifted @ left.T) * (lifted @ right.T)
    if sae.cfg.sparsity == "topk":
        assert sae.cfg.k is not None
        f = kernels.topk_by_magnitude(f, sae.cfg.k)
    g = sae.coefficients(f).detach()
    target = torch.einsum("ni,nj->nij", lifted, lifted)
    recon = torch.einsum("nf,fi,fj->nij", g, left, right)
    return (target - recon).pow(2).sum((-1, -2)) / (1 + c * c) ** 2


# ---------------------------------------------------------------------------- the math at c ≠ 1


@pytest.mark.parametrize("c", SCALES)
def test_planted_exact_reconstruction_decodes_u_at_any_lift_scale(c):
    sae = exact_lifted_sae(4, c)
    x = torch.randn(6, 4, dtype=torch.float64) * 3.0
    torch.testing.assert_close(sae.decode(sae.encode(x)), x)  # ignoring 1/c would give c·x
    torch.testing.assert_close(sae.reconstruction_error(x), torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    # and the latents are those of ũ = [c, u]: latent (0, 0) is c² on every token
    assert torch.allclose(sae.encode(x)[:, 0], torch.full((6,), c * c, dtype=torch.float64))


@pytest.mark.parametrize(
    "fields",
    [{}, {"variant": "mixed", "bottleneck": 4}, {"variant": "ordered"}, {"sparsity": "topk", "k": 3}],
    ids=["vanilla", "mixed", "ordered", "topk"],
)
@pytest.mark.parametrize("c", SCALES)
def test_kernel_trick_matches_the_written_out_error_at_any_lift_scale(c, fields):
    sae = random_sae(c, **fields)
    x = torch.randn(7, 5, dtype=torch.float64)
    expected = naive_error(sae, x)
    for backward in ("fused", "autograd"):
        sae.cfg.kernel_backward = backward
        torch.testing.assert_close(sae.reconstruction_error(x).detach(), expected)


@pytest.mark.parametrize("c", SCALES)
def test_sparse_kernel_matches_the_dense_one_at_any_lift_scale(c):
    sae = random_sae(c)
    tokens = kernels.unit_tokens(torch.randn(9, 5, dtype=torch.float64))
    f = kernels.bilinear_latents(tokens.unit, sae.W_left, sae.W_right, sae.b_left, sae.b_right, lift_scale=c)
    indices = kernels.topk_indices(f, 4)
    values = f.gather(-1, indices)
    g = torch.zeros_like(f).scatter(-1, indices, values)
    weights = (sae.W_left, sae.W_right, sae.b_left, sae.b_right)
    dense = kernels.kernel_error(f, g, *weights, tokens.valid, lift_scale=c).error
    sparse = kernels.sparse_kernel_error(f, values, indices, *weights, tokens.valid, lift_scale=c).error
    torch.testing.assert_close(sparse, dense)
    # c changes the error: the same latents scored against ũ = [1, u] give another number
    assert not torch.allclose(dense, kernels.kernel_error(f, g, *weights, tokens.valid).error)


@pytest.mark.parametrize("c", SCALES)
def test_latent_peak_bounds_every_token_and_is_reached_at_any_lift_scale(c):
    sae = random_sae(c)
    u = torch.nn.functional.normalize(torch.randn(200_000, 5, dtype=torch.float64), dim=-1)
    with torch.no_grad():
        sampled = sae.encode(u).abs().amax(0)
    peak = sae.latent_peak()
    assert bool((sampled <= peak * (1 + 1e-9)).all())
    assert bool((sampled >= 0.9 * peak).all()), "the peak is far above what any token reaches"
    bound = kernels.latent_peak_bound(sae.W_left, sae.W_right, sae.b_left, sae.b_right, lift_scale=c)
    assert bool((bound >= peak * (1 - 1e-9)).all())


@pytest.mark.parametrize("c", SCALES)
def test_analysis_forms_read_the_same_latents_and_decoder_at_any_lift_scale(c):
    sae = random_sae(c, variant="mixed", bottleneck=4)
    x = torch.randn(5, 5, dtype=torch.float64)
    f, _ = analysis.token_latents(sae, x, list(range(12)))
    torch.testing.assert_close(f.to(torch.float64), sae.encode(x).detach())
    w = torch.randn(5, dtype=torch.float64)
    weights = analysis.direction_weights(sae, w, "activations")
    torch.testing.assert_close(weights.to(torch.float64), sae.coefficients(sae.decoder_directions() @ w).detach())


# ---------------------------------------------------------------------------- c = 1 is today's model


def test_default_lift_is_bit_identical_to_the_unscaled_formulas():
    """c = 1 runs exactly the version-1 arithmetic: F.linear with b, target 4, rows ½(b_l r + b_r l)."""
    torch.manual_seed(3)
    cfg = BilinearTrainingSAEConfig(d_in=6, d_sae=10, lifted=True, variant="mixed", bottleneck=4)
    sae = BilinearTrainingSAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(8, 6)
    assert sae.b_left is not None and sae.b_right is not None
    tokens = kernels.unit_tokens(x)
    f = torch.nn.functional.linear(tokens.unit, sae.W_left, sae.b_left) * torch.nn.functional.linear(
        tokens.unit, sae.W_right, sae.b_right
    )
    assert torch.equal(sae.encode(x), f)
    g = kernels.mix(f, sae.W_down)  # type: ignore[arg-type]
    K = kernels.gram(sae.W_left, sae.b_left) * kernels.gram(sae.W_right, sae.b_right)
    reference = (4.0 - 2.0 * (g * f).sum(-1) + ((g @ K) * g).sum(-1)) / 4.0
    sae.cfg.kernel_backward = "autograd"
    assert torch.equal(sae.reconstruction_error(x), reference)
    rows = 0.5 * (sae.b_left[:, None] * sae.W_right + sae.b_right[:, None] * sae.W_left)
    assert torch.equal(sae.decoder_directions(), rows)
    with torch.no_grad():
        assert torch.equal(sae.decode(sae.encode(x)), g @ rows * tokens.norm[:, None])


def test_an_explicit_lift_scale_of_one_trains_identically_to_the_default():
    def train(**fields) -> list[torch.Tensor]:
        torch.manual_seed(0)
        sae = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=6, d_sae=10, lifted=True, **fields))
        optimizer = torch.optim.Adam(sae.parameters(), lr=1e-2)
        x = torch.randn(32, 6)
        for _ in range(3):
            loss = sae.reconstruction_error(x).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return [p.detach().clone() for p in sae.parameters()]

    for a, b in zip(train(), train(lift_scale=1.0), strict=True):
        assert torch.equal(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(train(), train(lift_scale=2.0), strict=True))


# ---------------------------------------------------------------------------- the config and its format


@pytest.mark.parametrize(
    "fields",
    [
        {"lifted": True, "lift_scale": 0.0},
        {"lifted": True, "lift_scale": -1.0},
        {"lifted": True, "lift_scale": float("nan")},
        {"lifted": True, "lift_scale": float("inf")},
        {"lifted": True, "lift_scale": "2"},
        {"lifted": True, "lift_scale": True},
        {"lifted": False, "lift_scale": 2.0},
    ],
)
@pytest.mark.parametrize("cfg_cls", [BilinearSAEConfig, BilinearTrainingSAEConfig])
def test_bad_lift_scale_is_a_config_error_naming_it(cfg_cls, fields):
    with pytest.raises(ConfigError, match="lift_scale"):
        cfg_cls(d_in=4, d_sae=8, **fields)


def test_unlifted_message_says_how_to_fix_it():
    with pytest.raises(ConfigError, match="lifted=True"):
        BilinearSAEConfig(d_in=4, d_sae=8, lift_scale=2.0)


def test_lift_scale_round_trips_through_cfg_json(tmp_path):
    sae = random_sae(2.5)
    sae.save_model(tmp_path)
    saved = json.loads((tmp_path / "cfg.json").read_text())
    assert saved["lift_scale"] == 2.5 and saved["bilinear_format_version"] == FORMAT_VERSION == 2
    loaded = SAE.load_from_disk(tmp_path)
    assert loaded.cfg.lift_scale == 2.5  # type: ignore[attr-defined]
    x = torch.randn(3, 5, dtype=torch.float64)
    torch.testing.assert_close(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)))


V1_CFG = {
    "architecture": "bilinear",
    "d_in": 4,
    "d_sae": 8,
    "dtype": "float32",
    "device": "cpu",
    "apply_b_dec_to_input": False,
    "normalize_activations": "none",
    "reshape_activations": "none",
    "metadata": {"sae_lens_version": "6.54.12"},
    "variant": "vanilla",
    "lifted": True,
    "bottleneck": None,
    "sparsity": "hoyer",
    "k": None,
    "activity_threshold": 0.1,
    "bilinear_format_version": 1,
    "kernel_backward": "fused",
    "kernel_tile_size": None,
    "kernel_memory_budget": None,
    "sparse_kernel": True,
}


def _v1_folder(tmp_path, version: int = 1):
    weights = BilinearSAE(BilinearSAEConfig(d_in=4, d_sae=8, lifted=True))
    weights.save_model(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps(V1_CFG | {"bilinear_format_version": version}))
    return weights


@pytest.mark.parametrize("loader", ["saelens", "hub"])
def test_a_version_1_cfg_json_loads_with_the_unit_lift(tmp_path, loader):
    original = _v1_folder(tmp_path)
    sae = SAE.load_from_disk(tmp_path) if loader == "saelens" else hub.load_from_disk(tmp_path)
    assert sae.cfg.lift_scale == 1.0  # type: ignore[attr-defined]
    assert sae.cfg.bilinear_format_version == FORMAT_VERSION  # type: ignore[attr-defined]
    x = torch.randn(3, 4)
    assert torch.equal(sae.encode(x), original.encode(x))
    assert torch.equal(sae.decode(sae.encode(x)), original.decode(original.encode(x)))


@pytest.mark.parametrize("loader", ["saelens", "hub"])
def test_a_newer_cfg_json_is_refused_naming_the_version(tmp_path, loader):
    _v1_folder(tmp_path, version=FORMAT_VERSION + 1)
    with pytest.raises(ValueError, match="bilinear_format_version.*newer sae-bilinear|newer sae-bilinear"):
        SAE.load_from_disk(tmp_path) if loader == "saelens" else hub.load_from_disk(tmp_path)


def test_lifted_norm_is_one_plus_c_squared():
    assert kernels.lifted_norm_sq(True, 2.0) == 5.0 and kernels.lifted_norm_sq(False, 2.0) == 1.0
    assert math.isclose(kernels.lifted_norm_sq(True, 0.5), 1.25)
    with pytest.raises(ValueError, match="lift_scale"):
        kernels.lifted_decoder(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2), torch.ones(2), lift_scale=0.0)


# ---------------------------------------------------------------------------- experiments/lift_scale.py


@pytest.mark.slow
def test_lift_scale_experiment_tiny_trains_one_sae_per_scale_and_splices_them(tmp_path):
    experiment = load_experiment("lift_scale")
    out, cache = tmp_path / "out", tmp_path / "cache"
    results = experiment.main(["--tiny", "--out", str(out), "--cache", str(cache), "--scales", "0.5", "4"])
    assert results["scales"] == [0.5, 4.0]
    rows = results["rows"]
    for c in (0.5, 4.0):
        assert {r["readout"] for r in rows if r["c"] == c} == {"decoder", "ridge fit"}
    assert sum(r["c"] is None for r in rows) == 1  # the TopK baseline
    for row in rows:
        assert math.isfinite(row["ce_loss_recovered"]) and math.isfinite(row["kl"])
        assert row["mean_ablation_source"].startswith("training activations' mean")
    assert results["mean_ablation_source"].startswith("training activations' mean")
    assert "training activations' mean" in (out / "table.md").read_text()
    assert (out / "lift_scale.png").stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["scales"] == [0.5, 4.0]
    # same seed, init and batches: the two SAEs differ only because c entered the training
    folders = sorted(p for p in (cache / "lift_scale").iterdir() if p.name.startswith("mixed-"))
    saes = [hub.load_from_disk(p) for p in folders]
    assert sorted(s.cfg.lift_scale for s in saes) == [0.5, 4.0]  # type: ignore[attr-defined]
    assert not torch.equal(saes[0].W_left, saes[1].W_left)
    decoder = {r["c"]: r for r in rows if r["readout"] == "decoder" and r["c"] is not None}
    assert decoder[0.5]["xx_error"] != decoder[4.0]["xx_error"]
