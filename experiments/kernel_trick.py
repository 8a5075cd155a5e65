"""Experiment 1: the kernel trick against the naive x⊗x loss.

The naive loss materialises ``X = ũ⊗ũ`` [B, d'²] and every atom ``l̃_j⊗r̃_j`` [F, d'²];
the kernel trick (``sae_bilinear.kernels.kernel_error``) needs only the F×F Gram matrices:

    ||X − X̂||² = ||ũ||⁴ − 2 gᵀf + gᵀ K g,   K = (L̃L̃ᵀ) ∘ (R̃R̃ᵀ).

Two parts:

1. **Agreement by variant** (float64, small d): loss and gradient of the package's kernel
   error (both backwards) against an independent naive implementation, for vanilla/ordered/mixed/combined,
   lifted and unlifted. The ordered naive loss materialises every prefix ``X̂_{≤k}``.
2. **Scaling** (float32, vanilla, F = expansion·d): forward+backward time of the naive
   loss and of the kernel loss (the package's fused backward, and plain autograd) as d grows,
   relative loss and gradient differences, and the naive loss's estimated memory;
   the naive loss is skipped (not run) once that estimate exceeds ``--memory-cap-gib``.

Writes ``results.json``, ``table.md`` and ``scaling.png`` into ``--out``.

    python experiments/kernel_trick.py            # default: d = 16 … 1024, about a minute
    python experiments/kernel_trick.py --tiny     # seconds (tests)
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sae_bilinear import experiment_utils as common
from sae_bilinear import kernels
from sae_bilinear.values import finite_float

HERE = Path(__file__).resolve().parent
NAME = "kernel_trick"


# ----------------------------------------------------------------------------------------
# The naive loss, written independently of sae_bilinear.kernels
# ----------------------------------------------------------------------------------------


def naive_error(
    x: torch.Tensor,
    W_left: torch.Tensor,
    W_right: torch.Tensor,
    b_left: torch.Tensor | None = None,
    b_right: torch.Tensor | None = None,
    W_down: torch.Tensor | None = None,
    ordered: bool = False,
) -> torch.Tensor:
    """Per-token ``||X − X̂||²/||ũ||⁴`` with X and the atoms materialised (ordered: mean over prefixes)."""
    u = x / x.norm(dim=-1, keepdim=True)
    L, R = W_left, W_right
    if b_left is not None and b_right is not None:  # lifted (both biases, or neither)
        u = torch.cat([torch.ones_like(u[:, :1]), u], dim=-1)
        L = torch.cat([b_left[:, None], W_left], dim=-1)
        R = torch.cat([b_right[:, None], W_right], dim=-1)
    f = (u @ L.T) * (u @ R.T)
    g = f if W_down is None else (f @ W_down.T) @ W_down
    X = (u[:, :, None] * u[:, None, :]).flatten(1)  # [B, d'²]
    atoms = (L[:, :, None] * R[:, None, :]).flatten(1)  # [F, d'²]
    norm4 = u.pow(2).sum(-1).pow(2)
    if not ordered:
        return (X - g @ atoms).pow(2).sum(-1) / norm4
    prefixes = (g[:, :, None] * atoms[None]).cumsum(1)  # [B, F, d'²]: X̂_{≤k}
    return (X[:, None, :] - prefixes).pow(2).sum(-1).mean(1) / norm4


def kernel_error(
    x, W_left, W_right, b_left=None, b_right=None, W_down=None, ordered=False, backward: kernels.Backward = "fused"
) -> torch.Tensor:
    """The package's kernel-trick error (``kernels.unit_tokens`` → latents → ``kernels.kernel_error``).

    ``backward``: ``"fused"`` (the package's default: hand-written backward of ``gᵀKg``) or
    ``"autograd"`` (the plain ``((g @ K) * g).sum(-1)`` differentiated by autograd).
    """
    tokens = kernels.unit_tokens(x)
    f = kernels.bilinear_latents(tokens.unit, W_left, W_right, b_left, b_right)
    g = f if W_down is None else kernels.mix(f, W_down)
    return kernels.kernel_error(
        f, g, W_left, W_right, b_left, b_right, tokens.valid, ordered=ordered, backward=backward
    ).error


def _kernel(backward: kernels.Backward) -> Callable:
    return lambda *a, **k: kernel_error(*a, **k, backward=backward)


BACKWARDS = ("fused", "autograd")


def _params(d: int, F: int, lifted: bool, mixed: bool, dtype: torch.dtype, gen: torch.Generator) -> dict:
    """Random weights with the scale of the trained ones (rows of norm ~1, small biases)."""
    p = {
        "W_left": torch.randn(F, d, generator=gen, dtype=dtype) / d**0.5,
        "W_right": torch.randn(F, d, generator=gen, dtype=dtype) / d**0.5,
    }
    if lifted:
        p["b_left"] = torch.randn(F, generator=gen, dtype=dtype) / F**0.5
        p["b_right"] = torch.randn(F, generator=gen, dtype=dtype) / F**0.5
    if mixed:
        p["W_down"] = torch.randn(2 * d, F, generator=gen, dtype=dtype) / F**0.5
    return p


def _loss_and_grads(fn: Callable, x: torch.Tensor, params: dict, ordered: bool) -> tuple[float, dict]:
    leaves = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    loss = fn(x, **leaves, ordered=ordered).mean()
    loss.backward()
    return float(loss.detach()), {k: v.grad.detach() for k, v in leaves.items()}


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-300))


def agreement(d: int, F: int, B: int, seed: int) -> list[dict]:
    """float64: every variant, lifted and not, both backwards; loss and gradient relative differences."""
    rows = []
    for variant in kernels.VARIANTS:
        for lifted in (False, True):
            gen = torch.Generator().manual_seed(seed)
            x = torch.randn(B, d, generator=gen, dtype=torch.float64) * 3.0
            params = _params(d, F, lifted, kernels.is_mixed(variant), torch.float64, gen)
            ordered = kernels.is_ordered(variant)
            naive_loss, naive_grads = _loss_and_grads(naive_error, x, params, ordered)
            row = {"variant": variant, "lifted": lifted, "d": d, "F": F, "B": B, "naive_loss": naive_loss}
            for backward in BACKWARDS:
                kernel_loss, kernel_grads = _loss_and_grads(_kernel(backward), x, params, ordered)
                row[f"{backward}_loss_rel_diff"] = abs(kernel_loss - naive_loss) / abs(naive_loss)
                row[f"{backward}_grad_rel_diff"] = max(_relative(kernel_grads[k], naive_grads[k]) for k in naive_grads)
            row["kernel_loss"] = kernel_loss
            row["loss_rel_diff"] = max(row[f"{b}_loss_rel_diff"] for b in BACKWARDS)
            row["grad_rel_diff"] = max(row[f"{b}_grad_rel_diff"] for b in BACKWARDS)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------
# Scaling
# ----------------------------------------------------------------------------------------


def naive_bytes(d: int, F: int, B: int, element: int = 4) -> int:
    """Estimated peak memory of the naive forward+backward: X, X̂, X−X̂, its square and the
    gradient of X̂ (5 × B·d²), the atoms, their gradient and the einsum buffer (3 × F·d²)."""
    return (5 * B + 3 * F) * d * d * element


def scaling_row(d: int, F: int, B: int, cap_bytes: int, repeats: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=gen)
    params = _params(d, F, lifted=False, mixed=False, dtype=torch.float32, gen=gen)
    row: dict = {"d": d, "F": F, "B": B, "naive_bytes_estimate": naive_bytes(d, F, B)}
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}

    def step(fn: Callable) -> Callable[[], None]:
        def run() -> None:
            fn(x, **leaves).mean().backward()
            for leaf in leaves.values():
                leaf.grad = None

        return run

    row["autograd_seconds"] = common.best_time(step(_kernel("autograd")), repeats)
    row["kernel_seconds"] = common.best_time(step(_kernel("fused")), repeats)
    row["kernel_flops"] = 8 * B * F * d + 12 * F * F * d + 6 * B * F * F
    if row["naive_bytes_estimate"] > cap_bytes:
        row.update(
            naive_seconds=None, naive_skipped="memory estimate above cap", loss_rel_diff=None, grad_rel_diff=None
        )
        return row
    row["naive_seconds"] = common.best_time(step(naive_error), max(1, repeats - 1))
    naive_loss, naive_grads = _loss_and_grads(naive_error, x, params, False)
    kernel_loss, kernel_grads = _loss_and_grads(_kernel("fused"), x, params, False)
    # Reference in float64, to say which of the two float32 results is closer.
    ref_loss, _ = _loss_and_grads(naive_error, x.double(), {k: v.double() for k, v in params.items()}, False)
    row.update(
        naive_skipped=None,
        loss_rel_diff=abs(kernel_loss - naive_loss) / abs(naive_loss),
        grad_rel_diff=max(_relative(kernel_grads[k], naive_grads[k]) for k in naive_grads),
        kernel_fp32_vs_fp64=abs(kernel_loss - ref_loss) / abs(ref_loss),
        naive_fp32_vs_fp64=abs(naive_loss - ref_loss) / abs(ref_loss),
        speedup=row["naive_seconds"] / row["kernel_seconds"],
    )
    return row


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    ds = [r["d"] for r in rows]
    ax.loglog(ds, [r["kernel_seconds"] for r in rows], "o-", label="kernel trick, fused backward (package default)")
    ax.loglog(ds, [r["autograd_seconds"] for r in rows], "^--", color="C2", label="kernel trick, autograd backward")
    measured = [r for r in rows if r["naive_seconds"] is not None]
    ax.loglog([r["d"] for r in measured], [r["naive_seconds"] for r in measured], "s-", label="naive x⊗x")
    skipped = [r for r in rows if r["naive_seconds"] is None]
    if skipped:
        top = max(r["naive_seconds"] for r in measured) if measured else 1.0
        ax.scatter(
            [r["d"] for r in skipped], [top] * len(skipped), marker="x", color="C1", label="naive skipped (memory cap)"
        )
    ax.set_xlabel("d (F = expansion·d)")
    ax.set_ylabel("forward+backward seconds (best of repeats)")
    ax.set_title("time per step, float32, 1 thread")
    ax.legend(fontsize=8)
    ax2.loglog(ds, [r["naive_bytes_estimate"] / 2**30 for r in rows], "s--", color="C1", label="naive (estimate)")
    ax2.axhline(rows[0]["cap_gib"], color="k", lw=0.8, ls=":", label="cap")
    ax2.set_xlabel("d")
    ax2.set_ylabel("GiB")
    ax2.set_title("memory of the naive loss")
    ax2.legend(fontsize=8)
    common.save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__, NAME, HERE)
    p.add_argument(
        "--dims",
        type=common.count_argument,
        nargs="+",
        default=[16, 32, 64, 128, 256, 384, 512, 768, 1024],
        help="input dimensions d to time (each ≥ 1)",
    )
    p.add_argument(
        "--expansion",
        type=common.count_argument,
        default=2,
        help="F = expansion·d, ≥ 1 (the paper uses 16; naive memory grows with F)",
    )
    p.add_argument("--batch", type=common.count_argument, default=256, help="tokens per batch (≥ 1)")
    p.add_argument(
        "--memory-cap-gib",
        type=finite_float(0.0, strict=True),
        default=4.0,
        help="skip the naive loss above this estimated memory (GiB, > 0)",
    )
    p.add_argument("--repeats", type=common.count_argument, default=3, help="timed runs per measurement (≥ 1)")
    args = p.parse_args(argv)
    common.setup(args.seed)
    if args.tiny:
        args.dims, args.batch, args.repeats = [8, 16, 32], 32, 1
        args.memory_cap_gib = naive_bytes(16, args.expansion * 16, 32) / 2**30  # the naive loss runs at d ≤ 16 only
    started = time.time()
    agree = agreement(d=8 if args.tiny else 12, F=16 if args.tiny else 24, B=16 if args.tiny else 64, seed=args.seed)
    cap = int(args.memory_cap_gib * 2**30)
    rows = []
    for d in args.dims:
        row = scaling_row(d, args.expansion * d, args.batch, cap, args.repeats, args.seed)
        row["cap_gib"] = args.memory_cap_gib
        rows.append(row)
        naive = "skipped" if row["naive_seconds"] is None else f"{row['naive_seconds']:.3f}s"
        print(f"d={d}: kernel {row['kernel_seconds']:.4f}s, naive {naive}", flush=True)
    paper = {  # not measured: what the naive loss would need at the paper's size
        "d": 1024,
        "F": 16 * 1024,
        "B": 32 * 256,
        "naive_bytes_estimate": naive_bytes(1024, 16 * 1024, 32 * 256),
        "atoms_bytes": 16 * 1024 * 1024 * 1024 * 4,
    }
    table_agree = common.markdown_table(
        agree,
        [
            "variant",
            "lifted",
            "naive_loss",
            "fused_loss_rel_diff",
            "fused_grad_rel_diff",
            "autograd_loss_rel_diff",
            "autograd_grad_rel_diff",
        ],
        3,
    )
    for r in rows:
        r["naive_gib"] = r["naive_bytes_estimate"] / 2**30
        r["fused_ms"] = r["kernel_seconds"] * 1e3
        r["autograd_ms"] = r["autograd_seconds"] * 1e3
        r["naive_ms"] = None if r["naive_seconds"] is None else r["naive_seconds"] * 1e3
    table_scale = common.markdown_table(
        rows,
        [
            "d",
            "F",
            "B",
            "naive_ms",
            "autograd_ms",
            "fused_ms",
            "speedup",
            "naive_gib",
            "loss_rel_diff",
            "grad_rel_diff",
            "kernel_fp32_vs_fp64",
            "naive_fp32_vs_fp64",
        ],
        3,
    )
    out = args.out
    result = {
        "command": "python experiments/kernel_trick.py" + (" --tiny" if args.tiny else ""),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "agreement": agree,
        "scaling": rows,
        "paper_size_estimate": paper,
        "seconds": time.time() - started,
    }
    common.write_json(out / "results.json", result)
    (out / "table.md").write_text(
        "## Agreement (float64)\n\n"
        + table_agree
        + "\n\n## Scaling (float32, vanilla, unlifted)\n\n"
        + table_scale
        + "\n"
    )
    plot(rows, out / "scaling.png")
    print(table_agree)
    print(table_scale)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
