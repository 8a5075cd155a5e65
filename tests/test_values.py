"""sae_bilinear.values: the one home of value checks (type and range; each error names the value)."""

from __future__ import annotations

import math

import pytest
import torch

from sae_bilinear import values
from sae_bilinear.errors import ConfigError, ConfigTypeError, NonFiniteResultError

BAD = [
    (lambda: values.check_int("d_sae", 0, 1, hint=" (the number of latents)"), ConfigError,
     ["d_sae must be a positive integer", "got 0", "the number of latents"]),
    (lambda: values.check_int("k", 9, 1, 8), ConfigError, ["k", "[1, 8]", "9"]),
    (lambda: values.check_optional_int("kernel_tile_size", 0, 1), ConfigError, ["kernel_tile_size", "≥ 1"]),
    (lambda: values.check_optional_int("kernel_tile_size", 2.0, 1), ConfigTypeError, ["kernel_tile_size", "float"]),
    (lambda: values.check_finite_float("lr", 0.0, 0.0, lo_open=True, hint=" (Adam)"), ConfigError,
     ["lr", "> 0", "Adam"]),
    (lambda: values.check_finite_float("alpha", math.nan), ConfigError, ["alpha", "nan"]),
    (lambda: values.check_str("device", ""), ConfigError, ["device", "non-empty"]),
    (lambda: values.check_str("device", " "), ConfigError, ["device", "non-empty"]),
    (lambda: values.check_str("device", 3), ConfigTypeError, ["device", "string", "int"]),
    (lambda: values.check_known_keys("the sae section", {"alhpa": 1}, ["alpha", "d_in"], prefix="sae."),
     ConfigError, ["'sae.alhpa'", "the sae section has no 'alhpa'", "did you mean 'alpha'"]),
    (lambda: values.check_known_keys("the train config", {"lrr": 1}, ["lr"]), ConfigError,
     ["unknown key 'lrr' in the train config", "did you mean 'lr'"]),
    (lambda: values.check_finite_tensor("means", torch.tensor([1.0, math.inf])), ConfigError, ["means", "NaN/inf"]),
    (lambda: values.check_finite_tensor("means", torch.ones(3), shape=(4,)), ConfigError, ["means", "(4,)", "(3,)"]),
    (lambda: values.check_finite_result("kl", math.inf, "the SAE's weights"), NonFiniteResultError,
     ["kl", "inf", "the SAE's weights"]),
]


@pytest.mark.parametrize("call,error,words", BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_value_is_refused_by_name(call, error, words):
    with pytest.raises(error) as info:
        call()
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_good_values_pass_through():
    assert values.check_optional_int("kernel_tile_size", None, 1) is None
    assert values.check_optional_int("kernel_tile_size", 4, 1) == 4
    assert values.check_str("device", " ", empty=True) == " "
    values.check_known_keys("the sae section", {"alpha": 1}, ["alpha"], prefix="sae.")
    assert values.did_you_mean("zzzz", ["alpha"]) == ""
    assert values.did_you_mean("alhpa", ["alpha", "beta"]) == " (did you mean 'alpha'?)"
    values.check_finite_result("kl", 0.5)


def test_values_imports_only_errors():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(values.__file__).read_text())
    modules = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    ours = {module for module in modules if module.startswith("sae_bilinear")}
    assert ours == {"sae_bilinear.errors"}, ours
