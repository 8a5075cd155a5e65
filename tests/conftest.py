"""Shared test setup: one torch thread (the CI machine has two cores) and the expensive models."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

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


@pytest.fixture(scope="module")
def tiny_model():
    """A random 2-block ``HookedTransformer`` (d_model 32, vocabulary 64, context 32), one per
    test module; SAELens's runner trains on it in ``test_training`` and ``test_saelens_interop``."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=32, d_head=8, n_heads=4, d_vocab=64, act_fn="gelu", d_mlp=64
    )
    return HookedTransformer(cfg)


@pytest.fixture(scope="module")
def token_dataset():
    """200 pre-tokenised contexts of 16 random ids (1..63) as a ``datasets.Dataset``."""
    from datasets import Dataset

    tokens = torch.randint(1, 64, (200, 16), generator=torch.Generator().manual_seed(0))
    return Dataset.from_dict({"tokens": tokens.tolist()})


@pytest.fixture
def no_pickle(monkeypatch):
    """``torch.load`` (pickle) fails the test from here on: weights are safetensors only.
    The hub test modules use it for every test (``pytest.mark.usefixtures("no_pickle")``)."""
    from hub_helpers import refuse_pickle

    refuse_pickle(monkeypatch)


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    """A stand-in Hub on 127.0.0.1 with huggingface_hub pointed at it (see ``hub_helpers``)."""
    from hub_helpers import stand_in_hub

    yield from stand_in_hub(monkeypatch, tmp_path)
