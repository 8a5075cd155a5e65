"""``sae-bilinear run``: the main job, one option per field of ``MainJobConfig``."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from sae_bilinear.cli import options, paths, sources

NAME = "run"
HELP = "the main job: train, splice-evaluate, analyse, report"
DESCRIPTION = (
    "Collect activations once, train a bilinear SAE (and a SAELens baseline) with SAELens's trainer, "
    "splice it into the model on held-out text, analyse the most active latents and write report.html. "
    "Defaults run in minutes on 2 CPU cores."
)
MODULE, CONFIG = "main_job", "MainJobConfig"
DTYPES = ("float32", "bfloat16", "float16")

# Range of each numeric field (checked at parse time, so a bad value fails before the model loads).
TYPES: dict[str, Callable[[str], Any]] = {
    "context_size": options.positive_int,
    "train_contexts": options.positive_int,
    "eval_contexts": options.positive_int,
    "expansion": options.positive_int,
    "steps": options.positive_int,
    "batch_size": options.positive_int,
    "baseline_k": options.positive_int,
    "n_latents": options.nonnegative_int,
    "seed": options.nonnegative_int,
    "alpha": options.nonnegative_float,
    "lr": options.positive_float,
}
# Fields with a fixed set of values: (module, constant) holding them, read from the source.
CHOICES: dict[str, tuple[str, str]] = {
    "variant": ("kernels", "VARIANTS"),
    "optimizer": ("train_config", "OPTIMIZERS"),
    "baseline": ("main_job", "BASELINES"),
}
_BY_ANNOTATION: dict[str, Callable[[str], Any]] = {"int": options.integer(), "float": options.finite_float, "str": str}
KEYS = ("ce_clean", "ce_spliced", "ce_zero_ablated", "ce_loss_recovered", "kl", "explained_variance",
        "reconstruction_error", "hoyer_density")
"""Metrics printed at the end (all of them are in OUT/metrics.json)."""


def config_defaults() -> dict[str, Any]:
    """``MainJobConfig``'s defaults, read from its source (other commands share them)."""
    return {field.name: field.default for field in sources.dataclass_fields(MODULE, CONFIG)}


def _add_field(parser: argparse.ArgumentParser, field: sources.ConfigField) -> None:
    option = "--" + field.name.replace("_", "-")
    default = None if field.default is sources.UNRESOLVED else field.default
    help_text = (field.doc or field.name).replace("``", "")  # reST literals read as plain text here
    if default is None:
        help_text += f" (default: {CONFIG}'s)"
    if field.annotation == "bool":
        action = argparse.BooleanOptionalAction
        parser.add_argument(option, dest=field.name, action=action, default=default, help=help_text)
        return
    kind = TYPES.get(field.name) or _BY_ANNOTATION.get(field.annotation, str)
    choices = _choices(field.name)
    parser.add_argument(option, dest=field.name, type=kind, choices=choices, default=default, help=help_text)


def _choices(name: str) -> tuple[str, ...] | None:
    if name == "dtype":
        return DTYPES
    return sources.constant(*CHOICES[name]) if name in CHOICES else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for field in sources.dataclass_fields(MODULE, CONFIG):
        _add_field(parser, field)
    parser.add_argument(
        "--out", type=paths.output_folder, default=None, help="output folder (default: runs/<timestamp>)"
    )
    options.add_output_policy(parser, resume=True)


def execute(args: argparse.Namespace) -> int:
    from sae_bilinear.cli import runtime
    from sae_bilinear.main_job import MainJobConfig, run_main_job

    out = args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    paths.refuse_existing_output(out, option="--out", overwrite=args.overwrite, resume=args.resume)
    runtime.check_device(args.device)
    given = {name: getattr(args, name, None) for name in MainJobConfig.__dataclass_fields__}
    fields = {name: value for name, value in given.items() if value is not None}
    flags = runtime.library_flags(run_main_job, resume=args.resume, overwrite=args.overwrite)
    metrics = run_main_job(MainJobConfig(**fields), out, **flags)
    print(json.dumps({key: metrics[key] for key in KEYS}, indent=2))
    print(f"report: {Path(out) / 'report.html'}")
    return 0
