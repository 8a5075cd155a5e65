"""Experiment 2: the sparsity sweep — Hoyer density against x⊗x reconstruction error.

For every variant (vanilla, ordered, mixed, combined) and every α of the grid, one bilinear
SAE is trained with SAELens's trainer on activations of the embedded SmolLM2-135M at
``blocks.15.hook_resid_pre`` (its middle layer), collected ONCE and cached as a .pt under
``--cache``. Each SAE is scored on held-out activations (contexts from the corpus's
held-out split): mean per-token relative error of ``X = u⊗u`` (SPEC §1) and the Hoyer
density of its latents over all held-out tokens.

The main sweep is unlifted, as in the paper. For the variants in ``--lifted-variants`` the
same α grid is also trained lifted (``ũ = [1, u]``), which decodes to the activation space,
and spliced into the model on the held-out contexts: CE loss recovered, KL, explained
variance (``sae_bilinear.evaluate.evaluate_splice``).

Training: SAELens's trainer with Adam, 100 steps of 512 tokens, d_sae = 1152 (2 × d_model),
learning rate 1e-2 for vanilla/ordered and 3e-3 for mixed/combined (whose bottleneck overshoots
at 1e-2), α warmed up over the first 25 steps, the LR decaying linearly over the last 50.

Trained SAEs are kept under ``--cache/sweep/`` (SAELens folders) and reused by
``manifold_view.py`` and ``stability.py``; a rerun with the same settings loads them.

Writes ``results.json``, ``table.md``, ``pareto.png`` (and ``lifted.png``) into ``--out``.

    python experiments/sparsity_sweep.py          # default: 4 variants × 5 α unlifted + 5 lifted mixed
    python experiments/sparsity_sweep.py --tiny   # a random tiny Qwen3, seconds (tests)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from sae_bilinear import experiment_utils as common
from sae_bilinear.evaluate import evaluate_splice
from sae_bilinear.hub import load_any_from_disk
from sae_bilinear.train import TrainingSettings, train_on_activations
from sae_bilinear.values import int_at_least

HERE = Path(__file__).resolve().parent
NAME = "sparsity_sweep"
VARIANTS = ["vanilla", "ordered", "mixed", "combined"]
ALPHAS = [0.0, 0.1, 0.3, 0.6, 1.0]
PAPER = {"error_below": 0.1, "density_low": 0.2, "density_high": 0.6}


def plot_pareto(rows: list[dict], path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.6), layout="constrained")
    ax = fig.subplots()
    ax.add_patch(
        __import__("matplotlib.patches", fromlist=["Rectangle"]).Rectangle(
            (PAPER["density_low"], 0),
            PAPER["density_high"] - PAPER["density_low"],
            PAPER["error_below"],
            color="0.85",
            zorder=0,
            label="paper: error < 0.1 at density 0.2–0.6 (Qwen3-0.6B L18)",
        )
    )
    for i, variant in enumerate(sorted({r["variant"] for r in rows}, key=VARIANTS.index)):
        pts = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["alpha"])
        xs = [r["hoyer_density"] for r in pts]
        ys = [r["reconstruction_error"] for r in pts]
        ax.plot(xs, ys, "o-", color=f"C{i}", label=variant)
        for r, x, y in zip(pts, xs, ys, strict=False):
            ax.annotate(
                f"α={r['alpha']:g}", (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points", color=f"C{i}"
            )
    ax.set_xlabel("Hoyer density (held-out tokens; 1 = dense)")
    ax.set_ylabel("reconstruction error ||X − X̂||² / ||X||²")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    common.save_figure(fig, path, dpi=110)


def plot_lifted(rows: list[dict], path: Path, title: str, baselines: Sequence[dict] = ()) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    for i, variant in enumerate(sorted({r["variant"] for r in rows}, key=VARIANTS.index)):
        pts = sorted((r for r in rows if r["variant"] == variant), key=lambda r: r["alpha"])
        xs = [r["hoyer_density"] for r in pts]
        ax.plot(xs, [r["ce_loss_recovered"] for r in pts], "o-", color=f"C{i}", label=f"{variant} (lifted)")
        ax2.plot(xs, [r["reconstruction_error"] for r in pts], "o-", color=f"C{i}", label=f"{variant} (lifted)")
        for r, x in zip(pts, xs, strict=False):
            ax.annotate(
                f"α={r['alpha']:g}", (x, r["ce_loss_recovered"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
    for j, base in enumerate(baselines):
        ax.axhline(
            base["ce_loss_recovered"],
            color=f"C{j + 5}",
            ls="--",
            lw=0.9,
            label=f"{base['variant']} (d_sae {base['d_sae']}, same parameters; density {base['hoyer_density']:.2f})",
        )
    ax.set_xlabel("Hoyer density")
    ax.set_ylabel("CE loss recovered (spliced)")
    ax.set_title("splicing the lifted SAE into the model", fontsize=9)
    ax2.set_xlabel("Hoyer density")
    ax2.set_ylabel("error of ũ⊗ũ (lifted, / ||ũ||⁴)")
    ax2.set_title("lifted reconstruction error", fontsize=9)
    ax.legend(fontsize=7, loc="center right")
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    common.save_figure(fig, path, dpi=110)


def draw(rows: list[dict], lifted_rows: list[dict], baseline_rows: list[dict], title: str, out: Path) -> None:
    import textwrap

    title = "\n".join(textwrap.wrap(title, 80))
    if rows:
        plot_pareto(rows, out / "pareto.png", title)
    if lifted_rows:
        plot_lifted(lifted_rows, out / "lifted.png", title, baseline_rows)


def shape_summary(rows: list[dict]) -> dict[str, Any]:
    """Per variant: does any α reach error < 0.1 at density 0.2–0.6, and how flat is the error
    over the α values whose density lies in 0.2–0.6 (max − min error there)."""
    out = {}
    for variant in sorted({r["variant"] for r in rows}, key=VARIANTS.index):
        pts = [r for r in rows if r["variant"] == variant]
        band = [r for r in pts if PAPER["density_low"] <= r["hoyer_density"] <= PAPER["density_high"]]
        out[variant] = {
            "min_error": min(r["reconstruction_error"] for r in pts),
            "density_range": [min(r["hoyer_density"] for r in pts), max(r["hoyer_density"] for r in pts)],
            "runs_in_density_band": len(band),
            "error_in_band": [r["reconstruction_error"] for r in band],
            "paper_target_met": any(r["reconstruction_error"] < PAPER["error_below"] for r in band),
            "error_spread_in_band": (
                max(r["reconstruction_error"] for r in band) - min(r["reconstruction_error"] for r in band)
            )
            if band
            else None,
        }
    return out


def cached_topk(activations: Any, k: int, n_params: int, args: Any, folder: Path) -> tuple[Any, float, bool]:
    """A SAELens TopK SAE with about ``n_params`` parameters, trained on the same activations
    (Adam, the sweep's steps/batch, lr ``args.lr_mixed``), cached like the bilinear runs."""
    import json

    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    d_in = activations.shape[-1]
    d_sae = max(1, round((n_params - d_in) / (2 * d_in + 1)))  # W_enc, W_dec, b_enc, b_dec
    path = folder / f"topk-k{k}-f{d_sae}-s{args.steps}-b{args.batch_size}-lr{args.lr_mixed:g}-seed{args.seed}"
    if (path / "cfg.json").is_file() and (path / "experiment.json").is_file():
        return (
            load_any_from_disk(path, device="cpu"),
            float(json.loads((path / "experiment.json").read_text())["seconds"]),
            True,
        )
    torch.manual_seed(args.seed)
    # SAELens's usual normalisation for raw residuals (norms in the hundreds), folded when saved.
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=min(k, d_sae), normalize_activations="expected_average_only_in")
    )
    started = time.time()
    train_on_activations(
        sae,
        activations,
        TrainingSettings(
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr_mixed,
            seed=args.seed,
            dead_feature_window=max(10, args.steps // 2),
        ),
    )
    seconds = time.time() - started
    sae.save_inference_model(path)
    common.write_json(path / "experiment.json", {"k": k, "d_sae": d_sae, "seconds": seconds})
    return load_any_from_disk(path, device="cpu"), seconds, False


def main(argv: list[str] | None = None, model: Any = None) -> dict:
    p = common.parser(__doc__, NAME, HERE)
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--alphas", type=common.nonnegative_argument, nargs="+", default=ALPHAS, help="α grid (each ≥ 0)")
    p.add_argument(
        "--lifted-variants",
        nargs="*",
        default=["mixed"],
        choices=VARIANTS,
        help="variants also trained lifted and spliced into the model (CE loss recovered)",
    )
    common.add_training_arguments(p)
    p.add_argument(
        "--baseline-k",
        type=common.count_argument,
        nargs="*",
        default=[32],
        help="k (≥ 1) of SAELens TopK baselines spliced next to the lifted runs (parameters of the first lifted SAE)",
    )
    p.add_argument("--train-contexts", type=common.count_argument, default=192, help="training contexts (≥ 1)")
    p.add_argument("--eval-contexts", type=common.count_argument, default=8, help="held-out contexts (≥ 1)")
    p.add_argument(
        "--context-size",
        type=int_at_least(2),
        default=128,
        help="tokens per context, BOS included (≥ 2: the BOS position is dropped)",
    )
    p.add_argument("--replot", action="store_true", help="only redraw the figures from --out/results.json")
    args = p.parse_args(argv)
    if args.replot:
        stored = json.loads((args.out / "results.json").read_text())
        draw(stored["unlifted"], stored["lifted"], stored.get("baselines", []), stored["title"], args.out)
        return stored
    common.setup(args.seed)
    spec = common.ActivationSpec(
        train_contexts=args.train_contexts, eval_contexts=args.eval_contexts, context_size=args.context_size
    )
    if args.tiny:
        spec = common.TINY_SPEC
        args.d_sae, args.steps, args.batch_size, args.alphas = 64, 20, 128, [0.0, 0.5]
        args.variants, args.lifted_variants, args.baseline_k = ["vanilla", "mixed"], ["mixed"], [4]
    started = time.time()
    need_model = bool(args.lifted_variants)
    if model is None and need_model:
        model = common.load_model(spec.model)
    acts = common.model_activations(spec, args.cache, model=model)
    how = "cached" if acts["seconds"] == 0 else "collected in {:.0f}s".format(acts["seconds"])
    print(
        f"activations: train {tuple(acts['train'].shape)}, held-out {tuple(acts['heldout'].shape)} ({how})", flush=True
    )
    folder = args.cache / "sweep" / Path(acts["cache_file"]).stem
    bos = acts.get("bos")

    def splice(sae: Any) -> dict[str, Any]:
        """The SAE spliced into the model on the held-out contexts (BOS positions not scored)."""
        return evaluate_splice(
            model,
            sae,
            acts["eval_tokens"],
            hook_name=spec.hook,
            ignore_tokens=[bos] if bos is not None else None,
            progress=False,
        ).to_dict()

    rows, lifted_rows = [], []
    runs = [(v, a, False) for v in args.variants for a in args.alphas]
    runs += [(v, a, True) for v in args.lifted_variants for a in args.alphas]
    for variant, alpha, lifted in runs:
        run = common.run_spec(args, variant, alpha, lifted, args.seed)
        sae, seconds, cached = common.cached_bilinear(acts["train"], run, folder)
        row: dict[str, Any] = {
            "variant": variant,
            "alpha": alpha,
            "lifted": lifted,
            "name": run.name,
            "train_seconds": seconds,
            "cached": cached,
        }
        row["n_params"] = sum(p.numel() for p in sae.parameters())
        row.update(common.heldout_metrics(sae, acts["heldout"]))
        if lifted:
            metrics = splice(sae)
            row.update({f"splice_{k}": v for k, v in metrics.items()})
            row["ce_loss_recovered"] = metrics["ce_loss_recovered"]
            lifted_rows.append(row)
        else:
            rows.append(row)
        extra = f", CE recovered {row['ce_loss_recovered']:.3f}" if lifted else ""
        how = "cached" if cached else f"{seconds:.0f}s"
        print(
            f"{run.name}: error {row['reconstruction_error']:.4f}, density {row['hoyer_density']:.3f}{extra} ({how})",
            flush=True,
        )

    baseline_rows = []
    if lifted_rows:
        n_params = lifted_rows[0]["n_params"]
        for k in args.baseline_k:
            sae, seconds, cached = cached_topk(acts["train"], k, n_params, args, folder)
            metrics = splice(sae)
            row = {
                "variant": f"SAELens TopK k={k}",
                "alpha": None,
                "d_sae": sae.cfg.d_sae,
                "n_params": sum(p.numel() for p in sae.parameters()),
                "train_seconds": seconds,
                "cached": cached,
                "hoyer_density": metrics["hoyer_density"],
                "reconstruction_error": None,
                "ce_loss_recovered": metrics["ce_loss_recovered"],
                **{f"splice_{key}": value for key, value in metrics.items()},
            }
            baseline_rows.append(row)
            print(
                f"TopK k={k} baseline (d_sae {sae.cfg.d_sae}): CE recovered {row['ce_loss_recovered']:.3f}", flush=True
            )

    out = args.out
    title = (
        f"{spec.model} {spec.hook}: d_sae={args.d_sae}, {args.steps} steps × {args.batch_size} tokens, "
        f"{acts['train'].shape[0]} training / {acts['heldout'].shape[0]} held-out tokens"
    )
    columns = [
        "variant",
        "alpha",
        "hoyer_density",
        "reconstruction_error",
        "reconstruction_error_median",
        "tokens_below_0.1",
        "dead_fraction",
    ]
    table = "## Unlifted (x⊗x error, the paper's setting)\n\n" + common.markdown_table(rows, columns)
    if lifted_rows:
        lifted_columns = [
            "variant",
            "alpha",
            "hoyer_density",
            "reconstruction_error",
            "ce_loss_recovered",
            "splice_kl",
            "splice_explained_variance",
            "splice_ce_clean",
            "splice_ce_spliced",
            "splice_ce_zero_ablated",
        ]
        table += "\n\n## Lifted (ũ⊗ũ error / 4; spliced into the model)\n\n" + common.markdown_table(
            lifted_rows + baseline_rows, lifted_columns
        )
    result = {
        "command": "python experiments/sparsity_sweep.py" + (" --tiny" if args.tiny else ""),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "activations": {
            "spec": spec.__dict__,
            "train_tokens": int(acts["train"].shape[0]),
            "heldout_tokens": int(acts["heldout"].shape[0]),
            "collect_seconds": acts["seconds"],
        },
        "paper": PAPER,
        "unlifted": rows,
        "lifted": lifted_rows,
        "baselines": baseline_rows,
        "shape": shape_summary(rows) if rows else {},
        "title": title,
        "seconds": time.time() - started,
    }
    common.write_json(out / "results.json", result)
    (out / "table.md").write_text(table + "\n")
    draw(rows, lifted_rows, baseline_rows, title, out)
    print(table)
    print(f"wrote {out} in {result['seconds']:.0f}s")
    return result


if __name__ == "__main__":
    main()
