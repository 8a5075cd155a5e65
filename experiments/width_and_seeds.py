"""Issue 16 §2 on one machine: error against width (expansion) at equal tokens, and seed-to-seed
operator similarity, on activations collected once into an activation store.

Uses the training and held-out stores of ``real_manifolds.py`` (SmolLM2-135M, the Bible mixed
with weekday/month sentences; the same hook), so nothing is collected twice, and its SAE cache
(the expansion-2, seed-0 run is the one ``real_manifolds.py`` trained). Every run: vanilla,
unlifted, α = ``--alpha``, Adam, the same steps and batch (so the same tokens, in the same order).

* **Width**: held-out x⊗x error and Hoyer density at expansion ``--expansions`` (d_sae =
  expansion · d_in).
* **Seeds**: the expansion-2 SAE trained with each of ``--seeds``; every pair compared by
  :func:`sae_bilinear.analysis.compare` — the paper's formula ``2‖K_ab‖_F/(‖K_aa‖_F+‖K_bb‖_F)``
  (``operator_similarity_unsymmetrised``) next to the symmetrised one and the matched score.

Writes ``results.json``, ``table.md`` and ``width.png`` into ``--out``.

    python experiments/width_and_seeds.py                 # expansions 1 2 4, seeds 0 1 (hours on 2 busy cores)
    python experiments/width_and_seeds.py --tiny          # seconds (tests)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch  # noqa: E402

from sae_bilinear import analysis  # noqa: E402
from sae_bilinear import experiment_utils as _common

NAME = "real_manifolds/width_and_seeds"


def _sibling(name: str) -> Any:
    """``experiments/<name>.py`` as a module, loaded by path (scripts are not a package)."""
    return _common.load_script(Path(__file__).resolve().parent / f"{name}.py", f"experiments_{name}")


rm = _sibling("real_manifolds")


def plot_width(rows: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    widths = [r["expansion"] for r in rows]
    ax.plot(widths, [r["reconstruction_error"] for r in rows], "o-", label="x⊗x error (held-out)")
    ax.plot(widths, [r["hoyer_density"] for r in rows], "s--", label="Hoyer density")
    ax.axhline(0.1, color="#999", lw=0.7, ls=":")
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [str(w) for w in widths])
    ax.set_xlabel("expansion (d_sae / d_in)")
    ax.set_ylim(0, max(1.0, max(r["reconstruction_error"] for r in rows)))
    ax.legend(fontsize=8)
    ax.set_title(f"vanilla α={rows[0]['alpha']}, {rows[0]['tokens']:,} training tokens each", fontsize=9)
    _common.save_figure(fig, path)


def main(argv: list[str] | None = None, model: Any = None) -> dict[str, Any]:
    p = _common.parser(__doc__, NAME, Path(__file__).resolve().parent)
    p.add_argument(
        "--expansions", type=_common.count_argument, nargs="+", default=[1, 2, 4], help="d_sae / d_in (each ≥ 1)"
    )
    p.add_argument(
        "--seeds",
        type=_common.seed_argument,
        nargs="+",
        default=[0, 1],
        help="training seeds of the expansion-2 SAE (distinct; every pair is compared)",
    )
    p.add_argument("--alpha", type=_common.nonnegative_argument, default=0.1, help="Hoyer density weight (≥ 0)")
    p.add_argument("--steps", type=_common.count_argument, default=400, help="optimiser steps per SAE (≥ 1)")
    p.add_argument("--batch-size", type=_common.count_argument, default=512, help="tokens per step (≥ 1)")
    p.add_argument("--heldout", type=_common.count_argument, default=8000, help="held-out tokens for the error (≥ 1)")
    args = p.parse_args(argv)
    if len(set(args.seeds)) < len(args.seeds):  # a repeated seed would compare an SAE with itself
        p.error(f"argument --seeds: the seeds must be distinct, got {' '.join(map(str, args.seeds))}")
    _common.setup(0, threads=int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    started = time.time()
    spec = rm.TINY_DATA if args.tiny else rm.DataSpec()
    if args.tiny:
        args.steps, args.batch_size, args.heldout = 20, 64, 500
    splits, model = rm.activations(spec, args.cache, model, progress=not args.tiny)
    train = splits["train"].store.tensor()
    d = train.shape[1]
    heldout_store = splits["eval"].store
    pick = (
        torch.randperm(heldout_store.n_tokens, generator=torch.Generator().manual_seed(0))[: args.heldout].sort().values
    )
    heldout = heldout_store.gather(pick)
    folder = Path(args.cache) / rm.NAME / splits["train"].store.folder.name
    spec_text = f"bilinear:vanilla:unlifted:{args.alpha}"

    def trained(expansion: int, seed: int) -> tuple[Any, dict]:
        run = rm.Run(spec_text, args.steps, args.batch_size, expansion * d, seed)
        print(f"train {run.name}", flush=True)
        return rm.train_run(run, train, folder, _common.LR, _common.LR_MIXED)

    rows = []
    for expansion in args.expansions:
        sae, info = trained(expansion, args.seeds[0])
        row = {
            "expansion": expansion,
            "d_sae": expansion * d,
            "alpha": args.alpha,
            "seed": args.seeds[0],
            "tokens": args.steps * args.batch_size,
            "train_seconds": info["seconds"],
            **_common.heldout_metrics(sae, heldout),
        }
        rows.append(row)
        print(
            f"expansion {expansion}: error {row['reconstruction_error']:.3f}, density {row['hoyer_density']:.3f}",
            flush=True,
        )
    saes = {seed: trained(2, seed)[0] for seed in args.seeds}
    pairs = []
    for i, a in enumerate(args.seeds):
        for b in args.seeds[i + 1 :]:
            result = analysis.compare(saes[a], saes[b])
            result["paper_formula"] = result["operator_similarity_unsymmetrised"]
            pairs.append({"seeds": [a, b], **result})
            print(
                f"seeds {a},{b}: paper formula {result['paper_formula']:.4f}, symmetrised "
                f"{result['operator_similarity_symmetrised']:.4f}, matched {result['matched_similarity']:.3f}",
                flush=True,
            )
    seed_rows = [{"seed": s, **_common.heldout_metrics(saes[s], heldout)} for s in args.seeds]
    results = {
        "data": rm.asdict(spec),
        "store": str(splits["train"].store.folder.name),
        "args": vars(args),
        "width": rows,
        "seeds": seed_rows,
        "similarity": pairs,
        "seconds": time.time() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    table = _common.markdown_table(
        rows,
        ["expansion", "d_sae", "tokens", "reconstruction_error", "hoyer_density", "tokens_below_0.1", "train_seconds"],
    )
    table += "\n\n" + _common.markdown_table(
        [{"seeds": str(p_["seeds"]), **p_} for p_ in pairs],
        ["seeds", "paper_formula", "operator_similarity_symmetrised", "matched_similarity", "matched_above_0.9"],
    )
    (args.out / "table.md").write_text(table + "\n")
    plot_width(rows, args.out / "width.png")
    _common.write_json(args.out / "results.json", results)
    return results


if __name__ == "__main__":
    main()
