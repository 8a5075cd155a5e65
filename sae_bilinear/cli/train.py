"""``sae-bilinear train``: SAELens runner configs (YAML/JSON, sweeps included), checked first.

Every run of a sweep is checked before the first one trains: unknown keys (SAELens drops
unknown ``sae`` keys silently, so a typo would train with a default) and remote code, by the
library's :func:`sae_bilinear.train_config.check_train_config`; then the device and the output
folder.
"""

from __future__ import annotations

import argparse
import difflib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from sae_bilinear.cli import options
from sae_bilinear.errors import ConfigError

NAME = "train"
HELP = "train from a SAELens runner config (YAML/JSON), sweeps included"
DESCRIPTION = (
    "Train with SAELens's LanguageModelSAETrainingRunner from a config in "
    "LanguageModelSAERunnerConfig.to_dict() form. --config takes a file or the name of a packaged "
    "config (hub_configs/train/NAME.yaml, e.g. qwen3-0.6b-base-l18). A sweep file (base: + sweep:) "
    "trains one SAE per combination of its values."
)
DATASET_REMOTE_CODE = "dataset_trust_remote_code"
DEVICE_KEYS = ("device", "llm_device", "act_store_device")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="config file, or the name of a packaged config")
    parser.add_argument(
        "--set", action="append", type=options.assignment, default=[], metavar="KEY=VALUE",
        help="override a dotted key (repeatable), e.g. --set sae.alpha=0.2 --set device=cpu; "
        "values are JSON where they parse, else strings",
    )
    parser.add_argument("--dry-run", action="store_true", help="check and print the runs without training")
    parser.add_argument(
        "--allow-remote-code", action="store_true",
        help="allow trust_remote_code in the config (it runs code from the Hub; refused otherwise)",
    )
    options.add_output_policy(parser, resume=True)


# ------------------------------------------------------------------------------- finding configs


def packaged_configs() -> dict[str, Path]:
    """Name → file of the training configs shipped with the package.

    A source checkout reads its ``hub_configs/train/``; an installed wheel the copy packaged
    as ``sae_bilinear.hub_configs``.
    """
    root = Path(__file__).resolve().parents[2]
    folder = root / "hub_configs" / "train"
    if not ((root / "pyproject.toml").is_file() and folder.is_dir()):
        try:
            folder = Path(str(resources.files("sae_bilinear.hub_configs").joinpath("train")))
        except ModuleNotFoundError:
            return {}
    return {path.stem: path for path in sorted(folder.glob("*.yaml"))} if folder.is_dir() else {}


def find_config(text: str) -> Path:
    """``--config``: an existing file, else a packaged config of that name."""
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        raise ConfigError(f"--config {text} is a folder; give a YAML/JSON config file or a packaged config name")
    packaged = packaged_configs()
    if text in packaged:
        return packaged[text]
    close = difflib.get_close_matches(text, list(packaged), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"--config {text}: config file {text} does not exist, and no packaged config has that name "
        f"(packaged: {', '.join(packaged) or 'none'}).{hint}"
    )


# ------------------------------------------------------------------------------- checks


def check_run(raw: dict[str, Any], run: str, allow_remote_code: bool) -> None:
    """The library's train-config checks (unknown keys, remote code), the message prefixed by
    ``run``; then default ``dataset_trust_remote_code`` off for the dry run's print (SAELens
    defaults it to true), unless ``--allow-remote-code``."""
    from sae_bilinear.train_config import check_train_config

    try:
        check_train_config(raw, allow_remote_code=allow_remote_code)
    except ConfigError as error:
        raise ConfigError(f"{run}: {error}") from None
    if not allow_remote_code:
        raw.setdefault(DATASET_REMOTE_CODE, False)


def _output_path(raw: dict[str, Any]) -> Path | None:
    value = raw.get("output_path", "output")  # SAELens's default
    return None if value is None else Path(value)


# ------------------------------------------------------------------------------- command


def execute(args: argparse.Namespace) -> int:
    from sae_bilinear.cli import paths, runtime
    from sae_bilinear.train import train_from_config
    from sae_bilinear.train_config import expand_config, set_dotted

    config = find_config(args.config)
    runs = expand_config(config)
    for name, raw in runs:
        label = str(config) if len(runs) == 1 else f"{config} (run {name})"
        for key, value in args.set:
            set_dotted(raw, key, value)
        check_run(raw, label, args.allow_remote_code)
    if args.dry_run:
        for name, raw in runs:
            print(f"{name}: {json.dumps(raw, default=str)}")
        return 0
    flags = runtime.library_flags(train_from_config, resume=args.resume, overwrite=args.overwrite)
    for name, raw in runs:
        for key in DEVICE_KEYS:
            if raw.get(key) is not None:
                runtime.check_device(str(raw[key]), option=f"{name}: {key}", fix=f"--set {key}=cpu")
        output = _output_path(raw)
        if output is not None:
            paths.refuse_existing_output(output, option="output_path", overwrite=args.overwrite, resume=args.resume)
    for name, raw in runs:
        print(f"[sae-bilinear] training {name} -> {raw.get('output_path')}", flush=True)
        train_from_config(raw, allow_remote_code=args.allow_remote_code, **flags)
    return 0
