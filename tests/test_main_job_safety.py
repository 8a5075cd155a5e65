"""The main job never runs on a bad setting, never clobbers a folder, and resumes after a kill."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from sae_bilinear import main_job, models, outputs, train
from sae_bilinear.bilinear import default_alpha_warm_up_steps
from sae_bilinear.errors import ConfigError, DataFileError, OutputExistsError
from sae_bilinear.main_job import MainJobConfig, run_main_job

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    paragraphs = [
        f"Paragraph {i}: the {word} river runs past {i % 7} hills and {i % 5} old mills, counting {i} stones."
        for i, word in enumerate(["long", "cold", "wide", "slow", "deep", "green"] * 20)
    ]
    path.write_text("\n\n".join(paragraphs))
    return path


def tiny_settings(corpus_file, **overrides) -> dict:
    settings = {
        "model": "tiny-qwen3", "hook_name": "blocks.1.hook_resid_pre", "corpus": str(corpus_file), "context_size": 32,
        "train_contexts": 24, "eval_contexts": 3, "expansion": 2, "steps": 12, "batch_size": 128, "lr": 5e-3,
        "baseline": "topk", "baseline_k": 8, "n_latents": 1, "alpha": 0.05, "checkpoints": 2,
    }
    return settings | overrides


BAD_OPTIONS = [
    ("variant", "foo"), ("variant", None), ("alpha", math.nan), ("alpha", math.inf), ("alpha", -0.1), ("alpha", "0.1"),
    ("lr", 0.0), ("lr", math.nan), ("lr", -1e-3), ("steps", 0), ("steps", True), ("steps", 10.0),
    ("batch_size", 0), ("train_contexts", 0), ("eval_contexts", -1), ("context_size", 0), ("expansion", "2"),
    ("baseline_k", 0), ("baseline_k", 2.0), ("baseline", "gated"), ("optimizer", "sgd"), ("ns_dtype", "float16"),
    ("dtype", "float64"), ("device", "tpu!"), ("n_latents", -1), ("seed", -1), ("checkpoints", -2),
    ("model", ""), ("hook_name", 3), ("corpus", None),
]


@pytest.mark.parametrize("option,value", BAD_OPTIONS)
def test_every_option_is_validated_naming_it(corpus_file, option, value):
    with pytest.raises(ConfigError, match=option):
        MainJobConfig(**tiny_settings(corpus_file, **{option: value}))


def test_cuda_without_cuda_is_a_config_error(corpus_file):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="device 'cuda'"):
        MainJobConfig(**tiny_settings(corpus_file, device="cuda"))


def test_fewer_tokens_than_a_batch_is_refused_before_work(corpus_file):
    with pytest.raises(ConfigError, match="batch_size"):
        MainJobConfig(**tiny_settings(corpus_file, train_contexts=2, context_size=8, batch_size=1024))


def test_fields_edited_after_construction_are_checked_before_any_write(tmp_path, corpus_file):
    config = MainJobConfig(**tiny_settings(corpus_file))
    config.alpha = float("nan")  # `run --alpha nan` once exited 0 with NaN metrics
    with pytest.raises(ConfigError, match="alpha"):
        run_main_job(config, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_non_empty_output_folder_is_refused_before_the_model_loads(tmp_path, corpus_file):
    out = tmp_path / "finished"
    (out / "sae").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    config = MainJobConfig(**tiny_settings(corpus_file, model="no-such-model-would-fail-to-load"))
    with pytest.raises(OutputExistsError, match="finished"):
        run_main_job(config, out)
    assert (out / "metrics.json").read_text() == "{}"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="is a file"):
        run_main_job(config, tmp_path / "file")
    with pytest.raises(ConfigError, match="overwrite and resume"):
        run_main_job(config, out, resume=True, overwrite=True)


def test_resume_refuses_other_settings_and_returns_a_finished_run(tmp_path, corpus_file):
    out = tmp_path / "run"
    out.mkdir()
    config = MainJobConfig(**tiny_settings(corpus_file, model="no-such-model-would-fail-to-load"))
    (out / main_job.JOB_CONFIG).write_text(json.dumps({**config.__dict__, "alpha": 0.3}))
    with pytest.raises(ConfigError, match=r"alpha: 0\.3 → 0\.05"):
        run_main_job(config, out, resume=True)
    (out / main_job.JOB_CONFIG).write_text(json.dumps({**config.__dict__, "device": "elsewhere"}))
    (out / "metrics.json").write_text(json.dumps({"ce_spliced": 1.5}))
    assert run_main_job(config, out, resume=True) == {"ce_spliced": 1.5}  # no model was loaded
    (out / "metrics.json").write_text("{truncated")
    with pytest.raises(DataFileError, match="metrics.json"):
        run_main_job(config, out, resume=True)


def test_overwrite_never_removes_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "something").write_text("x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="working directory"):
        outputs.prepare_output_folder(".", overwrite=True)
    with pytest.raises(ConfigError, match="working directory"):
        outputs.prepare_output_folder(tmp_path.parent, overwrite=True)
    assert (tmp_path / "something").exists()


def test_publish_moves_the_completion_file_last(tmp_path, monkeypatch):
    staged = tmp_path / "staged"
    (staged / "sae").mkdir(parents=True)
    for name in ("metrics.json", "report.html", "history.json"):
        (staged / name).write_text(name)
    moved = []
    real_replace = os.replace

    def replace(source, destination):
        if Path(source).name == "metrics.json":
            raise KeyboardInterrupt  # a kill just before the last move
        moved.append(Path(source).name)
        real_replace(source, destination)

    monkeypatch.setattr(outputs.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        outputs.publish_folder(staged, tmp_path / "out", last=["metrics.json"])
    assert sorted(moved) == ["history.json", "report.html", "sae"]
    assert not (tmp_path / "out" / "metrics.json").exists()  # so the run does not look complete


def test_atomic_text_write_leaves_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    outputs.write_text_atomic(path, "old")
    monkeypatch.setattr(outputs.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        outputs.write_text_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_alpha_warm_up_default_is_the_first_quarter():
    # One rule for the whole package (bilinear.default_alpha_warm_up_steps): at least one step,
    # so runs of 1-3 steps warm up over 1 (train's old copy gave 0); 0 steps is refused.
    assert [default_alpha_warm_up_steps(n) for n in (3, 4, 150, 1024)] == [1, 1, 37, 256]
    with pytest.raises(ConfigError, match="total_steps"):
        default_alpha_warm_up_steps(-1)


class Killed(Exception):
    pass


@pytest.fixture(scope="module")
def tiny_qwen3():
    return models.qwen3_tiny(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=64)


@pytest.mark.slow
def test_killed_main_job_resumes_to_the_uninterrupted_result(tmp_path, corpus_file, tiny_qwen3, monkeypatch):
    config = MainJobConfig(**tiny_settings(corpus_file))
    reference = run_main_job(config, tmp_path / "reference", model=tiny_qwen3)
    assert reference["mean_ablation_source"].startswith("training activations")
    assert reference["resumed_from_steps"] == {"bilinear": None, "baseline": None}
    assert not (tmp_path / "reference" / main_job.STAGING).exists()
    assert not (tmp_path / "reference" / main_job.CHECKPOINTS).exists()  # removed once the run is done

    out = tmp_path / "run"
    real_marker = train.write_marker

    def killed_after_first_checkpoint(*args, **kwargs):
        real_marker(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(train, "write_marker", killed_after_first_checkpoint)
    with pytest.raises(Killed):
        run_main_job(config, out, model=tiny_qwen3)
    monkeypatch.setattr(train, "write_marker", real_marker)
    assert not (out / "metrics.json").exists() and not (out / "sae").exists()
    assert list((out / main_job.CHECKPOINTS / "bilinear").iterdir())
    with pytest.raises(OutputExistsError, match="resume"):
        run_main_job(config, out, model=tiny_qwen3)
    resumed = run_main_job(config, out, model=tiny_qwen3, resume=True)
    assert 0 < resumed["resumed_from_steps"]["bilinear"] < config.steps
    for key in ("ce_spliced", "ce_mean_ablated", "kl", "explained_variance", "reconstruction_error", "hoyer_density"):
        assert resumed[key] == reference[key], key
    for key in ("ce_spliced", "ce_mean_ablated", "kl", "explained_variance"):
        assert resumed["baseline"][key] == reference["baseline"][key], key
    history = json.loads((out / "history.json").read_text())
    assert history == json.loads((tmp_path / "reference" / "history.json").read_text())

    # overwrite replaces the whole folder: nothing of the old run survives.
    (out / "latents" / "stale.html").write_text("old page")
    again = run_main_job(config, out, model=tiny_qwen3, overwrite=True)
    assert not (out / "latents" / "stale.html").exists()
    assert again["ce_spliced"] == reference["ce_spliced"]
