"""Splice evaluation: what an SAE costs the language model when it replaces the activations.

:func:`evaluate_splice` runs a TransformerLens model over held-out tokens four times per batch
— clean, spliced (``x → x̂`` at the SAE's hook point), zero-ablated and mean-ablated — and
measures the downstream cross-entropy loss, the KL divergence of the spliced next-token
distribution from the clean one, and the SAE's own reconstruction statistics on the clean
activations. It evaluates a bilinear SAE (which must be lifted to decode) and any SAELens SAE
with an ordinary ``decode`` (standard ReLU, TopK, ...) with the same code, so a report can put a
bilinear SAE next to its linear baseline.

What is reused from SAELens and what is not:

* The clean, spliced and zero-ablated passes and the per-token CE/KL come from
  :func:`sae_lens.evals.get_recons_loss`. It splices with ``sae.decode(sae.encode(x))`` on one
  batch at a time, which is right for :class:`~sae_bilinear.BilinearSAE`, whose ``decode``
  rescales ``û`` by the token norms that the preceding ``encode`` of the same batch stored.
  It also handles ``hook_z`` hooks, head indices, the activation scaler and ignored tokens.
* Mean ablation is not in SAELens, and needs the mean activation over the whole evaluation set
  before it can run, so it is a second loop over the batches with our own hook.
* The clean activations are taken from ``get_recons_loss``'s own clean pass by a hook around it
  (no extra forward pass), and the SAE statistics are computed on them: explained variance by
  SAELens's streaming :class:`sae_lens.evals.ExplainedVarianceCalculator`; the rest (x⊗x error,
  Hoyer density over the whole set, L0 and dead latents at the bilinear activity threshold)
  have no SAELens counterpart, since SAELens counts a latent as firing when it is non-zero,
  which every dense, signed bilinear latent is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from sae_lens.evals import ExplainedVarianceCalculator, get_recons_loss
from sae_lens.saes.sae import SAE
from sae_lens.training.activation_scaler import ActivationScaler
from torch import Tensor
from tqdm.auto import tqdm

from sae_bilinear import kernels
from sae_bilinear.bilinear import BilinearSAE, BilinearTrainingSAE

METRIC_KEYS: tuple[str, ...] = (
    "ce_clean",
    "ce_spliced",
    "ce_zero_ablated",
    "ce_mean_ablated",
    "ce_loss_recovered",
    "kl",
    "explained_variance",
    "reconstruction_error",
    "hoyer_density",
    "l0",
    "dead_fraction",
    "n_tokens",
)
"""Keys of :meth:`SpliceMetrics.to_dict`, in order."""

_HEAD_HOOK_SUFFIXES = ("hook_q", "hook_k", "hook_v", "hook_z")


@dataclass(frozen=True)
class SpliceMetrics:
    """Splice metrics of one SAE on one set of tokens (all means are per token).

    CE losses are next-token cross-entropies in nats, averaged over every predicted position
    (each sequence's last position predicts nothing) whose input token is not ignored.
    """

    ce_clean: float
    """CE loss of the unmodified model."""
    ce_spliced: float
    """CE loss with the activation at the hook replaced by the SAE's reconstruction x̂."""
    ce_zero_ablated: float
    """CE loss with the activation at the hook set to zero (every position)."""
    ce_mean_ablated: float
    """CE loss with the activation at the hook set to its mean over the evaluated tokens."""
    ce_loss_recovered: float | None
    """``(ce_zero − ce_spliced)/(ce_zero − ce_clean)``: 1 = splicing costs nothing, 0 = as bad
    as zero-ablation. None when zero-ablation does not change the loss (undefined ratio)."""
    kl: float
    """KL(clean ‖ spliced) of the next-token distributions, in nats, averaged over positions."""
    explained_variance: float
    """``1 − Σ||x − x̂||² / Σ||x − mean x||²`` over the evaluated tokens (SAELens's definition)."""
    reconstruction_error: float | None
    """Bilinear SAEs: mean per-token relative error ``||X − X̂||²/||ũ||⁴`` of ``X = ũ⊗ũ``
    (:meth:`BilinearSAE.reconstruction_error`) over tokens with a finite, non-zero activation.
    None for linear SAEs, which do not reconstruct ``x⊗x``."""
    hoyer_density: float
    """Mean over latents of the Hoyer density of each latent's activations over all evaluated
    tokens (:func:`sae_bilinear.kernels.hoyer_density` of the whole set). Scale-invariant and
    defined for any latents, so it is also computed for linear SAEs (on their non-negative
    latents); 0 = each latent active on one token, 1 = equally active on all."""
    l0: float
    """Mean number of active latents per token. Bilinear: ``|f_j|`` reaches the SAE's
    ``activity_threshold`` of latent j's peak (:meth:`BilinearSAE.active_latents`); linear
    SAEs: non-zero latents (SAELens's convention)."""
    dead_fraction: float
    """Fraction of latents never active (in the sense of ``l0``) on any evaluated token."""
    n_tokens: int
    """Number of token positions evaluated (ignored positions excluded)."""

    def to_dict(self) -> dict[str, float | int | None]:
        """The metrics as a JSON-ready dict with exactly the keys of :data:`METRIC_KEYS`."""
        values = asdict(self)
        return {key: values[key] for key in METRIC_KEYS}


def is_bilinear(sae: Any) -> bool:
    """True for :class:`BilinearSAE` and :class:`BilinearTrainingSAE`."""
    return isinstance(sae, (BilinearSAE, BilinearTrainingSAE))


def resolve_hook_name(sae: SAE[Any], hook_name: str | None = None) -> str:
    """The hook to splice at: ``hook_name`` if given, else the one in the SAE's metadata."""
    name = hook_name if hook_name is not None else sae.cfg.metadata.hook_name
    if not name:
        raise ValueError(
            "the SAE's metadata names no hook point (cfg.metadata.hook_name is unset): "
            "pass hook_name=..., e.g. 'blocks.18.hook_resid_pre'"
        )
    return str(name)


def check_model_hook(model: Any, hook_name: str) -> None:
    """Raise ValueError, naming close alternatives, when ``model`` has no hook ``hook_name``.

    A HookedSAETransformer with an SAE attached at ``hook_name`` is refused as well: its
    "clean" pass would already be spliced.
    """
    attached = getattr(model, "acts_to_saes", None)  # a property of HookedSAETransformer
    if callable(attached):
        attached = attached()
    if attached and hook_name in attached:
        raise ValueError(
            f"an SAE is already attached to the model at {hook_name!r}, so a clean pass is not clean: "
            "call model.reset_saes() first"
        )
    from sae_bilinear.models import check_hook

    check_hook(model, hook_name)


def check_tokens(model: Any, tokens: Tensor, min_length: int = 2) -> Tensor:
    """Validate held-out tokens ``[batch, seq]`` (a 1-D tensor is one sequence); return them 2-D.

    Raises ValueError for an empty tensor, sequences shorter than ``min_length`` (CE needs a
    next token), non-integer ids, ids outside the vocabulary, or contexts longer than the model's.
    """
    if not isinstance(tokens, Tensor):
        raise TypeError(f"tokens must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.ndim == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.ndim != 2:
        raise ValueError(f"tokens must have shape [batch, seq], got {tuple(tokens.shape)}")
    if tokens.numel() == 0:
        raise ValueError(f"no tokens to evaluate on: the token tensor is empty (shape {tuple(tokens.shape)})")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool or tokens.is_complex():
        raise TypeError(f"tokens must be integer token ids, got dtype {tokens.dtype}")
    if tokens.shape[1] < min_length:
        raise ValueError(
            f"sequences of {tokens.shape[1]} token(s) give no next-token loss: need at least {min_length} per sequence"
        )
    from sae_bilinear.models import check_context_size

    check_context_size(model, tokens.shape[1])
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= model.cfg.d_vocab:
        raise ValueError(f"token ids must lie in [0, d_vocab={model.cfg.d_vocab}), got ids in [{low}, {high}]")
    return tokens


def sae_input(activation: Tensor, hook_name: str, head_index: int | None) -> Tensor:
    """The part of a hook's activation that the SAE reads, as SAELens's splice does.

    ``hook_q/k/v/z`` activations ``[b, s, heads, d_head]`` are flattened over heads, or reduced
    to ``head_index``; other hooks are returned as they are.
    """
    if any(suffix in hook_name for suffix in _HEAD_HOOK_SUFFIXES) and activation.ndim == 4:
        return activation[:, :, head_index] if head_index is not None else activation.flatten(-2, -1)
    return activation


def probe_activation(model: Any, hook_name: str, tokens: Tensor) -> Tensor:
    """The activation at ``hook_name`` for the first token of ``tokens`` (a 1-token forward pass,
    stopped right after the hook's block when the hook belongs to a block)."""
    from sae_bilinear.models import stop_at_layer

    captured: list[Tensor] = []

    def grab(activation: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        captured.append(activation.detach())
        return activation

    try:
        stop: int | None = stop_at_layer(hook_name)
    except ValueError:
        stop = None  # not a per-block hook (hook_embed, ln_final...): run the whole model
    with torch.no_grad():
        model.run_with_hooks(tokens[:1, :1], fwd_hooks=[(hook_name, grab)], return_type=None, stop_at_layer=stop)
    if not captured:
        raise RuntimeError(f"hook {hook_name!r} did not fire on a forward pass of the model")
    return captured[0]


def check_sae_fits(model: Any, sae: SAE[Any], hook_name: str, tokens: Tensor) -> None:
    """Raise ValueError when the SAE's ``d_in`` differs from the activation size at the hook."""
    activation = sae_input(probe_activation(model, hook_name, tokens), hook_name, sae.cfg.metadata.hook_head_index)
    size = activation.shape[-1]
    if size != sae.cfg.d_in:
        raise ValueError(
            f"the SAE reads d_in={sae.cfg.d_in} features but the model's activation at {hook_name!r} has "
            f"{size}: the SAE was trained on another model or hook point"
        )


def check_can_splice(sae: SAE[Any]) -> None:
    """Raise :class:`~sae_bilinear.UnliftedDecodeError` for a bilinear SAE that cannot decode."""
    if is_bilinear(sae):
        sae.decoder_directions()  # raises UnliftedDecodeError with the explanation when unlifted


def _keep_mask(tokens: Tensor, ignore_tokens: Sequence[int] | None) -> Tensor:
    """True at positions whose token is evaluated (not in ``ignore_tokens``)."""
    if not ignore_tokens:
        return torch.ones_like(tokens, dtype=torch.bool)
    return ~torch.isin(tokens, torch.as_tensor(list(ignore_tokens), device=tokens.device))


class _Sums:
    """Running sums for one evaluation (CPU, float64)."""

    def __init__(self, d_sae: int) -> None:
        self.ce: dict[str, float] = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, "mean": 0.0}
        self.ce_count = 0
        self.kl = 0.0
        self.kl_count = 0
        self.variance = ExplainedVarianceCalculator()
        self.error = 0.0
        self.error_count = 0
        self.l1 = torch.zeros(d_sae, dtype=torch.float64)
        self.l2_squared = torch.zeros(d_sae, dtype=torch.float64)
        self.latent_count = 0
        self.active = 0.0
        self.ever_active = torch.zeros(d_sae, dtype=torch.bool)
        self.activation_sum: Tensor | None = None
        self.activation_count = 0


def _latent_statistics(
    sae: SAE[Any], x: Tensor, keep: Tensor, scaler: ActivationScaler, sums: _Sums
) -> None:
    """Accumulate the SAE's statistics on clean activations ``x`` [b, s, d_in] at kept positions."""
    x = x[keep]
    x = x.to(device=sae.device, dtype=torch.promote_types(x.dtype, torch.float32))  # [n, d_in]
    if x.shape[0] == 0:
        return
    scaled = scaler.scale(x)
    latents = sae.encode(scaled)
    x_hat = scaler.unscale(sae.decode(latents)).to(x.dtype)
    sums.variance.add_batch(x_hat, x)
    valid = torch.isfinite(x).all(-1)
    if is_bilinear(sae):
        valid = valid & kernels.unit_tokens(scaled).valid
        error = sae.reconstruction_error(scaled)
        sums.error += float(error[valid].double().sum())
        sums.error_count += int(valid.sum())
        active = sae.active_latents(latents)
    else:
        active = latents != 0
    active = active[valid]
    latents = latents[valid].double().cpu()
    sums.l1 += latents.abs().sum(0)
    sums.l2_squared += latents.pow(2).sum(0)
    sums.latent_count += latents.shape[0]
    sums.active += float(active.sum())
    sums.ever_active |= active.any(0).cpu()


def _hoyer_from_sums(l1: Tensor, l2_squared: Tensor, n: int) -> float:
    """Mean Hoyer density from per-latent ``Σ|f|`` and ``Σf²`` (as ``kernels.hoyer_density``)."""
    l2 = l2_squared.sqrt()
    alive = l2 > 0
    ratio = l1 / torch.where(alive, l2, torch.ones_like(l2))
    scale = max(math.sqrt(n) - 1.0, 1e-12)
    density = torch.where(alive, (ratio - 1.0) / scale, torch.zeros_like(ratio)).clamp(min=0.0)
    return float(density.mean())


@torch.no_grad()
def evaluate_splice(
    model: Any,
    sae: SAE[Any],
    tokens: Tensor,
    *,
    hook_name: str | None = None,
    batch_size: int = 8,
    ignore_tokens: Sequence[int] | None = None,
    mean_activation: Tensor | None = None,
    activation_scaler: ActivationScaler | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> SpliceMetrics:
    """Splice ``sae`` into ``model`` at its hook point and measure the cost on ``tokens``.

    Args:
        model: a TransformerLens ``HookedTransformer`` (e.g. SAELens's ``HookedSAETransformer``,
            with no SAE attached at the hook).
        sae: a lifted :class:`~sae_bilinear.BilinearSAE` (or training SAE), or any SAELens SAE
            with a linear decoder (standard, TopK, ...).
        tokens: held-out token ids ``[n_sequences, context]`` (a 1-D tensor is one sequence).
        hook_name: hook to splice at; default ``sae.cfg.metadata.hook_name``.
        batch_size: sequences per forward pass.
        ignore_tokens: token ids (e.g. BOS) whose positions are not spliced and not counted
            in any metric (SAELens's ``ignore_tokens``); the ablations still replace them.
        mean_activation: the activation used for mean-ablation (shape of one position's
            activation at the hook). Default: the mean over the evaluated tokens, which costs a
            second pass over the batches.
        activation_scaler: SAELens scaler applied around the SAE (default: none).
        model_kwargs: extra keyword arguments for the model's forward passes.
        progress: show tqdm progress bars.

    Raises (before any forward pass over the data):
        ValueError: a hook the model lacks, an SAE whose ``d_in`` does not match the activation
            at the hook, an empty or malformed token tensor, a context longer than the model's.
        UnliftedDecodeError: an unlifted bilinear SAE (it has no activation-space decoder).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of sequences, got {batch_size}")
    hook = resolve_hook_name(sae, hook_name)
    check_can_splice(sae)
    check_model_hook(model, hook)
    tokens = check_tokens(model, tokens)
    check_sae_fits(model, sae, hook, tokens)
    head_index = sae.cfg.metadata.hook_head_index
    scaler = activation_scaler if activation_scaler is not None else ActivationScaler()
    kwargs = dict(model_kwargs or {})
    batches = list(torch.split(tokens, batch_size))
    sums = _Sums(sae.cfg.d_sae)
    was_training = sae.training
    sae.eval()
    try:
        for batch in tqdm(batches, desc="splice eval: clean/spliced/zero", disable=not progress):
            batch = batch.to(model.cfg.device)
            keep = _keep_mask(batch, ignore_tokens)
            captured: list[Tensor] = []

            def capture(activation: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
                if not captured:  # the first pass of get_recons_loss is the clean one
                    captured.append(activation.detach())
                return activation

            with model.hooks(fwd_hooks=[(hook, capture)]):
                losses = get_recons_loss(
                    sae,
                    model,
                    scaler,
                    batch,
                    compute_kl=True,
                    compute_ce_loss=True,
                    ignore_tokens=list(ignore_tokens) if ignore_tokens else None,
                    model_kwargs=kwargs,
                    hook_name=hook,
                )
            ce_keep = keep[:, :-1]
            sums.ce["clean"] += float(losses["ce_loss_without_sae"][ce_keep].double().sum())
            sums.ce["spliced"] += float(losses["ce_loss_with_sae"][ce_keep].double().sum())
            sums.ce["zero"] += float(losses["ce_loss_with_ablation"][ce_keep].double().sum())
            sums.ce_count += int(ce_keep.sum())
            sums.kl += float(losses["kl_div_with_sae"][keep].double().sum())
            sums.kl_count += int(keep.sum())

            activation = captured[0]
            kept = activation[keep].double().cpu()
            batch_sum = kept.sum(0)
            sums.activation_sum = batch_sum if sums.activation_sum is None else sums.activation_sum + batch_sum
            sums.activation_count += kept.shape[0]
            _latent_statistics(sae, sae_input(activation, hook, head_index), keep, scaler, sums)

        if sums.activation_count == 0:
            raise ValueError("every token position is in ignore_tokens: nothing was evaluated")
        if mean_activation is None:
            assert sums.activation_sum is not None
            mean_activation = sums.activation_sum / sums.activation_count
        for batch in tqdm(batches, desc="splice eval: mean-ablated", disable=not progress):
            batch = batch.to(model.cfg.device)
            keep = _keep_mask(batch, ignore_tokens)[:, :-1]
            loss = mean_ablated_loss(model, batch, hook, mean_activation, head_index=head_index, **kwargs)
            sums.ce["mean"] += float(loss[keep].double().sum())
    finally:
        sae.train(was_training)

    ce = {name: total / max(sums.ce_count, 1) for name, total in sums.ce.items()}
    gap = ce["zero"] - ce["clean"]
    recovered = (ce["zero"] - ce["spliced"]) / gap if gap != 0 else None
    n = sums.latent_count
    return SpliceMetrics(
        ce_clean=ce["clean"],
        ce_spliced=ce["spliced"],
        ce_zero_ablated=ce["zero"],
        ce_mean_ablated=ce["mean"],
        ce_loss_recovered=recovered,
        kl=sums.kl / max(sums.kl_count, 1),
        explained_variance=float(sums.variance.compute()),
        reconstruction_error=sums.error / max(sums.error_count, 1) if is_bilinear(sae) else None,
        hoyer_density=_hoyer_from_sums(sums.l1, sums.l2_squared, n),
        l0=sums.active / max(n, 1),
        dead_fraction=float((~sums.ever_active).float().mean()),
        n_tokens=sums.activation_count,
    )


def mean_ablated_loss(
    model: Any,
    tokens: Tensor,
    hook_name: str,
    mean_activation: Tensor,
    head_index: int | None = None,
    **model_kwargs: Any,
) -> Tensor:
    """Per-token CE loss ``[batch, seq − 1]`` with the activation at ``hook_name`` replaced, at
    every position, by ``mean_activation`` (the shape of one position's activation). With
    ``head_index`` on a per-head hook, only that head is replaced (as SAELens zero-ablates)."""

    def replace(activation: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        mean = mean_activation.to(device=activation.device, dtype=activation.dtype)
        if mean.shape != activation.shape[2:]:
            raise ValueError(
                f"mean_activation has shape {tuple(mean.shape)}, the activation at {hook_name!r} has "
                f"{tuple(activation.shape[2:])} per position"
            )
        if head_index is not None and activation.ndim == 4:
            activation = activation.clone()
            activation[:, :, head_index] = mean[head_index]
            return activation
        return mean.expand_as(activation).clone()

    return model.run_with_hooks(
        tokens, fwd_hooks=[(hook_name, replace)], return_type="loss", loss_per_token=True, **model_kwargs
    )
