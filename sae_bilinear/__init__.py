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
    UnliftedDecodeError,
    register,
)

register()

__version__ = "0.1.0"

__all__ = [
    "BilinearSAE",
    "BilinearSAEConfig",
    "BilinearTrainingSAE",
    "BilinearTrainingSAEConfig",
    "UnliftedDecodeError",
    "register",
]
