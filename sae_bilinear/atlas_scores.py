"""What the atlas shows of each latent and composite, computed once for all of them.

One pass over the activations scores every latent (and every composite ``C_r = Σ_j D_rj Q_j`` of
a mixed/combined SAE): frequency at the activity threshold, Hoyer density, the largest |f|,
and the top and bottom tokens (:func:`score`). From the weights alone: the spectra
(:func:`latent_forms`, :func:`composite_forms`), the 2-D map (:func:`latent_map`) and the
tokens each decoder direction promotes or suppresses through ``W_U`` (:func:`logit_effects`).
:func:`index_rows` and :func:`item_record` turn them into the JSON the pages read;
:mod:`sae_bilinear.atlas` writes the site.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sae_bilinear import analysis, interventions, similarity

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


def token_text(tokenizer: Any, token_id: int) -> str:
    """The text of one token id (``#id`` without a tokenizer)."""
    if tokenizer is None:
        return f"#{token_id}"
    token = tokenizer.convert_ids_to_tokens(token_id)
    if token is None:  # W_U rows past the tokenizer's vocabulary (padded embeddings) have no text
        return f"#{token_id}"
    return tokenizer.convert_tokens_to_string([token])


# ----------------------------------------------------------------------------------------
# Scoring: one pass over the activations
# ----------------------------------------------------------------------------------------


class Extremes:
    """Running top-k and bottom-k (values and token positions) of each column over a stream."""

    def __init__(self, width: int, k: int, device: torch.device) -> None:
        self.k = k
        empty_v = torch.zeros(width, 0, device=device)
        empty_i = torch.zeros(width, 0, dtype=torch.long, device=device)
        self.high = (empty_v, empty_i)
        self.low = (empty_v, empty_i)

    def _merge(
        self, best: tuple[Tensor, Tensor], values: Tensor, index: Tensor, largest: bool
    ) -> tuple[Tensor, Tensor]:
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


class Scores(NamedTuple):
    frequency: Tensor
    """Share of valid tokens at or above the activity threshold of the item's peak."""
    density: Tensor
    """Hoyer density over all tokens (invalid ones count as 0, as in composite_stats)."""
    max_abs: Tensor
    extremes: Extremes


def _hoyer(l1: Tensor, l2_squared: Tensor, n: int) -> Tensor:
    """``(||f||₁/||f||₂ − 1)/(√n − 1)`` from the sums (0 for a zero column or n < 2)."""
    if n < 2:
        return torch.zeros_like(l1)
    alive = l2_squared > 0
    ratio = l1 / torch.where(alive, l2_squared, torch.ones_like(l2_squared)).sqrt()
    return torch.where(alive, (ratio - 1) / (n**0.5 - 1), torch.zeros_like(ratio)).clamp(0, 1)


def score(
    sae: Any, acts: Tensor, composite_peak: Tensor | None, k: int, batch_size: int, progress: bool
) -> tuple[Scores, Scores | None]:
    """Score every latent (and composite) in one pass over ``acts``."""
    left, _, down, _ = analysis.factors(sae)
    F, device = left.shape[0], left.device
    usage = analysis.UsageSums(sae, torch.arange(F, device=device))
    sums = [torch.zeros(F, dtype=torch.float64, device=device) for _ in range(2)]
    extremes = Extremes(F, k, device)
    if down is not None:
        assert composite_peak is not None
        B = down.shape[0]
        c_sums = [torch.zeros(B, dtype=torch.float64, device=device) for _ in range(3)]
        c_max = torch.zeros(B, dtype=torch.float64, device=device)
        c_extremes = Extremes(B, k, device)
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
    latents = Scores(used["frequency"].cpu(), _hoyer(*sums, n).cpu(), used["max_abs"].cpu(), extremes)  # pyright: ignore[reportCallIssue]
    if down is None:
        return latents, None
    composites = Scores(
        (c_sums[2] / max(n_valid, 1)).cpu(), _hoyer(c_sums[0], c_sums[1], n).cpu(), c_max.cpu(), c_extremes
    )
    return latents, composites


# ----------------------------------------------------------------------------------------
# Weights: spectra, neighbours, map, logit effects
# ----------------------------------------------------------------------------------------


class Forms(NamedTuple):
    """Spectra of one kind of item (latents or composites)."""

    eigenvalues: list[Tensor]
    """Per item, its non-zero eigenvalues by ``|λ|`` (all of them: the statistics use them)."""
    eigenvectors: list[Tensor]
    """Per item, ``[d', ≤3]`` top eigenvectors (for the manifold view)."""
    support: list[int]


def latent_forms(sae: Any) -> Forms:
    spec = analysis.latent_spectrum(sae)
    values, vectors = spec.eigenvalues.cpu(), spec.eigenvectors.cpu()
    return Forms(list(values), list(vectors), [1] * values.shape[0])


def composite_forms(sae: Any, progress: bool, block: int = 16) -> Forms:
    """Full spectra of every ``C_r`` (float32 eigh, ``block`` rows at a time: the costly step on a CPU)."""
    down = analysis.factors(sae).down
    assert down is not None
    values, vectors, support = [], [], []
    for start in tqdm(range(0, down.shape[0], block), desc="atlas: composite spectra", disable=not progress):
        weights = down[start : start + block]
        spec = analysis.spectrum(analysis.composite_matrices(sae, weights), dtype=torch.float32)
        values += list(spec.eigenvalues.cpu())
        vectors += list(spec.eigenvectors[..., :3].cpu())
        peak = weights.abs().max(-1, keepdim=True).values
        support += ((weights.abs() >= 0.1 * peak) & (peak > 0)).sum(-1).tolist()
    return Forms(values, vectors, support)


def form_statistics(forms: Forms) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"effective_rank": [], "importance": [], "top3_share": []}
    for values in forms.eigenvalues:
        out["effective_rank"].append(float(analysis.effective_rank(values)))
        out["importance"].append(float(analysis.importance(values)))
        out["top3_share"].append(float(analysis.captured_share(values, k=3)))
    return out


def latent_map(sae: Any) -> tuple[Tensor, Tensor | None]:
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


class Logits(NamedTuple):
    promote: list[list[list[Any]]]
    """Per item, ``[[token, effect], ...]`` largest first."""
    suppress: list[list[list[Any]]]


def logits_note(sae: Any, model: Any) -> str | None:
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


def logit_effects(sae: Any, model: Any, composites: bool, k: int) -> Logits | None:
    """Tokens each item's decoder direction promotes/suppresses through ``W_U`` (None: not defined).

    Latent j moves x̂ along row j of :func:`interventions.latent_directions` (lifted SAEs
    only); composite r along ``D_r · decoder_directions``. The final norm is ignored, as in
    :func:`interventions.unembedding_effect`.
    """
    if logits_note(sae, model) is not None:
        return None
    W_U = model.W_U
    with torch.no_grad():
        directions = sae.W_down @ sae.decoder_directions() if composites else interventions.latent_directions(sae)
    tokenizer = getattr(model, "tokenizer", None)
    texts: dict[int, str] = {}
    out = Logits([], [])
    for start in range(0, directions.shape[0], 512):
        with torch.no_grad():
            effect = directions[start : start + 512].to(W_U.device, W_U.dtype) @ W_U
        for target, largest in ((out.promote, True), (out.suppress, False)):
            top = effect.float().topk(min(k, effect.shape[-1]), dim=-1, largest=largest)
            for ids, values in zip(top.indices.tolist(), top.values.tolist(), strict=False):
                target.append(
                    [[texts.setdefault(i, token_text(tokenizer, i)), round(v, 4)]
                     for i, v in zip(ids, values, strict=False)]
                )
    return out


# ----------------------------------------------------------------------------------------
# Records: the JSON of the index rows and of each item
# ----------------------------------------------------------------------------------------


def quantised(values: Tensor) -> dict[str, Any]:
    """``{"s": scale, "q": ints}`` with ``v ≈ q · s / QUANT`` (compact JSON for per-item arrays)."""
    v = values.double().cpu()
    scale = float(v.abs().max()) if v.numel() else 0.0
    scale = scale if scale > 0 else 1.0
    return {"s": float(f"{scale:.6g}"), "q": torch.round(v / scale * QUANT).long().tolist()}


def _distinct(texts: list[str], n: int) -> list[str]:
    return list(dict.fromkeys(texts))[:n]


def _round(value: float) -> float:
    return float(f"{value:.4g}")


class Kind(NamedTuple):
    """Everything the pages need about one kind of item."""

    code: str
    scores: Scores
    forms: Forms
    stats: dict[str, list[float]]
    xy: Tensor
    neighbours: similarity.Neighbours
    logits: Logits | None


def index_rows(kind: Kind, corpus: Corpus, n_listed: int) -> list[list[Any]]:
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
    down = getattr(sae, "W_down", None)  # not factors(): it copies every row, and this runs per item
    if down is None:
        return []
    down = down.detach()
    weights = down[i] if code == "C" else down[:, i]
    top = weights.abs().topk(min(12 if code == "C" else 5, weights.shape[0])).indices.tolist()
    other = "L" if code == "C" else "C"
    return [[other, j, _round(float(weights[j]))] for j in top if float(weights[j]) != 0.0]


def item_record(sae: Any, acts: Tensor, kind: Kind, i: int, n_examples: int) -> dict[str, Any]:
    high, high_v, low, low_v = kind.scores.extremes.item(i, n_examples)
    values = dict(zip(low + high, low_v + high_v, strict=False))  # the same position has the same value
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
        "neighbours": [
            [kind.code, int(j), _round(float(c))]
            for j, c in zip(kind.neighbours.indices[i], kind.neighbours.cosines[i], strict=False)
        ],
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
            "v": quantised(torch.tensor([values[p] for p in positions])),
            **{axis: quantised(view.coordinates[:, c]) for c, axis in enumerate("xyz")},
        }
    return record


__all__ = [
    "MAP_SKETCH_DIMS",
    "QUANT",
    "Corpus",
    "Extremes",
    "Forms",
    "Kind",
    "Logits",
    "Scores",
    "composite_forms",
    "form_statistics",
    "index_rows",
    "item_record",
    "latent_forms",
    "latent_map",
    "logit_effects",
    "logits_note",
    "quantised",
    "score",
    "token_text",
]
