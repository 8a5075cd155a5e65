"""Speed and memory of the bilinear kernel loss and of whole SAELens training steps.

Three tables, every ratio measured in this one process (best of ``--repeats``, configurations
interleaved so that a busy machine slows them alike):

1. **Kernel** per size (d, F, B) and dtype: forward+backward of the loss alone (inputs ``f``,
   ``L``, ``R`` as leaves) for autograd's Gram formulation, the fused hand-written backward,
   the fused one under a memory budget (Gram blocks recomputed in the backward), and the
   k×k-block TopK kernel; next to SAELens's ReLU and TopK SAE steps (forward+backward) of the
   same width. GFLOP/s (by each method's own FLOP count) as a share of a plain
   ``[B, d] @ [d, F]`` matmul timed here too, and peak memory of one forward+backward.
2. **Whole step**: tokens/s of ``SAETrainer._train_step`` (SAELens's trainer on cached
   activations: forward, backward, gradient clipping, Adam, schedulers) for bilinear dense,
   bilinear TopK, SAELens standard (ReLU) and TopK at equal width, with the measured time
   ratio against the analytic FLOP ratio.
3. **Accuracy**: fused float32 against float64 (values and gradients).

On the CPU each measurement runs in a forked child, after the same workload at a tiny size
(one-time initialisation): its time is a warm run (for F ≥ 8192, where F×F buffers dominate,
the single measured run), its peak memory the rise of the resident set (``VmHWM`` after
``/proc/self/clear_refs``) over one forward+backward with glibc told to mmap every buffer of
64 KiB or more, so that the resident set follows the bytes alive. On CUDA peak memory is
``torch.cuda.max_memory_allocated`` and times are synchronised.

    python benchmarks/perf_benchmark.py                  # default sizes (~5 min on 1 CPU thread)
    python benchmarks/perf_benchmark.py --quick          # small sizes only (~30 s)
    python benchmarks/perf_benchmark.py --device cpu --tiny   # dry run of the GPU check
    python benchmarks/perf_benchmark.py --device cuda --sizes 1024x16384x4096 --dtypes float32 --autocast
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.sae import TrainStepInput
from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer

from sae_bilinear import BilinearTrainingSAE, BilinearTrainingSAEConfig, kernel_autograd, kernels
from sae_bilinear.train import ShuffledBatches
from sae_bilinear.values import comma_list, int_at_least, one_of

RESULTS = Path(__file__).parent / "results" / "perf_benchmark.json"
KERNEL_SIZES = {
    "float32": [(128, 2048, 512), (256, 4096, 1024), (512, 8192, 2048)],
    "bfloat16": [(64, 512, 256), (128, 2048, 512)],
}
STEP_SIZES = [(256, 4096, 1024), (512, 8192, 2048)]
QUICK_KERNEL = {"float32": [(128, 2048, 512)], "bfloat16": [(64, 512, 256)]}
QUICK_STEP = [(128, 2048, 512)]
TINY_KERNEL = {"float32": [(32, 256, 64)], "bfloat16": [(32, 256, 64)]}
TINY_STEP = [(32, 256, 64)]
DTYPES = ("float32", "bfloat16", "float16", "float64")
"""The dtypes ``--dtypes`` may name."""
COLD_ONLY_F = 8192
"""From this F on, F×F buffers dominate and one cold run per child is timed (no warm run)."""
WARMUP_SIZE = (16, 128, 16)
"""(d, F, B) of the tiny run that initialises a child before it is measured."""


# ----------------------------------------------------------------------------------- measuring


def _read_status(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@dataclass
class Sample:
    seconds: float
    peak_bytes: int | None


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _mmap_threshold(size: int) -> None:
    """glibc: serve every allocation of ``size`` bytes or more by mmap and unmap it on free.

    With 64 KiB, freed buffers leave the resident set at once, so its high-water mark follows
    the bytes actually alive (torch's CPU allocator is plain malloc) instead of what the heap
    happened to cache.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, size)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * size)
    except OSError:
        pass


def _timed(run: Callable[[], Any], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _run_once(run: Callable[[], Any], device: torch.device, warm: bool, warmup: Callable[[], Any] | None) -> Sample:
    """Time and peak memory of ``run``.

    CUDA: a warm-up run, then one run timed and measured by ``max_memory_allocated``.
    CPU (in a forked child): ``warmup`` (the same workload at a tiny size: one-time
    initialisation out of the way); the memory run with a 64 KiB :func:`_mmap_threshold`
    (also the timed run when not ``warm``: for large F its buffers are mmap-sized anyway);
    if ``warm``, an untimed and a timed run with a 32 MiB threshold.
    """
    if device.type == "cuda":
        run()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        seconds = _timed(run, device)
        return Sample(seconds, torch.cuda.max_memory_allocated() - base)
    if warmup is not None:
        warmup()
    # Memory first, on a heap with no large free chunks cached (malloc serves those before
    # it would mmap), with every buffer ≥ 64 KiB mmapped and unmapped on free.
    _mmap_threshold(65536)
    can_reset = _reset_peak()
    base = _read_status("VmRSS")
    seconds = _timed(run, device)
    high = _read_status("VmHWM")
    peak = high - base if can_reset and high is not None and base is not None else None
    if warm:
        # Then the time of a warm run with glibc's largest dynamic threshold (its steady state).
        _mmap_threshold(32 * 2**20)
        run()
        seconds = _timed(run, device)
    return Sample(seconds, peak)


def sample(run: Callable[[], Any], device: torch.device, warm: bool, warmup: Callable[[], Any] | None = None) -> Sample:
    """One measurement; on the CPU in a forked child so that its peak memory is its own."""
    if device.type != "cpu" or not hasattr(os, "fork"):
        return _run_once(run, device, warm, warmup)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read)
        try:
            result: Any = _run_once(run, device, warm, warmup)
        except BaseException as error:  # noqa: BLE001  # reported by the parent
            result = f"{type(error).__name__}: {error}"
        with os.fdopen(write, "wb") as pipe:
            pickle.dump(result, pipe)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        result = pickle.load(pipe)
    os.waitpid(pid, 0)
    if isinstance(result, str):
        raise RuntimeError(f"benchmark child failed: {result}")
    return result


def best_of(
    configs: dict[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    warm: bool,
    warmups: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, Sample]:
    """Interleave the configurations ``repeats`` times; keep the best time and the lowest peak."""
    best: dict[str, Sample] = {}
    for _ in range(repeats):
        for name, run in configs.items():
            s = sample(run, device, warm, (warmups or {}).get(name))
            old = best.get(name)
            if old is None:
                best[name] = s
            else:
                peaks = [p for p in (old.peak_bytes, s.peak_bytes) if p is not None]
                best[name] = Sample(min(old.seconds, s.seconds), min(peaks) if peaks else None)
    return best


def matmul_gflops(d: int, F: int, B: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    a = torch.randn(B, d, dtype=dtype, device=device)
    b = torch.randn(d, F, dtype=dtype, device=device)
    out = torch.empty(B, F, dtype=dtype, device=device)
    times = []
    for _ in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * B * d * F / min(times[1:]) / 1e9


# ------------------------------------------------------------------------------------ workloads


def fused_flops(d: int, F: int, B: int, tile: int, recompute: bool = False) -> float:
    """FLOPs of the fused kernel: block-symmetric Grams, Kg, gᵀdiag(s)g, ∂L and ∂R."""
    T = math.ceil(F / tile)
    half = (T + 1) / (2 * T)  # share of the blocks computed (I ≤ J)
    grams = 4 * F * F * d * half * (2 if recompute else 1)
    return grams + 2 * B * F * F + 2 * B * F * F * half + 4 * F * F * d


def autograd_flops(d: int, F: int, B: int) -> float:
    return 12 * F * F * d + 6 * B * F * F


def sparse_flops(d: int, B: int, k: int) -> float:
    return 8 * B * k * k * d


def kernel_workloads(d: int, F: int, B: int, k: int, dtype: torch.dtype, device: torch.device) -> tuple[dict, dict]:
    """Closures for the kernel table (built here, so forked children share the inputs)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, d, generator=gen)
    W_left = (torch.randn(F, d, generator=gen) / d**0.5).to(device, dtype).requires_grad_()
    W_right = (torch.randn(F, d, generator=gen) / d**0.5).to(device, dtype).requires_grad_()
    unit = torch.nn.functional.normalize(x, dim=-1).to(device, dtype)
    f = kernels.bilinear_latents(unit, W_left, W_right).detach().requires_grad_()
    valid = torch.ones(B, dtype=torch.bool, device=device)
    indices = kernels.topk_indices(f.detach(), k)
    element = kernels.accumulation_dtype(dtype).itemsize if hasattr(dtype, "itemsize") else 4
    budget = F * F * element // 2

    def clear() -> None:
        W_left.grad = W_right.grad = f.grad = None

    def dense(**options: Any) -> Callable[[], None]:
        def run() -> None:
            out = kernels.kernel_error(f, f, W_left, W_right, None, None, valid, **options)
            kernels.masked_mean(out.error, valid).backward()
            clear()

        return run

    def sparse() -> None:
        out = kernels.sparse_kernel_error(f, f.gather(-1, indices), indices, W_left, W_right, None, None, valid)
        kernels.masked_mean(out.error, valid).backward()
        clear()

    plan = kernel_autograd.plan_tiles(F, element)
    budget_plan = kernel_autograd.plan_tiles(F, element, memory_budget=budget)
    flops = {
        "autograd": autograd_flops(d, F, B),
        "fused": fused_flops(d, F, B, plan.tile),
        "fused_budget": fused_flops(d, F, B, budget_plan.tile, recompute=not budget_plan.save_grams),
        "sparse": sparse_flops(d, B, k),
    }
    configs = {
        "autograd": dense(backward="autograd"),
        "fused": dense(backward="fused"),
        "fused_budget": dense(backward="fused", memory_budget=budget),
        "sparse": sparse,
    }
    info = {"flops": flops, "tile": plan.tile, "budget_bytes": budget, "budget_tile": budget_plan.tile}
    return configs, info


def make_saes(d: int, F: int, k: int, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    name = str(dtype).removeprefix("torch.")
    common = {"d_in": d, "d_sae": F, "dtype": name, "device": str(device)}
    torch.manual_seed(0)
    return {
        "bilinear_dense": BilinearTrainingSAE(BilinearTrainingSAEConfig(**common, alpha=0.1, alpha_warm_up_steps=0)),
        "bilinear_topk": BilinearTrainingSAE(
            BilinearTrainingSAEConfig(**common, sparsity="topk", k=k, alpha=0.1, alpha_warm_up_steps=0)
        ),
        "standard": StandardTrainingSAE(StandardTrainingSAEConfig(**common)),
        "topk": TopKTrainingSAE(TopKTrainingSAEConfig(**common, k=k)),
    }


def step_flops(name: str, d: int, F: int, B: int, k: int, tile: int) -> float:
    """Analytic FLOPs of one forward+backward (matmuls only)."""
    if name == "bilinear_dense":
        return 8 * B * F * d + fused_flops(d, F, B, tile)
    if name == "bilinear_topk":
        return 8 * B * F * d + sparse_flops(d, B, k)
    return 10 * B * F * d  # encoder fwd/bwd (2+2), decoder fwd (2), ∂W_dec and ∂f (2+2)


def sae_step_workloads(d: int, F: int, B: int, k: int, dtype: torch.dtype, device: torch.device) -> dict:
    x = torch.randn(B, d, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    saes = make_saes(d, F, k, dtype, device)
    coefficients = {
        "bilinear_dense": {"alpha": 0.1},
        "bilinear_topk": {"alpha": 0.1},
        "standard": {"l1": 1.0},
        "topk": {},
    }

    def step(name: str) -> Callable[[], None]:
        sae = saes[name]
        inp = TrainStepInput(x, coefficients[name], None, n_training_steps=1, is_logging_step=False)

        def run() -> None:
            sae.training_forward_pass(inp).loss.backward()
            sae.zero_grad(set_to_none=True)

        return run

    return {"relu_step": step("standard"), "topk_step": step("topk")}


def make_trainer(
    sae: Any, activations: torch.Tensor, batch: int, device: torch.device, autocast: bool, steps: int
) -> SAETrainer:
    cfg = SAETrainerConfig(
        total_training_samples=max(steps, 1) * batch,
        train_batch_size_samples=batch,
        lr=1e-4,
        lr_end=1e-4,
        lr_decay_steps=0,
        device=str(device),
        autocast=autocast,
        dead_feature_window=1000,
        feature_sampling_window=1000,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=1,
    )
    return SAETrainer(cfg=cfg, sae=sae, data_provider=ShuffledBatches(activations, batch))


def time_trainer_steps(trainer: SAETrainer, device: torch.device, warmup: int, steps: int) -> list[float]:
    times = []
    for i in range(warmup + steps):
        batch = next(trainer.data_provider).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer._train_step(trainer.sae, batch)
        trainer.n_training_steps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------------------------- tables


def kernel_row(d: int, F: int, B: int, k: int, dtype: torch.dtype, device: torch.device, repeats: int) -> dict:
    row: dict[str, Any] = {"d": d, "F": F, "B": B, "k": k, "dtype": str(dtype).removeprefix("torch.")}
    row["matmul_gflops"] = matmul_gflops(d, F, B, dtype, device, max(repeats, 3))
    configs, info = kernel_workloads(d, F, B, k, dtype, device)
    configs |= sae_step_workloads(d, F, B, k, dtype, device)
    warmups, _ = kernel_workloads(*WARMUP_SIZE, min(k, 8), dtype, device)
    warmups |= sae_step_workloads(*WARMUP_SIZE, min(k, 8), dtype, device)
    warm = F < COLD_ONLY_F
    results = best_of(configs, device, repeats, warm, warmups)
    row["tile"], row["budget_bytes"], row["budget_tile"] = info["tile"], info["budget_bytes"], info["budget_tile"]
    for name, s in results.items():
        row[f"{name}_ms"] = s.seconds * 1e3
        row[f"{name}_peak_mb"] = None if s.peak_bytes is None else s.peak_bytes / 2**20
    for name, flops in info["flops"].items():
        row[f"{name}_gflops"] = flops / results[name].seconds / 1e9
        row[f"{name}_share_of_matmul"] = row[f"{name}_gflops"] / row["matmul_gflops"]
    row["fused_vs_autograd"] = row["fused_ms"] / row["autograd_ms"]
    row["fused_vs_autograd_flops"] = info["flops"]["fused"] / info["flops"]["autograd"]
    row["autograd_vs_relu"] = row["autograd_ms"] / row["relu_step_ms"]
    row["fused_vs_relu"] = row["fused_ms"] / row["relu_step_ms"]
    row["sparse_vs_topk"] = row["sparse_ms"] / row["topk_step_ms"]
    return row


def step_rows(
    d: int, F: int, B: int, k: int, device: torch.device, autocast: bool, steps: int, dense_steps: int
) -> list[dict]:
    dtype = torch.float32
    n_batches = 4
    activations = torch.randn(n_batches * B, d, generator=torch.Generator().manual_seed(2)).to(device)
    saes = make_saes(d, F, k, dtype, device)
    tile = kernel_autograd.plan_tiles(F, 4).tile
    trainers = {name: make_trainer(sae, activations, B, device, autocast, steps) for name, sae in saes.items()}
    times: dict[str, list[float]] = {name: [] for name in trainers}
    # Interleave: one warm-up each, then rounds of single steps.
    for trainer in trainers.values():
        time_trainer_steps(trainer, device, 1, 0)
    for i in range(steps):
        for name, trainer in trainers.items():
            if name == "bilinear_dense" and i >= dense_steps:
                continue
            times[name] += time_trainer_steps(trainer, device, 0, 1)
    rows = []
    best = {name: min(t) for name, t in times.items()}
    for name in trainers:
        flops = step_flops(name, d, F, B, k, tile)
        rows.append(
            {
                "d": d,
                "F": F,
                "B": B,
                "k": k,
                "model": name,
                "autocast": autocast,
                "steps_timed": len(times[name]),
                "step_ms": best[name] * 1e3,
                "median_step_ms": sorted(times[name])[len(times[name]) // 2] * 1e3,
                "tokens_per_s": B / best[name],
                "vs_standard": best[name] / best["standard"],
                "vs_topk": best[name] / best["topk"],
                "flops_vs_standard": flops / step_flops("standard", d, F, B, k, tile),
                "analytic_gflop": flops / 1e9,
            }
        )
    return rows


def accuracy_row(d: int, F: int, B: int, device: torch.device) -> dict:
    """Fused float32 against autograd float64: max relative error of the loss and each gradient."""
    gen = torch.Generator().manual_seed(3)
    base = [torch.randn(F, d, generator=gen, dtype=torch.float64) / d**0.5 for _ in range(2)]
    bias = [torch.randn(F, generator=gen, dtype=torch.float64) / F**0.5 for _ in range(2)]
    x = torch.randn(B, d, generator=gen, dtype=torch.float64)
    out = {}
    cases: tuple[tuple[torch.dtype, kernels.Backward], ...] = ((torch.float64, "autograd"), (torch.float32, "fused"))
    for dtype, backward in cases:
        params = [t.detach().to(device, dtype).clone().requires_grad_() for t in (*base, *bias)]
        W_left, W_right, b_left, b_right = params
        xd = x.to(device, dtype)
        tokens = kernels.unit_tokens(xd)
        f = kernels.bilinear_latents(tokens.unit, W_left, W_right, b_left, b_right)
        error = kernels.kernel_error(
            f, f, W_left, W_right, b_left, b_right, tokens.valid, ordered=True, backward=backward
        )
        loss = kernels.masked_mean(error.error, tokens.valid)
        loss.backward()
        out[backward] = [loss.detach().double().cpu()] + [p.grad.double().cpu() for p in params]
    errors = [
        ((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item()
        for a, b in zip(out["fused"], out["autograd"], strict=False)
    ]
    return {
        "d": d,
        "F": F,
        "B": B,
        "loss_rel_error": errors[0],
        "grad_rel_error_max": max(errors[1:]),
        "note": "lifted, ordered; fused float32 vs autograd float64; max |Δ| / max |ref|",
    }


def fmt(value: Any, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def mb(value: float | None) -> float | None:
    """Peak MB, clamped at 0 (allocator noise can make a tiny rise read as slightly negative)."""
    return None if value is None else max(0.0, value)


def format_kernel_table(rows: list[dict]) -> str:
    header = (
        "| d | F | B | k | dtype | autograd ms | fused ms | fused/autograd (FLOPs) | budget ms (tile) | TopK kernel ms "
        "| ReLU step ms | TopK step ms | fused/ReLU | TopK kernel/TopK step | fused GFLOP/s (share of matmul) "
        "| peak MB autograd / fused / budget / TopK |"
    )
    lines = [header, "|" + "---|" * 16]
    for r in rows:
        lines.append(
            f"| {r['d']} | {r['F']} | {r['B']} | {r['k']} | {r['dtype']} | {r['autograd_ms']:.1f} | "
            f"{r['fused_ms']:.1f} | {r['fused_vs_autograd']:.2f}× ({r['fused_vs_autograd_flops']:.2f}×) | "
            f"{r['fused_budget_ms']:.1f} ({r['budget_tile']}) | "
            f"{r['sparse_ms']:.1f} | {r['relu_step_ms']:.1f} | {r['topk_step_ms']:.1f} | {r['fused_vs_relu']:.1f}× | "
            f"{r['sparse_vs_topk']:.2f}× | {r['fused_gflops']:.1f} ({r['fused_share_of_matmul']:.0%}) | "
            f"{fmt(mb(r['autograd_peak_mb']), '.0f')} / {fmt(mb(r['fused_peak_mb']), '.0f')} / "
            f"{fmt(mb(r['fused_budget_peak_mb']), '.0f')} / {fmt(mb(r['sparse_peak_mb']), '.0f')} |"
        )
    return "\n".join(lines)


def format_step_table(rows: list[dict]) -> str:
    header = (
        "| d | F | B | k | model | step ms (median) | tokens/s | time vs standard | FLOPs vs standard | time vs TopK |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['d']} | {r['F']} | {r['B']} | {r['k']} | {r['model']} | "
            f"{r['step_ms']:.0f} ({r['median_step_ms']:.0f}) | "
            f"{r['tokens_per_s']:.0f} | {r['vs_standard']:.2f}× | {r['flops_vs_standard']:.2f}× | {r['vs_topk']:.2f}× |"
        )
    return "\n".join(lines)


def size(text: str) -> tuple[int, int, int]:
    """An argparse ``type=`` for one ``DxFxB`` size: three integers ≥ 1 (input width, latents, tokens)."""
    parts = text.strip().split("x")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected a size DxFxB such as 512x8192x2048, got {text.strip()!r}")
    try:
        d, F, B = (int_at_least(1)(part) for part in parts)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"size {text.strip()!r}: each of D, F, B: {error}") from None
    return d, F, B


parse_sizes = comma_list(size)
"""An argparse ``type=`` for comma-separated ``DxFxB`` sizes (at least one)."""


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a dry run of every code path")
    parser.add_argument("--sizes", type=parse_sizes, help="kernel sizes, e.g. 512x8192x2048,256x4096x1024")
    parser.add_argument("--step-sizes", type=parse_sizes, help="whole-step sizes (default: as per mode)")
    parser.add_argument(
        "--dtypes",
        type=comma_list(one_of(DTYPES)),
        default="float32,bfloat16",
        help=f"comma-separated kernel dtypes, each one of {', '.join(DTYPES)} (others than "
        f"{', '.join(KERNEL_SIZES)} need --sizes)",
    )
    parser.add_argument("--k", type=int_at_least(1), default=32, help="TopK latents per token (≥ 1)")
    parser.add_argument(
        "--repeats", type=int_at_least(1), default=2, help="interleaved rounds, ≥ 1; the best time is kept"
    )
    parser.add_argument("--steps", type=int_at_least(1), default=3, help="timed trainer steps per model (≥ 1)")
    parser.add_argument(
        "--dense-steps",
        type=int_at_least(1),
        default=2,
        help="timed steps for bilinear dense (the slow one; ≥ 1, at most --steps are run; default 2)",
    )
    parser.add_argument("--autocast", action="store_true", help="trainer steps under bf16 autocast")
    parser.add_argument("--skip-kernel", action="store_true")
    parser.add_argument("--skip-steps", action="store_true")
    parser.add_argument("--threads", type=int_at_least(1), default=1, help="torch threads on the CPU (≥ 1; default 1)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    unsized = [name for name in args.dtypes if name not in KERNEL_SIZES]
    if unsized and not args.sizes and not args.skip_kernel:  # the default kernel sizes are per dtype
        parser.error(f"argument --dtypes: {', '.join(unsized)} has no default kernel sizes; give --sizes")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    kernel_sizes = TINY_KERNEL if args.tiny else QUICK_KERNEL if args.quick else KERNEL_SIZES
    step_sizes = args.step_sizes or (TINY_STEP if args.tiny else QUICK_STEP if args.quick else STEP_SIZES)
    dtypes = args.dtypes
    started = time.perf_counter()

    kernel_rows = []
    if not args.skip_kernel:
        for dtype_name in dtypes:
            for d, F, B in args.sizes or kernel_sizes.get(dtype_name, []):
                k = min(args.k, F)
                kernel_rows.append(kernel_row(d, F, B, k, getattr(torch, dtype_name), device, args.repeats))
                print(f"kernel d={d} F={F} B={B} {dtype_name}: {time.perf_counter() - started:.0f}s", flush=True)
    steps = []
    if not args.skip_steps:
        for d, F, B in step_sizes:
            steps += step_rows(
                d,
                F,
                B,
                min(args.k, F),
                device,
                args.autocast,
                args.steps,
                min(args.dense_steps, args.steps),
            )
            print(f"steps d={d} F={F} B={B}: {time.perf_counter() - started:.0f}s", flush=True)
    acc_size = (32, 256, 64) if args.tiny else (128, 1024, 256)
    accuracy = accuracy_row(*acc_size, device)

    machine: dict[str, Any] = {
        "device": str(device),
        "processor": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    if device.type == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(device)
    tables = {
        "kernel": format_kernel_table(kernel_rows) if kernel_rows else "",
        "steps": format_step_table(steps) if steps else "",
    }
    print("\nKernel loss, forward+backward (ms; best of interleaved rounds)\n" + tables["kernel"])
    print("\nWhole SAELens training step (SAETrainer._train_step, Adam)\n" + tables["steps"])
    print(
        f"\nAccuracy (d={accuracy['d']}, F={accuracy['F']}, B={accuracy['B']}, lifted+ordered): fused fp32 vs float64: "
        f"loss {accuracy['loss_rel_error']:.1e}, gradients ≤ {accuracy['grad_rel_error_max']:.1e} "
        "(relative to max |ref|)"
    )
    print(f"total {time.perf_counter() - started:.0f}s")
    result = {
        "machine": machine,
        "argv": argv,
        "kernel": kernel_rows,
        "steps": steps,
        "accuracy": accuracy,
        "tables": tables,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
