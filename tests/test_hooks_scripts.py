"""The hooks/ scripts and sae_bilinear.hook_experiments: --help, a run on the toy model and SAE
(seconds), valid JSON, the SAE's own model by default, clear errors."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sae_lens.saes.sae import SAEMetadata

from sae_bilinear import (
    BilinearSAE,
    BilinearSAEConfig,
    UnliftedDecodeError,
    experiment_utils,
    hook_experiments,
    loading,
)
from sae_bilinear import toy as toy_setting
from sae_bilinear.errors import ConfigError, DataFileError, OutputExistsError

HOOKS = Path(__file__).resolve().parents[1] / "hooks"

torch.set_num_threads(1)
SCRIPTS = ("ablate_latents", "steer", "walk_manifold")
COMMAND = {"ablate_latents": "ablate", "steer": "steer", "walk_manifold": "walk"}


def load_script(name: str):
    return experiment_utils.load_script(HOOKS / f"{name}.py", f"hooks_{name}")

def strict_json(path: Path) -> dict:
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, toy):
    """The toy model and toy SAE, written to disk as a user would pass them."""
    model, sae = toy
    root = tmp_path_factory.mktemp("toy")
    toy_setting.save_toy_model(model, root / "model")
    sae.save_model(str(root / "sae"))
    unlifted = BilinearSAE(
        BilinearSAEConfig(d_in=model.cfg.d_model, d_sae=16, metadata=SAEMetadata(hook_name=toy_setting.TOY_HOOK))
    )
    unlifted.save_model(str(root / "unlifted"))
    elsewhere = BilinearSAE(
        BilinearSAEConfig(
            d_in=model.cfg.d_model, d_sae=16, lifted=True, metadata=SAEMetadata(hook_name="blocks.5.hook_resid_pre")
        )
    )
    elsewhere.save_model(str(root / "elsewhere"))
    # The toy SAE, but from another model (its cfg.json says so).
    sae.save_model(str(root / "foreign"))
    cfg = json.loads((root / "foreign" / "cfg.json").read_text())
    cfg["metadata"]["model_name"] = "gpt2"
    (root / "foreign" / "cfg.json").write_text(json.dumps(cfg))
    return root


def run(name: str, saved: Path, out: Path, *extra: str, sae: str = "sae", model: str | None = "model") -> dict:
    chosen = [] if model is None else ["--model", str(saved / model) if model == "model" else model]
    args = [*chosen, "--sae", str(saved / sae), "--out", str(out), "--no-progress", *extra]
    return load_script(name).main(args)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script(name).main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: python hooks/{name}.py" in out
    for option in ("--sae", "--model", "--out", "--overwrite"):
        assert option in out


@pytest.mark.slow  # a fresh interpreter imports torch and SAELens (5-30 s)
def test_scripts_run_standalone():
    done = subprocess.run(
        [sys.executable, str(HOOKS / "walk_manifold.py"), "--help"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "usage: python hooks/walk_manifold.py" in done.stdout


def test_commands_wire_a_cli():
    """Each command builds its arguments on any parser (a CLI subparser) and runs parsed arguments."""
    assert set(hook_experiments.COMMANDS) == {"ablate", "steer", "walk"}
    for name, command in hook_experiments.COMMANDS.items():
        assert COMMAND[command.script] == name and command.description
        parser = argparse.ArgumentParser()
        command.add_arguments(parser)
        args = parser.parse_args(["--model", "toy"])
        assert args.sae is None and args.model == "toy" and args.out == Path("runs") / "hooks" / command.script
        assert callable(command.run)


def test_saved_toy_model_reloads_identically(saved, toy):
    model, _ = toy
    again = toy_setting.load_toy_model(saved / "model")
    tokens = toy_setting.ToyLanguage(64).sample(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(again(tokens), model(tokens))


def test_ablate_latents(saved, tmp_path):
    result = run("ablate_latents", saved, tmp_path, "--n-latents", "4", "--n-seqs", "4", "--context", "32")
    data = strict_json(tmp_path / "ablate_latents.json")
    assert data == json.loads(json.dumps(result))
    assert data["hook"] == toy_setting.TOY_HOOK and data["architecture"] == "bilinear"
    assert len(data["latents"]) == 4
    for row in data["latents"]:
        assert row["delta_ce"] == pytest.approx(row["ce_ablated"] - data["ce_clean"])
        assert len(row["promoted"]) == 10 and len(row["suppressed"]) == 10
        assert row["promoted"][0][1] >= row["suppressed"][0][1]
    # The latents with the largest contribution are listed first.
    scores = [row["mean_abs_contribution"] for row in data["latents"]]
    assert scores == sorted(scores, reverse=True)
    assert (tmp_path / "ablate_latents.png").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ablate_latents.json", "ablate_latents.png"]  # no temp files


def test_ablate_chosen_latents_to_their_mean(saved, tmp_path):
    run("ablate_latents", saved, tmp_path, "--latents", "3,5", "--mode", "mean", "--n-seqs", "2", "--context", "16")
    data = strict_json(tmp_path / "ablate_latents.json")
    assert [row["latent"] for row in data["latents"]] == [3, 5]
    assert data["mode"] == "mean"


@pytest.mark.slow  # trains a second toy model (2-6 s)
def test_the_sae_s_own_model_by_default(saved, tmp_path):
    """Without --model the toy SAE's metadata rebuilds its toy model: the same clean loss as the
    saved model gives."""
    chosen = ("--latents", "3", "--n-seqs", "2", "--context", "16")
    given = run("ablate_latents", saved, tmp_path / "given", *chosen)
    default = run("ablate_latents", saved, tmp_path / "default", *chosen, model=None)
    assert default["model"] == toy_setting.TOY_MODEL_NAME
    assert default["ce_clean"] == pytest.approx(given["ce_clean"], rel=1e-6)
    assert default["latents"][0]["ce_ablated"] == pytest.approx(given["latents"][0]["ce_ablated"], rel=1e-6)


def test_existing_results_need_overwrite(saved, tmp_path):
    run("steer", saved, tmp_path, "--latent", "4", "--strengths", "1", "--max-new-tokens", "1")
    before = (tmp_path / "steer.json").read_text()
    with pytest.raises(OutputExistsError, match=r"steer\.json.*--overwrite"):
        run("steer", saved, tmp_path, "--latent", "5", "--strengths", "1", "--max-new-tokens", "1")
    assert (tmp_path / "steer.json").read_text() == before
    run("steer", saved, tmp_path, "--latent", "5", "--strengths", "1", "--max-new-tokens", "1", "--overwrite")
    assert strict_json(tmp_path / "steer.json")["latent"] == 5


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


def test_functions_run_without_files(toy):
    """The experiments as functions: a model, an SAE, tokens in; a JSON-ready dict out."""
    model, sae = toy
    hook = sae.cfg.metadata.hook_name
    prompt = toy_setting.sample_tokens(model, 1, 8, seed=3)
    steered = hook_experiments.steer(model, sae, hook, prompt, latent=1, strengths=[0.0], max_new_tokens=2)
    walked = hook_experiments.walk(model, sae, hook, prompt, latent=1, steps=3)
    ablated = hook_experiments.ablate(model, sae, hook, prompt, latents=[1], progress=False)
    assert steered["generations"][0]["strength"] == 0.0 and len(walked["directions"]) == 2
    assert ablated["latents"][0]["latent"] == 1
    json.dumps([steered, walked, ablated], allow_nan=False)


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


@pytest.mark.parametrize("model", ["model", "toy"])
@pytest.mark.parametrize("name", SCRIPTS)
def test_sae_of_another_model(saved, tmp_path, name, model):
    with pytest.raises(ConfigError, match=r"trained on the model 'gpt2' \(metadata\.model_name.*leave out --model"):
        run(name, saved, tmp_path, sae="foreign", model=model)
    assert not (tmp_path / f"{name}.json").exists()


@pytest.mark.slow  # a fresh interpreter imports torch and SAELens (5-30 s)
def test_sae_of_another_model_is_one_line_from_the_script(saved, tmp_path):
    command = [sys.executable, str(HOOKS / "steer.py"), "--sae", str(saved / "foreign"), "--model", "toy"]
    done = subprocess.run([*command, "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "python hooks/steer.py: error: the SAE" in done.stderr and "'gpt2'" in done.stderr


def test_sae_that_names_no_model_needs_model(saved, tmp_path):
    with pytest.raises(ConfigError, match=r"names no model \(metadata\.model_name.*pass --model"):
        run("walk_manifold", saved, tmp_path, sae="unlifted", model=None)


@pytest.mark.parametrize("name", ["ablate_latents", "steer"])
def test_unlifted_sae_where_decoding_is_needed(saved, tmp_path, name):
    with pytest.raises(UnliftedDecodeError, match="unlifted"):
        run(name, saved, tmp_path, sae="unlifted")


def test_missing_sae_and_folder(saved, tmp_path):
    with pytest.raises(ConfigError, match="--sae SAE_DIR is required"):
        load_script("steer").main(["--out", str(tmp_path)])
    with pytest.raises(DataFileError, match="no cfg.json"):
        run("steer", saved, tmp_path, sae="does-not-exist")


@pytest.mark.parametrize(
    ("name", "option", "value"),
    [
        ("ablate_latents", "--n-latents", "0"),
        ("ablate_latents", "--context", "1"),
        ("ablate_latents", "--latents", "1,-2"),
        ("steer", "--strengths", "0,nan"),
        ("steer", "--max-new-tokens", "-1"),
        ("walk_manifold", "--span", "inf"),
        ("walk_manifold", "--steps", "1"),
        ("walk_manifold", "--seed", "x"),
    ],
)
def test_bad_values_are_usage_errors(tmp_path, capsys, name, option, value):
    with pytest.raises(SystemExit) as exit_info:
        load_script(name).main(["--model", "toy", "--out", str(tmp_path), f"{option}={value}"])
    assert exit_info.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_bad_values_of_the_functions(toy):
    model, sae = toy
    hook = sae.cfg.metadata.hook_name
    prompt = toy_setting.sample_tokens(model, 1, 8)
    cases = [
        (lambda: hook_experiments.walk(model, sae, hook, prompt, latent=1, position=8), "position 8"),
        (lambda: hook_experiments.walk(model, sae, hook, prompt, latent=1, span=float("nan")), "span"),
        (lambda: hook_experiments.steer(model, sae, hook, prompt, latent=1, strengths=[]), "strengths"),
        (lambda: hook_experiments.ablate(model, sae, hook, prompt, mode="half"), "mode"),
        (lambda: hook_experiments.ablate(model, sae, hook, prompt, top_k=0), "top_k"),
    ]
    for call, field in cases:
        with pytest.raises(ConfigError, match=field):
            call()


def test_model_names_compare_through_aliases():
    same = loading.canonical_model_name
    assert same("smollm2-135m") == same("HuggingFaceTB/SmolLM2-135M-Instruct") == same("SmolLM2-135M-Instruct")
    assert same("smollm2-135m") != same("HuggingFaceTB/SmolLM2-135M")  # the base model is another model
    assert same("toy") == same(toy_setting.TOY_MODEL_NAME)
    assert same("gpt2-small") == same("gpt2") != same("toy")
