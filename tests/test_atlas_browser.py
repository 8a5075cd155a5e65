"""The atlas in a real browser: tests/browser/check_atlas.mjs (puppeteer-core) drives Debian's chromium.

Skipped, with the reason, when chromium, node or puppeteer-core is missing: run
``bash scripts/install_browser.sh`` (CI does) to install them.
"""

from __future__ import annotations

import pytest
import torch
from bilinear_factories import make_sae
from browser_check import needs_browser, run_check

from sae_bilinear import atlas


@pytest.mark.slow
@needs_browser
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
    summary = run_check("check_atlas.mjs", str(site), "--screenshots", str(shots))
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
