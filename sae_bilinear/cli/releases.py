"""``sae-bilinear releases``: the SAEs listed in hub_configs/releases.yaml."""

from __future__ import annotations

import argparse

NAME = "releases"
HELP = "list the released SAEs (hub_configs/releases.yaml)"
DESCRIPTION = (
    "One line per SAE of every release, in columns under a header: load one with "
    "sae_bilinear.from_pretrained(RELEASE, SAE_ID). Files named in SAE_BILINEAR_RELEASES "
    "(os.pathsep-separated) are read too."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def execute(args: argparse.Namespace) -> int:
    from sae_bilinear.hub import format_releases, list_releases

    print(format_releases(list_releases()))
    return 0
