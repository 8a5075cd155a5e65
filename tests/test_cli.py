"""The ``sae-bilinear`` CLI: its structure (a parser without torch), its help, its options.

Bad input is in ``tests/test_bad_inputs_cli.py``; the commands end to end on a real model in
``tests/test_main_job.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch

from sae_bilinear import BilinearSAE, BilinearSAEConfig, cli, kernels, models, train
from sae_bilinear.cli import options, parser, paths, run, runtime, sources
from sae_bilinear.cli import train as train_command
from sae_bilinear.cli.user_errors import is_user_error
from sae_bilinear.errors import ConfigError, OutputExistsError
from sae_bilinear.main_job import BASELINES, MainJobConfig

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")
ROOT = Path(__file__).resolve().parents[1]


def subcommands(root: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in root._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "sae"
    BilinearSAE(BilinearSAEConfig(d_in=8, d_sae=16, variant="vanilla", lifted=True)).save_model(folder)
    return folder


# ------------------------------------------------------------------------------- structure

# Stands in for a lazy ``sae_bilinear/__init__`` (the real one imports SAELens today) and makes
# every heavy library unimportable: parsing, and every command's --help, must not need them.
LIGHT_PARSE = textwrap.dedent(
    """
    import runpy, sys, types
    for heavy in ("torch", "sae_lens", "transformer_lens", "transformers", "numpy", "huggingface_hub"):
        sys.modules[heavy] = None
    package = types.ModuleType("sae_bilinear")
    package.__path__ = [sys.argv[1]]
    sys.modules["sae_bilinear"] = package
    from sae_bilinear.cli import build_parser, parser
    args = build_parser().parse_args(["run", "--steps", "3", "--alpha", "0.2", "--threads", "2"])
    assert (args.steps, args.alpha, args.threads) == (3, 0.2, 2), args
    # ablate/steer/walk hand --help to the experiment's own parser, which needs torch (by design)
    light = [module for module in parser.COMMANDS if not getattr(module, "OWN_HELP", False)]
    for command in [[]] + [[module.NAME] for module in light]:
        sys.argv = ["sae-bilinear", *command, "--help"]
        try:
            runpy.run_module("sae_bilinear.cli", run_name="__main__")  # python -m sae_bilinear.cli
        except SystemExit as exit_:
            assert exit_.code == 0, (command, exit_.code)
    print("parsed without", sorted(name for name in ("torch", "sae_lens") if sys.modules.get(name) is None))
    """
)


def test_parser_and_help_need_no_heavy_import():
    result = subprocess.run(
        [sys.executable, "-c", LIGHT_PARSE, str(ROOT / "sae_bilinear")], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "parsed without ['sae_lens', 'torch']" in result.stdout
    assert "usage: sae-bilinear convert-bae" in result.stdout  # every command's help was printed


def test_commands_have_the_documented_interface():
    names = [module.NAME for module in parser.COMMANDS]
    assert names == ["run", "train", "sweep", "evaluate", "analyze", "atlas", "compare", "ablate", "steer", "walk",
                     "convert-bae", "push", "releases"]
    for module in parser.COMMANDS:
        assert module.HELP and module.DESCRIPTION and callable(module.add_arguments) and callable(module.execute)


# ------------------------------------------------------------------------------- help


def test_every_command_and_option_is_documented_with_its_default():
    for name, sub in subcommands(parser.build_parser()).items():
        assert sub.description, name
        help_text = sub.format_help()
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
            shown = action.default is not None and action.default is not False and action.default != []
            if shown and action.option_strings and action.default is not argparse.SUPPRESS:
                assert f"(default: {action.default})" in " ".join(help_text.split()), (name, action.dest)


def test_run_options_are_main_job_config_fields():
    fields = {field.name: field for field in dataclasses.fields(MainJobConfig)}
    read = {field.name: field for field in sources.dataclass_fields(run.MODULE, run.CONFIG)}
    assert list(read) == list(fields)
    for name, field in fields.items():
        assert read[name].default == field.default, name  # the source was read right
        assert read[name].doc, f"MainJobConfig.{name} has no attribute docstring"
    args = parser.build_parser().parse_args(["run"])
    assert MainJobConfig(**{name: getattr(args, name) for name in fields}) == MainJobConfig()
    assert sources.constant(*run.CHOICES["variant"]) == kernels.VARIANTS
    assert sources.constant(*run.CHOICES["optimizer"]) == train.OPTIMIZERS
    assert sources.constant(*run.CHOICES["baseline"]) == BASELINES
    assert {models.parse_dtype(name) for name in run.DTYPES} == {torch.float32, torch.bfloat16, torch.float16}


def test_run_options_parse_to_typed_values():
    args = parser.build_parser().parse_args(
        ["run", "--steps", "7", "--alpha", "0.25", "--lr", "3e-3", "--variant", "combined",
         "--hook-name", "blocks.2.hook_resid_pre"]
    )
    assert (args.steps, args.alpha, args.lr, args.variant) == (7, 0.25, 3e-3, "combined")
    assert args.hook_name == "blocks.2.hook_resid_pre" and not args.overwrite and not args.resume


def test_evaluate_defaults_are_runs(sae_dir):
    args = parser.build_parser().parse_args(["evaluate", str(sae_dir)])
    config = MainJobConfig()
    assert (args.eval_contexts, args.device, args.dtype) == (config.eval_contexts, config.device, config.dtype)
    # Model, hook, corpus and context size come from the SAE's metadata, which run writes from its config.
    assert args.model is None and args.hook_name is None and args.corpus is None and args.context_size is None


def test_one_naming_scheme_with_hidden_old_spellings(sae_dir):
    build = parser.build_parser()
    old = build.parse_args(["evaluate", str(sae_dir), "--hook", "blocks.1.hook_resid_pre", "--contexts", "3"])
    new = build.parse_args(["evaluate", str(sae_dir), "--hook-name", "blocks.1.hook_resid_pre", "--eval-contexts", "3"])
    assert (old.hook_name, old.eval_contexts) == (new.hook_name, new.eval_contexts) == ("blocks.1.hook_resid_pre", 3)
    assert build.parse_args(["convert-bae", str(sae_dir), "x", "--model-name", "m"]).model == "m"
    for name in ("evaluate", "analyze", "run"):
        text = subcommands(build)[name].format_help()
        assert "--hook-name" in text and "--eval-contexts" in text
        assert "--hook " not in text and "--contexts" not in text


def test_threads_before_and_after_the_command(monkeypatch):
    build = parser.build_parser()
    assert build.parse_args(["--threads", "3", "releases"]).threads == 3
    assert build.parse_args(["releases", "--threads", "2"]).threads == 2
    assert build.parse_args(["--threads", "3", "releases", "--threads", "2"]).threads == 2
    assert not hasattr(build.parse_args(["releases"]), "threads")
    calls = []
    monkeypatch.setattr(runtime, "set_threads", calls.append)
    assert cli.main(["releases", "--threads", "2"]) == 0
    assert calls == [2]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("sae-bilinear ") and parser.version() != ""


def test_releases_prints_a_header(capsys):
    assert cli.main(["releases"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["RELEASE", "SAE_ID", "REPO_ID", "PATH", "MODEL", "HOOK", "FORMAT"]
    assert len(lines) > 1 and all(len(line.split()) == len(lines[0].split()) for line in lines)


# ------------------------------------------------------------------------------- train --config


def test_train_finds_packaged_configs_by_name(capsys):
    packaged = train_command.packaged_configs()
    assert {"qwen3-0.6b-base-l18", "qwen3-0.6b-base-l18-sweep", "smollm2-135m-l15"} <= set(packaged)
    assert train_command.find_config("qwen3-0.6b-base-l18") == ROOT / "hub_configs/train/qwen3-0.6b-base-l18.yaml"
    assert cli.main(["train", "--config", "qwen3-0.6b-base-l18-sweep", "--dry-run", "--set", "sae.k=64"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 44 and '"k": 64' in lines[0]  # the sweep's base is found beside it


def test_train_defaults_dataset_remote_code_off(capsys):
    # SAELens's default is dataset_trust_remote_code=True; the CLI turns it off unless allowed.
    assert cli.main(["train", "--config", "smollm2-135m-l15", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out.split(": ", 1)[1])["dataset_trust_remote_code"] is False
    assert cli.main(["train", "--config", "smollm2-135m-l15", "--dry-run", "--allow-remote-code"]) == 0
    assert "dataset_trust_remote_code" not in json.loads(capsys.readouterr().out.split(": ", 1)[1])


def test_set_values_are_json_or_strings():
    assert options.assignment("sae.k=64") == ("sae.k", 64)
    assert options.assignment("sae.sparsity=topk") == ("sae.sparsity", "topk")
    assert options.assignment("lifted=false") == ("lifted", False)
    assert options.assignment("seqpos_slice=[1, null]") == ("seqpos_slice", [1, None])
    assert options.assignment(" a.b = 0.5") == ("a.b", 0.5)
    with pytest.raises(argparse.ArgumentTypeError, match="NaN"):
        options.assignment("sae.alpha=NaN")


@pytest.mark.slow
def test_wheel_ships_the_cli_and_the_packaged_configs(tmp_path):
    # Built from a copy, so that setuptools' build/ and egg-info stay out of the checkout.
    source = tmp_path / "source"
    for folder in ("sae_bilinear", "hub_configs"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for file in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / file, source / file)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
         str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    (wheel,) = tmp_path.glob("sae_bilinear-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("__init__", "__main__", "parser", "run", "train", "runtime"):
        assert f"sae_bilinear/cli/{module}.py" in names
    assert "sae_bilinear/hub_configs/train/qwen3-0.6b-base-l18.yaml" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "sae-bilinear = sae_bilinear.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# ------------------------------------------------------------------------------- runtime helpers


def test_library_flags_pass_only_what_is_on_and_refuse_what_is_unsupported():
    def takes(config, out, *, resume=False, overwrite=False):
        return resume, overwrite

    def older(config, out):
        return None

    assert runtime.library_flags(takes, resume=False, overwrite=True) == {"overwrite": True}
    assert runtime.library_flags(older, resume=False, overwrite=False) == {}
    with pytest.raises(ConfigError, match="--resume is not supported"):
        runtime.library_flags(older, resume=True)


def test_existing_outputs_are_refused_unless_asked(tmp_path):

    paths.refuse_existing_output(tmp_path / "new", option="--out", overwrite=False, resume=False)
    paths.refuse_existing_output(tmp_path, option="--out", overwrite=False, resume=False)  # empty folder
    (tmp_path / "a").write_text("x")
    with pytest.raises(OutputExistsError, match="--overwrite.*--resume"):
        paths.refuse_existing_output(tmp_path, option="--out", overwrite=False, resume=False)
    paths.refuse_existing_output(tmp_path, option="--out", overwrite=True, resume=False)
    paths.refuse_existing_output(tmp_path, option="--out", overwrite=False, resume=True)
    paths.write_text_atomic(tmp_path / "a", "new")
    assert (tmp_path / "a").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def _raise(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


@pytest.mark.parametrize(
    "error,expected",
    [
        (ConfigError("x"), True),
        (FileNotFoundError("x"), True),
        (IsADirectoryError("x"), True),
        (PermissionError("x"), True),
        (json.JSONDecodeError("bad", "{", 0), True),
        (ModuleNotFoundError("No module named 'gguf'", name="gguf"), True),
        (ModuleNotFoundError("No module named 'sae_bilinear.x'", name="sae_bilinear.x"), False),
        (RuntimeError("x"), False),
        (KeyError("x"), False),
        (TypeError("x"), False),
    ],
)
def test_which_exceptions_are_user_errors(error, expected):
    assert is_user_error(_raise(error)) is expected


def test_a_value_error_is_a_user_error_only_when_the_package_raised_it():
    # Transitional (until every check raises a UserError): the package's own `raise ValueError`.
    with pytest.raises(ValueError) as raised:
        models.parse_dtype("int8")
    assert is_user_error(raised.value)
    assert not is_user_error(_raise(ValueError("raised outside the package, e.g. by numpy")))


# ------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_evaluate_with_defaults_reproduces_the_run(tmp_path, capsys):
    """The README's promise: `evaluate SAE` with no options gives `run`'s numbers."""
    hf_model, tokenizer = models.qwen3_tiny_hf(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=64)
    hf_model.save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(f"Paragraph {i}: the river runs past {i % 7} hills and {i % 5} mills, "
                                  f"counting {i}, {i + 1} and {i + 2} stones." for i in range(200)))
    out = tmp_path / "run"
    settings = ["--model", str(tmp_path / "tiny"), "--hook-name", "blocks.1.hook_resid_pre", "--corpus", str(corpus),
                "--context-size", "16", "--train-contexts", "24", "--expansion", "1", "--steps", "4",
                "--batch-size", "64", "--baseline", "none", "--n-latents", "1", "--out", str(out)]
    assert cli.main(["run", *settings]) == 0
    written = json.loads((out / "metrics.json").read_text())
    assert cli.main(["evaluate", str(out / "sae"), "--out", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["n_tokens"] == written["eval_tokens"] > 0
    for key in ("ce_clean", "ce_spliced", "ce_zero_ablated", "ce_mean_ablated", "kl", "explained_variance"):
        assert again[key] == pytest.approx(written[key], rel=1e-5), key
    assert again["mean_ablation"] == written["mean_ablation"] == f"training activations ({written['tokens']} tokens)"
    assert cli.main(["run", *settings]) == 2  # a finished run is not overwritten
    assert "--overwrite" in capsys.readouterr().err


# ------------------------------------------------------------------------------- experiments, sweep


def test_experiment_commands_hand_their_options_to_the_experiment(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["walk", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: sae-bilinear walk") and "--latent" in out and "--sae" in out


def test_experiment_command_user_error_is_one_line(tmp_path, capsys):
    code = cli.main(["steer", "--sae", str(tmp_path / "missing"), "--latent", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("sae-bilinear steer: error: ") and err.count("\n") == 1, err


def test_sweep_missing_config_is_one_line(tmp_path, capsys):
    code = cli.main(["sweep", str(tmp_path / "nope.yaml"), "--local"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("sae-bilinear sweep: error: ") and "nope.yaml" in err, err


def test_unknown_option_of_a_light_command_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["releases", "--bogus"])
    assert exit_.value.code == 2 and "--bogus" in capsys.readouterr().err
