"""The hooks/ scripts: --help, a run on the toy model and SAE (seconds), valid JSON, clear errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sae_lens.saes.sae import SAEMetadata

from sae_bilinear import BilinearSAE, BilinearSAEConfig, UnliftedDecodeError

HOOKS = Path(__file__).resolve().parents[1] / "hooks"
sys.path.insert(0, str(HOOKS))
import _common  # noqa: E402

torch.set_num_threads(1)
SCRIPTS = ("ablate_latents", "steer", "walk_manifold")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"hooks_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def strict_json(path: Path) -> dict:
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The toy model and toy SAE, written to disk as a user would pass them."""
    model, sae = _common.cached_toy()
    root = tmp_path_factory.mktemp("toy")
    _common.save_toy_model(model, root / "model")
    sae.save_model(str(root / "sae"))
    unlifted = BilinearSAE(
        BilinearSAEConfig(d_in=model.cfg.d_model, d_sae=16, metadata=SAEMetadata(hook_name=_common.TOY_HOOK))
    )
    unlifted.save_model(str(root / "unlifted"))
    elsewhere = BilinearSAE(
        BilinearSAEConfig(d_in=model.cfg.d_model, d_sae=16, lifted=True, metadata=SAEMetadata(hook_name="blocks.5.hook_resid_pre"))
    )
    elsewhere.save_model(str(root / "elsewhere"))
    return root


def run(name: str, saved: Path, out: Path, *extra: str, sae: str = "sae") -> dict:
    args = ["--model", str(saved / "model"), "--sae", str(saved / sae), "--out", str(out), "--no-progress", *extra]
    return load_script(name).main(args)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name):
    done = subprocess.run(
        [sys.executable, str(HOOKS / f"{name}.py"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert f"usage: python hooks/{name}.py" in done.stdout
    for option in ("--sae", "--model", "--out"):
        assert option in done.stdout


def test_saved_toy_model_reloads_identically(saved):
    model, _ = _common.cached_toy()
    again = _common.load_model(str(saved / "model"))
    tokens = _common.ToyLanguage(64).sample(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(tokens), model(tokens))


def test_ablate_latents(saved, tmp_path):
    result = run("ablate_latents", saved, tmp_path, "--n-latents", "4", "--n-seqs", "4", "--context", "32")
    data = strict_json(tmp_path / "ablate_latents.json")
    assert data == json.loads(json.dumps(result))
    assert data["hook"] == _common.TOY_HOOK and data["architecture"] == "bilinear"
    assert len(data["latents"]) == 4
    for row in data["latents"]:
        assert row["delta_ce"] == pytest.approx(row["ce_ablated"] - data["ce_clean"])
        assert len(row["promoted"]) == 10 and len(row["suppressed"]) == 10
        assert row["promoted"][0][1] >= row["suppressed"][0][1]
    # The latents with the largest contribution are listed first.
    scores = [row["mean_abs_contribution"] for row in data["latents"]]
    assert scores == sorted(scores, reverse=True)
    assert (tmp_path / "ablate_latents.png").stat().st_size > 1000


def test_ablate_chosen_latents_to_their_mean(saved, tmp_path):
    run("ablate_latents", saved, tmp_path, "--latents", "3,5", "--mode", "mean", "--n-seqs", "2", "--context", "16")
    data = strict_json(tmp_path / "ablate_latents.json")
    assert [row["latent"] for row in data["latents"]] == [3, 5]
    assert data["mode"] == "mean"


def test_steer(saved, tmp_path):
    run("steer", saved, tmp_path, "--latent", "4", "--strengths", "0,1,3", "--max-new-tokens", "6")
    data = strict_json(tmp_path / "steer.json")
    assert data["latent"] == 4
    assert [row["strength"] for row in data["generations"]] == [0.0, 1.0, 3.0]
    for row in data["generations"]:
        assert len(row["tokens"]) == 6
        assert len(row["next_tokens"]) == 5
    # Steering moves the next-token distribution.
    first, last = data["generations"][0]["tracked_log_probs"], data["generations"][-1]["tracked_log_probs"]
    assert max(abs(first[t] - last[t]) for t in first) > 1e-3
    assert (tmp_path / "steer.png").stat().st_size > 1000


def test_walk_manifold(saved, tmp_path):
    run("walk_manifold", saved, tmp_path, "--steps", "5", "--span", "0.5")
    data = strict_json(tmp_path / "walk_manifold.json")
    assert len(data["directions"]) == 2
    for direction in data["directions"]:
        steps = direction["steps"]
        assert [step["t"] for step in steps] == pytest.approx([-0.5, -0.25, 0.0, 0.25, 0.5])
        assert steps[2]["kl_from_clean"] == pytest.approx(0.0, abs=1e-6)
        assert len(steps[0]["logit_lens"]) == 5
    assert abs(data["directions"][0]["eigenvalue"]) >= abs(data["directions"][1]["eigenvalue"])
    assert (tmp_path / "walk_manifold.png").stat().st_size > 1000


def test_walk_manifold_works_on_an_unlifted_sae(saved, tmp_path):
    run("walk_manifold", saved, tmp_path, "--steps", "3", "--latent", "2", sae="unlifted")
    assert strict_json(tmp_path / "walk_manifold.json")["latent"] == 2


@pytest.mark.parametrize("name", SCRIPTS)
def test_latent_out_of_range(saved, tmp_path, name):
    option = ["--latents", "0,128"] if name == "ablate_latents" else ["--latent", "128"]
    with pytest.raises(IndexError, match="latent index 128 is out of range: this SAE has 128 latents"):
        run(name, saved, tmp_path, *option)
    assert not (tmp_path / f"{name}.json").exists()


@pytest.mark.parametrize("name", SCRIPTS)
def test_hook_the_sae_was_not_trained_on(saved, tmp_path, name):
    with pytest.raises(ValueError, match=r"trained on 'blocks\.1\.hook_resid_pre', not 'blocks\.0\.hook_resid_pre'"):
        run(name, saved, tmp_path, "--hook", "blocks.0.hook_resid_pre")


@pytest.mark.parametrize("name", SCRIPTS)
def test_sae_for_a_hook_the_model_lacks(saved, tmp_path, name):
    with pytest.raises(ValueError, match=r"has no hook 'blocks\.5\.hook_resid_pre'"):
        run(name, saved, tmp_path, sae="elsewhere")


@pytest.mark.parametrize("name", ["ablate_latents", "steer"])
def test_unlifted_sae_where_decoding_is_needed(saved, tmp_path, name):
    with pytest.raises(UnliftedDecodeError, match="unlifted"):
        run(name, saved, tmp_path, sae="unlifted")


def test_missing_sae_and_folder(saved, tmp_path):
    with pytest.raises(SystemExit, match="--sae SAE_DIR is required"):
        load_script("steer").main(["--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="no cfg.json"):
        run("steer", saved, tmp_path, sae="does-not-exist")
