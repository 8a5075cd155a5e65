"""sae-bilinear: bilinear sparse autoencoders as a SAELens architecture.

Importing this package registers the ``"bilinear"`` architecture with SAELens (for
inference and training), so that ``SAE.load_from_disk``/``SAE.from_pretrained`` and
``LanguageModelSAETrainingRunner`` handle it. SAELens has no plugin entry points: import
``sae_bilinear`` before loading or training a bilinear SAE.
"""

from sae_bilinear.bilinear import (
    BilinearSAE,
    BilinearSAEConfig,
    BilinearTrainingSAE,
    BilinearTrainingSAEConfig,
    SAEInputError,
    UnliftedDecodeError,
    default_alpha_warm_up_steps,
    register,
)

register()

# After registration: the Hub helpers load through SAELens, which must know "bilinear".
from sae_bilinear.hub import bae_loader, convert_bae, from_pretrained, list_releases, push  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BilinearSAE",
    "BilinearSAEConfig",
    "BilinearTrainingSAE",
    "BilinearTrainingSAEConfig",
    "SAEInputError",
    "UnliftedDecodeError",
    "bae_loader",
    "convert_bae",
    "default_alpha_warm_up_steps",
    "from_pretrained",
    "list_releases",
    "push",
    "register",
]
