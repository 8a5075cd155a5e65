"""Spliced CE of a sweep's members: the language model loaded once, every lifted member spliced.

A member trains from stored activations (:mod:`sae_bilinear.sweep_member`) and never sees the
language model, so it cannot measure what it costs the model. The driver does it after the
members finish (:func:`splice_members`): for each finished member that can decode (a lifted
bilinear SAE, or a linear SAELens SAE) it runs :func:`sae_bilinear.evaluate.evaluate_splice` on
held-out contexts of the member's own data settings (``dataset_path``, ``context_size``,
``prepend_bos``; BOS positions not scored, as in ``sae-bilinear run``), mean-ablating to the
mean of the group's training activations when their store is there. The models come from one
:class:`ModelCache`, which the activation pass uses too: one load per model per sweep run.

Each member's result is kept in ``<member>/splice.json`` (written through a temporary file and a
rename) with the number of contexts it used and ``splice_seconds`` (loading the member and the
four passes of :func:`~sae_bilinear.evaluate.evaluate_splice`; the shared model load and
held-out tokens are not counted), so a rerun with the same ``eval_contexts`` reads it instead of
loading the model. Members that cannot be spliced (unlifted bilinear SAEs: no
activation-space decoder; failed members; ``eval_contexts=0``) get ``ce_spliced: null`` and a
``splice_skipped`` reason in the table; a splice that fails (e.g. NaN) is that member's
``splice_error``, not the sweep's.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sae_bilinear import activation_store, data, errors, evaluate, hub, models

SPLICE_FILE = "splice.json"
"""In a finished member's folder: its splice metrics and the contexts they were measured on."""
DEFAULT_EVAL_CONTEXTS = 16
"""Held-out contexts spliced per member by default (``sae-bilinear run`` uses 16 too)."""
SPLICE_KEYS = ("ce_spliced", "ce_loss_recovered", "kl", "ce_clean", "ce_zero_ablated", "ce_mean_ablated")
"""Splice metrics copied into a member's row of the sweep table."""
UNLIFTED_REASON = (
    "unlifted bilinear SAE: it has no activation-space decoder, so it cannot replace the activations "
    "(train with sae.lifted: true to splice)"
)


class ModelCache:
    """Language models by ``(name, dtype)``, each loaded once on ``device`` for the whole sweep.

    :meth:`park` moves them to the CPU while members train (so a GPU is free for them);
    :meth:`get` moves one back before it is used."""

    def __init__(self, device: str):
        self.device = device
        self._models: dict[tuple[str, str], Any] = {}
        self._parked = False

    def get(self, name: str, dtype: str) -> Any:
        """The model ``name`` in ``dtype`` on the cache's device (loaded on first use)."""
        key = (name, dtype)
        if key not in self._models:
            self._models[key] = models.load_model(name, device=self.device, dtype=dtype)
        elif self._parked and self.device != "cpu":
            self._models[key].to(self.device)
        return self._models[key]

    def park(self) -> None:
        """Move every model to the CPU until it is next used (no-op on a CPU sweep)."""
        if self.device == "cpu":
            return
        for model in self._models.values():
            model.to("cpu")
        self._parked = True
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __len__(self) -> int:
        return len(self._models)


def local_corpus(settings: Mapping[str, Any]) -> data.TextCorpus:
    """A group's corpus (``dataset_path``), which a sweep reads locally."""
    corpus = data.load_corpus(settings["dataset_path"])
    if not isinstance(corpus, data.TextCorpus):
        raise errors.ConfigError(
            f"dataset_path {settings['dataset_path']!r} is not a local corpus; sweeps read 'kjv' or local "
            "text/JSONL (a Hub dataset needs the Hub: collect it on a machine that has it)"
        )
    return corpus


def heldout_contexts(
    settings: Mapping[str, Any], model: Any, n_contexts: int, corpus: data.TextCorpus | None = None
) -> Int[Tensor, "n context"]:
    """Up to ``n_contexts`` held-out contexts of a group's corpus, packed as its training contexts are."""
    corpus = corpus or local_corpus(settings)
    return data.tokenize_contexts(
        corpus.heldout or corpus.train[-1:],
        model.tokenizer,
        settings["context_size"],
        prepend_bos=bool(settings["prepend_bos"]),
        max_contexts=n_contexts,
    )


def store_mean(folder: Path) -> tuple[Float[Tensor, " d_in"], int]:
    """The mean row of an activation store and its number of rows, shard by shard in float64
    (the memory maps are read once; nothing of the store's size is copied)."""
    store = activation_store.ActivationStore.open(folder)
    total = torch.zeros(store.d_in, dtype=torch.float64)
    for index in range(len(store.shards)):
        shard = store.shard(index)
        for start in range(0, shard.shape[0], 65536):
            total += shard[start : start + 65536].double().sum(0)
    return (total / store.n_tokens).float(), store.n_tokens


def splice_reason(row: Mapping[str, Any]) -> str | None:
    """Why a member's row cannot be spliced, or None when it can."""
    if row.get("status") != "done":
        return "the member did not finish"
    if row.get("architecture") == "bilinear" and not row.get("lifted"):
        return UNLIFTED_REASON
    return None


def _read_cached(folder: Path, n_contexts: int) -> dict[str, Any] | None:
    """``splice.json`` of a member when it was measured on ``n_contexts`` contexts; else None."""
    try:
        cached = json.loads((folder / SPLICE_FILE).read_text())
    except (OSError, ValueError):
        return None  # absent or damaged: measured again and rewritten
    if not isinstance(cached, dict) or cached.get("eval_contexts") != n_contexts:
        return None
    if not all(isinstance(cached.get(k), (int, float)) or cached.get(k) is None for k in SPLICE_KEYS):
        return None
    seconds = cached.get("splice_seconds")  # absent in files written before it was recorded
    if seconds is not None and not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        return None
    return cached


def _write_cached(folder: Path, value: Mapping[str, Any]) -> None:
    temporary = folder / (SPLICE_FILE + ".tmp")
    temporary.write_text(json.dumps(dict(value), indent=1, allow_nan=False) + "\n")
    os.replace(temporary, folder / SPLICE_FILE)


class GroupInputs:
    """What every member of one activation group is spliced with (built on first use)."""

    def __init__(
        self,
        settings: Mapping[str, Any],
        train_store: Callable[[Any], Path],
        cache: ModelCache,
        n_contexts: int,
    ):
        self.settings = settings
        self.train_store = train_store
        """Given the model, the folder of the group's training activations (present or not)."""
        self.cache = cache
        self.n_contexts = n_contexts
        self._built: tuple[Any, Tensor, list[int] | None, Tensor | None, str] | None = None

    def get(self) -> tuple[Any, Tensor, list[int] | None, Tensor | None, str]:
        """``(model, tokens, ignored token ids, mean or None, mean label)``."""
        if self._built is None:
            model = self.cache.get(self.settings["model_name"], self.settings["dtype"])
            tokens = heldout_contexts(self.settings, model, self.n_contexts)
            bos = model.tokenizer.bos_token_id
            ignore = [bos] if self.settings["prepend_bos"] and bos is not None else None
            mean, label = None, evaluate.HELD_OUT_MEAN_LABEL
            store = self.train_store(model)
            if store.is_dir():  # else (deleted since) the held-out tokens' mean
                mean, n_tokens = store_mean(store)
                label = evaluate.TrainingMean(mean, n_tokens).label
            self._built = (model, tokens, ignore, mean, label)
        return self._built


def _splice_one(folder: Path, inputs: GroupInputs, device: str) -> dict[str, Any]:
    model, tokens, ignore, mean, label = inputs.get()
    started = time.perf_counter()  # the member's own cost: its load and splice, not the shared inputs
    sae = hub.load_any_from_disk(folder, device=device)
    metrics = evaluate.evaluate_splice(
        model,
        sae,
        tokens,
        ignore_tokens=ignore,
        mean_activation=mean,
        mean_source=label,
        progress=False,
    )
    values = metrics.to_dict()
    return {
        **{key: values[key] for key in SPLICE_KEYS},
        "eval_contexts": inputs.n_contexts,
        "eval_tokens": metrics.n_tokens,
        "mean_ablation": label,
        "splice_seconds": time.perf_counter() - started,
    }


def splice_members(
    rows: Sequence[MutableMapping[str, Any]],
    out: Path,
    inputs_of: Mapping[str, GroupInputs],
    group_of: Mapping[str, str],
    log: Callable[[str], None],
) -> int:
    """Add the splice metrics to each row of ``rows`` (in place); returns how many were measured.

    ``inputs_of`` maps a group key to its :class:`GroupInputs`, ``group_of`` a member name to its
    group key. Rows that cannot be spliced get ``ce_spliced: None`` and ``splice_skipped``."""
    measured = 0
    for row in rows:
        reason = splice_reason(row)
        if reason is not None:
            row.update(dict.fromkeys(SPLICE_KEYS), splice_skipped=reason)
            continue
        inputs = inputs_of[group_of[row["name"]]]
        folder = out / row["name"]
        cached = _read_cached(folder, inputs.n_contexts)
        if cached is None:
            log(f"{row['name']}: splicing into the model ({inputs.n_contexts} held-out contexts)")
            try:
                cached = _splice_one(folder, inputs, inputs.cache.device)
            except errors.UserError as error:  # e.g. a NaN metric: this member's problem, shown in its row
                row.update(dict.fromkeys(SPLICE_KEYS), splice_error=f"{type(error).__name__}: {error}")
                continue
            _write_cached(folder, cached)
            measured += 1
        row.update(cached)
    return measured


def skip_all(rows: Sequence[MutableMapping[str, Any]], reason: str) -> None:
    """Mark every row as not spliced, for ``reason`` (e.g. ``eval_contexts=0``)."""
    for row in rows:
        row.update(dict.fromkeys(SPLICE_KEYS), splice_skipped=splice_reason(row) or reason)
