"""``sae-bilinear convert-bae``: the authors' (tdooms/bae) layout to SAELens's."""

from __future__ import annotations

import argparse

from sae_bilinear.cli import options, paths, run
from sae_bilinear.errors import ConfigError

NAME = "convert-bae"
HELP = "convert an authors' (tdooms/bae) folder to SAELens layout"
DESCRIPTION = (
    "Read a folder in the authors' layout (config.json + model.safetensors), validate it, and write a "
    "SAELens folder (cfg.json + sae_weights.safetensors) that SAE.load_from_disk reads after "
    "`import sae_bilinear`. DST is written through a temporary folder, so a failure leaves no half folder."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "src", metavar="SRC", type=paths.input_folder, help="the authors' folder (config.json + model.safetensors)"
    )
    parser.add_argument("dst", metavar="DST", type=paths.output_folder, help="the SAELens folder to write")
    parser.add_argument("--model", default=None,
                        help="base model recorded in the metadata (default: from their config's 'base', "
                        "e.g. qwen3-0.6b-base → Qwen/Qwen3-0.6B-Base)")
    options.add_alias(parser, "--model-name", dest="model")
    parser.add_argument(
        "--dtype", choices=run.DTYPES, default=None, help="dtype of the written weights (default: as stored)"
    )
    options.add_output_policy(parser, resume=False)


def execute(args: argparse.Namespace) -> int:
    from sae_bilinear import hub

    src, dst = args.src.resolve(), args.dst.resolve()
    if src == dst or src.is_relative_to(dst):
        raise ConfigError(f"DST {args.dst} would replace SRC {args.src}; choose a DST outside SRC")
    paths.refuse_existing_output(args.dst, option="DST", overwrite=args.overwrite)
    hub.convert_bae(args.src, args.dst, model_name=args.model, dtype=args.dtype, overwrite=args.overwrite)
    print(f"wrote {args.dst} (load with SAE.load_from_disk after `import sae_bilinear`)")
    return 0
