"""Intervention experiments on a language model with an SAE: ablate, steer, walk.

Each experiment is a function that takes a model, an SAE, its hook and tokens and returns a
JSON-ready dict (:func:`ablate`, :func:`steer`, :func:`walk`), and a command that loads
everything from arguments, runs it and writes ``<name>.json`` + ``<name>.png``
(:data:`COMMANDS`: ``add_arguments(parser)`` then ``run(args)``). The runnable scripts in
``hooks/`` and ``sae-bilinear ablate | steer | walk`` are thin wrappers over :data:`COMMANDS`.

By default a command uses the SAE's own model, the one named by ``metadata.model_name`` in its
``cfg.json``; naming a model other than the SAE's with ``--model`` is a
:class:`~sae_bilinear.errors.ConfigError` (:mod:`sae_bilinear.loading`). ``--model toy`` without
``--sae`` trains the toy SAE of :mod:`sae_bilinear.toy` on the spot (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Int
from sae_lens import SAE
from torch import Tensor
from tqdm.auto import tqdm

from sae_bilinear import interventions as iv
from sae_bilinear import toy
from sae_bilinear.checks import check_can_splice, check_tokens, is_bilinear
from sae_bilinear.errors import ConfigError, DataFileError, OutputExistsError, UserError
from sae_bilinear.hook_figures import ablate_figure, steer_figure, walk_figure
from sae_bilinear.loading import Loaded, Model, load_model_and_sae
from sae_bilinear.plots import write_png
from sae_bilinear.values import check_choice, check_finite_float, check_int, comma_list, finite_float, int_at_least

DEFAULT_TEXT = (
    "The river ran fast after the spring rains, and the old mill by the bridge turned day and night. "
    "In the village, children counted the boats that passed: one in the morning, two at noon, three "
    "before dark. Their teacher wrote the numbers on the board and asked what would come next. "
    "A merchant from the coast arrived on Tuesday with salt, cloth and news of the king. He said the "
    "roads to the north were closed by snow, so the harvest would be sold in the south this year. "
    "The farmers met in the hall to decide what to do. Some wanted to wait for summer; others wanted "
    "to leave at once. In the end they voted, and the vote was close: twelve to ten. On Monday the "
    "carts left at dawn, loaded with grain, apples and wool, and the village was quiet for a month."
)
"""Held-out text for :func:`ablate` when ``--text`` is not given."""
STEER_PROMPT = "The weather in the mountains today is"
WALK_PROMPT = "On Monday the carts left at dawn, loaded with grain"


# --- arguments ---------------------------------------------------------------------------------


def add_common_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    """The arguments of every command: SAE, model, hook, output, device, seed, threads."""
    parser.add_argument(
        "--sae",
        type=Path,
        default=None,
        help="folder of a SAELens-format SAE (cfg.json + sae_weights.safetensors), bilinear or linear; "
        "required unless --model toy (which then trains a toy SAE)",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model to run (default: the SAE's own, metadata.model_name in its cfg.json): the embedded "
        "smollm2-135m, a local HF folder, a TransformerLens name, 'toy' or a folder from save_toy_model",
    )
    parser.add_argument("--hook", default=None, help="hook point (default: the one the SAE was trained on)")
    parser.add_argument("--out", type=Path, default=Path("runs") / "hooks" / name, help="output folder")
    parser.add_argument("--overwrite", action="store_true", help=f"replace an existing {name}.json/.png in --out")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="random seed")
    parser.add_argument("--threads", type=int_at_least(1), default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars and messages")


# --- tokens ------------------------------------------------------------------------------------


def text_tokens(model: Model, text: str, n_seqs: int, context: int) -> Int[Tensor, "n context"]:
    """Up to ``n_seqs`` consecutive contexts of ``text``, each starting with BOS when the model
    expects it (fewer when the text is short)."""
    tokenizer: Any = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise ConfigError(f"the model {model.cfg.model_name!r} has no tokenizer, so it cannot read text")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    bos_id: int | None = tokenizer.bos_token_id if model.cfg.default_prepend_bos else None
    body = context - 1 if bos_id is not None else context
    n = min(n_seqs, len(ids) // body)
    if n == 0:
        raise ConfigError(f"the text has {len(ids)} tokens, fewer than one context of {body}: give a longer --text")
    rows = ids[: n * body].reshape(n, body)
    if bos_id is not None:
        rows = torch.cat([torch.full((n, 1), bos_id, dtype=rows.dtype), rows], dim=1)
    return rows


def eval_tokens(
    model: Model, text_file: Path | None, n_seqs: int, context: int, seed: int = 0
) -> Int[Tensor, "n context"]:
    """Held-out tokens: the toy model's own language, else ``text_file`` (or :data:`DEFAULT_TEXT`)."""
    context = min(context, model.cfg.n_ctx)
    if toy.is_toy(model):
        return toy.sample_tokens(model, n_seqs, context, seed=10_000 + seed)
    if text_file is None:
        return text_tokens(model, DEFAULT_TEXT, n_seqs, context)
    try:
        with open(text_file, encoding="utf-8") as handle:
            text = handle.read(n_seqs * context * 16)  # enough characters for the tokens needed
    except (OSError, UnicodeDecodeError) as error:
        raise DataFileError(f"cannot read --text {text_file} as UTF-8 text: {error}") from error
    return text_tokens(model, text, n_seqs, context)


def prompt_tokens(model: Model, prompt: str) -> Int[Tensor, "1 seq"]:
    """One prompt as ``[1, seq]`` token ids (the toy model: a sample of its language)."""
    if toy.is_toy(model):
        return toy.sample_tokens(model, 1, min(12, model.cfg.n_ctx), seed=len(prompt))
    return model.to_tokens(prompt)


def token_str(model: Model, token: int) -> str:
    """A token as text; ``<id>`` for a model without a tokenizer (the toy)."""
    if getattr(model, "tokenizer", None) is None:
        return f"<{int(token)}>"
    return model.to_single_str_token(int(token))


def tokens_str(model: Model, tokens: Sequence[int] | Tensor) -> str:
    """Tokens as text; ``<id> <id> …`` for a model without a tokenizer (the toy)."""
    tokenizer: Any = getattr(model, "tokenizer", None)
    if tokenizer is None:
        return " ".join(f"<{int(t)}>" for t in tokens)
    return tokenizer.decode([int(t) for t in tokens])


def _top(model: Model, scores: Tensor, k: int, largest: bool = True) -> list[list[Any]]:
    return [[token_str(model, t), v] for t, v in iv.top_tokens(scores, k, largest=largest)]


@torch.no_grad()
def most_active_latent(
    model: Model, sae: SAE[Any], tokens: Int[Tensor, "1 seq"], hook: str, position: int | None = None
) -> int:
    """The latent with the largest ``|f_j| · ||x||`` (linear SAEs: ``|f_j|``) at ``position`` of
    ``tokens``, or averaged over all positions but the first when ``position`` is None."""
    _, cache = model.run_with_cache(tokens, names_filter=hook)
    x = cache[hook][0].to(sae.device)
    if position is not None:
        x = x[position].unsqueeze(0)
    elif x.shape[0] > 1:
        x = x[1:]  # the first position is often BOS, whose norm is atypical
    f = sae.encode(x).abs()
    if is_bilinear(sae):
        f = f * x.norm(dim=-1, keepdim=True)
    return int(f.mean(0).argmax())


# --- the experiments ---------------------------------------------------------------------------

ABLATE_MODES = ("zero", "mean")


class _CleanStatistics(NamedTuple):
    ce_clean: float
    """Mean next-token CE of the clean model (nats)."""
    mean: Tensor
    """``[d_sae]`` mean latent value."""
    mean_abs: Tensor
    """``[d_sae]`` mean ``|f_j|``."""
    contribution: Tensor
    """``[d_sae]`` mean ``|f_j| · ||x|| · ||d_j||`` (linear SAEs: ``|f_j| · ||d_j||``)."""
    active: Tensor
    """``[d_sae]`` share of positions where the latent is active."""


@torch.no_grad()
def _clean_statistics(model: Model, sae: SAE[Any], hook: str, batches: list[Tensor]) -> _CleanStatistics:
    d_sae = sae.cfg.d_sae
    sums = {key: torch.zeros(d_sae, dtype=torch.float64) for key in ("f", "abs", "contribution", "active")}
    loss_total, n_losses, n_positions = 0.0, 0, 0
    for batch in batches:
        loss: Any
        loss, cache = model.run_with_cache(batch, names_filter=hook, return_type="loss", loss_per_token=True)
        loss_total += float(loss.double().sum())
        n_losses += loss.numel()
        x = cache[hook].to(sae.device).reshape(-1, sae.cfg.d_in)
        f = sae.encode(x)
        scale = x.norm(dim=-1, keepdim=True) if is_bilinear(sae) else torch.ones_like(x[:, :1])
        fires = sae.active_latents(f) if is_bilinear(sae) else f != 0
        sums["f"] += f.double().sum(0).cpu()
        sums["abs"] += f.abs().double().sum(0).cpu()
        sums["contribution"] += (f.abs() * scale).double().sum(0).cpu()
        sums["active"] += fires.double().sum(0).cpu()
        n_positions += x.shape[0]
    norms = iv.latent_directions(sae).norm(dim=-1).double().cpu()
    mean = {key: value / n_positions for key, value in sums.items()}
    return _CleanStatistics(loss_total / n_losses, mean["f"], mean["abs"], mean["contribution"] * norms, mean["active"])


@torch.no_grad()
def ablate(
    model: Model,
    sae: SAE[Any],
    hook: str,
    tokens: Int[Tensor, "batch seq"],
    latents: Sequence[int] | None = None,
    n_latents: int = 16,
    mode: str = "zero",
    batch_size: int = 8,
    top_k: int = 10,
    progress: bool = True,
) -> dict[str, Any]:
    """Per-latent ablation: what each latent does to the model's loss, and to which tokens.

    For each latent j (``latents``, else the ``n_latents`` with the largest mean |contribution|),
    the SAE is spliced in with its error term kept and latent j zeroed (``mode="mean"``: set to
    its mean), so the only change to the forward pass is latent j's contribution to x̂. Reports
    the change in next-token CE over ``tokens`` and the tokens the latent's decoder direction
    promotes and suppresses through the unembedding (``direction_j @ W_U``, the final norm
    ignored; for a bilinear latent the sign of ``f_j`` decides which list applies: the
    "promoted" tokens are pushed up when ``f_j > 0``).
    """
    check_can_splice(sae)
    check_choice("mode", mode, ABLATE_MODES)
    for name, value in (("n_latents", n_latents), ("batch_size", batch_size), ("top_k", top_k)):
        check_int(name, value, 1)
    chosen = None if latents is None else iv.check_latents(sae, list(latents))
    tokens = check_tokens(model, tokens)
    batches = list(torch.split(tokens.to(model.cfg.device), batch_size))
    clean = _clean_statistics(model, sae, hook, batches)
    if chosen is None:
        chosen = clean.contribution.argsort(descending=True)[: min(n_latents, sae.cfg.d_sae)].tolist()
    means = clean.mean.to(torch.float32).to(sae.device)
    rows = []
    for j in tqdm(chosen, desc="ablating latents", disable=not progress):
        edit = iv.ablate_hook(sae, [j], mode=mode, means=means, keep_error=True, hook_name=hook)
        total, count = 0.0, 0
        with iv.interventions(model, [(hook, edit)]):
            for batch in batches:
                loss = model(batch, return_type="loss", loss_per_token=True)
                total, count = total + float(loss.double().sum()), count + loss.numel()
        ce = total / count
        row: dict[str, Any] = {
            "latent": int(j),
            "ce_ablated": ce,
            "delta_ce": ce - clean.ce_clean,
            "mean_activation": float(clean.mean[j]),
            "mean_abs_activation": float(clean.mean_abs[j]),
            "mean_abs_contribution": float(clean.contribution[j]),
            "active_fraction": float(clean.active[j]),
        }
        effect = iv.unembedding_effect(model, sae, j)
        if effect is not None:
            row["promoted"] = _top(model, effect, top_k)
            row["suppressed"] = _top(model, effect, top_k, largest=False)
        rows.append(row)
    return {"mode": mode, "n_tokens": int(tokens.numel()), "ce_clean": clean.ce_clean, "latents": rows}


def _bos_first(model: Model, prompt: Tensor) -> bool:
    tokenizer = getattr(model, "tokenizer", None)
    bos_id = None if tokenizer is None else tokenizer.bos_token_id
    return bos_id is not None and int(prompt[0, 0]) == bos_id


@torch.no_grad()
def steer(
    model: Model,
    sae: SAE[Any],
    hook: str,
    prompt: Int[Tensor, "1 seq"],
    latent: int | None = None,
    strengths: Sequence[float] = (0.0, 0.5, 1.0, 2.0),
    raw: bool = False,
    max_new_tokens: int = 20,
    steer_bos: bool = False,
    top_k: int = 5,
) -> dict[str, Any]:
    """Steering: generate text while pushing the activations along one latent's decoder direction.

    At every position of the prompt and of the generated text (the first position is left alone
    when it is BOS, whose norm is atypical, unless ``steer_bos``), the activation at ``hook``
    becomes ``x + s · ||x|| · d̂_j``: ``d̂_j`` is the unit direction of latent j's contribution to
    x̂ and ``s`` a fraction of the token's norm (``raw``: ``x + s · ||x|| · d_j``, exactly what
    raising the bilinear latent by ``s`` adds to x̂). For each strength: the greedy generation,
    the next-token distribution after the prompt, and latent j re-encoded from the steered
    activation. ``latent=None`` steers the latent most active on the prompt.
    """
    check_can_splice(sae)  # steering needs the decoder directions (lifted bilinear SAEs)
    check_int("max_new_tokens", max_new_tokens, 0)
    check_int("top_k", top_k, 1)
    strengths = [check_finite_float("strength", s) for s in strengths]
    if not strengths:
        raise ConfigError("strengths is empty: give at least one steering strength")
    prompt = check_tokens(model, prompt, min_length=1).to(model.cfg.device)
    latent = most_active_latent(model, sae, prompt, hook) if latent is None else iv.check_latent(sae, latent)
    max_new = max(0, min(max_new_tokens, model.cfg.n_ctx - prompt.shape[1]))
    skip_first = not steer_bos and _bos_first(model, prompt)
    rows, log_probs = [], []
    for strength in strengths:
        steering = iv.steer_hook(
            sae, latent, strength, unit=not raw, hook_name=hook, positions=slice(1, None) if skip_first else None
        )
        seen: list[Tensor] = []

        def record(activation: Tensor, hook: Any, seen: list[Tensor] = seen) -> Tensor:  # noqa: ARG001
            seen.append(activation[0, -1].detach())  # runs after the steering hook: the steered activation
            return activation

        with iv.interventions(model, [(hook, steering), (hook, record)]):
            logits = model(prompt)[0, -1]
            latent_after = float(sae.encode(seen[0].unsqueeze(0).to(sae.device))[0, latent])
            generated: Any = prompt  # model.generate's return type is a union over return_type
            if max_new:
                generated = model.generate(
                    prompt,
                    max_new_tokens=max_new,
                    do_sample=False,
                    use_past_kv_cache=False,  # full passes keep the steered positions aligned with the sequence
                    stop_at_eos=getattr(model, "tokenizer", None) is not None,
                    verbose=False,
                    return_type="tokens",
                )
        log_probs.append(torch.log_softmax(logits.float(), -1))
        new_tokens = generated[0, prompt.shape[1] :].tolist()
        rows.append(
            {
                "strength": strength,
                "text": tokens_str(model, new_tokens),
                "tokens": new_tokens,
                "latent_after_steering": latent_after,
                "next_tokens": _top(model, log_probs[-1], top_k),
            }
        )
    # Tokens to follow across strengths: the union of every strength's top 3.
    tracked = sorted({int(t) for lp in log_probs for t in lp.topk(3).indices})
    for row, lp in zip(rows, log_probs, strict=True):
        row["tracked_log_probs"] = {token_str(model, t): float(lp[t]) for t in tracked}
    return {
        "latent": latent,
        "prompt": tokens_str(model, prompt[0].tolist()),
        "units": "latent (x + s·||x||·d_j)" if raw else "fraction of ||x|| along the unit direction",
        "steered_positions": "all but the first (BOS)" if skip_first else "all",
        "generations": rows,
    }


@torch.no_grad()
def walk(
    model: Model,
    sae: SAE[Any],
    hook: str,
    prompt: Int[Tensor, "1 seq"],
    latent: int | None = None,
    position: int = -1,
    span: float = 1.0,
    steps: int = 21,
    top_k: int = 5,
) -> dict[str, Any]:
    """Walk the manifold: move one token's activation along a latent's eigenvectors.

    A bilinear latent is the quadratic form ``f_j = uᵀ Q_j u`` (plus a linear part when lifted),
    ``Q_j = (l rᵀ + r lᵀ)/2``, whose two non-zero eigenvalues ``(l·r ± |l||r|)/2`` have the
    eigenvectors ``∝ l/|l| ± r/|r|``. The activation at ``position`` of the prompt moves to
    ``x + t·||x||·v`` for ``t`` in ``[−span, span]`` (``steps`` values) along each eigenvector
    ``v``; recorded: latent j of the moved activation, the next-token distribution (KL from the
    clean one, top tokens) and the logit lens of the moved activation (``unembed(ln_final(x_t))``).
    ``latent=None`` walks the latent most active at ``position``.
    """
    check_int("steps", steps, 2)
    check_int("top_k", top_k, 1)
    check_finite_float("span", span, 0.0, lo_open=True)
    prompt = check_tokens(model, prompt, min_length=1).to(model.cfg.device)
    length = prompt.shape[1]
    if isinstance(position, bool) or not isinstance(position, int) or not -length <= position < length:
        raise ConfigError(f"position {position!r} is outside the prompt of {length} tokens (-{length}..{length - 1})")
    position %= length
    if latent is None:
        latent = most_active_latent(model, sae, prompt, hook, position=position)
    latent = iv.check_latent(sae, latent)
    result = iv.walk_manifold(
        model, sae, prompt, latent, ts=torch.linspace(-span, span, steps), position=position, hook_name=hook
    )
    kl = result.kl_from_clean()
    clean_log_probs = torch.log_softmax(result.clean_logits, -1)
    tracked = sorted(
        {int(t) for t in clean_log_probs.topk(3).indices}
        | {int(result.logits[k, i].argmax()) for k in range(len(result.eigen)) for i in (0, -1)}
    )
    directions = []
    for k, eigen in enumerate(result.eigen):
        log_probs = torch.log_softmax(result.logits[k], -1)
        path = []
        for i, t in enumerate(result.ts.tolist()):
            step: dict[str, Any] = {
                "t": t,
                "latent": float(result.latent_values[k, i]),
                "kl_from_clean": float(kl[k, i]),
                "top_next_tokens": _top(model, torch.log_softmax(result.logits[k, i].float(), -1), top_k),
            }
            if result.lens_logits is not None:
                step["logit_lens"] = _top(model, torch.log_softmax(result.lens_logits[k, i].float(), -1), top_k)
            path.append(step)
        directions.append(
            {
                "eigen": eigen,
                "eigenvalue": float(result.eigenvalues[k]),
                "steps": path,
                "tracked_log_probs": {token_str(model, t): [float(v) for v in log_probs[:, t]] for t in tracked},
            }
        )
    return {
        "latent": latent,
        "prompt": tokens_str(model, prompt[0].tolist()),
        "position": position,
        "token_at_position": token_str(model, int(prompt[0, position])),
        "move": "x + t·||x||·v, v a unit eigenvector of Q_j = (l rᵀ + r lᵀ)/2",
        "clean_next_tokens": _top(model, torch.log_softmax(result.clean_logits.float(), -1), top_k),
        "directions": directions,
    }


# --- the commands: arguments → load → experiment → <name>.json + <name>.png --------------------


def _outputs(out: Path, name: str) -> tuple[Path, Path]:
    return out / f"{name}.json", out / f"{name}.png"


def check_outputs(out: Path, name: str, overwrite: bool) -> None:
    """Refuse, before any work, an ``--out`` that is a file or already holds this command's results."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder: pass a folder for the results")
    existing = [str(path) for path in _outputs(out, name) if path.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{' and '.join(existing)} exist: pass --overwrite to replace them, or another --out")


def write_outputs(out: Path, name: str, result: dict[str, Any], fig: Any) -> Path:
    """Write ``<name>.json`` (strict JSON: NaN/inf refused) and ``<name>.png`` under temporary names,
    then rename both, so a failure leaves no half-written result."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = _outputs(out, name)
    text = json.dumps(result, indent=2, allow_nan=False) + "\n"
    json_tmp, png_tmp = (path.with_name(f".{path.name}.tmp") for path in (json_path, png_path))
    try:
        json_tmp.write_text(text, encoding="utf-8")
        write_png(fig, png_tmp, dpi=120)
        os.replace(json_tmp, json_path)
        os.replace(png_tmp, png_path)
    finally:
        for path in (json_tmp, png_tmp):
            path.unlink(missing_ok=True)
    return json_path


def _prepare(args: argparse.Namespace, name: str) -> Loaded:
    check_outputs(args.out, name, args.overwrite)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return load_model_and_sae(args.sae, args.model, args.hook, args.device, args.seed)


def _finish(
    args: argparse.Namespace,
    name: str,
    loaded: Loaded,
    result: dict[str, Any],
    started: float,
    figure: Callable[[dict[str, Any]], Any],
) -> dict[str, Any]:
    header = {
        "model": getattr(loaded.model.cfg, "model_name", None) or str(args.model),
        "sae": str(args.sae) if args.sae is not None else "toy",
        "architecture": loaded.sae.cfg.architecture(),
        "hook": loaded.hook,
        "d_sae": loaded.sae.cfg.d_sae,
    }
    result = header | result | {"seconds": round(time.time() - started, 2)}
    path = write_outputs(args.out, name, result, figure(result))
    if not args.no_progress:
        print(f"wrote {path} and {name}.png")
    return result


def add_ablate_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "ablate_latents")
    parser.add_argument(
        "--latents", type=comma_list(int_at_least(0)), default=None, help="comma-separated latent indices"
    )
    parser.add_argument(
        "--n-latents",
        type=int_at_least(1),
        default=16,
        help="without --latents: ablate the latents with the largest mean |contribution|",
    )
    parser.add_argument("--mode", choices=ABLATE_MODES, default="zero", help="ablate to zero or to the latent's mean")
    parser.add_argument(
        "--text", type=Path, default=None, help="UTF-8 text file to evaluate on (default: a built-in paragraph)"
    )
    parser.add_argument("--n-seqs", type=int_at_least(1), default=8, help="held-out sequences")
    parser.add_argument("--context", type=int_at_least(2), default=64, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int_at_least(1), default=8, help="sequences per forward pass")
    parser.add_argument("--top-k", type=int_at_least(1), default=10, help="promoted/suppressed tokens to list")


def run_ablate(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    loaded = _prepare(args, "ablate_latents")
    tokens = eval_tokens(loaded.model, args.text, args.n_seqs, args.context, args.seed)
    result = ablate(
        *loaded,
        tokens,
        args.latents,
        args.n_latents,
        args.mode,
        args.batch_size,
        args.top_k,
        progress=not args.no_progress,
    )
    return _finish(args, "ablate_latents", loaded, result, started, ablate_figure)


def add_steer_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "steer")
    parser.add_argument(
        "--latent",
        type=int_at_least(0),
        default=None,
        help="latent to steer along (default: the most active on the prompt)",
    )
    parser.add_argument(
        "--strengths", type=comma_list(finite_float()), default=[0.0, 0.5, 1.0, 2.0], help="comma-separated strengths"
    )
    parser.add_argument(
        "--raw", action="store_true", help="strength in latent units (x + s·||x||·d_j) instead of fractions of ||x||"
    )
    parser.add_argument("--prompt", default=STEER_PROMPT, help="prompt (the toy model samples its own)")
    parser.add_argument("--max-new-tokens", type=int_at_least(0), default=20, help="tokens to generate per strength")
    parser.add_argument("--steer-bos", action="store_true", help="also steer the first position when it is BOS")
    parser.add_argument("--top-k", type=int_at_least(1), default=5, help="next tokens to record per strength")


def run_steer(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    loaded = _prepare(args, "steer")
    prompt = prompt_tokens(loaded.model, args.prompt)
    result = steer(
        *loaded, prompt, args.latent, args.strengths, args.raw, args.max_new_tokens, args.steer_bos, args.top_k
    )
    result = _finish(args, "steer", loaded, result, started, steer_figure)
    if not args.no_progress:
        for row in result["generations"]:
            print(f"strength {row['strength']:+.2f}: {row['text']!r}")
    return result


def add_walk_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "walk_manifold")
    parser.add_argument(
        "--latent", type=int_at_least(0), default=None, help="latent to walk (default: the most active at --position)"
    )
    parser.add_argument("--prompt", default=WALK_PROMPT, help="prompt (the toy model samples its own)")
    parser.add_argument("--position", type=int, default=-1, help="sequence position of the activation to move")
    parser.add_argument(
        "--span", type=finite_float(0.0, strict=True), default=1.0, help="largest |t| (units of the token's norm)"
    )
    parser.add_argument("--steps", type=int_at_least(2), default=21, help="number of steps from -span to span")
    parser.add_argument("--top-k", type=int_at_least(1), default=5, help="tokens to record per step")


def run_walk(args: argparse.Namespace) -> dict[str, Any]:
    started = time.time()
    loaded = _prepare(args, "walk_manifold")
    prompt = prompt_tokens(loaded.model, args.prompt)
    result = walk(*loaded, prompt, args.latent, args.position, args.span, args.steps, args.top_k)
    return _finish(args, "walk_manifold", loaded, result, started, walk_figure)


class Command(NamedTuple):
    """One experiment as a command line: ``add_arguments(parser)``, then ``run(parser.parse_args())``."""

    script: str
    """Its runnable file ``hooks/<script>.py`` and the stem of its outputs ``<script>.json/.png``."""
    description: str
    """One line for ``--help``."""
    add_arguments: Callable[[argparse.ArgumentParser], None]
    """Adds every argument of the command to a parser (or a CLI subparser)."""
    run: Callable[[argparse.Namespace], dict[str, Any]]
    """Runs the command on parsed arguments; writes the outputs and returns the result dict."""


COMMANDS: dict[str, Command] = {
    "ablate": Command("ablate_latents", ablate.__doc__.split("\n")[0], add_ablate_arguments, run_ablate),  # type: ignore[union-attr]
    "steer": Command("steer", steer.__doc__.split("\n")[0], add_steer_arguments, run_steer),  # type: ignore[union-attr]
    "walk": Command("walk_manifold", walk.__doc__.split("\n")[0], add_walk_arguments, run_walk),  # type: ignore[union-attr]
}
"""The experiments by CLI name (``sae-bilinear ablate | steer | walk``)."""


def script_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``python hooks/<script>.py``."""
    spec = COMMANDS[command]
    parser = argparse.ArgumentParser(
        prog=f"python hooks/{spec.script}.py",
        description=spec.description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    spec.add_arguments(parser)
    return parser


def main(command: str, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse ``argv`` for ``command`` and run it (user errors raise)."""
    return COMMANDS[command].run(script_parser(command).parse_args(argv))


def script_entry(command: str, argv: Sequence[str] | None = None) -> int:
    """``main`` for a runnable script: a user error prints one line and exits 2, bugs keep tracebacks."""
    try:
        main(command, argv)
    except UserError as error:
        print(f"python hooks/{COMMANDS[command].script}.py: error: {error}", file=sys.stderr)
        return 2
    return 0
