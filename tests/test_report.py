"""sae_bilinear.report: report.html links to the SAE's atlas by a relative path."""

from __future__ import annotations

import re

import pytest
import torch
from bilinear_factories import make_sae

from sae_bilinear import atlas, report
from sae_bilinear.errors import DataFileError

METRICS = {
    "model": "tiny", "hook": "blocks.0.hook_resid_pre", "tokens": 100, "eval_tokens": 20, "seconds": 1.0,
    "ce_clean": 3.0, "ce_spliced": 3.5, "ce_mean_ablated": 6.0, "ce_zero_ablated": 8.0,
    "hoyer_density": 0.5, "reconstruction_error": 0.3,
}
HISTORY = [
    {
        "step": s,
        "reconstruction_error": 1.0 / (s + 1),
        "explained_variance": 0.1 * s,
        "hoyer_density": 0.5,
        "alpha": 0.1,
    }
    for s in range(3)
]


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory):
    sae = make_sae(d=6, F=10, lifted=True, dtype="float32")
    site = tmp_path_factory.mktemp("runs") / "atlas"
    atlas.build_atlas(sae, None, torch.randn(40, 6), site, n_examples=4, n_listed=2, progress=False)
    return site


def test_report_links_to_the_atlas_relatively(tmp_path, atlas_dir):
    out = tmp_path / "run"
    out.mkdir()
    page = report.write_report(out, METRICS, HISTORY, [], atlas_dir=atlas_dir).read_text()
    links = re.findall(r'<a href="([^"]*index\.html)">the latent atlas</a>', page)
    assert len(links) == 1 and not links[0].startswith("/")
    assert (out / links[0]).resolve() == (atlas_dir / "index.html").resolve()
    assert "10 latents" in page
    without = report.write_report(out, METRICS, HISTORY, []).read_text()
    assert "latent atlas" not in without


def test_report_refuses_a_folder_that_is_not_an_atlas(tmp_path):
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataFileError, match="nothing"):
        report.write_report(tmp_path, METRICS, HISTORY, [], atlas_dir=tmp_path / "nothing")
