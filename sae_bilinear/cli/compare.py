"""``sae-bilinear compare``: weight-based similarity of two bilinear SAEs."""

from __future__ import annotations

import argparse
import json

from sae_bilinear.cli import options, paths

NAME = "compare"
HELP = "weight-based similarity of two bilinear SAEs (exact, data-free)"
DESCRIPTION = (
    "Compare two bilinear SAEs of the same d_in by their weights alone: the operator similarity of the "
    "whole SAEs and, unless --no-matched, the cosine of each latent with its optimal partner."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sae_a", metavar="SAE_A", type=paths.sae_folder, help="first bilinear SAE folder")
    parser.add_argument("sae_b", metavar="SAE_B", type=paths.sae_folder, help="second bilinear SAE folder")
    parser.add_argument("--no-matched", action="store_true", help="skip the per-latent optimal assignment (faster)")
    options.add_device(parser, "cpu", what="the SAEs")


def execute(args: argparse.Namespace) -> int:
    from sae_bilinear.cli import runtime
    from sae_bilinear.similarity import compare

    runtime.check_device(args.device)
    sae_a = runtime.load_sae(args.sae_a, args.device, command=NAME, bilinear_only=True)
    sae_b = runtime.load_sae(args.sae_b, args.device, command=NAME, bilinear_only=True)
    result = compare(sae_a, sae_b, matched=not args.no_matched)
    printable = {key: value for key, value in result.items() if not hasattr(value, "shape")}
    print(json.dumps(printable, indent=2, default=str))
    return 0
