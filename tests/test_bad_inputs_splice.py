"""Bad input to splice evaluation, interventions and model loading (issue 13): each case is
refused with a UserError of the right type whose message names the field at fault; a value
that makes a result NaN/inf is an error, never a silent NaN."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_refused
from sae_lens import HookedSAETransformer
from sae_lens.saes.sae import SAEMetadata
from sae_lens.training.activation_scaler import ActivationScaler
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformer_lens import HookedTransformerConfig
from transformers import PreTrainedTokenizerFast

import sae_bilinear.evaluate as evaluate_module
from sae_bilinear import BilinearSAE, BilinearSAEConfig, models
from sae_bilinear import interventions as iv
from sae_bilinear.checks import ConfigTypeError, IndexRangeError, MissingFileError, NonFiniteResultError
from sae_bilinear.errors import ConfigError, OfflineError
from sae_bilinear.evaluate import activation_mean, evaluate_splice, mean_ablated_loss

torch.set_num_threads(1)
HOOK = "blocks.1.hook_resid_pre"
D_MODEL, D_VOCAB, D_SAE = 16, 32, 12


def tiny_model(seed: int = 0) -> HookedSAETransformer:
    """A random 2-block transformer: enough for hooks, CE and KL, built in milliseconds."""
    torch.manual_seed(seed)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=D_MODEL, d_head=4, n_heads=4, d_mlp=32, n_ctx=16, d_vocab=D_VOCAB, act_fn="gelu"
    )
    return HookedSAETransformer(cfg).eval()


def tiny_sae(hook: str = HOOK, seed: int = 0) -> BilinearSAE:
    torch.manual_seed(seed)
    sae = BilinearSAE(BilinearSAEConfig(d_in=D_MODEL, d_sae=D_SAE, lifted=True, metadata=SAEMetadata(hook_name=hook)))
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.normal_(0, 0.3)
    return sae


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def sae():
    return tiny_sae()


@pytest.fixture(scope="module")
def tokens():
    return torch.randint(1, D_VOCAB, (3, 8), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def no_work(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the evaluation started before the input was checked")

    monkeypatch.setattr(evaluate_module, "get_recons_loss", fail)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A small real fast tokenizer without BOS (like Qwen's), so no Qwen vocabulary is built."""
    words = ["<|endoftext|>", "<unk>", "a", "b", "c"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token="<unk>"
    )


def hooks_left(model) -> int:
    return sum(len(point._forward_hooks) for point in model.hook_dict.values())


def nan_sae() -> BilinearSAE:
    sae = tiny_sae()
    with torch.no_grad():
        sae.W_left[3, 2] = math.nan
    return sae


# ------------------------------------------------------------------------------------------
# evaluate_splice: refused before any forward pass over the data
# ------------------------------------------------------------------------------------------

SPLICE_CASES = {
    "every token ignored": (
        dict(ignore_tokens=list(range(D_VOCAB))),
        ConfigError,
        ["ignore_tokens", "nothing to score"],
    ),
    "only last positions kept": (
        dict(ignore_tokens="ALL_BUT_LAST"),
        ConfigError,
        ["ignore_tokens", "nothing to score"],
    ),
    "ignore_tokens a string": (dict(ignore_tokens="bos"), ConfigError, ["ignore_tokens", "'bos'"]),
    "negative ignored id": (dict(ignore_tokens=[-1]), ConfigError, ["ignore_tokens[0]", "-1"]),
    "float ignored id": (dict(ignore_tokens=[1.5]), ConfigTypeError, ["ignore_tokens[0]", "1.5"]),
    "batch_size 0": (dict(batch_size=0), ConfigError, ["batch_size", "0"]),
    "batch_size True": (dict(batch_size=True), ConfigTypeError, ["batch_size", "True"]),
    "batch_size 2.0": (dict(batch_size=2.0), ConfigTypeError, ["batch_size", "2.0"]),
    "progress 'yes'": (dict(progress="yes"), ConfigTypeError, ["progress", "'yes'"]),
    "model_kwargs a list": (dict(model_kwargs=[1]), ConfigError, ["model_kwargs", "list"]),
    "scaler not a scaler": (dict(activation_scaler=2.0), ConfigError, ["activation_scaler", "float"]),
    "NaN scaling factor": (dict(activation_scaler=ActivationScaler(math.nan)), ConfigError, ["scaling_factor", "nan"]),
    "mean wrong shape": (
        dict(mean_activation=torch.zeros(D_MODEL + 1)),
        ConfigError,
        ["mean_activation", "(17,)", "(16,)"],
    ),
    "mean with NaN": (
        dict(mean_activation=torch.full((D_MODEL,), math.nan)),
        ConfigError,
        ["mean_activation", "NaN/inf"],
    ),
    "mean of ints": (
        dict(mean_activation=torch.zeros(D_MODEL, dtype=torch.long)),
        ConfigTypeError,
        ["mean_activation", "floating-point"],
    ),
    "mean a list": (dict(mean_activation=[0.0] * D_MODEL), ConfigTypeError, ["mean_activation", "torch.Tensor"]),
    "empty mean_source": (dict(mean_source=""), ConfigError, ["mean_source"]),
    "hook_name not a str": (dict(hook_name=3), ConfigTypeError, ["hook_name", "3"]),
}


@pytest.mark.parametrize("case", list(SPLICE_CASES))
def test_evaluate_splice_bad_arguments(model, sae, tokens, no_work, case):
    kwargs, error, words = SPLICE_CASES[case]
    kwargs = {"progress": False, **kwargs}
    if kwargs.get("ignore_tokens") == "ALL_BUT_LAST":
        # every position that predicts a next token holds an ignored id; the last ones do not
        kwargs["ignore_tokens"] = sorted(set(tokens[:, :-1].flatten().tolist()) - set(tokens[:, -1].tolist()))
        kept = ~torch.isin(tokens, torch.tensor(kwargs["ignore_tokens"]))
        assert kept.any() and not kept[:, :-1].any()
    assert_refused(lambda: evaluate_splice(model, sae, tokens, **kwargs), error, words)
    assert hooks_left(model) == 0


def test_evaluate_splice_refuses_an_sae_with_nan_weights(model, tokens, no_work):
    assert_refused(
        lambda: evaluate_splice(model, nan_sae(), tokens, progress=False), ConfigError, ["W_left", "1 NaN/inf"]
    )


def test_a_model_that_overflows_is_an_error_naming_the_metric(tokens):
    broken = tiny_model()
    with torch.no_grad():
        broken.W_U[:, 0] = math.inf  # NaN/inf logits: every CE is NaN
    with pytest.raises(NonFiniteResultError) as info:
        evaluate_splice(broken, tiny_sae(), tokens, progress=False)
    assert "splice metric 'ce_clean'" in str(info.value) and HOOK in str(info.value)
    assert hooks_left(broken) == 0


def test_zero_activations_give_no_reconstruction_error_rather_than_zero(tokens):
    # All-zero embeddings: every activation at blocks.0.hook_resid_pre is 0, which a bilinear
    # SAE cannot normalise; the mean error over no token used to come out as 0.0.
    silent = tiny_model()
    with torch.no_grad():
        silent.W_E.zero_()
        silent.W_pos.zero_()
    sae = tiny_sae("blocks.0.hook_resid_pre")
    with pytest.raises(NonFiniteResultError, match="reconstruction_error cannot be computed"):
        evaluate_splice(silent, sae, tokens, progress=False)


# ------------------------------------------------------------------------------------------
# the mean-ablation baseline from the training activations (issue 16 §3)
# ------------------------------------------------------------------------------------------


def test_mean_ablation_uses_a_given_training_mean_and_says_so(model, sae, tokens):
    training = torch.randn(200, D_MODEL, generator=torch.Generator().manual_seed(3)) * 2 + 1
    mean = activation_mean(training)
    torch.testing.assert_close(mean, training.double().mean(0).float())
    given = evaluate_splice(
        model, sae, tokens, mean_activation=mean, mean_source="training activations", progress=False
    )
    own = evaluate_splice(model, sae, tokens, progress=False)
    assert given.mean_ablation_source == "training activations"
    assert own.mean_ablation_source == "evaluated tokens"
    with torch.no_grad():
        expected = mean_ablated_loss(model, tokens, HOOK, mean).mean()
    assert given.ce_mean_ablated == pytest.approx(float(expected), rel=1e-5)
    assert given.ce_mean_ablated != pytest.approx(own.ce_mean_ablated, rel=1e-3)
    # the other metrics do not depend on the mean
    assert given.ce_spliced == pytest.approx(own.ce_spliced, rel=1e-6)
    assert "mean_ablation_source" not in given.to_dict()


@pytest.mark.parametrize(
    "bad, error, words",
    [
        (torch.zeros(0, D_MODEL), ConfigError, ["activations", "(0, 16)"]),
        (torch.zeros(D_MODEL), ConfigError, ["activations", "(16,)"]),
        (torch.tensor([[1.0, math.inf]]), ConfigError, ["activations", "NaN/inf"]),
        (torch.zeros(4, D_MODEL, dtype=torch.long), ConfigTypeError, ["activations", "floating-point"]),
    ],
)
def test_activation_mean_bad_input(bad, error, words):
    assert_refused(lambda: activation_mean(bad), error, words)


def test_mean_ablated_loss_refuses_a_non_finite_mean(model, tokens):
    assert_refused(
        lambda: mean_ablated_loss(model, tokens, HOOK, torch.full((D_MODEL,), math.inf)),
        ConfigError,
        ["mean_activation"],
    )


# ------------------------------------------------------------------------------------------
# interventions: non-finite edit values refused up front
# ------------------------------------------------------------------------------------------

EDIT_CASES = {
    "clamp inf": (lambda s: iv.clamp_hook(s, 0, math.inf), ConfigError, ["value", "inf"]),
    "clamp nan": (lambda s: iv.clamp_hook(s, 0, math.nan), ConfigError, ["value", "nan"]),
    "clamp str": (lambda s: iv.clamp_hook(s, 0, "1"), ConfigTypeError, ["value", "'1'"]),
    "scale inf": (lambda s: iv.scale_hook(s, 0, math.inf), ConfigError, ["factor", "inf"]),
    "scale nan": (lambda s: iv.scale_hook(s, 0, math.nan), ConfigError, ["factor", "nan"]),
    "scale bool": (lambda s: iv.scale_hook(s, 0, True), ConfigTypeError, ["factor", "True"]),
    "steer nan": (lambda s: iv.steer_hook(s, 0, math.nan), ConfigError, ["strength", "nan"]),
    "steer -inf": (lambda s: iv.steer_hook(s, 0, -math.inf), ConfigError, ["strength", "-inf"]),
    "steer unit str": (lambda s: iv.steer_hook(s, 0, 1.0, unit="yes"), ConfigTypeError, ["unit", "'yes'"]),
    "walk t nan": (lambda s: iv.walk_hook(s, 0, math.nan), ConfigError, ["t", "nan"]),
    "walk t tensor inf": (lambda s: iv.walk_hook(s, 0, torch.tensor([0.1, math.inf])), ConfigError, ["t", "NaN/inf"]),
    "walk t 2-D": (lambda s: iv.walk_hook(s, 0, torch.zeros(2, 2)), ConfigError, ["t", "1-D"]),
    "walk eigen True": (lambda s: iv.walk_hook(s, 0, 0.1, eigen=True), ConfigError, ["eigen", "True"]),
    "set values nan": (lambda s: iv.set_latents([0], [math.nan]), ConfigError, ["values[0]", "nan"]),
    "set values tensor inf": (
        lambda s: iv.set_latents([0], torch.tensor([math.inf])),
        ConfigError,
        ["values", "NaN/inf"],
    ),
    "add inf": (lambda s: iv.add_to_latents([0], math.inf), ConfigError, ["amount", "inf"]),
    "scale_latents nan": (lambda s: iv.scale_latents([0], math.nan), ConfigError, ["factor", "nan"]),
    "edit latent float": (lambda s: iv.zero_latents([1.0]), ConfigTypeError, ["latents[0]", "1.0"]),
    "edit latent negative": (lambda s: iv.zero_latents([-1]), ConfigError, ["latents[0]", "-1"]),
    "edit no latents": (lambda s: iv.zero_latents([]), ConfigError, ["no latents"]),
    "ablate means nan": (
        lambda s: iv.ablate_hook(s, 0, mode="mean", means=torch.full((D_SAE,), math.nan)),
        ConfigError,
        ["means", "NaN/inf"],
    ),
    "ablate means list": (lambda s: iv.ablate_hook(s, 0, mode="mean", means=[0.0] * D_SAE), ConfigError, ["means="]),
    "latent str": (lambda s: iv.clamp_hook(s, "abc", 1.0), ConfigTypeError, ["latent", "'abc'"]),
    "latent bool": (lambda s: iv.scale_hook(s, True, 2.0), ConfigTypeError, ["latent", "True"]),
    "latent float": (lambda s: iv.steer_hook(s, 1.0, 1.0), ConfigTypeError, ["latent", "1.0"]),
    "latent out of range": (lambda s: iv.ablate_hook(s, [D_SAE]), IndexRangeError, ["latent index 12", "12 latents"]),
    "latents a string": (lambda s: iv.ablate_hook(s, "3"), ConfigTypeError, ["latent", "'3'"]),
    "positions str": (lambda s: iv.splice_hook(s, positions="last"), ConfigError, ["positions", "'last'"]),
    "positions float": (lambda s: iv.splice_hook(s, positions=[1.5]), ConfigTypeError, ["positions[0]", "1.5"]),
    "positions empty": (lambda s: iv.splice_hook(s, positions=[]), ConfigError, ["positions", "empty"]),
    "keep_error str": (lambda s: iv.splice_hook(s, keep_error="no"), ConfigTypeError, ["keep_error", "'no'"]),
    "edit not callable": (lambda s: iv.splice_hook(s, edit=3), ConfigError, ["edit", "3"]),
    "ablate mode": (lambda s: iv.ablate_hook(s, 0, mode="median"), ConfigError, ["mode", "'median'"]),
    "NaN SAE weights": (lambda s: iv.splice_hook(nan_sae()), ConfigError, ["W_left", "NaN/inf"]),
    "top_tokens k 0": (lambda s: iv.top_tokens(torch.zeros(5), k=0), ConfigError, ["k", "0"]),
    "latent_edit_hook d_sae 0": (lambda s: iv.latent_edit_hook(iv.zero_latents([0]), d_sae=0), ConfigError, ["d_sae"]),
}


@pytest.mark.parametrize("case", list(EDIT_CASES))
def test_intervention_bad_arguments(sae, case):
    build, error, words = EDIT_CASES[case]
    assert_refused(lambda: build(sae), error, words)


@pytest.mark.parametrize(
    "build, label",
    [
        (lambda s: iv.scale_hook(s, 0, 1e30), "scale_hook(latent=0, factor=1e+30)"),
        (lambda s: iv.clamp_hook(s, 0, 1e30), "clamp_hook(latent=0, value=1e+30)"),
        (lambda s: iv.steer_hook(s, 0, 1e38), "steer_hook(latent=0, strength=1e+38)"),
        (lambda s: iv.splice_hook(s, iv.add_to_latents([0, 1], 3e38)), "SpliceHook"),
    ],
)
def test_an_edit_that_overflows_is_an_error_and_leaves_no_hooks(model, sae, tokens, build, label):
    fn = build(sae)  # finite values: accepted when built
    with pytest.raises(NonFiniteResultError) as info:
        with iv.interventions(model, [(HOOK, fn)]):
            model(tokens)
    assert label in str(info.value) and HOOK in str(info.value)
    assert hooks_left(model) == 0


def test_a_finite_edit_still_runs(model, sae, tokens):
    with torch.no_grad():
        out = model.run_with_hooks(tokens, fwd_hooks=[(HOOK, iv.scale_hook(sae, 0, 1e3))])
    assert torch.isfinite(out).all()


def test_latent_edit_hook_refuses_an_edit_that_overflows():
    hook = iv.latent_edit_hook(iv.scale_latents([0], 1e30), d_sae=4)
    with pytest.raises(NonFiniteResultError, match="latent edit"):
        hook(torch.full((2, 4), 1e10), None)
    torch.testing.assert_close(hook(torch.ones(2, 4), None)[:, 0], torch.full((2,), 1e30))


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(ts=[0.0, math.nan]), ConfigError, ["ts[1]", "nan"]),
        (dict(ts=[]), ConfigError, ["ts", "non-empty"]),
        (dict(position=1.5), ConfigTypeError, ["position", "1.5"]),
        (dict(position=99), IndexRangeError, ["position 99", "8 tokens"]),
        (dict(eigen=[True]), ConfigError, ["eigen", "True"]),
    ],
)
def test_walk_manifold_bad_arguments(model, sae, tokens, kwargs, error, words):
    assert_refused(lambda: iv.walk_manifold(model, sae, tokens[:1], 0, **kwargs), error, words)


def test_walk_manifold_bad_tokens(model, sae):
    assert_refused(lambda: iv.walk_manifold(model, sae, [1, 2], 0), ConfigTypeError, ["tokens", "list"])
    assert_refused(lambda: iv.walk_manifold(model, sae, torch.tensor([[1, 99]]), 0), ConfigError, ["d_vocab=32"])


def test_latent_means_bad_arguments(model, sae, tokens):
    assert_refused(lambda: iv.latent_means(model, sae, tokens, batch_size=0), ConfigError, ["batch_size"])
    assert_refused(lambda: iv.latent_means(model, sae, tokens.float()), ConfigTypeError, ["integer token ids"])
    assert_refused(lambda: iv.latent_means(model, sae, torch.zeros(0, 4, dtype=torch.long)), ConfigError, ["empty"])


# ------------------------------------------------------------------------------------------
# model loading: device, dtype, remote code, names
# ------------------------------------------------------------------------------------------


@pytest.fixture
def no_loading(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    for name in ("load_smollm2", "load_local_model", "load_official_model", "model_from_hf"):
        monkeypatch.setattr(models, name, fail)


MODEL_CASES = {
    "cuda without CUDA": (dict(device="cuda"), ConfigError, ["'cuda'", "no CUDA GPU", "--device cpu"]),
    "unknown device": (dict(device="gpu0"), ConfigError, ["'gpu0'"]),
    "unknown dtype": (dict(dtype="float33"), ConfigError, ["'float33'"]),
    "trust_remote_code": (dict(trust_remote_code=True), ConfigError, ["trust_remote_code", "allow_remote_code=True"]),
    "allow_remote_code str": (dict(allow_remote_code="yes"), ConfigTypeError, ["allow_remote_code", "'yes'"]),
    "name not a str": (dict(name=3), ConfigTypeError, ["model name", "3"]),
    "missing folder": (dict(name="./no-such-model-folder"), MissingFileError, ["no-such-model-folder", "config.json"]),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_load_model_bad_arguments_before_loading(monkeypatch, no_loading, case):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kwargs, error, words = MODEL_CASES[case]
    assert_refused(lambda: models.load_model(**kwargs), error, words)


def test_missing_model_folder_is_still_a_file_not_found_error():
    with pytest.raises(FileNotFoundError, match="no-such-model-folder"):
        models.load_model("./no-such-model-folder")


def test_model_from_hf_and_qwen3_tiny_bad_sizes():
    assert_refused(lambda: models.qwen3_tiny_hf(d_model=True), ConfigTypeError, ["d_model", "True"])
    assert_refused(lambda: models.qwen3_tiny_hf(n_layers=0), ConfigError, ["n_layers", "0"])
    assert_refused(lambda: models.qwen3_tiny_hf(d_model=30, n_heads=4), ConfigError, ["d_model (30)", "n_heads (4)"])
    assert_refused(lambda: models.load_smollm2(n_ctx=0), ConfigError, ["n_ctx"])


def test_a_folder_that_needs_its_own_code_is_refused(tmp_path):
    folder = tmp_path / "custom-model"
    folder.mkdir()
    (folder / "config.json").write_text(
        '{"model_type": "custom_thing", "architectures": ["CustomForCausalLM"], '
        '"auto_map": {"AutoConfig": "configuration_custom.CustomConfig", '
        '"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}}'
    )
    (folder / "configuration_custom.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ConfigError) as info:
        models.load_local_model(folder)
    assert "custom-model" in str(info.value) and "allow_remote_code=True" in str(info.value)


def test_official_qwen3_loads_without_remote_code(monkeypatch):
    """TransformerLens switches trust_remote_code on for Qwen3 by itself; without
    allow_remote_code the package loads it with transformers' own classes instead."""
    import transformers

    hf_model, tokenizer = models.qwen3_tiny_hf(
        n_layers=1, d_model=32, n_heads=2, n_kv_heads=1, d_mlp=32, tokenizer=word_tokenizer()
    )
    seen: list[dict] = []

    def from_pretrained(returned):
        def load(name, **kwargs):
            seen.append({"name": name, **kwargs})
            return returned

        return load

    def no_tl(*args, **kwargs):
        raise AssertionError("TransformerLens's loader (which forces trust_remote_code) was used")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained(tokenizer))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained(hf_model))
    monkeypatch.setattr(HookedSAETransformer, "from_pretrained_no_processing", no_tl)
    model = models.load_model("Qwen/Qwen3-0.6B-Base")
    assert [call["trust_remote_code"] for call in seen] == [False, False]
    assert {call["name"] for call in seen} == {"Qwen/Qwen3-0.6B-Base"}
    assert model.cfg.model_name == "Qwen3-0.6B-Base" and model.cfg.d_model == 32


def test_unknown_official_name_is_a_config_error():
    assert_refused(lambda: models.load_model("gpt-2"), ConfigError, ["Unknown model 'gpt-2'", "gpt2"])


def test_qwen3_without_remote_code_refuses_loader_options_it_cannot_honour(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert_refused(
        lambda: models.load_model("Qwen/Qwen3-0.6B-Base", n_devices=2),
        ConfigError,
        ["n_devices", "allow_remote_code=True"],
    )


def test_official_name_offline_is_an_offline_error(monkeypatch, block_network):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with block_network(), pytest.raises(OfflineError, match=r"Hub is unreachable"):
        models.load_model("Qwen/Qwen3-0.6B-Base")
