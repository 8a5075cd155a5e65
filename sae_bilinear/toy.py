"""A toy setting for tests, tutorials and quick demos: seconds on one CPU thread.

* :class:`ToyLanguage` — a bigram language over 64 token ids;
* :func:`toy_model` — a 2-layer ``HookedSAETransformer`` trained on it (no tokenizer: its tokens
  print as ``<id>``), saved and reloaded by :func:`save_toy_model` / :func:`load_toy_model`;
* :func:`toy_sae` — a small lifted bilinear SAE trained on its residual stream through the
  package's own training path (activations collected by :func:`~sae_bilinear.train.collect_activations`,
  SAELens's trainer run by :func:`~sae_bilinear.train.train_on_activations`).

The toy SAE's metadata names the toy model (``model_name`` = :data:`TOY_MODEL_NAME`, its seed in
``toy_model_seed``), so :func:`toy_model_for` rebuilds the model an SAE was trained on.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any, Final

import torch
from jaxtyping import Float, Int
from sae_lens import HookedSAETransformer
from sae_lens.saes.sae import SAE, SAEMetadata
from safetensors.torch import load_file, save_file
from torch import Tensor
from transformer_lens import HookedTransformerConfig

from sae_bilinear.bilinear import BilinearSAE, BilinearSAEConfig, BilinearTrainingSAE, BilinearTrainingSAEConfig
from sae_bilinear.errors import ConfigError, DataFileError
from sae_bilinear.kernels import Variant
from sae_bilinear.train import TrainingSettings, collect_activations, train_on_activations
from sae_bilinear.values import check_finite_float, check_int

TOY_MODEL: Final = "toy"
"""The model name the hooks scripts take for a fresh toy model (``--model toy``)."""
TOY_MODEL_NAME: Final = "toy-bigram"
"""``model.cfg.model_name`` of every toy model, and ``metadata.model_name`` of the toy SAE."""
TOY_HOOK: Final = "blocks.1.hook_resid_pre"
"""The hook point the toy SAE is trained on (the residual stream between the two blocks)."""
TOY_CONFIG: Final[dict[str, Any]] = dict(
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
"""The toy transformer's ``HookedTransformerConfig`` fields (seed and name aside)."""
TOY_FILES: Final = ("toy_model.json", "toy_model.safetensors")
"""The files :func:`save_toy_model` writes: its config and its weights."""


class ToyLanguage:
    """A bigram language: the next token is ``perm[previous]`` with probability ``1 − noise``,
    else uniform; ``perm`` is a fixed random permutation per ``seed``."""

    def __init__(self, d_vocab: int, seed: int = 0, noise: float = 0.2):
        self.d_vocab = check_int("d_vocab", d_vocab, 2)
        self.noise = check_finite_float("noise", noise, 0.0, 1.0, hint=" (a probability)")
        self.perm = torch.randperm(d_vocab, generator=torch.Generator().manual_seed(check_int("seed", seed, 0)))

    def sample(self, n_seqs: int, length: int, seed: int = 0) -> Int[Tensor, "n_seqs length"]:
        """``[n_seqs, length]`` token ids (int64), the same for the same ``seed``."""
        check_int("n_seqs", n_seqs, 1)
        check_int("length", length, 1)
        generator = torch.Generator().manual_seed(check_int("seed", seed, 0))
        tokens = torch.empty(n_seqs, length, dtype=torch.long)
        tokens[:, 0] = torch.randint(self.d_vocab, (n_seqs,), generator=generator)
        for i in range(1, length):
            jump = torch.rand(n_seqs, generator=generator) < self.noise
            random = torch.randint(self.d_vocab, (n_seqs,), generator=generator)
            tokens[:, i] = torch.where(jump, random, self.perm[tokens[:, i - 1]])
        return tokens


def language_of(model: HookedSAETransformer) -> ToyLanguage:
    """The language a toy model was trained on (its permutation follows the model's seed)."""
    return ToyLanguage(model.cfg.d_vocab, seed=model.cfg.seed or 0)


def sample_tokens(model: HookedSAETransformer, n_seqs: int, length: int, seed: int = 0) -> Int[Tensor, "n_seqs length"]:
    """``[n_seqs, length]`` tokens of a toy model's own language (``seed`` picks the sample)."""
    return language_of(model).sample(n_seqs, length, seed=seed)


def is_toy(model: Any) -> bool:
    """True for a model built by :func:`toy_model` or :func:`load_toy_model`."""
    return getattr(model.cfg, "model_name", None) == TOY_MODEL_NAME


def _blank_toy_model(seed: int, config: dict[str, Any] | None = None) -> HookedSAETransformer:
    fields = TOY_CONFIG if config is None else config
    cfg = HookedTransformerConfig(**fields, seed=seed, model_name=TOY_MODEL_NAME, device="cpu")
    return HookedSAETransformer(cfg)


def toy_model(seed: int = 0, steps: int = 80, lr: float = 1e-2) -> HookedSAETransformer:
    """A 2-layer ``HookedSAETransformer`` (d_model 32, 64 tokens) trained ``steps`` Adam steps on
    its :class:`ToyLanguage` (1-2 s on one idle CPU thread), in eval mode on the CPU."""
    check_int("seed", seed, 0)
    check_int("steps", steps, 0)
    check_finite_float("lr", lr, 0.0, lo_open=True)
    model = _blank_toy_model(seed)
    language = language_of(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        # A language model, not an SAE: the package's SAE training path does not apply here.
        loss = model(language.sample(16, model.cfg.n_ctx, seed=seed * 1_000_003 + step), return_type="loss")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def save_toy_model(model: HookedSAETransformer, folder: Path | str) -> Path:
    """Write a toy model to ``folder`` as :data:`TOY_FILES`; return the folder."""
    if not is_toy(model):
        raise ConfigError(f"save_toy_model saves toy models only, not {getattr(model.cfg, 'model_name', model)!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {key: getattr(model.cfg, key) for key in TOY_CONFIG} | {"seed": model.cfg.seed}
    (folder / TOY_FILES[0]).write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / TOY_FILES[1]))
    return folder


def is_toy_folder(path: Path | str) -> bool:
    """True when ``path`` is a folder written by :func:`save_toy_model`."""
    return (Path(path).expanduser() / TOY_FILES[0]).is_file()


def load_toy_model(folder: Path | str) -> HookedSAETransformer:
    """Read a model written by :func:`save_toy_model` (in eval mode, on the CPU)."""
    folder = Path(folder).expanduser()
    config_file, weights_file = (folder / name for name in TOY_FILES)
    for path in (config_file, weights_file):
        if not path.is_file():
            raise DataFileError(
                f"{path} is missing: {folder} is not a toy model folder (write one with save_toy_model)"
            )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        unknown = set(config) - set(TOY_CONFIG) - {"seed"}
        if not isinstance(config, dict) or unknown:
            raise ValueError(f"unexpected keys {sorted(unknown)}" if unknown else "not a JSON object")
        model = _blank_toy_model(config.pop("seed", 0), config)
    except (ValueError, TypeError) as error:
        raise DataFileError(
            f"{config_file} is not a toy model config ({error}): write it with save_toy_model"
        ) from error
    weights = load_file(str(weights_file))
    missing = set(model.state_dict()) - set(weights)
    if missing:
        raise DataFileError(
            f"{weights_file} lacks {len(missing)} weights of the toy model, e.g. {sorted(missing)[0]!r}"
        )
    # strict=False: TransformerLens's buffers (masks, IGNORE) are in state_dict and rebuilt anyway.
    model.load_state_dict(weights, strict=False)
    return model.eval()


def toy_model_for(sae: SAE[Any]) -> HookedSAETransformer:
    """The toy model a toy SAE was trained on, rebuilt from its metadata (same seed)."""
    metadata = sae.cfg.metadata
    if metadata.model_name != TOY_MODEL_NAME:
        raise ConfigError(f"the SAE was trained on {metadata.model_name!r}, not on the toy model {TOY_MODEL_NAME!r}")
    return toy_model(seed=metadata.toy_model_seed or 0)


def toy_activations(
    model: HookedSAETransformer, hook: str = TOY_HOOK, n_seqs: int = 64, seed: int = 1
) -> Float[Tensor, "n_tokens d_model"]:
    """``[n_seqs · n_ctx, d_model]`` float32 activations of the toy model at ``hook``."""
    tokens = sample_tokens(model, n_seqs, model.cfg.n_ctx, seed=seed)
    return collect_activations(model, tokens, hook, batch_size=n_seqs, progress=False)


def toy_sae(
    model: HookedSAETransformer,
    hook: str = TOY_HOOK,
    d_sae: int = 128,
    steps: int = 200,
    seed: int = 0,
    variant: Variant = "vanilla",
    alpha: float = 0.0,
    lifted: bool = True,
    lr: float = 3e-3,
    progress: bool = False,
) -> BilinearSAE:
    """A bilinear SAE trained ``steps`` Adam steps (batches of 256, constant LR) on the toy model's
    activations at ``hook`` (about 1 s), through SAELens's trainer
    (:func:`~sae_bilinear.train.train_on_activations`). ``steps=0`` gives the untrained,
    orthogonally initialised SAE.

    Returned as an inference :class:`~sae_bilinear.BilinearSAE` whose metadata names the hook and
    the toy model. α has no warm-up: these runs are too short for one to matter.
    """
    check_int("d_sae", d_sae, 1)
    check_int("steps", steps, 0)
    check_int("seed", seed, 0)
    check_finite_float("alpha", alpha, 0.0)
    check_finite_float("lr", lr, 0.0, lo_open=True)
    torch.manual_seed(seed)
    fields: dict[str, Any] = dict(d_in=model.cfg.d_model, d_sae=d_sae, variant=variant, lifted=lifted)
    trainee = BilinearTrainingSAE(BilinearTrainingSAEConfig(**fields, alpha=alpha, alpha_warm_up_steps=0))
    if steps:
        settings = TrainingSettings(steps=steps, batch_size=256, lr=lr, lr_decay_fraction=0.0, seed=seed)
        # SAELens's trainer always draws a progress bar; a toy run is too short to need one.
        quiet = contextlib.nullcontext() if progress else contextlib.redirect_stderr(io.StringIO())
        with quiet:
            train_on_activations(trainee, toy_activations(model, hook), settings)
    # The seed goes in a key of its own: SAELens warns whenever model_from_pretrained_kwargs is set.
    metadata = SAEMetadata(hook_name=hook, model_name=TOY_MODEL_NAME, toy_model_seed=model.cfg.seed or 0)
    sae = BilinearSAE(BilinearSAEConfig(**fields, metadata=metadata))
    sae.load_state_dict(trainee.state_dict())
    return sae.eval()
