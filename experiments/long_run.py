"""Issue 16 §2: the paper's numbers at a real token budget, on 2 CPU cores.

SmolLM2-135M activations at the main job's hook, on the King James Bible's training chapters,
are collected **once** into an activation store (safetensors shards, memory-mapped) and reused
over epochs. Every run trains a bilinear SAE through SAELens's trainer on that store and records
a learning curve (held-out x⊗x error and Hoyer density at log-spaced token counts). The queue:

* ``probe``: Adam and Muon learning rates at a short budget (vanilla α 0.1); the best of each is
  used by the runs below.
* ``curves``: vanilla (unlifted, the paper's) at α 0.03 / 0.1 / 0.3 and mixed (lifted, the main
  job's) at α 0.1, each for ``--tokens`` training tokens (default 2 M, a quarter of the paper's 8.4 M).
* ``seed``: vanilla α 0.1 again with another seed: the main run (``--tokens``), each ``width`` run
  (``--width-tokens``) and the ``muon`` run; the paper's similarity formula between the two of each pair.
* ``muon``: vanilla α 0.1 with Muon: Adam against Muon at equal steps and at equal wall-clock.
* ``width``: vanilla α 0.1 at expansion 2, 4, 8 for ``--width-tokens`` tokens each (default 500 k).
* ``wide``: vanilla α 0.03 and 0.3 at the widest expansion (``--width-tokens``): with the ``width``
  run at α 0.1, the density–error trade-off where the error goal is within reach.
* ``full``: vanilla α 0.1 for the paper's 8.4 M tokens, two seeds: the extrapolation checked, and
  the seed similarity at the paper's budget.

Each finished run is saved under ``--cache`` and skipped on a rerun, so a killed queue resumes at
the run it was in. ``--report-only`` redraws the results from what has finished. Results: ``results.json``,
``table.md``, ``curves.png`` (error and density against tokens, log scale, with the power-law
extrapolation to 8.4 M), ``pareto.png`` (density against error at the long budget).

    python experiments/long_run.py                          # about 1.5 h on 2 idle cores
    python experiments/long_run.py --stages probe curves    # a part of the queue
    python experiments/long_run.py --tiny                   # seconds (tests)
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sae_lens.saes.sae import TrainStepInput
from safetensors.torch import load_file, save_file

from sae_bilinear import activation_store, data, models, similarity
from sae_bilinear import experiment_utils as _common
from sae_bilinear.bilinear import BilinearTrainingSAE, BilinearTrainingSAEConfig, default_alpha_warm_up_steps
from sae_bilinear.hub import load_any_from_disk
from sae_bilinear.train import MuonWithAdamW, TrainingSettings, collect_activations, train_on_activations
from sae_bilinear.values import int_at_least

NAME = "long_run"
PAPER_TOKENS = 8_400_000
"""The paper's training tokens per SAE."""
STAGES = ("probe", "curves", "seed", "muon", "width", "wide", "full")
ERROR_GOAL = 0.1
DENSITY_GOAL = (0.2, 0.6)
SIMILARITY_GOAL = 0.98


@dataclass(frozen=True)
class Run:
    """One training run; ``name`` keys its folder in the cache."""

    variant: str
    alpha: float
    lifted: bool
    expansion: int
    optimizer: str
    lr: float
    tokens: int
    batch_size: int
    seed: int = 0

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)

    @property
    def name(self) -> str:
        lift = "lifted" if self.lifted else "unlifted"
        return (
            f"{self.variant}_{lift}_a{self.alpha:g}_x{self.expansion}_{self.optimizer}{self.lr:g}"
            f"_t{self.tokens}_b{self.batch_size}_s{self.seed}"
        )

    @property
    def label(self) -> str:
        lift = "lifted" if self.lifted else "unlifted"
        return f"{self.variant} {lift} α={self.alpha:g} ×{self.expansion} {self.optimizer} seed {self.seed}"


def eval_points(steps: int, first: int) -> list[int]:
    """Steps at which the curve is measured: powers of 2 from ``first`` and the last step."""
    points, step = [], max(1, first)
    while step < steps:
        points.append(step)
        step *= 2
    return [*points, steps]


def first_eval_step(batch_size: int, tiny: bool) -> int:
    """The first step a curve is measured at: about 16 k tokens in (every step in --tiny)."""
    return 1 if tiny else max(1, 16384 // batch_size)


def train(run: Run, train_x: torch.Tensor, heldout: torch.Tensor, first_eval: int) -> tuple[Any, dict[str, Any]]:
    """Train ``run`` on ``train_x``; return the SAE and its record (curve, seconds)."""
    torch.manual_seed(run.seed)
    d_in = train_x.shape[1]
    cfg = BilinearTrainingSAEConfig(
        d_in=d_in,
        d_sae=run.expansion * d_in,
        variant=run.variant,  # pyright: ignore[reportArgumentType]
        lifted=run.lifted,
        alpha=run.alpha,
        alpha_warm_up_steps=default_alpha_warm_up_steps(run.steps),
    )
    sae = BilinearTrainingSAE(cfg)
    settings = TrainingSettings(
        steps=run.steps, batch_size=run.batch_size, lr=run.lr, optimizer=run.optimizer, ns_dtype="auto",
        seed=run.seed, dead_feature_window=max(10, run.steps // 4),
    )  # fmt: skip
    points = set(eval_points(run.steps, first_eval))
    curve: list[dict[str, Any]] = []
    started = time.time()
    paused = 0.0  # evaluation time, not counted as training time

    def record(step: int, model: Any) -> None:
        nonlocal paused
        if step not in points:
            return
        t0 = time.time()
        was_training = model.training
        model.eval()
        with torch.no_grad():
            metrics = _common.heldout_metrics(model, heldout)
        model.train(was_training)
        paused += time.time() - t0
        curve.append({"step": step, "tokens": step * run.batch_size, "seconds": t0 - started - paused, **metrics})
        print(
            f"  {run.label}: {step * run.batch_size:>9,} tokens  error {metrics['reconstruction_error']:.4f}  "
            f"density {metrics['hoyer_density']:.3f}  ({t0 - started - paused:.0f} s)",
            flush=True,
        )

    with contextlib.redirect_stderr(io.StringIO()):  # SAELens's progress bar; our lines are the progress
        train_on_activations(sae, train_x, settings, on_step=record)
    seconds = time.time() - started - paused
    record_ = {"run": asdict(run), "name": run.name, "seconds": seconds, "tokens_per_second": run.tokens / seconds,
               "curve": curve, "final": curve[-1]}  # fmt: skip
    return sae, record_


def cached_run(run: Run, folder: Path, train_x: torch.Tensor, heldout: torch.Tensor, first_eval: int):
    """The finished run from ``folder/run.name``, or train it now and save it there (atomically)."""
    path = folder / run.name
    if (path / "run.json").is_file():
        return load_any_from_disk(path, device="cpu"), json.loads((path / "run.json").read_text())
    print(f"train {run.label} ({run.tokens:,} tokens, {run.steps} steps)", flush=True)
    sae, record = train(run, train_x, heldout, first_eval)
    partial = folder / f".{run.name}.partial"
    if partial.exists():
        for f in partial.iterdir():
            f.unlink()
    sae.save_inference_model(partial)
    _common.write_json(partial / "run.json", record)
    partial.rename(path)
    return load_any_from_disk(path, device="cpu"), record


# ----------------------------------------------------------------------------------------
# Data: the store (collected once) and the held-out tokens
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataOptions:
    """Where the activations come from (shared with ``benchmarks/optimizer_comparison.py``)."""

    cache: Path
    """Folder of the activation store and the held-out activations."""
    tiny: bool = False
    """A random tiny Qwen3 and a few short contexts instead of SmolLM2-135M (tests)."""
    hook: str = _common.HOOK
    """SmolLM2-135M's hook (the tiny model always uses ``blocks.1.hook_resid_pre``)."""
    train_contexts: int | None = None
    """KJV training contexts stored (None: all of them)."""
    heldout_contexts: int = 128
    """Held-out KJV contexts the curves are measured on."""
    context_size: int = 128
    """Tokens per context."""

    def __post_init__(self) -> None:
        for name in ("train_contexts", "heldout_contexts", "context_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"DataOptions.{name} must be an int >= 1, got {value!r}")

    @classmethod
    def small(cls, cache: Path) -> DataOptions:
        """The tiny model's sizes (seconds, for tests)."""
        return cls(cache=cache, tiny=True, train_contexts=48, heldout_contexts=8, context_size=32)


def activations(args: DataOptions) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Training activations (the store, in memory) and held-out activations; a description."""
    model = _common.load_model(_common.TINY_MODEL if args.tiny else "smollm2-135m")
    hook = "blocks.1.hook_resid_pre" if args.tiny else args.hook
    corpus = data.kjv_corpus()
    bos = models.default_prepend_bos(model)
    skip = 1 if bos else 0

    def tokenize(texts: Any, n: int | None) -> torch.Tensor:
        return data.tokenize_contexts(texts, model.tokenizer, args.context_size, prepend_bos=bos, max_contexts=n)

    train_tokens = tokenize(corpus.train, args.train_contexts)
    settings = activation_store.settings_for(
        model, train_tokens, hook, model_name="tiny" if args.tiny else "smollm2-135m", dataset="kjv train",
        prepend_bos=bos, skip_first=skip,
    )  # fmt: skip
    started = time.time()
    store = activation_store.collect(Path(args.cache) / "activation_store", model, train_tokens, settings,
                                     progress=not args.tiny)  # fmt: skip
    collect_seconds = time.time() - started
    heldout_file = Path(args.cache) / f"{NAME}_heldout_{store.folder.name}_{args.heldout_contexts}.safetensors"
    if heldout_file.is_file():
        heldout = load_file(str(heldout_file))["activations"]
    else:
        heldout_tokens = tokenize(corpus.heldout, args.heldout_contexts)
        heldout = collect_activations(model, heldout_tokens, hook, skip_first=skip, progress=False)
        heldout_file.parent.mkdir(parents=True, exist_ok=True)
        save_file({"activations": heldout.contiguous()}, str(heldout_file))
    info = {"hook": hook, "store": store.folder.name, "train_tokens_unique": store.n_tokens,
            "heldout_tokens": int(heldout.shape[0]), "collect_seconds": collect_seconds}  # fmt: skip
    return store.tensor().float(), heldout, info


# ----------------------------------------------------------------------------------------
# The queue
# ----------------------------------------------------------------------------------------


def queue(args: Any, lrs: dict[str, float]) -> dict[str, list[Run]]:
    """The runs of every stage (the probe's are fixed; the others use its best LRs)."""
    t, b = args.tokens, args.batch_size
    van = dict(variant="vanilla", lifted=False, expansion=2, batch_size=b)
    probe_t = args.probe_tokens
    return {
        "probe": [Run(**van, alpha=0.1, optimizer=o, lr=lr, tokens=probe_t)  # type: ignore[arg-type]
                  for o, grid in (("adam", args.adam_lrs), ("muon", args.muon_lrs)) for lr in grid],
        "curves": [Run(**van, alpha=0.1, optimizer="adam", lr=lrs["adam"], tokens=t),  # type: ignore[arg-type]
                   Run(variant="mixed", lifted=True, expansion=2, batch_size=b, alpha=0.1, optimizer="adam",
                       lr=_common.LR_MIXED, tokens=t),
                   Run(**van, alpha=0.03, optimizer="adam", lr=lrs["adam"], tokens=t),  # type: ignore[arg-type]
                   Run(**van, alpha=0.3, optimizer="adam", lr=lrs["adam"], tokens=t)],  # type: ignore[arg-type]
        # The second seed of: the main run, each width run, the Muon run (see seed_pairs).
        "seed": [Run(**van, alpha=0.1, optimizer="adam", lr=lrs["adam"], tokens=t, seed=1),  # type: ignore[arg-type]
                 *[Run(**{**van, "expansion": e}, alpha=0.1, optimizer="adam",  # type: ignore[arg-type]
                       lr=lrs["adam"], tokens=args.width_tokens, seed=1) for e in args.expansions],
                 Run(**van, alpha=0.1, optimizer="muon", lr=lrs["muon"], tokens=t, seed=1)],  # type: ignore[arg-type]
        "muon": [Run(**van, alpha=0.1, optimizer="muon", lr=lrs["muon"], tokens=t)],  # type: ignore[arg-type]
        "width": [Run(**{**van, "expansion": e}, alpha=0.1, optimizer="adam", lr=lrs["adam"],  # type: ignore[arg-type]
                      tokens=args.width_tokens) for e in args.expansions],
        "wide": [Run(**{**van, "expansion": max(args.expansions)}, alpha=a, optimizer="adam",  # type: ignore[arg-type]
                     lr=lrs["adam"], tokens=args.width_tokens) for a in (0.03, 0.3)],
        "full": [Run(**van, alpha=0.1, optimizer="adam", lr=lrs["adam"], tokens=args.full_tokens, seed=s)  # type: ignore[arg-type]
                 for s in (0, 1)],
    }  # fmt: skip


def best_lrs(records: dict[str, dict[str, Any]], probe: list[Run]) -> dict[str, float]:
    """The learning rate with the lowest held-out error for each optimiser among the probe's runs."""
    best: dict[str, float] = {}
    for optimizer in ("adam", "muon"):
        done = [r for r in probe if r.optimizer == optimizer and r.name in records]
        if done:
            best[optimizer] = min(done, key=lambda r: records[r.name]["final"]["reconstruction_error"]).lr
    return best


def power_law(curve: list[dict[str, Any]], lo: int, hi: int) -> dict[str, float] | None:
    """Fit error ≈ a · tokens^b on the curve's points with lo ≤ tokens ≤ hi (log–log least squares)."""
    pts = [(p["tokens"], p["reconstruction_error"]) for p in curve if lo <= p["tokens"] <= hi]
    if len(pts) < 3 or any(e <= 0 for _, e in pts):
        return None
    x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    b, log_a = np.polyfit(x, y, 1)
    return {"a": float(math.exp(log_a)), "b": float(b), "fit_from": lo, "fit_to": hi, "n_points": len(pts),
            "at_paper_tokens": float(math.exp(log_a) * PAPER_TOKENS**b)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = _common.parser(__doc__, NAME, Path(__file__).resolve().parent)
    p.add_argument("--hook", default=_common.HOOK, help="hook of SmolLM2-135M")
    count, rate = _common.count_argument, _common.positive_argument
    p.add_argument("--train-contexts", type=count, default=None, help="KJV training contexts stored (default: all)")
    p.add_argument("--heldout-contexts", type=count, default=128, help="held-out contexts for the curves")
    p.add_argument("--context-size", type=int_at_least(2), default=128, help="tokens per context, ≥ 2 (BOS dropped)")
    p.add_argument("--tokens", type=count, default=2_000_000, help="training tokens of each curve run")
    p.add_argument("--probe-tokens", type=count, default=262_144, help="training tokens of each LR-probe run")
    p.add_argument("--width-tokens", type=count, default=500_000, help="training tokens of each width run")
    p.add_argument("--full-tokens", type=count, default=PAPER_TOKENS, help="training tokens of the 'full' run")
    p.add_argument("--expansions", type=count, nargs="+", default=[2, 4, 8], help="d_sae / d_in of the width runs")
    p.add_argument("--adam-lrs", type=rate, nargs="+", default=[3e-3, 1e-2], help="the probe's Adam LRs (> 0)")
    p.add_argument("--muon-lrs", type=rate, nargs="+", default=[0.03, 0.1], help="the probe's Muon LRs (> 0)")
    p.add_argument("--batch-size", type=count, default=1024, help="tokens per step")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--report-only", action="store_true", help="only redraw the results from finished runs")
    p.add_argument("--threads", type=_common.count_argument, default=os.environ.get("OMP_NUM_THREADS", "2"),
                   help="torch CPU threads (default: $OMP_NUM_THREADS, else 2)")
    args = p.parse_args(argv)
    if args.tiny:
        args.train_contexts, args.heldout_contexts, args.context_size = 48, 8, 32
        args.tokens, args.probe_tokens, args.width_tokens, args.full_tokens = 8192, 2048, 4096, 16384
        args.batch_size, args.expansions = 256, [1, 2]
    _common.setup(args.seed, threads=args.threads)
    opts = (DataOptions.small(Path(args.cache)) if args.tiny else
            DataOptions(cache=Path(args.cache), hook=args.hook, train_contexts=args.train_contexts,
                        heldout_contexts=args.heldout_contexts, context_size=args.context_size))  # fmt: skip
    train_x, heldout, info = activations(opts)
    folder = Path(args.cache) / NAME / info["store"]
    folder.mkdir(parents=True, exist_ok=True)
    first_eval = first_eval_step(args.batch_size, args.tiny)
    records: dict[str, dict[str, Any]] = {}
    saes: dict[str, Any] = {}

    def load_done(runs: list[Run]) -> None:
        for run in runs:
            if (folder / run.name / "run.json").is_file():
                saes[run.name], records[run.name] = cached_run(run, folder, train_x, heldout, first_eval)

    plan = queue(args, {"adam": args.adam_lrs[0], "muon": args.muon_lrs[0]})
    train_now = lambda stage: stage in args.stages and not args.report_only  # noqa: E731
    for run in plan["probe"]:
        if train_now("probe") or (folder / run.name / "run.json").is_file():
            saes[run.name], records[run.name] = cached_run(run, folder, train_x, heldout, first_eval)
    lrs = {"adam": args.adam_lrs[0], "muon": args.muon_lrs[0], **best_lrs(records, plan["probe"])}
    print(f"learning rates: {lrs}", flush=True)
    plan = queue(args, lrs)
    for stage in STAGES[1:]:
        for run in plan[stage]:
            if train_now(stage) or (folder / run.name / "run.json").is_file():
                saes[run.name], records[run.name] = cached_run(run, folder, train_x, heldout, first_eval)
    results = report(args, plan, records, saes, info, lrs, heldout, train_x)
    return results


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------


def _at_step(curve: list[dict[str, Any]], step: float) -> float | None:
    """The error on ``curve`` at ``step`` (log–log interpolation between its points; None outside)."""
    pts = [(c["step"], c["reconstruction_error"]) for c in curve]
    for (s0, e0), (s1, e1) in zip(pts, pts[1:], strict=False):
        if s0 <= step <= s1 and s1 > s0:
            w = (math.log(step) - math.log(s0)) / (math.log(s1) - math.log(s0))
            return float(math.exp((1 - w) * math.log(e0) + w * math.log(e1)))
    return None


def measure_step_seconds(
    train_x: torch.Tensor, expansion: int, batch_size: int, lrs: dict[str, float], rounds: int = 20
) -> dict[str, float]:
    """Seconds per training step of vanilla α 0.1 with Adam and with Muon, timed in one process.

    The two optimisers' steps alternate (after one warm-up step each) and the median of each is
    kept, so both see the same machine load. The runs' own recorded seconds cannot be compared
    with each other: they were trained at different times on shared cores.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    torch.manual_seed(0)
    d_in = train_x.shape[1]
    cfg = BilinearTrainingSAEConfig(d_in=d_in, d_sae=expansion * d_in, variant="vanilla", lifted=False, alpha=0.1,
                                    alpha_warm_up_steps=0)  # fmt: skip
    saes = {opt: BilinearTrainingSAE(cfg) for opt in ("adam", "muon")}
    optimizers: dict[str, torch.optim.Optimizer] = {
        "adam": torch.optim.Adam(saes["adam"].parameters(), lr=lrs["adam"]),
        "muon": MuonWithAdamW(saes["muon"].parameters(), lr=lrs["muon"], ns_dtype="auto"),
    }
    times: dict[str, list[float]] = {opt: [] for opt in saes}
    for i in range(rounds + 1):
        start_row = (i * batch_size) % max(1, train_x.shape[0] - batch_size)
        batch = train_x[start_row : start_row + batch_size]
        for opt, sae in saes.items():
            started = time.perf_counter()
            out = sae.training_forward_pass(TrainStepInput(batch, {"alpha": 0.1}, None, i, False))
            optimizers[opt].zero_grad()
            out.loss.backward()
            optimizers[opt].step()
            if i > 0:  # the first step of each is a warm-up
                times[opt].append(time.perf_counter() - started)
    return {opt: float(np.median(t)) for opt, t in times.items()}


def best_runs(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The record with the lowest final error for Adam and for Muon (an error if one has none)."""
    best = {}
    for opt in ("adam", "muon"):
        runs = [r for r in records if r["run"]["optimizer"] == opt]
        if not runs:
            raise ValueError(f"no {opt} run among the records to compare")
        best[opt] = min(runs, key=lambda r: r["final"]["reconstruction_error"])
    return best


def compare_optimizers(records: list[dict[str, Any]], step_seconds: dict[str, float]) -> dict[str, Any]:
    """Adam against Muon: the best run of each (lowest final error), at equal steps and equal wall-clock.

    Wall-clock comes from ``step_seconds`` (:func:`measure_step_seconds`: both timed in one
    process), not from the runs' own seconds. The budget is the time the faster optimiser takes
    for the runs' steps; each optimiser is read off its learning curve at the steps it completes
    in that time. Where that falls before its first curve point its error was never measured:
    the value is None ("–" in tables), never a stand-in.
    """
    best = best_runs(records)
    steps = {opt: r["curve"][-1]["step"] for opt, r in best.items()}
    if len(set(steps.values())) != 1:
        raise ValueError(f"the best runs differ in steps ({steps}): compare runs of equal length")
    budget = min(steps[opt] * step_seconds[opt] for opt in best)
    at_budget = {opt: budget / step_seconds[opt] for opt in best}
    return {
        "best_lr": {opt: r["run"]["lr"] for opt, r in best.items()},
        "equal_steps": {opt: r["final"]["reconstruction_error"] for opt, r in best.items()},
        "seconds": {opt: r["seconds"] for opt, r in best.items()},
        "seconds_per_step": dict(step_seconds),
        "muon_step_over_adam": step_seconds["muon"] / step_seconds["adam"],
        "equal_wall_clock_seconds": budget,
        "equal_wall_clock_steps": at_budget,
        "equal_wall_clock": {
            opt: (r["final"]["reconstruction_error"] if at_budget[opt] >= steps[opt]
                  else _at_step(r["curve"], at_budget[opt]))
            for opt, r in best.items()  # fmt: skip
        },
    }


def _sibling(name: str) -> Any:
    """``experiments/<name>.py`` as a module, loaded by path (scripts are not a package)."""
    return _common.load_script(Path(__file__).resolve().parent / f"{name}.py", f"experiments_{name}")

def seed_pairs(plan: dict[str, list[Run]]) -> dict[str, list[tuple[Run, Run]]]:
    """The pairs of runs that differ only in their seed: ``seeds`` (the main run), ``seeds_width``
    (each width run, at equal tokens), ``seeds_muon`` (the Muon run) and ``seeds_full`` (8.4 M tokens)."""
    seconds = plan["seed"]
    return {
        "seeds": [(plan["curves"][0], seconds[0])],
        "seeds_width": list(zip(plan["width"], seconds[1:-1], strict=True)),
        "seeds_muon": [(plan["muon"][0], seconds[-1])],
        "seeds_full": [(plan["full"][0], plan["full"][1])],
    }


def seed_forecast(results: dict[str, Any]) -> dict[str, Any] | None:
    """How the paper's seed similarity of vanilla α 0.1 at expansion 2 (Adam) grows with tokens.

    Fits 1 − similarity ≈ a · tokens^b through the pairs at different budgets (the width run's,
    the main run's, the full run's) and reads off the tokens at which it would pass the goal.
    None with fewer than two budgets; ``tokens_for_goal`` None when the fit does not fall."""
    candidates = [*results.get("seeds_width", []), results.get("seeds"), results.get("seeds_full")]
    points = sorted({(p["tokens"], p["paper_formula"]) for p in candidates
                     if p and p["expansion"] == 2 and p["optimizer"] == "adam" and p["paper_formula"] < 1})  # fmt: skip
    if len({t for t, _ in points}) < 2:
        return None
    b, log_a = np.polyfit(np.log([t for t, _ in points]), np.log([1 - s for _, s in points]), 1)
    needed = math.exp((math.log(1 - SIMILARITY_GOAL) - log_a) / b) if b < 0 else None
    return {"points": [list(p) for p in points], "exponent": float(b), "tokens_for_goal": needed,
            "goal": SIMILARITY_GOAL}  # fmt: skip


def _seed_similarity(saes: dict[str, Any], a: Run, b: Run) -> dict[str, Any]:
    sim = similarity.compare(saes[a.name], saes[b.name], matched=False)
    return {"expansion": a.expansion, "tokens": a.tokens, "optimizer": a.optimizer,
            "paper_formula": sim["paper_similarity"],
            "operator_similarity_symmetrised": sim["operator_similarity_symmetrised"],
            "goal": SIMILARITY_GOAL}  # fmt: skip


def report(
    args: Any,
    plan: dict[str, list[Run]],
    records: dict,
    saes: dict,
    info: dict,
    lrs: dict,
    heldout: torch.Tensor,
    train_x: torch.Tensor,
) -> dict[str, Any]:
    # A lifted SAE's own error is relative to ||ũ||⁴ = 4 and counts the easy constant corner of ũ⊗ũ;
    # the u⊗u block's error (lift_scale.py's xx_errors) is the one comparable with unlifted SAEs.
    xx_errors = _sibling("lift_scale").xx_errors
    rows = []
    for stage, runs in plan.items():
        for run in runs:
            if run.name in records:
                r = records[run.name]
                rows.append({"stage": stage, "run": run.label, "tokens": run.tokens, "lr": run.lr,
                             **{k: r["final"][k] for k in ("reconstruction_error", "hoyer_density", "tokens_below_0.1",
                                                           "dead_fraction")},
                             "xx_block_error": (xx_errors(saes[run.name], heldout)["xx_error"] if run.lifted
                                                else r["final"]["reconstruction_error"]),
                             "seconds": r["seconds"], "tokens_per_second": r["tokens_per_second"]})  # fmt: skip
    results: dict[str, Any] = {"args": vars(args), "data": info, "lrs": lrs, "rows": rows,
                               "goal_values": {"error_below": ERROR_GOAL, "density_within": list(DENSITY_GOAL),
                                               "similarity_above": SIMILARITY_GOAL},
                               "runs": {name: records[name] for name in records},
                               "training_hours": sum(r["seconds"] for r in records.values()) / 3600}  # fmt: skip
    main_run = plan["curves"][0]
    if main_run.name in records:
        curve = records[main_run.name]["curve"]
        decay_start = main_run.tokens * (1 - TrainingSettings().lr_decay_fraction)
        # Two fits before the LR decays (the last point taken is at most 5 % into the decay): the
        # late one, through the part where the curve has flattened, is the credible forecast; the
        # early one shows how much an extrapolation from short runs would have promised.
        results["extrapolation"] = {
            "constant_lr_fit": power_law(curve, main_run.tokens // 8, int(decay_start * 1.1)),
            "early_fit": power_law(curve, main_run.tokens // 32, main_run.tokens // 4),
            "final": records[main_run.name]["final"]["reconstruction_error"],
            "full_run": records[plan["full"][0].name]["final"] if plan["full"][0].name in records else None,
        }
        final = records[main_run.name]["final"]
        results["goals"] = {
            "error_below_0.1": final["reconstruction_error"] < ERROR_GOAL,
            "density_in_0.2_0.6": DENSITY_GOAL[0] <= final["hoyer_density"] <= DENSITY_GOAL[1],
        }
    for key, pairs in seed_pairs(plan).items():
        done = [_seed_similarity(saes, a, b) for a, b in pairs if a.name in saes and b.name in saes]
        if done:
            results[key] = done if key == "seeds_width" else done[0]
    results["seed_forecast"] = seed_forecast(results)
    adam, muon = plan["curves"][0], plan["muon"][0]
    if adam.name in records and muon.name in records:
        rounds = 3 if args.tiny else 20
        step_seconds = measure_step_seconds(train_x, adam.expansion, adam.batch_size, lrs, rounds=rounds)
        results["optimizers"] = compare_optimizers([records[adam.name], records[muon.name]], step_seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    columns = ["stage", "run", "tokens", "lr", "reconstruction_error", "xx_block_error", "hoyer_density",
               "tokens_below_0.1", "dead_fraction", "seconds", "tokens_per_second"]  # fmt: skip
    table = _common.markdown_table(rows, columns)
    (args.out / "table.md").write_text(table + "\n")
    plot_curves(plan, records, results, args.out / "curves.png")
    plot_pareto(rows, args.out / "pareto.png", max(args.expansions))
    _common.write_json(args.out / "results.json", results)
    print(table, flush=True)
    return results


def plot_curves(plan: dict[str, list[Run]], records: dict, results: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    runs = [r for r in [*plan["curves"], *plan["muon"], *plan["full"]] if r.name in records]
    if not runs:
        return
    fig = Figure(figsize=(10, 5.2), dpi=100, layout="constrained")
    ax_e, ax_d = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for run in runs:
        curve = records[run.name]["curve"]
        tokens = [c["tokens"] for c in curve]
        own = " (own lifted error: counts ũ⊗ũ's constant corner)" if run.lifted else ""
        label = f"{run.label}, {run.tokens / 1e6:g} M tokens{own}"  # the 2 M and 8.4 M runs differ only here
        ax_e.plot(tokens, [c["reconstruction_error"] for c in curve], "o-", ms=3, label=label)
        ax_d.plot(tokens, [c["hoyer_density"] for c in curve], "o-", ms=3, label=label)
    fit = (results.get("extrapolation") or {}).get("constant_lr_fit")
    if fit:
        xs = np.geomspace(fit["fit_from"], PAPER_TOKENS, 50)
        ax_e.plot(xs, fit["a"] * xs ** fit["b"], ":", color="#555", label=f"fit a·T^{fit['b']:.2f} (constant LR)")
    for ax, name in ((ax_e, "held-out x⊗x error"), (ax_d, "Hoyer density")):
        ax.set_xscale("log")
        ax.axvline(PAPER_TOKENS, color="#999", lw=0.7, ls="--")
        ax.set_xlabel("training tokens (dashed: the paper's 8.4 M)")
        ax.set_ylabel(name)
    ax_e.set_yscale("log")
    ax_e.axhline(ERROR_GOAL, color="#c33", lw=0.7, ls=":")
    for y in DENSITY_GOAL:
        ax_d.axhline(y, color="#c33", lw=0.7, ls=":")
    fig.legend(*ax_e.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=7)
    _common.save_figure(fig, path)


def plot_pareto(rows: list[dict[str, Any]], path: Path, widest: int) -> None:
    """Density against the u⊗u-block error (comparable lifted or not) of the α and width runs."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.8, 4.2), dpi=100, layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    groups = {
        "vanilla, α sweep": [r for r in rows if r["stage"] == "curves" and r["run"].startswith("vanilla")],
        "mixed lifted": [r for r in rows if r["stage"] == "curves" and r["run"].startswith("mixed")],
        "vanilla α=0.1, width ×2/×4/×8": [r for r in rows if r["stage"] == "width"],
        f"vanilla ×{widest}, α sweep": [r for r in rows if r["stage"] in ("width", "wide")
                                        and r["run"].split(" ")[3] == f"×{widest}"],
    }  # fmt: skip
    for (label, group), marker in zip(groups.items(), ("o", "s", "^", "D"), strict=True):
        if not group:
            continue
        group = sorted(group, key=lambda r: r["hoyer_density"])
        ax.plot([r["hoyer_density"] for r in group], [r["xx_block_error"] for r in group], marker=marker,
                label=f"{label} ({group[0]['tokens']:,} tokens)")  # fmt: skip
        for r in group:
            name = r["run"].split(" ")[3] if "width" in label else r["run"].split(" ")[2]
            # The ×widest α sweep shares its α 0.1 point with the width runs: its labels go below.
            below = label.startswith(f"vanilla ×{widest}")
            ax.annotate(name, (r["hoyer_density"], r["xx_block_error"]), fontsize=7,
                        xytext=(3, -9 if below else 3), textcoords="offset points")  # fmt: skip
    ax.axhline(ERROR_GOAL, color="#c33", lw=0.7, ls=":")
    ax.axvspan(*DENSITY_GOAL, color="#c33", alpha=0.06)
    ax.set_xlabel("Hoyer density (held-out)")
    ax.set_ylabel("x⊗x error, u⊗u block (held-out)")
    ax.set_title("density against error (shaded: the paper's goal region)", fontsize=9)
    ax.legend(fontsize=7)
    _common.save_figure(fig, path)


if __name__ == "__main__":
    main()
