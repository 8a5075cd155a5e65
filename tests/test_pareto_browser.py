"""A sweep's pareto.html in a real browser: tests/browser/check_pareto.mjs (puppeteer-core) drives
Debian's chromium, as tests/test_atlas_browser.py does for the atlas.

The sweep folder is written by :func:`sae_bilinear.sweep_report.write_results` from a table of
made-up members (no training): every finished member must be a drawn point whose tooltip names
it, with no console error. Skipped, with the reason, when chromium, node or puppeteer-core is
missing: run ``bash scripts/install_browser.sh`` (CI does; there a missing browser fails).
"""

from __future__ import annotations

import pytest
from browser_check import needs_browser, run_check

from sae_bilinear import sweep_report


def _members() -> list[dict]:
    rows = []
    for variant, base in (("vanilla", 0.30), ("mixed", 0.25)):
        for step, alpha in enumerate((0.0, 0.1, 0.2)):
            rows.append(
                {
                    "name": f"{variant}-a{round(alpha * 100)}",
                    "status": "done",
                    "variant": variant,
                    "alpha": alpha,
                    "lifted": True,
                    "d_sae": 64,
                    "error": base + 0.05 * step,
                    "hoyer_density": 0.8 - 0.2 * step,
                    "l0": 20.0 - 4 * step,
                    "ce_spliced": 4.5 + 0.1 * step,
                    "ce_loss_recovered": 0.8 - 0.05 * step,
                    "kl": 1.6 + 0.1 * step,
                }
            )
    rows.append(
        {
            "name": "vanilla-unlifted",
            "status": "done",
            "variant": "vanilla",
            "alpha": 0.3,
            "lifted": False,
            "error": 0.5,
            "hoyer_density": 0.2,
            "ce_spliced": None,
            "splice_skipped": "unlifted bilinear SAE",
        }
    )
    rows.append({"name": "mixed-a-100", "status": "failed", "error": "ConfigError: alpha must be >= 0"})
    return rows


@pytest.mark.slow
@needs_browser
def test_every_member_is_a_point_whose_tooltip_names_it(tmp_path):
    result = {
        "config": "sweep.yaml",
        "members": _members(),
        "model_passes": 1,
        "groups": 1,
        "seconds": 1.0,
        "runner": "local",
    }
    sweep_report.write_results(tmp_path, result)
    shot = tmp_path / "pareto.png.browser.png"
    summary = run_check("check_pareto.mjs", str(tmp_path), "--screenshot", str(shot))
    for name in (
        "one legend entry per curve",
        "every member drawn",
        "hover names each member",
        "spliced members show ce_spliced",
    ):
        assert summary["checks"][name], name
    # 7 finished members with numbers (the failed one is not plotted), each hovered once
    assert sorted(summary["hovered"]) == sorted(r["name"] for r in _members() if r["status"] == "done")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
