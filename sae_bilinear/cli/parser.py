"""The ``sae-bilinear`` argument parser, built from the command modules without torch or SAELens."""

from __future__ import annotations

from importlib import metadata

from sae_bilinear.cli import analyze, compare, convert_bae, evaluate, options, push, releases, run, train

COMMANDS = (run, train, evaluate, analyze, compare, convert_bae, push, releases)
"""Each module has NAME, HELP, DESCRIPTION, add_arguments(parser) and execute(args) -> exit code."""
DESCRIPTION = """Bilinear sparse autoencoders for SAELens + TransformerLens: latents are quadratic
forms (l·x)(r·x) whose manifolds you read off the weights."""
EPILOG = """examples:
  sae-bilinear run                                  # the main job on the embedded SmolLM2-135M
  sae-bilinear train --config qwen3-0.6b-base-l18   # a packaged config (or a YAML/JSON file)
  sae-bilinear evaluate runs/<time>/sae
  sae-bilinear analyze runs/<time>/sae --latent top
  sae-bilinear compare runs/a/sae runs/b/sae
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
        sub = commands.add_parser(
            command.NAME, help=command.HELP, description=command.DESCRIPTION, formatter_class=options.HelpFormatter
        )
        command.add_arguments(sub)
        options.add_threads(sub)
        sub.set_defaults(execute=command.execute)
    return parser
