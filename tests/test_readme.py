"""README.md stays true: its generated blocks equal what their sources render, every command and
option it names exists, every link resolves, and every Python block runs.

Python blocks carry a marker comment on the line above the fence saying how they are tested:

* ``<!-- readme-test: run -->``: executed as written, in order, in one fresh process (in a
  temporary folder, offline) — the offline quick start and what continues it;
* ``<!-- readme-test: fresh -->``: executed as written in its own fresh process after the ``run``
  blocks (same folder), e.g. to show what works without ``import sae_bilinear``;
* ``<!-- readme-test: hub-cache -->``: executed as written, offline, against a hand-built
  Hugging Face cache holding the folders it names (no network);
* ``<!-- readme-test: stub-runner -->``: needs a GPU and the Hub; executed as written with
  SAELens's runner and ours replaced by recorders, so the config it builds is checked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sae_lens
from hub_helpers import AUTHORS_REPO, UNREACHABLE, build_cache, folder_files, no_network, write_bae
from hub_server import redirect_hub

from sae_bilinear import hook_experiments, train
from sae_bilinear.cli import parser as cli_parser
from sae_bilinear.experiment_utils import load_script

ROOT = Path(__file__).resolve().parent.parent
README_PATH = ROOT / "README.md"
README = README_PATH.read_text(encoding="utf-8")
TEST_KINDS = ("run", "fresh", "hub-cache", "stub-runner")
OTHER_TOOLS_OPTIONS = {"--no-deps", "--collect-only"}
"""Options the README names that belong to other tools (pip, pytest), not to sae-bilinear."""

tables = load_script(ROOT / "scripts" / "readme_tables.py", "readme_tables")

FENCE = re.compile(r"^```(?P<lang>[a-z]*)\n(?P<body>.*?)^```$", re.DOTALL | re.MULTILINE)
MARKER = re.compile(r"<!-- readme-test: (?P<kind>[a-z-]+) -->\s*\Z")


def code_blocks(text: str = README) -> list[tuple[str, str, str | None]]:
    """``(language, body, test kind or None)`` of every fenced block, in order."""
    blocks = []
    for match in FENCE.finditer(text):
        marker = MARKER.search(text[: match.start()])
        blocks.append((match["lang"], match["body"], marker["kind"] if marker else None))
    return blocks


def python_blocks(kind: str) -> list[str]:
    return [body for lang, body, marked in code_blocks() if lang == "python" and marked == kind]


def subprocess_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SAE_BILINEAR_NO_AUTOREGISTER"}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        HF_HUB_OFFLINE="1",
        WANDB_MODE="disabled",
        MPLBACKEND="Agg",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = cwd / "readme_block.py"
    script.write_text(code, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert result.returncode == 0, f"README block failed:\n{code}\n--- stderr ---\n{result.stderr[-6000:]}"
    return result


# --------------------------------------------------------------------------- generated blocks


def test_every_generated_block_equals_what_its_source_renders():
    present = tables.readme_blocks(README)
    for name, make in tables.renderers(with_counts=False).items():
        assert name in present, f"README.md lacks the block {name}"
        assert present[name] == tables.block_text(name, make()), (
            f"README block {name} is stale: run python scripts/readme_tables.py"
        )


def test_the_committed_main_job_metrics_are_a_finished_default_run():
    metrics = tables.load_json(tables.MAIN_JOB_METRICS)
    config = metrics["config"]
    # The table claims `sae-bilinear run` with its defaults.
    assert config["model"] == "smollm2-135m" and config["steps"] == 150 and config["baseline"] == "topk"
    assert metrics["baseline"]["kind"] == "topk" and metrics["seconds"] > 0
    table = tables.readme_blocks(README)["table:main-job"]
    assert f"| CE spliced | {metrics['ce_spliced']:.3f} | {metrics['baseline']['ce_spliced']:.3f} |" in table


def main_job_metrics(ours: float, theirs: float) -> dict:
    values = {key: 0.5 for _, key in tables.MAIN_JOB_ROWS}
    config = {"variant": "mixed", "expansion": 2, "baseline_k": 32, "steps": 150}
    baseline = {
        **values,
        "kind": "topk",
        "d_sae": 2304,
        "ce_loss_recovered": theirs,
        "kl": 0.9,
        "reconstruction_error": None,
    }
    return {
        **values,
        "config": config,
        "baseline": baseline,
        "ce_loss_recovered": ours,
        "kl": 1.7,
        "ce_spliced": 4.56789,
    }


def test_main_job_table_and_reading_follow_the_numbers():
    table = tables.main_job_table(main_job_metrics(0.8, 0.9))
    assert "| CE spliced | 4.568 | 0.500 |" in table  # rounded to 3 decimals, baseline beside
    assert "| x⊗x reconstruction error | 0.500 | – |" in table  # a linear SAE has none
    assert "d_sae 2304" in table.splitlines()[0]
    assert "the linear baseline of the same parameter count is the better *splice*" in tables.main_job_reading(
        main_job_metrics(0.8, 0.9)
    )
    assert "the bilinear SAE is the better *splice*" in tables.main_job_reading(main_job_metrics(0.95, 0.9))
    with pytest.raises(ValueError, match="finite"):
        tables.main_job_table(main_job_metrics(float("nan"), 0.9))


def test_evaluate_against_run_names_exactly_the_numbers_that_differ():
    run = {"ce_clean": 3.0, "ce_spliced": 4.0, "ce_mean_ablated": 8.5, "reconstruction_error": None}
    same = dict(run, n_tokens=10)
    assert "the same 4 of its 4 numbers (all of them)" in tables.evaluate_vs_run(run, same)
    text = tables.evaluate_vs_run(run, dict(same, ce_mean_ablated=8.4))
    assert "the same 3 of its 4 numbers; the other differs (CE mean-ablated: 8.400 against the run's 8.500)" in text
    assert "held-out tokens" in text  # the reason, given only for this one difference
    text = tables.evaluate_vs_run(run, dict(same, ce_spliced=4.1, ce_mean_ablated=8.4))
    assert "the others differ (CE spliced: 4.100" in text and "held-out tokens" not in text
    # evaluate's label of the mean is not a number to compare; with the run's mean all agree.
    label = "training activations (100 tokens)"
    text = tables.evaluate_vs_run(dict(run, mean_ablation=label), dict(same, mean_ablation=label))
    assert "the same 4 of its 4 numbers (all of them)" in text and label in text


def test_render_replaces_only_known_blocks_and_refuses_a_missing_one():
    kept = "<!-- table:z -->keep<!-- /table:z -->"
    text = "a <!-- count:x -->1<!-- /count:x --> b\n<!-- table:y -->\nold\n<!-- /table:y -->\n" + kept
    new = tables.render(text, {"count:x": lambda: "2", "table:y": lambda: "| new |"})
    assert new == "a <!-- count:x -->2<!-- /count:x --> b\n<!-- table:y -->\n| new |\n<!-- /table:y -->\n" + kept
    with pytest.raises(SystemExit, match="table:w"):
        tables.render(text, {"table:w": lambda: ""})


@pytest.mark.slow
def test_bad_input_case_count_equals_what_the_command_counts():
    files = tables.test_files(tables.BAD_INPUT_PATTERNS)
    safety = tables.test_files(tables.SAFETY_PATTERNS)
    counts = tables.collect_cases(files + safety)
    assert all(counts[f] > 0 for f in files + safety), counts
    present = tables.readme_blocks(README)
    stale = "is stale: run python scripts/readme_tables.py"
    assert present["count:bad-input-cases"] == str(sum(counts[f] for f in files)), f"the case count {stale}"
    expected = tables.cases_table({f: counts[f] for f in files}, {f: counts[f] for f in safety})
    assert present["table:bad-input-cases"] == tables.block_text("table:", expected), f"the case table {stale}"


# --------------------------------------------------------------------------- commands, options, links


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli_parser.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = dict(action.choices)
    for name in hook_experiments.COMMANDS:  # these hand their options to the experiment's own parser
        found[name] = hook_experiments.script_parser(name)
    return found


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_every_command_named_in_the_readme_exists_and_every_command_is_listed():
    commands = {command.NAME for command in cli_parser.COMMANDS}
    named = set(re.findall(r"sae-bilinear ([a-z][a-z0-9-]*)", README))
    assert named, "the README names no command"
    assert named <= commands, f"the README names commands the CLI lacks: {sorted(named - commands)}"
    cli_list = next(body for lang, body, _ in code_blocks() if lang == "" and "sae-bilinear run" in body)
    listed = set(re.findall(r"^sae-bilinear ([a-z][a-z0-9-]*)", cli_list, re.MULTILINE))
    assert listed == commands, f"the command list lacks {sorted(commands - listed)}"


def test_every_option_on_a_readme_command_line_exists():
    parsers = subparsers()
    global_options = option_strings(cli_parser.build_parser())
    lines = [
        line.split("#")[0].strip()
        for lang, body, _ in code_blocks()
        if lang in ("", "bash")
        for line in body.splitlines()
        if line.strip().startswith("sae-bilinear ")
    ]
    assert len(lines) >= 15
    for line in lines:
        words = line.split()
        known = option_strings(parsers[words[1]]) | global_options
        for word in words[2:]:
            option = word.strip("[]").split("=")[0]
            if option.startswith("--"):
                assert option in known, f"`{line}`: sae-bilinear {words[1]} has no option {option}"


def test_every_option_the_prose_names_exists_somewhere():
    every = set().union(option_strings(cli_parser.build_parser()), *(option_strings(p) for p in subparsers().values()))
    named = set(re.findall(r"`(?:sae-bilinear [a-z-]+ |[a-z-]+ )?(--[a-z][a-z0-9-]*)", README)) - OTHER_TOOLS_OPTIONS
    assert named, "no option found: the pattern is wrong"
    assert named <= every, f"the README names options no command has: {sorted(named - every)}"


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_resolves():
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", README, re.MULTILINE)}
    for target in re.findall(r"\]\(([^)]+)\)", README):
        if target.startswith("#"):
            assert target[1:] in anchors, f"no heading has the anchor {target}"
        elif "://" not in target:
            assert (ROOT / target).exists(), f"the README links to {target}, which does not exist"


def test_every_path_in_the_layout_table_exists():
    table = README[README.index("## Layout") :]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) >= 15
    for row in rows:
        first, *rest = re.findall(r"`([^`]+)`", row.split(" | ")[0])
        assert (ROOT / first.rstrip("/")).exists(), f"the layout names {first}, which does not exist"
        folder = (ROOT / first).parent
        for name in rest:
            if not name.startswith("."):  # `.pth`: a suffix, not a file name
                assert (ROOT / name).exists() or (folder / name.rstrip("/")).exists(), f"the layout names {name}"


# --------------------------------------------------------------------------- the Python blocks


def test_every_python_block_says_how_it_is_tested():
    blocks = [(body, kind) for lang, body, kind in code_blocks() if lang == "python"]
    assert blocks
    for body, kind in blocks:
        assert kind in TEST_KINDS, f"a python block has no <!-- readme-test: KIND --> marker:\n{body[:300]}"
    assert python_blocks("run"), "the offline quick start is missing"


@pytest.mark.slow
def test_the_quick_start_and_what_follows_it_run_as_written(tmp_path):
    result = run_python("\n".join(python_blocks("run")), tmp_path)
    assert "latent 7's eigenvalues" in result.stdout
    assert (tmp_path / "runs" / "quickstart" / "cfg.json").is_file()
    for block in python_blocks("fresh"):
        assert "import sae_bilinear" not in block.replace("no `import sae_bilinear`", "")
        assert "BilinearSAE" in run_python(block, tmp_path).stdout


def test_the_release_block_runs_offline_from_a_cache(monkeypatch, tmp_path):
    (block,) = python_blocks("hub-cache")
    cache = tmp_path / "hf-cache"
    redirect_hub(monkeypatch, UNREACHABLE, cache, offline=True)
    for folder in sorted(set(re.findall(r'"([a-z]+-l\d\d-x\d+-a\d+-b\d+)"', block))):
        write_bae(tmp_path / folder, kind=folder.split("-")[0], alpha=1.0)
        build_cache(cache, AUTHORS_REPO, folder_files(tmp_path / folder, folder))
    namespace: dict = {}
    with no_network():
        exec(compile(block, "README.md (hub-cache block)", "exec"), namespace)
    assert type(namespace["sae"]).__name__ == "BilinearSAE"
    assert namespace["sae"].cfg.metadata.hook_name == "blocks.18.hook_resid_pre"


class _Recorder:
    calls: list = []

    def __init__(self, cfg, *args, **kwargs):
        _Recorder.calls.append((type(self).__name__, cfg, kwargs))

    def run(self):
        return "trained"


def test_the_qwen3_block_builds_a_valid_runner_config(monkeypatch):
    (block,) = python_blocks("stub-runner")
    _Recorder.calls = []
    for module, name in ((sae_lens, "LanguageModelSAETrainingRunner"), (train, "BilinearTrainingRunner")):
        monkeypatch.setattr(module, name, type(name, (_Recorder,), {}))
    exec(compile(block, "README.md (stub-runner block)", "exec"), {})
    (ours_name, cfg, _), (runner_name, same_cfg, kwargs) = _Recorder.calls
    assert (ours_name, runner_name) == ("LanguageModelSAETrainingRunner", "BilinearTrainingRunner")
    assert same_cfg is cfg and kwargs == {"optimizer": "muon"}
    assert cfg.sae.architecture() == "bilinear" and (cfg.sae.d_in, cfg.sae.d_sae) == (1024, 16384)
    assert cfg.hook_name == "blocks.18.hook_resid_pre" and cfg.prepend_bos is False


def test_every_generated_block_of_the_results_doc_equals_what_its_source_renders():
    doc = (ROOT / "docs" / "results.md").read_text()
    present = tables.readme_blocks(doc)
    for name, make in tables.doc_renderers().items():
        assert name in present, f"docs/results.md lacks the block {name}"
        assert present[name] == tables.block_text(name, make()), (
            f"docs/results.md block {name} is stale: run python scripts/readme_tables.py"
        )


def test_the_reproducing_summary_quotes_the_results_files():
    """The README's short list of results quotes numbers that the committed results files hold."""
    section = README.split("### Reproducing the paper")[1].split("### Long runs")[0]
    load = lambda *parts: json.loads(ROOT.joinpath(*parts).read_text())  # noqa: E731
    long_run = load("experiments", "results", "long_run", "results.json")
    main = next(
        r for r in long_run["rows"] if r["stage"] == "curves" and r["run"].startswith("vanilla unlifted α=0.1 ")
    )
    widest = max((r for r in long_run["rows"] if r["stage"] == "width"), key=lambda r: int(r["run"].split(" ")[3][1:]))
    stability = load("experiments", "results", "stability", "results.json")["seed_pairs"][0]
    circles = {
        r["name"]: r for r in load("experiments", "results", "real_manifolds", "share30", "results.json")["table"]
    }
    lift = load("experiments", "results", "lift_scale", "results.json")["rows"]
    decoder = [
        r["ce_loss_recovered"] for r in lift if r["readout"] == "decoder" and r["c"] is not None and r["meets_goal"]
    ]
    topk = next(r for r in lift if r["c"] is None)
    full = long_run["extrapolation"]["full_run"]
    quoted = {
        "2 M error": f"{main['xx_block_error']:.3f}",
        "8.4 M error": f"still {full['reconstruction_error']:.3f} after the paper's 8.4 M",
        "2 M density": f"density {main['hoyer_density']:.2f}",
        "the widest run": f"{widest['xx_block_error']:.3f} at density {widest['hoyer_density']:.2f}",
        "seeds at 2 M": f"{long_run['seeds']['paper_formula']:.3f}",
        "seeds at 8.4 M": f"and {long_run['seeds_full']['paper_formula']:.3f}",
        "seeds at 51 k": f"{stability['operator_similarity_unsymmetrised']:.3f}",
        "week, bilinear": f"{max(r['week_pair_angle_r2'] for n, r in circles.items() if 'TopK' not in n):.2f} / "
        f"{max(r['year_pair_angle_r2'] for n, r in circles.items() if 'TopK' not in n):.2f}",
        "TopK circles": f"{circles['SAELens TopK k=32']['week_pair_angle_r2']:.2f} / "
        f"{circles['SAELens TopK k=32']['year_pair_angle_r2']:.2f}",
        "lift CE": f"{min(decoder):.2f}–{max(decoder):.3f} against {topk['ce_loss_recovered']:.3f}",
    }
    for what, text in quoted.items():
        assert text in section, f"README 'Reproducing the paper' should quote {what} as {text!r}"


def test_an_unmeasured_equal_wall_clock_error_is_explained_not_hidden():
    assert tables.unmeasured({"adam": 0.2, "muon": 0.1}) == ""
    note = tables.unmeasured({"adam": 0.2, "muon": None})
    assert "Muon" in note and "Adam" not in note and "first curve point" in note


def test_the_results_summary_quotes_the_long_run():
    """docs/results.md's summary table quotes the long run's numbers as its results file holds them."""
    doc = (ROOT / "docs" / "results.md").read_text()
    summary = doc.split("## Summary")[1].split("## 1.")[0]
    results = json.loads((ROOT / "experiments" / "results" / "long_run" / "results.json").read_text())
    rows = {(r["stage"], r["run"]): r for r in results["rows"]}
    main = rows[("curves", "vanilla unlifted α=0.1 ×2 adam seed 0")]
    wide = {
        r["run"].split(" ")[2]: r for r in results["rows"] if r["stage"] in ("width", "wide") and " ×8 " in r["run"]
    }
    quoted = {
        "2 M": f"**{main['xx_block_error']:.3f} at density {main['hoyer_density']:.3f} after 2 M tokens**",
        "8.4 M": f"**{results['extrapolation']['full_run']['reconstruction_error']:.3f} after the paper's 8.4 M**",
        "forecast": f"forecast {results['extrapolation']['constant_lr_fit']['at_paper_tokens']:.3f}",
        "×8 α 0.1": f"**{wide['α=0.1']['xx_block_error']:.3f} at density {wide['α=0.1']['hoyer_density']:.3f}**",
        "×8 α 0.03": f"{wide['α=0.03']['xx_block_error']:.3f} at {wide['α=0.03']['hoyer_density']:.3f} (α 0.03)",
        "×8 α 0.3": f"{wide['α=0.3']['xx_block_error']:.3f} at {wide['α=0.3']['hoyer_density']:.3f} (α 0.3)",
        "seeds 2 M": f"**{results['seeds']['paper_formula']:.3f} by the paper's formula",
        "seeds 8.4 M": f"{results['seeds_full']['paper_formula']:.3f} after 8.4 M",
    }
    for what, text in quoted.items():
        assert text in summary, f"docs/results.md's summary should quote {what} as {text!r}"

