"""Experiment 4: stability — weight-based similarity between seeds and across α.

``sae_bilinear.similarity.compare`` scores two bilinear SAEs from their weights alone (exact,
data-free, permutation-invariant): ``sim = 2·||K_ab|| / (||K_aa|| + ||K_bb||)`` on the
reconstruction operators (``DᵀD`` included for mixed models), plus a matched per-latent
cosine (optimal assignment). The paper reports > 98 % between runs of comparable sparsity.

Uses the sparsity sweep's cached activations and seed-0 SAEs (trains any that are missing,
with the sweep's settings), trains the same settings with other seeds, and reports

* seed pairs at equal α (``--seed-alphas`` per ``--variants``),
* every pair of α values of the seed-0 sweep, per variant,
* two reference points: two untrained (random orthogonal) inits of different seeds, and a
  trained SAE against its own init (how far training moved it).

Writes ``results.json``, ``table.md`` and ``similarity.png`` into ``--out``.

    python experiments/stability.py          # default: vanilla and mixed, seeds 0 and 1
    python experiments/stability.py --tiny   # a random tiny Qwen3, seconds (tests)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from sae_bilinear import experiment_utils as common
from sae_bilinear import kernels
from sae_bilinear.bilinear import BilinearTrainingSAE, BilinearTrainingSAEConfig
from sae_bilinear.similarity import compare

HERE = Path(__file__).resolve().parent
NAME = "stability"
KEYS = ("operator_similarity", "operator_similarity_unsymmetrised", "matched_similarity", "matched_above_0.9")


def _init(run: common.RunSpec, d_in: int) -> Any:
    """The untrained SAE of ``run`` (same seed, same init as training starts from)."""
    torch.manual_seed(run.seed)
    return BilinearTrainingSAE(
        BilinearTrainingSAEConfig(
            d_in=d_in, d_sae=run.d_sae, variant=kernels.check_variant(run.variant), lifted=run.lifted, alpha=run.alpha
        )
    )


def _scores(a: Any, b: Any) -> dict[str, float]:
    result = compare(a, b)
    return {k: result[k] for k in KEYS}


def plot(
    variants: list[str], alphas: list[float], across: dict, seed_rows: list[dict], refs: list[dict], path: Path
) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2 * len(variants) + 4.5, 4), layout="constrained")
    axes = fig.subplots(1, len(variants) + 1, squeeze=False)[0]
    for ax, variant in zip(axes, variants, strict=False):
        n = len(alphas)
        matrix = torch.full((n, n), float("nan"))
        for (i, j), value in across[variant].items():
            matrix[i, j] = matrix[j, i] = value
        for i in range(n):
            matrix[i, i] = 1.0
        image = ax.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="viridis")
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w" if matrix[i, j] < 0.6 else "k",
                )
        labels = [f"{a:g}" for a in alphas]
        ax.set_xticks(range(n), labels)
        ax.set_yticks(range(n), labels)
        ax.set_xlabel("α")
        ax.set_ylabel("α")
        ax.set_title(f"{variant}: similarity across α (seed 0)", fontsize=9)
    fig.colorbar(image, ax=axes[: len(variants)].tolist(), shrink=0.8)
    ax = axes[-1]
    bars = [
        (f"{r['variant']} α={r['alpha']:g}\nseeds {r['seed_a']}/{r['seed_b']}", r["operator_similarity"], "C0")
        for r in seed_rows
    ]
    bars += [(r["label"], r["operator_similarity"], "0.6") for r in refs]
    ax.barh(range(len(bars)), [b[1] for b in bars], color=[b[2] for b in bars])
    ax.set_yticks(range(len(bars)), [b[0] for b in bars], fontsize=7)
    ax.axvline(0.98, color="r", lw=0.8, ls="--", label="paper: > 0.98")
    ax.set_xlim(0, 1)
    ax.set_xlabel("operator similarity")
    ax.set_title("seed pairs at equal α (blue), references (grey)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    common.save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None, model: Any = None) -> dict:
    p = common.parser(__doc__, NAME, HERE)
    p.add_argument("--variants", nargs="+", default=["vanilla", "mixed"], choices=kernels.VARIANTS)
    p.add_argument(
        "--alphas",
        type=common.nonnegative_argument,
        nargs="+",
        default=[0.0, 0.1, 0.3, 0.6, 1.0],
        help="α grid of the across-α comparison (each ≥ 0)",
    )
    p.add_argument(
        "--seed-alphas",
        type=common.nonnegative_argument,
        nargs="+",
        default=[0.1, 0.6],
        help="α values trained with a second seed (each ≥ 0)",
    )
    p.add_argument(
        "--other-seeds",
        type=common.seed_argument,
        nargs="+",
        default=[1],
        help="the second seeds of the seed pairs (each other than --seed)",
    )
    common.add_training_arguments(p)
    args = p.parse_args(argv)
    if args.seed in args.other_seeds:  # a pair of one seed compares an SAE with itself (similarity 1)
        p.error(f"argument --other-seeds: {args.seed} is --seed; name seeds other than --seed")
    common.setup(args.seed)
    spec = common.ActivationSpec()
    if args.tiny:
        spec = common.TINY_SPEC
        args.d_sae, args.steps, args.batch_size = 64, 20, 128
        args.alphas, args.seed_alphas, args.variants = [0.0, 0.5], [0.5], ["vanilla"]
    started = time.time()
    acts = common.model_activations(spec, args.cache, model=model)
    folder = args.cache / "sweep" / Path(acts["cache_file"]).stem
    d_in = acts["train"].shape[-1]

    def get(variant: str, alpha: float, seed: int) -> Any:
        run = common.run_spec(args, variant, alpha, False, seed)
        sae, seconds, cached = common.cached_bilinear(acts["train"], run, folder)
        how = "cached" if cached else f"trained in {seconds:.0f}s"
        print(f"{run.name}: {how}", flush=True)
        return sae, run

    seed_rows, across, across_rows, refs = [], {}, [], []
    for variant in args.variants:
        saes = {alpha: get(variant, alpha, args.seed) for alpha in sorted(set(args.alphas) | set(args.seed_alphas))}
        for alpha in args.seed_alphas:
            for other in args.other_seeds:
                b, _ = get(variant, alpha, other)
                row = {
                    "variant": variant,
                    "alpha": alpha,
                    "seed_a": args.seed,
                    "seed_b": other,
                    **_scores(saes[alpha][0], b),
                }
                for side, sae in (("a", saes[alpha][0]), ("b", b)):  # held-out error and density of both
                    metrics = common.heldout_metrics(sae, acts["heldout"])
                    row[f"error_{side}"], row[f"density_{side}"] = (
                        metrics["reconstruction_error"],
                        metrics["hoyer_density"],
                    )
                seed_rows.append(row)
                print(f"{variant} α={alpha:g} seeds {args.seed}/{other}: {row['operator_similarity']:.4f}", flush=True)
        across[variant] = {}
        for i, a in enumerate(args.alphas):
            for j in range(i + 1, len(args.alphas)):
                b = args.alphas[j]
                scores = _scores(saes[a][0], saes[b][0])
                across[variant][(i, j)] = scores["operator_similarity"]
                across_rows.append({"variant": variant, "alpha_a": a, "alpha_b": b, **scores})
        # References: two random inits, and the trained SAE against its own init.
        alpha = args.seed_alphas[0]
        sae, run = saes[alpha]
        init_a = _init(run, d_in)
        init_b = _init(common.RunSpec(**{**run.__dict__, "seed": args.other_seeds[0]}), d_in)
        refs.append({"variant": variant, "label": f"{variant}: two random inits", **_scores(init_a, init_b)})
        refs.append(
            {"variant": variant, "label": f"{variant} α={alpha:g}: trained vs its init", **_scores(sae, init_a)}
        )

    out = args.out
    cols = ["variant", "alpha", "seed_a", "seed_b", *KEYS, "error_a", "error_b", "density_a", "density_b"]
    table = "## Seeds at equal α\n\n" + common.markdown_table(seed_rows, cols)
    table += (
        "\n\n## Across α (seed "
        + str(args.seed)
        + ")\n\n"
        + common.markdown_table(across_rows, ["variant", "alpha_a", "alpha_b", *KEYS])
    )
    table += "\n\n## References\n\n" + common.markdown_table(refs, ["label", *KEYS])
    result = {
        "command": "python experiments/stability.py" + (" --tiny" if args.tiny else ""),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "seed_pairs": seed_rows,
        "across_alpha": across_rows,
        "references": refs,
        "paper": {"operator_similarity_above": 0.98},
        "seconds": time.time() - started,
    }
    common.write_json(out / "results.json", result)
    (out / "table.md").write_text(table + "\n")
    plot(args.variants, args.alphas, across, seed_rows, refs, out / "similarity.png")
    print(table)
    print(f"wrote {out} in {result['seconds']:.0f}s")
    return result


if __name__ == "__main__":
    main()
