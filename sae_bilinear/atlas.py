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

The numbers come from :mod:`sae_bilinear.atlas_scores`; this module takes the inputs, writes
the files and publishes the folder. Browsers refuse ``fetch`` on ``file://``, so each data file
is a script that hands its JSON to a callback (``atlasItem({...})``). Per-item numbers are
quantised (4 digits of the item's largest value) to keep 16k latents small.

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

from sae_bilinear import analysis, plots, similarity
from sae_bilinear import atlas_scores as views
from sae_bilinear.atlas_scores import MAP_SKETCH_DIMS, QUANT, Corpus
from sae_bilinear.errors import ConfigError, OutputExistsError
from sae_bilinear.train import collect_activations

ATLAS_FORMAT = 1
"""Version of the site's data layout (``atlas.json``'s ``format``)."""
ASSETS = Path(__file__).with_name("atlas_assets")
"""atlas.js, atlas.css, index.html and latent.html, copied into every site."""
SHARD = 1000
"""Item files per folder (``data/items/L/<id // SHARD>/<id>.js``)."""


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


def _auto_skip(model: Any, tokens: Tensor) -> int:
    """1 when every context starts with the BOS token (its activation is an outlier), else 0."""
    bos = getattr(getattr(model, "tokenizer", None), "bos_token_id", None)
    return int(bos is not None and tokens.shape[1] > 1 and bool((tokens[:, 0] == bos).all()))


def _corpus_from_tokens(model: Any, tokens: Tensor, skip: int) -> Corpus:
    kept = tokens[:, skip:]
    unique, inverse = torch.unique(kept.reshape(-1).cpu(), return_inverse=True)
    tokenizer = getattr(model, "tokenizer", None)
    return Corpus([views.token_text(tokenizer, int(i)) for i in unique], inverse, kept.shape[1])


def _corpus_from_strings(strings: Sequence[str] | None, n: int, sequence_length: int) -> Corpus:
    if strings is None:
        strings = [f"#{i}" for i in range(n)]
    if len(strings) != n:
        raise ConfigError(
            f"token_strings has {len(strings)} entries but there are {n} activations: give one string per token"
        )
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
            raise ConfigError(
                "the SAE's metadata names no hook point: pass hook_name=..., e.g. 'blocks.3.hook_resid_pre'"
            )
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
        raise ConfigError(
            f"activations have d_in={acts.shape[-1]} but the SAE reads d_in={d_in}: "
            "the SAE belongs to another model or hook"
        )
    if not torch.isfinite(acts).all():
        raise ConfigError(
            "activations contain NaN or inf: check the model's dtype (bf16/fp16 overflow) or the activation file"
        )
    return acts.float().cpu(), corpus


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------


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
    figures = {
        "manifold": plots.manifold_figure(empty, height=560),
        "spectrum": plots.spectrum_figure(np.zeros(0), height=300),
    }
    return {name: json.loads(pio.to_json(fig)) for name, fig in figures.items()}  # pyright: ignore[reportArgumentType]


COLUMNS: list[dict[str, str]] = [
    {"key": "item", "label": "item", "doc": "L = latent j; C = composite r (row r of W_down: C_r = Σ_j D_rj Q_j)"},
    {
        "key": "frequency",
        "label": "frequency",
        "doc": "share of tokens where |f| reaches activity_threshold × the item's peak ||ũ||²·max|λ|",
    },
    {
        "key": "density",
        "label": "Hoyer density",
        "doc": "(||f||₁/||f||₂ − 1)/(√N − 1) over the tokens: 1 = equally active everywhere, 0 = one token",
    },
    {
        "key": "effective_rank",
        "label": "eff. rank",
        "doc": "(Σ|λ|)²/Σλ² of the form's eigenvalues (2: a balanced rank-2 latent)",
    },
    {"key": "importance", "label": "importance Σλ²", "doc": "Σλ² = ||Q||²_F, the size of the form"},
    {
        "key": "top3_share",
        "label": "top-3 share",
        "doc": "share of Σ|λ| in the 3 largest |λ|: how much the 3D view shows",
    },
    {"key": "support", "label": "support", "doc": "latents in the composite (|D_rj| ≥ 0.1·max); 1 for a latent"},
    {"key": "max_abs", "label": "max |f|", "doc": "largest |activation| on the tokens"},
    {"key": "top_tokens", "label": "top tokens", "doc": "the tokens of its highest activations"},
    {"key": "bottom_tokens", "label": "bottom tokens", "doc": "the tokens of its lowest (most negative) activations"},
]


def _meta(
    sae: Any, corpus: Corpus, counts: tuple[int, int, int, int], title: str | None, logits_note: str | None
) -> dict[str, Any]:
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
                raise OutputExistsError(
                    f"{out} exists and is not empty: pass overwrite=True (--overwrite) to replace it"
                )
            if not (out / "atlas.json").is_file():
                raise OutputExistsError(
                    f"{out} is not an atlas (no atlas.json): refusing to replace it; choose another --out"
                )
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
    for name, value in (("hook_name", hook_name), ("title", title)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be a string or None, got {type(value).__name__}")
    if not isinstance(out_dir, (str, Path)) or not str(out_dir):
        raise ConfigError(f"out_dir must be a non-empty path, got {out_dir!r}")
    if n_listed > n_examples:
        raise ConfigError(
            f"n_listed={n_listed} must not exceed n_examples={n_examples} (listed contexts come from the kept examples)"
        )
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
        acts, corpus = _inputs(
            sae, model, tokens_or_activations, hook_name, skip_first, token_strings, sequence_length, progress
        )
        lap("activations")
        result = _build(
            sae,
            model,
            acts,
            corpus,
            staging,
            n_examples,
            n_listed,
            n_neighbours,
            n_logits,
            batch_size,
            progress,
            title,
            lap,
        )
        seconds["total"] = time.perf_counter() - start
        (staging / "atlas.json").write_text(
            json.dumps({"format": ATLAS_FORMAT, **result, "seconds": seconds}, indent=1)
        )
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
    forms = {"L": views.latent_forms(sae)}
    if has_down:
        forms["C"] = views.composite_forms(sae, progress)
    lap("spectra")
    lifted = 2.0 if analysis.is_lifted(sae) else 1.0
    peak = (
        torch.tensor([lifted * float(v.abs().max()) if v.numel() else 0.0 for v in forms["C"].eigenvalues])
        if has_down
        else None
    )
    scores = dict(zip(("L", "C"), views.score(sae, acts, peak, n_examples, batch_size, progress), strict=False))
    lap("scoring")
    neighbours = {code: similarity.nearest(sae, n_neighbours, composites=code == "C") for code in forms}
    lap("neighbours")
    xy_latents, xy_composites = views.latent_map(sae)
    lap("map")
    logits = {code: views.logit_effects(sae, model, code == "C", n_logits) for code in forms}
    lap("logits")
    kinds = [
        views.Kind(
            code,
            scores[code],  # pyright: ignore[reportArgumentType]
            forms[code],
            views.form_statistics(forms[code]),
            xy_latents if code == "L" else xy_composites,  # pyright: ignore[reportArgumentType]
            neighbours[code],
            logits[code],
        )
        for code in forms
        if scores[code] is not None  # pyright: ignore[reportArgumentType]
    ]
    _copy_assets(site)
    n_latents = len(forms["L"].support)
    n_composites = len(forms["C"].support) if has_down else 0
    meta = _meta(sae, corpus, (n_latents, n_composites, acts.shape[0], n_listed), title, views.logits_note(sae, model))
    _write_js(site / "data" / "meta.js", "atlasMeta", meta)
    _write_js(
        site / "data" / "corpus.js",
        "atlasCorpus",
        {"vocab": corpus.vocab, "ids": corpus.ids.tolist(), "sequence_length": corpus.sequence_length},
    )
    rows = [row for kind in kinds for row in views.index_rows(kind, corpus, n_listed)]
    _write_js(
        site / "data" / "index.js", "atlasIndex", {"columns": [c["key"] for c in COLUMNS] + ["x", "y"], "rows": rows}
    )
    total = sum(len(kind.forms.support) for kind in kinds)
    with tqdm(total=total, desc="atlas: writing pages", disable=not progress) as bar:
        for kind in kinds:
            for i in range(len(kind.forms.support)):
                _write_js(
                    site / item_path(kind.code, i), "atlasItem", views.item_record(sae, acts, kind, i, n_examples)
                )
                bar.update()
    lap("pages")
    return {
        "n_latents": n_latents,
        "n_composites": n_composites,
        "n_tokens": acts.shape[0],
        "meta": {k: v for k, v in meta.items() if k not in ("templates", "columns")},
    }


__all__ = ["ATLAS_FORMAT", "AtlasResult", "Corpus", "build_atlas", "item_path"]
