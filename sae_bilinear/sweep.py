"""``sae-bilinear sweep CONFIG``: a grid of SAEs, one model pass per group, spread by Ray.

The paper's experiments are grids (4 variants × 11 α per layer, 28 layers). A sweep file
(:mod:`sae_bilinear.sweep_plan`) expands into members; members that read the same
activations form a group. For each group with unfinished members the driver

1. runs the language model **once** over the group's tokens and stores the activations
   (:mod:`sae_bilinear.activation_store`: safetensors shards, memory-mapped, named by a hash
   of their settings, so a rerun or another sweep reuses them), training and held-out text
   apart;
2. submits every unfinished member as a Ray task asking for its resources (``num_cpus``,
   ``num_gpus``, ``memory``), so a cluster places them; each member trains from the shards
   (:mod:`sae_bilinear.sweep_member`), in its own folder, checkpointing as it goes;
3. prints a progress line per member and overall while they run (and appends it to
   ``sweep.log``);
4. splices every finished member that decodes (lifted bilinear, or linear) into the language
   model on ``eval_contexts`` held-out contexts — the model loaded once for the activation pass
   and all the splices (:mod:`sae_bilinear.sweep_splice`) — and writes ``sweep.json`` /
   ``sweep.md`` (with ``ce_spliced``, CE recovered and KL) and the Pareto plot of density
   against error (:mod:`sae_bilinear.sweep_report`).

Ray is optional (``pip install "sae-bilinear[sweep]"``). By default a local Ray is started
in-process with ``workers`` CPUs; ``address`` joins an existing cluster (``ray start`` on a
head node, or Ray on SLURM as Ray documents it). ``local=True`` runs members one after
another in this process, without Ray. A rerun skips finished members and resumes unfinished
ones from their newest checkpoint; a member that fails is reported and the rest go on.

Why not SAELens's ``MultiSAETrainingRunner``? It trains several SAEs on one device from one
activation stream, in lock-step; a sweep member here can go to any worker or GPU of a
cluster, resume alone and fail alone. ``docs/scaling.md`` gives the measurements.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from sae_bilinear import activation_store, data, errors, models, sweep_member, sweep_report, sweep_splice
from sae_bilinear.sweep_plan import Group, Member, Resources, SweepPlan, plan_sweep
from sae_bilinear.values import check_finite_float, check_int

STORE_DIR = "activations"
"""Under the sweep's output folder: the groups' activation stores (reused across reruns)."""
LOG_FILE = "sweep.log"
HELDOUT_CONTEXTS = 16
"""Held-out contexts per group (scored by every member of the group)."""
RAY_PIP = 'pip install "sae-bilinear[sweep]"  (or: pip install "ray>=2.9")'


@dataclass
class SweepOptions:
    """How a sweep runs (the CLI's flags)."""

    out: Path
    """Output folder: one folder per member, ``activations/``, ``sweep.json``, ``sweep.md``, plots."""
    workers: int = 2
    """CPUs of the in-process local Ray (ignored with ``address``)."""
    address: str | None = None
    """Join this Ray cluster (e.g. ``auto`` or ``ray://head:10001``) instead of starting one."""
    local: bool = False
    """Run members one after another in this process, without Ray."""
    resources: Resources = field(default_factory=Resources)
    """What each member asks for."""
    device: str = "cpu"
    """Device of the language model for the activation pass."""
    threads: int | None = 1
    """torch threads per member (1 keeps members on a shared machine from fighting)."""
    n_checkpoints: int = sweep_member.DEFAULT_CHECKPOINTS
    """Checkpoints per member (what a kill can lose)."""
    only: tuple[str, ...] = ()
    """Run only these members (names); empty runs all."""
    poll_seconds: float = 2.0
    """How often progress is printed while members run."""
    eval_contexts: int = sweep_splice.DEFAULT_EVAL_CONTEXTS
    """Held-out contexts on which each finished lifted member is spliced into the model (after the
    members, one model load for all of them); 0 skips the splice evaluation."""


class SweepResult(dict[str, Any]):
    """The sweep's table (``sweep.json``): ``members`` rows, ``model_passes``, ``seconds`` …"""


def _require_ray() -> Any:
    try:
        # Optional (the 'sweep' extra): type-checked where it is installed, absent elsewhere.
        import ray  # pyright: ignore[reportMissingImports]
    except ImportError as error:
        raise errors.MissingDependencyError(
            f"sweeps on Ray need the 'sweep' extra: {RAY_PIP}; or pass --local to run the members one after another"
        ) from error
    return ray


# --------------------------------------------------------------------------------------------
# activations: one model pass per group
# --------------------------------------------------------------------------------------------


def _group_tokens(settings: dict[str, Any], model: Any, n_contexts: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Training and held-out contexts of a group, packed as SAELens's runner packs them."""
    corpus = sweep_splice.local_corpus(settings)
    heldout = sweep_splice.heldout_contexts(settings, model, HELDOUT_CONTEXTS, corpus)
    train = data.tokenize_contexts(
        corpus.train,
        model.tokenizer,
        settings["context_size"],
        prepend_bos=bool(settings["prepend_bos"]),
        max_contexts=n_contexts,
    )
    if train.shape[0] < n_contexts:
        raise errors.ConfigError(
            f"{corpus.name} packs into {train.shape[0]} training contexts of {settings['context_size']}, "
            f"but training_tokens={settings['training_tokens']} needs {n_contexts}; lower training_tokens"
        )
    return train, heldout, corpus.name


def _group_stores(
    group: Group, root: Path, model: Any
) -> list[tuple[str, torch.Tensor, activation_store.StoreSettings, Path]]:
    """The group's training and held-out parts: ``(part, tokens, store settings, store folder)``."""
    settings = group.settings
    models.check_hook(model, settings["hook_name"])
    models.check_context_size(model, settings["context_size"])
    skip = 1 if settings["prepend_bos"] else 0  # BOS activations are norm outliers, not text
    per_context = settings["context_size"] - skip
    n_contexts = math.ceil(settings["training_tokens"] / per_context)
    train_tokens, heldout_tokens, dataset = _group_tokens(settings, model, n_contexts)
    parts = []
    for part, tokens in (("train", train_tokens), ("heldout", heldout_tokens)):
        store_settings = activation_store.settings_for(
            model,
            tokens,
            settings["hook_name"],
            model_name=settings["model_name"],
            dataset=f"{dataset} {part}",
            prepend_bos=bool(settings["prepend_bos"]),
            skip_first=skip,
        )
        parts.append((part, tokens, store_settings, activation_store.store_folder(root, store_settings)))
    return parts


def collect_group(
    group: Group, root: Path, cache: sweep_splice.ModelCache, log: Callable[[str], None]
) -> tuple[Path, Path, bool]:
    """The group's training and held-out stores under ``root``; runs the model only if absent.

    The model comes from ``cache`` (loaded once per sweep run). Returns
    ``(train_folder, heldout_folder, ran_model)``.
    """
    settings = group.settings
    model = cache.get(settings["model_name"], settings["dtype"])
    folders, ran = [], False
    for part, tokens, store_settings, folder in _group_stores(group, root, model):
        if not folder.is_dir():
            log(
                f"group {group.key}: collecting {part} activations of {settings['hook_name']} "
                f"({tokens.shape[0]} contexts)"
            )
            activation_store.collect(root, model, tokens, store_settings)
            ran = True
        folders.append(folder)
    return folders[0], folders[1], ran


# --------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------


class Progress:
    """Progress lines per member and overall, to the terminal and to ``sweep.log``."""

    def __init__(self, out: Path, names: list[str], stream: TextIO | None = None):
        self.out = out
        self.names = names
        self.stream = stream or sys.stderr
        self.log_path = out / LOG_FILE
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.started = time.time()

    def line(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        message = f"[sweep {stamp}] {text}"
        print(message, file=self.stream, flush=True)
        with self.log_path.open("a") as handle:
            handle.write(message + "\n")

    def member_state(self, name: str) -> str:
        if name in self.done:
            return "done"
        if name in self.failed:
            return "failed"
        progress = sweep_member.partial_folder(self.out, name) / sweep_member.PROGRESS_FILE
        try:
            state = json.loads(progress.read_text())
        except (OSError, ValueError):
            return "waiting"
        share = state["samples"] / max(state["total_samples"], 1)
        return f"running {share:4.0%} {state['tokens_per_second']:,.0f} tok/s"

    def report(self) -> None:
        running = [n for n in self.names if self.member_state(n).startswith("running")]
        for name in running:
            self.line(f"  {name}: {self.member_state(name)}")
        waiting = len(self.names) - len(self.done) - len(self.failed) - len(running)
        self.line(
            f"overall: {len(self.done)} done, {len(running)} running, {waiting} waiting, {len(self.failed)} failed "
            f"of {len(self.names)} ({time.time() - self.started:.0f} s)"
        )

    def finished(self, row: dict[str, Any]) -> None:
        name = row["name"]
        if row["status"] == "done":
            self.done.add(name)
            what = "skipped (already finished)" if row.get("skipped") else f"done in {row.get('seconds', 0):.0f} s"
            numbers = ", ".join(
                f"{k} {row[k]:.3g}" for k in ("error", "hoyer_density", "l0") if isinstance(row.get(k), float)
            )
            self.line(f"{name}: {what}" + (f" — {numbers}" if numbers else ""))
        else:
            self.failed.add(name)
            self.line(f"{name}: FAILED — {row['error']}")


# --------------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------------


def _member_args(
    member: Member, plan_out: Path, stores: dict[str, tuple[Path, Path]], options: SweepOptions
) -> tuple[Any, ...]:
    train, heldout = stores[member.group]
    return (member.name, member.config, str(plan_out), str(train), str(heldout), options.n_checkpoints, options.threads)


def _run_local(
    members: list[Member], stores: dict[str, tuple[Path, Path]], options: SweepOptions, progress: Progress
) -> list[dict[str, Any]]:
    rows = []
    for member in members:
        progress.line(f"{member.name}: training (local)")
        row = sweep_member.train_member(*_member_args(member, options.out, stores, options))
        progress.finished(row)
        rows.append(row)
    return rows


def _run_ray(
    members: list[Member], stores: dict[str, tuple[Path, Path]], options: SweepOptions, progress: Progress
) -> list[dict[str, Any]]:
    ray = _require_ray()
    started_here = not ray.is_initialized()
    if started_here:
        if options.address:
            ray.init(address=options.address, log_to_driver=False)
        else:
            ray.init(num_cpus=options.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    res = options.resources
    remote = ray.remote(sweep_member.train_member).options(
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus,
        memory=None if res.memory_gb is None else int(res.memory_gb * 2**30),
        max_retries=0,  # a member's own failure is a row; a lost worker is resumed by a rerun
    )
    try:
        pending = {remote.remote(*_member_args(m, options.out, stores, options)): m.name for m in members}
        rows = []
        last = 0.0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=options.poll_seconds)
            for ref in ready:
                name = pending.pop(ref)
                try:
                    row = ray.get(ref)
                except Exception as error:  # noqa: BLE001 — a worker that died is that member's failure
                    row = {"name": name, "status": "failed", "error": f"worker lost: {type(error).__name__}: {error}"}
                progress.finished(row)
                rows.append(row)
            if time.time() - last >= options.poll_seconds * 5 and pending:
                progress.report()
                last = time.time()
        return rows
    finally:
        if started_here:
            ray.shutdown()


def run_sweep(config: str | Path, options: SweepOptions, stream: TextIO | None = None) -> SweepResult:
    """Run (or finish) the sweep of ``config`` into ``options.out``; returns the table."""
    plan = plan_sweep(config)
    _check_options(options)
    members = [m for m in plan.members if not options.only or m.name in options.only]
    if options.only and len(members) != len(set(options.only)):
        unknown = sorted(set(options.only) - {m.name for m in plan.members})
        raise errors.ConfigError(f"--only names unknown members {unknown}; members: {[m.name for m in plan.members]}")
    options.out.mkdir(parents=True, exist_ok=True)
    _write_plan(plan, options.out)
    progress = Progress(options.out, [m.name for m in members], stream)
    started = time.time()
    todo = [m for m in members if not sweep_member.is_finished(options.out, m.name)]
    progress.line(
        f"{len(members)} members in {len({m.group for m in members})} activation group(s); "
        f"{len(members) - len(todo)} already finished; {'local' if options.local else 'ray'}"
    )
    stores: dict[str, tuple[Path, Path]] = {}
    model_passes = 0
    cache = sweep_splice.ModelCache(options.device)
    for key in dict.fromkeys(m.group for m in todo):
        train, heldout, ran = collect_group(plan.groups[key], options.out / STORE_DIR, cache, progress.line)
        stores[key] = (train, heldout)
        model_passes += int(ran)
    cache.park()  # the members may need the GPU; the models come back for the splice
    run = _run_local if options.local else _run_ray
    rows = run(todo, stores, options, progress) if todo else []
    by_name = {row["name"]: row for row in rows}
    table = []
    for member in members:
        row = by_name.get(member.name)
        if row is None:  # finished before this run
            row = {
                "name": member.name,
                "status": "done",
                "skipped": True,
                **json.loads(
                    (sweep_member.final_folder(options.out, member.name) / sweep_member.METRICS_FILE).read_text()
                ),
            }
        table.append({k: v for k, v in row.items() if k != "traceback"})
    spliced = _splice(table, plan, members, stores, cache, options, progress)
    result = SweepResult(
        config=str(plan.source),
        members=table,
        model_passes=model_passes,
        groups=len({m.group for m in members}),
        seconds=time.time() - started,
        runner="local" if options.local else "ray",
        workers=None if options.local else options.workers,
        eval_contexts=options.eval_contexts,
        spliced=spliced,
        models_loaded=len(cache),
    )
    sweep_report.write_results(options.out, result)
    failed = [row["name"] for row in table if row["status"] != "done"]
    progress.line(
        f"finished: {len(table) - len(failed)} done, {len(failed)} failed, {model_passes} model pass(es), "
        f"{result['seconds']:.0f} s; table {options.out / sweep_report.TABLE_MD}"
    )
    return result


def _splice(
    table: list[dict[str, Any]],
    plan: SweepPlan,
    members: list[Member],
    stores: dict[str, tuple[Path, Path]],
    cache: sweep_splice.ModelCache,
    options: SweepOptions,
    progress: Progress,
) -> int:
    """Spliced CE of every finished member that decodes, in this process, after the members
    (:mod:`sae_bilinear.sweep_splice`); returns how many were measured in this run."""
    if options.eval_contexts == 0:
        sweep_splice.skip_all(table, "eval_contexts=0: the splice evaluation was turned off")
        return 0
    root = options.out / STORE_DIR

    def inputs(key: str) -> sweep_splice.GroupInputs:
        group = plan.groups[key]

        def train_store(model: Any) -> Path:
            return stores[key][0] if key in stores else _group_stores(group, root, model)[0][3]

        return sweep_splice.GroupInputs(group.settings, train_store, cache, options.eval_contexts)

    inputs_of = {key: inputs(key) for key in dict.fromkeys(m.group for m in members)}
    group_of = {m.name: m.group for m in members}
    return sweep_splice.splice_members(table, options.out, inputs_of, group_of, progress.line)


def _check_options(options: SweepOptions) -> None:
    check_int("workers", options.workers, 1)
    check_int("eval_contexts", options.eval_contexts, 0)
    if options.out.exists() and not options.out.is_dir():
        raise errors.ConfigError(f"--out {options.out} is a file; give a folder")
    res = options.resources
    for name in ("num_cpus", "num_gpus"):
        check_finite_float(name, getattr(res, name), 0.0)
    if res.memory_gb is not None:
        check_finite_float("memory_gb", res.memory_gb, 0.0, lo_open=True)
    check_int("n_checkpoints", options.n_checkpoints, 0)


def _write_plan(plan: SweepPlan, out: Path) -> None:
    """``plan.json``: the members and groups, so a reader knows what the folder will hold."""
    plan_path = out / "plan.json"
    value = {
        "config": str(plan.source),
        "members": [{"name": m.name, "group": m.group} for m in plan.members],
        "groups": {key: group.settings for key, group in plan.groups.items()},
    }
    if plan_path.is_file():
        previous = json.loads(plan_path.read_text())
        if previous.get("groups") != json.loads(json.dumps(value["groups"], default=str)):
            raise errors.OutputExistsError(
                f"{out} holds a sweep with other activation settings ({plan_path}); use another --out"
            )
    temporary = plan_path.with_name("plan.json.tmp")
    temporary.write_text(json.dumps(value, indent=1, default=str) + "\n")
    os.replace(temporary, plan_path)
