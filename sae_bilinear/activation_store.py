"""Activations collected once to disk, memory-mapped, reused over many epochs.

A *store* is one folder of safetensors shards plus a ``manifest.json``. Its name is a hash
of everything that determines its contents (:class:`StoreSettings`: the model and a
fingerprint of its weights, the hook, a fingerprint of the token contexts, the context size,
BOS handling, the dtype), so the same settings always find the same folder and a changed
setting can never silently reuse stale activations.

Small API::

    from sae_bilinear import activation_store as store

    settings = store.settings_for(model, tokens, "blocks.15.hook_resid_pre", model_name="smollm2-135m",
                                  dataset="kjv train", skip_first=1)
    acts = store.collect(root, model, tokens, settings)        # or store.open_store(root, settings)
    acts.n_tokens, acts.d_in                                   # sizes, from the manifest
    for batch in acts.batches(1024, seed=0):                   # endless shuffled epochs, float32
        ...
    x = acts.tensor()                                          # all tokens (one shard: no copy)

Writing is atomic: shards go to ``<root>/.<digest>.partial/`` (each shard written to a
temporary file and renamed), the manifest last, and the folder is renamed to
``<root>/<digest>/`` at the end. An interrupted :func:`collect` resumes from the shards
already in the partial folder. Reading memory-maps each shard (no pickle, no copy) and
validates the manifest and each shard's header and size; ``verify=True`` also checks each
shard's SHA-256. A damaged file is a :class:`~sae_bilinear.errors.DataFileError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import struct
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from safetensors.torch import save_file
from torch import Tensor

from sae_bilinear.errors import ConfigError, DataFileError
from sae_bilinear.models import check_hook, stop_at_layer

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ACTIVATIONS_KEY = "activations"
TOKENS_KEY = "tokens"
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "I32": "int32"}
_HASH_CHUNK = 1 << 24


@dataclass(frozen=True)
class StoreSettings:
    """Everything that determines a store's contents; its hash names the store's folder."""

    model: str
    """The model's name (for people; the weights are identified by ``weights``)."""
    weights: str
    """Fingerprint of the model's weights (:func:`weights_fingerprint`)."""
    hook: str
    """TransformerLens hook name, e.g. ``blocks.15.hook_resid_pre``."""
    dataset: str
    """Description of the text the tokens came from (for people; ``tokens`` identifies them)."""
    tokens: str
    """Fingerprint of the ``[n_contexts, context_size]`` token contexts (:func:`tokens_fingerprint`)."""
    n_contexts: int
    """Number of contexts (the token budget is ``n_contexts · (context_size − skip_first)``)."""
    context_size: int
    """Tokens per context."""
    prepend_bos: bool
    """Whether each context starts with BOS."""
    skip_first: int
    """Leading positions of each context that are not stored (1 drops BOS, an outlier)."""
    dtype: str
    """Storage dtype: ``float32``, ``float16`` or ``bfloat16``; batches are read as float32."""

    def __post_init__(self) -> None:
        for name in ("model", "weights", "hook", "dataset", "tokens", "dtype"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"StoreSettings.{name} must be a string, got {getattr(self, name)!r}")
        for name in ("n_contexts", "context_size", "skip_first"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"StoreSettings.{name} must be a non-negative int, got {value!r}")
        if self.n_contexts < 1 or self.context_size < 1:
            raise ConfigError("StoreSettings.n_contexts and context_size must be >= 1")
        if self.skip_first >= self.context_size:
            raise ConfigError(
                f"StoreSettings.skip_first={self.skip_first} leaves no token of a {self.context_size}-token context"
            )
        if not isinstance(self.prepend_bos, bool):
            raise ConfigError(f"StoreSettings.prepend_bos must be a bool, got {self.prepend_bos!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"StoreSettings.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")

    @property
    def tokens_per_context(self) -> int:
        return self.context_size - self.skip_first

    @property
    def n_tokens(self) -> int:
        """Rows the store holds."""
        return self.n_contexts * self.tokens_per_context

    def digest(self) -> str:
        """The store's folder name: SHA-256 (first 20 hex digits) of the settings as canonical JSON."""
        text = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer (names, shapes, dtypes, bytes) of ``model``."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:32]


def tokens_fingerprint(tokens: Int[Tensor, "n_contexts context"]) -> str:
    """SHA-256 of the token ids (as int64) and their shape."""
    t = tokens.detach().cpu().to(torch.int64).contiguous()
    digest = hashlib.sha256(f"{tuple(t.shape)}|".encode())
    digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:32]


def settings_for(
    model: Any,
    tokens: Int[Tensor, "n_contexts context"],
    hook: str,
    *,
    model_name: str,
    dataset: str,
    prepend_bos: bool = True,
    skip_first: int = 0,
    dtype: str = "float32",
) -> StoreSettings:
    """The :class:`StoreSettings` of collecting ``hook`` of ``model`` on ``tokens``."""
    if tokens.ndim != 2 or tokens.numel() == 0 or tokens.is_floating_point():
        raise ConfigError(f"tokens must be a non-empty integer [n_contexts, context] tensor, got {tuple(tokens.shape)}")
    return StoreSettings(
        model=model_name,
        weights=weights_fingerprint(model),
        hook=hook,
        dataset=dataset,
        tokens=tokens_fingerprint(tokens),
        n_contexts=int(tokens.shape[0]),
        context_size=int(tokens.shape[1]),
        prepend_bos=bool(prepend_bos),
        skip_first=int(skip_first),
        dtype=dtype,
    )


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _mmap_safetensors(path: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file as views of a private memory map (nothing copied).

    Parsed here (8-byte header length, JSON header, data) so that a damaged file is named.
    The map is copy-on-write: writes to a returned tensor never reach the file.
    """
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if header_len > size - 8:
                raise ValueError(f"header length {header_len} exceeds the file size {size}")
            header = json.loads(handle.read(header_len))
            buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError, struct.error) as error:
        raise DataFileError(
            f"{path} is not a readable safetensors shard ({error}); delete the store and collect again"
        ) from error
    start = 8 + header_len
    tensors: dict[str, Tensor] = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = getattr(torch, _SAFETENSORS_DTYPES[entry["dtype"]])
            begin, end = (int(v) for v in entry["data_offsets"])
            shape = [int(v) for v in entry["shape"]]
        except (KeyError, TypeError, ValueError) as error:
            raise DataFileError(
                f"{path}: bad header entry {key!r} ({error}); delete the store and collect again"
            ) from error
        count = 1
        for n in shape:
            count *= n
        if end - begin != count * dtype.itemsize or start + end > size:
            raise DataFileError(
                f"{path}: tensor {key!r} does not fit the file (truncated or damaged); "
                "delete the store and collect again"
            )
        flat = (
            torch.frombuffer(buffer, dtype=dtype, count=count, offset=start + begin)
            if count
            else torch.empty(0, dtype=dtype)
        )
        tensors[key] = flat.view(shape)
    return tensors


@dataclass(frozen=True)
class Shard:
    """One shard's entry in the manifest."""

    file: str
    """File name inside the store folder."""
    n_tokens: int
    """Rows in this shard."""
    bytes: int
    """File size."""
    sha256: str
    """SHA-256 of the file."""


class ActivationStore:
    """A validated store on disk: memory-mapped shards, sizes, shuffled batches.

    Open one with :func:`open_store` (by settings) or :meth:`ActivationStore.open` (by folder).
    """

    def __init__(
        self,
        folder: Path,
        settings: StoreSettings,
        shards: list[Shard],
        d_in: int,
        shard_tensors: list[dict[str, Tensor]],
    ):
        self.folder = folder
        self.settings = settings
        self.shards = shards
        self.d_in = d_in
        self._tensors = shard_tensors
        self.offsets = torch.tensor([0] + [s.n_tokens for s in shards]).cumsum(0)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @classmethod
    def open(cls, folder: str | Path, *, verify: bool = False) -> ActivationStore:
        """Open and validate the store in ``folder`` (``verify``: also check each shard's SHA-256)."""
        folder = Path(folder)
        manifest_path = folder / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
            names = {f.name for f in fields(StoreSettings)}
            if set(manifest["settings"]) != names:
                raise ValueError(f"settings keys {sorted(manifest['settings'])} differ from {sorted(names)}")
            settings = StoreSettings(**manifest["settings"])
            shards = [Shard(**entry) for entry in manifest["shards"]]
            d_in = int(manifest["d_in"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DataFileError(
                f"{manifest_path} is missing or invalid ({error}); delete {folder} and collect again"
            ) from error
        if folder.name != settings.digest():
            raise DataFileError(
                f"{manifest_path}: its settings hash to {settings.digest()}, not the folder name {folder.name}"
            )
        if sum(s.n_tokens for s in shards) != settings.n_tokens:
            raise DataFileError(
                f"{manifest_path}: the shards hold {sum(s.n_tokens for s in shards)} tokens, "
                f"the settings {settings.n_tokens}"
            )
        tensors = [_validated_shard(folder / s.file, s, d_in, settings.dtype, verify) for s in shards]
        return cls(folder, settings, shards, d_in, tensors)

    def shard(self, index: int) -> Float[Tensor, "n d_in"]:
        """Shard ``index``'s activations, memory-mapped, in the storage dtype."""
        return self._tensors[index][ACTIVATIONS_KEY]

    def token_ids(self) -> Int[Tensor, " n_tokens"]:
        """The token id of every stored row (int64, in memory)."""
        return torch.cat([t[TOKENS_KEY].long() for t in self._tensors])

    def tensor(self) -> Float[Tensor, "n_tokens d_in"]:
        """All activations as one ``[n_tokens, d_in]`` tensor: the memory map itself for one
        shard, else a float32 copy in memory."""
        if len(self._tensors) == 1 and self.settings.dtype == "float32":
            return self.shard(0)
        return torch.cat([t[ACTIVATIONS_KEY].float() for t in self._tensors])

    def gather(self, index: Int[Tensor, " n"]) -> Float[Tensor, "n d_in"]:
        """Rows ``index`` (global row numbers) as float32, in the given order."""
        index = index.long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.n_tokens):
            raise IndexError(f"row indices must be in [0, {self.n_tokens})")
        shard_of = torch.searchsorted(self.offsets, index, right=True) - 1
        out = torch.empty(index.numel(), self.d_in, dtype=torch.float32)
        for s in shard_of.unique().tolist():
            rows = (shard_of == s).nonzero(as_tuple=True)[0]
            out[rows] = self.shard(s)[index[rows] - self.offsets[s]].float()
        return out

    def batches(
        self, batch_size: int, *, seed: int = 0, epochs: int | None = None
    ) -> Iterator[Float[Tensor, "batch d_in"]]:
        """Shuffled ``[batch_size, d_in]`` float32 batches, a fresh permutation every epoch.

        ``epochs=None`` never ends (SAELens's trainer draws as many as it needs); a partial
        batch at the end of an epoch is dropped, so each batch has ``batch_size`` rows.
        """
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or not 1 <= batch_size <= self.n_tokens:
            raise ConfigError(
                f"batch_size must be an int in [1, {self.n_tokens}] (the store's tokens), got {batch_size!r}"
            )
        if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
            raise ConfigError(f"epochs must be a positive int or None, got {epochs!r}")
        generator = torch.Generator().manual_seed(seed)
        epoch = 0
        while epochs is None or epoch < epochs:
            order = torch.randperm(self.n_tokens, generator=generator)
            for start in range(0, self.n_tokens - batch_size + 1, batch_size):
                # Sorting the rows of a batch turns random reads into forward reads of the map.
                yield self.gather(order[start : start + batch_size].sort().values)
            epoch += 1


def _validated_shard(path: Path, shard: Shard, d_in: int, dtype: str, verify: bool) -> dict[str, Tensor]:
    if not path.is_file():
        raise DataFileError(f"shard {path} is missing; delete {path.parent} and collect again")
    size = path.stat().st_size
    if size != shard.bytes:
        raise DataFileError(
            f"shard {path} has {size} bytes, the manifest says {shard.bytes} (truncated or damaged); collect again"
        )
    if verify and _sha256(path) != shard.sha256:
        raise DataFileError(f"shard {path} fails its SHA-256 check (damaged); delete {path.parent} and collect again")
    tensors = _mmap_safetensors(path)
    acts, ids = tensors.get(ACTIVATIONS_KEY), tensors.get(TOKENS_KEY)
    if acts is None or ids is None:
        raise DataFileError(f"shard {path} lacks the {ACTIVATIONS_KEY!r} or {TOKENS_KEY!r} tensor; collect again")
    if (
        tuple(acts.shape) != (shard.n_tokens, d_in)
        or acts.dtype != DTYPES[dtype]
        or tuple(ids.shape) != (shard.n_tokens,)
    ):
        raise DataFileError(
            f"shard {path} holds activations {tuple(acts.shape)} {acts.dtype}, "
            f"expected ({shard.n_tokens}, {d_in}) {dtype}; collect again"
        )
    return tensors


def store_folder(root: str | Path, settings: StoreSettings) -> Path:
    """Where the store of ``settings`` lives under ``root``."""
    return Path(root) / settings.digest()


def open_store(root: str | Path, settings: StoreSettings, *, verify: bool = False) -> ActivationStore:
    """The existing store of ``settings`` under ``root`` (DataFileError if absent or damaged)."""
    folder = store_folder(root, settings)
    if not folder.is_dir():
        raise DataFileError(f"no activation store {folder}: collect it first (activation_store.collect)")
    store = ActivationStore.open(folder, verify=verify)
    if store.settings != settings:
        raise DataFileError(
            f"{folder / MANIFEST}: its settings differ from the requested ones; delete it and collect again"
        )
    return store


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------


def _write_shard(path: Path, activations: Tensor, token_ids: Tensor) -> Shard:
    temporary = path.with_name(path.name + ".tmp")
    save_file(
        {ACTIVATIONS_KEY: activations.contiguous(), TOKENS_KEY: token_ids.to(torch.int32).contiguous()}, str(temporary)
    )
    os.replace(temporary, path)
    return Shard(file=path.name, n_tokens=int(activations.shape[0]), bytes=path.stat().st_size, sha256=_sha256(path))


ChunkFn = Callable[[int, int], tuple[Tensor, Tensor]]


def write_store(
    root: str | Path,
    settings: StoreSettings,
    chunk: ChunkFn,
    *,
    contexts_per_shard: int = 256,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ActivationStore:
    """Write the store of ``settings`` from ``chunk(first_context, end_context) -> (acts, token_ids)``.

    ``acts`` is ``[n_ctx · tokens_per_context, d_in]`` for contexts ``[first, end)`` and
    ``token_ids`` their ids. Shards already complete in the partial folder (an interrupted
    run) are kept and not recomputed. An existing finished store is returned as is unless
    ``overwrite``.
    """
    if not isinstance(contexts_per_shard, int) or contexts_per_shard < 1:
        raise ConfigError(f"contexts_per_shard must be a positive int, got {contexts_per_shard!r}")
    root = Path(root)
    folder = store_folder(root, settings)
    if folder.exists():
        if not overwrite:
            return ActivationStore.open(folder)
        shutil.rmtree(folder)
    partial = root / f".{settings.digest()}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    shards: list[Shard] = []
    d_in: int | None = None
    bounds = list(range(0, settings.n_contexts, contexts_per_shard))
    for number, first in enumerate(bounds):
        end = min(first + contexts_per_shard, settings.n_contexts)
        path = partial / f"shard_{number:05d}.safetensors"
        expected = (end - first) * settings.tokens_per_context
        if path.is_file():
            try:
                tensors = _mmap_safetensors(path)
                acts = tensors[ACTIVATIONS_KEY]
                if acts.shape[0] == expected and acts.dtype == DTYPES[settings.dtype] and TOKENS_KEY in tensors:
                    d_in = int(acts.shape[1])
                    shards.append(Shard(path.name, expected, path.stat().st_size, _sha256(path)))
                    continue
            except (DataFileError, KeyError):
                pass  # a damaged leftover is recomputed
        acts, ids = chunk(first, end)
        if acts.ndim != 2 or acts.shape[0] != expected or ids.shape != (expected,):
            raise ValueError(
                f"chunk({first}, {end}) returned {tuple(acts.shape)}/{tuple(ids.shape)}, expected {expected} rows"
            )
        if d_in is not None and acts.shape[1] != d_in:
            raise ValueError(f"chunk({first}, {end}) has d={acts.shape[1]}, earlier chunks {d_in}")
        d_in = int(acts.shape[1])
        shards.append(_write_shard(path, acts.to(DTYPES[settings.dtype]).cpu(), ids.cpu()))
        if progress is not None:
            progress(end, settings.n_contexts)
    assert d_in is not None
    manifest = {
        "format_version": FORMAT_VERSION,
        "settings": asdict(settings),
        "d_in": d_in,
        "shards": [asdict(s) for s in shards],
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    try:
        os.rename(partial, folder)
    except OSError:
        if not folder.is_dir():
            raise
        shutil.rmtree(partial, ignore_errors=True)  # another process finished the same store first
    return ActivationStore.open(folder)


@torch.no_grad()
def collect(
    root: str | Path,
    model: Any,
    tokens: Int[Tensor, "n_contexts context"],
    settings: StoreSettings,
    *,
    batch_size: int = 8,
    contexts_per_shard: int = 256,
    overwrite: bool = False,
    progress: bool = False,
) -> ActivationStore:
    """Run ``model`` on ``tokens`` and store ``settings.hook`` (resumable; see :func:`write_store`).

    ``settings`` must describe ``tokens`` (:func:`settings_for`); the model runs only up to
    the hook's block. Returns the opened store; an existing one is reused without running.
    """
    if tokens_fingerprint(tokens) != settings.tokens:
        raise ConfigError(
            "settings.tokens does not match the tokens passed: build the settings with settings_for(model, tokens, ...)"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int, got {batch_size!r}")
    hook = settings.hook
    check_hook(model, hook)
    stop = stop_at_layer(hook) if hook.startswith("blocks.") else None
    skip = settings.skip_first

    def chunk(first: int, end: int) -> tuple[Tensor, Tensor]:
        parts = []
        for start in range(first, end, batch_size):
            batch = tokens[start : min(start + batch_size, end)].to(model.cfg.device)
            _, cache = model.run_with_cache(batch, names_filter=hook, stop_at_layer=stop)
            parts.append(cache[hook][:, skip:].reshape(-1, cache[hook].shape[-1]).float().cpu())
        return torch.cat(parts), tokens[first:end, skip:].reshape(-1)

    report = (lambda done, total: print(f"collect {hook}: {done}/{total} contexts", flush=True)) if progress else None
    return write_store(
        root, settings, chunk, contexts_per_shard=contexts_per_shard, overwrite=overwrite, progress=report
    )


__all__ = [
    "ActivationStore",
    "Shard",
    "StoreSettings",
    "collect",
    "open_store",
    "settings_for",
    "store_folder",
    "tokens_fingerprint",
    "weights_fingerprint",
    "write_store",
]
