"""Figures of bilinear latents: plotly (interactive, self-contained HTML) and matplotlib (PNG).

Small functions that each return a figure, plus writers:

- :func:`manifold_figure` — 3D scatter of a latent's top tokens on its top eigenvectors
  (hover: token in context, colour: activation);
- :func:`spectrum_figure` — signed eigenvalues by ``|λ|`` rank;
- :func:`interaction_figure` — heat map of the normalised ``DᵀD`` of a mixed cluster;
- :func:`write_html` — one offline page holding any number of plotly figures (plotly.js
  embedded once); :func:`figure_div` for pages assembled elsewhere (the report);
- :func:`latent_png_figure`, :func:`manifold_axes`, :func:`spectrum_axes`,
  :func:`interaction_axes` and :func:`write_png` — the static counterparts. They use
  :class:`matplotlib.figure.Figure` directly (no pyplot state, Agg canvas), so they work
  headless and from threads.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import plotly.graph_objects as go
from torch import Tensor

from sae_bilinear.analysis import TopActivations

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

POSITIVE = "#b2182b"
NEGATIVE = "#2166ac"
COLORSCALE = "RdBu_r"  # blue (negative) → white (0) → red (positive)


def _numpy(values: Tensor | np.ndarray | Sequence[float]) -> np.ndarray:
    if isinstance(values, Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _clean(text: str) -> str:
    return text.replace("\r", "").replace("\n", "⏎").replace("\t", "⇥")


def hover_text(
    token: str | None, context: str | None, value: float, index: int, width: int = 60, limit: int = 360
) -> str:
    """Hover label: the token (bold), its context wrapped to ``width`` columns, the activation.

    Text is HTML-escaped (tokens such as ``<s>`` show literally) and newlines are drawn
    as ``⏎``.
    """
    head = f"<b>{html.escape(_clean(token))}</b>" if token is not None else f"<b>token #{index}</b>"
    lines = [head]
    if context is not None:
        ctx = _clean(context)
        if len(ctx) > limit:
            ctx = "…" + ctx[-limit:]
        lines += [html.escape(line) for line in textwrap.wrap(ctx, width, drop_whitespace=False)] or [""]
    lines.append(f"f = {value:.4g}")
    return "<br>".join(lines)


def _symmetric_range(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    top = float(np.abs(finite).max()) if finite.size else 1.0
    return top if top > 0 else 1.0


def _aspect(xyz: np.ndarray) -> dict[str, float]:
    spread = np.ptp(xyz, axis=0) if xyz.size else np.ones(3)
    spread = np.where(np.isfinite(spread), spread, 0.0)
    top = float(spread.max()) if spread.max() > 0 else 1.0
    ratio = np.clip(spread / top, 0.05, 1.0)
    return dict(x=float(ratio[0]), y=float(ratio[1]), z=float(ratio[2]))


def manifold_figure(
    top: TopActivations, *, title: str | None = None, marker_size: float = 3.0, height: int = 700
) -> go.Figure:
    """Interactive 3D scatter of ``top.coordinates``; colour = activation (0 is white)."""
    xyz = _numpy(top.coordinates)
    values = _numpy(top.values)
    texts = [
        hover_text(
            None if top.tokens is None else top.tokens[i],
            None if top.contexts is None else top.contexts[i],
            float(values[i]),
            int(top.indices[i]),
        )
        for i in range(len(values))
    ]
    bound = _symmetric_range(values)
    scatter = go.Scatter3d(
        x=xyz[:, 0],
        y=xyz[:, 1],
        z=xyz[:, 2],
        mode="markers",
        marker=dict(
            size=marker_size,
            color=values,
            colorscale=COLORSCALE,
            cmin=-bound,
            cmax=bound,
            cmid=0.0,
            colorbar=dict(title="activation", thickness=14),
            line=dict(width=0),
            opacity=0.9,
        ),
        text=texts,
        hovertemplate="%{text}<extra></extra>",
    )
    labels = list(top.axis_labels) + [""] * (3 - len(top.axis_labels))
    fig = go.Figure(scatter)
    fig.update_layout(
        title=title,
        height=height,
        margin=dict(l=0, r=0, t=40 if title else 0, b=0),
        scene=dict(
            xaxis_title=labels[0],
            yaxis_title=labels[1],
            zaxis_title=labels[2],
            # Equal units on all axes (a circle looks round), scaled to fit the view.
            aspectmode="manual",
            aspectratio=_aspect(xyz),
            camera=dict(eye=dict(x=1.5, y=1.5, z=1.0)),
        ),
        template="plotly_white",
        hoverlabel=dict(font=dict(family="monospace", size=12), align="left"),
    )
    return fig


def spectrum_figure(
    eigenvalues: Tensor | np.ndarray, *, title: str | None = None, limit: int = 64, height: int = 320
) -> go.Figure:
    """Bar chart of the ``limit`` largest-``|λ|`` eigenvalues, signed (red > 0, blue < 0)."""
    values = _numpy(eigenvalues)
    values = values[np.argsort(-np.abs(values), kind="stable")][:limit]
    colors = [POSITIVE if v >= 0 else NEGATIVE for v in values]
    fig = go.Figure(
        go.Bar(
            x=np.arange(len(values)),
            y=values,
            marker_color=colors,
            hovertemplate="#%{x}: λ = %{y:.4g}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        height=height,
        margin=dict(l=50, r=10, t=40 if title else 10, b=40),
        xaxis=dict(title="eigenvalue rank (by |λ|)", tickformat="d", dtick=1 if len(values) <= 16 else None),
        yaxis_title="λ",
        template="plotly_white",
        bargap=0.15,
    )
    return fig


def interaction_figure(
    matrix: Tensor | np.ndarray, labels: Sequence[str] | None = None, *, title: str | None = None, height: int = 450
) -> go.Figure:
    """Heat map of a latent-interaction matrix (normalised ``DᵀD``), −1 blue .. +1 red."""
    z = _numpy(matrix)
    labels = [str(i) for i in range(z.shape[0])] if labels is None else [str(x) for x in labels]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=labels,
            zmin=-1,
            zmax=1,
            zmid=0,
            colorscale=COLORSCALE,
            hovertemplate="latents %{y} × %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title,
        height=height,
        width=height + 220,
        margin=dict(l=60, r=160, t=50 if title else 10, b=60),
        xaxis=dict(type="category", title="latent"),
        yaxis=dict(type="category", autorange="reversed", title="latent"),
        template="plotly_white",
    )
    return fig


def figure_div(fig: go.Figure, *, include_plotlyjs: bool = False, div_id: str | None = None) -> str:
    """One figure as an HTML ``<div>`` (with plotly.js inline when ``include_plotlyjs``)."""
    return fig.to_html(
        include_plotlyjs=include_plotlyjs,
        full_html=False,
        div_id=div_id,
        default_width="100%",
        default_height=f"{fig.layout.height or 500}px",
        config={"displaylogo": False, "responsive": True},
    )


def strict_json(value: Any) -> Any:
    """``value`` with NaN/inf floats turned into None (recursively), so ``json.dumps(allow_nan=False)`` holds."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
 body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif;
        margin: 1.5em auto; max-width: 1100px; color: #222; }}
 h1 {{ font-size: 1.4em; margin-bottom: 0.2em; }}
 p.description {{ color: #555; margin-top: 0; }}
 .figure {{ margin: 1em 0 2em 0; }}
</style>
</head>
<body>
<h1>{title}</h1>
{description}
{body}
</body>
</html>
"""


def html_page(divs: Sequence[str], *, title: str = "sae-bilinear", description: str | None = None) -> str:
    """A full HTML page around figure divs (see :func:`figure_div`)."""
    body = "\n".join(f'<div class="figure">{div}</div>' for div in divs)
    desc = f'<p class="description">{html.escape(description)}</p>' if description else ""
    return PAGE.format(title=html.escape(title), description=desc, body=body)


def write_html(
    figures: go.Figure | Sequence[go.Figure],
    path: str | Path,
    *,
    title: str = "sae-bilinear",
    description: str | None = None,
) -> Path:
    """Write plotly figures to one self-contained HTML page (plotly.js embedded once; works offline)."""
    if isinstance(figures, go.Figure):
        figures = [figures]
    divs = [figure_div(fig, include_plotlyjs=(i == 0)) for i, fig in enumerate(figures)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_page(divs, title=title, description=description), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------
# matplotlib (static)
# ----------------------------------------------------------------------------------------


def _norm(values: np.ndarray) -> Any:
    from matplotlib.colors import TwoSlopeNorm

    bound = _symmetric_range(values)
    return TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)


def manifold_axes(ax: Axes, top: TopActivations, *, dims: int = 3, size: float = 6.0) -> Any:
    """Scatter the manifold on ``ax`` (a 3D axes when ``dims=3``; top-2 plane when 2)."""
    xyz = _numpy(top.coordinates)
    values = _numpy(top.values)
    order = np.argsort(np.abs(values))  # strongest drawn last, on top
    labels = list(top.axis_labels) + [""] * 3
    if dims == 3:
        artist = ax.scatter(
            xyz[order, 0],
            xyz[order, 1],
            xyz[order, 2],
            c=values[order],
            cmap="RdBu_r",
            norm=_norm(values),
            s=size,  # pyright: ignore[reportCallIssue]
            depthshade=False,
        )
        from matplotlib.ticker import MaxNLocator

        ax.set_zlabel(labels[2], fontsize=7, labelpad=2)  # pyright: ignore[reportAttributeAccessIssue]
        # Equal units on all axes (a circle looks round), but never flatter than 1:8, so a
        # thin axis keeps readable ticks.
        spread = np.ptp(xyz, axis=0) if xyz.size else np.ones(3)
        top = float(spread.max()) if np.isfinite(spread).all() and spread.max() > 0 else 1.0  # pyright: ignore[reportAssignmentType]
        ax.set_box_aspect(tuple(np.clip(spread / top, 0.125, 1.0)), zoom=0.85)  # pyright: ignore[reportCallIssue, reportOperatorIssue]
        for axis in (ax.xaxis, ax.yaxis, ax.zaxis):  # pyright: ignore[reportAttributeAccessIssue]
            axis.set_major_locator(MaxNLocator(4))
    else:
        artist = ax.scatter(xyz[order, 0], xyz[order, 1], c=values[order], cmap="RdBu_r", norm=_norm(values), s=size)
        ax.set_aspect("equal", adjustable="datalim")
        ax.axhline(0, color="#ccc", lw=0.5, zorder=0)
        ax.axvline(0, color="#ccc", lw=0.5, zorder=0)
    ax.set_xlabel(labels[0], fontsize=7)
    ax.set_ylabel(labels[1], fontsize=7)
    ax.tick_params(labelsize=6)
    return artist


def spectrum_axes(ax: Axes, eigenvalues: Tensor | np.ndarray, *, limit: int = 64) -> None:
    """Signed eigenvalues by ``|λ|`` rank as bars."""
    values = _numpy(eigenvalues)
    values = values[np.argsort(-np.abs(values), kind="stable")][:limit]
    from matplotlib.ticker import MaxNLocator

    ax.bar(np.arange(len(values)), values, color=[POSITIVE if v >= 0 else NEGATIVE for v in values])
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(0, color="#444", lw=0.6)
    ax.set_xlabel("eigenvalue rank (by |λ|)", fontsize=8)
    ax.set_ylabel("λ", fontsize=8)
    ax.tick_params(labelsize=7)


def interaction_axes(ax: Axes, matrix: Tensor | np.ndarray, labels: Sequence[str] | None = None) -> Any:
    """Heat map of an interaction matrix on ``ax`` (−1 blue .. +1 red)."""
    z = _numpy(matrix)
    image = ax.imshow(z, cmap="RdBu_r", vmin=-1, vmax=1)
    labels = [str(i) for i in range(z.shape[0])] if labels is None else [str(x) for x in labels]
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    return image


def latent_png_figure(
    top: TopActivations,
    eigenvalues: Tensor | np.ndarray,
    *,
    interactions: tuple[Tensor | np.ndarray, Sequence[str]] | None = None,
    title: str | None = None,
) -> Figure:
    """Static summary of a latent: 3D manifold, its top-2 plane, spectrum (and heat map)."""
    from matplotlib.figure import Figure

    panels = 4 if interactions is not None else 3
    fig = Figure(figsize=(4.4 * panels + 0.8, 4.4), dpi=110, layout="constrained")
    grid = fig.add_gridspec(1, panels, width_ratios=[1.35] + [1.0] * (panels - 1))
    ax3d = fig.add_subplot(grid[0, 0], projection="3d")
    artist = manifold_axes(ax3d, top, dims=3)
    ax3d.set_title("manifold (top-3 eigenvectors)", fontsize=9)
    ax2d = fig.add_subplot(grid[0, 1])
    manifold_axes(ax2d, top, dims=2)
    ax2d.set_title("top-2 eigenvector plane", fontsize=9)
    colorbar = fig.colorbar(artist, ax=ax2d, shrink=0.8)
    colorbar.set_label("activation", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    axs = fig.add_subplot(grid[0, 2])
    spectrum_axes(axs, eigenvalues)
    axs.set_title("spectrum", fontsize=9)
    if interactions is not None:
        axi = fig.add_subplot(grid[0, 3])
        image = interaction_axes(axi, interactions[0], interactions[1])
        axi.set_title("normalised DᵀD", fontsize=9)
        fig.colorbar(image, ax=axi, shrink=0.8).ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def write_png(fig: Figure, path: str | Path, *, dpi: int | None = None) -> Path:
    """Save a matplotlib figure as PNG (Agg canvas; no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi or fig.dpi, format="png")
    return path
