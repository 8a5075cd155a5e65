"""sae_bilinear.similarity: data-free scores of two SAEs against the explicit d'²-space computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from bilinear_factories import make_sae, permuted_copy

from sae_bilinear import BilinearSAE, analysis, similarity
from sae_bilinear.errors import ConfigError

torch.set_num_threads(1)


def explicit_operator(sae: BilinearSAE, symmetric: bool) -> torch.Tensor:
    """M = E P Eᵀ on the d'²-space, E's columns vec(l̃⊗r̃) (or vec(Q)), P = DᵀD or I."""
    left, right, down, _ = analysis.factors(sae)
    atoms = left.unsqueeze(-1) * right.unsqueeze(-2)  # [F, d', d']
    if symmetric:
        atoms = 0.5 * (atoms + atoms.transpose(-1, -2))
    E = atoms.reshape(atoms.shape[0], -1).T
    P = down.T @ down if down is not None else torch.eye(E.shape[1], dtype=E.dtype)
    return E @ P @ E.T


def explicit_similarity(a, b, symmetric):
    Ma, Mb = explicit_operator(a, symmetric), explicit_operator(b, symmetric)
    inner = (Ma * Mb).sum()
    return float(2 * inner.clamp(min=0).sqrt() / (Ma.norm() + Mb.norm()))


@pytest.mark.parametrize(
    "variant_a, variant_b, lifted",
    [
        ("vanilla", "vanilla", False),
        ("vanilla", "vanilla", True),
        ("mixed", "combined", False),
        ("vanilla", "mixed", True),
    ],
)
@pytest.mark.parametrize("symmetric", [False, True])
def test_operator_similarity_matches_explicit_d2_computation(variant_a, variant_b, lifted, symmetric):
    a = make_sae(d=4, F=9, variant=variant_a, lifted=lifted, bottleneck=5 if variant_a != "vanilla" else None, seed=1)
    b = make_sae(d=4, F=7, variant=variant_b, lifted=lifted, bottleneck=3 if variant_b != "vanilla" else None, seed=2)
    expected = explicit_similarity(a, b, symmetric)
    got = similarity.operator_similarity(a, b, symmetric=symmetric)
    assert got == pytest.approx(expected, rel=1e-10)
    # Tiling changes nothing; the score is symmetric in (a, b) and in [0, 1].
    assert similarity.operator_similarity(a, b, symmetric=symmetric, block_size=2) == pytest.approx(expected, rel=1e-10)
    assert similarity.operator_similarity(b, a, symmetric=symmetric) == pytest.approx(expected, rel=1e-10)
    assert 0.0 <= got <= 1.0
    Ma, Mb = explicit_operator(a, symmetric), explicit_operator(b, symmetric)
    assert similarity.operator_inner(a, b, symmetric=symmetric) == pytest.approx(float((Ma * Mb).sum()), rel=1e-10)


@pytest.mark.parametrize("variant", ["vanilla", "mixed"])
@pytest.mark.parametrize("lifted", [False, True])
def test_permuted_copy_is_identical(variant, lifted):
    a = make_sae(d=5, F=20, variant=variant, lifted=lifted, bottleneck=6 if variant == "mixed" else None)
    b = permuted_copy(a, rotate_bottleneck=True)
    for symmetric in (False, True):
        assert similarity.operator_similarity(a, b, symmetric=symmetric) == pytest.approx(1.0, abs=1e-12)
    match = similarity.matched_similarity(a, b)
    np.testing.assert_allclose(match.scores, 1.0, atol=1e-6)
    # The matching finds the permutation: b's partner of a's latent i is a copy of it.
    torch.testing.assert_close(b.W_left[match.cols], a.W_left[match.rows])


def test_swapping_left_and_right_only_matters_unsymmetrised():
    a = make_sae(d=5, F=10)
    b = permuted_copy(a, swap_lr=True)
    x = torch.randn(8, 5, dtype=torch.float64)
    torch.testing.assert_close(a.encode(x).sort(-1).values, b.encode(x).sort(-1).values)  # same latents
    assert similarity.operator_similarity(a, b, symmetric=True) == pytest.approx(1.0, abs=1e-12)
    assert similarity.operator_similarity(a, b, symmetric=False) < 0.99
    np.testing.assert_allclose(similarity.matched_similarity(a, b, symmetric=True).scores, 1.0, atol=1e-6)


def test_different_saes_score_below_one_and_compare_dict():
    a, b = make_sae(d=6, F=24, seed=1), make_sae(d=6, F=24, seed=2)
    result = similarity.compare(a, b)
    assert 0.0 < result["operator_similarity"] < 0.99
    assert 0.0 < result["matched_similarity"] < 1.0
    for key in (
        "operator_similarity_unsymmetrised",
        "matched_median",
        "matched_above_0.9",
        "matched_energy",
        "d_sae_a",
        "d_sae_b",
        "variant_a",
        "variant_b",
        "seconds",
    ):
        assert key in result
    json.dumps(result)  # printable as is
    assert result["operator_similarity"] == pytest.approx(similarity.operator_similarity(a, b))
    assert result["operator_similarity_unsymmetrised"] == pytest.approx(
        similarity.operator_similarity(a, b, symmetric=False)
    )
    match = similarity.matched_similarity(a, b)
    assert result["matched_similarity"] == pytest.approx(float(match.scores.mean()))
    K = similarity.cross_kernel(a, b)
    expected_energy = float(K[match.rows, match.cols].pow(2).sum() / K.pow(2).sum())
    assert result["matched_energy"] == pytest.approx(expected_energy, rel=1e-5)
    plain = similarity.compare(a, b, symmetric=False)
    assert plain["operator_similarity"] == pytest.approx(result["operator_similarity_unsymmetrised"])
    K = similarity.cross_kernel(a, b, symmetric=False)
    match = similarity.matched_similarity(a, b, symmetric=False)
    assert plain["matched_energy"] == pytest.approx(
        float(K[match.rows, match.cols].pow(2).sum() / K.pow(2).sum()), rel=1e-5
    )
    mixed = similarity.compare(make_sae(d=6, F=24, variant="mixed", bottleneck=5), a)
    assert 0 < mixed["operator_similarity"] < 1 and mixed["variant_a"] == "mixed"
    same = similarity.compare(a, permuted_copy(a))
    assert same["operator_similarity"] == pytest.approx(1.0) and same["matched_similarity"] == pytest.approx(1.0)
    # matched_energy (the authors' "partial") of a copy is the diagonal share of its own kernel.
    K = similarity.cross_kernel(a, a)
    assert same["matched_energy"] == pytest.approx(float(torch.diagonal(K).pow(2).sum() / K.pow(2).sum()))
    with pytest.raises(ValueError, match="same d_in"):
        similarity.compare(a, make_sae(d=6, F=24, lifted=True))
    with pytest.raises(ValueError, match="same d_in"):
        similarity.operator_similarity(a, make_sae(d=7, F=24))


def explicit_paper_similarity(a: BilinearSAE, b: BilinearSAE) -> float:
    """SPEC §2 verbatim: 2‖K_ab‖_F / (‖K_aa‖_F + ‖K_bb‖_F), K = (L̃ L̃'ᵀ)∘(R̃ R̃'ᵀ), no W_down."""

    def kernel(x, y):
        fx, fy = analysis.factors(x), analysis.factors(y)
        return (fx.left @ fy.left.T) * (fx.right @ fy.right.T)

    return float(2 * kernel(a, b).norm() / (kernel(a, a).norm() + kernel(b, b).norm()))


@pytest.mark.parametrize("variant_a, variant_b, lifted", [("vanilla", "vanilla", False), ("mixed", "vanilla", True)])
def test_paper_similarity_is_the_spec_formula_verbatim(variant_a, variant_b, lifted):
    a = make_sae(d=4, F=9, variant=variant_a, lifted=lifted, bottleneck=5 if variant_a == "mixed" else None, seed=3)
    b = make_sae(d=4, F=7, variant=variant_b, lifted=lifted, seed=4)
    expected = explicit_paper_similarity(a, b)
    assert similarity.paper_similarity(a, b) == pytest.approx(expected, rel=1e-10)
    assert similarity.paper_similarity(a, b, block_size=2) == pytest.approx(expected, rel=1e-10)
    result = similarity.compare(a, b, matched=False)
    assert result["paper_similarity"] == pytest.approx(expected, rel=1e-10)
    assert "operator_similarity_symmetrised" in result  # the two sit side by side
    if variant_a == "vanilla":  # without a bottleneck it is the unsymmetrised operator score
        assert result["operator_similarity_unsymmetrised"] == pytest.approx(expected, rel=1e-10)
    else:  # W_down enters the operator score, never the paper's
        assert abs(result["operator_similarity_unsymmetrised"] - expected) > 1e-6


@pytest.mark.parametrize("block_size", [0, -3, 2.5, True, None])
def test_bad_block_size_is_a_config_error(block_size):
    a = make_sae(d=4, F=6)
    with pytest.raises(ConfigError, match="block_size"):
        similarity.compare(a, a, block_size=block_size)


@pytest.mark.parametrize("lifted", [False, True])
def test_nearest_latents_are_the_largest_operator_cosines(lifted):
    sae = make_sae(d=5, F=14, lifted=lifted, seed=5)
    with torch.no_grad():  # latent 7 is latent 2 with l, r swapped and sign flipped: the same form, negated
        sae.W_left[7], sae.W_right[7] = -sae.W_right[2], sae.W_left[2]
        if lifted:
            sae.b_left[7], sae.b_right[7] = -sae.b_right[2], sae.b_left[2]
    Q = analysis.latent_matrices(sae).reshape(14, -1)
    cos = (Q @ Q.T) / (Q.norm(dim=-1, keepdim=True) * Q.norm(dim=-1))
    result = similarity.nearest(sae, 3, block_size=4)
    assert result.indices.shape == (14, 3) and result.cosines.shape == (14, 3)
    for i in range(14):
        expected = cos[i].clone()
        expected[i] = 0
        # Latents 2 and 7 tie in |cos| with everyone, so compare values, not the order of ties.
        top = expected.abs().sort(descending=True).values[:3]
        torch.testing.assert_close(result.cosines[i].abs(), top.float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(result.cosines[i], expected[result.indices[i]].float(), atol=1e-5, rtol=0)
        assert i not in result.indices[i].tolist()
    assert int(result.indices[2, 0]) == 7 and float(result.cosines[2, 0]) == pytest.approx(-1.0, abs=1e-6)


def test_nearest_composites_use_the_bottleneck_forms():
    sae = make_sae(d=4, F=10, variant="mixed", bottleneck=6, seed=6)
    Q = analysis.latent_matrices(sae).reshape(10, -1)
    C = sae.W_down.detach() @ Q  # row r: vec(Σ_j D_rj Q_j)
    cos = (C @ C.T) / (C.norm(dim=-1, keepdim=True) * C.norm(dim=-1))
    result = similarity.nearest(sae, 2, composites=True, block_size=3)
    for r in range(6):
        expected = cos[r].clone()
        expected[r] = 0
        order = expected.abs().argsort(descending=True)[:2]
        assert result.indices[r].tolist() == order.tolist()
        torch.testing.assert_close(result.cosines[r], expected[order].float(), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"k": 0}, "k"), ({"k": 2.0}, "k"), ({"block_size": 0}, "block_size"), ({"composites": True}, "W_down")],
)
def test_nearest_rejects_bad_input(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        similarity.nearest(make_sae(d=4, F=6), **kwargs)


def test_old_analysis_names_still_work_with_a_deprecation_warning():
    a = make_sae(d=4, F=6)
    with pytest.warns(DeprecationWarning, match="sae_bilinear.similarity.compare"):
        from sae_bilinear.analysis import compare
    assert compare is similarity.compare
    with pytest.warns(DeprecationWarning, match="operator_similarity"):
        assert analysis.operator_similarity(a, a) == pytest.approx(1.0)
    with pytest.raises(AttributeError, match="no_such_name"):
        analysis.no_such_name  # noqa: B018
