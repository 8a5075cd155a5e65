"""``sae-bilinear analyze``: eigendecomposition and manifold pages of chosen latents."""

from __future__ import annotations

import argparse

from sae_bilinear.cli import options, paths, run
from sae_bilinear.errors import ConfigError

NAME = "analyze"
HELP = "eigendecomposition and manifold view of latents"
DESCRIPTION = (
    "For each chosen latent of a bilinear SAE, write latent_J.html (3D manifold with the held-out "
    "tokens that activate it), latent_J.png and latent_J.json (spectrum, top contexts). The model, hook, "
    "corpus and context size default to the SAE's metadata."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = run.config_defaults()
    parser.add_argument(
        "sae_dir", metavar="SAE_DIR", type=paths.sae_folder, help="bilinear SAE folder (SAELens layout)"
    )
    parser.add_argument("--latent", type=options.latent_choice, default="top",
                        help="a latent index, or 'top' for the most often active latents on the held-out text")
    parser.add_argument("--n", type=options.positive_int, default=3, help="how many latents with --latent top")
    parser.add_argument(
        "--out", type=paths.output_folder, default=None, help="output folder (default: SAE_DIR/analysis)"
    )
    options.add_model_options(parser, eval_contexts=defaults["eval_contexts"], device=defaults["device"],
                              dtype=defaults["dtype"], dtypes=run.DTYPES)


def execute(args: argparse.Namespace) -> int:
    from sae_bilinear import analysis, latent_pages
    from sae_bilinear.cli import runtime
    from sae_bilinear.main_job import token_activations

    runtime.check_device(args.device)
    sae = runtime.load_sae(args.sae_dir, args.device, command=NAME, bilinear_only=True)
    if args.latent != "top" and args.latent >= sae.cfg.d_sae:
        raise ConfigError(f"--latent {args.latent} is out of range: this SAE has latents 0..{sae.cfg.d_sae - 1}")
    held = runtime.held_out(args, sae, command=NAME, default_context_size=run.config_defaults()["context_size"])
    skip = 1 if held.prepend_bos else 0  # BOS activations are norm outliers, not text
    acts, contexts, token_strs = token_activations(held.model, held.tokens, held.hook_name, skip)
    latents = analysis.choose_top_latents(sae, acts, n=args.n) if args.latent == "top" else [args.latent]
    out = args.out or args.sae_dir / "analysis"
    for latent in latents:
        summary = latent_pages.analyze_latent(sae, latent, acts, contexts, out, tokens=token_strs)
        print(f"latent {latent}: {summary.get('html')}")
    return 0
