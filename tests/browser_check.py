"""What the real-browser tests share: finding Debian's chromium, node and puppeteer-core, the skip
rule (a missing browser skips outside CI, fails in CI where scripts/test.sh installs it), and
running one ``tests/browser/*.mjs`` check and reading its JSON summary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NODE = shutil.which("node")
PUPPETEER = BROWSER_DIR / "node_modules" / "puppeteer-core" / "package.json"


def missing() -> str | None:
    """Why no browser check can run here, or None."""
    if CHROMIUM is None:
        return "chromium is not installed"
    if NODE is None:
        return "node is not installed"
    if not PUPPETEER.is_file():
        return f"puppeteer-core is not installed under {BROWSER_DIR / 'node_modules'}"
    return None


# In CI (CI=true, set by the CI runner) the browser is installed by scripts/test.sh, so a missing
# one is a failure there, not a skip.
needs_browser = pytest.mark.skipif(
    missing() is not None and os.environ.get("CI") != "true",
    reason=f"{missing()}: run `bash scripts/install_browser.sh`",
)


def run_check(script: str, *args: str) -> dict[str, Any]:
    """Run ``tests/browser/<script>`` with ``args`` on the system chromium; its JSON summary, which
    must report no problem (and the script must exit 0)."""
    done = subprocess.run(  # pyright: ignore[reportCallIssue]
        [NODE, str(BROWSER_DIR / script), *args, "--chromium", str(CHROMIUM)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output from the browser check; stderr:\n{done.stderr[-2000:]}"
    summary = json.loads(lines[-1])
    assert summary["problems"] == [] and done.returncode == 0, summary
    return summary
