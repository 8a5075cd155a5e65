"""Make SAELens know the ``"bilinear"`` architecture in every process, without ``import sae_bilinear``.

SAELens has no plugin entry points: it finds an architecture in a dict that the plugin must
fill, so ``SAE.load_from_disk`` of a bilinear SAE in a process that never imported
``sae_bilinear`` (``python -m sae_lens...``, a notebook, a third-party tool) failed with
``KeyError: 'bilinear'``. The package therefore installs ``sae_bilinear_autoregister.pth`` in
site-packages; at interpreter start-up it calls :func:`install`, which only puts
:class:`SaeLensImportHook` on ``sys.meta_path`` — stdlib only, no torch, no SAELens, so a
process that never uses SAELens pays nothing. When ``sae_lens`` is first imported, the hook
lets that import run unchanged and, once ``sae_lens`` is fully loaded, imports
:mod:`sae_bilinear.bilinear`, whose import registers the architecture.

* ``SAE_BILINEAR_NO_AUTOREGISTER=1`` turns the start-up hook off (``import sae_bilinear``
  still registers, as it always did).
* A failure to register is a warning, never an error: it must not break ``import sae_lens``
  for everyone else in the environment.
* If ``sae_lens`` is first imported by one of our own modules while it is half-initialised
  (e.g. ``import sae_bilinear.bilinear_core`` in a fresh process), importing the model then
  would find that module half-made; registration waits until our outermost module has
  finished importing (the hook also watches our own modules' imports for that).

This is a top-level module, not part of the package, so that the ``.pth`` line does not import
``sae_bilinear`` (whose import installs the hook whatever the environment variable says). It
imports only the standard library and nothing of ours (it must stay cheap and must not create
import cycles): it names :mod:`sae_bilinear.bilinear` as a string.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (2-3 ms at every start-up)
if TYPE_CHECKING:  # annotations only: start-up imports stay at os and sys (already loaded)
    from collections.abc import Callable, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

ENV_VAR = "SAE_BILINEAR_NO_AUTOREGISTER"
"""Set to 1 (any value but empty or 0) to turn the start-up hook off."""
PTH_FILENAME = "sae_bilinear_autoregister.pth"
"""The file in site-packages that calls :func:`install` at start-up."""
_HOST = "sae_lens"
_PACKAGE = "sae_bilinear"
_MODEL = "sae_bilinear.bilinear"


def disabled() -> bool:
    """Whether ``SAE_BILINEAR_NO_AUTOREGISTER`` turns the start-up hook off."""
    return os.environ.get(ENV_VAR, "").strip() not in ("", "0")


def install() -> None:
    """Start-up entry point (the ``.pth`` file): :func:`ensure_registration`, unless turned off."""
    if not disabled():
        ensure_registration()


def ensure_registration() -> None:
    """Register ``"bilinear"`` now if ``sae_lens`` is loaded, else as soon as it is. Idempotent."""
    if _HOST in sys.modules and not _initializing(_HOST):
        _register_when_possible()
    elif not any(isinstance(finder, SaeLensImportHook) for finder in sys.meta_path):
        # First, so that no other finder answers for sae_lens before the hook has seen it.
        sys.meta_path.insert(0, SaeLensImportHook())


class SaeLensImportHook:
    """A meta path finder (``find_spec`` is all the import system asks of one) that finds
    nothing itself: it asks the other finders, and has the loaders it gets back for
    ``sae_lens`` (and, until registration is done, for our own modules) register
    ``"bilinear"`` after the module has executed."""

    def __init__(self) -> None:
        self.pending = False
        """sae_lens is loaded but registration waits for one of our modules to finish."""
        self.done = False

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        ours = fullname.startswith(_PACKAGE + ".")
        if self.done or not (fullname == _HOST or ours):
            return None
        spec = _find_with_others(self, fullname, path, target)
        if spec is not None:
            _run_after_exec(spec, lambda: self._after(fullname))
        return spec

    def _after(self, fullname: str) -> None:
        """``fullname`` has just executed (it is still marked as initialising)."""
        if fullname == _HOST:
            self.pending = True
        if not self.pending or _registration_blocked(except_name=fullname):
            return  # the blocking module's own completion tries again
        self.pending = False
        self.done = True  # from now on find_spec is a no-op (left in place: removing a
        # finder while an outer import may be iterating sys.meta_path is not safe)
        _register()


def _find_with_others(
    hook: SaeLensImportHook, fullname: str, path: Sequence[str] | None, target: ModuleType | None
) -> ModuleSpec | None:
    """The spec the remaining finders give (the import system iterates sys.meta_path itself, so
    the hook must not remove itself during the search)."""
    for finder in list(sys.meta_path):
        find = getattr(finder, "find_spec", None)
        if finder is hook or find is None:
            continue
        spec = find(fullname, path, target)
        if spec is not None:
            return spec
    return None


def _run_after_exec(spec: ModuleSpec, then: Callable[[], None]) -> None:
    """Have ``spec``'s loader call ``then()`` after executing the module (this loader instance only)."""
    loader = spec.loader
    execute = getattr(loader, "exec_module", None)
    if loader is None or execute is None or isinstance(loader, type):
        return  # a class-level loader (builtin/frozen) is shared: never patch it

    def exec_module(module: ModuleType) -> None:
        execute(module)
        then()

    try:
        loader.exec_module = exec_module  # type: ignore[method-assign]
    except (AttributeError, TypeError):
        return


def _initializing(name: str) -> bool:
    module = sys.modules.get(name)
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _registration_blocked(except_name: str = "") -> bool:
    """One of our submodules (other than ``except_name``, which has just finished executing) is
    half-imported: the model's imports may need it whole."""
    return any(
        name.startswith(_PACKAGE + ".") and name != except_name and _initializing(name) for name in list(sys.modules)
    )


def _register_when_possible() -> None:
    if not _registration_blocked():
        _register()
        return
    hooks = [finder for finder in sys.meta_path if isinstance(finder, SaeLensImportHook)]
    if not hooks:
        hooks = [SaeLensImportHook()]
        sys.meta_path.insert(0, hooks[0])
    hooks[0].pending, hooks[0].done = True, False


def _register() -> None:
    import importlib
    import warnings

    try:
        # The model module registers the architecture when it is imported (idempotent).
        importlib.import_module(_MODEL)
    except Exception as error:  # never break `import sae_lens` for the rest of the environment
        warnings.warn(
            f"sae-bilinear could not register the 'bilinear' SAE architecture with SAELens "
            f"({type(error).__name__}: {error}); `import {_MODEL}` shows the full error. "
            f"Set {ENV_VAR}=1 to stop trying at start-up.",
            RuntimeWarning,
            stacklevel=2,
        )
