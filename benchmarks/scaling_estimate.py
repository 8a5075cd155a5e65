"""The paper's full grid on N GPUs, on paper: FLOPs, storage and wall time per member and in all.

Uses the analytic FLOP model of ``benchmarks/perf_benchmark.py`` (encoder 8·B·F·d for
forward+backward, plus the fused kernel's Gram and gᵀKg terms) and states every assumption
as a flag, so ``docs/scaling.md`` can quote one command. Measured inputs:

* ``--cpu-tokens-per-second``: a member's training throughput on this machine (from
  ``benchmarks/sweep_benchmark.py``'s SmolLM2 run: tokens per member / seconds per member);
* ``--gpu-tflops``: the effective rate assumed on a GPU (default 300 TFLOP/s: ~40 % of an
  H100/H200's bf16 dense peak, the share the fused kernel reached of a plain matmul here).

    python benchmarks/scaling_estimate.py --json benchmarks/results/scaling_estimate.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from sae_bilinear.values import finite_float, int_at_least


def fused_flops(d: int, F: int, B: int, tile: int = 1024) -> float:
    """FLOPs of the fused kernel per step (perf_benchmark.fused_flops, saved Grams)."""
    T = math.ceil(F / tile)
    half = (T + 1) / (2 * T)
    return 4 * F * F * d * half + 2 * B * F * F + 2 * B * F * F * half + 4 * F * F * d


def step_flops(d: int, F: int, B: int) -> float:
    """One forward+backward of a dense bilinear SAE step (matmuls only)."""
    return 8 * B * F * d + fused_flops(d, F, B)


def estimate(
    d: int,
    F: int,
    B: int,
    tokens: int,
    variants: int,
    alphas: int,
    layers: int,
    gpus: int,
    gpu_tflops: float,
    lm_params: float,
    bytes_per_value: int,
    cpu_tokens_per_second: float | None,
) -> dict[str, Any]:
    steps = tokens // B
    member_flops = steps * step_flops(d, F, B)
    member_gpu_s = member_flops / (gpu_tflops * 1e12)
    members = variants * alphas * layers
    # One LM pass per layer group (all layers can share one pass if stored together: counted per layer here,
    # the conservative case of a cluster that collects each layer on its own node).
    lm_flops_per_pass = 2 * lm_params * tokens
    lm_pass_s = lm_flops_per_pass / (gpu_tflops * 1e12)
    storage_per_layer = tokens * d * bytes_per_value
    total_gpu_s = members * member_gpu_s + layers * lm_pass_s
    result = {
        "assumptions": {
            "d_in": d,
            "d_sae": F,
            "batch": B,
            "tokens": tokens,
            "gpu_tflops": gpu_tflops,
            "lm_params": lm_params,
            "bytes_per_value": bytes_per_value,
            "gpus": gpus,
        },
        "members": members,
        "steps_per_member": steps,
        "member_tflop": member_flops / 1e12,
        "member_gpu_minutes": member_gpu_s / 60,
        "lm_pass_gpu_minutes": lm_pass_s / 60,
        "storage_per_layer_gb": storage_per_layer / 1e9,
        "storage_all_layers_gb": layers * storage_per_layer / 1e9,
        "total_gpu_hours": total_gpu_s / 3600,
        "wall_hours_on_gpus": total_gpu_s / 3600 / gpus,
    }
    if cpu_tokens_per_second:
        result["member_cpu_hours_at_measured_rate"] = tokens / cpu_tokens_per_second / 3600
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    count = int_at_least(1)
    parser.add_argument("--d-in", type=count, default=1024, help="residual width, ≥ 1 (Qwen3-0.6B's)")
    parser.add_argument("--d-sae", type=count, default=16384, help="latents, ≥ 1 (expansion 16, as the paper)")
    parser.add_argument("--batch", type=count, default=4096, help="tokens per step (≥ 1)")
    parser.add_argument(
        "--tokens",
        type=count,
        default=8_400_000,
        help="training tokens per member, at least --batch (the paper's 8.4 M)",
    )
    parser.add_argument("--variants", type=count, default=4, help="bilinear variants in the grid (≥ 1)")
    parser.add_argument("--alphas", type=count, default=11, help="α values in the grid (≥ 1)")
    parser.add_argument("--layers", type=count, default=28, help="layers in the grid (≥ 1)")
    parser.add_argument("--gpus", type=count, default=8, help="GPUs the grid is spread over (≥ 1)")
    parser.add_argument(
        "--gpu-tflops", type=finite_float(0.0, strict=True), default=300.0, help="effective TFLOP/s per GPU (> 0)"
    )
    parser.add_argument(
        "--lm-params",
        type=finite_float(0.0),
        default=0.6e9,
        help="language-model parameters, ≥ 0 (forward ≈ 2·params FLOPs/token)",
    )
    parser.add_argument("--bytes-per-value", type=count, default=2, help="stored activation bytes, ≥ 1 (bf16 = 2)")
    parser.add_argument(
        "--cpu-tokens-per-second",
        type=finite_float(0.0, strict=True),
        default=None,
        help="measured member throughput on a CPU (> 0)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.tokens < args.batch:  # tokens // batch steps: none would be trained
        parser.error(f"argument --tokens: {args.tokens} is fewer than one batch (--batch {args.batch})")
    result = estimate(
        args.d_in,
        args.d_sae,
        args.batch,
        args.tokens,
        args.variants,
        args.alphas,
        args.layers,
        args.gpus,
        args.gpu_tflops,
        args.lm_params,
        args.bytes_per_value,
        args.cpu_tokens_per_second,
    )
    for key, value in result.items():
        if key != "assumptions":
            print(f"{key}: {value:.4g}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
