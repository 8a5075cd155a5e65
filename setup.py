"""Build step that ships ``sae_bilinear_autoregister.pth`` at the top of site-packages.

Everything else about the package is declared in ``pyproject.toml``. A ``.pth`` file only
runs from the root of a site directory, which neither ``package-data`` (inside the package)
nor ``data-files`` (relative to the install prefix) reaches; ``build_py`` puts it beside the
packages in the build folder, which becomes the wheel's root. An editable install builds no
package files: setuptools (>= 64) then points ``install_lib`` at the root of the editable
wheel it is making, and the file goes there. See ``sae_bilinear_autoregister.py`` for what the line does and how to turn
it off.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "sae_bilinear_autoregister.pth"


class BuildPyWithPth(build_py):
    """``build_py`` that also copies the start-up ``.pth`` file to the root of the build."""

    def run(self) -> None:
        super().run()
        self.copy_file(str(Path(__file__).parent / PTH), str(self._pth_target()), preserve_mode=False)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        return outputs if self._editable() else [*outputs, str(self._pth_target())]

    def _editable(self) -> bool:
        return bool(getattr(self, "editable_mode", False))

    def _pth_target(self) -> Path:
        install: Any = self.get_finalized_command("install")  # setuptools' install command (untyped here)
        root = install.install_lib if self._editable() else self.build_lib
        return Path(root) / PTH


setup(cmdclass={"build_py": BuildPyWithPth})
