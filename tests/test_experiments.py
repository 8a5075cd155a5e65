"""experiments/: every script on its --tiny setting, and the planted-manifold recovery metrics on
hand-made perfect and random SAEs (perfect scores 1, random near chance)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch

from sae_bilinear import experiment_utils
from sae_bilinear.bilinear import BilinearTrainingSAE, BilinearTrainingSAEConfig, default_alpha_warm_up_steps
from sae_bilinear.errors import ConfigError
from sae_bilinear.experiment_utils import load_script
from sae_bilinear.synthetic import Manifold, PlantedManifolds

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name: str) -> ModuleType:
    """``experiments/<name>.py`` as a module (registered, so its dataclasses resolve their module)."""
    return load_script(EXPERIMENTS / f"{name}.py", f"experiments_{name}")

kernel_trick = load_experiment("kernel_trick")
manifold_view = load_experiment("manifold_view")
pm = load_experiment("planted_manifolds")
sparsity_sweep = load_experiment("sparsity_sweep")
stability = load_experiment("stability")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------
# The scripts, --tiny
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    return experiment_utils.load_model(experiment_utils.TINY_MODEL)


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the tiny runs: the sweep's SAEs are reused by manifold_view and stability."""
    return tmp_path_factory.mktemp("experiments_cache")


def _read(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_scripts_have_help(capsys):
    for module in (kernel_trick, sparsity_sweep, manifold_view, stability, pm):
        with pytest.raises(SystemExit) as exit_info:
            module.main(["--help"])
        assert exit_info.value.code == 0
        assert "--tiny" in capsys.readouterr().out


def test_kernel_trick_tiny(tmp_path):
    result = kernel_trick.main(["--tiny", "--out", str(tmp_path)])
    assert _read(tmp_path)["agreement"] == result["agreement"]
    # The package's kernel error equals the naive x⊗x loss for every variant, lifted or not.
    assert len(result["agreement"]) == 8
    for row in result["agreement"]:
        assert row["loss_rel_diff"] < 1e-10 and row["grad_rel_diff"] < 1e-8, row
    measured = [r for r in result["scaling"] if r["naive_seconds"] is not None]
    skipped = [r for r in result["scaling"] if r["naive_seconds"] is None]
    assert measured and skipped  # the memory cap is applied: the naive loss is skipped, not run
    assert all(r["naive_bytes_estimate"] > r["cap_gib"] * 2**30 for r in skipped)
    assert all(r["loss_rel_diff"] < 1e-4 for r in measured)
    assert (tmp_path / "scaling.png").stat().st_size > 1000 and (tmp_path / "table.md").is_file()


def test_naive_loss_matches_explicit_prefixes():
    # The naive ordered loss, checked against a loop over prefixes (float64).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    L, R = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    u = x / x.norm(dim=-1, keepdim=True)
    f = (u @ L.T) * (u @ R.T)
    X = torch.einsum("bi,bj->bij", u, u)
    expected = torch.stack(
        [
            ((X - torch.einsum("bf,fi,fj->bij", f[:, : k + 1], L[: k + 1], R[: k + 1])) ** 2).sum((-1, -2))
            for k in range(6)
        ]
    ).mean(0)
    torch.testing.assert_close(kernel_trick.naive_error(x, L, R, ordered=True), expected)


def test_sparsity_sweep_tiny(tmp_path, shared_cache, tiny_model):
    out = tmp_path / "sweep"
    result = sparsity_sweep.main(["--tiny", "--out", str(out), "--cache", str(shared_cache)], model=tiny_model)
    assert {(r["variant"], r["alpha"]) for r in result["unlifted"]} == {
        ("vanilla", 0.0),
        ("vanilla", 0.5),
        ("mixed", 0.0),
        ("mixed", 0.5),
    }
    for row in result["unlifted"] + result["lifted"]:
        assert 0 <= row["hoyer_density"] <= 1 and row["reconstruction_error"] >= 0
    lifted = result["lifted"]
    assert lifted and all("ce_loss_recovered" in r and r["splice_ce_clean"] > 0 for r in lifted)
    assert (out / "pareto.png").is_file() and (out / "lifted.png").is_file()
    # Activations were collected once and cached; a second run loads everything.
    assert len(list(shared_cache.glob("*.pt"))) == 1
    again = sparsity_sweep.main(
        ["--tiny", "--out", str(tmp_path / "again"), "--cache", str(shared_cache)], model=tiny_model
    )
    assert all(r["cached"] for r in again["unlifted"] + again["lifted"])
    assert again["activations"]["collect_seconds"] == 0
    assert [r["reconstruction_error"] for r in again["unlifted"]] == [
        r["reconstruction_error"] for r in result["unlifted"]
    ]


def test_manifold_view_tiny(tmp_path, shared_cache, tiny_model):
    result = manifold_view.main(["--tiny", "--out", str(tmp_path), "--cache", str(shared_cache)], model=tiny_model)
    assert 0 < result["row_share_of_cross_term"] <= 1
    assert result["stats"]["effective_rank"] > 2  # a composite, unlike a single rank-2 latent
    assert result["top_tokens"][0]["activation"] >= result["bottom_tokens"][0]["activation"]
    assert set(result["probes"]["activation"]) >= {"position", "digit", "punctuation"}
    for name in ("composite.png", "composite_tokens.png", "cluster.png"):
        assert (tmp_path / name).stat().st_size > 1000


def test_stability_tiny(tmp_path, shared_cache, tiny_model):
    result = stability.main(["--tiny", "--out", str(tmp_path), "--cache", str(shared_cache)], model=tiny_model)
    (pair,) = result["seed_pairs"]
    assert 0 <= pair["operator_similarity"] <= 1 and 0 <= pair["matched_similarity"] <= 1
    assert len(result["across_alpha"]) == 1
    assert (tmp_path / "similarity.png").is_file()


def test_planted_manifolds_tiny(tmp_path):
    result = pm.main(["--tiny", "--out", str(tmp_path)])
    labels = [r["label"] for r in result["saes"]]
    assert labels[0].startswith("oracle") and any("TopK" in label for label in labels)
    oracle = result["saes"][0]
    assert oracle["mcc"] == pytest.approx(1.0, abs=1e-5)
    for row in result["saes"]:
        assert len(row["manifolds"]) == len(pm.MANIFOLDS)
    # Equal parameter budget (within one latent's worth).
    trained = {r["spec"]: r for r in result["saes"]}
    bilinear, topk = trained["bilinear:vanilla:0.1"], trained["topk:2"]
    assert abs(bilinear["n_params"] - topk["n_params"]) <= 2 * 16 + 1
    # Metrics read the trained weights, not the init's: training lowered the x⊗x error.
    assert bilinear["xx_error"] < trained["init:bilinear"]["xx_error"] - 0.02
    # A TopK bilinear SAE is scored on the code it decodes from (its k kept latents).
    bilinear_topk = trained["bilinear-topk:vanilla:2"]
    assert bilinear_topk["l0"] <= 2 and bilinear_topk["xx_error"] < 1.5
    for name in ("recovery.png", "tradeoff.png", "circle_latents.png", "table.md"):
        assert (tmp_path / name).is_file()


# ----------------------------------------------------------------------------------------
# The recovery metrics on hand-made SAEs
# ----------------------------------------------------------------------------------------


CLEAN = (
    Manifold("circle", probability=0.25, scale=2.0),
    Manifold("circle", probability=0.25, offset=0.7, scale=2.0),
    Manifold("sphere", dim=2, probability=0.25, scale=2.0),
    Manifold("paraboloid", dim=2, probability=0.2, offset=0.5, scale=2.0),
)


@pytest.fixture(scope="module")
def clean_data():
    """Manifolds and linear features, no noise; 5 % of tokens hold only linear features."""
    gen = PlantedManifolds(d=24, manifolds=CLEAN, n_linear=6, linear_probability=0.02, noise=0.0, seed=3)
    return gen, gen.sample(6000)


class _Linear(torch.nn.Module):
    """A minimal linear SAE: ReLU(W_enc x + b_enc), decoder rows W_dec."""

    def __init__(self, W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor):
        super().__init__()
        self.W_enc, self.b_enc, self.W_dec = (torch.nn.Parameter(t.float()) for t in (W_enc, b_enc, W_dec))

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, f):
        return f @ self.W_dec


def test_coordinate_target_is_the_ground_truth_point(clean_data):
    gen, batch = clean_data
    for index, manifold in enumerate(gen.manifolds):
        on = batch.manifold == index
        target = pm.coordinate_target(manifold, batch.coordinates[on])
        local = batch.local[on].double()
        if manifold.kind == "circle":
            expected = local[:, :2] / (manifold.radius * manifold.scale)
        elif manifold.kind == "sphere":
            expected = local / (manifold.radius * manifold.scale)
        else:
            expected = local[:, :2] / manifold.scale
        torch.testing.assert_close(target, expected, atol=1e-5, rtol=1e-5)


def test_greedy_readout_perfect_and_random():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2000, 30, generator=g, dtype=torch.float64)
    y = torch.stack([2 * f[:, 3] - f[:, 7], f[:, 7]], dim=-1)
    scores, chosen, _ = pm.greedy_readout(f[:1000], y[:1000], f[1000:], y[1000:], k_max=4)
    assert set(chosen[:2]) == {3, 7} and scores[1] == pytest.approx(1.0, abs=1e-12)
    noise = torch.randn(2000, 2, generator=g, dtype=torch.float64)
    scores, _, _ = pm.greedy_readout(f[:1000], noise[:1000], f[1000:], noise[1000:], k_max=4)
    assert max(scores) < 0.02  # chance: R² ≈ 0 on held-out tokens
    assert pm.latents_needed([0.5, 0.95, 0.99]) == 2 and pm.latents_needed([0.1]) is None


def test_oracle_bilinear_recovers_every_manifold(clean_data):
    gen, batch = clean_data
    result = pm.sae_metrics(pm.BilinearView(pm.oracle_bilinear(gen)), batch, gen)
    assert result["mcc"] == pytest.approx(1.0, abs=1e-6)
    for m in result["manifolds"]:
        assert m["angle_max"] < 1e-3, m  # the readout's subspace is the manifold's
        assert m["best_share"] == pytest.approx(1.0, abs=1e-9)
        if m["kind"] == "paraboloid":
            continue  # u = x/||x|| bends t non-linearly: R² < 1 even for the oracle
        assert m["coord_r2@4"] > 0.99 and m["recovered"], m
        assert m["member_r2@4"] > 0.9


def test_untrained_bilinear_is_near_chance(clean_data):
    gen, batch = clean_data

    torch.manual_seed(0)
    sae = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=gen.d, d_sae=48, lifted=True))
    # Random (not orthogonal-init) factors: the init's orthogonal rows are too structured in d=24.
    with torch.no_grad():
        for p in (sae.W_left, sae.W_right):
            p.copy_(torch.randn_like(p) / gen.d**0.5)
    result = pm.sae_metrics(pm.BilinearView(sae), batch, gen)
    assert result["mcc"] < pm.chance_mcc(6, 48, gen.d) + 0.15
    for m in result["manifolds"]:
        assert not m["recovered"], m
        assert m["angle_max"] > 30
        assert m["coord_r2@1"] < 0.5


def test_linear_metrics_perfect_and_random(clean_data):
    gen, batch = clean_data
    features = gen.feature_dict.feature_vectors.detach().double()
    circle = gen.basis(0).double()
    # Perfect: one latent per linear feature, plus 8 ReLU tiles of the centred circle.
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    tiles = torch.stack([angles.cos(), angles.sin()], -1) @ circle.T  # [8, d]
    W_dec = torch.cat([features, tiles])
    sae = _Linear(W_dec.T, torch.cat([torch.zeros(6), torch.full((8,), -1.2)]), W_dec)
    view = pm.LinearView(sae)
    result = pm.sae_metrics(view, batch, gen)
    assert result["mcc"] == pytest.approx(1.0, abs=1e-6)
    circle_metrics = result["manifolds"][0]
    assert circle_metrics["tiling"] == 8  # every tile lies in the plane and fires on the circle
    assert circle_metrics["angle_max"] < 1.0
    assert view.in_share(circle)[6:].min() == pytest.approx(1.0, abs=1e-6) and view.in_share(circle)[:6].max() < 1e-6
    # Random decoder directions: MCC at chance, no tiling.
    g = torch.Generator().manual_seed(1)
    W = torch.randn(14, gen.d, generator=g, dtype=torch.float64)
    random = pm.sae_metrics(pm.LinearView(_Linear(W.T, torch.zeros(14), W)), batch, gen)
    assert abs(random["mcc"] - pm.chance_mcc(6, 14, gen.d, seed=1)) < 0.2
    assert random["mcc"] < 0.7
    assert all(m["tiling"] == 0 for m in random["manifolds"])


def test_bilinear_in_share():
    basis = torch.eye(6, dtype=torch.float64)[:, :2]
    inside = torch.tensor([1.0, 1.0, 0, 0, 0, 0], dtype=torch.float64)
    outside = torch.tensor([0, 0, 1.0, 0, 0, 0], dtype=torch.float64)
    from types import SimpleNamespace

    sae = SimpleNamespace(
        W_left=torch.stack([inside, outside, inside, inside + outside]),
        W_right=torch.stack([inside, outside, outside, inside]),
        b_left=torch.zeros(4, dtype=torch.float64), b_right=torch.zeros(4, dtype=torch.float64),
    )
    share = pm.BilinearView(sae).in_share(basis)
    # (l·u)(r·u) with r ⊥ the subspace vanishes on it: share 0. ((i+o)·u)(i·u): ||BᵀQB||² = 4 of ||Q||² = 5.
    torch.testing.assert_close(share, torch.tensor([1.0, 0.0, 0.0, 0.8], dtype=torch.float64))


def test_default_alpha_warm_up_steps():
    """α warms up over the first quarter of a run, at least one step."""
    warm_up = default_alpha_warm_up_steps  # the package's one rule (experiment_utils had a copy)
    assert [warm_up(n) for n in (1, 3, 4, 100, 401)] == [1, 1, 1, 25, 100]
    for bad in (-1, 2.5, True, "100"):
        with pytest.raises(ConfigError, match="total_steps"):
            warm_up(bad)
