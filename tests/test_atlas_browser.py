"""The atlas in a real browser: tests/browser/check_atlas.mjs (puppeteer-core) drives Debian's chromium.

Skipped, with the reason, when chromium, node or puppeteer-core is missing: run
``bash scripts/install_browser.sh`` (CI does) to install them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from bilinear_factories import make_sae

from sae_bilinear import atlas

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NODE = shutil.which("node")
PUPPETEER = BROWSER_DIR / "node_modules" / "puppeteer-core" / "package.json"


def _missing() -> str | None:
    if CHROMIUM is None:
        return "chromium is not installed"
    if NODE is None:
        return "node is not installed"
    if not PUPPETEER.is_file():
        return f"puppeteer-core is not installed under {BROWSER_DIR / 'node_modules'}"
    return None


@pytest.mark.slow
# In CI (CI=true, set by the CI runner) the browser is installed by scripts/test.sh, so a missing
# one is a failure there, not a skip.
@pytest.mark.skipif(
    _missing() is not None and os.environ.get("CI") != "true",
    reason=f"{_missing()}: run `bash scripts/install_browser.sh`",
)
@pytest.mark.parametrize("variant", ["vanilla", "mixed"])
def test_clicking_a_row_opens_its_latent_without_console_errors(tmp_path, variant):
    sae = make_sae(
        d=12, F=30, variant=variant, lifted=True, bottleneck=5 if variant == "mixed" else None, dtype="float32", seed=7
    )
    torch.manual_seed(0)
    acts = torch.randn(10, 24, 12)
    words = ["the", " river", " runs", "\n", " past", " <b>hills</b>", " &", " mills"]
    strings = [words[i % len(words)] + ("" if i % 3 else str(i % 11)) for i in range(240)]
    site = tmp_path / "site"
    atlas.build_atlas(sae, None, acts, site, token_strings=strings, n_examples=20, n_listed=8, progress=False)
    shots = tmp_path / "shots"
    shots.mkdir()
    done = subprocess.run(  # pyright: ignore[reportCallIssue]
        [
            NODE,
            str(BROWSER_DIR / "check_atlas.mjs"),
            str(site),
            "--screenshots",
            str(shots),
            "--chromium",
            str(CHROMIUM),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output from the browser check; stderr:\n{done.stderr[-2000:]}"
    summary = json.loads(lines[-1])
    assert summary["problems"] == [] and done.returncode == 0, summary
    for name in (
        "row opens its latent",
        "top contexts visible",
        "manifold and spectrum drawn",
        "search by token",
        "next link",
    ):
        assert summary["checks"][name], name
    for shot in ("index.png", "latent.png"):
        assert (shots / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
