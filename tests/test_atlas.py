"""sae_bilinear.atlas: the static site of every latent, checked against the analysis functions."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from bilinear_factories import make_sae

from sae_bilinear import analysis, atlas, interventions, similarity
from sae_bilinear.errors import ConfigError, OutputExistsError

torch.set_num_threads(1)


def read_js(path: Path, callback: str) -> dict:
    text = path.read_text(encoding="utf-8")
    match = re.fullmatch(rf"{callback}\((.*)\);\n", text, re.S)
    assert match, f"{path} is not a {callback}(...) data file"
    return json.loads(match.group(1))


def dequant(packed: dict) -> torch.Tensor:
    return torch.tensor(packed["q"], dtype=torch.float64) * packed["s"] / atlas.QUANT


def tiny(variant="vanilla", lifted=True, F=24, d=10):
    sae = make_sae(
        d=d, F=F, variant=variant, lifted=lifted, bottleneck=6 if variant == "mixed" else None, dtype="float32", seed=4
    )
    torch.manual_seed(1)
    acts = torch.randn(12, 20, d)
    acts[0, 3] = 0  # an invalid (zero) token
    strings = [f"t{i % 37}" for i in range(240)]
    return sae, acts, strings


def build(tmp_path, variant="vanilla", lifted=True, model=None, **kwargs):
    sae, acts, strings = tiny(variant, lifted)
    out = tmp_path / "site"
    options = {"token_strings": strings, "n_examples": 15, "n_listed": 5, "n_neighbours": 3, "progress": False} | kwargs
    result = atlas.build_atlas(sae, model, acts, out, **options)
    return sae, acts.reshape(-1, acts.shape[-1]), strings, out, result


def test_site_layout_is_static_relative_and_loads_plotly_once(tmp_path):
    sae, _, _, out, result = build(tmp_path)
    assert result.index == out / "index.html" and result.n_latents == 24 and result.n_composites == 0
    assert result.n_tokens == 240 and result.data_bytes < result.site_bytes
    plotly_copies = [p for p in out.rglob("*") if p.name == "plotly.min.js"]
    assert plotly_copies == [out / "assets" / "plotly.min.js"]
    assert result.site_bytes - result.data_bytes == plotly_copies[0].stat().st_size
    for page in ("index.html", "latent.html"):
        html = (out / page).read_text()
        assert 'src="assets/plotly.min.js"' in html and "plotly.js v" not in html  # linked once, never inlined
        for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert not ref.startswith(("/", "http", "file:")) and (out / ref).exists(), ref
    assert len(list((out / "data" / "items" / "L" / "0").glob("*.js"))) == 24
    # Nothing names the folder it was written to: a moved site still works.
    for path in out.rglob("*.js"):
        if path.name != "plotly.min.js":
            assert str(tmp_path) not in path.read_text(encoding="utf-8"), path
    summary = json.loads((out / "atlas.json").read_text())
    assert summary["format"] == atlas.ATLAS_FORMAT and set(summary["seconds"]) >= {"scoring", "pages", "total"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_index_rows_agree_with_the_analysis_functions(tmp_path):
    sae, x, strings, out, _ = build(tmp_path)
    index = read_js(out / "data" / "index.js", "atlasIndex")
    col = {name: i for i, name in enumerate(index["columns"])}
    rows = {row[col["item"]]: row for row in index["rows"]}
    assert set(rows) == {f"L{j}" for j in range(24)}
    usage = analysis.latent_usage(sae, x)
    spec = analysis.latent_spectrum(sae)
    for j in (0, 7, 23):
        row = rows[f"L{j}"]
        assert row[col["frequency"]] == pytest.approx(float(usage["frequency"][j]), rel=1e-3, abs=1e-6)
        assert row[col["max_abs"]] == pytest.approx(float(usage["max_abs"][j]), rel=1e-3)
        stats = analysis.composite_stats(sae, analysis.latent_weights(sae, j), x)
        assert row[col["density"]] == pytest.approx(stats.density, rel=1e-3)
        assert row[col["effective_rank"]] == pytest.approx(
            float(analysis.effective_rank(spec.eigenvalues[j])), rel=1e-3
        )
        assert row[col["importance"]] == pytest.approx(float(analysis.importance(spec.eigenvalues[j])), rel=1e-3)
        assert row[col["support"]] == 1
        top = analysis.top_activations(sae, x, j, n=5, sign="positive")
        assert row[col["top_tokens"]][0] == strings[int(top.indices[0])]


def test_item_files_hold_the_manifold_contexts_and_neighbours(tmp_path):
    sae, x, strings, out, _ = build(tmp_path)
    neighbours = similarity.nearest(sae, 3)
    for j in (2, 11):
        record = read_js(out / atlas.item_path("L", j), "atlasItem")
        assert record["kind"] == "L" and record["id"] == j
        top = analysis.top_activations(sae, x, j, n=30, sign="both")  # 15 highest + 15 lowest
        points = record["points"]
        assert set(points["pos"]) == set(top.indices.tolist())
        values = dequant(points["v"])
        assert (values[:-1] >= values[1:] - 1e-9).all()  # highest first
        expected = dict(zip(top.indices.tolist(), top.values.tolist(), strict=False))
        scale = max(abs(v) for v in expected.values())
        for p, v in zip(points["pos"], values.tolist(), strict=False):
            assert v == pytest.approx(expected[p], abs=scale / atlas.QUANT)
        # The 3D coordinates are the manifold view of analysis.top_activations (same axes).
        order = {p: i for i, p in enumerate(top.indices.tolist())}
        xyz = torch.stack([dequant(points[a]) for a in "xyz"], 1)
        want = top.coordinates[[order[p] for p in points["pos"]]].double()
        assert (xyz - want).abs().max() <= want.abs().max() / atlas.QUANT * 1.01 + 1e-6
        assert record["axes"] == top.axis_labels
        assert [n[1] for n in record["neighbours"]] == neighbours.indices[j].tolist()
        assert record["eigenvalues"] == pytest.approx(analysis.latent_spectrum(sae, j).eigenvalues.tolist(), rel=1e-3)
        assert record["promote"] is None  # no model given


def test_corpus_rebuilds_every_token_string(tmp_path):
    _, _, strings, out, _ = build(tmp_path)
    corpus = read_js(out / "data" / "corpus.js", "atlasCorpus")
    assert [corpus["vocab"][i] for i in corpus["ids"]] == strings
    assert corpus["sequence_length"] == 20  # dim 1 of the [12, 20, d] activations
    meta = read_js(out / "data" / "meta.js", "atlasMeta")
    assert meta["n_latents"] == 24 and meta["templates"]["manifold"]["data"][0]["type"] == "scatter3d"
    assert meta["logits_note"] == "no model with an unembedding (W_U) was given"


def test_mixed_sae_lists_every_composite(tmp_path):
    sae, x, _, out, result = build(tmp_path, variant="mixed")
    assert result.n_composites == 6
    index = read_js(out / "data" / "index.js", "atlasIndex")
    col = {name: i for i, name in enumerate(index["columns"])}
    rows = {row[col["item"]]: row for row in index["rows"]}
    assert {k for k in rows if k.startswith("C")} == {f"C{r}" for r in range(6)}
    down = sae.W_down.detach()
    for r in (0, 5):
        row, record = rows[f"C{r}"], read_js(out / atlas.item_path("C", r), "atlasItem")
        stats = analysis.composite_stats(sae, down[r], x)
        assert row[col["density"]] == pytest.approx(stats.density, rel=1e-3)
        assert row[col["effective_rank"]] == pytest.approx(stats.effective_rank, rel=1e-3)
        assert row[col["importance"]] == pytest.approx(stats.importance, rel=1e-3)
        assert row[col["top3_share"]] == pytest.approx(stats.captured, rel=1e-3)
        assert row[col["support"]] == stats.support
        h = analysis.composite_activations(sae, x, down[r])
        peak = 2 * analysis.composite_spectrum(sae, down[r]).eigenvalues.abs().max()  # ||ũ||² = 2 (lifted)
        valid = x.norm(dim=-1) > 0
        frequency = float((h[valid].abs() >= sae.cfg.activity_threshold * peak).double().mean())
        assert row[col["frequency"]] == pytest.approx(frequency, rel=1e-3, abs=1e-6)
        assert {m[1] for m in record["members"]} <= set(range(24)) and record["members"][0][0] == "L"
        top = analysis.top_activations(sae, x, weights=down[r], n=30)
        assert set(record["points"]["pos"]) == set(top.indices.tolist())


def test_logit_effects_through_the_unembedding(tmp_path):
    sae, _, _ = tiny()
    W_U = torch.randn(10, 50)
    model = SimpleNamespace(W_U=W_U, tokenizer=None)
    _, _, _, out, _ = build(tmp_path, model=model, n_logits=4)
    record = read_js(out / atlas.item_path("L", 5), "atlasItem")
    effect = interventions.latent_directions(sae)[5].detach() @ W_U
    assert [t for t, _ in record["promote"]] == [f"#{i}" for i in effect.topk(4).indices.tolist()]
    assert [t for t, _ in record["suppress"]] == [f"#{i}" for i in effect.topk(4, largest=False).indices.tolist()]
    assert record["promote"][0][1] == pytest.approx(float(effect.max()), rel=1e-3)


def test_unlifted_sae_has_no_logit_effects(tmp_path):
    model = SimpleNamespace(W_U=torch.randn(10, 50), tokenizer=None)
    _, _, _, out, _ = build(tmp_path, lifted=False, model=model)
    assert read_js(out / atlas.item_path("L", 0), "atlasItem")["promote"] is None
    assert "unlifted" in read_js(out / "data" / "meta.js", "atlasMeta")["logits_note"]


def test_existing_output_is_never_replaced_silently(tmp_path):
    sae, acts, strings = tiny()
    options = {"token_strings": strings, "n_examples": 4, "n_listed": 2, "progress": False}
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="mine"):
        atlas.build_atlas(sae, None, acts, mine, **options)
    with pytest.raises(OutputExistsError, match="not an atlas"):
        atlas.build_atlas(sae, None, acts, mine, overwrite=True, **options)
    assert (mine / "notes.txt").read_text() == "keep me"
    site = tmp_path / "site"
    atlas.build_atlas(sae, None, acts, site, **options)
    with pytest.raises(OutputExistsError, match="overwrite"):
        atlas.build_atlas(sae, None, acts, site, **options)
    atlas.build_atlas(sae, None, acts, site, overwrite=True, title="second", **options)
    assert read_js(site / "data" / "meta.js", "atlasMeta")["title"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "site"]  # no staging folder left


@pytest.mark.parametrize(
    "change, field",
    [
        ({"n_examples": 0}, "n_examples"),
        ({"n_listed": 9, "n_examples": 4}, "n_listed"),
        ({"batch_size": -1}, "batch_size"),
        ({"n_neighbours": 1.5}, "n_neighbours"),
        ({"token_strings": ["a", "b"]}, "token_strings"),
        ({"data": torch.randn(30, 7)}, "d_in"),
        ({"data": torch.full((30, 10), float("nan"))}, "NaN"),
        ({"data": torch.zeros(3, 5, dtype=torch.long)}, "model"),
        ({"data": [[0.0] * 10]}, "tokens_or_activations"),
        ({"sequence_length": 0}, "sequence_length"),
        ({"title": 3}, "title"),
        ({"hook_name": ["blocks.0"]}, "hook_name"),
    ],
)
def test_bad_input_is_a_config_error_naming_the_field(tmp_path, change, field):
    sae, acts, strings = tiny()
    options = {"token_strings": strings, "n_examples": 4, "n_listed": 2, "progress": False} | change
    data = options.pop("data", acts)
    if "data" in change and "token_strings" not in change:
        options.pop("token_strings")
    with pytest.raises(ConfigError, match=field):
        atlas.build_atlas(sae, None, data, tmp_path / "site", **options)
    assert not list(tmp_path.iterdir())  # nothing left behind


@pytest.mark.slow
def test_atlas_of_token_ids_on_smollm2(tmp_path, smollm2_model):
    model = smollm2_model
    sae = make_sae(d=576, F=32, lifted=True, dtype="float32", seed=2)
    sae.cfg.metadata.hook_name = "blocks.3.hook_resid_pre"
    text = ["In the beginning God created the heaven and the earth.", "And the earth was without form, and void."]
    rows = [model.to_tokens(t, prepend_bos=True)[0, :10] for t in text]
    tokens = torch.stack(rows)
    result = atlas.build_atlas(sae, model, tokens, tmp_path / "site", n_examples=6, n_listed=3, progress=False)
    assert result.n_tokens == 2 * 9  # BOS dropped
    corpus = read_js(tmp_path / "site" / "data" / "corpus.js", "atlasCorpus")
    words = [model.tokenizer.decode([int(t)]) for t in tokens[:, 1:].reshape(-1)]
    assert [corpus["vocab"][i] for i in corpus["ids"]] == words
    record = read_js(tmp_path / "site" / atlas.item_path("L", 3), "atlasItem")
    effect = interventions.unembedding_effect(model, sae, 3)
    assert effect is not None
    assert record["promote"][0][0] == model.tokenizer.decode([int(effect.argmax())])
