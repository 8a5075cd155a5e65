"""Per-latent ablation (`sae-bilinear ablate`): see ``sae_bilinear.hook_experiments.ablate``.

Writes ``ablate_latents.json`` and ``ablate_latents.png`` into ``--out``. By default the SAE's own model
is used (``metadata.model_name`` in its cfg.json).

    python hooks/ablate_latents.py --sae runs/<run>/sae --n-latents 16
    python hooks/ablate_latents.py --model toy            # seconds: the toy model and a toy SAE
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sae_bilinear import hook_experiments


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return hook_experiments.main("ablate", argv)


if __name__ == "__main__":
    raise SystemExit(hook_experiments.script_entry("ablate"))
