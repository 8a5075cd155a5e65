"""Build the latent atlas at SmolLM2 size and measure it: seconds per stage, latents/second, bytes per 1k latents.

    python benchmarks/atlas_benchmark.py [--sae SAE_DIR] [--contexts 32] [--out runs/atlas_benchmark]

Without ``--sae`` a random lifted vanilla SAE of the main job's shape (d_in 576, d_sae 1152) is
used: the cost does not depend on what the weights learned (a mixed SAE adds one full
eigendecomposition per composite). The site goes under ``--out`` (an
ignored folder) and the numbers to ``benchmarks/results/atlas_benchmark.json``
(``atlas_benchmark_random_vanilla.json`` without ``--sae``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch
from sae_lens import SAE

from sae_bilinear import BilinearSAE, BilinearSAEConfig, analysis, atlas, data
from sae_bilinear.models import load_model
from sae_bilinear.values import int_at_least

RESULTS = Path(__file__).resolve().parent / "results"


def random_sae(hook: str) -> BilinearSAE:
    torch.manual_seed(0)
    sae = BilinearSAE(BilinearSAEConfig(d_in=576, d_sae=1152, variant="vanilla", lifted=True))
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_(0, 576**-0.5)
    sae.cfg.metadata.hook_name = hook
    return sae


def describe(sae: object) -> str:
    left, _, down, lifted = analysis.factors(sae)
    bottleneck = f", bottleneck {down.shape[0]}" if down is not None else ""
    sizes = f"d_in {left.shape[1] - int(lifted)}, d_sae {left.shape[0]}{bottleneck}"
    return f"{analysis.variant_name(sae)}, lifted={lifted}, {sizes}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sae", default=None, help="SAE folder (SAELens layout); default: random, SmolLM2 shape")
    parser.add_argument("--hook", default="blocks.15.hook_resid_pre", help="hook of the random SAE")
    parser.add_argument(
        "--contexts", type=int_at_least(1), default=32, help="held-out KJV contexts of --context-size tokens (≥ 1)"
    )
    parser.add_argument(
        "--context-size", type=int_at_least(2), default=128, help="tokens per context, BOS included (≥ 2)"
    )
    parser.add_argument("--out", default="runs/atlas_benchmark", help="site folder (replaced)")
    args = parser.parse_args(argv)

    sae = SAE.load_from_disk(args.sae) if args.sae else random_sae(args.hook)
    model = load_model("smollm2-135m")
    kjv = data.load_corpus("kjv")
    assert isinstance(kjv, data.TextCorpus)
    tokens = data.tokenize_contexts(
        kjv.heldout,
        model.tokenizer,
        args.context_size,
        prepend_bos=True,
        max_contexts=args.contexts,
    )
    result = atlas.build_atlas(sae, model, tokens, args.out, overwrite=True)
    site = Path(args.out)
    items = result.n_latents + result.n_composites
    item_bytes = sum(p.stat().st_size for p in (site / "data" / "items").rglob("*.js"))
    index_bytes = (site / "data" / "index.js").stat().st_size
    after_activations = result.seconds["total"] - result.seconds["activations"]
    numbers = {
        "sae": describe(sae) + ("" if args.sae else " (random weights)"),
        "tokens": result.n_tokens,
        "latents": result.n_latents,
        "composites": result.n_composites,
        "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
        "items_per_second_after_activations": round(items / after_activations, 1),
        "latents_per_second_scoring_pass": round(result.n_latents / result.seconds["scoring"], 1),
        "bytes_per_1k_items": round(1000 * (item_bytes + index_bytes) / items),
        "site_bytes": result.site_bytes,
        "site_bytes_without_plotly": result.data_bytes,
        "corpus_bytes": (site / "data" / "corpus.js").stat().st_size,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
    }
    print(json.dumps(numbers, indent=1))
    name = "atlas_benchmark.json" if args.sae else "atlas_benchmark_random_vanilla.json"
    (RESULTS / name).write_text(json.dumps(numbers, indent=1) + "\n")


if __name__ == "__main__":
    main()
