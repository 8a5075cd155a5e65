"""``sae-bilinear evaluate``: splice an SAE into its model on held-out text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sae_bilinear.cli import options, paths, run

NAME = "evaluate"
HELP = "splice an SAE into its model: CE clean/spliced/ablated, KL, explained variance, ..."
DESCRIPTION = (
    "Replace the activations at the SAE's hook by its reconstruction on held-out text and report the "
    "language-model loss (clean, spliced, zero- and mean-ablated), KL and reconstruction metrics. The model, "
    "hook, corpus and context size default to the SAE's metadata and the number of contexts to "
    "`sae-bilinear run`'s; mean-ablation uses the training activations' mean that `run` saves in the SAE "
    "folder (training_mean.safetensors) when it is there, so an SAE written by `run` gives the numbers of its "
    "report. The output's `mean_ablation` says which mean was used."
)
TRAINING_MEAN = "training_mean.safetensors"
"""``sae_bilinear.evaluate.TRAINING_MEAN_FILENAME`` (that module is imported only in ``execute``)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = run.config_defaults()
    parser.add_argument(
        "sae_dir",
        metavar="SAE_DIR",
        type=paths.sae_folder,
        help="SAELens SAE folder (cfg.json + sae_weights.safetensors), any architecture",
    )
    options.add_model_options(
        parser,
        eval_contexts=defaults["eval_contexts"],
        device=defaults["device"],
        dtype=defaults["dtype"],
        dtypes=run.DTYPES,
    )
    means = parser.add_mutually_exclusive_group()
    means.add_argument(
        "--training-mean",
        type=Path,
        default=None,
        metavar="FILE",
        help=f"mean-ablate to the mean in this {TRAINING_MEAN} file (a float [d_in] tensor 'mean' with metadata "
        f"n_tokens) (default: SAE_DIR/{TRAINING_MEAN} when present, else the held-out tokens' mean)",
    )
    means.add_argument(
        "--held-out-mean",
        action="store_true",
        help=f"mean-ablate to the mean of the held-out tokens, even when SAE_DIR holds a {TRAINING_MEAN}",
    )
    parser.add_argument("--out", type=paths.output_file, default=None, help="also write the metrics JSON to this file")
    options.add_output_policy(parser, resume=False)


def _training_mean(args: argparse.Namespace, d_in: int) -> Any:
    """The training mean to ablate to (a ``TrainingMean``), or None for the held-out tokens' mean."""
    from sae_bilinear import evaluate

    if args.held_out_mean:
        return None
    path = args.training_mean or args.sae_dir / evaluate.TRAINING_MEAN_FILENAME
    if args.training_mean is None and not path.is_file():
        return None
    return evaluate.load_training_mean(path, d_in)


def execute(args: argparse.Namespace) -> int:
    from sae_bilinear.cli import runtime
    from sae_bilinear.evaluate import HELD_OUT_MEAN_LABEL, evaluate_splice

    if args.out:
        paths.refuse_existing_output(args.out, option="--out", overwrite=args.overwrite)
    runtime.check_device(args.device)
    sae = runtime.load_sae(args.sae_dir, args.device, command=NAME, bilinear_only=False)
    mean = _training_mean(args, sae.cfg.d_in)  # a bad file fails before the model is loaded
    held = runtime.held_out(args, sae, command=NAME, default_context_size=run.config_defaults()["context_size"])
    metrics: dict[str, Any] = evaluate_splice(
        held.model,
        sae,
        held.tokens,
        hook_name=held.hook_name,
        ignore_tokens=runtime.ignored_tokens(held),
        mean_activation=None if mean is None else mean.mean,
        mean_source=HELD_OUT_MEAN_LABEL if mean is None else mean.label,
    ).to_dict()
    metrics["mean_ablation"] = HELD_OUT_MEAN_LABEL if mean is None else mean.label
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:
        paths.write_text_atomic(args.out, text + "\n")
    return 0
