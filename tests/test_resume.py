"""Kill and resume: a resumed run continues exactly where the uninterrupted run would be.

The per-step records (step number, learning rates, α, optimiser state, parameters) come from
tests/_resume_child.py, which also runs as the subprocess that is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import _resume_child as child
import pytest
import torch

from sae_bilinear import checkpoints, train
from sae_bilinear.checkpoints import MARKER_FILENAME, latest_checkpoint
from sae_bilinear.errors import ConfigError, DataFileError, MissingDependencyError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
ROOT = Path(__file__).resolve().parents[1]


class Killed(Exception):
    """Stands in for a kill right after the first checkpoint (the in-process tests)."""


def killed_after_first_checkpoint() -> contextlib.AbstractContextManager[None]:
    def kill(_marker: Path) -> None:
        raise Killed

    return child.after_each_marker(kill)


def read_log(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def steps_by_samples(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {row["samples"]: row for row in rows if "event" not in row}


def reference_activations_run(tmp_path: Path, optimizer: str) -> tuple[list[dict[str, Any]], Any]:
    with child.recording(tmp_path / "reference.jsonl") as rows:
        sae = child.run_activations(optimizer, tmp_path / "reference", resume=False)
    return rows, sae


def assert_resumed_run_matches(resumed: list[dict[str, Any]], reference: list[dict[str, Any]], exact: bool) -> None:
    """Resume event = the reference's state after the checkpoint's last step; later steps line up."""
    event = resumed[0]
    assert event.get("event") == "resumed"
    by_samples = steps_by_samples(reference)
    at_checkpoint = by_samples[event["samples"]]
    # The step counter continues at the next step's own number (SAELens would be one lower).
    assert event["step"] == at_checkpoint["step"] + 1
    for key in ("lr", "alpha", "optimizer", "params"):
        assert event[key] == at_checkpoint[key], key
    later = resumed[1:]
    assert later, "the resumed run trained no step"
    assert later[-1]["samples"] == reference[-1]["samples"]
    for row in later:
        expected = by_samples[row["samples"]]
        assert row["step"] == expected["step"]
        assert row["lr"] == expected["lr"] and row["alpha"] == expected["alpha"]
        if exact:
            assert row["optimizer"] == expected["optimizer"] and row["params"] == expected["params"], row["step"]


@pytest.mark.parametrize("optimizer", ["adam", "muon"])
def test_resume_after_a_kill_continues_exactly(tmp_path, optimizer):
    reference, reference_sae = reference_activations_run(tmp_path, optimizer)
    out = tmp_path / "run"
    with child.recording(tmp_path / "killed.jsonl"), killed_after_first_checkpoint(), pytest.raises(Killed):
        child.run_activations(optimizer, out, resume=False)
    checkpoint = latest_checkpoint(out / "checkpoints")
    assert checkpoint is not None and 0 < checkpoints.read_marker(checkpoint)["n_training_steps"] < child.STEPS
    with child.recording(tmp_path / "resumed.jsonl") as resumed:
        sae = child.run_activations(optimizer, out, resume=True)
    assert_resumed_run_matches(resumed, reference, exact=True)
    # History rows keep their step numbers and values; the weights are bitwise those of the reference.
    assert [row["step"] for row in sae.history] == [row["step"] for row in reference_sae.history]
    assert sae.history == reference_sae.history
    for (name, p), q in zip(sae.named_parameters(), reference_sae.parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_runner_resumes_muon_where_sae_lens_crashed(tmp_path):
    # SAELens loads the checkpoint into its Adam before the Muon swap: KeyError 'param_groups'.
    with child.recording(tmp_path / "reference.jsonl") as reference:
        child.tiny_runner("muon", tmp_path / "reference", resume=False).run()
    out = tmp_path / "run"
    with child.recording(tmp_path / "killed.jsonl"), killed_after_first_checkpoint(), pytest.raises(Killed):
        child.tiny_runner("muon", out, resume=False).run()
    with child.recording(tmp_path / "resumed.jsonl") as resumed:
        runner = child.tiny_runner("muon", out, resume=True)
        sae = runner.run()
    assert runner.resumed_from_steps == resumed[0]["step"]
    assert_resumed_run_matches(resumed, reference, exact=False)
    assert [row["step"] for row in sae.history] == list(range(0, child.STEPS, sae.history_every))


def test_only_the_latest_checkpoint_is_kept_and_a_finished_run_resumes_without_training(tmp_path):
    out = tmp_path / "run"
    with child.recording(tmp_path / "first.jsonl"):
        first = child.run_activations("muon", out, resume=False)
    folders = [p for p in (out / "checkpoints").iterdir()]
    assert len(folders) == 1 and (folders[0] / MARKER_FILENAME).exists()
    assert checkpoints.read_marker(folders[0])["n_training_steps"] == child.STEPS
    with child.recording(tmp_path / "again.jsonl") as rows:
        again = child.run_activations("muon", out, resume=True)
    assert [row.get("event") for row in rows] == ["resumed"]  # no training step
    for p, q in zip(first.parameters(), again.parameters(), strict=False):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_half_written_checkpoint_is_not_resumed_from(tmp_path):
    out = tmp_path / "run"
    with child.recording(tmp_path / "killed.jsonl"), killed_after_first_checkpoint(), pytest.raises(Killed):
        child.run_activations("adam", out, resume=False)
    good = latest_checkpoint(out / "checkpoints")
    partial = out / "checkpoints" / "99999"
    partial.mkdir()
    (partial / "sae_weights.safetensors").write_bytes(b"truncated")
    assert latest_checkpoint(out / "checkpoints") == good


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda c: (c / "sae_weights.safetensors").write_bytes(b"\x00" * 10), "sae_weights.safetensors"),
        (lambda c: (c / "trainer_state.pt").write_bytes(b"not a torch file"), "trainer_state.pt"),
        (lambda c: (c / MARKER_FILENAME).write_text("{"), MARKER_FILENAME),
        (
            lambda c: (c / train.ShuffledBatches.STATE_FILENAME).write_bytes(b"junk"),
            train.ShuffledBatches.STATE_FILENAME,
        ),
    ],
)
def test_damaged_checkpoint_files_are_named(tmp_path, damage, message):
    out = tmp_path / "run"
    with child.recording(tmp_path / "killed.jsonl"), killed_after_first_checkpoint(), pytest.raises(Killed):
        child.run_activations("adam", out, resume=False)
    damage(latest_checkpoint(out / "checkpoints"))
    with pytest.raises(DataFileError, match=message):
        child.run_activations("adam", out, resume=True)


def test_resume_with_another_optimizer_is_refused(tmp_path):
    out = tmp_path / "run"
    with child.recording(tmp_path / "killed.jsonl"), killed_after_first_checkpoint(), pytest.raises(Killed):
        child.run_activations("adam", out, resume=False)
    with pytest.raises(ConfigError, match="optimizer 'adam'"):
        child.run_activations("muon", out, resume=True)


def test_resume_requires_a_torch_load_that_defaults_to_weights_only(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(MissingDependencyError, match="torch >= 2.6"):
        checkpoints.check_torch_load_is_safe()
    monkeypatch.setattr(torch, "__version__", "2.13.0")
    checkpoints.check_torch_load_is_safe()
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ConfigError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        checkpoints.check_torch_load_is_safe()


def _child_command(mode: str, optimizer: str, out: Path, log: Path, flag: str) -> list[str]:
    return [sys.executable, str(Path(child.__file__)), mode, optimizer, str(out), str(log), flag]


def _child_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["activations", "runner"])
@pytest.mark.parametrize("optimizer", ["adam", "muon"])
def test_sigkill_after_first_checkpoint_then_resume(tmp_path, mode, optimizer):
    out = tmp_path / "run"
    out.mkdir()
    process = subprocess.Popen(
        _child_command(mode, optimizer, out, tmp_path / "killed.jsonl", "--pause"), env=_child_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while not (out / "paused").exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:] if process.stderr else ""
        assert time.monotonic() < deadline, "the child wrote no checkpoint"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    resumed_log = tmp_path / "resumed.jsonl"
    done = subprocess.run(
        _child_command(mode, optimizer, out, resumed_log, "--resume"),
        env=_child_env(),
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    if mode == "activations":
        reference, _ = reference_activations_run(tmp_path, optimizer)
    else:
        with child.recording(tmp_path / "reference.jsonl") as reference:
            child.tiny_runner(optimizer, tmp_path / "reference", resume=False).run()
        assert (out / "sae" / "cfg.json").exists() and not list((out / "sae").glob(".*partial*"))
    # SAELens's ActivationsStore saves only its dataset position, not its shuffling buffer, so
    # after a runner resume the batches (hence the later optimiser states) differ; the state
    # at the checkpoint, the step numbers, learning rates and α still match exactly.
    assert_resumed_run_matches(read_log(resumed_log), reference, exact=mode == "activations")
