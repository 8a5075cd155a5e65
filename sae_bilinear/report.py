"""``report.html`` of the main job: training curves, density vs error, CE bars, metrics, latents.

Self-contained (plotly.js inline, works offline), plus ``report.png`` with the same three
plots for places where a static picture is handier.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sae_bilinear import plots
from sae_bilinear.errors import DataFileError
from sae_bilinear.evaluate import METRIC_KEYS

CE_KEYS = ("ce_clean", "ce_spliced", "ce_mean_ablated", "ce_zero_ablated")
TABLE_KEYS = tuple(key for key in METRIC_KEYS if key != "n_tokens")
"""The splice metrics in the report's table, in :data:`~sae_bilinear.evaluate.METRIC_KEYS` order."""


def curves_figure(history: Sequence[dict[str, float]]) -> go.Figure:
    """Training curves: x⊗x reconstruction error, x̂ explained variance, Hoyer density, α."""
    steps = [row["step"] for row in history]
    panels = [
        ("reconstruction_error", "reconstruction error of x⊗x"),
        ("explained_variance", "explained variance of x̂"),
        ("hoyer_density", "Hoyer density"),
        ("alpha", "α (warm-up)"),
    ]
    fig = make_subplots(rows=1, cols=4, subplot_titles=[title for _, title in panels])
    for col, (key, _) in enumerate(panels, start=1):
        values = [row.get(key) for row in history]
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=key, showlegend=False), row=1, col=col)
        fig.update_xaxes(title_text="step", row=1, col=col)
    fig.update_layout(
        height=340, margin=dict(t=80, b=40, l=40, r=20), title=dict(text="Training (SAELens trainer)", y=0.97)
    )
    return fig


def density_error_figure(history: Sequence[dict[str, float]], final: dict[str, Any]) -> go.Figure:
    """Hoyer density against reconstruction error along training (the paper's trade-off axes)."""
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=[row["hoyer_density"] for row in history],
            y=[row["reconstruction_error"] for row in history],
            mode="lines+markers",
            marker=dict(
                color=[row["step"] for row in history],
                colorscale="Viridis",
                showscale=True,
                colorbar=dict(title="step"),
            ),
            name="training",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[final["hoyer_density"]],
            y=[final["reconstruction_error"]],
            mode="markers",
            marker=dict(symbol="star", size=16, color="crimson"),
            name="held-out (final)",
        )
    )
    fig.update_layout(
        height=400,
        title=dict(text="Density vs reconstruction error", y=0.97),
        xaxis_title="Hoyer density (mean over latents)",
        yaxis_title="||X − X̂||² / ||X||²",
        margin=dict(t=80, b=40, l=60, r=20),
        legend=dict(orientation="h", x=0.0, y=1.02, yanchor="bottom", xanchor="left"),
    )
    return fig


def ce_figure(metrics: dict[str, Any]) -> go.Figure:
    """CE loss clean / spliced / mean- and zero-ablated, bilinear next to the baseline."""
    labels = ["clean", "spliced", "mean-ablated", "zero-ablated"]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=labels, y=[metrics[k] for k in CE_KEYS], name="bilinear"))
    baseline = metrics.get("baseline")
    if baseline:
        fig.add_trace(go.Bar(x=labels, y=[baseline[k] for k in CE_KEYS], name=f"{baseline['kind']} baseline"))
    fig.update_layout(
        barmode="group",
        height=360,
        title="Next-token CE loss on held-out text (nats)",
        yaxis_title="CE loss",
        margin=dict(t=50, b=40, l=60, r=20),
    )
    return fig


def _format(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def metrics_table(metrics: dict[str, Any]) -> str:
    baseline = metrics.get("baseline")
    head = (
        "<tr><th>metric</th><th>bilinear</th>"
        + (f"<th>{html.escape(baseline['kind'])} baseline</th>" if baseline else "")
        + "</tr>"
    )
    rows = [
        f"<tr><td>{key}</td><td>{_format(metrics.get(key))}</td>"
        + (f"<td>{_format(baseline.get(key))}</td>" if baseline else "")
        + "</tr>"
        for key in TABLE_KEYS
    ]
    style = "border-collapse:collapse"
    return f'<table style="{style}" border="1" cellpadding="4">{head}{"".join(rows)}</table>'


def atlas_link(out: Path, atlas_dir: str | Path) -> str:
    """The report's paragraph linking to the atlas in ``atlas_dir`` (path relative to ``out``).

    Raises DataFileError when ``atlas_dir`` holds no atlas (no ``index.html``/``atlas.json``):
    a dead link would be silently wrong.
    """
    folder = Path(atlas_dir)
    summary_file = folder / "atlas.json"
    if not (folder / "index.html").is_file() or not summary_file.is_file():
        raise DataFileError(
            f"{folder} is not an atlas (no index.html or atlas.json): "
            "build it first with sae_bilinear.atlas.build_atlas"
        )
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        counts = f"{int(summary['n_latents'])} latents" + (
            f" and {int(summary['n_composites'])} composites" if summary.get("n_composites") else ""
        )
    except (ValueError, KeyError, TypeError) as error:
        raise DataFileError(f"{summary_file} is damaged ({error}): rebuild the atlas") from error
    target = Path(os.path.relpath(folder.resolve() / "index.html", out.resolve()))
    return (
        f'<p><b>Browse every latent:</b> <a href="{html.escape(target.as_posix())}">the latent atlas</a> '
        f"({counts}: statistics, 3D manifolds, top and bottom contexts, promoted tokens, neighbours).</p>"
    )


def write_report(
    out: str | Path,
    metrics: dict[str, Any],
    history: Sequence[dict[str, float]],
    latent_pages: Sequence[dict[str, Any]],
    atlas_dir: str | Path | None = None,
) -> Path:
    """Write ``report.html`` and ``report.png`` into ``out``; returns the HTML path.

    ``atlas_dir``: the folder of this SAE's atlas (:func:`sae_bilinear.atlas.build_atlas`);
    the report then links to it by a relative path.
    """
    out = Path(out)
    atlas = atlas_link(out, atlas_dir) if atlas_dir is not None else ""
    figures = [curves_figure(history), density_error_figure(history, metrics), ce_figure(metrics)]
    divs = [plots.figure_div(fig, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    links = "".join(
        f'<li>latent {page["latent"]}: '
        f'<a href="{html.escape(str(Path(page["html"]).relative_to(out)))}">3D manifold</a>'
        f' · <a href="{html.escape(str(Path(page["png"]).relative_to(out)))}">PNG</a>'
        f' · <a href="{html.escape(str(Path(page["json"]).relative_to(out)))}">JSON</a></li>'
        for page in latent_pages
        if page.get("html")
    )
    summary = (
        f"<p>{html.escape(str(metrics['model']))} at <code>{html.escape(str(metrics['hook']))}</code>, "
        f"{metrics['tokens']} training tokens, {metrics['eval_tokens']} held-out tokens, "
        f"{metrics['seconds']:.0f} s.</p>"
        + atlas
        + metrics_table(metrics)
        + (f"<h2>Most active latents</h2><ul>{links}</ul>" if links else "")
    )
    page = plots.html_page([summary, *divs], title="sae-bilinear report")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    _write_png(out / "report.png", metrics, history)
    return path


def _write_png(path: Path, metrics: dict[str, Any], history: Sequence[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    axes[0].plot(steps, [row["reconstruction_error"] for row in history], label="x⊗x error")
    if history and "explained_variance" in history[0]:
        axes[0].plot(steps, [row["explained_variance"] for row in history], label="x̂ explained variance")
    axes[0].set_xlabel("step")
    axes[0].legend()
    axes[0].set_title("training")
    axes[1].plot([row["hoyer_density"] for row in history], [row["reconstruction_error"] for row in history], ".-")
    axes[1].plot([metrics["hoyer_density"]], [metrics["reconstruction_error"]], "r*", markersize=14, label="held-out")
    axes[1].set_xlabel("Hoyer density")
    axes[1].set_ylabel("reconstruction error")
    axes[1].legend()
    axes[1].set_title("density vs error")
    labels = ["clean", "spliced", "mean-abl.", "zero-abl."]
    x = range(len(labels))
    axes[2].bar([i - 0.2 for i in x], [metrics[k] for k in CE_KEYS], width=0.4, label="bilinear")
    if metrics.get("baseline"):
        axes[2].bar(
            [i + 0.2 for i in x],
            [metrics["baseline"][k] for k in CE_KEYS],
            width=0.4,
            label=metrics["baseline"]["kind"],
        )
    axes[2].set_xticks(list(x), labels)
    axes[2].set_ylabel("CE loss (nats)")
    axes[2].legend()
    axes[2].set_title("splice")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
