#!/usr/bin/env bash
# GPU check of the bilinear kernels (issue 8): under 5 minutes on one H100.
#
# At Qwen3-0.6B sizes (d 1024, F 16384 = 16×, B 4096 tokens, TopK k 64) it prints and saves
#   1. the kernel table: autograd vs fused vs fused-under-a-budget vs the k×k TopK kernel,
#      next to SAELens's ReLU/TopK SAE steps, fp32 and bf16 weights, peak CUDA memory;
#   2. whole SAELens training steps (SAETrainer._train_step with Adam) under bf16 autocast:
#      200 steps each for SAELens standard, SAELens TopK and bilinear TopK, 50 for bilinear dense;
#   3. fused fp32 vs float64 accuracy.
# Results: benchmarks/results/gpu_check.json (and .txt). Activations are synthetic (the GPU
# machine has no network); step times do not depend on their values.
#
#   bash benchmarks/gpu_check.sh                    # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu --tiny   # dry run of every code path on a CPU (seconds)
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
TINY=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --device) DEVICE="$2"; shift 2 ;;
    --tiny) TINY=1; shift ;;
    *) echo "unknown argument: $1 (use --device cpu|cuda, --tiny)" >&2; exit 2 ;;
  esac
done

# Import sae_bilinear from this tree even where it is not pip-installed (the device machine gets
# a copy of the working tree; torch and sae_lens must already be there: it has no network).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python -c "import torch, sae_lens" || { echo "torch and sae_lens are needed (pip install -e . where there is network)" >&2; exit 1; }

OUT_DIR=benchmarks/results
mkdir -p "$OUT_DIR"
if [[ "$TINY" == 1 ]]; then
  NAME=gpu_check_dry_run
  ARGS=(--device "$DEVICE" --tiny --dtypes float32,bfloat16 --k 8 --repeats 1 --steps 3 --autocast)
else
  NAME=gpu_check
  SIZE=1024x16384x4096
  ARGS=(--device "$DEVICE" --sizes "$SIZE" --step-sizes "$SIZE" --dtypes float32,bfloat16 --k 64
        --repeats 3 --steps 200 --dense-steps 50 --autocast)
fi

if [[ "$DEVICE" == cuda* ]]; then
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: run with --device cpu --tiny for a dry run')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
python -c "import torch, sae_lens; print('torch', torch.__version__, '| sae_lens', sae_lens.__version__)"

# The whole check is bounded: it must leave time to rerun it within a 15-minute device budget.
timeout 290 python benchmarks/perf_benchmark.py "${ARGS[@]}" --out "$OUT_DIR/$NAME.json" | tee "$OUT_DIR/$NAME.txt"
