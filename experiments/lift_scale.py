"""Issue 16 §3: the lift scale ũ = [c, u] of a lifted bilinear SAE against TopK at equal parameters.

At the main job's setting (embedded SmolLM2-135M, KJV, ``blocks.15.hook_resid_pre``, mixed, lifted,
expansion 2, α 0.1, Adam) one bilinear SAE is trained per lift scale c (same seed, same init, same
batches: only c differs), and a SAELens TopK SAE with the same parameter count
(``main_job._baseline_sae``). Each is spliced into the model on held-out KJV text by
``sae_bilinear.evaluate.evaluate_splice``: CE recovered, KL, Hoyer density. The mean-ablation
baseline of CE recovered replaces the activation by the **training activations' mean**.

c weighs the blocks of ``ũ⊗ũ``: against the ``u⊗u`` block, the off-diagonal ``c·u`` blocks (what
``decode`` reads) count ``2c²`` and the constant corner ``c⁴``. The error of the model's own target
``||ũ⊗ũ − X̂||²/(1 + c²)²`` is therefore not comparable across c; the ``x⊗x error`` reported is the
c-free error of the ``u⊗u = x⊗x/||x||⁴`` block, ``||u⊗u − Σ g_j l_j⊗r_j||²`` (kernel trick, unlifted
rows), next to the lifted error.

A second way to a better splice: a readout fitted after training, ``x̂ = ||x||·(f W + a)``, with
``W, a`` fitted by ridge least squares from the latents ``f`` to the unit tokens ``u`` on the training
activations (ridge λ chosen on a tenth of them held out from the fit), scored on the held-out text.

    python experiments/lift_scale.py            # about 20–40 min on 2 shared cores (5 SAEs of 600 steps)
    python experiments/lift_scale.py --tiny     # seconds (tests); numbers are meaningless

Results: ``results.json``, ``table.md``, ``lift_scale.png`` (CE recovered and x⊗x error against c).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sae_bilinear import evaluate, kernels
from sae_bilinear import experiment_utils as _common
from sae_bilinear.bilinear import (
    BilinearSAE,
    BilinearTrainingSAE,
    BilinearTrainingSAEConfig,
    default_alpha_warm_up_steps,
)
from sae_bilinear.hub import load_any_from_disk
from sae_bilinear.main_job import MainJobConfig, _baseline_sae
from sae_bilinear.train import TrainingSettings, train_on_activations

NAME = "lift_scale"
SCALES = (0.5, 1.0, 2.0, 4.0)
ERROR_SLACK = 1.10
"""The goal allows an x⊗x error up to 10 % above that of c = 1."""
RIDGE_GRID = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1)
"""Ridge λ as a fraction of the mean diagonal of FᵀF."""


def arguments(argv: list[str] | None) -> Any:
    p = _common.parser(__doc__, NAME, Path(__file__).resolve().parent)
    p.add_argument(
        "--scales", type=_common.positive_argument, nargs="+", default=list(SCALES), help="lift scales c to train (> 0)"
    )
    p.add_argument(
        "--steps", type=_common.count_argument, default=600, help="optimiser steps per SAE, ≥ 1 (main job: 150)"
    )
    p.add_argument("--batch-size", type=_common.count_argument, default=1024, help="tokens per step (≥ 1)")
    p.add_argument(
        "--lr", type=_common.positive_argument, default=1e-3, help="Adam learning rate, > 0 (the main job's)"
    )
    p.add_argument("--alpha", type=_common.nonnegative_argument, default=0.1, help="Hoyer density weight (≥ 0)")
    p.add_argument("--expansion", type=_common.count_argument, default=2, help="d_sae / d_in (≥ 1)")
    p.add_argument(
        "--baseline-k", type=_common.count_argument, default=32, help="k of the TopK baseline, ≥ 1 (the main job's)"
    )
    p.add_argument(
        "--train-contexts",
        type=_common.count_argument,
        default=256,
        help="training contexts of 128 tokens, ≥ 1 (main job: 256)",
    )
    p.add_argument(
        "--eval-contexts",
        type=_common.count_argument,
        default=32,
        help="held-out contexts for the splice evaluation (≥ 1)",
    )
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.batch_size = 12, 64
    return args


# ----------------------------------------------------------------------------------------
# Training (cached per run under --cache, so a killed run resumes at the SAE it was on)
# ----------------------------------------------------------------------------------------


def _quiet() -> Any:
    return contextlib.redirect_stderr(io.StringIO())


def _settings(args: Any) -> TrainingSettings:
    return TrainingSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer="adam",
        seed=args.seed,
        dead_feature_window=max(10, args.steps // 2),
    )


def _cached(path: Path, train: Any) -> tuple[Any, float]:
    """The inference SAE saved in ``path``, else ``train()`` → (training SAE, seconds) saved there."""
    meta = path / "experiment.json"
    if (path / "cfg.json").is_file() and meta.is_file():
        return load_any_from_disk(path, device="cpu"), float(json.loads(meta.read_text())["seconds"])
    sae, seconds = train()
    partial = path.with_name(path.name + ".partial")
    sae.save_inference_model(partial)
    _common.write_json(partial / "experiment.json", {"seconds": seconds})
    if path.exists():
        raise FileExistsError(f"{path} exists without a finished run; remove it and rerun")
    partial.rename(path)
    return load_any_from_disk(path, device="cpu"), seconds


def train_bilinear(train_x: Tensor, c: float, args: Any, cache: Path) -> tuple[BilinearSAE, float]:
    """The main job's bilinear SAE at lift scale ``c`` (same seed, init and batches for every c)."""

    def train() -> tuple[Any, float]:
        torch.manual_seed(args.seed)
        d_in = train_x.shape[-1]
        cfg = BilinearTrainingSAEConfig(
            d_in=d_in,
            d_sae=args.expansion * d_in,
            variant="mixed",
            lifted=True,
            lift_scale=c,
            alpha=args.alpha,
            alpha_warm_up_steps=default_alpha_warm_up_steps(args.steps),
        )
        sae = BilinearTrainingSAE(cfg)
        started = time.time()
        with _quiet():
            train_on_activations(sae, train_x, _settings(args))
        return sae, time.time() - started

    return _cached(cache / f"mixed-c{c:g}-{_run_key(args)}", train)


def train_topk(train_x: Tensor, n_params: int, args: Any, cache: Path) -> tuple[Any, float]:
    """The main job's TopK baseline with (about) ``n_params`` parameters."""

    def train() -> tuple[Any, float]:
        job = MainJobConfig(baseline="topk", baseline_k=args.baseline_k, seed=args.seed, atlas=False)
        sae = _baseline_sae(job, train_x.shape[-1], n_params)
        started = time.time()
        with _quiet():
            train_on_activations(sae, train_x, _settings(args))
        return sae, time.time() - started

    return _cached(cache / f"topk-k{args.baseline_k}-p{n_params}-{_run_key(args)}", train)


def _run_key(args: Any) -> str:
    tiny = "tiny-" if args.tiny else ""
    return (
        f"{tiny}x{args.expansion}-a{args.alpha:g}-s{args.steps}-b{args.batch_size}-lr{args.lr:g}"
        f"-t{args.train_contexts}-seed{args.seed}"
    )


# ----------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def xx_errors(sae: BilinearSAE, x: Tensor, batch_size: int = 2048) -> dict[str, float]:
    """Mean ``||u⊗u − Σ g_j l_j⊗r_j||²`` (the c-free x⊗x block) and the model's own lifted error."""
    block, lifted, count = 0.0, 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start : start + batch_size]
        tokens = kernels.unit_tokens(chunk, dtype=sae.W_left.dtype)
        g = sae.coefficients(sae.encode(chunk))
        products = kernels.bilinear_latents(tokens.unit, sae.W_left, sae.W_right)  # (l·u)(r·u): <u⊗u, l⊗r>
        error = kernels.kernel_error(products, g, sae.W_left, sae.W_right, None, None, tokens.valid).error
        block += float(error[tokens.valid].double().sum())
        lifted += float(sae.reconstruction_error(chunk)[tokens.valid].double().sum())
        count += int(tokens.valid.sum())
    if count == 0:
        raise ValueError("no valid held-out token to score the x⊗x error on")
    return {"xx_error": block / count, "lifted_error": lifted / count}


class FittedReadout(BilinearSAE):
    """A trained bilinear SAE whose ``decode`` is a readout fitted after training:
    ``x̂ = ||x||·(f W + a)`` (the encoder, the latents and ``X̂`` are the SAE's own)."""

    def __init__(self, base: BilinearSAE, weight: Tensor, bias: Tensor):
        super().__init__(base.cfg)
        self.load_state_dict(base.state_dict())
        self.register_buffer("readout_weight", weight.to(base.W_left.dtype))
        self.register_buffer("readout_bias", bias.to(base.W_left.dtype))

    def decode(self, feature_acts: Tensor, input_norm: Tensor | None = None) -> Tensor:  # type: ignore[override]
        self._check_latents(feature_acts, "feature_acts")
        norm, dtype = self._norm_of(feature_acts, input_norm)
        weight, bias = self.readout_weight, self.readout_bias
        assert isinstance(weight, Tensor) and isinstance(bias, Tensor)
        return self._finish_decode(feature_acts.to(weight.dtype) @ weight + bias, norm, dtype)


@torch.no_grad()
def fit_readout(sae: BilinearSAE, train_x: Tensor) -> tuple[Tensor, Tensor, dict[str, float]]:
    """Ridge least squares from the latents to ``u`` on the training activations: ``(W, a, info)``.

    λ (a fraction of the mean diagonal of the centred FᵀF) is chosen on the last tenth of the
    training tokens, then ``W, a`` are refitted on all of them.
    """
    tokens = kernels.unit_tokens(train_x)
    f = sae.encode(train_x).double()[tokens.valid]
    u = tokens.unit.double()[tokens.valid]
    cut = int(0.9 * f.shape[0])

    def solve(f: Tensor, u: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
        f_mean, u_mean = f.mean(0), u.mean(0)
        fc = f - f_mean
        gram = fc.T @ fc
        ridge = fraction * float(gram.diagonal().mean())
        weight = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), fc.T @ (u - u_mean))
        return weight, u_mean - f_mean @ weight

    def mse(weight: Tensor, bias: Tensor, f: Tensor, u: Tensor) -> float:
        return float((f @ weight + bias - u).pow(2).sum(-1).mean())

    scores = {fraction: mse(*solve(f[:cut], u[:cut], fraction), f[cut:], u[cut:]) for fraction in RIDGE_GRID}
    best = min(scores, key=lambda k: scores[k])
    weight, bias = solve(f, u, best)
    decoder = (sae.coefficients(f.to(sae.W_left.dtype)) @ sae.decoder_directions()).double()
    info = {
        "ridge_fraction": best,
        "validation_unit_mse": scores[best],
        "train_unit_mse": mse(weight, bias, f, u),
        "train_unit_mse_own_decoder": float((decoder - u).pow(2).sum(-1).mean()),
    }
    return weight.float(), bias.float(), info


def splice(model: Any, sae: Any, data: dict[str, Any], mean: Tensor, mean_source: str) -> dict[str, Any]:
    ignore = [data["bos"]] if data.get("bos") is not None else None
    metrics = evaluate.evaluate_splice(
        model,
        sae,
        data["eval_tokens"],
        hook_name=data["hook"],
        ignore_tokens=ignore,
        mean_activation=mean,
        mean_source=mean_source,
        progress=False,
    )
    return metrics.to_dict() | {"mean_ablation_source": metrics.mean_ablation_source}


# ----------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = arguments(argv)
    _common.setup(args.seed)
    started = time.time()
    spec = (
        _common.TINY_SPEC
        if args.tiny
        else _common.ActivationSpec(train_contexts=args.train_contexts, eval_contexts=args.eval_contexts)
    )
    model = _common.load_model(spec.model)
    data = _common.model_activations(spec, args.cache, model)
    data["hook"] = spec.hook
    train_x, heldout = data["train"].float(), data["heldout"].float()
    mean = evaluate.activation_mean(train_x)
    mean_source = f"training activations' mean (over the {train_x.shape[0]} training tokens, BOS excluded)"
    cache = Path(args.cache) / NAME

    rows: list[dict[str, Any]] = []
    saes: dict[float, BilinearSAE] = {}
    for c in args.scales:
        sae, seconds = train_bilinear(train_x, c, args, cache)
        saes[c] = sae
        row = {"sae": "bilinear mixed", "c": c, "readout": "decoder", "training_seconds": seconds}
        row |= splice(model, sae, data, mean, mean_source) | xx_errors(sae, heldout)
        rows.append(row)
        weight, bias, info = fit_readout(sae, train_x)
        fitted = splice(model, FittedReadout(sae, weight, bias), data, mean, mean_source)
        rows.append(
            {"sae": "bilinear mixed", "c": c, "readout": "ridge fit", **fitted, **xx_errors(sae, heldout), **info}
        )
        print(f"c={c:g}: CE recovered {row['ce_loss_recovered']:.3f} (fitted readout "
              f"{fitted['ce_loss_recovered']:.3f}), x⊗x error {row['xx_error']:.4f}", flush=True)  # fmt: skip
    n_params = sum(p.numel() for p in next(iter(saes.values())).parameters())
    topk, seconds = train_topk(train_x, n_params, args, cache)
    baseline = {"sae": f"TopK k={topk.cfg.k}", "c": None, "readout": "decoder", "training_seconds": seconds}
    baseline |= splice(model, topk, data, mean, mean_source)
    baseline["params"] = sum(p.numel() for p in topk.parameters())
    rows.append(baseline)
    for row in rows[:-1]:
        row["params"] = n_params

    results = summarise(args, rows, data, spec, mean_source, time.time() - started)
    write(args.out, results)
    return results


def summarise(
    args: Any, rows: list[dict[str, Any]], data: dict[str, Any], spec: Any, mean_source: str, seconds: float
) -> dict[str, Any]:
    """The results, with where the goal lands (CE recovered ≥ TopK's, x⊗x error ≤ 1.1 × c = 1's)."""
    topk = next(r for r in rows if r["c"] is None)
    reference = next((r for r in rows if r["c"] == 1.0 and r["readout"] == "decoder"), None)
    limit = None if reference is None else ERROR_SLACK * reference["xx_error"]
    for row in rows:
        if row["c"] is None:
            continue
        row["beats_topk"] = row["ce_loss_recovered"] >= topk["ce_loss_recovered"]
        row["error_within_10pct"] = None if limit is None else row["xx_error"] <= limit
        row["meets_goal"] = bool(row["beats_topk"] and row["error_within_10pct"])
    return {
        "setting": {
            "model": spec.model,
            "hook": spec.hook,
            "corpus": spec.corpus,
            "variant": "mixed",
            "lifted": True,
            "expansion": args.expansion,
            "alpha": args.alpha,
            "optimizer": "adam",
            "lr": args.lr,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "seed": args.seed,
            "train_tokens": int(data["train"].shape[0]),
            "heldout_tokens": int(data["heldout"].shape[0]),
            "eval_contexts": int(data["eval_tokens"].shape[0]),
            "tiny": args.tiny,
        },
        "scales": list(args.scales),
        "mean_ablation_source": mean_source,
        "xx_error_definition": "mean over held-out tokens of ||u⊗u − Σ g_j l_j⊗r_j||² (u = x/||x||; the c-free block)",
        "lifted_error_definition": "mean of ||ũ⊗ũ − X̂||²/(1 + c²)², ũ = [c, u] (the training objective's error)",
        "x_error_limit": limit,
        "goal": "CE recovered ≥ TopK's at equal parameters, x⊗x error ≤ 1.1 × that at c = 1",
        "goal_met_by": [f"c={r['c']:g} ({r['readout']})" for r in rows if r.get("meets_goal")],
        "rows": rows,
        "seconds": seconds,
    }


COLUMNS = [
    "sae",
    "c",
    "readout",
    "ce_loss_recovered",
    "kl",
    "xx_error",
    "lifted_error",
    "hoyer_density",
    "explained_variance",
    "ce_spliced",
    "params",
]


def write(out: Path, results: dict[str, Any]) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _common.write_json(out / "results.json", results)
    s = results["setting"]
    lines = [
        f"# Lift scale ũ = [c, u] against TopK at equal parameters ({s['model']}, {s['hook']})",
        "",
        f"mixed lifted bilinear SAE, expansion {s['expansion']}, α {s['alpha']}, Adam lr {s['lr']}, "
        f"{s['steps']} steps × {s['batch_size']} tokens on {s['train_tokens']} training tokens (seed {s['seed']}); "
        f"splice on {s['eval_contexts']} held-out contexts ({s['heldout_tokens']} tokens).",
        "",
        f"**Mean-ablation baseline of CE recovered: the {results['mean_ablation_source']}.**",
        "",
        f"x⊗x error: {results['xx_error_definition']}. lifted error: {results['lifted_error_definition']}.",
        "readout `ridge fit`: x̂ = ||x||·(f W + a), W, a by ridge least squares from the latents to u on the "
        "training activations (λ chosen on a held-out tenth of them), scored on the held-out text.",
        "",
        _common.markdown_table(results["rows"], COLUMNS),
        "",
        f"Goal ({results['goal']}): met by {', '.join(results['goal_met_by']) or 'none'}.",
        "",
        f"Command: `python experiments/lift_scale.py --scales {' '.join(f'{c:g}' for c in results['scales'])}`",
    ]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    plot(results, out / "lift_scale.png")


def plot(results: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    rows = results["rows"]
    fig = Figure(figsize=(10, 3.8), dpi=100, layout="constrained")
    ce_ax, err_ax = fig.subplots(1, 2)
    for readout, style in (("decoder", "o-"), ("ridge fit", "s--")):
        chosen = [r for r in rows if r["c"] is not None and r["readout"] == readout]
        cs = [r["c"] for r in chosen]
        ce_ax.plot(cs, [r["ce_loss_recovered"] for r in chosen], style, label=f"bilinear ({readout})")
        if readout == "decoder":
            err_ax.plot(cs, [r["xx_error"] for r in chosen], style, label="x⊗x (u⊗u block)")
            err_ax.plot(cs, [r["lifted_error"] for r in chosen], "^:", label="own ũ⊗ũ / (1+c²)²")
    topk = next(r for r in rows if r["c"] is None)
    ce_ax.axhline(topk["ce_loss_recovered"], color="k", linestyle=":", label=f"{topk['sae']} (equal params)")
    if results["x_error_limit"] is not None:
        err_ax.axhline(results["x_error_limit"], color="grey", linestyle=":", label="1.1 × x⊗x error at c = 1")
    for ax, label in ((ce_ax, "CE loss recovered (mean-ablation: training mean)"), (err_ax, "held-out error")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("lift scale c  (ũ = [c, u])")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    _common.save_figure(fig, path)


if __name__ == "__main__":
    main()
