"""``sae-bilinear atlas``: a static site of every latent (and composite) of a bilinear SAE."""

from __future__ import annotations

import argparse

from sae_bilinear.cli import options, paths, run

NAME = "atlas"
HELP = "a static site of every latent and composite: index, 2-D map, manifold pages"
DESCRIPTION = (
    "Score every latent (and, for mixed/combined SAEs, every composite) of a bilinear SAE on held-out text "
    "in one pass, and write a self-contained static site: index.html (sortable, filterable table with "
    "density, frequency at the activity threshold, effective rank, importance, top tokens; a 2-D map where a "
    "click opens the latent) and one page per latent (3D manifold view, spectrum, top and bottom contexts, "
    "promoted and suppressed tokens, neighbours). Open OUT/index.html from disk or any static host. "
    "The model, hook, corpus and context size default to the SAE's metadata."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = run.config_defaults()
    parser.add_argument(
        "sae_dir", metavar="SAE_DIR", type=paths.sae_folder, help="bilinear SAE folder (SAELens layout)"
    )
    parser.add_argument("--out", type=paths.output_folder, default=None, help="site folder (default: SAE_DIR/atlas)")
    parser.add_argument("--examples", type=options.positive_int, default=100,
                        help="tokens kept at each end of every latent (the 3D view shows both ends)")
    parser.add_argument("--neighbours", type=options.positive_int, default=8, help="nearest latents listed per page")
    options.add_model_options(parser, eval_contexts=64, device=defaults["device"], dtype=defaults["dtype"],
                              dtypes=run.DTYPES)
    options.add_output_policy(parser, resume=False)


def execute(args: argparse.Namespace) -> int:
    from sae_bilinear.atlas import build_atlas
    from sae_bilinear.cli import runtime

    out = args.out or args.sae_dir / "atlas"
    runtime.check_device(args.device)
    sae = runtime.load_sae(args.sae_dir, args.device, command=NAME, bilinear_only=True)
    held = runtime.held_out(args, sae, command=NAME, default_context_size=run.config_defaults()["context_size"])
    result = build_atlas(
        sae, held.model, held.tokens, out, hook_name=held.hook_name, skip_first=1 if held.prepend_bos else 0,
        n_examples=args.examples, n_listed=min(20, args.examples), n_neighbours=args.neighbours,
        overwrite=args.overwrite,
    )
    print(f"atlas of {result.n_latents} latents and {result.n_composites} composites: {result.index}")
    return 0
