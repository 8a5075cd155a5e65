"""sae_bilinear.toy: the toy language, model and SAE; the SAE trains through the package's path."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from sae_bilinear import BilinearSAE
from sae_bilinear import toy as toy_setting  # `toy` is the shared (model, SAE) fixture of conftest
from sae_bilinear.errors import ConfigError, DataFileError

torch.set_num_threads(1)


def test_language_follows_its_permutation():
    language = toy_setting.ToyLanguage(64, seed=3, noise=0.0)
    tokens = language.sample(4, 10, seed=1)
    assert tokens.shape == (4, 10) and tokens.dtype == torch.long
    torch.testing.assert_close(tokens[:, 1:], language.perm[tokens[:, :-1]])
    torch.testing.assert_close(language.sample(4, 10, seed=1), tokens)  # same seed, same sample


def test_toy_sae_trains_through_train_on_activations(monkeypatch, toy):
    """The toy SAE is trained by sae_bilinear.train.train_on_activations (SAELens's trainer)."""
    model, trained = toy
    calls = []
    real = toy_setting.train_on_activations

    def spy(sae, activations, settings):
        calls.append((activations.shape, settings.steps, settings.batch_size))
        return real(sae, activations, settings)

    monkeypatch.setattr(toy_setting, "train_on_activations", spy)
    sae = toy_setting.toy_sae(model, d_sae=8, steps=3)
    assert calls == [((64 * 32, 32), 3, 256)]
    assert isinstance(sae, BilinearSAE) and not sae.training
    assert sae.cfg.metadata.hook_name == toy_setting.TOY_HOOK
    assert sae.cfg.metadata.model_name == toy_setting.TOY_MODEL_NAME and sae.cfg.metadata.toy_model_seed == 0
    assert isinstance(trained, BilinearSAE) and trained.cfg.d_sae == 128


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: toy_setting.ToyLanguage(1), "d_vocab"),
        (lambda: toy_setting.ToyLanguage(8, noise=1.5), "noise"),
        (lambda: toy_setting.ToyLanguage(8, noise=float("nan")), "noise"),
        (lambda: toy_setting.ToyLanguage(8).sample(0, 4), "n_seqs"),
        (lambda: toy_setting.toy_model(steps=-1), "steps"),
        (lambda: toy_setting.toy_model(lr=0.0), "lr"),
        (lambda: toy_setting.toy_model(seed=True), "seed"),
    ],
)
def test_bad_values(call, field):
    with pytest.raises(ConfigError, match=field):
        call()


def test_bad_sae_values(toy):
    model, _ = toy
    for kwargs, field in [({"d_sae": 0}, "d_sae"), ({"alpha": float("inf")}, "alpha"), ({"steps": 1.5}, "steps")]:
        with pytest.raises(ConfigError, match=field):
            toy_setting.toy_sae(model, **kwargs)


def test_damaged_model_folder_is_named(tmp_path, toy):
    model, _ = toy
    folder = toy_setting.save_toy_model(model, tmp_path / "model")
    assert toy_setting.is_toy_folder(folder)
    config = folder / toy_setting.TOY_FILES[0]
    config.write_text(json.dumps({"d_model": 32, "colour": "red"}))
    with pytest.raises(DataFileError, match=r"toy_model\.json.*colour"):
        toy_setting.load_toy_model(folder)
    config.write_text("{not json")
    with pytest.raises(DataFileError, match=r"toy_model\.json"):
        toy_setting.load_toy_model(folder)
    (folder / toy_setting.TOY_FILES[1]).unlink()
    with pytest.raises(DataFileError, match=r"toy_model\.safetensors is missing"):
        toy_setting.load_toy_model(folder)


def test_toy_model_for_refuses_another_model(toy):
    _, sae = toy
    other = BilinearSAE(copy.deepcopy(sae.cfg))  # a copy: the shared fixture stays unchanged
    other.cfg.metadata.model_name = "gpt2"
    with pytest.raises(ConfigError, match="'gpt2'"):
        toy_setting.toy_model_for(other)
