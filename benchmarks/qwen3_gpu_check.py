"""The Qwen3-0.6B-Base layer-18 main job on a GPU, sized to run in a few minutes.

Where the Hub is reachable (or the weights are in the local HF cache) it loads the real
``Qwen/Qwen3-0.6B-Base``; otherwise (``--random``, e.g. on an isolated GPU box) it builds a
random model of exactly Qwen3-0.6B's shape (28 layers, d 1024, 16 heads / 8 KV heads, d_mlp
3072, Qwen3 vocabulary), which checks speed, memory and the whole pipeline — not CE numbers.

    python benchmarks/qwen3_gpu_check.py --out runs/qwen3-gpu-check            # real weights
    python benchmarks/qwen3_gpu_check.py --random --out runs/qwen3-gpu-check    # no Hub
    python benchmarks/qwen3_gpu_check.py --random --device cpu --tiny           # CPU dry run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sae_bilinear import models
from sae_bilinear.main_job import MainJobConfig, run_main_job
from sae_bilinear.train_config import OPTIMIZERS
from sae_bilinear.values import int_at_least


def qwen3_shaped_random(device: str, dtype: str, tiny: bool):
    """A random Qwen3ForCausalLM with Qwen3-0.6B's shape (or a toy one with ``tiny``)."""
    sizes = (
        dict(n_layers=4, d_model=64, n_heads=4, n_kv_heads=2, d_mlp=128)
        if tiny
        else dict(n_layers=28, d_model=1024, n_heads=16, n_kv_heads=8, d_mlp=3072)
    )
    hf_model, tokenizer = models.qwen3_tiny_hf(**sizes)
    return models.model_from_hf(hf_model, tokenizer, device=device, dtype=dtype, model_name="qwen3-0.6b-shaped-random")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--random", action="store_true", help="random weights of Qwen3-0.6B's shape (no Hub)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, for a CPU dry run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int_at_least(1), default=300, help="training steps (≥ 1; --tiny: 10)")
    parser.add_argument("--expansion", type=int_at_least(1), default=16, help="d_sae / d_model (≥ 1; --tiny: 2)")
    parser.add_argument("--optimizer", default="muon", choices=OPTIMIZERS)
    parser.add_argument("--out", type=Path, default=Path("runs/qwen3-gpu-check"))
    args = parser.parse_args(argv)
    started = time.time()
    if args.random:
        model = qwen3_shaped_random(args.device, "float32", args.tiny)
    else:
        model = models.load_model("Qwen/Qwen3-0.6B-Base", device=args.device, dtype="float32")
    load_seconds = time.time() - started
    hook = "blocks.2.hook_resid_pre" if args.tiny else "blocks.18.hook_resid_pre"
    config = MainJobConfig(
        model="Qwen/Qwen3-0.6B-Base" if not args.random else "qwen3-0.6b-shaped-random",
        hook_name=hook,
        context_size=64 if args.tiny else 256,
        train_contexts=32 if args.tiny else 512,
        eval_contexts=4 if args.tiny else 32,
        expansion=2 if args.tiny else args.expansion,
        variant="mixed",
        steps=10 if args.tiny else args.steps,
        batch_size=256 if args.tiny else 4096,
        lr=0.03 if args.optimizer == "muon" else 1e-3,
        optimizer=args.optimizer,
        device=args.device,
    )
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    metrics = run_main_job(config, args.out, model=model)
    summary = {
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
        "random_weights": args.random,
        "load_seconds": load_seconds,
        "training_seconds": metrics["training_seconds"],
        "steps": config.steps,
        "tokens_per_step": config.batch_size,
        "d_sae": config.expansion * model.cfg.d_model,
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else None,
        **{
            k: metrics[k]
            for k in (
                "ce_clean",
                "ce_spliced",
                "ce_loss_recovered",
                "explained_variance",
                "reconstruction_error",
                "hoyer_density",
                "seconds",
            )
        },
    }
    print(json.dumps(summary, indent=2))
    (args.out / "gpu_check.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
