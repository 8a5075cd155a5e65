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
* Mean ablation is not in SAELens. It replaces the activation by a mean: the one passed in
  (best the training activations' mean, :func:`activation_mean`, so the baseline is the
  distribution the SAE was trained on), else the mean over the whole evaluation set, which is
  known only after the first loop; either way it is a second loop over the batches with our
  own hook. :attr:`SpliceMetrics.mean_ablation_source` records which mean was used.
* Every argument is checked before the first forward pass (:mod:`sae_bilinear.checks`), and a
  metric that comes out NaN/inf is an error naming it, never a number in the results.
* The clean activations are taken from ``get_recons_loss``'s own clean pass by a hook around it
  (no extra forward pass), and the SAE statistics are computed on them: explained variance by
  SAELens's streaming :class:`sae_lens.evals.ExplainedVarianceCalculator`; the rest (x⊗x error,
  Hoyer density over the whole set, L0 and dead latents at the bilinear activity threshold)
  have no SAELens counterpart, since SAELens counts a latent as firing when it is non-zero,
  which every dense, signed bilinear latent is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from sae_lens.evals import ExplainedVarianceCalculator, get_recons_loss
from sae_lens.saes.sae import SAE
from sae_lens.training.activation_scaler import ActivationScaler
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from sae_bilinear import kernels
from sae_bilinear.checks import (
    check_can_splice,
    check_finite_parameters,
    check_model_hook,
    check_sae_fits,
    check_tokens,
    is_bilinear,
    probe_activation,
    resolve_hook_name,
    sae_input,
)
from sae_bilinear.errors import ConfigError, DataFileError, MissingFileError, NonFiniteResultError
from sae_bilinear.values import check_bool, check_finite_float, check_finite_result, check_finite_tensor, check_int

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
    """CE loss with the activation at the hook set to a mean activation at every position:
    the ``mean_activation`` passed in (e.g. the training activations' mean, see
    :func:`activation_mean`), else the mean over the evaluated tokens
    (:attr:`mean_ablation_source` says which)."""
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
    mean_ablation_source: str = "evaluated tokens"
    """Where the mean of ``ce_mean_ablated`` came from: ``"evaluated tokens"``, or the
    ``mean_source`` label given with ``mean_activation`` (e.g. ``"training activations"``).
    Not one of :data:`METRIC_KEYS` (it is a label, not a number)."""

    def to_dict(self) -> dict[str, float | int | None]:
        """The metrics as a JSON-ready dict with exactly the keys of :data:`METRIC_KEYS`."""
        values = asdict(self)
        return {key: values[key] for key in METRIC_KEYS}


def _check_ignore_tokens(ignore_tokens: Sequence[int] | None) -> list[int]:
    """``ignore_tokens`` as a list of non-negative ints (None: none)."""
    if ignore_tokens is None:
        return []
    if isinstance(ignore_tokens, (str, bytes)) or not isinstance(ignore_tokens, (Sequence, Tensor, set, frozenset)):
        raise ConfigError(f"ignore_tokens must be a list of token ids (or None), got {ignore_tokens!r}")
    values = ignore_tokens.tolist() if isinstance(ignore_tokens, Tensor) else list(ignore_tokens)
    return [check_int(f"ignore_tokens[{i}]", value, lo=0) for i, value in enumerate(values)]


def _keep_mask(tokens: Tensor, ignore_tokens: Sequence[int] | None) -> Tensor:
    """True at positions whose token is evaluated (not in ``ignore_tokens``)."""
    if not ignore_tokens:
        return torch.ones_like(tokens, dtype=torch.bool)
    return ~torch.isin(tokens, torch.as_tensor(list(ignore_tokens), device=tokens.device))


def _check_something_to_score(tokens: Tensor, ignore_tokens: list[int]) -> None:
    """Refuse ``ignore_tokens`` that leave no position whose next-token loss is counted."""
    if not bool(_keep_mask(tokens, ignore_tokens)[:, :-1].any()):
        raise ConfigError(
            f"ignore_tokens={ignore_tokens} leave nothing to score: every position that predicts a "
            f"next token (all but the last of each of the {tokens.shape[0]} sequence(s)) holds an "
            "ignored token; ignore fewer tokens or pass other text"
        )


def activation_mean(activations: Float[Tensor, "n ..."]) -> Float[Tensor, ...]:
    """The mean ``[*shape]`` of activations ``[n, *shape]`` (e.g. the training activations of
    the main job, ``[n_tokens, d_in]``), accumulated in float64 and returned in their dtype.

    Pass it as ``evaluate_splice(..., mean_activation=activation_mean(train_acts),
    mean_source="training activations")`` so that mean-ablation uses the training distribution,
    not the evaluated tokens. Refuses an empty or non-finite tensor.
    """
    check_finite_tensor("activations", activations)
    if activations.ndim < 2 or activations.shape[0] == 0:
        raise ConfigError(f"activations must be a non-empty [n, ...] tensor, got shape {tuple(activations.shape)}")
    return activations.double().mean(0).to(activations.dtype)


TRAINING_MEAN_FILENAME = "training_mean.safetensors"
"""The training activations' mean, saved by ``sae-bilinear run`` inside each SAE folder it writes
(beside ``sae_weights.safetensors``): one float tensor ``"mean"`` of shape ``[d_in]``, with the
metadata ``n_tokens`` (how many training tokens it averages) and ``hook_name``. ``sae-bilinear
evaluate`` mean-ablates to it, so it reproduces the run's ``ce_mean_ablated``."""
HELD_OUT_MEAN_LABEL = "held-out tokens"
"""The ``mean_ablation`` label when the mean is taken over the evaluated (held-out) tokens."""


class TrainingMean(NamedTuple):
    """The mean activation a run ablates to, and how many tokens it averages."""

    mean: Float[Tensor, " d_in"]
    """The mean over the training tokens (BOS excluded) of the activations at the hook."""
    n_tokens: int
    """Training tokens averaged."""

    @property
    def label(self) -> str:
        """What ``mean_ablation`` records: ``"training activations (N tokens)"``."""
        return f"training activations ({self.n_tokens} tokens)"


def save_training_mean(folder: str | Path, mean: Tensor, n_tokens: int, hook_name: str) -> Path:
    """Write ``folder/training_mean.safetensors`` (:data:`TRAINING_MEAN_FILENAME`); returns its path.

    ``mean`` is ``[d_in]``, finite; ``n_tokens`` the number of tokens it averages (>= 1)."""
    check_finite_tensor("mean", mean)
    if mean.ndim != 1:
        raise ConfigError(f"mean must be a [d_in] tensor, got shape {tuple(mean.shape)}")
    n_tokens = check_int("n_tokens", n_tokens, lo=1)
    path = Path(folder) / TRAINING_MEAN_FILENAME
    metadata = {"n_tokens": str(n_tokens), "hook_name": str(hook_name)}
    save_file({"mean": mean.detach().cpu().contiguous()}, str(path), metadata=metadata)
    return path


def load_training_mean(path: str | Path, d_in: int) -> TrainingMean:
    """Read and validate a :data:`TRAINING_MEAN_FILENAME` file for an SAE of width ``d_in``.

    Raises :class:`~sae_bilinear.errors.DataFileError` naming the file when it is not a
    safetensors file, lacks the tensor ``"mean"`` or the ``n_tokens`` metadata, or holds a
    tensor that is not a finite float ``[d_in]``."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: no such mean file (it is written by `sae-bilinear run` into its SAE folders)")
    fix = "write it again (rerun `sae-bilinear run`), or evaluate with the held-out mean"
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            keys = set(handle.keys())
            if keys != {"mean"}:
                raise DataFileError(f"{path}: expected one tensor named 'mean', found {sorted(keys)}; {fix}")
            mean = handle.get_tensor("mean")
    except (SafetensorError, OSError, ValueError) as error:
        if isinstance(error, DataFileError):
            raise
        raise DataFileError(f"{path}: not a readable safetensors file ({error}); {fix}") from error
    if tuple(mean.shape) != (d_in,) or not mean.is_floating_point():
        raise DataFileError(
            f"{path}: the mean is a {mean.dtype} tensor of shape {tuple(mean.shape)}, the SAE needs a float "
            f"[{d_in}] (d_in); it belongs to another SAE or model: {fix}"
        )
    if not bool(torch.isfinite(mean).all()):
        raise DataFileError(f"{path}: the mean contains NaN or inf; {fix}")
    n_tokens = metadata.get("n_tokens", "")
    if not n_tokens.isdigit() or int(n_tokens) < 1:
        raise DataFileError(f"{path}: its metadata n_tokens must be a count >= 1, got {n_tokens!r}; {fix}")
    return TrainingMean(mean, int(n_tokens))


def _check_mean_activation(mean_activation: Any, shape: Sequence[int], hook_name: str) -> Tensor:
    """``mean_activation`` as a finite tensor of one position's activation shape at the hook."""
    check_finite_tensor("mean_activation", mean_activation)
    if tuple(mean_activation.shape) != tuple(shape):
        raise ConfigError(
            f"mean_activation has shape {tuple(mean_activation.shape)}, the activation at {hook_name!r} has "
            f"{tuple(shape)} per position: pass the mean over tokens of the activations at that hook"
        )
    return mean_activation


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


def _latent_statistics(sae: SAE[Any], x: Tensor, keep: Tensor, scaler: ActivationScaler, sums: _Sums) -> None:
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
    mean_source: str = "given",
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
        mean_activation: the activation used for mean-ablation, a finite float tensor of one
            position's activation shape at the hook (``[d_in]`` for residual hooks). Pass the
            training activations' mean (:func:`activation_mean`) to ablate to the distribution
            the SAE was trained on. Default: the mean over the evaluated tokens, which costs a
            second pass over the batches.
        mean_source: a label for where ``mean_activation`` came from (e.g. ``"training
            activations"``), stored as :attr:`SpliceMetrics.mean_ablation_source`.
        activation_scaler: SAELens scaler applied around the SAE (default: none).
        model_kwargs: extra keyword arguments for the model's forward passes.
        progress: show tqdm progress bars.

    Raises (before any forward pass over the data):
        ConfigError: a hook the model lacks, an SAE whose ``d_in`` does not match the activation
            at the hook, an SAE with NaN/inf weights, an empty or malformed token tensor, a
            context longer than the model's, ``ignore_tokens`` that leave nothing to score, a
            ``mean_activation`` of the wrong shape or with NaN/inf.
        UnliftedDecodeError: an unlifted bilinear SAE (it has no activation-space decoder).

    Raises (after): :class:`~sae_bilinear.checks.NonFiniteResultError` naming the metric when
    any metric comes out NaN/inf (an fp16 model that overflows, an activation scaler gone bad).
    """
    batch_size = check_int("batch_size", batch_size, lo=1)
    check_bool("progress", progress)
    ignore = _check_ignore_tokens(ignore_tokens)
    if model_kwargs is not None and not isinstance(model_kwargs, Mapping):
        raise ConfigError(f"model_kwargs must be a mapping of keyword arguments, got {type(model_kwargs).__name__}")
    if activation_scaler is not None:
        if not isinstance(activation_scaler, ActivationScaler):
            raise ConfigError(
                f"activation_scaler must be a SAELens ActivationScaler, got {type(activation_scaler).__name__}"
            )
        if activation_scaler.scaling_factor is not None:
            check_finite_float("activation_scaler.scaling_factor", activation_scaler.scaling_factor, lo=0, lo_open=True)
    if not isinstance(mean_source, str) or not mean_source:
        raise ConfigError(f"mean_source must be a non-empty label, got {mean_source!r}")
    hook = resolve_hook_name(sae, hook_name)
    check_can_splice(sae)
    check_finite_parameters(sae)
    check_model_hook(model, hook)
    tokens = check_tokens(model, tokens)
    probed = check_sae_fits(model, sae, hook, tokens)
    if mean_activation is not None:
        mean_activation = _check_mean_activation(mean_activation, probed.shape[2:], hook)
    _check_something_to_score(tokens, ignore)
    head_index = sae.cfg.metadata.hook_head_index
    scaler = activation_scaler if activation_scaler is not None else ActivationScaler()
    kwargs = dict(model_kwargs or {})
    batches = list(torch.split(tokens, batch_size))
    sums = _Sums(sae.cfg.d_sae)
    was_training = sae.training
    sae.eval()
    try:
        for batch in tqdm(batches, desc="splice eval: clean/spliced/zero", disable=not progress):
            _splice_batch(model, sae, batch.to(model.cfg.device), hook, head_index, ignore, scaler, kwargs, sums)
        source = "evaluated tokens"
        if mean_activation is None:
            assert sums.activation_sum is not None and sums.activation_count > 0
            mean_activation = sums.activation_sum / sums.activation_count
        else:
            source = mean_source
        for batch in tqdm(batches, desc="splice eval: mean-ablated", disable=not progress):
            batch = batch.to(model.cfg.device)
            keep = _keep_mask(batch, ignore)[:, :-1]
            loss = mean_ablated_loss(model, batch, hook, mean_activation, head_index=head_index, **kwargs)
            sums.ce["mean"] += float(loss[keep].double().sum())
    finally:
        sae.train(was_training)
    metrics = _metrics_from_sums(sums, is_bilinear(sae), source)
    _check_metrics_finite(metrics, hook)
    return metrics


def _splice_batch(
    model: Any,
    sae: SAE[Any],
    batch: Tensor,
    hook: str,
    head_index: int | None,
    ignore: list[int],
    scaler: ActivationScaler,
    kwargs: dict[str, Any],
    sums: _Sums,
) -> None:
    """Clean, spliced and zero-ablated passes over one batch (SAELens's ``get_recons_loss``),
    the SAE's statistics on the clean activations, and the running activation sum."""
    keep = _keep_mask(batch, ignore)
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
            ignore_tokens=ignore or None,
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


def _mean(total: float, count: int, name: str) -> float:
    """``total / count``; no evaluated token to average over is an error, not 0."""
    if count == 0:
        raise NonFiniteResultError(
            f"{name} cannot be computed: no evaluated token had a finite, non-zero activation at the hook"
        )
    return total / count


def _metrics_from_sums(sums: _Sums, bilinear: bool, mean_source: str) -> SpliceMetrics:
    ce = {name: _mean(total, sums.ce_count, f"ce_{name}") for name, total in sums.ce.items()}
    gap = ce["zero"] - ce["clean"]
    recovered = (ce["zero"] - ce["spliced"]) / gap if gap != 0 else None
    n = sums.latent_count
    return SpliceMetrics(
        ce_clean=ce["clean"],
        ce_spliced=ce["spliced"],
        ce_zero_ablated=ce["zero"],
        ce_mean_ablated=ce["mean"],
        ce_loss_recovered=recovered,
        kl=_mean(sums.kl, sums.kl_count, "kl"),
        explained_variance=float(sums.variance.compute()),
        reconstruction_error=_mean(sums.error, sums.error_count, "reconstruction_error") if bilinear else None,
        hoyer_density=_hoyer_from_sums(sums.l1, sums.l2_squared, n),
        l0=_mean(sums.active, n, "l0"),
        dead_fraction=float((~sums.ever_active).float().mean()),
        n_tokens=sums.activation_count,
        mean_ablation_source=mean_source,
    )


def _check_metrics_finite(metrics: SpliceMetrics, hook: str) -> None:
    """Every metric finite, or an error that names the first one that is not."""
    for key, value in metrics.to_dict().items():
        if value is not None:
            check_finite_result(
                f"the splice metric {key!r}",
                value,
                f"the model or the SAE produced NaN/inf at {hook!r} (an fp16/bf16 model that "
                "overflows, an activation scaler or SAE gone bad); evaluate in float32",
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
    every position, by ``mean_activation`` (a finite float tensor of one position's activation
    shape, e.g. :func:`activation_mean` of the training activations). With ``head_index`` on a
    per-head hook, only that head is replaced (as SAELens zero-ablates)."""
    check_finite_tensor("mean_activation", mean_activation)

    def replace(activation: Tensor, hook: Any) -> Tensor:  # noqa: ARG001
        mean = mean_activation.to(device=activation.device, dtype=activation.dtype)
        if mean.shape != activation.shape[2:]:
            raise ConfigError(
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


__all__ = [
    "HELD_OUT_MEAN_LABEL",
    "METRIC_KEYS",
    "TRAINING_MEAN_FILENAME",
    "SpliceMetrics",
    "TrainingMean",
    "activation_mean",
    "check_can_splice",
    "check_model_hook",
    "check_sae_fits",
    "check_tokens",
    "evaluate_splice",
    "is_bilinear",
    "load_training_mean",
    "mean_ablated_loss",
    "probe_activation",
    "resolve_hook_name",
    "sae_input",
    "save_training_mean",
]
