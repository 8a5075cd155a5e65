"""Shared plumbing of the ``hooks/`` scripts: arguments, loading, tokens, JSON and plots.

Also a *toy* setting for tests, the tutorial and quick demos (a few seconds on one CPU thread):
a 2-layer transformer trained on a bigram language over 64 token ids, and a small lifted
bilinear SAE trained on its residual stream. Pass ``--model toy`` to any script (and omit
``--sae`` to train the toy SAE on the spot), or save them with :func:`save_toy_model` and the
SAE's ``save_model`` and pass the folders.

Heavy imports (torch, SAELens) happen inside functions, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "smollm2-135m"
TOY_MODEL = "toy"
TOY_MODEL_NAME = "toy-bigram"
TOY_HOOK = "blocks.1.hook_resid_pre"
TOY_CONFIG: dict[str, Any] = dict(
    n_layers=2,
    d_model=32,
    n_heads=4,
    d_head=8,
    d_mlp=64,
    d_vocab=64,
    n_ctx=32,
    act_fn="gelu",
    normalization_type="LN",
)
_TOY_FILES = ("toy_model.json", "toy_model.safetensors")

DEFAULT_TEXT = (
    "The river ran fast after the spring rains, and the old mill by the bridge turned day and night. "
    "In the village, children counted the boats that passed: one in the morning, two at noon, three "
    "before dark. Their teacher wrote the numbers on the board and asked what would come next. "
    "A merchant from the coast arrived on Tuesday with salt, cloth and news of the king. He said the "
    "roads to the north were closed by snow, so the harvest would be sold in the south this year. "
    "The farmers met in the hall to decide what to do. Some wanted to wait for summer; others wanted "
    "to leave at once. In the end they voted, and the vote was close: twelve to ten. On Monday the "
    "carts left at dawn, loaded with grain, apples and wool, and the village was quiet for a month."
)


# ----------------------------------------------------------------------------------------------
# arguments
# ----------------------------------------------------------------------------------------------


def base_parser(description: str, script: str) -> argparse.ArgumentParser:
    """Arguments every hooks/ script takes (model, SAE, hook, text, output, device)."""
    parser = argparse.ArgumentParser(
        prog=f"python hooks/{script}.py",
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--sae",
        type=Path,
        default=None,
        help="folder of a SAELens-format SAE (cfg.json + sae_weights.safetensors), bilinear or linear; "
        "required unless --model toy (which then trains a toy SAE)",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="model for sae_bilinear.models.load_model (the embedded smollm2-135m, a local HF folder, "
        "a TransformerLens name), 'toy' for the toy bigram transformer, or a folder from save_toy_model",
    )
    parser.add_argument("--hook", default=None, help="hook point (default: the one the SAE was trained on)")
    parser.add_argument("--out", type=Path, default=Path("runs") / "hooks" / script, help="output folder")
    parser.add_argument("--text", type=Path, default=None, help="text file to evaluate on (default: a built-in paragraph)")
    parser.add_argument("--device", default="cpu", help="torch device")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def parse_int_list(text: str) -> list[int]:
    """``"1,2, 5"`` → ``[1, 2, 5]``."""
    return [int(part) for part in text.split(",") if part.strip()]


def parse_float_list(text: str) -> list[float]:
    """``"0,0.5,-1"`` → ``[0.0, 0.5, -1.0]``."""
    return [float(part) for part in text.split(",") if part.strip()]


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------


def setup(args: argparse.Namespace) -> None:
    """Seed and thread settings."""
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)


def load_model(spec: str, device: str = "cpu") -> Any:
    """``"toy"``, a folder written by :func:`save_toy_model`, or anything ``load_model`` takes."""
    if spec == TOY_MODEL or (Path(spec).expanduser() / _TOY_FILES[0]).exists():
        model = toy_model() if spec == TOY_MODEL else load_toy_model(Path(spec).expanduser())
        return model if device == "cpu" else model.to(device)
    from sae_bilinear.models import load_model as load_named

    return load_named(spec, device=device)


def load_sae(path: Path, device: str = "cpu") -> Any:
    """A SAELens SAE from a folder (bilinear ones need ``import sae_bilinear``, done here)."""
    import sae_bilinear  # noqa: F401  (registers the architecture)
    from sae_lens import SAE

    if not (Path(path) / "cfg.json").exists():
        raise FileNotFoundError(f"{path} is not an SAE folder: it has no cfg.json")
    return SAE.load_from_disk(str(path), device=device)


def load_model_and_sae(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """The model, the SAE and the hook point named by the arguments, checked against each other
    (the hook exists, the SAE was trained on it, the sizes match) before any work."""
    import torch

    from sae_bilinear.evaluate import check_model_hook, check_sae_fits
    from sae_bilinear.interventions import check_sae_hook

    if args.sae is None and args.model != TOY_MODEL:
        raise SystemExit("--sae SAE_DIR is required (only --model toy trains its own toy SAE)")
    sae = None if args.sae is None else load_sae(args.sae, args.device)
    hook = None if sae is None else check_sae_hook(sae, args.hook)
    model = load_model(args.model, args.device)
    if sae is None:
        sae = toy_sae(model, hook=args.hook or TOY_HOOK, seed=args.seed)
        sae = sae if args.device == "cpu" else sae.to(args.device)
        hook = check_sae_hook(sae, args.hook)
    check_model_hook(model, hook)
    check_sae_fits(model, sae, hook, torch.zeros(1, 1, dtype=torch.long, device=model.cfg.device))
    return model, sae, hook


def is_toy(model: Any) -> bool:
    return getattr(model.cfg, "model_name", None) == TOY_MODEL_NAME


# ----------------------------------------------------------------------------------------------
# tokens
# ----------------------------------------------------------------------------------------------


def eval_tokens(model: Any, args: argparse.Namespace, n_seqs: int, context: int) -> Any:
    """``[n_seqs, context]`` held-out tokens: toy-language samples for the toy model, else the
    text of ``--text`` (or :data:`DEFAULT_TEXT`) in consecutive contexts, each starting with BOS
    when the model expects it. Fewer sequences are returned when the text is short."""
    import torch

    context = min(context, model.cfg.n_ctx)
    if is_toy(model):
        return ToyLanguage(model.cfg.d_vocab, seed=model.cfg.seed or 0).sample(n_seqs, context, seed=10_000 + args.seed)
    if args.text:
        with open(args.text, encoding="utf-8") as handle:
            text = handle.read(n_seqs * context * 16)  # enough characters for the tokens needed
    else:
        text = DEFAULT_TEXT
    ids = torch.tensor(model.tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    bos = bool(model.cfg.default_prepend_bos) and model.tokenizer is not None and model.tokenizer.bos_token_id is not None
    body = context - 1 if bos else context
    n = min(n_seqs, len(ids) // body)
    if n == 0:
        raise SystemExit(f"the text has {len(ids)} tokens, fewer than one context of {body}")
    rows = ids[: n * body].reshape(n, body)
    if bos:
        rows = torch.cat([torch.full((n, 1), model.tokenizer.bos_token_id, dtype=rows.dtype), rows], dim=1)
    return rows


def prompt_tokens(model: Any, prompt: str) -> Any:
    """One prompt as ``[1, seq]`` token ids (the toy model: a sample of its language)."""
    if is_toy(model):
        return ToyLanguage(model.cfg.d_vocab, seed=model.cfg.seed or 0).sample(1, min(12, model.cfg.n_ctx), seed=len(prompt))
    return model.to_tokens(prompt)


def token_str(model: Any, token: int) -> str:
    if getattr(model, "tokenizer", None) is None:
        return f"<{token}>"
    return model.to_single_str_token(int(token))


def tokens_str(model: Any, tokens: Any) -> str:
    if getattr(model, "tokenizer", None) is None:
        return " ".join(f"<{int(t)}>" for t in tokens)
    return model.tokenizer.decode([int(t) for t in tokens])


def most_active_latent(model: Any, sae: Any, tokens: Any, hook: str, position: int | None = None) -> int:
    """The latent with the largest ``|f_j| · ||x||`` (linear SAEs: ``|f_j|``) at ``position`` of
    ``tokens [1, seq]``, or averaged over all positions but the first when ``position`` is None."""
    import torch

    from sae_bilinear.evaluate import is_bilinear

    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook)
        x = cache[hook][0].to(sae.device)
        if position is not None:
            x = x[position].unsqueeze(0)
        elif x.shape[0] > 1:
            x = x[1:]
        f = sae.encode(x).abs()
        if is_bilinear(sae):
            f = f * x.norm(dim=-1, keepdim=True)
    return int(f.mean(0).argmax())


# ----------------------------------------------------------------------------------------------
# output
# ----------------------------------------------------------------------------------------------


def write_json(out: Path, name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` to ``out/name`` as strict JSON (NaN/inf are refused)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def new_figure(*args: Any, **kwargs: Any) -> Any:
    """A matplotlib figure on the non-interactive Agg backend: ``(fig, axes)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig: Any, out: Path, name: str) -> Path:
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def describe_run(model: Any, sae: Any, hook: str, args: argparse.Namespace) -> dict[str, Any]:
    """The common header of every result file."""
    return {
        "model": getattr(model.cfg, "model_name", str(args.model)),
        "sae": str(args.sae) if args.sae is not None else "toy",
        "architecture": sae.cfg.architecture(),
        "hook": hook,
        "d_sae": sae.cfg.d_sae,
    }


# ----------------------------------------------------------------------------------------------
# the toy setting
# ----------------------------------------------------------------------------------------------


class ToyLanguage:
    """A bigram language: the next token is ``perm[previous]`` with probability ``1 − noise``,
    else uniform. A fixed random permutation per ``seed``."""

    def __init__(self, d_vocab: int, seed: int = 0, noise: float = 0.2):
        import torch

        self.d_vocab = d_vocab
        self.noise = noise
        self.perm = torch.randperm(d_vocab, generator=torch.Generator().manual_seed(seed))

    def sample(self, n_seqs: int, length: int, seed: int = 0) -> Any:
        """``[n_seqs, length]`` token ids (int64)."""
        import torch

        generator = torch.Generator().manual_seed(seed)
        tokens = torch.empty(n_seqs, length, dtype=torch.long)
        tokens[:, 0] = torch.randint(self.d_vocab, (n_seqs,), generator=generator)
        for i in range(1, length):
            jump = torch.rand(n_seqs, generator=generator) < self.noise
            random = torch.randint(self.d_vocab, (n_seqs,), generator=generator)
            tokens[:, i] = torch.where(jump, random, self.perm[tokens[:, i - 1]])
        return tokens


def toy_model(seed: int = 0, steps: int = 80, lr: float = 1e-2) -> Any:
    """A 2-layer ``HookedSAETransformer`` (d_model 32, 64 tokens) trained ``steps`` Adam steps on
    :class:`ToyLanguage` (1-2 s on one idle CPU thread). It has no tokenizer."""
    import torch
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(**TOY_CONFIG, seed=seed, model_name=TOY_MODEL_NAME, device="cpu")
    model = HookedSAETransformer(cfg)
    language = ToyLanguage(cfg.d_vocab, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        loss = model(language.sample(16, cfg.n_ctx, seed=seed * 1_000_003 + step), return_type="loss")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model


def save_toy_model(model: Any, folder: Path) -> Path:
    """Write a toy model as ``toy_model.json`` + ``toy_model.safetensors``; return the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {key: getattr(model.cfg, key) for key in TOY_CONFIG} | {"seed": model.cfg.seed}
    (folder / _TOY_FILES[0]).write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / _TOY_FILES[1]))
    return folder


def load_toy_model(folder: Path) -> Any:
    """Read a model written by :func:`save_toy_model`."""
    from safetensors.torch import load_file
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig

    config = json.loads((Path(folder) / _TOY_FILES[0]).read_text(encoding="utf-8"))
    model = HookedSAETransformer(HookedTransformerConfig(**config, model_name=TOY_MODEL_NAME, device="cpu"))
    model.load_state_dict(load_file(str(Path(folder) / _TOY_FILES[1])), strict=False)
    model.eval()
    return model


def toy_activations(model: Any, hook: str = TOY_HOOK, n_seqs: int = 64, seed: int = 1) -> Any:
    """``[n_seqs · n_ctx, d_model]`` activations of the toy model at ``hook``."""
    import torch

    tokens = ToyLanguage(model.cfg.d_vocab, seed=model.cfg.seed or 0).sample(n_seqs, model.cfg.n_ctx, seed=seed)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=hook)
    return cache[hook].reshape(-1, model.cfg.d_model)


def toy_sae(
    model: Any,
    hook: str = TOY_HOOK,
    d_sae: int = 128,
    steps: int = 200,
    seed: int = 0,
    variant: str = "vanilla",
    alpha: float = 0.0,
    lifted: bool = True,
    lr: float = 3e-3,
) -> Any:
    """A lifted bilinear SAE trained ``steps`` Adam steps on the toy model's activations at
    ``hook`` (about 1 s); returned as an inference :class:`~sae_bilinear.BilinearSAE` whose
    metadata names the hook. ``steps=0`` gives the untrained, orthogonally initialised SAE."""
    import torch
    from sae_lens.saes.sae import SAEMetadata, TrainStepInput

    from sae_bilinear import BilinearSAE, BilinearSAEConfig, BilinearTrainingSAE, BilinearTrainingSAEConfig

    torch.manual_seed(seed)
    d_in = model.cfg.d_model
    fields = dict(d_in=d_in, d_sae=d_sae, variant=variant, lifted=lifted)
    trainer = BilinearTrainingSAE(BilinearTrainingSAEConfig(**fields, alpha=alpha, alpha_warm_up_steps=0))
    if steps:
        activations = toy_activations(model, hook)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(trainer.parameters(), lr=lr)
        for step in range(steps):
            batch = activations[torch.randint(len(activations), (256,), generator=generator)]
            out = trainer.training_forward_pass(
                TrainStepInput(
                    sae_in=batch,
                    coefficients={"alpha": alpha},
                    dead_neuron_mask=None,
                    n_training_steps=step,
                    is_logging_step=False,
                )
            )
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
    metadata = SAEMetadata(hook_name=hook, model_name=TOY_MODEL_NAME)
    sae = BilinearSAE(BilinearSAEConfig(**fields, metadata=metadata))
    sae.load_state_dict(trainer.state_dict())
    return sae.eval()


_TOY_CACHE: dict[int, tuple[Any, Any]] = {}


def cached_toy(seed: int = 0) -> tuple[Any, Any]:
    """``(toy_model(seed), toy_sae(...))``, built once per process (tests share them: do not
    modify them in place)."""
    if seed not in _TOY_CACHE:
        model = toy_model(seed)
        _TOY_CACHE[seed] = (model, toy_sae(model, seed=seed))
    return _TOY_CACHE[seed]


def hooks_dir() -> Path:
    return Path(__file__).resolve().parent


def add_to_path() -> None:
    """Make ``import _common`` work from tests and notebooks."""
    if str(hooks_dir()) not in sys.path:
        sys.path.insert(0, str(hooks_dir()))

