"""experiments/ and benchmarks/: every numeric option is checked for type and range at parse time.

Each script's ``main(argv)`` is called with one bad value; it must exit with argparse's usage
error (code 2) naming the option and the value, before any work starts: the first step of the
work (seeding, thread setup, model loading) is replaced by a stub that raises :class:`Reached`,
so a value that slipped through shows up as ``Reached`` instead of ``SystemExit``. With valid
values (the defaults, and every option at a non-default valid value) ``main`` reaches that stub.
"""

from __future__ import annotations

import argparse
import functools
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from sae_bilinear import experiment_utils, models, values
from sae_bilinear.experiment_utils import load_script

ROOT = Path(__file__).resolve().parents[1]


class Reached(Exception):
    """Raised by the stub of a script's first step of work: parsing passed."""


def _reached(*args: Any, **kwargs: Any) -> Any:
    raise Reached


# --- what each script's options must accept and refuse -------------------------------------

KINDS: dict[str, tuple[str, list[str]]] = {
    # kind: (a valid value, bad values)
    "count": ("3", ["0", "1.5"]),  # an integer ≥ 1
    "seed": ("3", ["-1", "4294967296"]),  # 0 … 2**32 - 1 (numpy's seed)
    "second seed": ("4", ["-1", "4294967296"]),  # a seed, other than --seed
    "positive": ("0.5", ["0", "nan", "inf"]),  # a finite number > 0 (learning rates, scales)
    "nonnegative": ("0.5", ["-0.1", "nan", "inf"]),  # a finite number ≥ 0 (α, noise)
    "index": ("1", ["-1", "x"]),  # an integer ≥ 0
    "two": ("3", ["1"]),  # an integer ≥ 2 (contexts with a BOS, the two halves of a view)
    "fraction": ("0.5", ["1.5", "nan"]),  # in [0, 1]
    "open fraction": ("0.5", ["0", "1"]),  # in (0, 1)
    "planted d": ("12", ["10"]),  # ≥ the manifolds' 11 orthogonal dimensions
    "sweep tokens": ("2048", ["0"]),  # ≥ 1, and at least one batch (1024 tokens)
}

SHARED = {"--seed": "seed"}  # experiment_utils.parser
TRAINING = {  # experiment_utils.add_training_arguments
    "--d-sae": "count",
    "--steps": "count",
    "--batch-size": "count",
    "--lr": "positive",
    "--lr-mixed": "positive",
}
LISTS = {"+", "*"}
"""An option spelled ``"--alphas+"`` in :data:`OPTIONS` takes several values (nargs ``+`` or ``*``)."""

OPTIONS: dict[str, dict[str, str]] = {
    "experiments/stability": {
        **SHARED,
        **TRAINING,
        "--alphas+": "nonnegative",
        "--seed-alphas+": "nonnegative",
        "--other-seeds+": "second seed",
    },
    "experiments/manifold_view": {
        **SHARED,
        **TRAINING,
        "--alpha": "nonnegative",
        "--view-contexts": "count",
        "--n": "two",
    },
    "experiments/width_and_seeds": {
        **SHARED,
        "--expansions+": "count",
        "--seeds+": "seed",
        "--alpha": "nonnegative",
        "--steps": "count",
        "--batch-size": "count",
        "--heldout": "count",
    },
    "experiments/kernel_trick": {
        **SHARED,
        "--dims+": "count",
        "--expansion": "count",
        "--batch": "count",
        "--memory-cap-gib": "positive",
        "--repeats": "count",
    },
    "experiments/planted_manifolds": {
        **SHARED,
        "--d": "planted d",
        "--n-linear": "index",
        "--linear-probability": "fraction",
        "--noise": "nonnegative",
        "--latents": "count",
        "--train-tokens": "count",
        "--test-tokens": "two",
        "--steps": "count",
        "--batch-size": "count",
        "--lr": "positive",
    },
    "experiments/sparsity_sweep": {
        **SHARED,
        **TRAINING,
        "--alphas+": "nonnegative",
        "--baseline-k+": "count",
        "--train-contexts": "count",
        "--eval-contexts": "count",
        "--context-size": "two",
    },
    "experiments/real_manifolds": {
        **SHARED,
        "--train-contexts": "count",
        "--eval-contexts": "count",
        "--context-size": "two",
        "--template-share": "open fraction",
        "--steps": "count",
        "--batch-size": "count",
        "--d-sae": "count",
        "--lr": "positive",
        "--lr-mixed": "positive",
        "--background": "count",
        "--scan-layers+": "index",
        "--scan-contexts": "count",
        "--sae-seed": "seed",
    },
    "experiments/lift_scale": {
        **SHARED,
        "--scales+": "positive",
        "--steps": "count",
        "--batch-size": "count",
        "--lr": "positive",
        "--alpha": "nonnegative",
        "--expansion": "count",
        "--baseline-k": "count",
        "--train-contexts": "count",
        "--eval-contexts": "count",
    },
    "benchmarks/atlas_benchmark": {"--contexts": "count", "--context-size": "two"},
    "benchmarks/loss_benchmark": {"--threads": "count", "--repeats": "count"},
    "benchmarks/perf_benchmark": {
        "--k": "count",
        "--repeats": "count",
        "--steps": "count",
        "--dense-steps": "count",
        "--threads": "count",
    },
    "benchmarks/qwen3_gpu_check": {"--steps": "count", "--expansion": "count"},
    "benchmarks/scaling_estimate": {
        "--d-in": "count",
        "--d-sae": "count",
        "--batch": "count",
        "--tokens": "count",
        "--variants": "count",
        "--alphas": "count",
        "--layers": "count",
        "--gpus": "count",
        "--gpu-tflops": "positive",
        "--lm-params": "nonnegative",
        "--bytes-per-value": "count",
        "--cpu-tokens-per-second": "positive",
    },
    "benchmarks/sweep_benchmark": {"--workers": "count", "--tokens": "sweep tokens"},
    "experiments/long_run": {
        **SHARED,
        "--train-contexts": "count",
        "--heldout-contexts": "count",
        "--context-size": "two",
        "--tokens": "count",
        "--probe-tokens": "count",
        "--width-tokens": "count",
        "--full-tokens": "count",
        "--expansions+": "count",
        "--adam-lrs+": "positive",
        "--muon-lrs+": "positive",
        "--batch-size": "count",
        "--threads": "count",
    },
    "benchmarks/optimizer_comparison": {
        "--tokens": "count",
        "--adam-lrs+": "positive",
        "--muon-lrs+": "positive",
        "--threads": "count",
    },
}
"""Every numeric option of every script, and its kind (:data:`KINDS`)."""

SPECIAL: list[tuple[str, list[str], str, str]] = [
    # (script, argv, the option the error names, a word of the message)
    ("experiments/stability", ["--other-seeds", "0"], "--other-seeds", "--seed"),
    ("experiments/stability", ["--seed", "2", "--other-seeds", "1", "2"], "--other-seeds", "--seed"),
    ("experiments/stability", ["--variants", "vanila"], "--variants", "vanila"),
    ("experiments/width_and_seeds", ["--seeds", "3", "4", "3"], "--seeds", "distinct"),
    ("experiments/planted_manifolds", ["--saes", "topk:0"], "--saes", "topk:0"),
    ("experiments/planted_manifolds", ["--saes", "topk:4", "bilinear:vanilla:nan"], "--saes", "nan"),
    ("experiments/planted_manifolds", ["--saes", "bilinear:plain:0.1"], "--saes", "plain"),
    ("experiments/planted_manifolds", ["--saes", "bilinear-topk:mixed:x"], "--saes", "bilinear-topk:mixed:x"),
    ("experiments/planted_manifolds", ["--saes", "standard:-0.1"], "--saes", "-0.1"),
    ("experiments/planted_manifolds", ["--saes", "init:standard"], "--saes", "init:standard"),
    ("experiments/real_manifolds", ["--runs", "topk:0"], "--runs", "topk:0"),
    ("experiments/real_manifolds", ["--runs", "bilinear:vanilla:lifted:inf"], "--runs", "inf"),
    ("experiments/real_manifolds", ["--runs", "bilinear:vanilla:lifted:-1"], "--runs", "-1"),
    ("experiments/real_manifolds", ["--runs", "bilinear:vanilla:sideways:0.1"], "--runs", "sideways"),
    ("benchmarks/loss_benchmark", ["--dtypes", "float32,float8"], "--dtypes", "float8"),
    ("benchmarks/loss_benchmark", ["--dtypes", ","], "--dtypes", "one or more"),
    ("benchmarks/perf_benchmark", ["--dtypes", "float8"], "--dtypes", "float8"),
    ("benchmarks/perf_benchmark", ["--dtypes", "float64"], "--dtypes", "--sizes"),
    ("benchmarks/perf_benchmark", ["--sizes", "64x0x32"], "--sizes", "64x0x32"),
    ("benchmarks/perf_benchmark", ["--sizes", "64x512"], "--sizes", "DxFxB"),
    ("benchmarks/perf_benchmark", ["--step-sizes", "64x512xnan"], "--step-sizes", "nan"),
    ("benchmarks/qwen3_gpu_check", ["--optimizer", "sgd"], "--optimizer", "sgd"),
    ("benchmarks/scaling_estimate", ["--tokens", "100", "--batch", "4096"], "--tokens", "batch"),
    ("benchmarks/sweep_benchmark", ["--tokens", "100"], "--tokens", "batch"),
    ("benchmarks/sweep_benchmark", ["--tiny", "--tokens", "63"], "--tokens", "64"),
]
"""Bad values that are not a plain range: lists, specs, dtypes, and checks across options."""

FIRST_STEP: dict[str, tuple[Any, str]] = {
    # script: (object, attribute) of the first step of its work, after every check of its options
    **{
        f"experiments/{name}": (experiment_utils, "setup")
        for name in (
            "stability",
            "manifold_view",
            "width_and_seeds",
            "kernel_trick",
            "planted_manifolds",
            "sparsity_sweep",
            "real_manifolds",
            "lift_scale",
            "long_run",
        )
    },
    "benchmarks/optimizer_comparison": (experiment_utils, "setup"),
    "benchmarks/atlas_benchmark": ("module", "random_sae"),
    "benchmarks/loss_benchmark": (torch, "set_num_threads"),
    "benchmarks/perf_benchmark": (torch, "set_num_threads"),
    "benchmarks/qwen3_gpu_check": (models, "load_model"),
    "benchmarks/scaling_estimate": ("module", "estimate"),
    "benchmarks/sweep_benchmark": (torch, "set_num_threads"),
}


@functools.cache
def script(name: str) -> ModuleType:
    return load_script(ROOT / f"{name}.py", "argcheck_" + name.replace("/", "_"))


@pytest.fixture
def stubbed(monkeypatch):
    """``run(name, argv)``: the script's ``main(argv)`` with its first step of work stubbed out,
    and every parse's ``(parser, namespace)`` recorded in ``run.parsed``."""
    parsed: list[tuple[argparse.ArgumentParser, argparse.Namespace]] = []
    parse_args = argparse.ArgumentParser.parse_args

    def spy(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        namespace = parse_args(self, *args, **kwargs)
        parsed.append((self, namespace))
        return namespace

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)

    def run(name: str, argv: list[str]) -> None:
        module = script(name)
        owner, attribute = FIRST_STEP[name]
        monkeypatch.setattr(module if owner == "module" else owner, attribute, _reached)
        module.main(argv)

    run.parsed = parsed  # type: ignore[attr-defined]
    return run


def _bad_cases() -> list[Any]:
    cases = []
    for name, options in OPTIONS.items():
        for spelled, kind in options.items():
            option = spelled.rstrip("+")
            good, bads = KINDS[kind]
            for bad in bads:
                argv = [option, good, bad] if spelled.endswith("+") else [option, bad]
                cases.append(pytest.param(name, argv, option, bad, id=f"{name} {option} {bad}"))
    for name, argv, option, word in SPECIAL:
        cases.append(pytest.param(name, argv, option, word, id=f"{name} {' '.join(argv)}"))
    return cases


@pytest.mark.parametrize("name,argv,option,word", _bad_cases())
def test_a_bad_value_is_a_usage_error_before_any_work(stubbed, capsys, name, argv, option, word):
    with pytest.raises(SystemExit) as exit_info:
        stubbed(name, argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}" in error, error
    assert word in error, error


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_valid_values_parse_and_the_work_starts(stubbed, name):
    """The defaults, then every numeric option at a valid value other than its default."""
    with pytest.raises(Reached):
        stubbed(name, [])
    argv = []
    for spelled, kind in OPTIONS[name].items():
        argv += [spelled.rstrip("+"), KINDS[kind][0]]
    with pytest.raises(Reached):
        stubbed(name, argv)
    _, namespace = stubbed.parsed[-1]
    for spelled, kind in OPTIONS[name].items():
        dest = spelled.rstrip("+").lstrip("-").replace("-", "_")
        value = getattr(namespace, dest)
        expected = float(KINDS[kind][0]) if "." in KINDS[kind][0] else int(KINDS[kind][0])
        assert (value[0] if isinstance(value, list) else value) == expected, (spelled, value)


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_every_numeric_option_is_validated_and_listed_here(stubbed, name):
    """No option keeps a bare ``type=int``/``float``; every typed option is in :data:`OPTIONS` or
    :data:`SPECIAL`; and every default passes its option's type (argparse does not convert a
    default that is not a string)."""
    with pytest.raises(Reached):
        stubbed(name, [])
    parser, _ = stubbed.parsed[-1]
    spelled = {option.rstrip("+"): option for option in OPTIONS[name]}
    special = {option for script_name, _, option, _ in SPECIAL if script_name == name}
    for action in parser._actions:
        if action.type is None or action.type is Path or not action.option_strings:
            continue
        option = action.option_strings[-1]
        assert action.type not in (int, float), f"{name} {option}: a bare type={action.type.__name__}"
        assert option in spelled or option in special, f"{name} {option}: add it to OPTIONS with its kind"
        if option in spelled:
            assert (action.nargs in LISTS) == spelled[option].endswith("+"), f"{name} {option}: nargs"
        if action.default is None or isinstance(action.default, str):
            continue
        defaults = action.default if isinstance(action.default, (list, tuple)) else [action.default]
        for default in defaults:
            assert action.type(str(default)) == default, f"{name} {option}: the default {default!r} is refused"


# --- the argparse types themselves ------------------------------------------------------------


@pytest.mark.parametrize(
    "convert,text,words",
    [
        (values.int_at_least(1), "0", ["≥ 1", "got 0"]),
        (values.int_at_least(1), "2.0", ["expected an integer", "'2.0'"]),
        (values.int_at_least(0, 9), "10", ["[0, 9]", "got 10"]),
        (values.finite_float(0.0, strict=True), "0", ["> 0", "got 0"]),
        (values.finite_float(), "nan", ["finite", "nan"]),
        (values.finite_float(), "-inf", ["finite", "-inf"]),
        (values.finite_float(), "one", ["expected a number", "'one'"]),
        (values.finite_float(0.0, maximum=1.0), "1.01", ["[0, 1]", "1.01"]),
        (values.finite_float(0.0, strict=True, maximum=1.0, strict_maximum=True), "1", ["(0, 1)", "got 1"]),
        (values.one_of(("adam", "muon")), "mun", ["'adam', 'muon'", "did you mean 'muon'"]),
        (values.comma_list(values.int_at_least(0)), " , ", ["one or more", "' , '"]),
        (values.comma_list(values.finite_float()), "1,inf", ["finite", "inf"]),
    ],
)
def test_a_type_refuses_a_bad_text_by_saying_what_it_expected(convert, text, words):
    with pytest.raises(argparse.ArgumentTypeError) as info:
        convert(text)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_the_types_pass_good_texts_through():
    assert values.int_at_least(0, 9)(" 9") == 9
    assert values.finite_float(0.0, maximum=1.0)("1") == 1.0
    assert values.one_of(("adam", "muon"))(" muon ") == "muon"
    assert values.comma_list(values.finite_float())("0, 0.5,") == [0.0, 0.5]
    assert values.comma_list(values.int_at_least(1))("3") == [3]
    assert experiment_utils.seed_argument(str(experiment_utils.SEED_MAX)) == 2**32 - 1
    assert math.isclose(experiment_utils.positive_argument("1e-3"), 1e-3)
