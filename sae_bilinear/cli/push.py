"""``sae-bilinear push``: upload an SAE folder to the Hugging Face Hub with a model card."""

from __future__ import annotations

import argparse

from sae_bilinear.cli import options, paths
from sae_bilinear.errors import OfflineError

NAME = "push"
HELP = "upload a bilinear SAE folder to the Hugging Face Hub with a model card"
DESCRIPTION = (
    "Upload SAE_DIR to REPO_ID/PATH_IN_REPO (creating the repository if needed) and list it in the "
    "repository's model card. Needs the network and a token with write access (`hf auth login`)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sae_dir", metavar="SAE_DIR", type=paths.sae_folder, help="bilinear SAE folder (SAELens layout)"
    )
    parser.add_argument("repo_id", metavar="REPO_ID", type=options.repo_id, help="Hub repository OWNER/NAME")
    parser.add_argument("--path-in-repo", default=None, help="folder inside the repository (default: SAE_DIR's name)")
    parser.add_argument("--private", action="store_true", help="create the repository as private")


def execute(args: argparse.Namespace) -> int:
    from huggingface_hub import errors as hf_errors

    from sae_bilinear import hub

    # Hub errors are the user's to fix (network, offline mode, token, permissions), not bugs.
    hub_errors = (ConnectionError, TimeoutError, hf_errors.OfflineModeIsEnabled, hf_errors.LocalTokenNotFoundError,
                  hf_errors.HfHubHTTPError, getattr(hf_errors, "HTTPError", hf_errors.HfHubHTTPError))
    try:
        result = hub.push(args.sae_dir, args.repo_id, path_in_repo=args.path_in_repo, private=args.private)
    except hub_errors as error:
        raise OfflineError(
            f"could not push to {args.repo_id} on the Hugging Face Hub ({type(error).__name__}: {error}); "
            "check the network (and that HF_HUB_OFFLINE is unset) and your token (`hf auth login`)"
        ) from error
    print(result)
    return 0
