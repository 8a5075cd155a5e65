#!/usr/bin/env bash
# Installs what the atlas's browser check needs (tests/test_atlas_browser.py):
# Debian's chromium, Node.js with npm, and puppeteer-core under tests/browser/node_modules
# (ignored by git). Run as root on Debian/Ubuntu; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium fonts-dejavu-core)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# puppeteer-core drives the system chromium; it downloads no browser of its own.
npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
echo "browser check ready: $(chromium --version 2>/dev/null | head -1), node $(node --version)"
