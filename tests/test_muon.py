"""Muon's Newton–Schulz orthogonalisation in a chosen dtype, and the optimiser built on it."""

from __future__ import annotations

import pytest
import torch

from sae_bilinear import muon
from sae_bilinear.errors import ConfigError
from sae_bilinear.muon import CONVERGENT_COEFFICIENTS, Muon, orthogonalize


def _matrix(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))


def _polar(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, _, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    return u, vh, u @ vh


@pytest.mark.parametrize("shape", [(48, 24), (24, 48), (32, 32)])
@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_convergent_newton_schulz_is_the_svd_polar_factor(shape, dtype, tolerance):
    matrix = _matrix(*shape)
    _, _, polar = _polar(matrix)
    out = orthogonalize(matrix, steps=30, coefficients=CONVERGENT_COEFFICIENTS, dtype=dtype)
    assert out.dtype == dtype and out.shape == matrix.shape
    relative = (out.double() - polar).norm() / polar.norm()
    assert relative < tolerance, relative


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_muon_quintic_keeps_singular_vectors_and_lands_singular_values_near_one(dtype, tolerance):
    # Jordan's coefficients stop at U S' Vᵀ with S' near 1 (not exactly 1): check both parts.
    matrix = _matrix(64, 40, seed=1)
    u, vh, _ = _polar(matrix)
    out = orthogonalize(matrix, dtype=dtype).double()
    core = u.T @ out @ vh.T  # diagonal iff the singular vectors are the SVD's
    diagonal = torch.diagonal(core)
    off_diagonal = core - torch.diag(diagonal)
    assert off_diagonal.norm() / diagonal.norm() < tolerance
    assert diagonal.min() > 0.6 and diagonal.max() < 1.3, diagonal


def test_bf16_muon_takes_the_same_steps_as_torch_muon():
    for nesterov in (False, True):
        ours_w = torch.nn.Parameter(_matrix(24, 16))
        theirs_w = torch.nn.Parameter(ours_w.detach().clone())
        ours = Muon([ours_w], lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01, ns_dtype="bfloat16")
        theirs = torch.optim.Muon([theirs_w], lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
        for step in range(3):
            gradient = _matrix(24, 16, seed=10 + step)
            ours_w.grad, theirs_w.grad = gradient.clone(), gradient.clone()
            ours.step()
            theirs.step()
        torch.testing.assert_close(ours_w, theirs_w, rtol=0, atol=0)


def test_fp32_muon_differs_from_bf16_but_only_slightly():
    weights = [torch.nn.Parameter(_matrix(24, 16)) for _ in range(2)]
    for weight, dtype in zip(weights, ("float32", "bfloat16"), strict=False):
        weight.grad = _matrix(24, 16, seed=3)
        Muon([weight], lr=0.1, ns_dtype=dtype).step()
    difference = (weights[0] - weights[1]).norm() / (weights[0] - _matrix(24, 16)).norm()
    assert 0 < difference < 0.05


def test_auto_picks_a_dtype_once_and_records_it_in_the_state_dict(monkeypatch):
    muon.fastest_ns_dtype.cache_clear()
    calls = []
    original = muon._time_matmul
    monkeypatch.setattr(muon, "_time_matmul", lambda *a, **k: calls.append(a) or original(*a, **k))
    chosen = muon.fastest_ns_dtype("cpu")
    assert chosen in ("float32", "bfloat16")
    measured = len(calls)
    assert measured == 2  # one timing per dtype
    assert muon.fastest_ns_dtype("cpu") == chosen and len(calls) == measured  # cached
    weight = torch.nn.Parameter(_matrix(8, 4))
    optimizer = Muon([weight], ns_dtype="auto")
    assert optimizer.param_groups[0]["ns_dtype"] == "auto"
    weight.grad = torch.ones_like(weight)
    optimizer.step()
    assert optimizer.state_dict()["param_groups"][0]["ns_dtype"] == chosen
    # A resumed optimiser takes the recorded dtype, not a fresh measurement.
    resumed = Muon([torch.nn.Parameter(weight.detach().clone())], ns_dtype="auto")
    resumed.load_state_dict(optimizer.state_dict())
    assert resumed.param_groups[0]["ns_dtype"] == chosen


def test_auto_picks_the_faster_dtype(monkeypatch):
    muon.fastest_ns_dtype.cache_clear()
    try:
        for slow, expected in ((torch.bfloat16, "float32"), (torch.float32, "bfloat16")):
            muon.fastest_ns_dtype.cache_clear()
            monkeypatch.setattr(muon, "_time_matmul", lambda size, dtype, device, s=slow: 1.0 if dtype == s else 0.1)
            assert muon.fastest_ns_dtype("cpu") == expected
    finally:
        muon.fastest_ns_dtype.cache_clear()


def test_muon_state_dict_round_trip_continues_identically():
    def run(split: bool) -> torch.Tensor:
        weight = torch.nn.Parameter(_matrix(12, 20))
        optimizer = Muon([weight], lr=0.03, ns_dtype="float32")
        for step in range(4):
            if split and step == 2:
                state = optimizer.state_dict()
                optimizer = Muon([weight], lr=0.03, ns_dtype="float32")
                optimizer.load_state_dict(state)
            weight.grad = _matrix(12, 20, seed=20 + step)
            optimizer.step()
        return weight.detach()

    torch.testing.assert_close(run(True), run(False), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"lr": float("nan")}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"momentum": 1.0}, "momentum"),
        ({"ns_steps": 0}, "ns_steps"),
        ({"ns_steps": 2.0}, "ns_steps"),
        ({"ns_dtype": "float16"}, "ns_dtype"),
        ({"adjust_lr": "none"}, "adjust_lr"),
    ],
)
def test_muon_rejects_bad_settings_naming_them(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], **kwargs)


def test_muon_refuses_vectors():
    with pytest.raises(ConfigError, match="shape"):
        Muon([torch.nn.Parameter(torch.zeros(3))])
