"""Bad input to ``sae-bilinear``: one line ``sae-bilinear <cmd>: error: ...``, exit 2, no traceback.

Each case runs ``cli.main`` in-process on tiny SAE folders and checks the exit code, the
one-line format, and that the message names the file, option or key at fault. None of them
loads a language model: every check runs before the expensive work.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

from sae_bilinear import BilinearSAE, BilinearSAEConfig, cli
from sae_bilinear.cli import compare

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Placeholders for the table: SAE folders (good, linear, truncated, …), configs, a file."""
    root = tmp_path_factory.mktemp("bad_inputs")
    torch.manual_seed(0)
    BilinearSAE(BilinearSAEConfig(d_in=8, d_sae=16, variant="vanilla", lifted=True)).save_model(root / "bil")
    TopKSAE(TopKSAEConfig(d_in=8, d_sae=16, k=4)).save_model(root / "lin")
    BilinearSAE(BilinearSAEConfig(d_in=8, d_sae=16, variant="vanilla", lifted=True)).save_model(root / "trunc")
    weights = root / "trunc" / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (root / "badcfg").mkdir()
    (root / "badcfg" / "cfg.json").write_text("{not json")
    (root / "bae").mkdir()
    (root / "bae" / "config.json").write_text("{}")
    (root / "file.txt").write_text("not a folder")
    (root / "existing.json").write_text("{}")
    (root / "taken").mkdir()
    (root / "taken" / "sae_weights.safetensors").write_text("a finished run")
    base = {"sae": {"d_in": 8, "d_sae": 16}, "model_name": "smollm2-135m", "hook_name": "blocks.1.hook_resid_pre",
            "device": "cpu", "output_path": str(root / "taken")}
    configs = {
        "unknown": base | {"bogus_key": 3},
        "sae_typo": base | {"sae": {"d_in": 8, "d_sae": 16, "alpah": 0.2}},
        "logger_typo": base | {"logger": {"log_to_wandbb": False}},
        "remote": base | {"model_from_pretrained_kwargs": {"trust_remote_code": True}},
        "dataset_remote": base | {"dataset_trust_remote_code": True},
        "good": base,
    }
    for name, config in configs.items():
        (root / f"{name}.yaml").write_text(yaml.safe_dump(config))
    (root / "broken.yaml").write_text("sae: [unclosed")
    (root / "broken.json").write_text('{"sae": ')
    return {"root": str(root), **{name: str(root / name) for name in ("bil", "lin", "trunc", "badcfg", "bae", "taken")}}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, str]:
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code  # argparse: a bad option
    return code, capsys.readouterr().err


CASES = [
    # (argv, fragments the one-line message must contain)
    # SAE folders
    (["evaluate", "{bil}/cfg.json"], ["SAE_DIR", "{bil}/cfg.json", "pass the folder that holds it: {bil}"]),
    (["evaluate", "{trunc}"], ["{trunc}/sae_weights.safetensors", "safetensors"]),
    (["evaluate", "{badcfg}"], ["{badcfg}/cfg.json", "JSON"]),
    (["evaluate", "{bae}"], ["{bae}", "convert-bae"]),
    (["evaluate", "{root}/missing"], ["{root}/missing", "does not exist"]),
    (["compare", "{lin}", "{bil}"], ["compare works on bilinear SAEs", "{lin}", "'topk'"]),
    (["analyze", "{lin}"], ["analyze works on bilinear SAEs", "{lin}"]),
    (["analyze", "{bil}", "--latent", "abc"], ["--latent", "'abc'"]),
    (["analyze", "{bil}", "--latent", "-1"], ["--latent", "'-1'"]),
    (["analyze", "{bil}", "--latent", "16"], ["--latent 16 is out of range", "0..15"]),
    (["analyze", "{bil}", "--n", "0"], ["--n", "≥ 1"]),
    # outputs that exist
    (["evaluate", "{bil}", "--out", "{root}/existing.json"], ["--out {root}/existing.json", "--overwrite"]),
    (["evaluate", "{bil}", "--out", "{root}"], ["--out", "is a folder"]),
    (["convert-bae", "{bil}", "{lin}"], ["DST {lin}", "--overwrite"]),
    (["convert-bae", "{bil}", "{bil}", "--overwrite"], ["would replace SRC"]),
    (["convert-bae", "{root}/file.txt", "{root}/new"], ["SRC", "{root}/file.txt", "not a folder"]),
    (["run", "--out", "{root}/file.txt"], ["--out", "{root}/file.txt", "is a file"]),
    (["run", "--out", "{taken}"], ["--out {taken}", "--overwrite", "--resume"]),
    # numbers: NaN, infinity, out of range, wrong type
    (["run", "--alpha", "nan"], ["--alpha", "'nan'", "NaN"]),
    (["run", "--alpha", "inf"], ["--alpha", "'inf'"]),
    (["run", "--alpha", "-0.1"], ["--alpha", "≥ 0"]),
    (["run", "--lr", "0"], ["--lr", "> 0"]),
    (["run", "--steps", "0"], ["--steps", "≥ 1"]),
    (["run", "--batch-size", "1.5"], ["--batch-size", "'1.5'"]),
    (["run", "--baseline-k", "0"], ["--baseline-k", "≥ 1"]),
    (["run", "--seed", "-1"], ["--seed", "≥ 0"]),
    (["run", "--variant", "foo"], ["--variant", "'foo'"]),
    (["run", "--dtype", "int8"], ["--dtype", "'int8'"]),
    (["evaluate", "{bil}", "--eval-contexts", "0"], ["--eval-contexts", "≥ 1"]),
    (["evaluate", "{bil}", "--contexts", "nan"], ["--contexts", "'nan'"]),
    (["evaluate", "{bil}", "--context-size", "-5"], ["--context-size", "≥ 1"]),
    (["evaluate", "{bil}", "--training-mean", "{root}/nowhere.safetensors"], ["{root}/nowhere.safetensors"]),
    (["evaluate", "{bil}", "--training-mean", "{root}/file.txt"], ["{root}/file.txt", "safetensors"]),
    (["evaluate", "{bil}", "--training-mean", "{root}/file.txt", "--held-out-mean"], ["--held-out-mean"]),
    (["sweep", "{root}/file.txt", "--eval-contexts", "-1"], ["--eval-contexts", "≥ 0"]),
    (["sweep", "{root}/file.txt", "--eval-contexts", "nan"], ["--eval-contexts", "'nan'"]),
    (["--threads", "0", "releases"], ["--threads", "≥ 1"]),
    (["releases", "--threads", "two"], ["--threads", "'two'"]),
    # train configs
    (["train", "--config", "{root}/unknown.yaml", "--dry-run"], ["{root}/unknown.yaml", "'bogus_key'"]),
    (["train", "--config", "{root}/sae_typo.yaml", "--dry-run"], ["'sae.alpah'", "did you mean 'alpha'"]),
    (["train", "--config", "{root}/logger_typo.yaml", "--dry-run"], ["'logger.log_to_wandbb'"]),
    (["train", "--config", "{root}/good.yaml", "--dry-run", "--set", "sae.alpah=0.2"], ["'sae.alpah'"]),
    (["train", "--config", "{root}/remote.yaml", "--dry-run"],
     ["model_from_pretrained_kwargs.trust_remote_code", "--allow-remote-code"]),
    (["train", "--config", "{root}/dataset_remote.yaml", "--dry-run"],
     ["dataset_trust_remote_code", "--allow-remote-code"]),
    (["train", "--config", "{root}/good.yaml"], ["output_path {taken}", "--overwrite"]),
    (["train", "--config", "{root}/broken.yaml", "--dry-run"], ["{root}/broken.yaml", "YAML"]),
    (["train", "--config", "{root}/broken.json", "--dry-run"], ["{root}/broken.json", "JSON"]),
    (["train", "--config", "{root}", "--dry-run"], ["--config {root}", "is a folder"]),
    (["train", "--config", "qwen3-0.6b-base-l1", "--dry-run"],
     ["qwen3-0.6b-base-l1", "does not exist", "qwen3-0.6b-base-l18"]),
    (["train", "--config", "{root}/good.yaml", "--set", "key"], ["--set", "'key'", "KEY=VALUE"]),
    (["train", "--config", "{root}/good.yaml", "--set", "=3"], ["--set", "'=3'"]),
    (["train", "--config", "{root}/good.yaml", "--set", "sae.alpha=NaN"], ["--set", "NaN"]),
    (["train", "--config", "{root}/good.yaml", "--set", "sae.alpha=-Infinity"], ["--set", "Infinity"]),
    # push
    (["push", "{bil}", "no-slash"], ["REPO_ID", "'no-slash'", "OWNER/NAME"]),
]


@pytest.mark.parametrize("argv,fragments", CASES, ids=[" ".join(argv) for argv, _ in CASES])
def test_bad_input_is_one_line_exit_2(argv, fragments, files, capsys):
    argv = [part.format(**files) for part in argv]
    code, err = run_cli(argv, capsys)
    prog = "sae-bilinear" if argv[0].startswith("-") else f"sae-bilinear {argv[0]}"  # a top-level option's error
    assert code == 2, err
    assert err.startswith(f"{prog}: error: "), err
    assert err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment.format(**files) in err, (fragment, err)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["evaluate", "{bil}"], ["analyze", "{bil}"], ["compare", "{bil}", "{bil}"]])
def test_cuda_without_cuda(command, files, capsys):
    code, err = run_cli([part.format(**files) for part in command] + ["--device", "cuda"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--device cuda: CUDA is not available" in err and "--device cpu" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_config_on_cuda_without_cuda(files, tmp_path, capsys):
    config = yaml.safe_load(Path(files["root"], "good.yaml").read_text())
    (tmp_path / "cuda.yaml").write_text(yaml.safe_dump(config | {"device": "cuda", "output_path": str(tmp_path / "o")}))
    code, err = run_cli(["train", "--config", str(tmp_path / "cuda.yaml")], capsys)
    assert code == 2 and "device cuda" in err and "--set device=cpu" in err


def test_push_offline(files, capsys, monkeypatch, block_network):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with block_network():
        code, err = run_cli(["push", files["bil"], "someone/some-repo"], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert (
        err.startswith("sae-bilinear push: error: ") and "push to someone/some-repo" in err and "HF_HUB_OFFLINE" in err
    )


class _ClosedPipe(io.StringIO):
    """stdout of ``sae-bilinear releases | head`` once ``head`` has exited."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_releases_into_a_closed_pipe_is_quiet(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    assert cli.main(["releases"]) == cli.BROKEN_PIPE_EXIT
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_releases_into_a_closed_pipe_subprocess():
    # `sae-bilinear releases | head -0`: the reader is gone before the first write.
    child = subprocess.Popen(
        [sys.executable, "-m", "sae_bilinear.cli", "releases"], cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()
    err = child.stderr.read().decode()
    assert child.wait() == cli.BROKEN_PIPE_EXIT
    assert "Traceback" not in err and "BrokenPipe" not in err and "error" not in err.lower(), err


def test_a_bug_keeps_its_traceback(files, monkeypatch):
    # An exception that is not a user error propagates (pytest sees it), it is not printed away.

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(compare, "execute", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(["compare", files["bil"], files["bil"]])


def test_a_value_error_from_a_library_is_a_bug(files, monkeypatch):
    # A ValueError raised inside a third-party library is a bug, not bad input.
    import numpy as np


    monkeypatch.setattr(compare, "execute", lambda args: np.zeros(3).reshape(2, 2))
    with pytest.raises(ValueError, match="reshape"):
        cli.main(["compare", files["bil"], files["bil"]])


def test_evaluate_out_is_not_written_on_error(files, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code, _ = run_cli(["evaluate", files["trunc"], "--out", str(out)], capsys)
    assert code == 2 and not out.exists()
    assert json.loads(Path(files["root"], "existing.json").read_text()) == {}
