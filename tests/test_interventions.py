"""Intervention hooks on a toy transformer: exactness, SAELens compatibility, cleanup, bad input."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.sae import SAEMetadata
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

from sae_bilinear import BilinearSAE, BilinearSAEConfig, UnliftedDecodeError
from sae_bilinear import interventions as iv
from sae_bilinear.toy import TOY_HOOK, sample_tokens

torch.set_num_threads(1)
HOOK = TOY_HOOK


@pytest.fixture(scope="module")
def tokens(toy):
    return sample_tokens(toy[0], 4, 32, seed=7)


@pytest.fixture(scope="module")
def activations(toy, tokens):
    model, _ = toy
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=HOOK)
    return cache[HOOK]


def hooks_left(model) -> int:
    return sum(len(point._forward_hooks) for point in model.hook_dict.values())


def unlifted_sae(d: int) -> BilinearSAE:
    return BilinearSAE(BilinearSAEConfig(d_in=d, d_sae=16, metadata=SAEMetadata(hook_name=HOOK)))


# ------------------------------------------------------------------------------------------
# splicing
# ------------------------------------------------------------------------------------------


def test_splice_with_error_and_no_edit_reproduces_the_clean_logits(toy, tokens):
    model, sae = toy
    with torch.no_grad():
        clean = model(tokens)
        kept = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, iv.splice_with_error_hook(sae))])
        identity_edit = model.run_with_hooks(
            tokens, fwd_hooks=[(HOOK, iv.splice_with_error_hook(sae, edit=lambda f: f.clone()))]
        )
    torch.testing.assert_close(kept, clean, rtol=0, atol=0)
    torch.testing.assert_close(identity_edit, clean, rtol=1e-5, atol=1e-5)
    assert hooks_left(model) == 0


def test_splice_matches_hooked_sae_transformer(toy, tokens):
    model, sae = toy
    with torch.no_grad():
        ours = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, iv.splice_hook(sae))])
        saelens = model.run_with_saes(tokens, saes=[sae])
        clean = model(tokens)
    torch.testing.assert_close(ours, saelens, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, clean, atol=1e-3)  # the splice does change the model


def test_ablating_a_latent_removes_exactly_its_contribution(toy, activations):
    _, sae = toy
    x = activations
    with torch.no_grad():
        spliced = iv.splice_hook(sae)(x)
        for j in (0, 5, sae.cfg.d_sae - 1):
            contribution = iv.latent_contribution(sae, x, j)
            assert contribution.abs().max() > 1e-4
            ablated = iv.ablate_hook(sae, [j], keep_error=False)(x)
            torch.testing.assert_close(spliced - ablated, contribution, rtol=1e-4, atol=1e-5)
            with_error = iv.ablate_hook(sae, j)(x)  # keep_error=True by default
            torch.testing.assert_close(x - with_error, contribution, rtol=1e-4, atol=1e-5)
        # The contributions of all latents add up to x̂.
        total = sum(iv.latent_contribution(sae, x, j) for j in range(sae.cfg.d_sae))
        torch.testing.assert_close(total, spliced, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant", ["mixed", "combined", "ordered"])
def test_contributions_of_mixed_and_ordered_variants(activations, variant):
    """g = DᵀDf spreads a latent over its bottleneck partners; the contribution accounts for it."""
    torch.manual_seed(0)
    sae = BilinearSAE(
        BilinearSAEConfig(d_in=32, d_sae=48, variant=variant, lifted=True, metadata=SAEMetadata(hook_name=HOOK))
    )
    x = activations
    with torch.no_grad():
        spliced = iv.splice_hook(sae)(x)
        directions = iv.latent_directions(sae)
        assert directions.shape == (48, 32)
        for j in (0, 47):
            torch.testing.assert_close(directions[j], iv.latent_direction(sae, j))
            ablated = iv.ablate_hook(sae, j, keep_error=False)(x)
            torch.testing.assert_close(spliced - ablated, iv.latent_contribution(sae, x, j), rtol=1e-4, atol=1e-5)
        total = sum(iv.latent_contribution(sae, x, j) for j in range(48))
        torch.testing.assert_close(total, spliced, rtol=1e-4, atol=1e-4)


def test_mean_clamp_scale_and_steer_edit_one_latent(toy, tokens, activations):
    model, sae = toy
    x = activations
    j = 3
    with torch.no_grad():
        f = sae.encode(x)[..., j : j + 1]
        contribution = iv.latent_contribution(sae, x, j)
        per_unit = contribution / f  # ||x|| · direction_j
        means = iv.latent_means(model, sae, tokens)
        assert means.shape == (sae.cfg.d_sae,)
        torch.testing.assert_close(means[j], sae.encode(x)[..., j].mean(), rtol=1e-5, atol=1e-6)

        mean_ablated = iv.ablate_hook(sae, [j], mode="mean", means=means)(x)
        torch.testing.assert_close(mean_ablated - x, (means[j] - f) * per_unit, rtol=1e-4, atol=1e-5)
        clamped = iv.clamp_hook(sae, j, 2.0)(x)
        torch.testing.assert_close(clamped - x, (2.0 - f) * per_unit, rtol=1e-4, atol=1e-5)
        scaled = iv.scale_hook(sae, j, 3.0)(x)
        torch.testing.assert_close(scaled - x, 2.0 * contribution, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(iv.scale_hook(sae, j, 0.0)(x), iv.ablate_hook(sae, j)(x))

        # Steering by c adds what raising latent j by c adds to x̂ ...
        steered = iv.steer_hook(sae, j, 0.7)(x)
        added = iv.splice_with_error_hook(sae, iv.add_to_latents([j], 0.7))(x)
        torch.testing.assert_close(steered, added, rtol=1e-4, atol=1e-5)
        # ... and with unit=True moves each token by c·||x|| along a unit direction.
        moved = iv.steer_hook(sae, j, 0.5, unit=True)(x) - x
        torch.testing.assert_close(moved.norm(dim=-1), 0.5 * x.norm(dim=-1), rtol=1e-4, atol=1e-5)


def test_positions_limit_the_intervention(toy, activations):
    _, sae = toy
    x = activations
    out = iv.steer_hook(sae, 1, 1.0, positions=slice(1, None))(x)
    torch.testing.assert_close(out[:, 0], x[:, 0], rtol=0, atol=0)
    assert (out[:, 1:] - x[:, 1:]).abs().max() > 1e-3
    single = iv.steer_hook(sae, 1, 1.0, positions=4)(x)
    changed = (single - x).abs().amax(dim=(0, 2)) > 0
    assert changed.tolist() == [i == 4 for i in range(x.shape[1])]


def test_latent_edit_hook_on_an_attached_sae_matches_our_hook(toy, tokens):
    """HookedSAETransformer: editing hook_sae_acts_post of an attached SAE = our ablate hook."""
    model, sae = toy
    j = 7
    with torch.no_grad():
        ours = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, iv.ablate_hook(sae, j, keep_error=True))])
        ours_no_error = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, iv.ablate_hook(sae, j, keep_error=False))])
        edit = iv.latent_edit_hook(iv.zero_latents([j]), d_sae=sae.cfg.d_sae)
        with model.saes(saes=[sae], use_error_term=True):
            with iv.interventions(model, [(f"{HOOK}.hook_sae_acts_post", edit)]):
                theirs = model(tokens)
        theirs_no_error = model.run_with_hooks_with_saes(
            tokens, saes=[sae], fwd_hooks=[(f"{HOOK}.hook_sae_acts_post", edit)]
        )
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ours_no_error, theirs_no_error, rtol=1e-4, atol=1e-4)
    assert not model.acts_to_saes
    assert hooks_left(model) == 0


def test_linear_saes_work_with_the_same_hooks(toy, activations):
    model, _ = toy
    sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=24, metadata=SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
        x = activations
        f = sae.encode(x)
        j = int((f != 0).float().sum((0, 1)).argmax())
        spliced = iv.splice_hook(sae)(x)
        torch.testing.assert_close(spliced, sae.decode(f))
        torch.testing.assert_close(
            spliced - iv.ablate_hook(sae, j, keep_error=False)(x), iv.latent_contribution(sae, x, j)
        )
        torch.testing.assert_close(iv.steer_hook(sae, j, 2.0)(x) - x, (2.0 * sae.W_dec[j]).expand_as(x))
    with pytest.raises(TypeError, match="bilinear"):
        iv.walk_hook(sae, j, 0.5)


# ------------------------------------------------------------------------------------------
# the manifold walk
# ------------------------------------------------------------------------------------------


def test_latent_eigenvectors_match_a_dense_eigendecomposition(toy):
    _, sae = toy
    for j in (0, 11, 100):
        eigen = iv.latent_eigenvectors(sae, j)
        left, right = sae.W_left[j].detach().double(), sae.W_right[j].detach().double()
        Q = (torch.outer(left, right) + torch.outer(right, left)) / 2
        values, vectors = torch.linalg.eigh(Q)
        top = values.abs().argsort(descending=True)[:2]
        torch.testing.assert_close(eigen.values.double(), values[top], rtol=1e-5, atol=1e-6)
        for k in range(2):
            v = eigen.vectors[k].double()
            torch.testing.assert_close(Q @ v, eigen.values[k].double() * v, rtol=1e-4, atol=1e-6)
            assert abs(float(v @ vectors[:, top[k]])) == pytest.approx(1.0, abs=1e-5)
        assert eigen.values[0].abs() >= eigen.values[1].abs()


def test_walk_manifold_starts_at_the_clean_model(toy, tokens):
    model, sae = toy
    ts = torch.tensor([-0.5, 0.0, 0.25, 1.0])
    walk = iv.walk_manifold(model, sae, tokens[0], 9, ts=ts, position=5)
    assert walk.latent_values.shape == (2, 4)
    assert walk.logits.shape == (2, 4, model.cfg.d_vocab)
    assert walk.lens_logits is not None and walk.lens_logits.shape == (2, 4, model.cfg.d_vocab)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens[:1], names_filter=HOOK)
        x = cache[HOOK][0, 5]
        f = sae.encode(x.unsqueeze(0))[0, 9]
    for k in range(2):
        torch.testing.assert_close(walk.logits[k, 1], logits[0, 5], rtol=1e-5, atol=1e-5)
        assert float(walk.latent_values[k, 1]) == pytest.approx(float(f), rel=1e-5, abs=1e-6)
    kl = walk.kl_from_clean()
    assert kl[:, 1].abs().max() < 1e-6
    assert kl[:, 3].min() > 0
    # Other positions are untouched: a later position's logits change, an earlier one's do not.
    moved = iv.walk_hook(sae, 9, 1.0, positions=[5])
    with torch.no_grad():
        out = model.run_with_hooks(tokens[:1], fwd_hooks=[(HOOK, moved)])
    torch.testing.assert_close(out[0, :5], logits[0, :5], rtol=1e-5, atol=1e-5)


def test_walk_hook_takes_one_step_per_batch_row(toy, activations):
    _, sae = toy
    x = activations[:3]
    ts = torch.tensor([0.0, 0.5, -1.0])
    out = iv.walk_hook(sae, 2, ts, eigen=1)(x)
    v = iv.latent_eigenvectors(sae, 2).vectors[1]
    for row, t in enumerate(ts.tolist()):
        expected = x[row] + t * x[row].norm(dim=-1, keepdim=True) * v
        torch.testing.assert_close(out[row], expected, rtol=1e-5, atol=1e-5)


def test_walk_works_without_the_lift(toy, tokens):
    model, _ = toy
    sae = unlifted_sae(model.cfg.d_model)
    walk = iv.walk_manifold(model, sae, tokens[0], 3, ts=[0.0, 0.5])
    assert torch.isfinite(walk.latent_values).all()


# ------------------------------------------------------------------------------------------
# cleanup and bad input
# ------------------------------------------------------------------------------------------


def test_hooks_are_removed_when_the_run_raises(toy, tokens):
    model, sae = toy
    with pytest.raises(RuntimeError, match="inside the block"):
        with iv.interventions(model, [(HOOK, iv.ablate_hook(sae, 1))]):
            assert len(model.hook_dict[HOOK]._forward_hooks) == 1
            model(tokens)
            raise RuntimeError("inside the block")
    assert len(model.hook_dict[HOOK]._forward_hooks) == 0

    def broken(f):
        raise ValueError("edit failed")

    with pytest.raises(ValueError, match="edit failed"):
        with iv.interventions(model, [(HOOK, iv.splice_hook(sae, broken))]):
            model(tokens)
    with pytest.raises(ValueError, match="edit failed"):
        model.run_with_hooks(tokens, fwd_hooks=[(HOOK, iv.splice_hook(sae, broken))])
    assert len(model.hook_dict[HOOK]._forward_hooks) == 0
    assert hooks_left(model) == 0


@pytest.mark.parametrize("latent", [-1, 128, 10_000])
def test_latent_out_of_range(toy, latent):
    _, sae = toy
    message = r"latent index .* out of range: this SAE has 128 latents"
    for build in (
        lambda: iv.ablate_hook(sae, [latent]),
        lambda: iv.clamp_hook(sae, latent, 1.0),
        lambda: iv.scale_hook(sae, latent, 2.0),
        lambda: iv.steer_hook(sae, latent, 1.0),
        lambda: iv.walk_hook(sae, latent, 0.5),
        lambda: iv.latent_contribution(sae, torch.ones(2, 32), latent),
    ):
        with pytest.raises(IndexError, match=message):
            build()


def test_hook_the_sae_was_not_trained_on(toy, tokens):
    model, sae = toy
    other = "blocks.0.hook_resid_pre"
    with pytest.raises(ValueError, match=r"trained on 'blocks\.1\.hook_resid_pre', not 'blocks\.0\.hook_resid_pre'"):
        iv.splice_hook(sae, hook_name=other)
    fn = iv.ablate_hook(sae, 0)
    with pytest.raises(ValueError, match=r"is for the SAE's hook point 'blocks\.1\.hook_resid_pre', not"):
        with iv.interventions(model, [(other, fn)]):
            pass
    with pytest.raises(ValueError, match=r"was run at 'blocks\.0\.hook_resid_pre'"):
        model.run_with_hooks(tokens, fwd_hooks=[(other, fn)])
    with pytest.raises(ValueError, match=r"has no hook 'blocks\.9\.hook_resid_pre'"):
        with iv.interventions(model, [("blocks.9.hook_resid_pre", lambda a, hook: a)]):
            pass
    assert hooks_left(model) == 0


def test_unlifted_sae_cannot_decode(toy):
    model, _ = toy
    sae = unlifted_sae(model.cfg.d_model)
    for build in (
        lambda: iv.splice_hook(sae),
        lambda: iv.splice_with_error_hook(sae),
        lambda: iv.ablate_hook(sae, 0),
        lambda: iv.clamp_hook(sae, 0, 1.0),
        lambda: iv.steer_hook(sae, 0, 1.0),
    ):
        with pytest.raises(UnliftedDecodeError, match="unlifted"):
            build()


def test_other_bad_arguments(toy, activations):
    model, sae = toy
    with pytest.raises(ValueError, match="mode must be 'zero' or 'mean'"):
        iv.ablate_hook(sae, 0, mode="median")
    with pytest.raises(ValueError, match="needs means="):
        iv.ablate_hook(sae, 0, mode="mean")
    with pytest.raises(ValueError, match="eigen must be 0 or 1"):
        iv.walk_hook(sae, 0, 0.1, eigen=2)
    with pytest.raises(ValueError, match="the SAE reads d_in=32"):
        iv.splice_hook(sae)(torch.ones(2, 3, 16))
    with pytest.raises(ValueError, match="one non-empty sequence"):
        iv.walk_manifold(model, sae, torch.zeros(2, 4, dtype=torch.long), 0)


def test_latent_edit_builders_change_only_their_latents():
    f = torch.arange(12.0).reshape(2, 6)
    assert iv.zero_latents([1, 4])(f)[:, [1, 4]].abs().sum() == 0
    torch.testing.assert_close(iv.set_latents([0, 2], [5.0, -1.0])(f)[:, [0, 2]], torch.tensor([[5.0, -1.0]] * 2))
    torch.testing.assert_close(iv.set_latents([3], 9.0)(f)[:, 3], torch.tensor([9.0, 9.0]))
    torch.testing.assert_close(iv.scale_latents([5], 2.0)(f)[:, 5], f[:, 5] * 2)
    torch.testing.assert_close(iv.add_to_latents([0], 0.5)(f)[:, 0], f[:, 0] + 0.5)
    for edit in (
        iv.zero_latents([1]),
        iv.set_latents([1], 3.0),
        iv.scale_latents([1], 2.0),
        iv.add_to_latents([1], 1.0),
    ):
        out = edit(f)
        untouched = [c for c in range(6) if c != 1]
        torch.testing.assert_close(out[:, untouched], f[:, untouched])
    assert f[0, 1] == 1.0  # edits never write into their input
