"""Hugging Face Hub: push bilinear SAEs with a model card, load them by release name,
read the authors' ``bae`` checkpoints (``tdooms/<model>-scope``), and load any SAELens
SAE folder with validation.

One module per job (as SAELens splits ``loading/pretrained_sae_loaders.py``,
``loading/pretrained_saes_directory.py`` and ``training/upload_saes_to_huggingface.py``):

* :mod:`~sae_bilinear.hub.files`: validated reading of ``cfg.json``, weights and sparsity
  files, the errors naming a bad file, and the loaders :func:`load_from_disk`,
  :func:`load_any_from_disk`, :func:`bilinear_loader`, :func:`bilinear_disk_loader`.
* :mod:`~sae_bilinear.hub.bae`: the authors' layout: folder names, :func:`bae_loader` (a
  SAELens ``converter=``) and :func:`convert_bae` (into SAELens's layout).
* :mod:`~sae_bilinear.hub.releases`: ``hub_configs/releases.yaml`` (SAELens's
  ``pretrained_saes.yaml`` schema) and :func:`from_pretrained` by release name.
* :mod:`~sae_bilinear.hub.card` and :mod:`~sae_bilinear.hub.upload`: :func:`push` /
  :func:`push_many` and the repo's model card.

Safety: weights are read with ``safetensors`` only (never pickle / ``torch.load``), nothing
here passes ``trust_remote_code``, and every file is validated (JSON, architecture, format
version, config values, tensor names, shapes, dtypes, finiteness) before any SAE is built,
so a bad file raises :class:`WeightFileError` naming it and nothing is half-loaded.
"""

from sae_bilinear.hub.bae import (
    BAE_CONFIG_FILENAME,
    BAE_WEIGHTS_FILENAME,
    BaeName,
    bae_loader,
    bae_name,
    convert_bae,
    parse_bae_name,
)
from sae_bilinear.hub.card import CARD_BEGIN, CARD_END, CARD_TAGS, LIBRARY_NAME, README_FILENAME, model_card
from sae_bilinear.hub.files import (
    MissingWeightFileError,
    WeightFileError,
    bilinear_disk_loader,
    bilinear_loader,
    load_any_from_disk,
    load_from_disk,
)
from sae_bilinear.hub.releases import (
    RELEASES_ENV,
    Release,
    ReleaseNotFoundError,
    format_releases,
    from_pretrained,
    from_pretrained_with_cfg_and_sparsity,
    list_releases,
    load_releases,
    releases_files,
)
from sae_bilinear.hub.upload import METRICS_FILENAME, PushResult, push, push_many

__all__ = [
    "BAE_CONFIG_FILENAME",
    "BAE_WEIGHTS_FILENAME",
    "CARD_BEGIN",
    "CARD_END",
    "CARD_TAGS",
    "LIBRARY_NAME",
    "METRICS_FILENAME",
    "README_FILENAME",
    "RELEASES_ENV",
    "BaeName",
    "MissingWeightFileError",
    "PushResult",
    "Release",
    "ReleaseNotFoundError",
    "WeightFileError",
    "bae_loader",
    "bae_name",
    "bilinear_disk_loader",
    "bilinear_loader",
    "convert_bae",
    "format_releases",
    "from_pretrained",
    "from_pretrained_with_cfg_and_sparsity",
    "list_releases",
    "load_any_from_disk",
    "load_from_disk",
    "load_releases",
    "model_card",
    "parse_bae_name",
    "push",
    "push_many",
    "releases_files",
]
