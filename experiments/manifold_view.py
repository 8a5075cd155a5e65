"""Experiment 3: the most important composite of a mixed bilinear SAE, and what it reads.

A mixed model decodes through ``g = DᵀD f``: bottleneck unit k reads ``h_k = Σ_j D_kj f_j =
ũᵀ C_k ũ`` with the composite form ``C_k = Σ_j D_kj Q_j`` (many eigenvalues) and writes
through the same operator, so ``<X, X̂> = Σ_k h_k²``. The most important composite is the row
with the largest mean ``h_k²`` over the tokens shown (its share of the reconstruction). For it:

* the spectrum of ``C_k`` and its statistics (support, effective rank, ``Σλ²``, top-3 share,
  Hoyer density of its activations; ``analysis.composite_stats``);
* the 3D projection of its top- and bottom-activating tokens on the top-3 ``|λ|`` eigenvectors
  (``analysis.top_activations``), with the tokens in context;
* simple probes of what the activation and each eigen-coordinate track (position in the
  context, digits, punctuation, capitals, a leading space, the token's frequency in the text);
* the authors' visualiser view (row of the normalised ``DᵀD`` of the row's strongest latent,
  10 partners) for comparison.

The SAE comes from the sparsity sweep's cache (``--cache/sweep``; default: unlifted mixed,
α = 0.1, the sweep's settings) and is trained there if missing. Tokens: held-out contexts of
the corpus (never trained on).

Writes ``results.json``, ``composite.png``, ``composite_tokens.png`` and ``cluster.png``.

    python experiments/manifold_view.py          # default (reuses the sweep's SAE)
    python experiments/manifold_view.py --tiny   # a random tiny Qwen3, seconds (tests)
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from sae_bilinear import analysis, plots
from sae_bilinear import experiment_utils as common
from sae_bilinear.values import int_at_least

HERE = Path(__file__).resolve().parent
NAME = "manifold_view"


def token_properties(tokens: list[str], positions: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-token indicator/ordinal properties used as simple probes."""
    counts = Counter(tokens)
    stripped = [t.strip() for t in tokens]
    return {
        "position": positions.double(),
        "digit": torch.tensor([float(s.isdigit()) for s in stripped]),
        "punctuation": torch.tensor([float(bool(s) and all(not c.isalnum() for c in s)) for s in stripped]),
        "capitalised": torch.tensor([float(bool(s) and s[0].isupper()) for s in stripped]),
        "leading_space": torch.tensor([float(t.startswith(" ")) for t in tokens]),
        "log_frequency": torch.tensor([float(counts[t]) for t in tokens]).log(),
    }


def correlations(values: torch.Tensor, properties: dict[str, torch.Tensor]) -> dict[str, float | None]:
    """Pearson correlation of ``values`` with each property (None for a constant property)."""
    out: dict[str, float | None] = {}
    v = values.double() - values.double().mean()
    for name, p in properties.items():
        q = p.double() - p.double().mean()
        denominator = float(v.norm() * q.norm())
        out[name] = float(v @ q) / denominator if denominator > 0 else None
    return out


def listing(top: analysis.TopActivations, order: torch.Tensor, n: int) -> list[dict[str, Any]]:
    rows = []
    for i in order[:n].tolist():
        rows.append(
            {
                "token": top.tokens[i] if top.tokens else None,
                "context": top.contexts[i] if top.contexts else None,
                "activation": float(top.values[i]),
                "coordinates": [round(float(c), 4) for c in top.coordinates[i]],
            }
        )
    return rows


def plot_tokens(top: analysis.TopActivations, path: Path, title: str, n_labels: int = 24) -> None:
    """Top-2 eigenvector plane with the strongest tokens written next to their points."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    for a, (i, j) in zip((ax, ax2), ((0, 1), (0, 2)), strict=False):
        xyz = top.coordinates.numpy()
        values = top.values.numpy()
        a.scatter(xyz[:, i], xyz[:, j], c=values, cmap="RdBu_r", norm=plots._norm(values), s=6)
        seen: Counter = Counter()
        for k in torch.argsort(top.values.abs(), descending=True).tolist():
            text = repr(top.tokens[k])[1:-1] if top.tokens else str(k)
            if seen[text] >= 2:  # label each token string at most twice
                continue
            seen[text] += 1
            a.annotate(
                text,
                (xyz[k, i], xyz[k, j]),
                fontsize=6,
                xytext=(4, 2),
                textcoords="offset points",
                bbox={"boxstyle": "round,pad=0.1", "fc": "white", "alpha": 0.7, "lw": 0},
            )
            if sum(seen.values()) >= n_labels:
                break
        labels = list(top.axis_labels)
        a.set_xlabel(labels[i], fontsize=7)
        a.set_ylabel(labels[j], fontsize=7)
    fig.suptitle(title, fontsize=9)
    common.save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None, model: Any = None) -> dict:
    p = common.parser(__doc__, NAME, HERE)
    p.add_argument("--variant", default="mixed", choices=["mixed", "combined"])
    p.add_argument("--alpha", type=common.nonnegative_argument, default=0.1, help="α of the sweep's SAE (≥ 0)")
    p.add_argument(
        "--lifted", action="store_true", help="use the lifted SAE of the sweep (default: unlifted, as the paper)"
    )
    p.add_argument(
        "--view-contexts", type=common.count_argument, default=64, help="held-out contexts whose tokens are shown (≥ 1)"
    )
    p.add_argument("--n", type=int_at_least(2), default=400, help="tokens in the 3D view (half top, half bottom; ≥ 2)")
    common.add_training_arguments(p)
    args = p.parse_args(argv)
    common.setup(args.seed)
    train_spec = common.ActivationSpec()
    if args.tiny:
        train_spec = common.TINY_SPEC
        args.d_sae, args.steps, args.batch_size, args.view_contexts, args.n = 64, 20, 128, 4, 60
    view_spec = common.ActivationSpec(
        hook=train_spec.hook,
        train_contexts=1,
        eval_contexts=args.view_contexts,
        context_size=train_spec.context_size,
        corpus=train_spec.corpus,
        model=train_spec.model,
    )
    started = time.time()
    if model is None:
        needs = [s for s in (train_spec, view_spec) if not (args.cache / s.filename).is_file()]
        model = common.load_model(train_spec.model) if needs else None
    train_acts = common.model_activations(train_spec, args.cache, model=model)
    view = common.model_activations(view_spec, args.cache, model=model)
    folder = args.cache / "sweep" / Path(train_acts["cache_file"]).stem
    run = common.run_spec(args, args.variant, args.alpha, args.lifted, args.seed)
    sae, seconds, cached = common.cached_bilinear(train_acts["train"], run, folder)
    acts, tokens, contexts = view["heldout"], view["tokens"], view["contexts"]
    positions = torch.arange(view_spec.context_size - view["skip"]).repeat(view["eval_tokens"].shape[0]) + view["skip"]

    # The most important bottleneck row: largest mean h_k² (its share of <X, X̂>).
    f = analysis.latent_activations(sae, acts)
    down = analysis.factors(sae).down
    assert down is not None, "the manifold view needs a mixed or combined SAE (a bottleneck)"
    h = f @ down.T.to(f)
    share = h.pow(2).mean(0)
    row = int(share.argmax())
    weights = analysis.bottleneck_weights(sae, row)
    eig = analysis.composite_spectrum(sae, weights)
    stats = analysis.composite_stats(sae, weights, acts, eigenvalues=eig.eigenvalues)
    top = analysis.top_activations(sae, acts, weights=weights, n=args.n, tokens=tokens, contexts=contexts)
    order = torch.argsort(top.values, descending=True)
    composite = h[:, row]
    props = token_properties(tokens, positions)
    u = analysis._unit(sae, acts).unit.double()
    u = analysis.lift(u) if analysis.is_lifted(sae) else u
    coordinates = u @ eig.eigenvectors[:, :3].double()
    # Is an eigenvector the direction every token shares? cos(v_k, mean of u) and the mean |u·v_k|.
    mean_u = u.mean(0)
    shared = [
        {
            "cos_with_mean_token": float(mean_u @ eig.eigenvectors[:, k].double() / mean_u.norm()),
            "mean_abs_projection": float(coordinates[:, k].abs().mean()),
        }
        for k in range(3)
    ]
    probes = {"activation": correlations(composite, props)}
    for k in range(3):
        probes[f"v{k}"] = correlations(coordinates[:, k], props)
        probes[f"v{k}_squared"] = correlations(coordinates[:, k].pow(2), props)

    values = eig.eigenvalues.double()
    kept = values[values.abs() > 1e-9 * values.abs().max()]
    out = args.out
    title = f"{run.variant} α={run.alpha:g} ({'lifted' if run.lifted else 'unlifted'}), bottleneck row {row}"
    fig = plots.latent_png_figure(top, kept, title=f"{title}: Σ_j D_kj Q_j on {acts.shape[0]} held-out tokens")
    common.save_figure(fig, out / "composite.png", dpi=100)
    plot_tokens(top, out / "composite_tokens.png", f"{title}: strongest tokens on the eigen-planes")

    # The authors' visualiser: the strongest latent of that row and its 10 partners in normalised DᵀD.
    strongest = int(weights.abs().argmax())
    cluster = analysis.cluster_weights(sae, strongest, size=10)
    cluster_eig = analysis.composite_spectrum(sae, cluster)
    cluster_top = analysis.top_activations(sae, acts, weights=cluster, n=args.n, tokens=tokens, contexts=contexts)
    members = cluster.nonzero(as_tuple=True)[0].tolist()
    cluster_values = cluster_eig.eigenvalues.double()
    cluster_fig = plots.latent_png_figure(
        cluster_top,
        cluster_values[cluster_values.abs() > 1e-9 * cluster_values.abs().max()],
        interactions=(analysis.interaction_matrix(sae, members), [str(m) for m in members]),
        title=f"authors' view: latent {strongest} and its 10 partners in normalised DᵀD",
    )
    common.save_figure(cluster_fig, out / "cluster.png", dpi=100)
    cluster_order = torch.argsort(cluster_top.values, descending=True)

    top_counts = Counter(top.tokens[i] for i in order[: args.n // 2].tolist()) if top.tokens else Counter()
    bottom_counts = Counter(top.tokens[i] for i in order.flip(0)[: args.n // 2].tolist()) if top.tokens else Counter()
    result = {
        "command": "python experiments/manifold_view.py" + (" --tiny" if args.tiny else ""),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "sae": {"run": run.__dict__, "train_seconds": seconds, "cached": cached},
        "tokens": int(acts.shape[0]),
        "row": row,
        "row_share_of_cross_term": float(share[row] / share.sum()),
        "row_shares_top10": sorted((float(s) for s in share / share.sum()), reverse=True)[:10],
        "stats": stats.__dict__,
        "eigenvalues_top16": [float(v) for v in kept[:16]],
        "eigenvectors_top_dims": [
            analysis.top_dims(eig.eigenvectors[:, i].double(), analysis.is_lifted(sae), 8) for i in range(3)
        ],
        "axes": top.axis_labels,
        "probes": probes,
        "eigenvectors_vs_mean_token": shared,
        "top_tokens": listing(top, order, 25),
        "bottom_tokens": listing(top, order.flip(0), 25),
        "top_token_counts": top_counts.most_common(15),
        "bottom_token_counts": bottom_counts.most_common(15),
        "cluster": {
            "latent": strongest,
            "members": members,
            "stats": analysis.composite_stats(sae, cluster, acts, eigenvalues=cluster_eig.eigenvalues).__dict__,
            "top_tokens": listing(cluster_top, cluster_order, 15),
            "bottom_tokens": listing(cluster_top, cluster_order.flip(0), 15),
        },
        "seconds": time.time() - started,
    }
    common.write_json(out / "results.json", result)
    print(f"row {row}: share {result['row_share_of_cross_term']:.3f}, stats {stats}")
    print("top:", [r["token"] for r in result["top_tokens"][:20]])
    print("bottom:", [r["token"] for r in result["bottom_tokens"][:20]])
    print(
        "probes:", {k: {n: (round(v, 2) if v is not None else None) for n, v in d.items()} for k, d in probes.items()}
    )
    print(f"wrote {out} in {result['seconds']:.0f}s")
    return result


if __name__ == "__main__":
    main()
