"""Helpers shared by several test modules (``from helpers import ...``: pytest's default import
mode puts this folder on ``sys.path`` for its test modules)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytest
import torch

from sae_bilinear import BilinearSAE, BilinearSAEConfig
from sae_bilinear.errors import UserError


def assert_refused(call: Callable[[], Any], error: type[BaseException], words: Iterable[str]) -> BaseException:
    """``call()`` raises ``error``, a :class:`UserError` whose message holds every one of ``words``."""
    with pytest.raises(error) as info:
        call()
    assert isinstance(info.value, UserError), type(info.value)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    return info.value


def exact_lifted_sae(d: int, dtype: str = "float32") -> BilinearSAE:
    """A lifted SAE with latent (a, b) = ũ_a ũ_b for every pair: X̂ = ũ⊗ũ exactly, so
    decode(encode(x)) = x (weights 0/1: exact in any dtype)."""
    n = d + 1
    sae = BilinearSAE(BilinearSAEConfig(d_in=d, d_sae=n * n, lifted=True, dtype=dtype))
    basis = torch.eye(n)
    with torch.no_grad():
        for j, (a, b) in enumerate((a, b) for a in range(n) for b in range(n)):
            sae.b_left[j], sae.W_left[j] = basis[a, 0], basis[a, 1:]
            sae.b_right[j], sae.W_right[j] = basis[b, 0], basis[b, 1:]
    return sae
