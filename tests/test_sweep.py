"""Sweeps: one model pass per group, members on Ray or locally, kill and rerun, failures alone."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sae_bilinear import errors, models, sweep, sweep_member, sweep_plan, sweep_report

pytestmark = pytest.mark.slow

WORDS = "the a river stone light dark king road house bread water fire wind song night day field city sea hill".split()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny random Qwen3 saved as a local Hugging Face folder, and a small text corpus."""
    root = tmp_path_factory.mktemp("sweep")
    hf, tokenizer = models.qwen3_tiny_hf(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=64)
    hf.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    generator = torch.Generator().manual_seed(0)
    docs = [
        " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (60,), generator=generator)) + "." for _ in range(300)
    ]
    (root / "corpus.txt").write_text("\n\n".join(docs))
    return root


def write_sweep(root: Path, alphas: str = "[0.0, 0.2]", variants: str = "[vanilla, mixed]", tokens: int = 3200) -> Path:
    (root / "base.yaml").write_text(
        textwrap.dedent(f"""
        sae: {{architecture: bilinear, d_in: 32, d_sae: 64, variant: vanilla, lifted: true, alpha: 0.1}}
        model_name: {root / "model"}
        hook_name: blocks.1.hook_resid_pre
        dataset_path: {root / "corpus.txt"}
        context_size: 32
        prepend_bos: true
        train_batch_size_tokens: 64
        training_tokens: {tokens}
        lr: 0.003
        device: cpu
        n_batches_for_norm_estimate: 2
        dead_feature_window: 20
        feature_sampling_window: 50
        logger: {{log_to_wandb: false}}
        """)
    )
    path = root / f"sweep-{abs(hash((alphas, variants, tokens)))}.yaml"
    path.write_text(f"base: base.yaml\nsweep:\n  sae.variant: {variants}\n  sae.alpha: {alphas}\n")
    return path


def count_model_passes(monkeypatch) -> list[int]:
    calls: list[int] = []
    original = sweep.activation_store.collect

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(sweep.activation_store, "collect", counting)
    return calls


def test_plan_groups_members_that_share_activations(tiny_folder):
    plan = sweep_plan.plan_sweep(write_sweep(tiny_folder))
    assert [m.name for m in plan.members] == ["vanilla-a0", "vanilla-a20", "mixed-a0", "mixed-a20"]
    assert len(plan.groups) == 1
    other = write_sweep(tiny_folder, tokens=6400)
    assert sweep_plan.plan_sweep(other).members[0].group != plan.members[0].group


def test_ray_sweep_one_model_pass_four_loadable_members(tiny_folder, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from sae_lens import SAE

    calls = count_model_passes(monkeypatch)
    result = sweep.run_sweep(write_sweep(tiny_folder), sweep.SweepOptions(out=tmp_path, workers=2))
    # one pass of the language model per part (training and held-out text), for all four members
    assert len(calls) == 2 and result["model_passes"] == 1 and result["runner"] == "ray"
    rows = result["members"]
    assert len(rows) == 4 and all(row["status"] == "done" for row in rows)
    for row in rows:
        sae = SAE.load_from_disk(tmp_path / row["name"])
        assert sae.cfg.d_sae == 64 and sae.cfg.variant == row["variant"]
        assert 0 < row["error"] < 1 and 0 <= row["hoyer_density"] <= 1
    table = json.loads((tmp_path / "sweep.json").read_text())
    assert len(table["members"]) == 4
    assert (tmp_path / "sweep.md").read_text().count("| done |") == 4
    assert (tmp_path / "pareto.png").stat().st_size > 1000
    assert "plotly" in (tmp_path / "pareto.html").read_text()[:5000].lower()
    # a rerun trains nothing and runs no model
    calls.clear()
    again = sweep.run_sweep(write_sweep(tiny_folder), sweep.SweepOptions(out=tmp_path, local=True))
    assert calls == [] and again["model_passes"] == 0 and all(row.get("skipped") for row in again["members"])


def test_local_and_ray_members_are_the_same_training(tiny_folder, tmp_path):
    """The batch order is a function of the seed, so where a member runs does not matter."""
    path = write_sweep(tiny_folder, alphas="[0.1]", variants="[vanilla]")
    local = sweep.run_sweep(path, sweep.SweepOptions(out=tmp_path / "a", local=True))
    again = sweep.run_sweep(path, sweep.SweepOptions(out=tmp_path / "b", local=True))
    assert local["members"][0]["error"] == again["members"][0]["error"]


def test_failing_member_fails_alone_with_its_message(tiny_folder, tmp_path):
    path = write_sweep(tiny_folder, alphas="[0.1, -1.0]", variants="[vanilla]")
    result = sweep.run_sweep(path, sweep.SweepOptions(out=tmp_path, local=True))
    status = {row["name"]: row for row in result["members"]}
    assert status["vanilla-a10"]["status"] == "done"
    failed = status["vanilla-a-100"]
    assert failed["status"] == "failed" and "alpha" in failed["error"]
    assert "alpha" in (tmp_path / "sweep.md").read_text()
    assert (tmp_path / ".vanilla-a-100.failed.json").is_file()
    assert not (tmp_path / "vanilla-a-100").exists()


def _finished(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if sweep_member.is_finished(out, p.name)) if out.is_dir() else []


def test_killed_driver_rerun_finishes_the_rest_without_retraining(tiny_folder, tmp_path):
    path = write_sweep(tiny_folder, tokens=12800)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    code = (
        "from pathlib import Path; from sae_bilinear import sweep; "
        f"sweep.run_sweep({str(path)!r}, sweep.SweepOptions(out=Path({str(out)!r}), local=True, n_checkpoints=8))"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while len(_finished(out)) < 2 and time.time() < deadline and driver.poll() is None:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    first = _finished(out)
    assert len(first) >= 2, "the driver finished fewer than 2 members before the deadline"
    stamps = {name: (out / name / "metrics.json").stat().st_mtime_ns for name in first}
    result = sweep.run_sweep(path, sweep.SweepOptions(out=out, local=True))
    rows = {row["name"]: row for row in result["members"]}
    assert all(row["status"] == "done" for row in rows.values()) and len(rows) == 4
    for name in first:
        assert rows[name]["skipped"] and (out / name / "metrics.json").stat().st_mtime_ns == stamps[name]
    assert result["model_passes"] == 0  # the activations survived the kill
    assert not list(out.glob(".*.partial"))


def test_member_resumes_from_its_checkpoint_with_the_same_result(tiny_folder, tmp_path, monkeypatch):
    """A member killed after a checkpoint ends where an uninterrupted one ends."""
    path = write_sweep(tiny_folder, alphas="[0.1]", variants="[mixed]", tokens=6400)
    clean = sweep.run_sweep(path, sweep.SweepOptions(out=tmp_path / "clean", local=True, n_checkpoints=3))
    out = tmp_path / "killed"
    original_fit = sweep_member._ProgressTrainer.fit

    def dying_fit(self):
        original = self._checkpoint_if_needed

        def checkpoint_then_die():
            before = len(self.checkpoint_thresholds)
            original()
            if len(self.checkpoint_thresholds) < before:
                raise KeyboardInterrupt  # stands in for SIGKILL right after the first checkpoint

        self._checkpoint_if_needed = checkpoint_then_die
        return original_fit(self)

    monkeypatch.setattr(sweep_member._ProgressTrainer, "fit", dying_fit)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(path, sweep.SweepOptions(out=out, local=True, n_checkpoints=3))
    assert sweep_member.latest_checkpoint(sweep_member.partial_folder(out, "mixed-a10")) is not None
    monkeypatch.setattr(sweep_member._ProgressTrainer, "fit", original_fit)
    resumed = sweep.run_sweep(path, sweep.SweepOptions(out=out, local=True, n_checkpoints=3))
    row, reference = resumed["members"][0], clean["members"][0]
    assert row["resumed_from_step"] > 0
    assert row["steps"] == reference["steps"]
    assert row["error"] == pytest.approx(reference["error"], rel=1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"workers": 0}, "workers"),
        ({"resources": sweep_plan.Resources(num_gpus=float("nan"))}, "num_gpus"),
        ({"n_checkpoints": -1}, "n_checkpoints"),
        ({"only": ("nope",)}, "nope"),
    ],
)
def test_bad_options_are_named(tiny_folder, tmp_path, change, message):
    options = sweep.SweepOptions(out=tmp_path, local=True)
    for key, value in change.items():
        setattr(options, key, value)
    with pytest.raises(errors.ConfigError, match=message):
        sweep.run_sweep(write_sweep(tiny_folder), options)


def test_without_ray_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(errors.MissingDependencyError, match="sweep"):
        sweep._require_ray()


def test_markdown_table_lists_failures():
    text = sweep_report.markdown_table(
        [
            {"name": "a", "status": "done", "error": 0.1, "hoyer_density": 0.5},
            {"name": "b", "status": "failed", "error": "ConfigError: alpha must be >= 0"},
        ]
    )
    assert "| a | done |" in text and "`b`: ConfigError: alpha" in text


def test_lifted_members_get_spliced_ce_from_one_model_load(tiny_folder, tmp_path, monkeypatch):
    loads: list[str] = []
    original = models.load_model

    def counting(name, *args, **kwargs):
        loads.append(str(name))
        return original(name, *args, **kwargs)

    monkeypatch.setattr(models, "load_model", counting)
    write_sweep(tiny_folder)
    path = tiny_folder / "sweep-lifted.yaml"
    path.write_text("base: base.yaml\nsweep:\n  sae.variant: [vanilla, mixed]\n  sae.lifted: [true, false]\n")
    options = sweep.SweepOptions(out=tmp_path, local=True, eval_contexts=4)
    result = sweep.run_sweep(path, options)
    rows = result["members"]
    assert len(rows) == 4 and all(row["status"] == "done" for row in rows)
    # one load of the language model for the activation pass and every splice
    assert loads == [str(tiny_folder / "model")] and result["models_loaded"] == 1
    lifted = [row for row in rows if row["lifted"]]
    unlifted = [row for row in rows if not row["lifted"]]
    assert len(lifted) == 2 and len(unlifted) == 2 and result["spliced"] == 2
    for row in lifted:
        assert math.isfinite(row["ce_spliced"]) and row["ce_spliced"] > 0 and row["kl"] >= 0
        assert math.isfinite(row["ce_loss_recovered"]) and row["eval_contexts"] == 4
        assert 0 < row["eval_tokens"] <= 4 * 31  # 4 contexts of 32, BOS (start, document breaks) not scored
        assert row["mean_ablation"].startswith("training activations (")
        assert "splice_skipped" not in row
        assert math.isfinite(row["splice_seconds"]) and row["splice_seconds"] > 0
    for row in unlifted:
        assert row["ce_spliced"] is None and "unlifted" in row["splice_skipped"]
    table = json.loads((tmp_path / "sweep.json").read_text())
    assert {r["name"]: r["ce_spliced"] for r in table["members"]} == {r["name"]: r["ce_spliced"] for r in rows}
    text = (tmp_path / "sweep.md").read_text()
    assert "ce_spliced" in text.splitlines()[4] and f"{lifted[0]['ce_spliced']:.4g}" in text
    assert f"`{unlifted[0]['name']}`: unlifted bilinear SAE" in text
    # a rerun reads each member's splice.json: no model at all, the same numbers
    loads.clear()
    again = sweep.run_sweep(path, options)
    assert loads == [] and again["spliced"] == 0
    assert [r["ce_spliced"] for r in again["members"]] == [r["ce_spliced"] for r in rows]
    # other contexts are measured again (one load); 0 turns the splice off
    more = sweep.run_sweep(path, sweep.SweepOptions(out=tmp_path, local=True, eval_contexts=6))
    assert len(loads) == 1 and more["spliced"] == 2
    before = {r["name"]: r["eval_tokens"] for r in rows if r["lifted"]}
    assert all(before[r["name"]] < r["eval_tokens"] <= 6 * 31 for r in more["members"] if r["lifted"])
    off = sweep.run_sweep(path, sweep.SweepOptions(out=tmp_path, local=True, eval_contexts=0))
    assert all(r["ce_spliced"] is None and r["splice_skipped"] for r in off["members"])
    assert "eval_contexts=0" in next(r for r in off["members"] if r["lifted"])["splice_skipped"]


def test_a_negative_eval_contexts_is_named(tiny_folder, tmp_path):
    with pytest.raises(errors.ConfigError, match="eval_contexts"):
        sweep.run_sweep(write_sweep(tiny_folder), sweep.SweepOptions(out=tmp_path, local=True, eval_contexts=-1))
