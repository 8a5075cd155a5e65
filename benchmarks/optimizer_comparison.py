"""Adam (SAELens's) against Muon (the paper's) at equal steps and at equal wall-clock.

Real residual-stream activations: SmolLM2-135M at the main job's hook on the King James Bible,
from the activation store of ``experiments/long_run.py`` (collected once; this script reuses the
store and every run that script already trained, and trains what is missing). The same vanilla
bilinear SAE (α 0.1, expansion 2, same init and batch order) is trained with each optimiser over
a small learning-rate grid; each run records its held-out x⊗x error against training tokens and
seconds (evaluation time excluded). Reported:

* **equal steps**: the held-out error after the same number of steps;
* **equal wall-clock**: each optimiser's error at the time the faster of the two takes for the
  runs' steps (read off its learning curve at the steps it completes in that time), so Muon's
  extra cost per step counts against it. The cost per step is timed in this process with the
  two optimisers' steps alternating (``long_run.measure_step_seconds``): the runs' own seconds
  were recorded at different times on shared cores and cannot be compared with each other.

Muon's Newton–Schulz iterations run in the dtype ``ns_dtype="auto"`` picks on this machine (the
faster of float32 and bfloat16, measured once; see ``sae_bilinear/muon.py``).

    python benchmarks/optimizer_comparison.py                     # the LR grid at 262 k tokens per run
    python benchmarks/optimizer_comparison.py --tokens 2000000    # one long pair (also long_run's)
    python benchmarks/optimizer_comparison.py --tiny              # seconds: random tiny Qwen3 (tests)

Writes ``benchmarks/results/optimizer_comparison_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from sae_bilinear import experiment_utils as _common
from sae_bilinear.muon import resolve_ns_dtype

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).parent / "results"


def _long_run() -> Any:
    """``experiments/long_run.py`` as a module, loaded by path (scripts are not a package)."""
    return _common.load_script(ROOT / "experiments" / "long_run.py", "experiments_long_run")

def curve_rise(curve: list[dict[str, Any]]) -> float:
    """The largest factor by which a learning curve's error rose above its best earlier point
    (1.0 for a curve that never rose): how unstable the run was on the way."""
    rise, best = 1.0, math.inf
    for point in curve:
        error = point["reconstruction_error"]
        if best < math.inf:
            rise = max(rise, error / best)
        best = min(best, error)
    return rise


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=_common.count_argument, default=262_144, help="training tokens of each run")
    # The grids reach past long_run's probe (3e-3/1e-2, 0.03/0.1, whose best were both at the
    # edge) up to the paper's Muon lr 1.0, so the best of each is inside the grid or says so.
    rate = _common.positive_argument
    parser.add_argument("--adam-lrs", type=rate, nargs="+", default=[3e-3, 1e-2, 3e-2], help="Adam LRs (> 0)")
    parser.add_argument("--muon-lrs", type=rate, nargs="+", default=[0.03, 0.1, 0.3, 1.0], help="Muon LRs (> 0)")
    parser.add_argument("--tiny", action="store_true", help="random tiny Qwen3, seconds (tests)")
    parser.add_argument("--cache", type=Path, default=ROOT / "experiments" / "cache", help="long_run.py's cache")
    parser.add_argument("--threads", type=_common.count_argument, default=2, help="torch CPU threads")
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON file (default: results/optimizer_comparison_<model>.json)"
    )
    args = parser.parse_args(argv)
    lr = _long_run()
    opts = lr.DataOptions.small(Path(args.cache)) if args.tiny else lr.DataOptions(cache=Path(args.cache))
    batch_size = 256 if args.tiny else 1024
    if args.tiny:
        args.tokens = min(args.tokens, 4096)
    _common.setup(0, threads=args.threads)
    train_x, heldout, info = lr.activations(opts)
    folder = Path(args.cache) / lr.NAME / info["store"]
    folder.mkdir(parents=True, exist_ok=True)
    runs = [
        lr.Run(variant="vanilla", lifted=False, expansion=2, batch_size=batch_size, alpha=0.1, optimizer=o,
               lr=rate, tokens=args.tokens)
        for o, rates in (("adam", args.adam_lrs), ("muon", args.muon_lrs)) for rate in rates
    ]  # fmt: skip
    first_eval = lr.first_eval_step(batch_size, args.tiny)
    records = {run.name: lr.cached_run(run, folder, train_x, heldout, first_eval)[1] for run in runs}
    best_lrs = {opt: r["run"]["lr"] for opt, r in lr.best_runs(list(records.values())).items()}
    result = {
        "model": "tiny-qwen3" if args.tiny else "smollm2-135m",
        "data": info,
        "variant": "vanilla",
        "alpha": 0.1,
        "tokens": args.tokens,
        "ns_dtype": resolve_ns_dtype("auto", "cpu"),
        "rows": [{"optimizer": r["run"]["optimizer"], "lr": r["run"]["lr"], "steps": r["curve"][-1]["step"],
                  "heldout_error": r["final"]["reconstruction_error"], "hoyer_density": r["final"]["hoyer_density"],
                  "seconds": r["seconds"], "first_curve_step": r["curve"][0]["step"],
                  "curve_rise": curve_rise(r["curve"])}
                 for r in records.values()],  # fmt: skip
        **lr.compare_optimizers(
            list(records.values()),
            lr.measure_step_seconds(train_x, 2, batch_size, best_lrs, rounds=3 if args.tiny else 20),
        ),
    }
    grids = {"adam": sorted(args.adam_lrs), "muon": sorted(args.muon_lrs)}
    # A best LR at either end of its grid means the grid, not the optimiser, may have set the result.
    result["best_lr_at_grid_edge"] = {
        opt: len(grid) > 1 and result["best_lr"][opt] in (grid[0], grid[-1]) for opt, grid in grids.items()
    }
    lines = ["| optimizer | lr | held-out x⊗x error | Hoyer density | seconds |", "|---|---|---|---|---|"]
    lines += [f"| {r['optimizer']} | {r['lr']:g} | {r['heldout_error']:.4f} | {r['hoyer_density']:.3f} | "
              f"{r['seconds']:.0f} |" for r in result["rows"]]  # fmt: skip
    result["table"] = "\n".join(lines)
    print(result["table"])
    print(f"equal steps: {result['equal_steps']}; equal wall-clock ({result['equal_wall_clock_seconds']:.0f} s): "
          f"{result['equal_wall_clock']}")  # fmt: skip
    out = args.out or RESULTS_DIR / f"optimizer_comparison_{result['model']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_common.strict(result), indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
