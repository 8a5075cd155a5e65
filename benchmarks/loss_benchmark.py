"""Forward+backward time of the bilinear loss: naive x⊗x, the kernel trick, and a ReLU SAE step.

Prints one table per dtype and writes ``benchmarks/results/loss_benchmark.json``. Every
ratio is measured in this one process, against the SAELens standard (ReLU) SAE of the same
width, and GFLOP/s is compared with a plain matmul of the encoder's size timed here too.

    python benchmarks/loss_benchmark.py            # default sizes, fp32 and bf16
    python benchmarks/loss_benchmark.py --quick    # smallest size only
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

from sae_bilinear import kernels
from sae_bilinear.experiment_utils import best_time
from sae_bilinear.values import comma_list, int_at_least, one_of

SIZES = [(64, 512, 256), (128, 2048, 512), (256, 4096, 1024)]
RESULTS = Path(__file__).parent / "results" / "loss_benchmark.json"
DTYPES = ("float32", "bfloat16", "float16", "float64")
"""The dtypes ``--dtypes`` may name."""


def kernel_step(x, W_left, W_right) -> Callable[[], None]:
    def run() -> None:
        tokens = kernels.unit_tokens(x)
        f = kernels.bilinear_latents(tokens.unit, W_left, W_right)
        loss = kernels.masked_mean(
            kernels.kernel_error(f, f, W_left, W_right, None, None, tokens.valid).error, tokens.valid
        )
        loss.backward()
        W_left.grad = W_right.grad = None

    return run


def naive_step(x, W_left, W_right) -> Callable[[], None]:
    def run() -> None:
        u = torch.nn.functional.normalize(x, dim=-1)
        f = (u @ W_left.T) * (u @ W_right.T)
        X = torch.einsum("bi,bj->bij", u, u).flatten(1)
        atoms = torch.einsum("fi,fj->fij", W_left, W_right).flatten(1)
        loss = (X - f @ atoms).float().pow(2).sum(-1).mean()
        loss.backward()
        W_left.grad = W_right.grad = None

    return run


def relu_step(x, d: int, F: int, dtype: torch.dtype) -> Callable[[], None]:
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=d, d_sae=F, dtype=str(dtype).removeprefix("torch.")))
    step = TrainStepInput(x, {"l1": 1.0}, None, n_training_steps=0, is_logging_step=False)

    def run() -> None:
        sae.training_forward_pass(step).loss.backward()
        sae.zero_grad(set_to_none=True)

    return run


def measure(d: int, F: int, B: int, dtype: torch.dtype, repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, d, generator=gen).to(dtype)
    W_left = torch.nn.init.orthogonal_(torch.empty(F, d), generator=gen).to(dtype).requires_grad_()
    W_right = torch.nn.init.orthogonal_(torch.empty(F, d), generator=gen).to(dtype).requires_grad_()
    row: dict = {"d": d, "F": F, "B": B, "dtype": str(dtype).removeprefix("torch.")}
    a, b = torch.randn(B, d, dtype=dtype), torch.randn(d, F, dtype=dtype)
    matmul = best_time(lambda: a @ b, repeats)
    row["matmul_gflops"] = 2 * B * d * F / matmul / 1e9
    row["kernel_ms"] = best_time(kernel_step(x, W_left, W_right), repeats) * 1e3
    flops = 8 * B * F * d + 12 * F * F * d + 6 * B * F * F
    row["kernel_gflops"] = flops / (row["kernel_ms"] / 1e3) / 1e9
    row["relu_ms"] = best_time(relu_step(x, d, F, dtype), repeats) * 1e3
    naive_bytes = (F * d * d + B * d * d) * x.element_size() * 4
    naive_flops = 3 * 2 * B * F * d * d  # X̂ = f @ atoms, forward + backward
    # bf16 matmuls can be ~50× slower than fp32 on CPUs without AMX: a lower cap there.
    flop_cap = 2e12 if dtype == torch.float32 else 5e10
    if naive_bytes < 6 * 2**30 and naive_flops < flop_cap:
        row["naive_ms"] = best_time(naive_step(x, W_left, W_right), max(1, repeats // 2)) * 1e3
    else:
        row["naive_ms"] = None  # > 6 GiB for X, X̂ and the d²-wide atoms, or > 2 TFLOP
    row["kernel_vs_relu"] = row["kernel_ms"] / row["relu_ms"]
    row["naive_vs_kernel"] = None if row["naive_ms"] is None else row["naive_ms"] / row["kernel_ms"]
    row["kernel_share_of_matmul_peak"] = row["kernel_gflops"] / row["matmul_gflops"]
    return row


def format_table(rows: list[dict]) -> str:
    header = (
        "| d | F | B | dtype | naive ms | kernel ms | ReLU SAE ms | kernel/ReLU | naive/kernel "
        "| kernel GFLOP/s | matmul GFLOP/s |"
    )
    lines = [header, "|" + "---|" * 11]
    for r in rows:
        naive = "skipped" if r["naive_ms"] is None else f"{r['naive_ms']:.1f}"
        ratio = "–" if r["naive_vs_kernel"] is None else f"{r['naive_vs_kernel']:.1f}×"
        lines.append(
            f"| {r['d']} | {r['F']} | {r['B']} | {r['dtype']} | {naive} | {r['kernel_ms']:.1f} | {r['relu_ms']:.1f} | "
            f"{r['kernel_vs_relu']:.1f}× | {ratio} | {r['kernel_gflops']:.1f} | {r['matmul_gflops']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="only the smallest size")
    parser.add_argument(
        "--threads", type=int_at_least(1), default=1, help="torch threads, ≥ 1 (default 1: steadier on shared CPUs)"
    )
    parser.add_argument(
        "--repeats", type=int_at_least(1), default=3, help="timed repeats per measurement, ≥ 1 (best is kept)"
    )
    parser.add_argument(
        "--dtypes",
        type=comma_list(one_of(DTYPES)),
        default="float32,bfloat16",
        help=f"comma-separated dtypes, each one of {', '.join(DTYPES)}",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON results file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = SIZES[:1] if args.quick else SIZES
    rows = []
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for d, F, B in sizes:
            rows.append(measure(d, F, B, dtype, args.repeats))
            print(f"measured d={d} F={F} B={B} {dtype_name}", flush=True)
    table = format_table(rows)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {
        "processor": platform.processor() or platform.machine(),
        "threads": args.threads,
        "torch": torch.__version__,
    }
    args.out.write_text(json.dumps({"machine": machine, "rows": rows, "table": table}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
