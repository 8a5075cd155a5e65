"""The ``sae-bilinear`` argument parser, built from the command modules without torch or SAELens."""

from __future__ import annotations

from importlib import metadata

from sae_bilinear.cli import analyze, atlas, compare, convert_bae, evaluate, options, push, releases, run, sweep, train
from sae_bilinear.cli.experiments import ablate, steer, walk

COMMANDS = (run, train, sweep, evaluate, analyze, atlas, compare, ablate, steer, walk, convert_bae, push, releases)
"""Each has NAME, HELP, DESCRIPTION, add_arguments(parser) and execute(args) -> exit code; one with
``OWN_HELP`` hands its arguments (``--help`` and ``--threads`` included) to its own parser."""
DESCRIPTION = """Bilinear sparse autoencoders for SAELens + TransformerLens: latents are quadratic
forms (l·x)(r·x) whose manifolds you read off the weights."""
EPILOG = """examples:
  sae-bilinear run                                  # the main job on the embedded SmolLM2-135M
  sae-bilinear train --config qwen3-0.6b-base-l18   # a packaged config (or a YAML/JSON file)
  sae-bilinear evaluate runs/<time>/sae
  sae-bilinear analyze runs/<time>/sae --latent top
  sae-bilinear atlas runs/<time>/sae                # every latent, browsable
  sae-bilinear compare runs/a/sae runs/b/sae
  sae-bilinear sweep hub_configs/train/qwen3-0.6b-base-l18-sweep.yaml --workers 8
  sae-bilinear steer --sae runs/<time>/sae --latent 3
  sae-bilinear convert-bae SRC DST
  sae-bilinear releases

Run `sae-bilinear COMMAND --help` for each command's options.
"""


def version() -> str:
    try:
        return metadata.version("sae-bilinear")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> options.Parser:
    parser = options.Parser(
        prog="sae-bilinear", description=DESCRIPTION, epilog=EPILOG, formatter_class=options.ExamplesHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    options.add_threads(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for command in COMMANDS:
        own_help = getattr(command, "OWN_HELP", False)
        sub = commands.add_parser(
            command.NAME, help=command.HELP, description=command.DESCRIPTION, formatter_class=options.HelpFormatter,
            add_help=not own_help,
        )
        command.add_arguments(sub)
        if not own_help:
            options.add_threads(sub)
        sub.set_defaults(execute=command.execute, own_help=own_help)
    return parser
