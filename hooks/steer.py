"""Steering (`sae-bilinear steer`): see ``sae_bilinear.hook_experiments.steer``.

Writes ``steer.json`` and ``steer.png`` into ``--out``. By default the SAE's own model
is used (``metadata.model_name`` in its cfg.json).

    python hooks/steer.py --sae runs/<run>/sae --latent 42 --strengths 0,0.5,1,2
    python hooks/steer.py --model toy
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sae_bilinear import hook_experiments


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return hook_experiments.main("steer", argv)


if __name__ == "__main__":
    raise SystemExit(hook_experiments.script_entry("steer"))
