"""``sae-bilinear sweep CONFIG``: a grid of SAEs on Ray (or one after another), one model pass per group."""

from __future__ import annotations

import argparse

from sae_bilinear.cli import options, paths, sources

NAME = "sweep"
HELP = "train a sweep's members as Ray tasks from one model pass per group"
DESCRIPTION = (
    "Expand a sweep file (base: + sweep: of dotted keys, as `train --config` reads) into members; run the "
    "language model once per group of members that share model, hook, data and token budget, storing the "
    "activations as safetensors shards under OUT/activations; then train every member from them as a Ray "
    "task (a local Ray with --workers CPUs, or --address to join a cluster), or one after another with "
    "--local. A rerun skips finished members and resumes unfinished ones from their checkpoints; a failing "
    "member is reported and the others go on. Writes OUT/<member>/ (SAELens layout), OUT/sweep.json, "
    "OUT/sweep.md, OUT/pareto.png and OUT/pareto.html; progress goes to the terminal and OUT/sweep.log. "
    'Ray is the optional extra: pip install "sae-bilinear[sweep]".'
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG", help="sweep file (YAML/JSON: base + sweep), or a packaged name")
    parser.add_argument(
        "--out",
        type=paths.output_folder,
        default=None,
        help="output folder (default: the file's output_root, else runs/sweep-<file stem>)",
    )
    parser.add_argument("--workers", type=options.positive_int, default=2, help="CPUs of the in-process local Ray")
    parser.add_argument("--address", default=None, help="join this Ray cluster (e.g. auto) instead of starting one")
    parser.add_argument("--local", action="store_true", help="no Ray: run the members one after another here")
    parser.add_argument("--num-cpus", type=options.real(0.0), default=1.0, help="CPUs each member asks for")
    parser.add_argument(
        "--num-gpus", type=options.real(0.0), default=0.0, help="GPUs each member asks for (0.25: four share one)"
    )
    parser.add_argument(
        "--memory-gb", type=options.real(0.0, strict=True), default=None, help="host memory each member asks for (GiB)"
    )
    parser.add_argument("--device", default="cpu", help="torch device of the language model's activation pass")
    parser.add_argument(
        "--member-threads", type=options.positive_int, default=1, help="torch threads inside each member"
    )
    parser.add_argument(
        "--checkpoints", type=options.integer(0), default=4, help="checkpoints per member (what a kill can lose)"
    )
    parser.add_argument(
        "--eval-contexts",
        type=options.integer(0),
        default=sources.constant("sweep_splice", "DEFAULT_EVAL_CONTEXTS"),
        help="held-out contexts on which each finished lifted member is spliced into the model for ce_spliced, "
        "CE recovered and KL (the model is loaded once for all members); 0 skips it",
    )
    parser.add_argument("--only", nargs="+", default=(), metavar="NAME", help="run only these members")


def execute(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sae_bilinear import sweep
    from sae_bilinear.cli import runtime
    from sae_bilinear.cli.train import check_run, find_config
    from sae_bilinear.sweep_plan import Resources, default_out
    from sae_bilinear.train_config import expand_config

    runtime.check_device(args.device)
    config = find_config(args.config)
    for name, raw in expand_config(config):  # every member is checked before the model runs
        check_run(raw, name, allow_remote_code=False)
    out = args.out if args.out is not None else default_out(Path(config))
    options_ = sweep.SweepOptions(
        out=out,
        workers=args.workers,
        address=args.address,
        local=args.local,
        resources=Resources(num_cpus=args.num_cpus, num_gpus=args.num_gpus, memory_gb=args.memory_gb),
        device=args.device,
        threads=args.member_threads,
        n_checkpoints=args.checkpoints,
        only=tuple(args.only),
        eval_contexts=args.eval_contexts,
    )
    result = sweep.run_sweep(config, options_)
    return 0 if all(row["status"] == "done" for row in result["members"]) else 1
