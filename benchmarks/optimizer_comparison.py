"""Adam (SAELens's) vs Muon (the paper's) at equal steps, on real residual-stream activations.

Collects SmolLM2-135M activations at one hook once (King James Bible), trains the same
bilinear SAE from the same init with each optimiser over a small LR grid through SAELens's
trainer, and reports the held-out x⊗x reconstruction error and x̂ explained variance. Writes
``benchmarks/results/optimizer_comparison.json``.

    python benchmarks/optimizer_comparison.py --model tiny   # random 2-layer model, d 64: ~2 min
    python benchmarks/optimizer_comparison.py                # SmolLM2 (see the note on CPUs below)
    python benchmarks/optimizer_comparison.py --quick        # a smoke run

Note: ``torch.optim.Muon`` runs its Newton–Schulz iterations in bfloat16 (hard-coded). On a
CPU without fast bf16 matmuls (no AMX: ~1 GFLOP/s here) that makes a Muon step at SmolLM2 size
(d 576, d_sae 1152) take ~40 s, against ~1 s for Adam; compare at that size on a GPU.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from sae_bilinear import data, models
from sae_bilinear.bilinear import (
    BilinearTrainingSAE,
    BilinearTrainingSAEConfig,
    default_alpha_warm_up_steps,
    explained_variance,
)
from sae_bilinear.train import TrainingSettings, collect_activations, train_on_activations

RESULTS_DIR = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="smollm2-135m, or 'tiny' (random 2-layer d 64)")
    parser.add_argument("--hook", default="blocks.15.hook_resid_pre")
    parser.add_argument("--contexts", type=int, default=160, help="training contexts of 128 tokens")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--variant", default="mixed")
    parser.add_argument("--adam-lrs", default="1e-3,3e-3,1e-2")
    parser.add_argument("--muon-lrs", default="0.01,0.03,0.1")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON file (default: results/optimizer_comparison_<model>.json)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.contexts, args.steps, args.adam_lrs, args.muon_lrs = 24, 20, "3e-3", "0.03"

    if args.model == "tiny":
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        torch.manual_seed(0)
        model = HookedTransformer(HookedTransformerConfig(
            n_layers=2, d_model=64, n_ctx=128, d_head=16, n_heads=4, d_vocab=512, act_fn="gelu", d_mlp=256))
        generator = torch.Generator().manual_seed(0)
        tokens = torch.randint(1, 512, (args.contexts, 128), generator=generator)
        heldout = torch.randint(1, 512, (max(4, args.contexts // 10), 128), generator=generator)
        args.hook = "blocks.1.hook_resid_pre"
    else:
        model = models.load_model(args.model)
        corpus = data.kjv_corpus()
        tokens = data.tokenize_contexts(corpus.train, model.tokenizer, 128, max_contexts=args.contexts)
        heldout = data.tokenize_contexts(corpus.heldout, model.tokenizer, 128, max_contexts=max(4, args.contexts // 10))
    acts = collect_activations(model, tokens, args.hook, skip_first=1)
    test = collect_activations(model, heldout, args.hook, skip_first=1, progress=False)
    torch.manual_seed(0)
    base = BilinearTrainingSAE(
        BilinearTrainingSAEConfig(d_in=acts.shape[1], d_sae=2 * acts.shape[1], variant=args.variant, lifted=True,
                                  alpha=0.1, alpha_warm_up_steps=default_alpha_warm_up_steps(args.steps))
    )
    rows = []
    for optimizer, lrs in (("adam", args.adam_lrs), ("muon", args.muon_lrs)):
        for lr in (float(v) for v in lrs.split(",") if v.strip()):
            sae = copy.deepcopy(base)  # same init for every run
            started = time.time()
            train_on_activations(
                sae, acts, TrainingSettings(steps=args.steps, batch_size=1024, lr=lr, optimizer=optimizer)
            )
            with torch.no_grad():
                error = sae.reconstruction_error(test).mean().item()
                ev = explained_variance(test, sae(test)).item()
            rows.append({"optimizer": optimizer, "lr": lr, "steps": args.steps, "heldout_error": error,
                         "heldout_explained_variance": ev, "seconds": time.time() - started})
            print(rows[-1], flush=True)
    best = {
        opt: min((r for r in rows if r["optimizer"] == opt), key=lambda r: r["heldout_error"])
        for opt in ("adam", "muon")
        if any(r["optimizer"] == opt for r in rows)
    }
    lines = ["| optimizer | lr | held-out x⊗x error | x̂ explained variance |", "|---|---|---|---|"]
    lines += [
        f"| {r['optimizer']} | {r['lr']:g} | {r['heldout_error']:.4f} | {r['heldout_explained_variance']:.3f} |"
        for r in rows
    ]
    table = "\n".join(lines)
    print(table)
    winner = min(best.values(), key=lambda r: r["heldout_error"])["optimizer"]
    print(f"best at {args.steps} steps: {winner}")
    args.out = args.out or RESULTS_DIR / f"optimizer_comparison_{args.model}.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "model": args.model,
                "hook": args.hook,
                "variant": args.variant,
                "tokens": acts.shape[0],
                "rows": rows,
                "table": table,
                "best": winner,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
