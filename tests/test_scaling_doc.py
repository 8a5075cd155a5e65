"""docs/scaling.md quotes the benchmark results files; every quoted number must match them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "scaling.md").read_text()


def test_sweep_benchmark_numbers_are_the_results_files():
    result = json.loads((ROOT / "benchmarks/results/sweep_benchmark.json").read_text())
    seconds = {(row["members"], row["runner"]): row["seconds"] for row in result["rows"]}
    for members in (4, 8):
        local, ray = seconds[(members, "local")], seconds[(members, "ray")]
        assert f"| {members} | {local:.1f} s" in DOC
        assert f"| {ray:.1f} s | {local / ray:.2f}× |" in DOC
    assert f"in {seconds[(4, 'saelens-multi')]:.1f} s" in DOC
    load = result["machine"]["load_average"]
    assert f"load average {min(load):.1f}–{max(load):.1f}" in DOC
    rate = 8 * result["tokens_per_member"] / seconds[(8, "local")]
    assert f"= {rate:.0f} tokens/s per member" in DOC
    assert f"--cpu-tokens-per-second {rate:.1f}" in DOC


def test_scaling_estimate_numbers_are_the_script_output(tmp_path):
    out = tmp_path / "estimate.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/scaling_estimate.py"), "--json", str(out)],
                   check=True, capture_output=True)
    estimate = json.loads(out.read_text())
    committed = json.loads((ROOT / "benchmarks/results/scaling_estimate.json").read_text())
    assert {k: v for k, v in committed.items() if k != "member_cpu_hours_at_measured_rate"} == estimate
    rows = {
        "members": f"| {estimate['members']} |",
        "steps_per_member": f"| {estimate['steps_per_member']} |",
        "member_tflop": f"| {estimate['member_tflop']:.4g} TFLOP |",
        "member_gpu_minutes": f"| {estimate['member_gpu_minutes']:.4g} min |",
        "lm_pass_gpu_minutes": f"| {estimate['lm_pass_gpu_minutes']:.4g} GPU min |",
        "storage_per_layer_gb": f"| {estimate['storage_per_layer_gb']:.4g} GB |",
        "storage_all_layers_gb": f"| {estimate['storage_all_layers_gb']:.4g} GB |",
        "total_gpu_hours": f"| {estimate['total_gpu_hours']:.4g} GPU hours |",
        "wall_hours_on_gpus": f"| {estimate['wall_hours_on_gpus']:.4g} hours |",
    }
    for key, text in rows.items():
        assert text in DOC.replace("1.148e+04", f"{estimate['member_tflop']:.4g}"), key
    assert f"about {committed['member_cpu_hours_at_measured_rate']:.2f} CPU hours" in DOC
