"""The figures of :mod:`sae_bilinear.hook_experiments`, drawn from their JSON-ready results.

Each takes the dict a command writes as ``<name>.json`` and returns a matplotlib ``Figure``
(written as ``<name>.png``).
"""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), layout="tight")  # no pyplot: no global state, no display


def ablate_figure(result: dict[str, Any]) -> Figure:
    """ΔCE per ablated latent."""
    rows = result["latents"]
    fig = _figure(max(4.0, 0.45 * len(rows) + 1.5), 3.5)
    ax = fig.subplots()
    ax.bar([str(r["latent"]) for r in rows], [r["delta_ce"] for r in rows], color="tab:red")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("latent")
    ax.set_ylabel(f"ΔCE ({result['mode']}-ablated − clean), nats")
    ax.set_title(f"{result['model']} · {result['hook']}: per-latent ablation")
    return fig


def steer_figure(result: dict[str, Any]) -> Figure:
    """Next-token log-probabilities and the re-encoded latent against the steering strength."""
    rows = result["generations"]
    fig = _figure(10, 3.8)
    ax_tokens, ax_latent = fig.subplots(1, 2)
    strengths = [row["strength"] for row in rows]
    for name in rows[0]["tracked_log_probs"]:
        ax_tokens.plot(strengths, [row["tracked_log_probs"][name] for row in rows], marker="o", label=repr(name))
    ax_tokens.set_xlabel("steering strength")
    ax_tokens.set_ylabel("next-token log-probability")
    ax_tokens.legend(fontsize=7, ncol=2)
    ax_latent.plot(strengths, [row["latent_after_steering"] for row in rows], marker="o", color="tab:purple")
    ax_latent.set_xlabel("steering strength")
    ax_latent.set_ylabel(f"latent {result['latent']}, re-encoded (last token)")
    fig.suptitle(f"{result['model']} · {result['hook']}: steering along latent {result['latent']}")
    return fig


def walk_figure(result: dict[str, Any]) -> Figure:
    """The latent, the KL from the clean distribution and tracked log-probabilities along the walk."""
    fig = _figure(14, 3.8)
    axes = fig.subplots(1, 3)
    directions = result["directions"]
    for direction in directions:
        label = f"v{direction['eigen']} (λ={direction['eigenvalue']:.3g})"
        t = [step["t"] for step in direction["steps"]]
        axes[0].plot(t, [step["latent"] for step in direction["steps"]], marker=".", label=label)
        axes[1].plot(t, [step["kl_from_clean"] for step in direction["steps"]], marker=".", label=label)
    t = [step["t"] for step in directions[0]["steps"]]
    for name, values in directions[0]["tracked_log_probs"].items():
        axes[2].plot(t, values, label=repr(name))
    axes[0].set_ylabel(f"latent {result['latent']}")
    axes[1].set_ylabel("KL(clean ‖ moved), next token")
    axes[2].set_ylabel(f"next-token log-prob along v{directions[0]['eigen']}")
    for ax in axes:
        ax.set_xlabel("t (units of ||x||)")
        ax.legend(fontsize=7)
    fig.suptitle(
        f"{result['model']} · {result['hook']}: walking latent {result['latent']} at position {result['position']}"
    )
    return fig
