"""The generated parts of README.md and docs/results.md: result tables rendered from committed JSON,
and test counts.

Every number in a generated block comes from a file in the repository, so the README cannot
drift from the outputs it reports. A block sits between two marker comments::

    <!-- table:main-job -->
    ...generated...
    <!-- /table:main-job -->

(``table:``, ``text:`` or ``count:``; a ``count:`` block is inline, inside one line).

Sources:

* ``docs/results/main_job_metrics.json`` — ``metrics.json`` of one ``sae-bilinear run`` with
  its defaults (``--from-run RUN_DIR`` copies a new one there first);
* ``docs/results/main_job_evaluate.json`` — ``sae-bilinear evaluate RUN_DIR/sae --out FILE`` of
  that run's SAE, with ``evaluate``'s defaults (does it give the run's numbers?);
* ``benchmarks/results/loss_benchmark.json`` — ``python benchmarks/loss_benchmark.py``;
* ``benchmarks/results/perf_benchmark.json`` — ``python benchmarks/perf_benchmark.py``;
* ``benchmarks/results/atlas_benchmark.json`` — ``python benchmarks/atlas_benchmark.py --sae RUN_DIR/sae``;
* ``benchmarks/results/optimizer_comparison_smollm2-135m.json`` — ``python benchmarks/optimizer_comparison.py``;
* ``experiments/results/long_run/results.json`` — ``python experiments/long_run.py`` (see its ``--help``);
* the bad-input test cases: ``pytest --collect-only -q`` of ``tests/test_bad_inputs*.py``,
  ``tests/test_checks.py`` and ``tests/test_script_arguments.py`` (every parametrized case counts
  once), and of the kill/resume and output-safety tests.

Usage (from anywhere; paths are relative to the repository)::

    python scripts/readme_tables.py                  # rewrite every generated block of README.md
    python scripts/readme_tables.py --check          # exit 1 and show what is stale; change nothing
    python scripts/readme_tables.py --count-cases    # print the number of bad-input test cases
    python scripts/readme_tables.py --from-run runs/<time>   # adopt that run's metrics.json, then rewrite
    python scripts/readme_tables.py --no-count       # leave the counts alone (no pytest collection)

Standard library only, so it runs before the package is installed (the counts need pytest).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAIN_JOB_METRICS = ROOT / "docs" / "results" / "main_job_metrics.json"
MAIN_JOB_EVALUATE = ROOT / "docs" / "results" / "main_job_evaluate.json"
LOSS_BENCHMARK = ROOT / "benchmarks" / "results" / "loss_benchmark.json"
PERF_BENCHMARK = ROOT / "benchmarks" / "results" / "perf_benchmark.json"
ATLAS_BENCHMARK = ROOT / "benchmarks" / "results" / "atlas_benchmark.json"
OPTIMIZER_COMPARISON = ROOT / "benchmarks" / "results" / "optimizer_comparison_smollm2-135m.json"
LONG_RUN = ROOT / "experiments" / "results" / "long_run" / "results.json"
LIFT_SCALE = ROOT / "experiments" / "results" / "lift_scale" / "results.json"
STABILITY = ROOT / "experiments" / "results" / "stability" / "results.json"
RESULTS_DOC = ROOT / "docs" / "results.md"

BAD_INPUT_PATTERNS = ("tests/test_bad_inputs*.py", "tests/test_checks.py", "tests/test_script_arguments.py")
"""The bad-input suite: table-driven cases, each asserting the error type and what it names."""
SAFETY_PATTERNS = ("tests/test_main_job_safety.py", "tests/test_resume.py")
"""Kill/resume, overwrite and atomic-write tests (counted apart from the bad-input cases)."""
TEST_FILE_TOPICS = {
    "tests/test_bad_inputs_cli.py": "every `sae-bilinear` command: one-line error, exit 2, the option/file named",
    "tests/test_bad_inputs_data.py": "corpora: non-UTF-8, damaged, empty or too short files, bad arguments",
    "tests/test_bad_inputs_hub.py": "SAE folders, cfg.json, weights, sparsity files, releases, authors' layout, push",
    "tests/test_bad_inputs_model.py": "config fields, cfg.json values, weights vs config, tensors, norms, precision",
    "tests/test_bad_inputs_splice.py": "splice evaluation, interventions (NaN/inf results), model loading",
    "tests/test_checks.py": "the shared value, dtype/device, hook, remote-code and result checks",
    "tests/test_script_arguments.py": "`experiments/` and `benchmarks/` scripts: every numeric option, before any work",
    "tests/test_main_job_safety.py": "main-job options, refused/overwritten folders, atomic publish, kill and resume",
    "tests/test_resume.py": "SIGKILL then resume (Adam and Muon) equals the uninterrupted run; damaged checkpoints",
}
"""A short 'what' per file; a file not listed here shows its docstring's first line."""

BLOCK = re.compile(
    r"(?P<open><!-- (?P<name>(?:table|text|count):[a-z0-9-]+) -->)(?P<body>.*?)(?P<close><!-- /(?P=name) -->)",
    re.DOTALL,
)


class StaleReadme(Exception):
    """README.md does not contain what its sources render to."""


# --------------------------------------------------------------------------- formatting


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; ``–`` for a missing one (None, as JSON writes it)."""
    if value is None:
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"expected a finite number or null, got {value!r}")
    return f"{value:.{digits}f}"


def times(value: float, digits: int = 2) -> str:
    return f"{fmt(value, digits)}×"


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"readme_tables: {path} is missing (see this script's docstring)") from None
    except json.JSONDecodeError as error:
        raise SystemExit(f"readme_tables: {path} is not valid JSON: {error}") from None


# --------------------------------------------------------------------------- the main job

MAIN_JOB_ROWS = (
    ("CE clean (nats)", "ce_clean"),
    ("CE spliced", "ce_spliced"),
    ("CE mean-ablated (training mean)", "ce_mean_ablated"),
    ("CE zero-ablated", "ce_zero_ablated"),
    ("CE loss recovered", "ce_loss_recovered"),
    ("KL(clean ‖ spliced)", "kl"),
    ("x̂ explained variance", "explained_variance"),
    ("x⊗x reconstruction error", "reconstruction_error"),
    ("Hoyer density", "hoyer_density"),
    ("L0 (bilinear: at the activity threshold)", "l0"),
    ("dead fraction", "dead_fraction"),
)
BASELINE_NAMES = {"topk": "SAELens TopK k={k}", "standard": "SAELens standard (ReLU)"}


def main_job_table(metrics: Mapping[str, Any]) -> str:
    config = metrics["config"]
    columns = [f"bilinear ({config['variant']}, lifted, d_sae {config['expansion']}×d_model)"]
    baseline = metrics.get("baseline")
    if baseline is not None:
        name = BASELINE_NAMES[baseline["kind"]].format(k=config["baseline_k"])
        columns.append(f"{name} (d_sae {baseline['d_sae']}, same parameter count)")
    rows = []
    for label, key in MAIN_JOB_ROWS:
        row = [label, fmt(metrics[key])]
        if baseline is not None:
            row.append(fmt(baseline[key]))
        rows.append(row)
    return markdown_table(["metric", *columns], rows)


def main_job_setup(metrics: Mapping[str, Any]) -> str:
    c = metrics["config"]
    baseline = metrics.get("baseline")
    baseline_time = "" if baseline is None else f", the baseline's {baseline['training_seconds']:.0f} s"
    return (
        f"`sae-bilinear run` with its defaults: `{c['model']}` (SmolLM2-135M-Instruct), `{metrics['hook']}`, "
        f"{metrics['tokens']} training tokens ({c['train_contexts']} {c['corpus'].upper()} contexts of "
        f"{c['context_size']}, BOS dropped), {c['steps']} {c['optimizer'].capitalize()} steps of {c['batch_size']} "
        f"tokens at lr {c['lr']:g}, α {c['alpha']:g} (seed {c['seed']}); splice evaluation on "
        f"{metrics['eval_tokens']} held-out tokens ({c['eval_contexts']} contexts). The run took "
        f"{metrics['seconds']:.0f} s inside `run` on a loaded 2-core machine, from loading the model to the last "
        f"metric (the bilinear training {metrics['training_seconds']:.0f} s{baseline_time}); the atlas and "
        "`report.html` are built after that and are not counted."
        + (
            ""
            if "atlas" in c
            else " This run predates the atlas in `run` (see [the atlas](#browsing-latents-the-atlas-not-saedashboard) "
            "for its cost)."
        )
    )


def main_job_reading(metrics: Mapping[str, Any]) -> str:
    ours = metrics["ce_loss_recovered"]
    baseline = metrics.get("baseline")
    density = f"Hoyer density {fmt(metrics['hoyer_density'], 2)} after {metrics['config']['steps']} steps"
    if baseline is None or ours is None or baseline["ce_loss_recovered"] is None:
        return f"The bilinear SAE recovers {fmt(ours)} of the CE loss; its latents are dense ({density})."
    theirs = baseline["ce_loss_recovered"]
    if theirs == ours:
        leader = "the two SAEs splice equally well"
    else:
        leader = "the linear baseline of the same parameter count" if theirs > ours else "the bilinear SAE"
        leader += " is the better *splice*"
    return (
        f"At this budget {leader} by CE loss recovered: {theirs:.0%} for the baseline against {ours:.0%} for "
        f"the bilinear SAE (KL {fmt(baseline['kl'])} against {fmt(metrics['kl'])}); the bilinear latents are "
        f"dense ({density})."
    )


METRIC_NAMES = {key: label.split(" (")[0] for label, key in MAIN_JOB_ROWS}


def _is_number(value: Any) -> bool:
    """A metric (a number or null), not a label such as ``mean_ablation``."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def evaluate_vs_run(metrics: Mapping[str, Any], evaluated: Mapping[str, Any]) -> str:
    """Which of the run's numbers ``sae-bilinear evaluate`` of its SAE reproduces."""
    shared = [key for key in evaluated if key in metrics and key != "n_tokens" and _is_number(evaluated[key])]
    if not shared:
        raise ValueError("the evaluate output shares no metric with the run's metrics.json")
    differ = [
        key
        for key in shared
        if not (evaluated[key] is None and metrics[key] is None)
        and (
            evaluated[key] is None
            or metrics[key] is None
            or not math.isclose(evaluated[key], metrics[key], rel_tol=1e-9, abs_tol=1e-12)
        )
    ]
    same = f"{len(shared) - len(differ)} of its {len(shared)} numbers"
    if not differ:
        text = f"`sae-bilinear evaluate` of this run's `sae/` gives the same {same} (all of them)."
        if "mean_ablation" in evaluated:
            text += (
                " Both ablate to the mean of the training activations, which `run` saves beside the SAE "
                f'(`sae/training_mean.safetensors`; `mean_ablation`: "{evaluated["mean_ablation"]}").'
            )
        return text
    listed = "; ".join(
        f"{METRIC_NAMES.get(k, k)}: {fmt(evaluated[k])} against the run's {fmt(metrics[k])}" for k in differ
    )
    others = "the other differs" if len(differ) == 1 else "the others differ"
    text = f"`sae-bilinear evaluate` of this run's `sae/` gives the same {same}; {others} ({listed})."
    if differ == ["ce_mean_ablated"] and evaluated.get("mean_ablation", "held-out tokens") == "held-out tokens":
        text += (
            " The run ablates to the mean of its training activations, which `evaluate` did not have: it "
            "used the mean of the held-out tokens."
        )
    return text


# --------------------------------------------------------------------------- benchmarks


def loss_benchmark_table(bench: Mapping[str, Any]) -> str:
    header = [
        "d",
        "F",
        "B",
        "dtype",
        "naive ms",
        "kernel ms",
        "ReLU SAE ms",
        "kernel/ReLU",
        "naive/kernel",
        "kernel GFLOP/s",
        "matmul GFLOP/s",
    ]
    rows = []
    for r in bench["rows"]:
        naive = r.get("naive_ms")
        rows.append(
            [
                str(r["d"]),
                str(r["F"]),
                str(r["B"]),
                r["dtype"],
                "skipped" if naive is None else fmt(naive, 1),
                fmt(r["kernel_ms"], 1),
                fmt(r["relu_ms"], 1),
                times(r["kernel_vs_relu"], 1),
                "–" if naive is None else times(r["naive_vs_kernel"], 1),
                fmt(r["kernel_gflops"], 1),
                fmt(r["matmul_gflops"], 1),
            ]
        )
    return markdown_table(header, rows)


def perf_kernel_table(bench: Mapping[str, Any]) -> str:
    header = [
        "d",
        "F",
        "B",
        "autograd ms",
        "fused ms",
        "fused/autograd (FLOP ratio)",
        "peak MB autograd / fused / budget",
    ]
    rows = [
        [
            str(r["d"]),
            str(r["F"]),
            str(r["B"]),
            fmt(r["autograd_ms"], 1),
            fmt(r["fused_ms"], 1),
            f"{times(r['fused_vs_autograd'])} ({times(r['fused_vs_autograd_flops'])})",
            f"{r['autograd_peak_mb']:.0f} / {r['fused_peak_mb']:.0f} / {r['fused_budget_peak_mb']:.0f}",
        ]
        for r in bench["kernel"]
        if r["dtype"] == "float32"  # bf16 is emulated on this CPU: its rows are in the JSON
    ]
    return markdown_table(header, rows)


STEP_MODELS = {
    "bilinear_dense": "bilinear dense",
    "bilinear_topk": "bilinear TopK",
    "standard": "SAELens standard",
    "topk": "SAELens TopK",
}


def perf_steps_table(bench: Mapping[str, Any]) -> str:
    largest = max(r["d"] for r in bench["steps"])  # the smaller sizes are in the JSON
    header = ["d", "F", "B", "k", "SAE", "step ms", "tokens/s", "time vs standard", "FLOPs vs standard", "time vs TopK"]
    rows = [
        [
            str(r["d"]),
            str(r["F"]),
            str(r["B"]),
            str(r["k"]),
            STEP_MODELS[r["model"]],
            fmt(r["step_ms"], 0),
            fmt(r["tokens_per_s"], 0),
            times(r["vs_standard"]),
            times(r["flops_vs_standard"]),
            times(r["vs_topk"]),
        ]
        for r in bench["steps"]
        if r["d"] == largest
    ]
    return markdown_table(header, rows)


def atlas_benchmark_text(bench: Mapping[str, Any]) -> str:
    seconds = bench["seconds"]
    plotly_mb = (bench["site_bytes"] - bench["site_bytes_without_plotly"]) / 1e6
    return (
        f"Measured by `python benchmarks/atlas_benchmark.py` (`benchmarks/results/atlas_benchmark.json`) on "
        f"{bench['latents']} latents and {bench['composites']} composites of a main-job SAE over "
        f"{bench['tokens']} held-out tokens: {seconds['total']:.0f} s in all on a loaded 2-core machine "
        f"({seconds['activations']:.0f} s collecting activations, {seconds['spectra']:.0f} s spectra, "
        f"{seconds['pages']:.0f} s writing pages; the scoring pass runs at "
        f"{bench['latents_per_second_scoring_pass']:.0f} latents/s), and "
        f"{bench['bytes_per_1k_items'] / 1e6:.1f} MB per 1000 latents or composites "
        f"({bench['site_bytes'] / 1e6:.1f} MB for the whole site, {plotly_mb:.1f} MB of it plotly.js)."
    )


def optimizer_table(comparison: Mapping[str, Any]) -> str:
    header = ["optimizer", "lr", "held-out x⊗x error", "Hoyer density", "s / step (as trained, shared cores)"]
    rows = [
        [r["optimizer"], f"{r['lr']:g}", fmt(r["heldout_error"], 4), fmt(r["hoyer_density"]),
         fmt(r["seconds"] / r["steps"], 2)]
        for r in comparison["rows"]
    ]  # fmt: skip
    return markdown_table(header, rows)


def optimizer_text(comparison: Mapping[str, Any]) -> str:
    steps, clock = comparison["equal_steps"], comparison["equal_wall_clock"]
    lr = comparison["best_lr"]
    at_edge = comparison.get("best_lr_at_grid_edge", {})
    edge = lambda opt: ", at the grid's edge" if at_edge.get(opt) else ""  # noqa: E731
    return (
        f"Best of each (Adam lr {lr['adam']:g}{edge('adam')}, Muon lr {lr['muon']:g}{edge('muon')}; "
        "Muon's Newton–Schulz in "
        f"{comparison['ns_dtype']}): at equal steps ({comparison['tokens']:,} tokens) Adam {fmt(steps['adam'], 4)}, "
        f"Muon {fmt(steps['muon'], 4)}; at equal wall-clock ({comparison['equal_wall_clock_seconds']:.0f} s, "
        f"the faster one's time for those steps) Adam {fmt(clock['adam'], 4)}, Muon {fmt(clock['muon'], 4)}."
        f"{unmeasured(clock)}{step_cost(comparison)}{unstable(comparison)}"
    )


UNSTABLE_RISE = 1.2
"""A run whose error rose above 1.2× its best earlier point is called unstable in the text."""


def unstable(comparison: Mapping[str, Any]) -> str:
    """The runs whose learning curve rose well above its best earlier point (``curve_rise``)."""
    rows = [r for r in comparison["rows"] if r.get("curve_rise", 1.0) > UNSTABLE_RISE]
    if not rows:
        return ""
    listed = ", ".join(f"{r['optimizer'].capitalize()} lr {r['lr']:g} (error up to {r['curve_rise']:.1f}× its best "
                       "so far)" for r in rows)  # fmt: skip
    return f" Unstable on the way: {listed}; an equal-wall-clock value read inside such a rise is that rise."


def step_cost(comparison: Mapping[str, Any]) -> str:
    """The per-step costs the equal-wall-clock comparison used (timed side by side)."""
    if "muon_step_over_adam" not in comparison:
        return ""
    per_step = comparison["seconds_per_step"]
    return (
        f" A step took {per_step['adam']:.2f} s with Adam and {per_step['muon']:.2f} s with Muon "
        f"({comparison['muon_step_over_adam']:.2f}×), timed side by side in one process; the table's own "
        "seconds were recorded at different times on shared cores and do not compare."
    )


def unmeasured(clock: Mapping[str, float | None]) -> str:
    """The note a table needs where an optimiser's equal-wall-clock error was never measured."""
    missing = [name.capitalize() for name, value in clock.items() if value is None]
    if not missing:
        return ""
    return f" ({' and '.join(missing)}: – because the faster run finished before its first curve point.)"


def long_run_table(results: Mapping[str, Any]) -> str:
    header = ["stage", "run", "tokens", "own error", "x⊗x (u⊗u) error", "Hoyer density", "tokens/s"]
    rows = [
        [r["stage"], r["run"], f"{r['tokens']:,}", fmt(r["reconstruction_error"], 4), fmt(r["xx_block_error"], 4),
         fmt(r["hoyer_density"]), f"{r['tokens_per_second']:,.0f}"]
        for r in results["rows"] if r["stage"] != "probe"
    ]  # fmt: skip
    return markdown_table(header, rows)


def _row(results: Mapping[str, Any], stage: str, start: str) -> Mapping[str, Any]:
    return next(r for r in results["rows"] if r["stage"] == stage and r["run"].startswith(start))


def short_pair(stability: Mapping[str, Any]) -> Mapping[str, Any]:
    """§4's vanilla α 0.1 seed pair at the short (51 k-token) budget: its error and similarities."""
    return next(p for p in stability["seed_pairs"] if p["variant"] == "vanilla" and p["alpha"] == 0.1)


def long_run_reading(results: Mapping[str, Any], optimizers: Mapping[str, Any], stability: Mapping[str, Any]) -> str:
    short = short_pair(stability)
    main = _row(results, "curves", "vanilla unlifted α=0.1 ")
    mixed = _row(results, "curves", "mixed lifted α=0.1 ")
    alphas = sorted((r for r in results["rows"] if r["stage"] == "curves" and r["run"].startswith("vanilla")),
                    key=lambda r: r["hoyer_density"])  # fmt: skip
    curve = results["runs"][next(n for n, r in results["runs"].items() if r["run"]["variant"] == "vanilla"
                                  and r["run"]["tokens"] == main["tokens"] and r["run"]["seed"] == 0
                                  and r["run"]["alpha"] == 0.1)]["curve"]  # fmt: skip
    late, early = results["extrapolation"]["constant_lr_fit"], results["extrapolation"]["early_fit"]
    before_decay = max((c for c in curve if c["tokens"] <= late["fit_to"]), key=lambda c: c["tokens"])
    width = sorted((r for r in results["rows"] if r["stage"] == "width"), key=_width_of)
    width_text = "; ".join(f"{r['run'].split(' ')[3]} {fmt(r['xx_block_error'])} at density {fmt(r['hoyer_density'])}"
                           for r in width)  # fmt: skip
    steps, clock = optimizers["equal_steps"], optimizers["equal_wall_clock"]
    lo, hi = min(a["xx_block_error"] for a in alphas), max(a["xx_block_error"] for a in alphas)
    best_lr = optimizers["best_lr"]
    sparsest = {  # the best run of each (its density at the best LR)
        o: next(r["hoyer_density"] for r in optimizers["rows"] if r["optimizer"] == o and r["lr"] == best_lr[o])
        for o in ("adam", "muon")
    }
    alpha_list = ", ".join(a["run"].split(" ")[2][2:] for a in alphas[::-1])
    reached = [r for r in width if _in_goal(results, r)]
    token_gain = width[0]["xx_block_error"] - main["xx_block_error"]  # ×2: its width run's tokens → the main run's
    width_gains = [a["xx_block_error"] - b["xx_block_error"] for a, b in zip(width, width[1:], strict=False)]
    width_note = (
        f"Each doubling of the width lowers the error more ({fmt(min(width_gains))}–{fmt(max(width_gains))}) than "
        f"{main['tokens'] / width[0]['tokens']:.0f}× the tokens did ({fmt(token_gain)}). "
        if width_gains and width[0]["run"].split(" ")[3] == "×2" and min(width_gains) > token_gain
        else ""
    )
    goal = (
        f"reached at {', '.join(r['run'].split(' ')[3] for r in reached)} ({fmt(reached[0]['xx_block_error'])} at "
        f"density {fmt(reached[0]['hoyer_density'])} after {reached[0]['tokens']:,} tokens), not at ×2."
        if reached
        else "not reached."
    )
    return "\n".join([
        f"* **Error < 0.1 at Hoyer density 0.2–0.6 (vanilla): {goal}** Vanilla α 0.1 at expansion 2 ends at x⊗x "
        f"error {fmt(main['xx_block_error'])} at density {fmt(main['hoyer_density'])} after {main['tokens']:,} tokens "
        f"(§4: {fmt(short['error_a'])} after 51 k tokens). Across α {alpha_list} the "
        f"error stays within {fmt(lo)}–{fmt(hi)} "
        f"while the density goes {fmt(alphas[-1]['hoyer_density'])} → {fmt(alphas[0]['hoyer_density'])}: the paper's "
        "flat region, one level up. Mixed lifted α 0.1: own error "
        f"{fmt(mixed['reconstruction_error'])} (below 0.1) at density {fmt(mixed['hoyer_density'])}, but its u⊗u "
        f"error is {fmt(mixed['xx_block_error'])}, so it does not meet the goal.",
        f"* **Extrapolation to 8.4 M tokens.** Before the learning rate decays the curve flattens: a power law "
        f"through the points from {late['fit_from']:,} to {before_decay['tokens']:,} tokens gives error ∝ "
        f"T^{late['b']:.3f} and **{fmt(late['at_paper_tokens'])} at 8.4 M** (the same law through the early points, "
        f"{early['fit_from']:,}–{early['fit_to']:,}, would have promised {fmt(early['at_paper_tokens'])}). The decay "
        f"then took the run from {fmt(before_decay['reconstruction_error'])} to {fmt(main['xx_block_error'])}. "
        f"{full_text(results)}",
        f"* **Width at equal tokens** ({width[0]['tokens']:,} each, vanilla α 0.1): {width_text}. {width_note}"
        f"The paper's expansion is 16.{wide_alpha_text(results)}",
        seeds_text(results, main, short),
        f"* **Adam against Muon** (`benchmarks/optimizer_comparison.py`, {optimizers['tokens']:,} tokens, best LR of "
        f"each): equal steps Adam {fmt(steps['adam'])}, Muon {fmt(steps['muon'])}; equal wall-clock "
        f"({optimizers['equal_wall_clock_seconds']:.0f} s) Adam {fmt(clock['adam'])}, Muon {fmt(clock['muon'])}."
        f"{unmeasured(clock)} "
        f"Muon's best run ends sparser at the same α (density {fmt(sparsest['muon'])} "
        f"against {fmt(sparsest['adam'])}).{long_muon_text(results)}",
        *([f"* **Cost.** The {len(results['runs'])} runs took {results['training_hours']:.1f} hours of training "
           "on 2 shared CPU cores, plus the one collection of the store."] if "training_hours" in results else []),
    ])  # fmt: skip


def full_text(results: Mapping[str, Any]) -> str:
    """The 8.4 M-token run against the forecasts (or what the forecast implies when it is missing)."""
    extrapolation = results["extrapolation"]
    full = extrapolation.get("full_run")
    late, early = extrapolation["constant_lr_fit"]["at_paper_tokens"], extrapolation["early_fit"]["at_paper_tokens"]
    if full is None:
        return "So at expansion 2 more tokens will not bring the error under 0.1; what is left is width."
    error = full["reconstruction_error"]
    nearer = "late" if abs(error - late) <= abs(error - early) else "early"
    under = "under" if full["reconstruction_error"] < results["goal_values"]["error_below"] else "not under"
    return (
        f"**Measured at 8.4 M tokens** (`--stages full`): **{fmt(full['reconstruction_error'])}** at density "
        f"{fmt(full['hoyer_density'])}, nearer the {nearer} fit's forecast and {under} 0.1"
        + (": at expansion 2 the paper's token budget does not reach the goal; what is left is width."
           if under == "not under" else ".")
    )  # fmt: skip


def _in_goal(results: Mapping[str, Any], row: Mapping[str, Any]) -> bool:
    """Whether a run meets the issue's goal: x⊗x error below it at a Hoyer density within its range."""
    goals = results["goal_values"]
    low, high = goals["density_within"]
    return row["xx_block_error"] < goals["error_below"] and low <= row["hoyer_density"] <= high


def _width_of(row: Mapping[str, Any]) -> int:
    return int(row["run"].split(" ")[3][1:])


def wide_alpha_text(results: Mapping[str, Any]) -> str:
    """The α sweep at the widest expansion (the ``wide`` stage plus its α 0.1 width run)."""
    widest = max((_width_of(r) for r in results["rows"] if r["stage"] == "width"), default=None)
    runs = sorted((r for r in results["rows"] if r["stage"] in ("width", "wide") and _width_of(r) == widest),
                  key=lambda r: float(r["run"].split(" ")[2][2:]))  # fmt: skip
    if widest is None or len(runs) < 2:
        return ""
    points = "; ".join(f"α {r['run'].split(' ')[2][2:]} {fmt(r['xx_block_error'])} at density "
                       f"{fmt(r['hoyer_density'])}" for r in runs)  # fmt: skip
    inside = [r for r in runs if _in_goal(results, r)]
    return f" At ×{widest} across α (`--stages wide`): {points}; {len(inside)} of {len(runs)} inside the goal region."


def seeds_text(results: Mapping[str, Any], main: Mapping[str, Any], short: Mapping[str, Any]) -> str:
    """Seed-to-seed similarity of every pair the long run has, against the paper's > 0.98."""
    seeds = results["seeds"]
    singles = [results[key] for key in ("seeds_muon", "seeds_full") if key in results]
    pairs = [seeds, *results.get("seeds_width", []), *singles]
    best = max(p["paper_formula"] for p in pairs)
    verdict = "reached" if best > results["goal_values"]["similarity_above"] else "not reached"
    width = "; ".join(f"×{p['expansion']} {fmt(p['paper_formula'])}" for p in results.get("seeds_width", []))
    width_text = (
        f" At equal tokens ({results['seeds_width'][0]['tokens']:,}) by width: {width} (symmetrised "
        + ", ".join(fmt(p["operator_similarity_symmetrised"]) for p in results["seeds_width"]) + ")."
        if width else ""
    )  # fmt: skip
    muon = results.get("seeds_muon")
    muon_text = (
        f" Two Muon seeds at {muon['tokens']:,} tokens: {fmt(muon['paper_formula'])} "
        f"(symmetrised {fmt(muon['operator_similarity_symmetrised'])})." if muon else ""
    )  # fmt: skip
    full = results.get("seeds_full")
    full_text = (
        f" Two seeds at the paper's {full['tokens']:,} tokens: **{fmt(full['paper_formula'])}** "
        f"(symmetrised {fmt(full['operator_similarity_symmetrised'])})." if full else ""
    )  # fmt: skip
    return (
        f"* **Seeds: {verdict}** (best pair {fmt(best)}; > 0.98 in the paper). Two Adam seeds at "
        f"{main['tokens']:,} tokens: the paper's formula 2‖K_ab‖/(‖K_aa‖+‖K_bb‖) gives "
        f"**{fmt(seeds['paper_formula'])}**, the symmetrised form {fmt(seeds['operator_similarity_symmetrised'])} "
        f"({fmt(short['operator_similarity_unsymmetrised'])} / {fmt(short['operator_similarity'])} at 51 k tokens, "
        f"§4).{full_text}{width_text}{muon_text}{forecast_text(results)}"
    )


def forecast_text(results: Mapping[str, Any]) -> str:
    """What the seed similarity's growth with tokens implies for the paper's > 0.98."""
    forecast = results.get("seed_forecast")
    if not forecast:
        return ""
    budgets = " → ".join(f"{fmt(s)} at {t / 1e6:g} M" for t, s in forecast["points"])
    (t0, s0), (t1, s1) = forecast["points"][-2:]
    if s1 <= s0:  # a fit through a plateau would promise the goal at an absurd budget
        return (
            f" By budget at ×2 ({budgets}) the similarity stopped rising between {t0 / 1e6:g} M and "
            f"{t1 / 1e6:g} M tokens: more tokens at expansion 2 will not reach > {forecast['goal']:g}."
        )
    needed = forecast["tokens_for_goal"]
    tail = (
        f"at that rate > {forecast['goal']:g} needs about {needed / 1e6:.0f} M tokens at expansion 2 "
        f"({needed / 8.4e6:.0f}× the paper's budget)."
        if needed is not None
        else "it does not fall with tokens, so more tokens will not reach the goal."
    )
    return f" By budget at ×2 ({budgets}), 1 − similarity ∝ T^{forecast['exponent']:.2f}: {tail}"


def long_muon_text(results: Mapping[str, Any]) -> str:
    """Adam against Muon at the long run's budget (``--stages muon``), when it was run."""
    optimizers = results.get("optimizers")
    if not optimizers:
        return ""
    steps, clock = optimizers["equal_steps"], optimizers["equal_wall_clock"]
    tokens = next(r["tokens"] for r in results["rows"] if r["stage"] == "muon")
    return (
        f" At {tokens:,} tokens (`long_run.py --stages muon`, Adam lr {optimizers['best_lr']['adam']:g}, Muon lr "
        f"{optimizers['best_lr']['muon']:g}): equal steps Adam {fmt(steps['adam'])}, Muon {fmt(steps['muon'])}; "
        f"equal wall-clock ({optimizers['equal_wall_clock_seconds']:.0f} s) Adam {fmt(clock['adam'])}, "
        f"Muon {fmt(clock['muon'])}.{unmeasured(clock)}"
        + (f" (Muon's step {optimizers['muon_step_over_adam']:.2f}× Adam's, timed side by side.)"
           if "muon_step_over_adam" in optimizers else "")
    )  # fmt: skip


def lift_scale_table(results: Mapping[str, Any]) -> str:
    header = ["SAE", "c", "readout", "CE recovered", "KL", "x⊗x (u⊗u) error", "Hoyer density", "L0", "x̂ expl. var."]
    rows = [
        [r["sae"], "–" if r["c"] is None else f"{r['c']:g}", r["readout"], fmt(r["ce_loss_recovered"]), fmt(r["kl"]),
         fmt(r.get("xx_error")), fmt(r["hoyer_density"]), fmt(r["l0"], 0), fmt(r["explained_variance"])]
        for r in results["rows"]
    ]  # fmt: skip
    return markdown_table(header, rows)


def lift_scale_reading(results: Mapping[str, Any], main_job: Mapping[str, Any]) -> str:
    decoder = [r for r in results["rows"] if r["readout"] == "decoder" and r["c"] is not None]
    ridge = [r for r in results["rows"] if r["readout"] != "decoder" and r["c"] is not None]
    topk = next(r for r in results["rows"] if r["c"] is None)
    at_one = next(r for r in decoder if r["c"] == 1)
    best = max(decoder, key=lambda r: r["ce_loss_recovered"])
    met = ", ".join(f"{c:g}" for c in sorted({r["c"] for r in decoder if r["meets_goal"]}))
    ridge_ce = [r["ce_loss_recovered"] for r in ridge]
    return "\n".join([
        f"* **Goal met** (CE recovered ≥ TopK's {fmt(topk['ce_loss_recovered'])} at equal parameters, x⊗x error "
        f"≤ 1.1 × its {fmt(at_one['xx_error'])} at c = 1) by the decoder at c ∈ {{{met}}}. "
        f"The best is c = {best['c']:g}: CE recovered {fmt(best['ce_loss_recovered'])}, KL {fmt(best['kl'])} "
        f"(TopK {fmt(topk['kl'])}), x⊗x error {fmt(best['xx_error'])}. A larger c gives the read-out block more "
        f"weight in the loss but hurts both: at c = {decoder[-1]['c']:g} CE recovered falls to "
        f"{fmt(decoder[-1]['ce_loss_recovered'])} and the x⊗x error rises to {fmt(decoder[-1]['xx_error'])}.",
        f"* **Most of the gain over the main job ({fmt(main_job['ce_loss_recovered'])}) is training length**: c = 1 "
        f"itself reaches {fmt(at_one['ce_loss_recovered'])} at {results['setting']['steps']} steps against the main "
        f"job's {main_job['config']['steps']}.",
        f"* **Not a like-for-like sparsity.** The bilinear SAE is dense (Hoyer density {fmt(best['hoyer_density'])}, "
        f"L0 {fmt(best['l0'], 0)} of its latents) where TopK has L0 {fmt(topk['l0'], 0)}: equal parameters, not equal "
        "sparsity, which is the comparison the issue asks for.",
        f"* **The fitted read-out recovers everything** (CE recovered {fmt(min(ridge_ce))}–{fmt(max(ridge_ce))} "
        "at every c, even where the x⊗x error is poor): a lifted "
        "latent (l·u + c·b_l)(r·u + c·b_r) has a linear part, and a dense code of twice d latents determines u "
        "linearly. It shows that the information is in the latents; it is not a sparse dictionary's read-out.",
    ])  # fmt: skip


def doc_renderers() -> dict[str, Callable[[], str]]:
    """The generated blocks of docs/results.md."""
    return {
        "table:long-run": lambda: long_run_table(load_json(LONG_RUN)),
        "text:long-run-reading": lambda: long_run_reading(
            load_json(LONG_RUN), load_json(OPTIMIZER_COMPARISON), load_json(STABILITY)
        ),
        "table:lift-scale": lambda: lift_scale_table(load_json(LIFT_SCALE)),
        "text:lift-scale-reading": lambda: lift_scale_reading(load_json(LIFT_SCALE), load_json(MAIN_JOB_METRICS)),
    }


# --------------------------------------------------------------------------- test counts


def test_files(patterns: Iterable[str]) -> list[str]:
    files = sorted({str(p.relative_to(ROOT)) for pattern in patterns for p in ROOT.glob(pattern)})
    if not files:
        raise SystemExit(f"readme_tables: no test file matches {list(patterns)}")
    return files


def collect_cases(files: Sequence[str]) -> dict[str, int]:
    """Test items per file, as ``pytest --collect-only -q`` lists them (each parametrized case once)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "MPLBACKEND": "Agg"}
    env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"readme_tables: pytest could not collect {files}:\n{result.stdout}{result.stderr}")
    counts = dict.fromkeys(files, 0)
    for line in result.stdout.splitlines():
        path = line.split("::", 1)[0]
        if "::" in line and path in counts:
            counts[path] += 1
    return counts


def topic(path: str) -> str:
    if path in TEST_FILE_TOPICS:
        return TEST_FILE_TOPICS[path]
    doc = ast.get_docstring(ast.parse((ROOT / path).read_text(encoding="utf-8"))) or ""
    return doc.splitlines()[0] if doc else "–"


def cases_table(bad_inputs: Mapping[str, int], safety: Mapping[str, int]) -> str:
    rows = [[f"`{path}`", str(n), topic(path)] for path, n in bad_inputs.items()]
    rows.append(["**bad-input cases**", f"**{sum(bad_inputs.values())}**", ""])
    rows += [[f"`{path}`", str(n), topic(path)] for path, n in safety.items()]
    return markdown_table(["test file", "cases", "what"], rows)


# --------------------------------------------------------------------------- README blocks


def renderers(with_counts: bool) -> dict[str, Callable[[], str]]:
    main = lambda: load_json(MAIN_JOB_METRICS)  # noqa: E731
    blocks: dict[str, Callable[[], str]] = {
        "text:main-job-setup": lambda: main_job_setup(main()),
        "table:main-job": lambda: main_job_table(main()),
        "text:main-job-reading": lambda: main_job_reading(main()),
        "text:evaluate-vs-run": lambda: evaluate_vs_run(main(), load_json(MAIN_JOB_EVALUATE)),
        "table:loss-benchmark": lambda: loss_benchmark_table(load_json(LOSS_BENCHMARK)),
        "table:perf-kernel": lambda: perf_kernel_table(load_json(PERF_BENCHMARK)),
        "table:perf-steps": lambda: perf_steps_table(load_json(PERF_BENCHMARK)),
        "text:atlas-benchmark": lambda: atlas_benchmark_text(load_json(ATLAS_BENCHMARK)),
        "table:optimizer-comparison": lambda: optimizer_table(load_json(OPTIMIZER_COMPARISON)),
        "text:optimizer-comparison": lambda: optimizer_text(load_json(OPTIMIZER_COMPARISON)),
        "table:long-run": lambda: long_run_table(load_json(LONG_RUN)),
    }
    if with_counts:
        counts: dict[str, dict[str, int]] = {}

        def cached() -> dict[str, dict[str, int]]:
            if not counts:  # one pytest run for both blocks
                bad = test_files(BAD_INPUT_PATTERNS)
                safety = test_files(SAFETY_PATTERNS)
                found = collect_cases(bad + safety)
                counts["bad"] = {f: found[f] for f in bad}
                counts["safety"] = {f: found[f] for f in safety}
            return counts

        blocks["count:bad-input-cases"] = lambda: str(sum(cached()["bad"].values()))
        blocks["table:bad-input-cases"] = lambda: cases_table(cached()["bad"], cached()["safety"])
    return blocks


def block_text(name: str, content: str) -> str:
    """What goes between the markers: inline for counts, on its own lines otherwise."""
    return content if name.startswith("count:") else f"\n{content}\n"


def readme_blocks(text: str) -> dict[str, str]:
    """Each generated block of ``text``: name → its content as written (between the markers)."""
    found: dict[str, str] = {}
    for match in BLOCK.finditer(text):
        if match["name"] in found:
            raise SystemExit(f"readme_tables: README.md has the block {match['name']} twice")
        found[match["name"]] = match["body"]
    return found


def render(text: str, blocks: Mapping[str, Callable[[], str]], name: str = "README.md") -> str:
    """``text`` with each known block replaced by what its source renders to."""
    present = readme_blocks(text)
    missing = sorted(set(blocks) - set(present))
    if missing:
        raise SystemExit(f"readme_tables: {name} lacks the marker comments of {missing}")
    rendered = {name: block_text(name, make()) for name, make in blocks.items()}
    return BLOCK.sub(lambda m: m["open"] + rendered[m["name"]] + m["close"] if m["name"] in rendered else m[0], text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is stale; change nothing")
    parser.add_argument("--count-cases", action="store_true", help="print the number of bad-input test cases")
    parser.add_argument("--no-count", action="store_true", help="leave the test counts alone (no pytest run)")
    parser.add_argument("--from-run", metavar="RUN_DIR", help="copy RUN_DIR/metrics.json to docs/results first")
    args = parser.parse_args(argv)

    if args.count_cases:
        print(sum(collect_cases(test_files(BAD_INPUT_PATTERNS)).values()))
        return 0
    if args.from_run:
        source = Path(args.from_run) / "metrics.json"
        main_job_table(load_json(source))  # refuse a file that would not render
        MAIN_JOB_METRICS.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, MAIN_JOB_METRICS)
    stale = False
    for path, blocks in ((README, renderers(with_counts=not args.no_count)), (RESULTS_DOC, doc_renderers())):
        label = str(path.relative_to(ROOT))
        text = path.read_text(encoding="utf-8")
        new = render(text, blocks, label)
        if args.check:
            if new != text:
                sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True), label,
                                                           f"{label} (regenerated)"))  # fmt: skip
                print(f"{label} is stale: run python scripts/readme_tables.py", file=sys.stderr)
                stale = True
        elif new != text:
            path.write_text(new, encoding="utf-8")
            print(f"{label} updated")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
