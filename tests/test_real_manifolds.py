"""experiments/real_manifolds.py: labelled corpus, measurements on a planted circle, and the
whole script on its --tiny setting."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from types import ModuleType

import pytest
import torch

from sae_bilinear import analysis
from sae_bilinear import experiment_utils as _common
from sae_bilinear.bilinear import BilinearTrainingSAE, BilinearTrainingSAEConfig

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def load_experiment(name: str) -> ModuleType:
    """``experiments/<name>.py`` as a module (registered, so its dataclasses resolve their module)."""
    return _common.load_script(EXPERIMENTS / f"{name}.py", f"experiments_{name}")

rm = load_experiment("real_manifolds")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_model():
    return _common.load_model(_common.TINY_MODEL)


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        rm.main(["--help"])
    assert exit_info.value.code == 0
    assert "--tiny" in capsys.readouterr().out


def test_template_labels_point_at_the_names():
    rng = random.Random(3)
    paragraph = rm.template_paragraph(rng, [0], 30)
    assert len(paragraph.names) >= 30
    for start, end, circle, cls, _ in paragraph.names:
        assert paragraph.text[start:end] == rm.CIRCLES[circle][cls]


def test_packed_labels_sit_on_the_name_tokens(tiny_model):
    tokenizer = tiny_model.tokenizer
    docs = rm.mixed_documents(
        ["In the beginning God created the heaven and the earth. " * 20] * 40, 0.3, seed=0, max_chars=20_000
    )
    packed = rm.pack(docs, tokenizer, context_size=64, max_contexts=40, prepend_bos=True)
    labelled = (packed.circle >= 0).nonzero().tolist()
    assert len(labelled) > 20
    for row, col in labelled:
        piece = tokenizer.decode([int(packed.tokens[row, col])]).strip()
        name = rm.CIRCLES[list(rm.CIRCLES)[int(packed.circle[row, col])]][int(packed.cls[row, col])]
        assert piece and name.endswith(piece), (piece, name)
    # Every one-token name in the packed text is labelled (none of the KJV filler is a name).
    single = {}
    for index, names in enumerate(rm.CIRCLES.values()):
        for cls, name in enumerate(names):
            ids = tokenizer.encode(" " + name, add_special_tokens=False)
            if len(ids) == 1:
                single[ids[0]] = (index, cls)
    assert len(single) >= 5
    for row, col in ((r, c) for r in range(packed.tokens.shape[0]) for c in range(packed.tokens.shape[1])):
        token = int(packed.tokens[row, col])
        if token in single:
            assert (int(packed.circle[row, col]), int(packed.cls[row, col])) == single[token]
    assert (packed.tokens[:, 0] == tokenizer.bos_token_id if tokenizer.bos_token_id is not None else True).all()  # pyright: ignore[reportAttributeAccessIssue]


def _planted_circle(n: int = 700, d: int = 64, seed: int = 0) -> rm.Circle:  # pyright: ignore[reportInvalidTypeForm]
    """Seven classes on a circle in a known plane, on top of a large shared direction."""
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(d, 3, generator=g, dtype=torch.float64)).Q
    cls = torch.randint(0, 7, (n,), generator=g)
    theta = 2 * math.pi * cls.double() / 7
    x = (
        3 * q[:, 2]
        + torch.stack([theta.cos(), theta.sin()], 1) @ q[:, :2].T
        + 0.1 * torch.randn(n, d, generator=g, dtype=torch.float64)
    )
    return rm._circle_from("week", 7, x.float(), cls, torch.arange(n))


def test_readouts_find_a_planted_pair_and_beat_random():
    circle = _planted_circle()
    assert circle.cyclic and circle.plane_share > 0.95
    g = torch.Generator().manual_seed(1)
    u = circle.u
    d = u.shape[1]
    noise = torch.randn(12, d, generator=g, dtype=torch.float64)
    w = torch.cat([noise[:5], circle.plane.T, noise[5:]])  # latents 5 and 6 read the plane
    features = u @ w.T
    background = rm.unit(torch.randn(400, d, generator=g, dtype=torch.float64))
    split = torch.arange(400) % 2 == 0
    out = rm.readouts(features, circle, background @ w.T, split)
    assert tuple(out["pair_angle"]["latents"]) == (5, 6)
    assert out["pair_angle"]["r2_heldout"] > 0.9
    assert out["single_angle"]["r2_heldout"] < 0.7  # one coordinate is not the circle
    assert out["latents_for_90"] == 2
    random_only = rm.readouts(u @ noise.T, circle, background @ noise.T, split)
    assert random_only["pair_angle"]["r2_heldout"] < out["pair_angle"]["r2_heldout"] - 0.15
    ceiling = rm.ceilings(circle)
    assert ceiling["angle_r2_from_plane"] > 0.9


def test_tiling_counts_the_class_selective_latents():
    circle = _planted_circle(n=350)
    g = torch.Generator().manual_seed(0)
    f = 0.1 * torch.rand(350, 10, generator=g, dtype=torch.float64)
    f[:, 9] += 5.0  # a big latent, on every token alike: not selective
    f[torch.arange(350), (circle.cls % 3).long()] += 1.0  # three latents tile the seven classes
    background = 0.1 * torch.rand(500, 10, generator=g, dtype=torch.float64)
    background[:, 9] += 5.0
    t = rm.tiling(f, circle, background)
    assert t["distinct_strongest"] == 3 and t["selective_latents"] == 3
    assert set(t["strongest"]) == {0, 1, 2}


@pytest.mark.slow
def test_tiny_run(tmp_path, tiny_model):
    out = tmp_path / "out"
    results = rm.main(
        [
            "--tiny",
            "--out",
            str(out),
            "--cache",
            str(tmp_path / "cache"),
            "--runs",
            "bilinear:vanilla:unlifted:0.1",
            "bilinear:mixed:lifted:0.1",
            "topk:4",
        ],
        model=tiny_model,
    )
    stored = json.loads((out / "results.json").read_text())
    assert stored["name_share"]["eval"]["week"] > 0 and stored["name_share"]["eval"]["year"] > 0
    names = [r["name"] for r in stored["dictionaries"]]
    assert names[:2] == ["random signed (48)", "bilinear init (untrained)"] and "SAELens TopK k=4" in names
    for entry in results["dictionaries"]:
        for circle in ("week", "year"):
            r = entry["circles"][circle]["readouts"]
            # In-sample, the best pair can never do worse than the best single latent.
            assert r["pair_angle"]["r2_chosen"] >= r["single_angle"]["r2_chosen"] - 1e-9
            assert len(r["greedy_plane"]["r2_heldout"]) == rm.GREEDY_MAX
            assert 1 <= entry["circles"][circle]["tiling"]["distinct_strongest"] <= rm.CIRCLES[circle].__len__()
    mixed = next(e for e in results["dictionaries"] if e["name"].startswith("mixed"))
    assert 0.0 <= mixed["circles"]["week"]["geometry"]["best_composite"]["max_angle"] <= 90.0
    for png in ("circles.png", "pairs.png", "r2.png", "composites.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # A second run reuses the stored activations and SAEs: same numbers.
    again = rm.main(
        [
            "--tiny",
            "--out",
            str(tmp_path / "again"),
            "--cache",
            str(tmp_path / "cache"),
            "--runs",
            "bilinear:vanilla:unlifted:0.1",
            "--no-search",
        ],
        model=tiny_model,
    )
    first = next(e for e in results["dictionaries"] if e["name"].startswith("vanilla"))
    second = next(e for e in again["dictionaries"] if e["name"].startswith("vanilla"))
    for key in ("pair_angle", "single_angle", "pair_feature"):
        one, two = first["circles"]["week"]["readouts"][key], second["circles"]["week"]["readouts"][key]
        assert one["r2_heldout"] == pytest.approx(two["r2_heldout"], abs=1e-6)


def test_plane_rows_matches_the_composites_energy():

    torch.manual_seed(0)
    sae = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=12, d_sae=20, variant="mixed", lifted=True, bottleneck=8))
    plane = torch.linalg.qr(torch.randn(12, 2, dtype=torch.float64)).Q
    lifted_plane = torch.cat([torch.zeros(1, 2, dtype=plane.dtype), plane])
    shares = []
    for row in range(8):
        c = analysis.composite_matrix(sae, analysis.bottleneck_weights(sae, row)).double()
        shares.append(float((c @ lifted_plane).pow(2).sum() / c.pow(2).sum()))
    assert rm.plane_rows(sae, plane, 8) == sorted(range(8), key=lambda k: -shares[k])


@pytest.mark.slow
def test_width_and_seeds_tiny(tmp_path, tiny_model):
    width_and_seeds = load_experiment("width_and_seeds")

    results = width_and_seeds.main(
        [
            "--tiny",
            "--out",
            str(tmp_path / "out"),
            "--cache",
            str(tmp_path / "cache"),
            "--expansions",
            "1",
            "2",
            "--seeds",
            "0",
            "1",
        ],
        model=tiny_model,
    )
    assert [r["d_sae"] for r in results["width"]] == [32, 64]
    assert all(r["tokens"] == results["width"][0]["tokens"] for r in results["width"])  # equal tokens
    pair = results["similarity"][0]
    assert pair["seeds"] == [0, 1]
    assert 0.0 < pair["paper_formula"] < 1.0 and 0.0 < pair["operator_similarity_symmetrised"] <= 1.0
    # Seed 0 at expansion 2 is the same SAE in both lists (cached, not retrained).
    assert results["seeds"][0]["reconstruction_error"] == results["width"][1]["reconstruction_error"]
    assert (tmp_path / "out" / "width.png").read_bytes()[:4] == b"\x89PNG"


def test_factor_report_sees_a_shared_factor():
    from types import SimpleNamespace

    circle = _planted_circle(n=140)
    shared = circle.u.mean(0)
    d = shared.shape[0]
    left = torch.randn(4, d, dtype=torch.float64)
    right = torch.randn(4, d, dtype=torch.float64)
    left[1], right[1] = shared, circle.plane[:, 0]
    left[2], right[2] = 3 * circle.plane[:, 1], -shared
    sae = SimpleNamespace(W_left=left.float(), W_right=right.float())
    report = rm.factor_report(sae, (1, 2), shared, circle)
    assert report[0]["left_cos_shared"] == pytest.approx(1.0, abs=1e-5)
    assert report[0]["right_plane_share"] == pytest.approx(1.0, abs=1e-5)
    assert report[1]["right_cos_shared"] == pytest.approx(1.0, abs=1e-5)
    assert report[1]["left_plane_share"] == pytest.approx(1.0, abs=1e-5)
    assert report[0]["right_cos_shared"] < 0.2


def test_calendar_order():
    assert rm.calendar_order([0, 1, 2, 4, 6], 7)
    assert rm.calendar_order([5, 6, 0, 2, 3], 7)  # starts anywhere
    assert rm.calendar_order([3, 2, 1, 0, 11], 12)  # backwards
    assert not rm.calendar_order([0, 2, 1, 3], 7)
    assert not rm.calendar_order([0, 1], 7) and not rm.calendar_order([1, 1, 2], 7)
