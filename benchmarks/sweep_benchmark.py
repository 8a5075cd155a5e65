"""Wall time of a sweep: members one after another against Ray workers, and model passes.

Every number comes from this one run on this machine, so the ratios compare like with like:

* a 4- and an 8-member α×variant sweep on SmolLM2-135M (``blocks.15.hook_resid_pre``, KJV),
  run ``--local`` (one process, one member after another) and on an in-process Ray with
  ``--workers`` CPUs (default 2);
* the model-pass count of each (the activations are collected once per group and reused:
  the second and later runs find them on disk, so the count is 1 for the first run and 0 after);
* SAELens's ``MultiSAETrainingRunner`` training the same 4 members in lock-step from one
  streamed model pass (its design alternative), for the record.

Results go to ``benchmarks/results/sweep_benchmark.json`` and a Markdown table on stdout.

    python benchmarks/sweep_benchmark.py               # SmolLM2, ~10 minutes on 2 cores
    python benchmarks/sweep_benchmark.py --tiny        # a tiny random Qwen3 (tests use this)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import torch

from sae_bilinear import models, sweep
from sae_bilinear.values import int_at_least

RESULTS = Path(__file__).parent / "results" / "sweep_benchmark.json"
BATCH, TINY_BATCH = 1024, 64
"""Tokens per training step (SmolLM2 run, ``--tiny`` run)."""


def _tiny_model(root: Path) -> tuple[str, str, int, str]:
    hf, tokenizer = models.qwen3_tiny_hf(n_layers=2, d_model=32, n_heads=4, n_kv_heads=2, d_mlp=64)
    hf.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    words = "the a river stone light dark king road house bread water fire wind song night day".split()
    generator = torch.Generator().manual_seed(0)
    docs = [" ".join(words[int(i)] for i in torch.randint(len(words), (60,), generator=generator)) for _ in range(300)]
    (root / "corpus.txt").write_text("\n\n".join(docs))
    return str(root / "model"), "blocks.1.hook_resid_pre", 32, str(root / "corpus.txt")


def write_sweep(
    root: Path, members: int, model: str, hook: str, d_in: int, corpus: str, tokens: int, batch: int
) -> Path:
    """A sweep file of ``members`` members (2 variants × members/2 α values)."""
    alphas = [round(0.1 * i, 1) for i in range(members // 2)]
    (root / "base.yaml").write_text(
        textwrap.dedent(f"""
        sae: {{architecture: bilinear, d_in: {d_in}, d_sae: {2 * d_in}, variant: vanilla, lifted: true, alpha: 0.1}}
        model_name: {model}
        hook_name: {hook}
        dataset_path: {corpus}
        context_size: 128
        prepend_bos: true
        train_batch_size_tokens: {batch}
        training_tokens: {tokens}
        lr: 0.003
        device: cpu
        n_batches_for_norm_estimate: 2
        dead_feature_window: 50
        feature_sampling_window: 100
        logger: {{log_to_wandb: false}}
        """)
    )
    path = root / f"sweep{members}.yaml"
    path.write_text(f"base: base.yaml\nsweep:\n  sae.variant: [vanilla, mixed]\n  sae.alpha: {alphas}\n")
    return path


def timed_sweep(path: Path, out: Path, **options: Any) -> dict[str, Any]:
    started = time.perf_counter()
    # eval_contexts=0: the training is timed, as for MultiSAETrainingRunner (no splice evaluation).
    result = sweep.run_sweep(path, sweep.SweepOptions(out=out, eval_contexts=0, **options))
    failed = [row["name"] for row in result["members"] if row["status"] != "done"]
    if failed:
        raise RuntimeError(f"members failed in the benchmark: {failed}")
    return {
        "seconds": time.perf_counter() - started,
        "model_passes": result["model_passes"],
        "members": len(result["members"]),
    }


def multi_runner(
    model_name: str, hook: str, d_in: int, corpus: str, tokens: int, batch: int, members: int
) -> dict[str, Any]:
    """SAELens's MultiSAETrainingRunner: the same members in lock-step on one streamed model pass."""
    from sae_lens import MultiSAETrainingRunner, MultiSAETrainingRunnerConfig
    from sae_lens.config import LoggingConfig

    from sae_bilinear import data
    from sae_bilinear.bilinear import BilinearTrainingSAEConfig

    model = models.load_model(model_name)
    texts = data.load_corpus(corpus)
    assert isinstance(texts, data.TextCorpus), f"{corpus}: the benchmark reads a local or embedded corpus"
    dataset = data.as_hf_dataset(
        data.tokenize_contexts(texts.train, model.tokenizer, 128, max_contexts=tokens // 127 + 8)
    )
    alphas = [round(0.1 * i, 1) for i in range(members // 2)]
    saes = {
        f"{v}-{a}": BilinearTrainingSAEConfig(d_in=d_in, d_sae=2 * d_in, variant=v, lifted=True, alpha=a)
        for v in ("vanilla", "mixed")
        for a in alphas
    }
    cfg = MultiSAETrainingRunnerConfig(
        saes=saes,
        hook_names=hook,
        model_name=model_name,
        dataset_path="",
        context_size=128,
        training_tokens=tokens,
        train_batch_size_tokens=batch,
        store_batch_size_prompts=8,
        n_batches_in_buffer=max(4, 2 * batch // 128),  # SAELens: the buffer must hold a batch
        lr=0.003,
        device="cpu",
        logger=LoggingConfig(log_to_wandb=False),
        output_path=None,
        checkpoint_path=None,
        n_batches_for_norm_estimate=2,
    )
    started = time.perf_counter()
    MultiSAETrainingRunner(cfg, override_dataset=dataset, override_model=model).run()
    return {"members": members, "runner": "saelens-multi", "seconds": time.perf_counter() - started, "model_passes": 1}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny random Qwen3 instead of SmolLM2 (seconds, for tests)")
    parser.add_argument("--workers", type=int_at_least(1), default=2, help="Ray workers (CPUs, ≥ 1)")
    parser.add_argument(
        "--tokens",
        type=int_at_least(1),
        default=None,
        help=f"training tokens per member, at least one batch of {BATCH} ({TINY_BATCH} with --tiny); "
        "default 20480 (2560 with --tiny)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    args = parser.parse_args(argv)
    batch = TINY_BATCH if args.tiny else BATCH
    if args.tokens is not None and args.tokens < batch:  # no training step would run
        parser.error(f"argument --tokens: {args.tokens} is fewer than one batch ({batch} tokens)")
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="sweep_benchmark_"))
    try:
        if args.tiny:
            model, hook, d_in, corpus = _tiny_model(work)
            tokens = args.tokens or 2560
        else:
            model, hook, d_in, corpus = "smollm2-135m", "blocks.15.hook_resid_pre", 576, "kjv"
            tokens = args.tokens or 20480
        rows = []
        store = work / "shared-activations"
        for members in (4, 8):
            path = write_sweep(work, members, model, hook, d_in, corpus, tokens, batch)
            for runner, options in (("local", {"local": True}), ("ray", {"workers": args.workers})):
                out = work / f"{runner}{members}"
                if store.exists():  # every run after the first reuses the collected activations
                    shutil.copytree(store, out / sweep.STORE_DIR)
                row = {"members": members, "runner": runner, **timed_sweep(path, out, **options)}
                if not store.exists():
                    shutil.copytree(out / sweep.STORE_DIR, store)
                rows.append(row)
                print(
                    f"{members} members, {runner}: {row['seconds']:.1f} s, {row['model_passes']} model pass(es)",
                    flush=True,
                )
        multi = multi_runner(model, hook, d_in, corpus, tokens, batch, 4)
        rows.append(multi)
        print(
            f"4 members, SAELens MultiSAETrainingRunner: {multi['seconds']:.1f} s (model pass streamed, lock-step)",
            flush=True,
        )
        by = {(r["members"], r["runner"]): r["seconds"] for r in rows}
        result = {
            "machine": {
                "processor": platform.processor() or platform.machine(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "load_average": list(os.getloadavg()),
            },
            "model": model,
            "hook": hook,
            "tokens_per_member": tokens,
            "workers": args.workers,
            "rows": rows,
            "ray_speedup": {str(m): by[(m, "local")] / by[(m, "ray")] for m in (4, 8)},
        }
        print("\n| members | local s | Ray s | local/Ray |\n|---|---|---|---|")
        for m in (4, 8):
            print(f"| {m} | {by[(m, 'local')]:.1f} | {by[(m, 'ray')]:.1f} | {by[(m, 'local')] / by[(m, 'ray')]:.2f}× |")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"| 4 (SAELens MultiSAETrainingRunner, one process) | – | – | {multi['seconds']:.1f} s |")
        print(f"wrote {args.out}")
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
