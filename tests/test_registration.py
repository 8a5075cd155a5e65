"""Registration of "bilinear" with SAELens without `import sae_bilinear` (issue 14 §2), in fresh processes.

The ``.pth`` file is exercised through ``site.addsitedir`` on a folder holding a copy of it:
the same code path as site-packages at start-up, with this checkout on ``PYTHONPATH``.
Subprocesses that import SAELens take seconds, so they are marked slow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sae_bilinear
import sae_bilinear_autoregister
from sae_bilinear import BilinearSAE, BilinearSAEConfig

ROOT = Path(__file__).resolve().parents[1]
PTH = ROOT / sae_bilinear_autoregister.PTH_FILENAME


def python(code: str, *, site_dir: Path | None = None, path: list[Path] | None = None, **env: str):
    """Run ``code`` in a fresh interpreter with this checkout importable (and the .pth of ``site_dir``)."""
    prelude = "" if site_dir is None else f"import site; site.addsitedir({str(site_dir)!r})\n"
    environment = {k: v for k, v in os.environ.items() if k != sae_bilinear_autoregister.ENV_VAR}
    environment["PYTHONPATH"] = os.pathsep.join(str(p) for p in [*(path or []), ROOT])
    environment.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **env)
    # Run from tests/: the checkout root as the working folder would shadow the fake package below.
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True, text=True, env=environment, timeout=600, cwd=Path(__file__).parent,
    )  # fmt: skip


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("site")
    shutil.copy(PTH, folder / PTH.name)
    return folder


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sae")
    BilinearSAE(BilinearSAEConfig(d_in=4, d_sae=8, lifted=True, variant="mixed")).save_model(folder)
    return folder


def test_the_pth_line_imports_only_the_hook(site_dir):
    assert PTH.read_text().strip().startswith("import ") and "import sae_bilinear_autoregister" in PTH.read_text()
    names = ("torch", "sae_lens", "sae_bilinear", "sae_bilinear_autoregister")
    out = python(f"import sys; print(sorted(m for m in {names!r} if m in sys.modules))", site_dir=site_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['sae_bilinear_autoregister']"  # no torch, no SAELens, no package


def test_the_pth_line_is_silent_when_the_module_is_gone(site_dir, tmp_path):
    # A stale .pth (package removed, editable checkout moved) must not print a traceback at every start-up.
    code = (
        f"import site; site.addsitedir({str(site_dir)!r}); import sys; "
        "print('sae_bilinear_autoregister' in sys.modules)"
    )
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", sae_bilinear_autoregister.ENV_VAR)}
    out = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, env=environment, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False" and "Error processing" not in out.stderr and "Traceback" not in out.stderr


def test_importing_the_package_is_cheap_and_every_public_name_resolves():
    out = python(
        """
        import sys
        import sae_bilinear
        print(sorted(m for m in ('torch', 'sae_lens', 'sae_bilinear.bilinear') if m in sys.modules))
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert sorted(sae_bilinear.__all__) == sorted(sae_bilinear._PUBLIC)
    for name in sae_bilinear.__all__:
        assert getattr(sae_bilinear, name) is not None and name in dir(sae_bilinear)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = sae_bilinear.nope
    # Submodules resolve as attributes too, as when the package imported them eagerly.
    assert sae_bilinear.kernels.VARIANTS == ("vanilla", "ordered", "mixed", "combined")
    assert callable(sae_bilinear.train.train_on_activations)


@pytest.mark.parametrize("value,off", [("", False), ("0", False), ("1", True), ("yes", True)])
def test_the_environment_variable_turns_the_hook_off(monkeypatch, value, off):
    monkeypatch.setenv(sae_bilinear_autoregister.ENV_VAR, value)
    assert sae_bilinear_autoregister.disabled() is off


@pytest.mark.slow
def test_load_from_disk_in_a_process_that_never_imported_sae_bilinear(site_dir, sae_dir):
    out = python(
        f"""
        import sys
        from sae_lens import SAE
        from sae_lens.saes.sae import TrainingSAE
        sae = SAE.load_from_disk({str(sae_dir)!r})
        training = TrainingSAE.load_from_disk({str(sae_dir)!r})
        print(type(sae).__name__, type(training).__name__, sae.cfg.variant)
        """,
        site_dir=site_dir,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["BilinearSAE", "BilinearTrainingSAE", "mixed"]
    assert "could not register" not in out.stderr
    # Turned off: SAELens's own error, as before the hook existed.
    off = python(
        f"from sae_lens import SAE; SAE.load_from_disk({str(sae_dir)!r})",
        site_dir=site_dir,
        **{sae_bilinear_autoregister.ENV_VAR: "1"},
    )
    assert off.returncode != 0 and "KeyError: 'bilinear'" in off.stderr


@pytest.mark.slow
def test_import_sae_bilinear_then_sae_lens_still_works_with_the_hook_off(sae_dir):
    out = python(
        f"""
        import sae_bilinear
        from sae_lens import SAE
        print(type(SAE.load_from_disk({str(sae_dir)!r})).__name__)
        """,
        **{sae_bilinear_autoregister.ENV_VAR: "1"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "BilinearSAE"


@pytest.mark.slow
def test_sae_lens_first_then_sae_bilinear_registers_at_once():
    out = python(
        """
        import sae_lens
        from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY
        assert "bilinear" not in SAE_CLASS_REGISTRY
        import sae_bilinear
        print("bilinear" in SAE_CLASS_REGISTRY, "bilinear" in SAE_TRAINING_CLASS_REGISTRY)
        """,
        # with the package installed, its .pth would register on `import sae_lens` already
        **{sae_bilinear_autoregister.ENV_VAR: "1"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "first", ["sae_bilinear.bilinear_core", "sae_bilinear.bilinear_config", "sae_bilinear.bilinear"]
)
def test_sae_lens_pulled_in_by_a_half_imported_module_of_ours_still_registers(site_dir, first):
    out = python(
        f"""
        import warnings
        warnings.simplefilter("error", RuntimeWarning)
        import {first}
        from sae_lens.registry import SAE_CLASS_REGISTRY
        print("bilinear" in SAE_CLASS_REGISTRY)
        """,
        site_dir=site_dir,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


@pytest.mark.slow
def test_a_failing_registration_warns_and_never_breaks_import_sae_lens(site_dir, tmp_path):
    fake = tmp_path / "fake"
    (fake / "sae_bilinear").mkdir(parents=True)
    (fake / "sae_bilinear" / "__init__.py").write_text("")
    (fake / "sae_bilinear" / "bilinear.py").write_text("raise RuntimeError('broken install')\n")
    out = python(
        """
        import warnings
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import sae_lens
        print(sae_lens.__name__)
        print([str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)])
        """,
        site_dir=site_dir,
        path=[fake],
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "sae_lens"
    assert "could not register the 'bilinear'" in out.stdout and "broken install" in out.stdout
    assert "SAE_BILINEAR_NO_AUTOREGISTER" in out.stdout  # the message says how to silence it


def _installed_pth() -> Path | None:
    import site

    for folder in [*site.getsitepackages(), site.getusersitepackages()]:
        candidate = Path(folder) / sae_bilinear_autoregister.PTH_FILENAME
        if candidate.exists():
            return candidate
    return None


@pytest.mark.slow
@pytest.mark.skipif(_installed_pth() is None, reason="installed without its .pth (an install from before it existed)")
def test_the_installed_pth_registers_in_a_plain_process(sae_dir):
    out = python(f"from sae_lens import SAE; print(type(SAE.load_from_disk({str(sae_dir)!r})).__name__)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "BilinearSAE"
