"""``sae-bilinear evaluate``: splice an SAE into its model on held-out text."""

from __future__ import annotations

import argparse
import json

from sae_bilinear.cli import options, paths, run

NAME = "evaluate"
HELP = "splice an SAE into its model: CE clean/spliced/ablated, KL, explained variance, ..."
DESCRIPTION = (
    "Replace the activations at the SAE's hook by its reconstruction on held-out text and report the "
    "language-model loss (clean, spliced, zero- and mean-ablated), KL and reconstruction metrics. The model, "
    "hook, corpus and context size default to the SAE's metadata and the number of contexts to "
    "`sae-bilinear run`'s, so an SAE written by `run` gives the numbers of its report."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = run.config_defaults()
    parser.add_argument("sae_dir", metavar="SAE_DIR", type=paths.sae_folder,
                        help="SAELens SAE folder (cfg.json + sae_weights.safetensors), any architecture")
    options.add_model_options(parser, eval_contexts=defaults["eval_contexts"], device=defaults["device"],
                              dtype=defaults["dtype"], dtypes=run.DTYPES)
    parser.add_argument("--out", type=paths.output_file, default=None, help="also write the metrics JSON to this file")
    options.add_output_policy(parser, resume=False)


def execute(args: argparse.Namespace) -> int:
    from sae_bilinear.cli import runtime
    from sae_bilinear.evaluate import evaluate_splice

    if args.out:
        paths.refuse_existing_output(args.out, option="--out", overwrite=args.overwrite)
    runtime.check_device(args.device)
    sae = runtime.load_sae(args.sae_dir, args.device, command=NAME, bilinear_only=False)
    held = runtime.held_out(args, sae, command=NAME, default_context_size=run.config_defaults()["context_size"])
    metrics = evaluate_splice(
        held.model, sae, held.tokens, hook_name=held.hook_name, ignore_tokens=runtime.ignored_tokens(held)
    ).to_dict()
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:
        paths.write_text_atomic(args.out, text + "\n")
    return 0
