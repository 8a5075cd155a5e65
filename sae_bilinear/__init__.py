"""sae-bilinear: bilinear sparse autoencoders as a SAELens architecture.

The ``"bilinear"`` architecture is registered with SAELens (for inference and training) by
the time SAELens is used, so ``SAE.load_from_disk``/``SAE.from_pretrained`` and
``LanguageModelSAETrainingRunner`` handle it:

* in any process, without importing this package, through ``sae_bilinear_autoregister.pth``
  (installed with the package; ``SAE_BILINEAR_NO_AUTOREGISTER=1`` turns it off; see
  :mod:`sae_bilinear_autoregister`);
* and whenever this package is imported: at once if SAELens is already loaded, else as soon
  as it is.

Importing the package is cheap: the public names below load their modules (torch, SAELens)
on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

try:
    import sae_bilinear_autoregister
except ModuleNotFoundError:  # an install made before this top-level module existed
    sae_bilinear_autoregister = None

__version__ = "0.1.0"

_PUBLIC: dict[str, str] = {
    "BilinearSAE": "sae_bilinear.bilinear",
    "BilinearSAEConfig": "sae_bilinear.bilinear",
    "BilinearTrainingSAE": "sae_bilinear.bilinear",
    "BilinearTrainingSAEConfig": "sae_bilinear.bilinear",
    "SAEInputError": "sae_bilinear.bilinear",
    "UnliftedDecodeError": "sae_bilinear.bilinear",
    "default_alpha_warm_up_steps": "sae_bilinear.bilinear",
    "register": "sae_bilinear.bilinear",
    "BilinearEvaluator": "sae_bilinear.saelens_evals",
    "bae_loader": "sae_bilinear.hub",
    "convert_bae": "sae_bilinear.hub",
    "from_pretrained": "sae_bilinear.hub",
    "list_releases": "sae_bilinear.hub",
    "push": "sae_bilinear.hub",
}
"""Public name → the module that defines it, imported on first access."""

__all__ = [
    "BilinearEvaluator",
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

if TYPE_CHECKING:
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
    from sae_bilinear.hub import bae_loader, convert_bae, from_pretrained, list_releases, push
    from sae_bilinear.saelens_evals import BilinearEvaluator


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")  # sae_bilinear.train.X after `import sae_bilinear`
    else:
        raise AttributeError(f"module 'sae_bilinear' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


# Last, once the names above exist: registering may import the model, which imports this package.
if sae_bilinear_autoregister is not None:
    sae_bilinear_autoregister.ensure_registration()
else:
    import warnings

    warnings.warn(
        "sae-bilinear's start-up module sae_bilinear_autoregister is not installed (the install is older "
        "than this code): reinstall it (pip install -e <checkout> --no-deps, or pip install sae-bilinear); "
        "registering 'bilinear' with SAELens now instead",
        stacklevel=2,
    )
    importlib.import_module("sae_bilinear.bilinear")
