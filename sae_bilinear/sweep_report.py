"""A sweep's results: ``sweep.json``, ``sweep.md`` and the Pareto plot of density against error.

The paper reads each sweep as a Pareto front: Hoyer density (x) against x⊗x reconstruction
error (y), one curve per variant, α along each curve. ``pareto.png`` is for papers and
terminals, ``pareto.html`` (plotly, self-contained) for hovering over a member's numbers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

TABLE_JSON = "sweep.json"
TABLE_MD = "sweep.md"
PARETO_PNG = "pareto.png"
PARETO_HTML = "pareto.html"
COLUMNS = (
    "name",
    "status",
    "variant",
    "alpha",
    "lifted",
    "d_sae",
    "error",
    "hoyer_density",
    "l0",
    "explained_variance",
    "ce_spliced",
    "ce_loss_recovered",
    "kl",
    "dead_fraction",
    "steps",
    "seconds",
)
"""Columns of ``sweep.md``; ``ce_spliced``, ``ce_loss_recovered`` and ``kl`` come from the splice
evaluation in the driver (:mod:`sae_bilinear.sweep_splice`), "–" where a member was not spliced."""


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The members as a Markdown table (failed members show their error)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in COLUMNS) + " |")
    failed = [row for row in rows if row.get("status") != "done"]
    if failed:
        lines += ["", "Failed members:", ""]
        lines += [f"- `{row['name']}`: {row.get('error', 'unknown error')}" for row in failed]
    unspliced = [row for row in rows if row.get("status") == "done" and row.get("ce_spliced") is None]
    if unspliced:
        lines += ["", "Not spliced (ce_spliced –):", ""]
        lines += [
            f"- `{row['name']}`: {row.get('splice_skipped') or row.get('splice_error') or 'not measured'}"
            for row in unspliced
        ]
    return "\n".join(lines) + "\n"


def _curves(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Finished bilinear members by variant (unlifted ones apart), sorted by α (one Pareto curve each)."""
    curves: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if (
            row.get("status") == "done"
            and isinstance(row.get("error"), float)
            and isinstance(row.get("hoyer_density"), float)
        ):
            curve = str(row.get("variant")) + (" (unlifted)" if row.get("lifted") is False else "")
            curves.setdefault(curve, []).append(row)
    return {k: sorted(v, key=lambda r: (r.get("alpha") is None, r.get("alpha") or 0.0)) for k, v in curves.items()}


def pareto_figure(rows: Sequence[Mapping[str, Any]]) -> go.Figure:
    """Interactive density-vs-error plot, a trace per variant, hover shows the member's row."""
    fig = go.Figure()
    for variant, members in _curves(rows).items():
        hover = ["<br>".join(f"{c}: {_cell(m.get(c))}" for c in COLUMNS if m.get(c) is not None) for m in members]
        fig.add_trace(
            go.Scatter(
                x=[m["hoyer_density"] for m in members],
                y=[m["error"] for m in members],
                mode="lines+markers",
                name=variant,
                text=hover,
                hoverinfo="text",
            )
        )
    fig.update_layout(
        title="Sweep: Hoyer density against x⊗x error (lower left is better)",
        xaxis_title="Hoyer density (held-out)",
        yaxis_title="x⊗x reconstruction error (held-out)",
        template="plotly_white",
        height=520,
    )
    return fig


def write_pareto_png(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """The same plot as a PNG (matplotlib, no browser needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for variant, members in _curves(rows).items():
        xs = [m["hoyer_density"] for m in members]
        ys = [m["error"] for m in members]
        ax.plot(xs, ys, marker="o", label=variant)
        for m, x, y in zip(members, xs, ys, strict=False):
            if m.get("alpha") is not None:
                ax.annotate(f"α{m['alpha']:g}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.set_xlabel("Hoyer density (held-out)")
    ax.set_ylabel("x⊗x reconstruction error (held-out)")
    ax.set_title("Sweep Pareto front")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(title="variant")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def write_results(out: Path, result: Mapping[str, Any]) -> None:
    """``sweep.json``, ``sweep.md``, ``pareto.png`` and ``pareto.html`` under ``out``."""
    rows = result["members"]
    _atomic_write(out / TABLE_JSON, json.dumps(dict(result), indent=1, allow_nan=False) + "\n")
    header = (
        f"# Sweep `{result['config']}`\n\n{len(rows)} members, {result['groups']} activation group(s), "
        f"{result['model_passes']} model pass(es) in this run, {result['seconds']:.0f} s ({result['runner']}).\n\n"
    )
    _atomic_write(out / TABLE_MD, header + markdown_table(rows))
    write_pareto_png(rows, out / PARETO_PNG)
    _atomic_write(out / PARETO_HTML, pareto_figure(rows).to_html(include_plotlyjs=True, full_html=True))
