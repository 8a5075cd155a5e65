"""Hub support, offline: push/load through a stand-in Hub, a hand-built HF cache with
HF_HUB_OFFLINE, the authors' layout (convert and direct load) against a naive encoder,
releases, and every bad-file case."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# pytest's default (prepend) import mode puts this folder on sys.path for its test modules.
from hub_helpers import (
    AUTHORS_RELEASE,
    AUTHORS_REPO,
    UNREACHABLE,
    build_cache,
    card_table,
    edit_cfg,
    edit_weights,
    folder_files,
    front_matter,
    make_sae,
    naive_latents,
    no_network,
    saelens_folder,
    truncate,
    write_bae,
    write_releases,
)
from hub_server import git_blob_sha1, redirect_hub
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
from sae_lens import SAE

from sae_bilinear import BilinearSAE, BilinearTrainingSAE, BilinearTrainingSAEConfig, hub
from sae_bilinear.evaluate import METRIC_KEYS
from sae_bilinear.hub import MissingWeightFileError, ReleaseNotFoundError, WeightFileError
from sae_bilinear.hub import card as hub_card
from sae_bilinear.hub import upload as hub_upload

pytestmark = pytest.mark.usefixtures("no_pickle")  # conftest: torch.load (pickle) fails the test


# --------------------------------------------------------------------------- push → load


@pytest.mark.parametrize(("variant", "lifted"), [("vanilla", False), ("mixed", True)])
def test_push_then_from_pretrained_gives_identical_outputs(stand_in, monkeypatch, tmp_path, variant, lifted):
    sae = make_sae(variant, lifted)
    result = hub.push(
        sae, "lab/bilinear-sweep", "alpha-0.3", metrics={"reconstruction_error": 0.0912, "hoyer_density": 0.4}
    )
    assert result.paths_in_repo == ("alpha-0.3",)
    files = stand_in.files("lab/bilinear-sweep")
    assert {"alpha-0.3/cfg.json", "alpha-0.3/sae_weights.safetensors", "alpha-0.3/metrics.json", "README.md"} <= set(
        files
    )
    assert stand_in.lfs_objects, "the weights went through the LFS path, as on the Hub"

    x = torch.randn(2, 5, 8)
    x[0, 0] = 0.0  # a zero token: zero latents, no NaN
    loaded = SAE.from_pretrained("lab/bilinear-sweep", "alpha-0.3")  # SAELens's own loader
    assert isinstance(loaded, BilinearSAE)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert torch.equal(loaded.reconstruction_error(x), sae.reconstruction_error(x))
    if lifted:
        assert torch.equal(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)))

    releases = write_releases(tmp_path / "releases.yaml", "lab-sweep", "lab/bilinear-sweep", ["alpha-0.3"])
    monkeypatch.setenv(hub.RELEASES_ENV, str(releases))
    by_name = hub.from_pretrained("lab-sweep", "alpha-0.3")
    assert torch.equal(by_name.encode(x), sae.encode(x))

    card = files["README.md"].decode()
    meta = front_matter(card)
    assert meta["library_name"] == "saelens"
    assert {"saelens", "sae_lens", "sae-bilinear", "bilinear-autoencoder"} <= set(meta["tags"])
    assert meta["base_model"] == "Qwen/Qwen3-0.6B-Base"
    # The SAE's config row and its metrics row.
    row = " ".join(line for line in card.splitlines() if line.startswith("| `alpha-0.3`"))
    for text in ("blocks.18.hook_resid_pre", variant, "0.3", "0.0912", "0.4"):
        assert text in row
    assert 'sae_lens.SAE.from_pretrained("lab/bilinear-sweep", "alpha-0.3")' in card
    assert "import sae_bilinear" in card
    assert json.loads(files["alpha-0.3/metrics.json"]) == {"hoyer_density": 0.4, "reconstruction_error": 0.0912}


def test_sweep_pushes_keep_one_folder_each_and_the_card_lists_all(stand_in, tmp_path):
    repo = "lab/sweep"
    user_card = "---\nlicense: mit\ntags:\n- my-tag\n---\n# Notes by the author\n\nKeep me.\n"
    stand_in.add_repo(repo, {"README.md": user_card.encode()})

    first = tmp_path / "alpha-0.1"
    make_sae("ordered", False, seed=1, alpha=0.1).save_model(first)
    (first / "metrics.json").write_text(
        json.dumps({"reconstruction_error": 0.2, "explained_variance": {"spliced": 0.8}})
    )
    hub.push(first, repo)  # path_in_repo defaults to the folder name

    second = tmp_path / "run-b"
    make_sae("combined", True, seed=2, alpha=0.5).save_model(second)
    other = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=8, d_sae=24, variant="vanilla", lifted=True, alpha=0.2))
    other.cfg.metadata.hook_name = "blocks.18.hook_resid_pre"
    hub.push_many({"alpha-0.5": second, "vanilla": other}, repo, metrics={"alpha-0.5": {"reconstruction_error": 0.1}})

    # A folder that reached the repo without the card (another tool): read from its cfg.json.
    external = tmp_path / "external"
    make_sae("vanilla", False, seed=4).save_model(external)
    stand_in.commit_files(repo, folder_files(external, "external"))
    hub.push(make_sae("mixed", False, seed=5), repo, "mixed")

    files = stand_in.files(repo)
    folders = {p.rsplit("/", 1)[0] for p in files if p.endswith("/cfg.json")}
    assert folders == {"alpha-0.1", "alpha-0.5", "vanilla", "external", "mixed"}
    card = files["README.md"].decode()
    meta = front_matter(card)
    assert meta["license"] == "mit" and "my-tag" in meta["tags"] and "sae-bilinear" in meta["tags"]
    assert "# Notes by the author" in card and "Keep me." in card
    assert card.count("<!-- sae-bilinear:begin") == 1
    rows = card_table(card, "## SAEs")
    assert [r.split("`")[1] for r in rows] == sorted(folders)
    assert "0.8" in next(r for r in card_table(card, "## Metrics") if "`alpha-0.1`" in r)  # nested metric flattened
    assert "explained_variance/spliced" in card
    vanilla_row = next(r for r in rows if "`vanilla`" in r).rstrip(" |").split(" | ")
    assert vanilla_row[9] == "0.2"  # α of a training SAE, from metadata.training_architecture_details

    # Loading any of them still works, and each matches what was pushed.
    x = torch.randn(4, 8)
    loaded = SAE.from_pretrained(repo, "vanilla")
    assert isinstance(loaded, BilinearSAE)  # a training SAE is pushed as its inference form
    assert torch.equal(loaded.encode(x), other.encode(x))

    # A folder deleted from the repo disappears from the card at the next push.
    stand_in.commit_files(repo, delete_prefixes=("external/",))
    hub.push(first, repo)
    card = stand_in.files(repo)["README.md"].decode()
    assert "`external`" not in card and "`alpha-0.1`" in card


def test_private_push_and_validation_before_any_request(stand_in, tmp_path):
    hub.push(make_sae(), "lab/private", "a", private=True)
    assert stand_in.repos["lab/private"].private
    assert isinstance(SAE.from_pretrained("lab/private", "a"), BilinearSAE)  # the (dummy) token is sent

    bad = tmp_path / "bad"
    make_sae().save_model(bad)
    (bad / "sae_weights.safetensors").write_bytes(b"\x80\x04 not safetensors")
    before = len(stand_in.requests)
    with pytest.raises(WeightFileError, match="sae_weights.safetensors"):
        hub.push(bad, "lab/private")
    with pytest.raises(ValueError, match="path_in_repo"):
        hub.push(make_sae(), "lab/private", "../escape")
    assert len(stand_in.requests) == before, "nothing may be sent before the SAE is validated"


def test_stand_in_answers_missing_repo_and_file_like_the_hub(stand_in):
    stand_in.add_repo("lab/x", {"a/cfg.json": b"{}"})
    assert Path(hf_hub_download("lab/x", "a/cfg.json")).read_bytes() == b"{}"
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("lab/x", "a/missing.json")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("lab/nope", "a/cfg.json")
    top = {(type(e).__name__, e.path) for e in HfApi().list_repo_tree("lab/x")}
    assert top == {("RepoFolder", "a")}
    assert HfApi().list_repo_files("lab/x") == ["a/cfg.json"]
    assert git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


# --------------------------------------------------------------------------- main-job runs and the card


def main_job_run(root: Path) -> tuple[Path, dict]:
    """A folder as ``sae-bilinear run`` leaves it: ``sae/``, ``baseline/`` and the run's
    ``metrics.json`` one folder up (the bilinear SAE's metrics at the top level, beside the
    run's config, the baseline's block and the analysed latents)."""
    run = root / "runs" / "20250101-120000"
    make_sae("vanilla", True, seed=11).save_model(run / "sae")
    own = {key: 0.01 * (i + 1) for i, key in enumerate(METRIC_KEYS)}
    own.update({"ce_loss_recovered": 0.9731, "kl": 0.1234, "n_tokens": 4096})
    config = {f"option_{i}": i for i in range(40)}  # the run's many settings: never card columns
    metrics = {
        **own,
        "model": "smollm2-135m",
        "hook": "blocks.18.hook_resid_pre",
        "tokens": 100_000,
        "eval_tokens": 4096,
        "training_seconds": 61.5,
        "seconds": 200.0,
        "config": config,
        "baseline": {"kind": "topk", "d_sae": 1234, "ce_loss_recovered": 0.5555, "kl": 7.777},
        "latents": [3, 1, 4],
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run, own


def test_push_of_a_main_job_sae_carries_its_own_metrics_into_a_short_card(stand_in, tmp_path):
    run, own = main_job_run(tmp_path)
    hub.push(run / "sae", "lab/main-job", "smollm2-l18")

    files = stand_in.files("lab/main-job")
    pushed = json.loads(files["smollm2-l18/metrics.json"])
    assert pushed["kl"] == 0.1234 and pushed["ce_loss_recovered"] == 0.9731
    assert not {"config", "baseline", "latents"} & set(pushed), "only the SAE's own block is pushed"
    card = files["README.md"].decode()
    tables = card.split("<!-- sae-bilinear-index")[0]
    assert "option_" not in tables and "baseline" not in tables and "7.777" not in tables
    [row] = card_table(card, "## Metrics")
    header = next(line for line in tables.splitlines() if line.startswith("| SAE id | ce_loss_recovered"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[:4] == ["SAE id", "ce_loss_recovered", "kl", "explained_variance"]
    assert len(columns) == 1 + hub_card.MAX_METRIC_COLUMNS
    assert "n_tokens" not in columns and "seconds" not in columns  # bookkeeping yields to metrics
    assert row.startswith("| `smollm2-l18` | 0.9731 | 0.1234 |")
    [config_row] = card_table(card, "## SAEs")
    assert config_row.count("|") == len(hub_card.CONFIG_HEADER) + 1


def test_run_metrics_picks_the_saes_own_block(tmp_path):
    run, own = main_job_run(tmp_path)
    picked = hub_upload.run_metrics(run / "sae")
    assert {key: picked[key] for key in own} == own
    assert picked["hook"] == "blocks.18.hook_resid_pre" and "config" not in picked
    make_sae("vanilla", True).save_model(run / "baseline")
    assert hub_upload.run_metrics(run / "baseline") == {
        "kind": "topk",
        "d_sae": 1234,
        "ce_loss_recovered": 0.5555,
        "kl": 7.777,
    }
    (run / "sae" / "metrics.json").write_text(json.dumps({"kl": 0.5}))
    assert hub_upload.run_metrics(run / "sae") == {"kl": 0.5}, "the folder's own file comes first"
    sweep = tmp_path / "sweep"
    make_sae().save_model(sweep / "alpha-0.1")
    (sweep / "metrics.json").write_text(json.dumps({"alpha-0.1": {"kl": 0.25}, "alpha-0.5": {"kl": 0.75}}))
    assert hub_upload.run_metrics(sweep / "alpha-0.1") == {"kl": 0.25}
    assert hub_upload.run_metrics(tmp_path / "lonely") == {}


def test_format_releases_is_a_table_with_a_header(monkeypatch):
    monkeypatch.delenv(hub.RELEASES_ENV, raising=False)
    rows = hub.list_releases()
    text = hub.format_releases(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["RELEASE", "SAE_ID", "REPO_ID", "PATH", "MODEL", "HOOK", "FORMAT"]
    assert len(lines) == len(rows) + 1
    sae_id_at = lines[0].index("SAE_ID")
    for line, row in zip(lines[1:], rows, strict=True):
        assert line.split() == [
            str(row[key]) if row[key] is not None else "-"
            for key in ("release", "sae_id", "repo_id", "path", "model", "hook", "format")
        ]
        assert line[sae_id_at:].startswith(row["sae_id"])  # columns are aligned
    custom = hub.format_releases([{"release": "r", "sae_id": "a", "hook": None}], columns=("release", "hook"))
    assert custom.splitlines() == ["RELEASE  HOOK", "r        -"]
    assert "no releases" in hub.format_releases([]).splitlines()[1]


# --------------------------------------------------------------------------- offline cache


def test_from_pretrained_by_release_name_offline_from_a_hand_built_cache(monkeypatch, tmp_path):
    cache = tmp_path / "hf-cache"
    redirect_hub(monkeypatch, UNREACHABLE, cache, offline=True)

    ours = make_sae("combined", True, seed=7)
    ours.save_model(tmp_path / "ours")
    build_cache(cache, "lab/released", folder_files(tmp_path / "ours", "l18/combined"))
    tensors = write_bae(tmp_path / "theirs" / "mixed-l18-x16-a100-b0", kind="mixed", alpha=1.0)
    build_cache(
        cache, AUTHORS_REPO, folder_files(tmp_path / "theirs" / "mixed-l18-x16-a100-b0", "mixed-l18-x16-a100-b0")
    )
    releases = write_releases(tmp_path / "releases.yaml", "lab-released", "lab/released", ["l18/combined"])
    monkeypatch.setenv(hub.RELEASES_ENV, str(releases))

    x = torch.randn(6, 8)
    with no_network():
        sae = hub.from_pretrained("lab-released", "l18/combined")
        # The packaged release of the authors' checkpoints, served from the cache.
        theirs = hub.from_pretrained(AUTHORS_RELEASE, "mixed-l18-x16-a100-b0")
    assert torch.equal(sae.encode(x), ours.encode(x))
    torch.testing.assert_close(theirs.encode(x).double(), naive_latents(x, tensors), rtol=1e-5, atol=1e-5)
    assert theirs.cfg.metadata.hook_name == "blocks.18.hook_resid_pre"
    # A file that is not cached fails fast and names it.
    with no_network(), pytest.raises(MissingWeightFileError, match="vanilla-l18-x16-a100-b0/config.json"):
        hub.from_pretrained(AUTHORS_RELEASE, "vanilla-l18-x16-a100-b0")


# --------------------------------------------------------------------------- authors' layout


BAE_CASES = [
    pytest.param("vanilla", False, id="vanilla"),
    pytest.param("ordered", False, id="ordered"),
    pytest.param("mixed", False, id="mixed"),
    pytest.param("combined", True, id="combined-biased-v1"),
    pytest.param("biased", True, id="biased-v1"),
]


@pytest.mark.parametrize(("kind", "biased"), BAE_CASES)
def test_convert_bae_and_bae_loader_match_the_naive_encoder(stand_in, tmp_path, kind, biased):
    name = hub.bae_name(kind, 18, 3, 0.29)
    src = tmp_path / name
    tensors = write_bae(src, kind=kind, biased=biased, alpha=0.29)
    x = torch.randn(3, 7, 8)
    expected = naive_latents(x, tensors)

    dst = hub.convert_bae(src, tmp_path / "converted")
    converted = SAE.load_from_disk(dst)
    torch.testing.assert_close(converted.encode(x).double(), expected, rtol=1e-5, atol=1e-5)

    stand_in.add_repo(AUTHORS_REPO, folder_files(src, name))
    direct = SAE.from_pretrained(AUTHORS_REPO, name, converter=hub.bae_loader)
    torch.testing.assert_close(direct.encode(x).double(), expected, rtol=1e-5, atol=1e-5)

    for sae in (converted, direct):
        cfg = sae.cfg
        assert cfg.variant == {"biased": "vanilla"}.get(kind, kind) and cfg.lifted == biased
        assert cfg.metadata.hook_name == "blocks.18.hook_resid_pre"
        assert cfg.metadata.model_name == "Qwen/Qwen3-0.6B-Base"
        assert cfg.metadata.training_architecture_details["alpha"] == 0.29  # exact, not the a28 of the name
        if kind in ("mixed", "combined"):
            assert cfg.bottleneck == tensors["down"].shape[0] == 16  # d_model * bottleneck factor 2, from the tensor
    if biased:  # lifted: decodes to the activation space too
        assert converted.decode(converted.encode(x)).shape == x.shape


def test_packaged_authors_release_loads_through_the_stand_in(stand_in, tmp_path):
    folder = tmp_path / "ordered-l18-x16-a10-b0"
    tensors = write_bae(folder, kind="ordered", alpha=0.1)
    stand_in.add_repo(AUTHORS_REPO, folder_files(folder, folder.name))
    sae = hub.from_pretrained(AUTHORS_RELEASE, folder.name, dtype="float64")
    x = torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(sae.encode(x), naive_latents(x, tensors), rtol=1e-10, atol=1e-10)


def test_bae_names():
    assert hub.bae_name("mixed", 18, 16, 1.0) == "mixed-l18-x16-a100-b0"
    assert hub.bae_name("mixed", 18, 16, 0.29) == "mixed-l18-x16-a28-b0"  # int() truncation, as theirs
    assert hub.bae_name("ordered", 3, 16, 0.2, tags=["checkpoint", "1024"]) == "ordered-l03-x16-a20-b0-checkpoint-1024"
    parsed = hub.parse_bae_name("mixed-l18-x16-a28-b0")
    assert (parsed.kind, parsed.layer, parsed.expansion, parsed.alpha, parsed.beta, parsed.tags) == (
        "mixed",
        18,
        16,
        0.28,
        0.0,
        (),
    )
    assert parsed.hook_name == "blocks.18.hook_resid_pre"
    assert hub.parse_bae_name("vanilla-l6-x8-a10-b5-test").tags == ("test",)  # their older, unpadded layer
    assert hub.parse_bae_name("vanilla-l6-x8-a10-b5-test").beta == 0.05
    for code in range(101):
        name = f"combined-l07-x16-a{code}-b0-repeat-3"
        assert hub.parse_bae_name(name).folder == name
    for bad in ("mixed-18-x16-a100-b0", "mixed-l18-x16-a1.5-b0", "mixed", "mixed-l18-x16-a100-b0-", "-l18-x16-a1-b0"):
        with pytest.raises(ValueError):
            hub.parse_bae_name(bad)
    for row in hub.list_releases():
        if row["release"] == AUTHORS_RELEASE:
            assert hub.parse_bae_name(row["sae_id"]).hook_name == row["hook"]


# --------------------------------------------------------------------------- releases


def test_releases_listing_and_unknown_names(monkeypatch):
    monkeypatch.delenv(hub.RELEASES_ENV, raising=False)
    assert any(path.name == "releases.yaml" for path in hub.releases_files())
    rows = [row for row in hub.list_releases() if row["release"] == AUTHORS_RELEASE]
    assert {row["sae_id"] for row in rows} >= {"mixed-l18-x16-a100-b0", "vanilla-l18-x16-a10-b0"}
    assert all(row["repo_id"] == AUTHORS_REPO and row["format"] == "bae" for row in rows)
    with pytest.raises(ReleaseNotFoundError, match=AUTHORS_RELEASE):
        hub.from_pretrained("no-such-release", "x")
    with pytest.raises(ReleaseNotFoundError, match="mixed-l18-x16-a100-b0"):
        hub.from_pretrained(AUTHORS_RELEASE, "mixed-l99-x16-a100-b0")


# --------------------------------------------------------------------------- bad files


SAELENS_BAD = {
    "missing cfg": (lambda f: (f / "cfg.json").unlink(), MissingWeightFileError, "cfg.json: file not found"),
    "missing weights": (
        lambda f: (f / "sae_weights.safetensors").unlink(),
        MissingWeightFileError,
        "sae_weights.safetensors: file not found",
    ),
    "truncated weights": (
        lambda f: truncate(f / "sae_weights.safetensors"),
        WeightFileError,
        "sae_weights.safetensors: is not a readable safetensors",
    ),
    "pickle bytes": (
        lambda f: (f / "sae_weights.safetensors").write_bytes(b"\x80\x04\x95" + b"\0" * 64),
        WeightFileError,
        "not a readable safetensors",
    ),
    "cfg not json": (lambda f: (f / "cfg.json").write_text("{d_in: 8"), WeightFileError, "cfg.json: is not valid JSON"),
    "wrong shape": (
        lambda f: edit_weights(f, lambda t: t.update(W_left=torch.zeros(24, 9))),
        WeightFileError,
        r"'W_left' has shape \[24, 9\], the config expects \[24, 8\]",
    ),
    "missing key": (
        lambda f: edit_weights(f, lambda t: t.pop("W_down")),
        WeightFileError,
        r"missing tensor\(s\) \['W_down'\]",
    ),
    "extra key": (
        lambda f: edit_weights(f, lambda t: t.update(W_enc=torch.zeros(8, 24))),
        WeightFileError,
        r"unexpected tensor\(s\) \['W_enc'\]",
    ),
    "integer tensor": (
        lambda f: edit_weights(f, lambda t: t.update(b_left=torch.zeros(24, dtype=torch.int32))),
        WeightFileError,
        "dtype I32",
    ),
    "nan weights": (
        lambda f: edit_weights(f, lambda t: t["W_right"].__setitem__((0, 0), float("nan"))),
        WeightFileError,
        "NaN or infinite",
    ),
    "unknown architecture": (
        lambda f: edit_cfg(f, architecture="standard"),
        WeightFileError,
        "architecture 'standard' is not 'bilinear'",
    ),
    "no architecture": (lambda f: edit_cfg(f, architecture=None), WeightFileError, "architecture None"),
    "unknown variant": (lambda f: edit_cfg(f, variant="spiral"), WeightFileError, "unknown bilinear variant 'spiral'"),
    "newer version": (lambda f: edit_cfg(f, bilinear_format_version=3), WeightFileError, "newer sae-bilinear"),
    "config disagrees": (lambda f: edit_cfg(f, d_sae=25), WeightFileError, r"the config expects \[25, 8\]"),
}


@pytest.mark.parametrize("case", SAELENS_BAD)
def test_bad_saelens_folder_raises_naming_the_file(tmp_path, case):
    damage, error, message = SAELENS_BAD[case]
    folder = saelens_folder(tmp_path)
    damage(folder)
    with pytest.raises(error, match=message) as raised:
        hub.load_from_disk(folder)
    assert raised.value.file.startswith(str(folder))


def test_bad_files_on_the_hub_name_the_remote_file_and_skip_the_weights(stand_in, tmp_path, monkeypatch):
    folder = saelens_folder(tmp_path)
    edit_cfg(folder, bilinear_format_version=9)
    stand_in.add_repo("lab/future", folder_files(folder, "a"))
    monkeypatch.setenv(hub.RELEASES_ENV, str(write_releases(tmp_path / "r.yaml", "future", "lab/future", ["a"])))
    with pytest.raises(WeightFileError, match=r"lab/future/a/cfg.json: was written by a newer sae-bilinear"):
        hub.from_pretrained("future", "a")
    assert not any("sae_weights" in path for _, path in stand_in.requests), "weights fetched for a refused config"

    src = tmp_path / "mixed-l18-x16-a100-b0"
    write_bae(src)
    files = folder_files(src, src.name)
    del files[f"{src.name}/model.safetensors"]
    stand_in.add_repo(AUTHORS_REPO, files)
    with pytest.raises(MissingWeightFileError, match=f"{AUTHORS_REPO}/{src.name}/model.safetensors: not found"):
        SAE.from_pretrained(AUTHORS_REPO, src.name, converter=hub.bae_loader)


def bae_bad_cases():
    def with_tensors(**changes):
        def make(folder):
            tensors = write_bae(folder)
            tensors.update(changes)
            write_bae(folder, tensors={k: v for k, v in tensors.items() if v is not None})

        return make

    return {
        "missing config": (
            lambda f: (write_bae(f), (f / "config.json").unlink()),
            MissingWeightFileError,
            "config.json: file not found",
        ),
        "missing weights": (
            lambda f: (write_bae(f), (f / "model.safetensors").unlink()),
            MissingWeightFileError,
            "model.safetensors: file not found",
        ),
        "truncated weights": (
            lambda f: (write_bae(f), truncate(f / "model.safetensors", 0.9)),
            WeightFileError,
            "model.safetensors: is not a readable safetensors",
        ),
        "unknown kind": (lambda f: write_bae(f, kind="gated"), WeightFileError, "unknown autoencoder kind 'gated'"),
        "mixed without down": (with_tensors(down=None), WeightFileError, "needs a 'down' tensor"),
        "vanilla with down": (
            lambda f: write_bae(f, kind="vanilla", tensors=write_bae(f, kind="mixed")),
            WeightFileError,
            "does not use",
        ),
        "right of another shape": (
            with_tensors(right=torch.zeros(24, 9)),
            WeightFileError,
            r"'right' has shape \[24, 9\], the config expects \[24, 8\]",
        ),
        "down of another width": (
            with_tensors(down=torch.zeros(16, 23)),
            WeightFileError,
            r"'down' has shape \[16, 23\], expected \[b, 24\]",
        ),
        "unexpected tensors": (
            with_tensors(ileft=torch.zeros(24, 8)),
            WeightFileError,
            "an authors' bilinear autoencoder has",
        ),
        "biased kind without biases": (
            lambda f: write_bae(f, kind="biased", biased=False),
            WeightFileError,
            "needs biased tensors",
        ),
        "config not json": (
            lambda f: (write_bae(f), (f / "config.json").write_text("[1, 2")),
            WeightFileError,
            "config.json: is not valid JSON",
        ),
        "alpha not a number": (
            lambda f: write_bae(f, extra_config={"alpha": "high"}),
            WeightFileError,
            "'alpha' must be a number",
        ),
        "inf weights": (with_tensors(left=torch.full((24, 8), float("inf"))), WeightFileError, "NaN or infinite"),
    }


BAE_BAD = bae_bad_cases()


@pytest.mark.filterwarnings("ignore:.*in the folder name")
@pytest.mark.parametrize("case", BAE_BAD)
def test_bad_authors_folder_raises_and_writes_nothing(tmp_path, case):
    damage, error, message = BAE_BAD[case]
    src = tmp_path / "mixed-l18-x3-a28-b0"
    damage(src)
    dst = tmp_path / "out" / "converted"
    with pytest.raises(error, match=message):
        hub.convert_bae(src, dst)
    assert not dst.exists()
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_convert_bae_refuses_to_clobber_and_replaces_atomically(tmp_path):
    src = tmp_path / "vanilla-l18-x3-a10-b0"
    tensors = write_bae(src, kind="vanilla", alpha=0.1)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        hub.convert_bae(src, dst)
    assert (dst / "keep.txt").read_text() == "mine"
    hub.convert_bae(src, dst, overwrite=True, dtype="float64", model_name="my/model")
    assert sorted(p.name for p in dst.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left behind
    sae = hub.load_from_disk(dst)
    assert sae.cfg.dtype == "float64" and sae.cfg.metadata.model_name == "my/model"
    x = torch.randn(4, 8, dtype=torch.float64)
    torch.testing.assert_close(sae.encode(x), naive_latents(x, tensors), rtol=1e-12, atol=1e-12)


def test_push_sends_the_training_mean_and_refuses_a_damaged_one(stand_in, tmp_path):
    from safetensors.torch import load as load_bytes
    from safetensors.torch import save_file

    run, _ = main_job_run(tmp_path)
    d_in = json.loads((run / "sae" / "cfg.json").read_text())["d_in"]
    mean = torch.arange(d_in, dtype=torch.float32)
    save_file({"mean": mean}, str(run / "sae" / hub_upload.TRAINING_MEAN_FILENAME), metadata={"n_tokens": "10"})
    hub.push(run / "sae", "lab/with-mean", "l18")
    pushed = load_bytes(stand_in.files("lab/with-mean")[f"l18/{hub_upload.TRAINING_MEAN_FILENAME}"])
    assert torch.equal(pushed["mean"], mean)
    save_file({"mean": torch.full((d_in,), float("nan"))}, str(run / "sae" / hub_upload.TRAINING_MEAN_FILENAME))
    with pytest.raises(WeightFileError, match="training_mean.safetensors.*NaN"):
        hub.push(run / "sae", "lab/with-mean", "l18-bad")
    save_file({"mean": torch.zeros(d_in + 1)}, str(run / "sae" / hub_upload.TRAINING_MEAN_FILENAME))
    with pytest.raises(WeightFileError, match="training_mean.safetensors"):
        hub.push(run / "sae", "lab/with-mean", "l18-bad")
    assert not any(name.startswith("l18-bad/") for name in stand_in.files("lab/with-mean"))
