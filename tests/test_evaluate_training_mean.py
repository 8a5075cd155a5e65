"""`sae-bilinear evaluate` of a run's SAE ablates to the run's training mean (saved beside the SAE),
so it reproduces the run's ``ce_mean_ablated``; a bad mean file is named."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sae_bilinear import cli, evaluate, models
from sae_bilinear.errors import DataFileError, MissingFileError
from sae_bilinear.evaluate import TRAINING_MEAN_FILENAME, load_training_mean, save_training_mean
from sae_bilinear.main_job import MainJobConfig, run_main_job

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def tiny_qwen3():
    return models.qwen3_tiny(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=64)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_qwen3):
    """A finished tiny main job (random weights: the numbers only need to be reproduced)."""
    folder = tmp_path_factory.mktemp("run")
    corpus = folder / "corpus.txt"
    corpus.write_text(
        "\n\n".join(
            f"Paragraph {i}: the {word} river runs past {i % 7} hills and {i % 5} old mills, counting {i} stones."
            for i, word in enumerate(["long", "cold", "wide", "slow", "deep", "green"] * 20)
        )
    )
    config = MainJobConfig(
        model="tiny-qwen3", hook_name="blocks.1.hook_resid_pre", corpus=str(corpus), context_size=32,
        train_contexts=24, eval_contexts=3, expansion=2, steps=8, batch_size=128, lr=5e-3,
        baseline="topk", baseline_k=8, n_latents=1, alpha=0.05, checkpoints=0, atlas=False,
    )  # fmt: skip
    run_main_job(config, folder / "out", model=tiny_qwen3)
    return folder / "out"


@pytest.fixture
def same_model(monkeypatch, tiny_qwen3):
    """`evaluate` loads the SAE's model by name: hand it the run's tiny model instead."""
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: tiny_qwen3)


def evaluate_cli(sae_dir, tmp_path, *extra) -> dict:
    out = tmp_path / "evaluate.json"
    # --eval-contexts as the run's (evaluate's default is `run`'s default, 16).
    argv = ["evaluate", str(sae_dir), "--eval-contexts", "3", "--out", str(out), *map(str, extra)]
    assert cli.main(argv) == 0
    return json.loads(out.read_text())


@pytest.mark.parametrize("sae", ["sae", "baseline"])
def test_evaluate_of_a_run_folder_gives_the_runs_mean_ablated_ce(run_dir, same_model, tmp_path, sae):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    run = metrics if sae == "sae" else metrics["baseline"]
    assert (run_dir / sae / TRAINING_MEAN_FILENAME).is_file()  # published with the SAE
    evaluated = evaluate_cli(run_dir / sae, tmp_path)
    assert evaluated["mean_ablation"] == f"training activations ({metrics['tokens']} tokens)"
    assert metrics["mean_ablation"] == evaluated["mean_ablation"]
    for key in ("ce_clean", "ce_spliced", "ce_mean_ablated", "kl"):
        assert evaluated[key] == pytest.approx(run[key], rel=1e-9, abs=1e-12), key


def test_held_out_mean_is_the_fallback_and_differs(run_dir, same_model, tmp_path):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    held = evaluate_cli(run_dir / "sae", tmp_path, "--held-out-mean")
    assert held["mean_ablation"] == evaluate.HELD_OUT_MEAN_LABEL == "held-out tokens"
    assert held["ce_mean_ablated"] != pytest.approx(metrics["ce_mean_ablated"], rel=1e-6)
    # A copy of the SAE without its mean file falls back to the held-out mean.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("cfg.json", "sae_weights.safetensors"):
        (bare / name).write_bytes((run_dir / "sae" / name).read_bytes())
    fallback = evaluate_cli(bare, tmp_path, "--overwrite")
    assert fallback["mean_ablation"] == "held-out tokens"
    assert fallback["ce_mean_ablated"] == pytest.approx(held["ce_mean_ablated"], rel=1e-9)
    # ...and an explicit --training-mean gives the run's number again.
    given = evaluate_cli(bare, tmp_path, "--overwrite", "--training-mean", run_dir / "sae" / TRAINING_MEAN_FILENAME)
    assert given["ce_mean_ablated"] == pytest.approx(metrics["ce_mean_ablated"], rel=1e-9)


def _bad_files(folder):
    """name → writer of a damaged mean file for d_in = 4."""
    good = {"mean": torch.ones(4)}
    meta = {"n_tokens": "10"}
    return {
        "not safetensors": lambda p: p.write_bytes(b"\x00garbage"),
        "truncated": lambda p: (save_file(good, str(p), metadata=meta), p.write_bytes(p.read_bytes()[:-7])),
        "wrong shape": lambda p: save_file({"mean": torch.ones(5)}, str(p), metadata=meta),
        "NaN": lambda p: save_file({"mean": torch.tensor([0.0, float("nan"), 1.0, 2.0])}, str(p), metadata=meta),
        "inf": lambda p: save_file({"mean": torch.tensor([0.0, float("inf"), 1.0, 2.0])}, str(p), metadata=meta),
        "int tensor": lambda p: save_file({"mean": torch.ones(4, dtype=torch.int64)}, str(p), metadata=meta),
        "other tensor name": lambda p: save_file({"avg": torch.ones(4)}, str(p), metadata=meta),
        "no n_tokens": lambda p: save_file(good, str(p)),
        "n_tokens 0": lambda p: save_file(good, str(p), metadata={"n_tokens": "0"}),
    }


@pytest.mark.parametrize("case", list(_bad_files(None)))
def test_a_damaged_mean_file_is_a_data_file_error_naming_it(tmp_path, case):
    path = tmp_path / TRAINING_MEAN_FILENAME
    _bad_files(tmp_path)[case](path)
    with pytest.raises(DataFileError, match=TRAINING_MEAN_FILENAME):
        load_training_mean(path, d_in=4)


def test_a_missing_explicit_mean_file_is_named(tmp_path):
    with pytest.raises(MissingFileError, match="nowhere.safetensors"):
        load_training_mean(tmp_path / "nowhere.safetensors", d_in=4)


def test_the_mean_file_round_trips(tmp_path):
    mean = torch.randn(6)
    path = save_training_mean(tmp_path, mean, 123, "blocks.0.hook_resid_pre")
    assert path.name == TRAINING_MEAN_FILENAME
    loaded = load_training_mean(path, d_in=6)
    assert torch.equal(loaded.mean, mean) and loaded.n_tokens == 123
    assert loaded.label == "training activations (123 tokens)"


def test_the_cli_names_a_corrupted_mean_file_in_the_run_folder(run_dir, same_model, tmp_path, capsys):
    damaged = tmp_path / "sae"
    damaged.mkdir()
    for name in ("cfg.json", "sae_weights.safetensors"):
        (damaged / name).write_bytes((run_dir / "sae" / name).read_bytes())
    (damaged / TRAINING_MEAN_FILENAME).write_bytes(b"not a safetensors file")
    assert cli.main(["evaluate", str(damaged)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sae-bilinear evaluate: error:") and str(damaged / TRAINING_MEAN_FILENAME) in err
