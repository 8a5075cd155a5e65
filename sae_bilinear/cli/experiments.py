"""``sae-bilinear ablate | steer | walk``: the hook experiments of :mod:`sae_bilinear.hook_experiments`.

Their options are declared by the experiments themselves (the same parser serves
``python hooks/<script>.py``), and that module imports torch and SAELens. So that
``sae-bilinear --help`` stays instant, these subcommands take their arguments as they come and
hand them to the experiment's own parser after the heavy import: ``sae-bilinear steer --help``
prints the experiment's full help (a few seconds, the import). Errors are the experiment's:
a :class:`~sae_bilinear.errors.UserError` prints one line and exits 2.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

EXPERIMENTS = {
    "ablate": "zero, mean- or error-ablate latents and measure the loss they carry",
    "steer": "add a latent's decoder direction (scaled) and show the promoted tokens",
    "walk": "walk along a latent's top eigenvectors and show the tokens that change",
}
"""CLI name → one-line help (kept here, torch-free; the experiments' docstrings say the same)."""


def _command(name: str, help_text: str) -> SimpleNamespace:
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "arguments", nargs=argparse.REMAINDER, metavar="...",
            help=f"the experiment's options; `sae-bilinear {name} --help` lists them (e.g. --sae DIR --latent 3)",
        )

    def execute(args: argparse.Namespace) -> int:
        from sae_bilinear import hook_experiments

        parser = hook_experiments.script_parser(name)
        parser.prog = f"sae-bilinear {name}"
        hook_experiments.COMMANDS[name].run(parser.parse_args(args.arguments))  # prints where it wrote
        return 0

    return SimpleNamespace(NAME=name, HELP=help_text, DESCRIPTION=help_text + ".", add_arguments=add_arguments,
                           execute=execute, OWN_HELP=True)


ablate = _command("ablate", EXPERIMENTS["ablate"])
steer = _command("steer", EXPERIMENTS["steer"])
walk = _command("walk", EXPERIMENTS["walk"])
