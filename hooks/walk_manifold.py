"""Walk the manifold (`sae-bilinear walk`): see ``sae_bilinear.hook_experiments.walk``.

Writes ``walk_manifold.json`` and ``walk_manifold.png`` into ``--out``. By default the SAE's own model
is used (``metadata.model_name`` in its cfg.json).

    python hooks/walk_manifold.py --sae runs/<run>/sae --latent 7 --span 1.5
    python hooks/walk_manifold.py --model toy
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sae_bilinear import hook_experiments


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return hook_experiments.main("walk", argv)


if __name__ == "__main__":
    raise SystemExit(hook_experiments.script_entry("walk"))
