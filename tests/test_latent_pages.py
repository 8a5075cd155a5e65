"""sae_bilinear.latent_pages: one latent written as HTML (3D manifold), PNG and JSON."""

from __future__ import annotations

import json

import pytest
import torch
from bilinear_factories import make_sae

from sae_bilinear import latent_pages

torch.set_num_threads(1)


@pytest.mark.parametrize("variant", ["vanilla", "mixed"])
def test_analyze_latent_writes_html_png_json(tmp_path, variant):
    sae = make_sae(d=8, F=16, variant=variant, bottleneck=6 if variant == "mixed" else None, dtype="float32")
    x = torch.randn(300, 8)
    contexts = [f"the <b>context</b> of token {i}\nnext line" for i in range(300)]
    tokens = [f"<tok{i}>" for i in range(300)]
    report = latent_pages.analyze_latent(sae, 2, x, contexts, tmp_path, tokens=tokens, n=60)
    for suffix in ("html", "png", "json"):
        path = tmp_path / f"latent_2.{suffix}"
        assert path.exists() and path.stat().st_size > 0
        assert report[suffix] == str(path)
    data = json.loads((tmp_path / "latent_2.json").read_text())
    for key in (
        "latent",
        "mode",
        "variant",
        "eigenvalues",
        "eigenvectors",
        "stats",
        "usage",
        "top_tokens",
        "bottom_tokens",
        "members",
        "files",
    ):
        assert key in data
    assert data["mode"] == ("cluster" if variant == "mixed" else "latent")
    assert len(data["eigenvalues"]) == (2 if variant == "vanilla" else len(data["eigenvalues"])) and data["eigenvalues"]
    assert data["eigenvectors"][0]["top_dims"][0].keys() == {"dim", "value"}
    assert data["top_tokens"][0]["token"].startswith("<tok") and "context" in data["top_tokens"][0]
    assert data["top_tokens"][0]["activation"] >= data["top_tokens"][-1]["activation"]
    html = (tmp_path / "latent_2.html").read_text()
    assert "plotly-graph-div" in html and "Plotly.newPlot" in html
    assert "plotly.js v" in html and 'src="http' not in html  # plotly.js inline: works offline
    assert html.count("Plotly.newPlot") == (3 if variant == "mixed" else 2)
    assert "&lt;tok" in html or "\\u003ctok" in html  # hover text escaped, not markup
    assert (tmp_path / "latent_2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
