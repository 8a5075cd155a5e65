"""sae_bilinear.checks: the generic value checks, dtype/device parsing, remote code, and the
one-home rule (old names re-exported, no upward imports)."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sae_bilinear import checks, errors, evaluate, interventions, models, qwen3_offline
from sae_bilinear.checks import (
    ConfigTypeError,
    IndexRangeError,
    NonFiniteResultError,
    check_bool,
    check_choice,
    check_finite_float,
    check_finite_result,
    check_finite_tensor,
    check_int,
    check_remote_code,
    parse_device,
    parse_dtype,
)
from sae_bilinear.errors import ConfigError, UserError

PACKAGE = Path(checks.__file__).resolve().parent

# ------------------------------------------------------------------------------------------
# generic value checks: (call, exception type, words the message must hold)
# ------------------------------------------------------------------------------------------

BAD_VALUES = [
    (lambda: check_finite_float("alpha", math.nan), ConfigError, ["alpha", "finite", "nan"]),
    (lambda: check_finite_float("alpha", math.inf), ConfigError, ["alpha", "inf"]),
    (lambda: check_finite_float("alpha", -math.inf), ConfigError, ["alpha", "-inf"]),
    (lambda: check_finite_float("alpha", np.float32("nan")), ConfigError, ["alpha", "nan"]),
    (lambda: check_finite_float("alpha", True), ConfigTypeError, ["alpha", "True", "bool"]),
    (lambda: check_finite_float("alpha", "0.1"), ConfigTypeError, ["alpha", "'0.1'", "str"]),
    (lambda: check_finite_float("alpha", None), ConfigTypeError, ["alpha", "None"]),
    (lambda: check_finite_float("init_scale", -1.0, lo=0), ConfigError, ["init_scale", "≥ 0", "-1"]),
    (lambda: check_finite_float("lr", 0.0, lo=0, lo_open=True), ConfigError, ["lr", "> 0"]),
    (lambda: check_finite_float("p", 1.5, 0, 1), ConfigError, ["p", "[0, 1]", "1.5"]),
    (lambda: check_finite_float("p", 1.0, 0, 1, hi_open=True), ConfigError, ["p", "[0, 1)"]),
    (lambda: check_int("k", 2.0), ConfigTypeError, ["k", "integer", "2.0", "float"]),
    (lambda: check_int("d_in", True), ConfigTypeError, ["d_in", "True", "bool"]),
    (lambda: check_int("d_in", "32"), ConfigTypeError, ["d_in", "'32'"]),
    (lambda: check_int("baseline_k", 0, lo=1), ConfigError, ["baseline_k", "≥ 1", "0"]),
    (lambda: check_int("eigen", 2, lo=0, hi=1), ConfigError, ["eigen", "[0, 1]", "2"]),
    (lambda: check_bool("lifted", "false"), ConfigTypeError, ["lifted", "'false'", "bool"]),
    (lambda: check_bool("lifted", 0), ConfigTypeError, ["lifted", "0"]),
    (lambda: check_bool("lifted", None), ConfigTypeError, ["lifted", "None"]),
    (
        lambda: check_choice("variant", "vanila", ("vanilla", "mixed")),
        ConfigError,
        ["variant", "'vanila'", "did you mean 'vanilla'"],
    ),
    (lambda: check_choice("mode", ["zero"], {"zero", "mean"}), ConfigError, ["mode", "['zero']"]),
    (lambda: check_finite_tensor("means", torch.tensor([1.0, math.nan])), ConfigError, ["means", "1 NaN/inf"]),
    (lambda: check_finite_tensor("means", torch.tensor([1, 2])), ConfigTypeError, ["means", "floating-point", "int64"]),
    (lambda: check_finite_tensor("means", [1.0]), ConfigTypeError, ["means", "torch.Tensor", "list"]),
    (lambda: check_finite_tensor("means", torch.zeros(3), shape=(4,)), ConfigError, ["means", "(4,)", "(3,)"]),
    (
        lambda: check_finite_result("metric 'kl'", math.nan, "look at x"),
        NonFiniteResultError,
        ["metric 'kl'", "nan", "look at x"],
    ),
    (lambda: check_finite_result("x̂", torch.tensor([math.inf])), NonFiniteResultError, ["x̂", "non-finite"]),
]


@pytest.mark.parametrize("call, error, words", BAD_VALUES)
def test_bad_values_are_refused_with_their_name(call, error, words):
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, UserError)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_good_values_come_back_normalised():
    assert check_finite_float("alpha", 2) == 2.0 and isinstance(check_finite_float("alpha", 2), float)
    assert check_finite_float("alpha", np.float64(0.5), 0, 1) == 0.5
    assert check_finite_float("p", 0.0, 0, 1) == 0.0  # closed bounds include the ends
    assert check_finite_float("p", 1.0, 0, 1) == 1.0
    assert check_int("k", np.int64(3), lo=1) == 3 and type(check_int("k", np.int64(3))) is int
    assert check_bool("lifted", False) is False
    assert check_choice("variant", "mixed", ("vanilla", "mixed")) == "mixed"
    tensor = torch.ones(3)
    assert check_finite_tensor("means", tensor, shape=(3,)) is tensor
    check_finite_result("kl", 0.5)


def test_type_errors_stay_type_errors_and_index_errors_index_errors():
    # Old callers catch TypeError / IndexError; the new classes are both those and UserErrors.
    assert issubclass(ConfigTypeError, TypeError) and issubclass(ConfigTypeError, ConfigError)
    assert issubclass(IndexRangeError, IndexError) and issubclass(IndexRangeError, ConfigError)
    assert issubclass(checks.MissingFileError, FileNotFoundError) and issubclass(
        checks.MissingFileError, errors.DataFileError
    )


# ------------------------------------------------------------------------------------------
# dtype and device
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: parse_dtype("float33"), ["'float33'", "bfloat16"]),
        (lambda: parse_dtype(torch.int8), ["torch.int8"]),
        (lambda: parse_device("gpu0"), ["'gpu0'", "cuda:0"]),
    ],
)
def test_bad_dtype_or_device(call, words):
    with pytest.raises(ConfigError) as info:
        call()
    for word in words:
        assert word in str(info.value)


def test_cuda_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0", torch.device("cuda")):
        with pytest.raises(ConfigError, match=r"device .*cuda.* no CUDA GPU here.*--device cpu"):
            parse_device(device)
    assert parse_device("cpu") == torch.device("cpu")


def test_cuda_index_beyond_the_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"'cuda:3'.*1 CUDA device\(s\)"):
        parse_device("cuda:3")
    assert parse_device("cuda:0") == torch.device("cuda:0")


# ------------------------------------------------------------------------------------------
# remote code
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, named",
    [
        ({"trust_remote_code": True}, "model kwargs.trust_remote_code"),
        ({"dataset_trust_remote_code": True}, "model kwargs.dataset_trust_remote_code"),
        ({"model_from_pretrained_kwargs": {"trust_remote_code": 1}}, "model_from_pretrained_kwargs.trust_remote_code"),
    ],
)
def test_remote_code_needs_an_explicit_allow(settings, named):
    with pytest.raises(ConfigError) as info:
        check_remote_code(settings, False, "model kwargs")
    assert named in str(info.value) and "allow_remote_code=True" in str(info.value)
    check_remote_code(settings, True, "model kwargs")  # explicitly allowed: no error
    check_remote_code({"trust_remote_code": False, "n_ctx": 8}, False, "model kwargs")
    with pytest.raises(ConfigTypeError, match="allow_remote_code"):
        check_remote_code(settings, "yes", "model kwargs")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# one home: the old names still import from where they were, and are the same functions
# ------------------------------------------------------------------------------------------

REEXPORTS = {
    models: ["check_hook", "check_context_size", "parse_dtype", "hook_layer", "stop_at_layer"],
    evaluate: [
        "check_model_hook", "check_tokens", "check_sae_fits", "check_can_splice", "resolve_hook_name",
        "is_bilinear", "sae_input", "probe_activation",
    ],
    interventions: ["check_latent", "check_latents", "check_sae_hook"],
}


@pytest.mark.parametrize("module", list(REEXPORTS), ids=lambda m: m.__name__)
def test_old_names_are_the_checks_functions(module):
    for name in REEXPORTS[module]:
        assert getattr(module, name) is getattr(checks, name), f"{module.__name__}.{name}"
    assert models._parse_device is checks.parse_device
    assert models.qwen3_tokenizer is qwen3_offline.qwen3_tokenizer
    assert models.qwen3_tiny_hf is qwen3_offline.qwen3_tiny_hf


def test_a_missing_optional_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(checks.importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(errors.MissingDependencyError) as info:
        checks.require_package("some_pkg", "pip install some-pkg", "The frobnicator")
    assert (
        "The frobnicator" in str(info.value)
        and "'some_pkg'" in str(info.value)
        and "pip install some-pkg" in str(info.value)
    )
    assert isinstance(info.value, ImportError)


def test_models_errors_derive_from_the_package_errors():
    assert models.MissingDependencyError is errors.MissingDependencyError
    assert issubclass(models.HubUnavailableError, errors.OfflineError)
    assert issubclass(models.HubUnavailableError, OSError)  # old callers catch OSError


def _imports(path: Path) -> tuple[set[str], list[str]]:
    """(modules of sae_bilinear imported at module level, those imported inside functions)."""
    tree = ast.parse(path.read_text())
    top: set[str] = set()
    nested: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sae_bilinear"):
            names = [node.module] if node.module != "sae_bilinear" else [f"sae_bilinear.{a.name}" for a in node.names]
            (top.update(names) if node in tree.body else nested.extend(names))
    return top, nested


def test_checks_imports_only_the_layers_below_it():
    top, nested = _imports(PACKAGE / "checks.py")
    assert top <= {"sae_bilinear.bilinear", "sae_bilinear.kernels", "sae_bilinear.errors", "sae_bilinear.values"}, top
    assert not nested


@pytest.mark.parametrize("module", ["checks", "models", "qwen3_offline", "evaluate", "interventions", "data"])
def test_no_function_level_imports_of_our_own_modules(module):
    _, nested = _imports(PACKAGE / f"{module}.py")
    assert not nested, nested
