"""experiments/long_run.py (issue 16 §2) in its --tiny mode, and the trainer's per-step callback it uses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sae_bilinear.bilinear import BilinearTrainingSAE, BilinearTrainingSAEConfig
from sae_bilinear.errors import ConfigError
from sae_bilinear.experiment_utils import load_script
from sae_bilinear.train import TrainingSettings, train_on_activations

ROOT = Path(__file__).resolve().parents[1]
long_run = load_script(ROOT / "experiments" / "long_run.py", "experiments_long_run")


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module, loaded by path."""
    return load_script(ROOT / "benchmarks" / f"{name}.py", f"benchmarks_{name}")


pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")


def _tiny_sae() -> BilinearTrainingSAE:
    torch.manual_seed(0)
    return BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=8, d_sae=16, alpha=0.1, alpha_warm_up_steps=2))


def test_on_step_sees_every_step_and_the_training_sae():
    seen: list[tuple[int, bool]] = []
    sae = _tiny_sae()
    x = torch.randn(256, 8)
    train_on_activations(
        sae, x, TrainingSettings(steps=5, batch_size=32), on_step=lambda s, m: seen.append((s, m is sae))
    )
    assert seen == [(1, True), (2, True), (3, True), (4, True), (5, True)]


def test_on_step_must_be_callable():
    with pytest.raises(ConfigError, match="on_step"):
        train_on_activations(_tiny_sae(), torch.randn(64, 8), TrainingSettings(steps=1, batch_size=32), on_step=3)


def test_eval_points_and_power_law():
    assert long_run.eval_points(100, 4) == [4, 8, 16, 32, 64, 100]
    assert long_run.eval_points(3, 4) == [3]
    curve = [{"tokens": t, "reconstruction_error": 2.0 * t**-0.25} for t in (1000, 2000, 4000, 8000)]
    fit = long_run.power_law(curve, 1000, 8000)
    assert fit is not None and math.isclose(fit["b"], -0.25, rel_tol=1e-9) and math.isclose(fit["a"], 2.0, rel_tol=1e-9)
    assert math.isclose(fit["at_paper_tokens"], 2.0 * long_run.PAPER_TOKENS**-0.25, rel_tol=1e-9)
    assert long_run.power_law(curve[:2], 1000, 8000) is None  # two points fit nothing


def test_curve_rise_is_the_worst_climb_above_the_best_so_far():
    benchmark = load_benchmark("optimizer_comparison")
    curve = lambda *errors: [{"reconstruction_error": e} for e in errors]  # noqa: E731
    assert benchmark.curve_rise(curve(0.6, 0.5, 0.4)) == 1.0
    assert benchmark.curve_rise(curve(0.6, 0.4, 0.8, 0.2)) == pytest.approx(2.0)


def test_at_step_interpolates_inside_the_curve_only():
    curve = [{"step": 10, "reconstruction_error": 0.8}, {"step": 40, "reconstruction_error": 0.2}]
    assert math.isclose(long_run._at_step(curve, 20), math.sqrt(0.8 * 0.2))  # halfway in log(step)
    assert long_run._at_step(curve, 5) is None and long_run._at_step(curve, 50) is None


def test_step_seconds_are_timed_for_both_optimisers():
    seconds = long_run.measure_step_seconds(torch.randn(64, 8), 2, 16, {"adam": 1e-3, "muon": 0.03}, rounds=2)
    assert set(seconds) == {"adam", "muon"} and all(math.isfinite(v) and v > 0 for v in seconds.values())
    with pytest.raises(ValueError, match="rounds"):
        long_run.measure_step_seconds(torch.randn(64, 8), 2, 16, {"adam": 1e-3, "muon": 0.03}, rounds=0)


def test_data_options_refuse_a_nonsense_size(tmp_path):
    with pytest.raises(ValueError, match="heldout_contexts must be an int >= 1"):
        long_run.DataOptions(cache=tmp_path, heldout_contexts=0)
    assert long_run.DataOptions.small(tmp_path).tiny


def test_seed_forecast_reads_the_tokens_off_a_power_law_in_one_minus_similarity():
    pair = lambda tokens, sim: {"tokens": tokens, "paper_formula": sim, "expansion": 2, "optimizer": "adam"}  # noqa: E731
    # 1 − s = 0.08, 0.04 at 1 k, 4 k tokens: halves per 4×, so 0.02 (the goal) at 16 k.
    results = {"seeds_width": [pair(1000, 0.92), {**pair(1000, 0.5), "expansion": 8}], "seeds": pair(4000, 0.96)}
    forecast = long_run.seed_forecast(results)
    assert forecast["exponent"] == pytest.approx(-0.5) and forecast["tokens_for_goal"] == pytest.approx(16000)
    assert long_run.seed_forecast({"seeds": pair(4000, 0.96)}) is None  # one budget: nothing to fit
    flat = long_run.seed_forecast({"seeds_width": [pair(1000, 0.95)], "seeds": pair(4000, 0.94)})
    assert flat["exponent"] > 0 and flat["tokens_for_goal"] is None


def _record(optimizer, lr, final, curve):
    points = [{"step": step, "reconstruction_error": e} for step, e in curve]
    return {"run": {"optimizer": optimizer, "lr": lr}, "final": {"reconstruction_error": final},
            "seconds": 99.0, "curve": points}  # fmt: skip


def test_compare_optimizers_reads_the_slower_off_its_curve_at_the_faster_finish():
    records = [
        _record("adam", 0.01, 0.2, [(10, 0.5), (40, 0.2)]),
        _record("adam", 0.003, 0.3, [(10, 0.6), (40, 0.3)]),
        _record("muon", 0.1, 0.1, [(10, 0.4), (40, 0.1)]),
    ]
    # Muon's step costs 2× Adam's: in Adam's time for 40 steps Muon makes 20.
    result = long_run.compare_optimizers(records, {"adam": 0.5, "muon": 1.0})
    assert result["best_lr"] == {"adam": 0.01, "muon": 0.1}
    assert result["equal_steps"] == {"adam": 0.2, "muon": 0.1}
    assert result["equal_wall_clock_seconds"] == 20.0 and result["equal_wall_clock_steps"] == {"adam": 40, "muon": 20}
    assert result["equal_wall_clock"]["adam"] == 0.2
    assert math.isclose(result["equal_wall_clock"]["muon"], math.sqrt(0.4 * 0.1))  # halfway in log–log
    assert result["muon_step_over_adam"] == 2.0


def test_compare_optimizers_never_stands_in_a_value_it_did_not_measure():
    # Muon's step costs 8× Adam's: in Adam's time it makes 5 steps, before its first curve point.
    records = [_record("adam", 0.01, 0.2, [(10, 0.5), (40, 0.2)]), _record("muon", 0.1, 0.1, [(10, 0.4), (40, 0.1)])]
    assert long_run.compare_optimizers(records, {"adam": 0.1, "muon": 0.8})["equal_wall_clock"] == {
        "adam": 0.2, "muon": None}  # fmt: skip
    with pytest.raises(ValueError, match="no muon run"):
        long_run.compare_optimizers(records[:1], {"adam": 0.1, "muon": 0.8})
    with pytest.raises(ValueError, match="differ in steps"):
        long_run.compare_optimizers([records[0], _record("muon", 0.1, 0.1, [(10, 0.4), (20, 0.1)])],
                                    {"adam": 0.1, "muon": 0.8})  # fmt: skip


@pytest.mark.slow
def test_long_run_tiny(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    results = long_run.main(["--tiny", "--out", str(out), "--cache", str(cache), "--threads", "1"])
    stages = {row["stage"] for row in results["rows"]}
    assert stages == set(long_run.STAGES)
    main = results["runs"][next(iter(results["runs"]))]
    assert main["curve"][0]["tokens"] < main["curve"][-1]["tokens"]
    curves = [r["curve"] for r in results["runs"].values() if len(r["curve"]) >= 3]
    # Training lowers the held-out error along every curve (a broken trainer or callback would not).
    assert curves and all(c[-1]["reconstruction_error"] < c[0]["reconstruction_error"] for c in curves)
    for row in results["rows"]:  # unlifted: the model's own error is the x⊗x error; lifted: the u⊗u block's
        assert math.isfinite(row["xx_block_error"]) and row["xx_block_error"] > 0
        if "unlifted" in row["run"]:
            assert row["xx_block_error"] == row["reconstruction_error"]
    lifted = [row for row in results["rows"] if " lifted" in row["run"]]
    assert lifted and all(row["xx_block_error"] != row["reconstruction_error"] for row in lifted)
    assert 0 < results["seeds"]["paper_formula"] <= 1.0 + 1e-6
    # Every width run has its second seed, at the width budget.
    assert [(p["expansion"], p["tokens"]) for p in results["seeds_width"]] == [(1, 4096), (2, 4096)]
    assert all(0 < p["paper_formula"] <= 1.0 + 1e-6 for p in results["seeds_width"])
    assert results["seeds_full"]["tokens"] == 16384 and 0 < results["seeds_full"]["paper_formula"] <= 1 + 1e-6
    assert results["seeds_muon"]["optimizer"] == "muon" and 0 < results["seeds_muon"]["paper_formula"] <= 1 + 1e-6
    assert set(results["optimizers"]["equal_steps"]) == {"adam", "muon"}
    assert results["extrapolation"]["final"] > 0
    for name in ("results.json", "table.md", "curves.png", "pareto.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "results.json").read_text())["lrs"] == results["lrs"]
    # A rerun trains nothing: every run is read back from the cache.
    again = long_run.main(["--tiny", "--out", str(out), "--cache", str(cache), "--threads", "1", "--report-only"])
    assert again["rows"] == results["rows"]


@pytest.mark.slow
def test_optimizer_comparison_tiny(tmp_path):
    benchmark = load_benchmark("optimizer_comparison")
    out = tmp_path / "comparison.json"
    result = benchmark.main(["--tiny", "--cache", str(tmp_path / "cache"), "--out", str(out), "--threads", "1"])
    assert {r["optimizer"] for r in result["rows"]} == {"adam", "muon"} and len(result["rows"]) == 7  # 3 + 4 LRs
    for opt, grid in (("adam", [3e-3, 1e-2, 3e-2]), ("muon", [0.03, 0.1, 0.3, 1.0])):
        assert result["best_lr_at_grid_edge"][opt] == (result["best_lr"][opt] in (grid[0], grid[-1]))
    best = {o: min(r["heldout_error"] for r in result["rows"] if r["optimizer"] == o) for o in ("adam", "muon")}
    assert result["equal_steps"] == pytest.approx(best)
    # Wall-clock from steps timed side by side; the slower is read off its curve at its steps then.
    slower = max(result["seconds_per_step"], key=result["seconds_per_step"].get)
    steps = result["rows"][0]["steps"]
    assert result["equal_wall_clock_seconds"] == pytest.approx(steps * min(result["seconds_per_step"].values()))
    clock = result["equal_wall_clock"][slower]
    if clock is None:  # the budget ended before the slower's first curve point: never measured
        record = next(r for r in result["rows"] if r["optimizer"] == slower and r["lr"] == result["best_lr"][slower])
        assert record["first_curve_step"] > result["equal_wall_clock_steps"][slower]
    else:
        assert clock >= result["equal_steps"][slower] - 1e-12
    assert json.loads(out.read_text())["table"] == result["table"]
