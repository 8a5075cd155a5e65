"""Shared test setup: one torch thread (the CI machine has two cores) and the expensive models."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Iterator

import pytest
import torch

torch.set_num_threads(1)


@contextmanager
def no_network() -> Iterator[None]:
    """Fail any attempt to open a network connection (proves a load is offline)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted inside no_network()")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        yield


@pytest.fixture(scope="session")
def block_network():
    """The :func:`no_network` context manager, for tests: ``with block_network(): ...``."""
    return no_network


@pytest.fixture(scope="session")
def smollm2_model():
    """The embedded SmolLM2-135M-Instruct as a HookedSAETransformer, loaded once per session,
    with the network blocked. Shared: a test that adds hooks or SAEs must remove them."""
    from sae_bilinear.models import load_model

    with no_network():
        return load_model("smollm2-135m")


@pytest.fixture(scope="session")
def toy():
    """``(model, sae)``: the toy transformer and its toy bilinear SAE (:mod:`sae_bilinear.toy`),
    built once per session. Shared: a test must not modify them or leave hooks on the model."""
    from sae_bilinear import toy as toy_setting

    model = toy_setting.toy_model()
    return model, toy_setting.toy_sae(model)
