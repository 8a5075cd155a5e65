"""``sae-bilinear releases``: the SAEs listed in hub_configs/releases.yaml."""

from __future__ import annotations

import argparse

NAME = "releases"
HELP = "list the released SAEs (hub_configs/releases.yaml)"
DESCRIPTION = (
    "One tab-separated line per SAE of every release, under a header: load one with "
    "sae_bilinear.from_pretrained(RELEASE, SAE_ID). Files named in SAE_BILINEAR_RELEASES "
    "(os.pathsep-separated) are read too."
)
COLUMNS = ("release", "sae_id", "repo_id", "path", "model", "hook", "format")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def execute(args: argparse.Namespace) -> int:
    from sae_bilinear.hub import list_releases

    print("\t".join(COLUMNS))
    for row in list_releases():
        print("\t".join("-" if row.get(column) is None else str(row[column]) for column in COLUMNS))
    return 0
