"""The main job end to end on a tiny Qwen3 (real tokenizer, random weights) and the CLI."""

from __future__ import annotations

import json

import pytest
from sae_lens import SAE

from sae_bilinear import cli, data, evaluate, models
from sae_bilinear.main_job import MainJobConfig, run_main_job

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def tiny_qwen3():
    return models.qwen3_tiny(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=64)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    # A small local text corpus: enough documents for a held-out split.
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    paragraphs = [
        f"Paragraph {i}: the {word} river runs past {i % 7} hills and {i % 5} old mills, "
        f"counting {i}, {i + 1}, {i + 2} and more stones along the way."
        for i, word in enumerate(["long", "cold", "wide", "slow", "deep", "green"] * 20)
    ]
    path.write_text("\n\n".join(paragraphs))
    return path


def tiny_config(corpus_file, **overrides) -> MainJobConfig:
    settings = dict(
        model="tiny-qwen3", hook_name="blocks.1.hook_resid_pre", corpus=str(corpus_file), context_size=32,
        train_contexts=48, eval_contexts=6, expansion=2, steps=80, batch_size=256, lr=5e-3,
        baseline="topk", baseline_k=8, n_latents=1, alpha=0.05,
    )
    return MainJobConfig(**(settings | overrides))


@pytest.mark.slow
def test_main_job_end_to_end(tmp_path, smollm2_model, corpus_file):
    # A real LM (a random one predicts no better than zero-ablation), on a small budget.
    hook = "blocks.3.hook_resid_pre"
    config = tiny_config(
        corpus_file, model="smollm2-135m", hook_name=hook, train_contexts=40, eval_contexts=3,
        steps=100, batch_size=256, baseline_k=16,
    )
    out = tmp_path / "run"
    metrics = run_main_job(config, out, model=smollm2_model)
    written = json.loads((out / "metrics.json").read_text())
    for key in ("ce_clean", "ce_spliced", "ce_zero_ablated", "ce_mean_ablated", "ce_loss_recovered", "kl",
                "explained_variance", "reconstruction_error", "hoyer_density", "dead_fraction",
                "model", "hook", "tokens", "seconds"):
        assert key in written, key
    # A trained SAE sits between the clean model and zero-ablation.
    assert metrics["ce_clean"] <= metrics["ce_spliced"] <= metrics["ce_zero_ablated"]
    assert 0.0 <= metrics["ce_loss_recovered"] <= 1.0
    assert metrics["kl"] >= 0.0
    assert metrics["baseline"]["kind"] == "topk"
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["reconstruction_error"] < history[0]["reconstruction_error"]
    # The written SAE reloads and reproduces the reported x̂ metrics on the same held-out tokens.
    loaded = SAE.load_from_disk(out / "sae")
    assert loaded.cfg.metadata.hook_name == hook
    corpus = data.load_corpus(str(corpus_file))
    assert isinstance(corpus, data.TextCorpus)
    eval_tokens = data.tokenize_contexts(
        corpus.heldout, smollm2_model.tokenizer, config.context_size,
        prepend_bos=True, max_contexts=config.eval_contexts,
    )
    again = evaluate.evaluate_splice(
        smollm2_model, loaded, eval_tokens, hook_name=hook, progress=False,
        ignore_tokens=[smollm2_model.tokenizer.bos_token_id],
    ).to_dict()
    for key in ("ce_spliced", "explained_variance", "reconstruction_error"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-5), key

    # The other CLI commands on the written SAE (they load the model named in its metadata).
    sae_dir = str(out / "sae")
    common = ["--corpus", str(corpus_file), "--contexts", "2", "--context-size", "32"]
    assert cli.main(["evaluate", sae_dir, *common, "--out", str(tmp_path / "eval.json")]) == 0
    assert set(json.loads((tmp_path / "eval.json").read_text())) >= {"ce_spliced", "kl", "explained_variance"}
    assert cli.main(["analyze", sae_dir, "--latent", "3", "--out", str(tmp_path / "an"), *common]) == 0
    assert (tmp_path / "an" / "latent_3.html").exists() and (tmp_path / "an" / "latent_3.json").exists()
    assert cli.main(["analyze", sae_dir, "--latent", "99999", *common]) != 0
    assert cli.main(["compare", sae_dir, sae_dir, "--no-matched"]) == 0
    report = (out / "report.html").read_text()
    assert "plotly" in report and "Density vs reconstruction error" in report and "CE loss" in report
    assert (out / "report.png").stat().st_size > 10_000
    assert list((out / "latents").glob("latent_*.html"))


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"hook_name": "blocks.9.hook_resid_pre"}, "has no hook"),
        ({"context_size": 100_000}, "context"),
        ({"baseline": "gated"}, "baseline must be"),
        ({"steps": 0}, "steps must be a positive"),
    ],
)
def test_main_job_bad_input_fails_before_work(tmp_path, tiny_qwen3, corpus_file, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_main_job(tiny_config(corpus_file, **overrides), tmp_path / "bad", model=tiny_qwen3)
    assert not (tmp_path / "bad" / "sae").exists()


def test_main_job_empty_corpus_is_a_clear_error(tmp_path, tiny_qwen3):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n")
    with pytest.raises(ValueError, match="no non-empty documents|empty"):
        run_main_job(tiny_config(empty), tmp_path / "out", model=tiny_qwen3)


def test_cli_help_and_dry_run(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "convert-bae" in capsys.readouterr().out
    assert cli.main(["train", "--config", "hub_configs/train/qwen3-0.6b-base-l18-sweep.yaml", "--dry-run",
                     "--set", "sae.d_sae=2048", "--set", "sae.sparsity=topk", "--set", "sae.k=64"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 44  # 4 variants × 11 α
    assert '"d_sae": 2048' in lines[0] and "combined-a100" in lines[-1]
    # Values that are not JSON stay strings; JSON ones are parsed.
    assert '"sparsity": "topk"' in lines[0] and '"k": 64' in lines[0]


def test_cli_reports_bad_input_without_traceback(capsys):
    assert cli.main(["train", "--config", "no/such/file.yaml"]) == 2
    assert "does not exist" in capsys.readouterr().err
