"""One latent, written to disk: ``latent_J.html`` (3D manifold), ``latent_J.png`` and ``latent_J.json``.

:func:`analyze_latent` is what ``sae-bilinear analyze`` and the main job call for each chosen
latent. The math comes from :mod:`sae_bilinear.analysis`, the figures from
:mod:`sae_bilinear.plots`; this module only assembles and writes them. For every latent of an
SAE at once, see :mod:`sae_bilinear.atlas`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from sae_bilinear import analysis, plots


def analyze_latent(
    sae: Any,
    latent: int,
    activations: Tensor,
    contexts: Sequence[str] | None = None,
    out_dir: str | Path = ".",
    *,
    tokens: Sequence[str] | None = None,
    n: int = 500,
    mode: Literal["latent", "cluster"] | None = None,
    cluster_size: int = 10,
    top_dims: int = 10,
    n_listed: int = 25,
    png: bool = True,
) -> dict[str, Any]:
    """Analyse one latent and write ``latent_J.html``, ``latent_J.png`` and ``latent_J.json``.

    Args:
        latent: J.
        activations: ``[..., d_in]`` raw activations to find its top tokens in.
        contexts, tokens: per-token strings (length N) shown on hover and in the JSON.
        mode: ``"latent"`` (the rank-2 form ``Q_J``) or ``"cluster"`` (``Σ v_i Q_i`` over
            J's ``cluster_size`` strongest partners in the normalised ``DᵀD``, as the
            authors visualise mixed models). Default: cluster for mixed/combined, else latent.
        n: tokens in the manifold view (half highest, half lowest activations).
        top_dims: input dimensions listed per eigenvector.
        n_listed: tokens listed at each end in the JSON.

    Returns the JSON content, with the written paths under ``files`` and also as the
    top-level keys ``html``, ``png`` (when ``png``) and ``json``. The HTML holds the
    interactive 3D manifold, the spectrum and (mixed) the interaction heat map; it embeds
    plotly.js, so it opens offline.
    """
    left, _, down, lifted = analysis.factors(sae)
    d_sae = left.shape[0]
    index, _ = analysis.latent_indices(latent, d_sae, torch.device("cpu"))
    latent = int(index[0])
    if mode is None:
        mode = "cluster" if down is not None else "latent"
    if mode == "cluster" and down is None:
        raise ValueError("mode='cluster' needs a mixed or combined SAE (it has no W_down)")
    if mode not in ("latent", "cluster"):
        raise ValueError(f"mode must be 'latent' or 'cluster', got {mode!r}")

    if mode == "latent":
        weights = analysis.latent_weights(sae, latent)
        eig = analysis.latent_spectrum(sae, latent)
        top = analysis.top_activations(sae, activations, latent, n=n, tokens=tokens, contexts=contexts)
    else:
        weights = analysis.cluster_weights(sae, latent, size=cluster_size)
        eig = analysis.composite_spectrum(sae, weights)
        top = analysis.top_activations(sae, activations, weights=weights, n=n, tokens=tokens, contexts=contexts)
    stats = analysis.composite_stats(sae, weights, activations, eigenvalues=eig.eigenvalues)
    usage = analysis.latent_usage(sae, activations, [latent])
    members = weights.nonzero(as_tuple=True)[0]
    members = members[weights[members].abs().argsort(descending=True)]

    values = eig.eigenvalues.detach().cpu().double()
    vectors = eig.eigenvectors.detach().cpu().double()
    scale = values.abs().max() if values.numel() else torch.tensor(0.0)
    kept = values.abs() > 1e-9 * scale if scale > 0 else torch.zeros_like(values, dtype=torch.bool)
    listed_values = values[kept][:64]

    order = top.values.argsort(descending=True)

    def listing(ids: Tensor) -> list[dict[str, Any]]:
        rows = []
        for i in ids.tolist():
            rows.append(
                {
                    "index": int(top.indices[i]),
                    "token": None if top.tokens is None else top.tokens[i],
                    "context": None if top.contexts is None else top.contexts[i],
                    "activation": float(top.values[i]),
                    "coordinates": [float(c) for c in top.coordinates[i]],
                }
            )
        return rows

    report: dict[str, Any] = {
        "latent": latent,
        "mode": mode,
        "variant": analysis.variant_name(sae),
        "lifted": lifted,
        "d_in": left.shape[1] - int(lifted),
        "d_sae": d_sae,
        "members": [{"latent": int(j), "weight": float(weights[j])} for j in members],
        "eigenvalues": [float(x) for x in listed_values],
        "eigenvectors": [
            {"eigenvalue": float(values[i]), **analysis.top_dims(vectors[:, i], lifted, top_dims)}
            for i in range(min(3, int(kept.sum())))
        ],
        "axes": top.axis_labels,
        "stats": asdict(stats),
        "usage": {name: float(value[0]) for name, value in usage.items()},
        "top_tokens": listing(order[:n_listed]),
        "bottom_tokens": listing(order.flip(0)[:n_listed]),
    }

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"latent_{latent}"
    title = f"latent {latent}" + (f" (cluster of {len(members)})" if mode == "cluster" else "")
    interactions = None
    if down is not None:
        ids = (
            members.tolist()
            if mode == "cluster"
            else analysis.cluster_weights(sae, latent, cluster_size).nonzero(as_tuple=True)[0].tolist()
        )
        interactions = (analysis.interaction_matrix(sae, ids).cpu(), [str(i) for i in ids])
    figures = [
        plots.manifold_figure(top, title=f"{title}: manifold"),
        plots.spectrum_figure(values[kept], title=f"{title}: spectrum"),
    ]
    if interactions is not None:
        figures.append(plots.interaction_figure(interactions[0], interactions[1], title=f"{title}: normalised DᵀD"))
    summary = (
        f"{report['variant']} bilinear SAE, d_in={report['d_in']}, d_sae={d_sae}, lifted={lifted}. "
        f"Effective rank {stats.effective_rank:.2f}, importance {stats.importance:.3g}, "
        f"top-3 share {stats.captured:.2f}, "
        f"Hoyer density {stats.density if stats.density is not None else float('nan'):.3f}, "
        f"active on {100 * report['usage']['frequency']:.2f}% of tokens."
    )
    files = {"html": str(plots.write_html(figures, stem.with_suffix(".html"), title=title, description=summary))}
    if png:
        static = plots.latent_png_figure(top, values[kept], interactions=interactions, title=title)
        files["png"] = str(plots.write_png(static, stem.with_suffix(".png")))
    files["json"] = str(stem.with_suffix(".json"))
    report["files"] = files
    report.update(files)  # also top-level: report["html"], report["png"], report["json"]
    stem.with_suffix(".json").write_text(json.dumps(plots.strict_json(report), indent=1, allow_nan=False))
    return report


__all__ = ["analyze_latent"]
