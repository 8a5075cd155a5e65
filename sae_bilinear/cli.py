"""``sae-bilinear``: train, evaluate, analyse and share bilinear SAEs. Thin: parses, then calls.

Run ``sae-bilinear COMMAND --help`` for each command.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, Sequence

EPILOG = """examples:
  sae-bilinear run                                  # the main job on the embedded SmolLM2-135M
  sae-bilinear train --config hub_configs/train/qwen3-0.6b-base-l18.yaml
  sae-bilinear evaluate runs/<time>/sae
  sae-bilinear analyze runs/<time>/sae --latent top
  sae-bilinear compare runs/a/sae runs/b/sae
  sae-bilinear convert-bae SRC DST
"""


def _threads(value: int | None) -> None:
    if value:
        import torch

        torch.set_num_threads(value)


def cmd_run(args: argparse.Namespace) -> int:
    from sae_bilinear.main_job import MainJobConfig, run_main_job

    fields = {
        name: getattr(args, name)
        for name in MainJobConfig.__dataclass_fields__
        if getattr(args, name, None) is not None
    }
    out = args.out or Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    metrics = run_main_job(MainJobConfig(**fields), out)
    keys = ("ce_clean", "ce_spliced", "ce_zero_ablated", "ce_loss_recovered", "kl", "explained_variance",
            "reconstruction_error", "hoyer_density")
    print(json.dumps({key: metrics[key] for key in keys}, indent=2))
    print(f"report: {Path(out) / 'report.html'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from sae_bilinear.train import expand_config, set_dotted, train_from_config

    runs = expand_config(args.config)
    for name, raw in runs:
        for assignment in args.set or []:
            key, _, value = assignment.partition("=")
            set_dotted(raw, key, _parse_value(value))
        if args.dry_run:
            print(f"{name}: {json.dumps(raw, default=str)}")
            continue
        print(f"[sae-bilinear] training {name} -> {raw.get('output_path')}", flush=True)
        train_from_config(raw)
    return 0


def _parse_value(text: str) -> Any:
    """A ``--set`` value: JSON where it parses (numbers, true/false/null, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _load_sae(path: str) -> Any:
    import sae_bilinear  # noqa: F401  (registers the architecture)
    from sae_lens import SAE

    return SAE.load_from_disk(path)


def _model_and_heldout_tokens(args: argparse.Namespace, sae: Any, context_size: int) -> tuple[Any, str, Any, bool]:
    """``(model, hook, held-out token contexts, prepend_bos)`` for an SAE: the model and hook
    from the options or the SAE's metadata, the contexts from the local corpus's held-out split."""
    from sae_bilinear import data, models

    meta = sae.cfg.metadata
    model = models.load_model(args.model or meta.model_name or models.EMBEDDED_MODEL_NAME, device=args.device)
    corpus = data.load_corpus(args.corpus)
    if not isinstance(corpus, data.TextCorpus):
        raise ValueError(f"{args.command} reads local text; {args.corpus!r} is not a local corpus")
    prepend_bos = models.default_prepend_bos(model)
    tokens = data.tokenize_contexts(
        corpus.heldout, model.tokenizer, context_size, prepend_bos=prepend_bos, max_contexts=args.contexts
    )
    return model, args.hook or meta.hook_name, tokens, prepend_bos


def cmd_evaluate(args: argparse.Namespace) -> int:
    from sae_bilinear import evaluate

    sae = _load_sae(args.sae_dir)
    model, hook, tokens, prepend_bos = _model_and_heldout_tokens(
        args, sae, args.context_size or sae.cfg.metadata.context_size or 128
    )
    bos = model.tokenizer.bos_token_id if prepend_bos else None
    metrics = evaluate.evaluate_splice(
        model, sae, tokens, hook_name=hook, ignore_tokens=None if bos is None else [bos]
    ).to_dict()
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from sae_bilinear import analysis, latent_pages
    from sae_bilinear.main_job import token_activations

    sae = _load_sae(args.sae_dir)
    model, hook, tokens, prepend_bos = _model_and_heldout_tokens(args, sae, args.context_size)
    acts, contexts, token_strs = token_activations(model, tokens, hook, 1 if prepend_bos else 0)
    if args.latent == "top":
        latents = analysis.choose_top_latents(sae, acts, n=args.n)
    else:
        latent = int(args.latent)
        if not 0 <= latent < sae.cfg.d_sae:
            raise ValueError(f"--latent {latent} is out of range: this SAE has latents 0..{sae.cfg.d_sae - 1}")
        latents = [latent]
    out = Path(args.out or Path(args.sae_dir) / "analysis")
    for latent in latents:
        summary = latent_pages.analyze_latent(sae, latent, acts, contexts, out, tokens=token_strs)
        print(f"latent {latent}: {summary.get('html')}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from sae_bilinear import similarity

    result = similarity.compare(_load_sae(args.a), _load_sae(args.b), matched=not args.no_matched)
    printable = {k: v for k, v in result.items() if not hasattr(v, "shape")}
    print(json.dumps(printable, indent=2, default=str))
    return 0


def cmd_convert_bae(args: argparse.Namespace) -> int:
    from sae_bilinear import hub

    hub.convert_bae(args.src, args.dst, model_name=args.model_name, overwrite=args.overwrite)
    print(f"wrote {args.dst} (load with SAE.load_from_disk after `import sae_bilinear`)")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from sae_bilinear import hub

    url = hub.push(args.sae_dir, args.repo_id, path_in_repo=args.path_in_repo, private=args.private)
    print(url)
    return 0


def cmd_releases(args: argparse.Namespace) -> int:
    from sae_bilinear import hub

    for row in hub.list_releases():
        print("\t".join(str(value) for value in (row.values() if isinstance(row, dict) else row)))
    return 0


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (our configs document every field so)."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, following in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(following, ast.Expr) and isinstance(getattr(following, "value", None), ast.Constant):
                docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sae-bilinear",
        description="Bilinear sparse autoencoders for SAELens + TransformerLens: latents are quadratic forms "
        "(l·x)(r·x) whose manifolds you read off the weights.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="the main job: train, splice-evaluate, analyse, report",
                         description="Collect activations once, train a bilinear SAE (and a SAELens baseline) with "
                         "SAELens's trainer, splice it into the model on held-out text, analyse the most active "
                         "latents and write report.html. Defaults run in minutes on 2 CPU cores.")
    from sae_bilinear.main_job import MainJobConfig

    docs = field_docs(MainJobConfig)
    for name, field in MainJobConfig.__dataclass_fields__.items():
        option = "--" + name.replace("_", "-")
        kind = type(field.default)
        help_text = docs.get(name, "") + f" (default: {field.default})"
        run.add_argument(option, dest=name, type=kind, default=None, help=help_text)
    run.add_argument("--out", type=Path, default=None, help="output folder (default: runs/<timestamp>)")
    run.set_defaults(func=cmd_run)

    train = sub.add_parser("train", help="train from a SAELens runner config (YAML/JSON), sweeps included",
                           description="Train with SAELens's LanguageModelSAETrainingRunner from a config in "
                           "LanguageModelSAERunnerConfig.to_dict() form (see hub_configs/train/).")
    train.add_argument("--config", required=True, help="YAML or JSON config (or a sweep file with base/sweep)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key, e.g. sae.alpha=0.2")
    train.add_argument("--dry-run", action="store_true", help="print the runs without training")
    train.set_defaults(func=cmd_train)

    def model_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default=None, help="model (default: the one in the SAE's metadata)")
        p.add_argument("--hook", default=None, help="hook name (default: the SAE's)")
        p.add_argument("--corpus", default="kjv", help="kjv or a local .txt/.jsonl (held-out split is used)")
        p.add_argument("--contexts", type=int, default=24, help="held-out contexts")
        p.add_argument("--device", default="cpu")

    evaluate = sub.add_parser("evaluate", help="splice a SAE into its model: CE clean/spliced/ablated, KL, ...")
    evaluate.add_argument("sae_dir")
    model_options(evaluate)
    evaluate.add_argument("--context-size", type=int, default=None)
    evaluate.add_argument("--out", default=None, help="write the metrics JSON here")
    evaluate.set_defaults(func=cmd_evaluate)

    analyze = sub.add_parser("analyze", help="eigendecomposition and manifold view of latents",
                             description="Writes latent_J.html (3D manifold), latent_J.png and latent_J.json.")
    analyze.add_argument("sae_dir")
    analyze.add_argument("--latent", default="top", help="latent index, or 'top' for the most active")
    analyze.add_argument("--n", type=int, default=3, help="how many latents with --latent top")
    analyze.add_argument("--out", default=None, help="output folder (default: SAE_DIR/analysis)")
    analyze.add_argument("--context-size", type=int, default=128)
    model_options(analyze)
    analyze.set_defaults(func=cmd_analyze)

    compare = sub.add_parser("compare", help="weight-based similarity of two SAEs (exact, data-free)")
    compare.add_argument("a")
    compare.add_argument("b")
    compare.add_argument("--no-matched", action="store_true", help="skip the per-latent optimal assignment")
    compare.set_defaults(func=cmd_compare)

    convert = sub.add_parser("convert-bae", help="convert an authors' (tdooms/bae) folder to SAELens layout")
    convert.add_argument("src")
    convert.add_argument("dst")
    convert.add_argument("--model-name", default=None, help="model name for the metadata (default: from the folder)")
    convert.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    convert.set_defaults(func=cmd_convert_bae)

    push = sub.add_parser("push", help="upload a SAE folder to the Hugging Face Hub with a model card")
    push.add_argument("sae_dir")
    push.add_argument("repo_id")
    push.add_argument("--path-in-repo", default=None)
    push.add_argument("--private", action="store_true")
    push.set_defaults(func=cmd_push)

    releases = sub.add_parser("releases", help="list the releases in hub_configs/")
    releases.set_defaults(func=cmd_releases)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _threads(args.threads)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ImportError, NotImplementedError) as error:
        print(f"sae-bilinear {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
