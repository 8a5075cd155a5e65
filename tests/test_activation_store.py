"""The on-disk activation store: round trip, content address, resumption, damaged files named."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sae_bilinear import activation_store as store
from sae_bilinear.errors import ConfigError, DataFileError
from sae_bilinear.models import qwen3_tiny

torch.set_num_threads(1)

D = 6
CONTEXT = 5


def _settings(**changes) -> store.StoreSettings:
    base = dict(
        model="m", weights="w0", hook="blocks.0.hook_resid_pre", dataset="d", tokens="t0",
        n_contexts=7, context_size=CONTEXT, prepend_bos=True, skip_first=1, dtype="float32",
    )
    base.update(changes)
    return store.StoreSettings(**base)


def _data(settings: store.StoreSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic activations: row r is r + 0.01·column, so any mix-up of rows shows."""
    n = settings.n_tokens
    acts = torch.arange(n, dtype=torch.float64).unsqueeze(1) + 0.01 * torch.arange(D)
    ids = torch.arange(n) % 97
    return acts.float(), ids


def _writer(settings, calls=None):
    acts, ids = _data(settings)
    per = settings.tokens_per_context

    def chunk(first, end):
        if calls is not None:
            calls.append((first, end))
        return acts[first * per : end * per], ids[first * per : end * per]

    return chunk


def test_round_trip_over_several_shards(tmp_path):
    settings = _settings()
    written = store.write_store(tmp_path, settings, _writer(settings), contexts_per_shard=3)
    assert written.folder == tmp_path / settings.digest()
    assert len(written.shards) == 3  # 3 + 3 + 1 contexts
    reopened = store.open_store(tmp_path, settings, verify=True)
    acts, ids = _data(settings)
    assert reopened.n_tokens == settings.n_tokens == 7 * 4 and reopened.d_in == D
    assert torch.equal(reopened.tensor(), acts)
    assert torch.equal(reopened.token_ids(), ids)
    index = torch.tensor([27, 0, 13, 12, 3])
    assert torch.equal(reopened.gather(index), acts[index])
    # One epoch of shuffled batches visits every row exactly once (a partial batch is dropped).
    seen = torch.cat(list(reopened.batches(4, seed=3, epochs=1)))
    assert seen.shape == (28, D)
    assert torch.equal(seen[:, 0].sort().values, acts[:, 0])
    two = list(reopened.batches(4, seed=3, epochs=2))
    assert len(two) == 14 and not torch.equal(torch.cat(two[:7]), torch.cat(two[7:]))  # reshuffled per epoch


def test_float16_store_reads_back_as_float32(tmp_path):
    settings = _settings(dtype="float16")
    written = store.write_store(tmp_path, settings, _writer(settings), contexts_per_shard=10)
    assert written.shard(0).dtype == torch.float16
    batch = next(written.batches(5))
    assert batch.dtype == torch.float32
    assert torch.allclose(written.tensor(), _data(settings)[0], atol=0.02)


@pytest.mark.parametrize(
    "field,value",
    [("model", "m2"), ("weights", "w1"), ("hook", "blocks.1.hook_resid_pre"), ("tokens", "t1"), ("dataset", "other"),
     ("context_size", 6), ("prepend_bos", False), ("skip_first", 0), ("dtype", "bfloat16"), ("n_contexts", 8)],
)
def test_content_address_changes_with_every_setting(field, value):
    assert _settings().digest() == _settings().digest()
    assert _settings(**{field: value}).digest() != _settings().digest()


def test_fingerprints_follow_tokens_and_weights():
    tokens = torch.arange(12).reshape(3, 4)
    changed = tokens.clone()
    changed[2, 3] = 0
    assert store.tokens_fingerprint(tokens) == store.tokens_fingerprint(tokens.clone())
    assert store.tokens_fingerprint(tokens) != store.tokens_fingerprint(changed)
    assert store.tokens_fingerprint(tokens) != store.tokens_fingerprint(tokens.reshape(4, 3))
    layer = torch.nn.Linear(3, 2)
    before = store.weights_fingerprint(layer)
    with torch.no_grad():
        layer.weight[0, 0] += 1e-3
    assert store.weights_fingerprint(layer) != before


def test_existing_store_is_reused_and_interrupted_one_resumes(tmp_path):
    settings = _settings()
    calls: list = []
    chunk = _writer(settings, calls)

    def failing(first, end):
        if first >= 3:
            raise KeyboardInterrupt
        return chunk(first, end)

    with pytest.raises(KeyboardInterrupt):
        store.write_store(tmp_path, settings, failing, contexts_per_shard=3)
    assert not store.store_folder(tmp_path, settings).exists()  # nothing half-written under the real name
    calls.clear()
    resumed = store.write_store(tmp_path, settings, chunk, contexts_per_shard=3)
    assert calls == [(3, 6), (6, 7)]  # the finished first shard was not recomputed
    assert torch.equal(resumed.tensor(), _data(settings)[0])
    calls.clear()
    store.write_store(tmp_path, settings, chunk, contexts_per_shard=3)
    assert calls == []  # a finished store is reused as is


def test_damaged_shard_is_named(tmp_path):
    settings = _settings()
    written = store.write_store(tmp_path, settings, _writer(settings), contexts_per_shard=3)
    victim = written.folder / written.shards[1].file
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0xFF  # flip bits in the activations: same size, wrong checksum
    victim.write_bytes(bytes(data))
    with pytest.raises(DataFileError, match=victim.name):
        store.open_store(tmp_path, settings, verify=True)
    victim.write_bytes(bytes(data[:-10]))  # truncated: caught without the checksum
    with pytest.raises(DataFileError, match=victim.name):
        store.open_store(tmp_path, settings)


def test_damaged_manifest_is_named(tmp_path):
    settings = _settings()
    written = store.write_store(tmp_path, settings, _writer(settings))
    manifest = written.folder / store.MANIFEST
    raw = json.loads(manifest.read_text())
    raw["settings"]["hook"] = "blocks.9.hook_resid_pre"  # no longer matches the folder's hash
    manifest.write_text(json.dumps(raw))
    with pytest.raises(DataFileError, match="manifest.json"):
        store.ActivationStore.open(written.folder)
    manifest.write_text("{not json")
    with pytest.raises(DataFileError, match="manifest.json"):
        store.ActivationStore.open(written.folder)
    with pytest.raises(DataFileError, match="collect it first"):
        store.open_store(tmp_path / "elsewhere", settings)


@pytest.mark.parametrize(
    "changes,field",
    [({"dtype": "int8"}, "dtype"), ({"n_contexts": 0}, "n_contexts"), ({"skip_first": 5}, "skip_first"),
     ({"context_size": 2.5}, "context_size"), ({"prepend_bos": 1}, "prepend_bos"), ({"hook": None}, "hook")],
)
def test_bad_settings_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        _settings(**changes)


def test_bad_reader_arguments(tmp_path):
    settings = _settings()
    written = store.write_store(tmp_path, settings, _writer(settings))
    for bad in (0, 29, 2.0, True):
        with pytest.raises(ConfigError, match="batch_size"):
            next(written.batches(bad))
    with pytest.raises(ConfigError, match="epochs"):
        next(written.batches(4, epochs=0))
    with pytest.raises(IndexError):
        written.gather(torch.tensor([28]))


@pytest.mark.slow
def test_collect_from_a_tiny_model(tmp_path):
    """collect() runs the model once, matches a direct run, and then reuses the store."""

    model = qwen3_tiny(n_layers=2, d_model=16, n_heads=2, n_kv_heads=1, d_mlp=32)
    tokens = torch.randint(5, 500, (5, 6))
    hook = "blocks.1.hook_resid_pre"
    settings = store.settings_for(model, tokens, hook, model_name="tiny", dataset="random", skip_first=1)
    collected = store.collect(tmp_path, model, tokens, settings, batch_size=2, contexts_per_shard=2)
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    expected = cache[hook][:, 1:].reshape(-1, 16)
    assert torch.allclose(collected.tensor(), expected, atol=1e-5)
    assert torch.equal(collected.token_ids(), tokens[:, 1:].reshape(-1))
    with pytest.raises(ConfigError, match="settings.tokens"):
        store.collect(tmp_path, model, tokens + 1, settings)
    other = dataclasses.replace(settings, hook="blocks.0.hook_resid_pre")
    assert store.store_folder(tmp_path, other) != collected.folder
