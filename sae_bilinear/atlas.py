"""The latent atlas: one static, self-contained site to browse every latent of a bilinear SAE.

:func:`build_atlas` collects activations once, scores every latent (and, for mixed/combined
SAEs, every composite = row ``r`` of ``W_down``, the form ``C_r = Σ_j D_rj Q_j``) in one
pass, and writes a folder that opens from ``file://`` or any static host (no server, every
path relative, so a moved folder still works)::

    index.html              every latent and composite: a sortable, filterable table (search
                            by token) and a 2-D map; a click opens the latent
    latent.html#L12         one latent (#C3: composite 3): 3D manifold, spectrum, top and
                            bottom contexts, promoted/suppressed tokens, neighbours
    assets/plotly.min.js    plotly.js, once for the whole site; atlas.js, atlas.css
    atlas.json              what was built, from what, and how long it took
    data/meta.js            the SAE, the column docs, the figure templates (from plots.py)
    data/index.js           one row per latent/composite (table and map)
    data/corpus.js          the token strings once; contexts are rebuilt from it
    data/items/L/0/12.js    per latent (shards of 1000), loaded on demand

Browsers refuse ``fetch`` on ``file://``, so each data file is a script that hands its JSON to
a callback (``atlasItem({...})``). Per-item numbers are quantised (4 digits of the item's
largest value) to keep 16k latents small.

The 2-D map is a PCA (torch SVD) of every form ``Q_j`` (and ``C_r``), seen through the
data-free random sketch :func:`sae_bilinear.spectra.form_sketch` with unit rows, i.e. of
the forms' directions in the d'²-space. Neighbours are exact: the largest
``|cos(Q_i, Q_j)|`` (:func:`sae_bilinear.similarity.nearest`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import plotly
import plotly.io as pio
import torch
from torch import Tensor
from tqdm.auto import tqdm

from sae_bilinear import analysis, interventions, plots, similarity
from sae_bilinear.errors import ConfigError, OutputExistsError
from sae_bilinear.train import collect_activations

ATLAS_FORMAT = 1
"""Version of the site's data layout (``atlas.json``'s ``format``)."""
ASSETS = Path(__file__).with_name("atlas_assets")
"""atlas.js, atlas.css, index.html and latent.html, copied into every site."""
SHARD = 1000
"""Item files per folder (``data/items/L/<id // SHARD>/<id>.js``)."""
QUANT = 9999
"""Quantisation steps of per-item arrays: values are stored as ints ``round(v / max|v| · QUANT)``."""
MAP_SKETCH_DIMS = 128
"""Random projections of each form behind the 2-D map."""


class Corpus(NamedTuple):
    """The tokens the atlas was scored on, stored once in the site."""

    vocab: list[str]
    """Distinct token strings."""
    ids: Tensor
    """``[N]`` each position's index into ``vocab`` (row-major over sequences)."""
    sequence_length: int
    """Positions per sequence: a context never crosses a sequence."""


class AtlasResult(NamedTuple):
    """What :func:`build_atlas` wrote and measured."""

    index: Path
    """``index.html`` of the site."""
    n_latents: int
    n_composites: int
    """Rows of ``W_down`` (0 for vanilla/ordered)."""
    n_tokens: int
    site_bytes: int
    """The whole folder."""
    data_bytes: int
    """The folder without plotly.min.js (what grows with the number of latents)."""
    seconds: dict[str, float]
    """Wall time per stage: activations, scoring, spectra, neighbours, map, logits, pages, total."""


# ----------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _token_text(tokenizer: Any, token_id: int) -> str:
    if tokenizer is None:
        return f"#{token_id}"
    return tokenizer.convert_tokens_to_string([tokenizer.convert_ids_to_tokens(token_id)])


def _auto_skip(model: Any, tokens: Tensor) -> int:
    """1 when every context starts with the BOS token (its activation is an outlier), else 0."""
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    return int(bos is not None and tokens.shape[1] > 1 and bool((tokens[:, 0] == bos).all()))


def _corpus_from_tokens(model: Any, tokens: Tensor, skip: int) -> Corpus:
    kept = tokens[:, skip:]
    unique, inverse = torch.unique(kept.reshape(-1).cpu(), return_inverse=True)
    tokenizer = getattr(model, "tokenizer", None)
    return Corpus([_token_text(tokenizer, int(i)) for i in unique], inverse, kept.shape[1])


def _corpus_from_strings(strings: Sequence[str] | None, n: int, sequence_length: int) -> Corpus:
    if strings is None:
        strings = [f"#{i}" for i in range(n)]
    if len(strings) != n:
        raise ConfigError(f"token_strings has {len(strings)} entries but there are {n} activations: give one string per token")
    positions: dict[str, int] = {}
    ids = [positions.setdefault(str(s), len(positions)) for s in strings]
    return Corpus(list(positions), torch.tensor(ids, dtype=torch.long), sequence_length)


def _inputs(
    sae: Any,
    model: Any,
    data: Tensor,
    hook_name: str | None,
    skip_first: int | None,
    token_strings: Sequence[str] | None,
    sequence_length: int | None,
    progress: bool,
) -> tuple[Tensor, Corpus]:
    """Activations [N, d_in] (float32, CPU) and the corpus they came from."""
    if not isinstance(data, Tensor):
        raise ConfigError(f"tokens_or_activations must be a torch.Tensor, got {type(data).__name__}")
    d_in = analysis.factors(sae).left.shape[1] - int(analysis.is_lifted(sae))
    if not data.is_floating_point():
        if model is None:
            raise ConfigError("token ids need a model to run: pass model=..., or pass activations instead of tokens")
        if data.ndim != 2 or data.numel() == 0:
            raise ConfigError(f"tokens must be a non-empty [n_contexts, context] tensor, got shape {tuple(data.shape)}")
        hook = hook_name or getattr(getattr(getattr(sae, "cfg", None), "metadata", None), "hook_name", None)
        if not hook:
            raise ConfigError("the SAE's metadata names no hook point: pass hook_name=..., e.g. 'blocks.3.hook_resid_pre'")
        skip = _auto_skip(model, data) if skip_first is None else _check_int("skip_first", skip_first, 0)
        if skip >= data.shape[1]:
            raise ConfigError(f"skip_first={skip} leaves no token of contexts of length {data.shape[1]}")
        acts = collect_activations(model, data, hook, skip_first=skip, progress=progress)
        corpus = _corpus_from_tokens(model, data, skip)
    else:
        acts = data.reshape(-1, data.shape[-1]) if data.ndim >= 2 else data
        if acts.ndim != 2 or acts.shape[0] == 0:
            raise ConfigError(f"activations must be a non-empty [..., d_in] tensor, got shape {tuple(data.shape)}")
        if sequence_length is not None:
            _check_int("sequence_length", sequence_length, 1)
        length = sequence_length or (data.shape[-2] if data.ndim == 3 else acts.shape[0])
        corpus = _corpus_from_strings(token_strings, acts.shape[0], length)
    if acts.shape[-1] != d_in:
        raise ConfigError(f"activations have d_in={acts.shape[-1]} but the SAE reads d_in={d_in}: the SAE belongs to another model or hook")
    if not torch.isfinite(acts).all():
        raise ConfigError("activations contain NaN or inf: check the model's dtype (bf16/fp16 overflow) or the activation file")
    return acts.float().cpu(), corpus


# ----------------------------------------------------------------------------------------
# Scoring: one pass over the activations
# ----------------------------------------------------------------------------------------


class _Extremes:
    """Running top-k and bottom-k (values and token positions) of each column over a stream."""

    def __init__(self, width: int, k: int, device: torch.device) -> None:
        self.k = k
        empty_v = torch.zeros(width, 0, device=device)
        empty_i = torch.zeros(width, 0, dtype=torch.long, device=device)
        self.high = (empty_v, empty_i)
        self.low = (empty_v, empty_i)

    def _merge(self, best: tuple[Tensor, Tensor], values: Tensor, index: Tensor, largest: bool) -> tuple[Tensor, Tensor]:
        all_v, all_i = torch.cat([best[0], values], 1), torch.cat([best[1], index], 1)
        top = all_v.topk(min(self.k, all_v.shape[1]), dim=1, largest=largest)
        return top.values, all_i.gather(1, top.indices)

    def add(self, values: Tensor, valid: Tensor, offset: int) -> None:
        """``values`` [B, width] of tokens ``offset .. offset+B`` (``valid`` [B])."""
        v = values.T.float()
        index = torch.arange(offset, offset + v.shape[1], device=v.device).expand_as(v)
        keep = valid.to(v.device).unsqueeze(0)
        self.high = self._merge(self.high, torch.where(keep, v, torch.full_like(v, -torch.inf)), index, True)
        self.low = self._merge(self.low, torch.where(keep, v, torch.full_like(v, torch.inf)), index, False)

    def item(self, row: int, n: int) -> tuple[list[int], list[float], list[int], list[float]]:
        """Positions and values of the ``n`` highest and ``n`` lowest (finite) entries of ``row``."""
        hv, hi = self.high[0][row, :n].cpu(), self.high[1][row, :n].cpu()
        lv, li = self.low[0][row, :n].cpu(), self.low[1][row, :n].cpu()
        high, low = torch.isfinite(hv), torch.isfinite(lv)
        return hi[high].tolist(), hv[high].tolist(), li[low].tolist(), lv[low].tolist()


class _Scores(NamedTuple):
    frequency: Tensor
    """Share of valid tokens at or above the activity threshold of the item's peak."""
    density: Tensor
    """Hoyer density over all tokens (invalid ones count as 0, as in composite_stats)."""
    max_abs: Tensor
    extremes: _Extremes


def _hoyer(l1: Tensor, l2_squared: Tensor, n: int) -> Tensor:
    """``(||f||₁/||f||₂ − 1)/(√n − 1)`` from the sums (0 for a zero column or n < 2)."""
    if n < 2:
        return torch.zeros_like(l1)
    alive = l2_squared > 0
    ratio = l1 / torch.where(alive, l2_squared, torch.ones_like(l2_squared)).sqrt()
    return torch.where(alive, (ratio - 1) / (n**0.5 - 1), torch.zeros_like(ratio)).clamp(0, 1)


def _score(sae: Any, acts: Tensor, composite_peak: Tensor | None, k: int, batch_size: int, progress: bool) -> tuple[_Scores, _Scores | None]:
    """Score every latent (and composite) in one pass over ``acts``."""
    left, _, down, _ = analysis.factors(sae)
    F, device = left.shape[0], left.device
    usage = analysis.UsageSums(sae, torch.arange(F, device=device))
    sums = [torch.zeros(F, dtype=torch.float64, device=device) for _ in range(2)]
    extremes = _Extremes(F, k, device)
    if down is not None:
        assert composite_peak is not None
        B = down.shape[0]
        c_sums = [torch.zeros(B, dtype=torch.float64, device=device) for _ in range(3)]
        c_max = torch.zeros(B, dtype=torch.float64, device=device)
        c_extremes = _Extremes(B, k, device)
        threshold = usage.threshold * composite_peak.to(device)
    n_valid = 0
    for start in tqdm(range(0, acts.shape[0], batch_size), desc="atlas: scoring latents", disable=not progress):
        f, valid = analysis.token_latents(sae, acts[start : start + batch_size])
        usage.add(f[valid])
        sums[0] += f.abs().sum(0)
        sums[1] += f.double().pow(2).sum(0)
        extremes.add(f, valid, start)
        n_valid += int(valid.sum())
        if down is not None:
            h = f @ down.T  # dense composite activations h_r = Σ_j D_rj f_j
            c_sums[0] += h.abs().sum(0)
            c_sums[1] += h.double().pow(2).sum(0)
            c_sums[2] += (h[valid].abs() >= threshold).sum(0)
            if h.shape[0]:
                c_max = torch.maximum(c_max, h.abs().max(0).values.double())
            c_extremes.add(h, valid, start)
    n = acts.shape[0]
    used = usage.result()
    latents = _Scores(used["frequency"].cpu(), _hoyer(*sums, n).cpu(), used["max_abs"].cpu(), extremes)
    if down is None:
        return latents, None
    composites = _Scores((c_sums[2] / max(n_valid, 1)).cpu(), _hoyer(c_sums[0], c_sums[1], n).cpu(), c_max.cpu(), c_extremes)
    return latents, composites


# ----------------------------------------------------------------------------------------
# Weights: spectra, neighbours, map, logit effects
# ----------------------------------------------------------------------------------------


class _Forms(NamedTuple):
    """Spectra of one kind of item (latents or composites)."""

    eigenvalues: list[Tensor]
    """Per item, its non-zero eigenvalues by ``|λ|`` (all of them: the statistics use them)."""
    eigenvectors: list[Tensor]
    """Per item, ``[d', ≤3]`` top eigenvectors (for the manifold view)."""
    support: list[int]


def _latent_forms(sae: Any) -> _Forms:
    spec = analysis.latent_spectrum(sae)
    values, vectors = spec.eigenvalues.cpu(), spec.eigenvectors.cpu()
    return _Forms(list(values), list(vectors), [1] * values.shape[0])


def _composite_forms(sae: Any, progress: bool) -> _Forms:
    down = analysis.factors(sae).down
    assert down is not None
    values, vectors, support = [], [], []
    for row in tqdm(range(down.shape[0]), desc="atlas: composite spectra", disable=not progress):
        weights = down[row]
        spec = analysis.composite_spectrum(sae, weights)
        values.append(spec.eigenvalues.cpu())
        vectors.append(spec.eigenvectors[:, :3].cpu())
        support.append(int((weights.abs() >= 0.1 * weights.abs().max()).sum()) if weights.abs().max() > 0 else 0)
    return _Forms(values, vectors, support)


def _form_statistics(forms: _Forms) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"effective_rank": [], "importance": [], "top3_share": []}
    for values in forms.eigenvalues:
        out["effective_rank"].append(float(analysis.effective_rank(values)))
        out["importance"].append(float(analysis.importance(values)))
        out["top3_share"].append(float(analysis.captured_share(values, k=3)))
    return out


def _map(sae: Any) -> tuple[Tensor, Tensor | None]:
    """2-D PCA coordinates of the latents' (and composites') forms, from unit-row sketches."""
    sketch = analysis.form_sketch(sae, MAP_SKETCH_DIMS).double()
    down = analysis.factors(sae).down
    rows = sketch if down is None else torch.cat([sketch, down.double() @ sketch])
    rows = rows / rows.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    centred = rows - rows.mean(0, keepdim=True)
    axes = torch.linalg.svd(centred, full_matrices=False).Vh[:2].T
    xy = (centred @ axes).float().cpu()
    if xy.shape[1] < 2:
        xy = torch.cat([xy, xy.new_zeros(xy.shape[0], 2 - xy.shape[1])], 1)
    F = sketch.shape[0]
    return xy[:F], (xy[F:] if down is not None else None)


class _Logits(NamedTuple):
    promote: list[list[list[Any]]]
    """Per item, ``[[token, effect], ...]`` largest first."""
    suppress: list[list[list[Any]]]


def _logits_note(sae: Any, model: Any) -> str | None:
    """Why the promoted/suppressed tokens cannot be computed (None: they can)."""
    W_U = getattr(model, "W_U", None)
    if W_U is None:
        return "no model with an unembedding (W_U) was given"
    if not analysis.is_lifted(sae) or not hasattr(sae, "decoder_directions"):
        return "the SAE is unlifted, so its latents have no decoder direction (f(-x) = f(x))"
    d_in = analysis.factors(sae).left.shape[1] - 1
    if d_in != W_U.shape[0]:
        return f"the SAE's d_in={d_in} is not the model's residual width {W_U.shape[0]}"
    return None


def _logit_effects(sae: Any, model: Any, composites: bool, k: int) -> _Logits | None:
    """Tokens each item's decoder direction promotes/suppresses through ``W_U`` (None: not defined).

    Latent j moves x̂ along row j of :func:`interventions.latent_directions` (lifted SAEs
    only); composite r along ``D_r · decoder_directions``. The final norm is ignored, as in
    :func:`interventions.unembedding_effect`.
    """
    if _logits_note(sae, model) is not None:
        return None
    W_U = model.W_U
    with torch.no_grad():
        directions = sae.W_down @ sae.decoder_directions() if composites else interventions.latent_directions(sae)
    tokenizer = getattr(model, "tokenizer", None)
    texts: dict[int, str] = {}
    out = _Logits([], [])
    for start in range(0, directions.shape[0], 512):
        with torch.no_grad():
            effect = directions[start : start + 512].to(W_U.device, W_U.dtype) @ W_U
        for target, largest in ((out.promote, True), (out.suppress, False)):
            top = effect.float().topk(min(k, effect.shape[-1]), dim=-1, largest=largest)
            for ids, values in zip(top.indices.tolist(), top.values.tolist()):
                target.append([[texts.setdefault(i, _token_text(tokenizer, i)), round(v, 4)] for i, v in zip(ids, values)])
    return out


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------


def _quantised(values: Tensor) -> dict[str, Any]:
    """``{"s": scale, "q": ints}`` with ``v ≈ q · s / QUANT`` (compact JSON for per-item arrays)."""
    v = values.double().cpu()
    scale = float(v.abs().max()) if v.numel() else 0.0
    scale = scale if scale > 0 else 1.0
    return {"s": float(f"{scale:.6g}"), "q": torch.round(v / scale * QUANT).long().tolist()}


def _write_js(path: Path, callback: str, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(plots.strict_json(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    path.write_text(f"{callback}({text});\n", encoding="utf-8")


def item_path(kind: str, index: int) -> str:
    """Relative path of an item's data file (``kind`` "L" for latents, "C" for composites)."""
    return f"data/items/{kind}/{index // SHARD}/{index}.js"


def _figure_templates() -> dict[str, Any]:
    """plots.manifold_figure / spectrum_figure with empty data: the pages fill them per item."""
    empty = analysis.TopActivations(
        indices=torch.zeros(0, dtype=torch.long),
        values=torch.zeros(0),
        coordinates=torch.zeros(0, 3),
        axes=torch.zeros(1, 3),
        axis_eigenvalues=torch.zeros(3),
        axis_labels=["", "", ""],
        tokens=None,
        contexts=None,
        latent=None,
        weights=None,
        lifted=False,
    )
    figures = {"manifold": plots.manifold_figure(empty, height=560), "spectrum": plots.spectrum_figure(np.zeros(0), height=300)}
    return {name: json.loads(pio.to_json(fig)) for name, fig in figures.items()}


COLUMNS: list[dict[str, str]] = [
    {"key": "item", "label": "item", "doc": "L = latent j; C = composite r (row r of W_down: C_r = Σ_j D_rj Q_j)"},
    {"key": "frequency", "label": "frequency", "doc": "share of tokens where |f| reaches activity_threshold × the item's peak ||ũ||²·max|λ|"},
    {"key": "density", "label": "Hoyer density", "doc": "(||f||₁/||f||₂ − 1)/(√N − 1) over the tokens: 1 = equally active everywhere, 0 = one token"},
    {"key": "effective_rank", "label": "eff. rank", "doc": "(Σ|λ|)²/Σλ² of the form's eigenvalues (2: a balanced rank-2 latent)"},
    {"key": "importance", "label": "importance Σλ²", "doc": "Σλ² = ||Q||²_F, the size of the form"},
    {"key": "top3_share", "label": "top-3 share", "doc": "share of Σ|λ| in the 3 largest |λ|: how much the 3D view shows"},
    {"key": "support", "label": "support", "doc": "latents in the composite (|D_rj| ≥ 0.1·max); 1 for a latent"},
    {"key": "max_abs", "label": "max |f|", "doc": "largest |activation| on the tokens"},
    {"key": "top_tokens", "label": "top tokens", "doc": "the tokens of its highest activations"},
    {"key": "bottom_tokens", "label": "bottom tokens", "doc": "the tokens of its lowest (most negative) activations"},
]


def _distinct(texts: list[str], n: int) -> list[str]:
    return list(dict.fromkeys(texts))[:n]


def _round(value: float) -> float:
    return float(f"{value:.4g}")


class _Kind(NamedTuple):
    """Everything the pages need about one kind of item."""

    code: str
    scores: _Scores
    forms: _Forms
    stats: dict[str, list[float]]
    xy: Tensor
    neighbours: similarity.Neighbours
    logits: _Logits | None


def _index_rows(kind: _Kind, corpus: Corpus, n_listed: int) -> list[list[Any]]:
    rows = []
    for i in range(kind.scores.frequency.shape[0]):
        high, _, low, _ = kind.scores.extremes.item(i, n_listed)
        rows.append(
            [
                f"{kind.code}{i}",
                _round(float(kind.scores.frequency[i])),
                _round(float(kind.scores.density[i])),
                _round(kind.stats["effective_rank"][i]),
                _round(kind.stats["importance"][i]),
                _round(kind.stats["top3_share"][i]),
                kind.forms.support[i],
                _round(float(kind.scores.max_abs[i])),
                _distinct([corpus.vocab[int(corpus.ids[p])] for p in high], 5),
                _distinct([corpus.vocab[int(corpus.ids[p])] for p in low], 5),
                _round(float(kind.xy[i, 0])),
                _round(float(kind.xy[i, 1])),
            ]
        )
    return rows


def _members(sae: Any, code: str, i: int) -> list[list[Any]]:
    """Composite: its strongest latents ``[["L", j, D_rj]]``; latent of a mixed SAE: the rows reading it."""
    down = analysis.factors(sae).down
    if down is None:
        return []
    weights = down[i] if code == "C" else down[:, i]
    top = weights.abs().topk(min(12 if code == "C" else 5, weights.shape[0])).indices.tolist()
    other = "L" if code == "C" else "C"
    return [[other, j, _round(float(weights[j]))] for j in top if float(weights[j]) != 0.0]


def _item_record(sae: Any, acts: Tensor, kind: _Kind, i: int, n_examples: int) -> dict[str, Any]:
    high, high_v, low, low_v = kind.scores.extremes.item(i, n_examples)
    values = dict(zip(low + high, low_v + high_v))  # the same position has the same value
    positions = sorted(values, key=lambda p: -values[p])
    eigenvalues = kind.forms.eigenvalues[i]
    record: dict[str, Any] = {
        "kind": kind.code,
        "id": i,
        "stats": {
            "frequency": float(kind.scores.frequency[i]),
            "density": float(kind.scores.density[i]),
            "max_abs": float(kind.scores.max_abs[i]),
            "support": kind.forms.support[i],
            **{name: column[i] for name, column in kind.stats.items()},
        },
        "eigenvalues": [_round(float(v)) for v in eigenvalues[:64]],
        "n_high": len(high),
        "members": _members(sae, kind.code, i),
        "neighbours": [[kind.code, int(j), _round(float(c))] for j, c in zip(kind.neighbours.indices[i], kind.neighbours.cosines[i])],
        "promote": kind.logits.promote[i] if kind.logits else None,
        "suppress": kind.logits.suppress[i] if kind.logits else None,
    }
    if positions:
        index = torch.tensor(positions)
        spec = analysis.Spectrum(eigenvalues, kind.forms.eigenvectors[i])
        view = analysis.manifold_view(analysis.lifted_units(sae, acts[index]), spec)
        record["axes"] = view.axis_labels
        record["points"] = {
            "pos": positions,
            "v": _quantised(torch.tensor([values[p] for p in positions])),
            **{axis: _quantised(view.coordinates[:, c]) for c, axis in enumerate("xyz")},
        }
    return record


def _meta(sae: Any, corpus: Corpus, counts: tuple[int, int, int, int], title: str | None, logits_note: str | None) -> dict[str, Any]:
    """``counts``: latents, composites, tokens, contexts listed per end."""
    n_latents, n_composites, n_tokens, n_listed = counts
    left, _, down, lifted = analysis.factors(sae)
    cfg = getattr(sae, "cfg", None)
    metadata = getattr(cfg, "metadata", None)
    return {
        "format": ATLAS_FORMAT,
        "title": title or "bilinear SAE atlas",
        "variant": analysis.variant_name(sae),
        "lifted": lifted,
        "d_in": left.shape[1] - int(lifted),
        "d_sae": left.shape[0],
        "bottleneck": None if down is None else down.shape[0],
        "model": getattr(metadata, "model_name", None),
        "hook_name": getattr(metadata, "hook_name", None),
        "activity_threshold": float(getattr(cfg, "activity_threshold", 0.1)),
        "n_latents": n_latents,
        "n_composites": n_composites,
        "n_tokens": n_tokens,
        "n_listed": n_listed,
        "sequence_length": corpus.sequence_length,
        "shard": SHARD,
        "quant": QUANT,
        "logits_note": logits_note,
        "map": f"PCA of the forms' unit-normalised random sketches ({MAP_SKETCH_DIMS} dims)",
        "columns": COLUMNS,
        "templates": _figure_templates(),
    }


def _copy_assets(site: Path) -> None:
    (site / "assets").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(plotly.__file__).parent / "package_data" / "plotly.min.js", site / "assets" / "plotly.min.js")
    for name in ("atlas.js", "atlas.css"):
        shutil.copyfile(ASSETS / name, site / "assets" / name)
    for name in ("index.html", "latent.html"):
        shutil.copyfile(ASSETS / name, site / name)


# ----------------------------------------------------------------------------------------
# The output folder: staged, then renamed
# ----------------------------------------------------------------------------------------


def _staging(out: Path, overwrite: bool) -> Path:
    """A fresh folder beside ``out`` to write into; refuses to replace what is not ours."""
    if out.exists():
        if not out.is_dir():
            raise OutputExistsError(f"{out} exists and is not a folder: choose another --out")
        if any(out.iterdir()):
            if not overwrite:
                raise OutputExistsError(f"{out} exists and is not empty: pass overwrite=True (--overwrite) to replace it")
            if not (out / "atlas.json").is_file():
                raise OutputExistsError(f"{out} is not an atlas (no atlas.json): refusing to replace it; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a site is for others to read
    return staging


def _publish(staging: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        out.rename(old / "site")
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)


def _size(folder: Path, skip: str | None = None) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != skip)


# ----------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------


def build_atlas(
    sae: Any,
    model: Any | None,
    tokens_or_activations: Tensor,
    out_dir: str | Path,
    *,
    hook_name: str | None = None,
    skip_first: int | None = None,
    token_strings: Sequence[str] | None = None,
    sequence_length: int | None = None,
    n_examples: int = 100,
    n_listed: int = 20,
    n_neighbours: int = 8,
    n_logits: int = 12,
    batch_size: int = 2048,
    overwrite: bool = False,
    progress: bool = True,
    title: str | None = None,
) -> AtlasResult:
    """Write the atlas of ``sae`` to ``out_dir`` (see the module docstring for the layout).

    Args:
        sae: a bilinear SAE (any variant; lifted or not).
        model: a HookedTransformer (needed for token ids; gives the token strings and, for a
            lifted SAE whose ``d_in`` is the residual width, the promoted/suppressed tokens
            through ``W_U``). May be None when activations are given.
        tokens_or_activations: token ids [n_contexts, context] (run through ``model`` at
            ``hook_name``, default the SAE's), or float activations [n, context, d_in] or
            [N, d_in].
        skip_first: leading positions of each context to drop (default: 1 when every
            context starts with BOS, else 0). Token ids only.
        token_strings, sequence_length: with activations, one string per token (default
            ``#i``) and the context length (default: dim 1 of a 3-D tensor, else one sequence).
        n_examples: tokens kept at each end per item (the 3D view shows both ends).
        n_listed: contexts listed at each end (index search uses their tokens).
        n_neighbours, n_logits: nearest items and promoted/suppressed tokens listed.
        batch_size: tokens per step of the scoring pass.
        overwrite: replace an existing atlas at ``out_dir`` (never a folder that is not one).

    Returns an :class:`AtlasResult` with the sizes and the time of each stage.
    """
    for name, value, minimum in (
        ("n_examples", n_examples, 1),
        ("n_listed", n_listed, 1),
        ("n_neighbours", n_neighbours, 1),
        ("n_logits", n_logits, 1),
        ("batch_size", batch_size, 1),
    ):
        _check_int(name, value, minimum)
    if n_listed > n_examples:
        raise ConfigError(f"n_listed={n_listed} must not exceed n_examples={n_examples} (listed contexts come from the kept examples)")
    out = Path(out_dir)
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = now - clock
        clock = now

    start = clock
    staging = _staging(out, overwrite)
    try:
        acts, corpus = _inputs(sae, model, tokens_or_activations, hook_name, skip_first, token_strings, sequence_length, progress)
        lap("activations")
        result = _build(sae, model, acts, corpus, staging, n_examples, n_listed, n_neighbours, n_logits, batch_size, progress, title, lap)
        seconds["total"] = time.perf_counter() - start
        (staging / "atlas.json").write_text(json.dumps({"format": ATLAS_FORMAT, **result, "seconds": seconds}, indent=1))
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return AtlasResult(
        index=out / "index.html",
        n_latents=result["n_latents"],
        n_composites=result["n_composites"],
        n_tokens=result["n_tokens"],
        site_bytes=_size(out),
        data_bytes=_size(out, skip="plotly.min.js"),
        seconds=seconds,
    )


def _build(
    sae: Any,
    model: Any,
    acts: Tensor,
    corpus: Corpus,
    site: Path,
    n_examples: int,
    n_listed: int,
    n_neighbours: int,
    n_logits: int,
    batch_size: int,
    progress: bool,
    title: str | None,
    lap: Any,
) -> dict[str, Any]:
    """Score, compute the weight-side views and write every file of the site into ``site``."""
    has_down = analysis.factors(sae).down is not None
    forms = {"L": _latent_forms(sae)}
    if has_down:
        forms["C"] = _composite_forms(sae, progress)
    lap("spectra")
    lifted = 2.0 if analysis.is_lifted(sae) else 1.0
    peak = torch.tensor([lifted * float(v.abs().max()) if v.numel() else 0.0 for v in forms["C"].eigenvalues]) if has_down else None
    scores = dict(zip(("L", "C"), _score(sae, acts, peak, n_examples, batch_size, progress)))
    lap("scoring")
    neighbours = {code: similarity.nearest(sae, n_neighbours, composites=code == "C") for code in forms}
    lap("neighbours")
    xy_latents, xy_composites = _map(sae)
    lap("map")
    logits = {code: _logit_effects(sae, model, code == "C", n_logits) for code in forms}
    lap("logits")
    kinds = [
        _Kind(code, scores[code], forms[code], _form_statistics(forms[code]), xy_latents if code == "L" else xy_composites, neighbours[code], logits[code])
        for code in forms
        if scores[code] is not None
    ]
    _copy_assets(site)
    n_latents = len(forms["L"].support)
    n_composites = len(forms["C"].support) if has_down else 0
    meta = _meta(sae, corpus, (n_latents, n_composites, acts.shape[0], n_listed), title, _logits_note(sae, model))
    _write_js(site / "data" / "meta.js", "atlasMeta", meta)
    _write_js(site / "data" / "corpus.js", "atlasCorpus", {"vocab": corpus.vocab, "ids": corpus.ids.tolist(), "sequence_length": corpus.sequence_length})
    rows = [row for kind in kinds for row in _index_rows(kind, corpus, n_listed)]
    _write_js(site / "data" / "index.js", "atlasIndex", {"columns": [c["key"] for c in COLUMNS] + ["x", "y"], "rows": rows})
    total = sum(len(kind.forms.support) for kind in kinds)
    with tqdm(total=total, desc="atlas: writing pages", disable=not progress) as bar:
        for kind in kinds:
            for i in range(len(kind.forms.support)):
                _write_js(site / item_path(kind.code, i), "atlasItem", _item_record(sae, acts, kind, i, n_examples))
                bar.update()
    lap("pages")
    return {"n_latents": n_latents, "n_composites": n_composites, "n_tokens": acts.shape[0], "meta": {k: v for k, v in meta.items() if k not in ("templates", "columns")}}


__all__ = ["ATLAS_FORMAT", "AtlasResult", "Corpus", "build_atlas", "item_path"]
