"""The package's import structure, read from the source with ``ast`` (nothing is imported).

* no import cycles among the package's modules (module-level imports);
* every module sits in one layer of :data:`LAYERS` and imports only its own layer and those
  below it; a new module must be added to the table;
* no function-level imports of our own modules, except in ``sae_bilinear/cli/`` (the CLI
  parses its arguments before it imports the heavy modules) and the lazy loader of
  ``sae_bilinear/__init__.py`` (``importlib``);
* no ``sys.path`` edits in any ``.py`` file or notebook of the repository.

``docs/architecture.md`` draws the same layers.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sae_bilinear"

LAYERS: list[tuple[str, list[str]]] = [
    ("package", ["sae_bilinear"]),  # __init__: imports nothing of ours at run time (lazy names)
    ("errors", ["errors"]),
    ("values", ["values"]),
    ("kernels", ["kernel_autograd", "kernels"]),
    ("model", ["bilinear_config", "bilinear_core", "bilinear"]),
    ("checks", ["checks"]),
    (
        "library",
        [
            "activation_store",
            "analysis",
            "atlas_scores",
            "checkpoints",
            "data",
            "evaluate",
            "hub",
            "hub.bae",
            "hub.card",
            "hub.files",
            "hub.releases",
            "hub.upload",
            "interventions",
            "manifold_walk",
            "models",
            "muon",
            "outputs",
            "qwen3_offline",
            "sae_hooks",
            "saelens_evals",
            "similarity",
            "spectra",
            "synthetic",
            "toy",
            "train",
            "train_config",
        ],
    ),
    (
        "applications",
        [
            "atlas",
            "experiment_utils",
            "hook_experiments",
            "hook_figures",
            "latent_pages",
            "loading",
            "manifold_search",
            "main_job",
            "plots",
            "report",
            "sweep",
            "sweep_member",
            "sweep_plan",
            "sweep_splice",
            "sweep_report",
        ],
    ),
    (
        "cli",
        [
            "cli",
            "cli.__main__",
            "cli.analyze",
            "cli.atlas",
            "cli.compare",
            "cli.convert_bae",
            "cli.evaluate",
            "cli.experiments",
            "cli.options",
            "cli.parser",
            "cli.paths",
            "cli.push",
            "cli.releases",
            "cli.run",
            "cli.runtime",
            "cli.sources",
            "cli.sweep",
            "cli.train",
            "cli.user_errors",
        ],
    ),
]
"""Lowest first. A module imports only modules of its own layer or of a layer below (within a
layer, without cycles). Names are relative to ``sae_bilinear`` (``hub.files`` is
``sae_bilinear.hub.files``; ``sae_bilinear`` is the package's ``__init__``)."""

KNOWN_EXCEPTIONS: dict[str, str] = {
}
"""Violations in files other branches are rewriting now: ``"<module> -> <imported> (<rule>)"``."""

LAYER_OF = {f"sae_bilinear.{name}" if name != "sae_bilinear" else name: index
            for index, (_, names) in enumerate(LAYERS) for name in names}
FUNCTION_LEVEL_ALLOWED = ("sae_bilinear.cli",)
SKIPPED_FOLDERS = {".git", "node_modules", ".venv", "venv", "build", "dist", "runs", "cache", ".ipynb_checkpoints"}


@dataclass(frozen=True)
class Import:
    target: str
    """The imported module of ours (``sae_bilinear.x``)."""
    line: int
    function_level: bool
    type_checking: bool
    """Inside ``if TYPE_CHECKING:`` (never run)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "sae_bilinear"]
    source = _resolve(node, module, is_package)
    if source.split(".")[0] != "sae_bilinear":
        return []
    # ``from sae_bilinear import analysis`` imports the module sae_bilinear.analysis.
    return [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import of our modules in ``path``, at any depth."""
    found: list[Import] = []

    def visit(node: ast.AST, function_level: bool, type_checking: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in _targets(node, module, path.name == "__init__.py", known):
                found.append(Import(target, node.lineno, function_level, type_checking))
        elif isinstance(node, ast.Call) and _dynamic_import(node):
            found.append(Import(_dynamic_import(node), node.lineno, True, type_checking))
        inner_function = function_level or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            guarded = isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body
            visit(child, inner_function, type_checking or guarded)

    visit(ast.parse(path.read_text(encoding="utf-8")), False, False)
    return found


def _dynamic_import(node: ast.Call) -> str:
    """``importlib.import_module("sae_bilinear.x")`` / ``__import__(...)``: the module, else ``""``."""
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    if name not in ("import_module", "__import__") or not node.args:
        return ""
    first = node.args[0]
    if isinstance(first, ast.Constant) and isinstance(first.value, str) and first.value.startswith("sae_bilinear"):
        return first.value
    return ""


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    modules = package_modules()
    return {module: imports_of(module, path, set(modules)) for module, path in modules.items()}


def _violations(found: list[str], rule: str) -> list[str]:
    """``found`` (of ``rule``) less the known exceptions; a stale known exception is a failure too."""
    known = [key for key in KNOWN_EXCEPTIONS if key.endswith(f"({rule})")]
    stale = [f"{key}: fixed, remove it from KNOWN_EXCEPTIONS" for key in known if key not in found]
    return [item for item in found if item not in known] + stale


def _layer(module: str) -> str:
    return LAYERS[LAYER_OF[module]][0]


# ------------------------------------------------------------------------------------------
# every module is in the table
# ------------------------------------------------------------------------------------------


def test_every_module_has_a_layer():
    modules = set(package_modules())
    missing = sorted(modules - set(LAYER_OF))
    assert not missing, (
        f"{', '.join(missing)}: not in tests/test_architecture.py's LAYERS; add each new module to the "
        "lowest layer whose modules it may import (and to docs/architecture.md's module table)"
    )
    stale = sorted(set(LAYER_OF) - modules)
    assert not stale, f"{', '.join(stale)}: listed in LAYERS but not in the package any more; remove it"


# ------------------------------------------------------------------------------------------
# (a) no cycles
# ------------------------------------------------------------------------------------------


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, ()):
                components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return components


def _is_parent(module: str, target: str) -> bool:
    # Importing sae_bilinear.hub.files runs sae_bilinear.hub first: not an edge of ours.
    return module.startswith(target + ".")


def test_no_import_cycles(graph):
    edges = {
        module: {i.target for i in imports if not (i.function_level or i.type_checking or _is_parent(module, i.target))}
        for module, imports in graph.items()
    }
    cycles = _cycles(edges)
    assert not cycles, "module-level import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# ------------------------------------------------------------------------------------------
# (b) layers
# ------------------------------------------------------------------------------------------


def test_imports_point_down_the_layers(graph):
    found = sorted(
        {
            f"{module} -> {item.target} (upward)"
            for module, imports in graph.items()
            if module in LAYER_OF and module != "sae_bilinear"  # its TYPE_CHECKING imports name the public API
            for item in imports
            if item.target in LAYER_OF and LAYER_OF[item.target] > LAYER_OF[module]
        }
    )
    explained = [
        f"{v}: {_layer(v.split(' -> ')[0])!r} is below {_layer(v.split(' -> ')[1].split(' (')[0])!r}"
        if " -> " in v and ": fixed" not in v else v
        for v in _violations(found, "upward")
    ]
    assert not explained, "upward imports (a module imports its own layer and those below):\n" + "\n".join(explained)


# ------------------------------------------------------------------------------------------
# (c) no function-level imports of our modules
# ------------------------------------------------------------------------------------------


def test_no_function_level_imports_of_our_modules(graph):
    found = []
    for module, imports in graph.items():
        if module == "sae_bilinear" or module.startswith(FUNCTION_LEVEL_ALLOWED):
            continue  # the lazy loader; the CLI imports heavy modules after parsing
        found += [f"{module} -> {i.target} (function-level)" for i in imports if i.function_level]
    violations = _violations(sorted(set(found)), "function-level")
    assert not violations, (
        "function-level imports of sae_bilinear modules (import at the top of the module; only "
        "sae_bilinear/cli/ may defer them):\n" + "\n".join(violations)
    )


# ------------------------------------------------------------------------------------------
# (d) no sys.path edits
# ------------------------------------------------------------------------------------------


def repository_sources() -> Iterator[tuple[Path, str]]:
    """``(file, python source)`` of every ``.py`` file and notebook code cell of the repository."""
    for path in sorted(ROOT.rglob("*")):
        if SKIPPED_FOLDERS & set(path.relative_to(ROOT).parts) or not path.is_file():
            continue
        if path.suffix == ".py":
            yield path, path.read_text(encoding="utf-8")
        elif path.suffix == ".ipynb":
            cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
            for cell in cells:
                if cell.get("cell_type") == "code":
                    lines = "".join(cell.get("source", [])).splitlines()
                    # IPython magics and shell lines are not Python.
                    yield path, "\n".join(line for line in lines if not line.lstrip().startswith(("%", "!")))


def _is_sys_path(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys"


def sys_path_edits(source: str) -> list[int]:
    """Lines that change ``sys.path`` (``insert``/``append``/``extend``/``remove``, assignment,
    item assignment) or call ``site.addsitedir``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            edits_path = _is_sys_path(node.func.value) and node.func.attr in ("insert", "append", "extend", "remove")
            adds_site = node.func.attr == "addsitedir"
            if edits_path or adds_site:
                lines.append(node.lineno)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if _is_sys_path(target) or (isinstance(target, ast.Subscript) and _is_sys_path(target.value)):
                    lines.append(node.lineno)
    return sorted(lines)


def test_no_sys_path_edits():
    found = [
        f"{path.relative_to(ROOT)}:{line}" for path, source in repository_sources() for line in sys_path_edits(source)
    ]
    assert not found, (
        "sys.path edits (import the package normally; tests share code through conftest.py and helpers): "
        + ", ".join(found)
    )


def test_the_sys_path_finder_finds_edits():
    assert sys_path_edits("import sys\nsys.path.insert(0, 'x')\nsys.path += ['y']\nsys.path[0] = 'z'\n") == [2, 3, 4]
    assert sys_path_edits("import sys, os\nprint(os.pathsep.join(sys.path))\n") == []


# ------------------------------------------------------------------------------------------
# names that moved still import from where they did
# ------------------------------------------------------------------------------------------

MOVED = {
    # old home: (new home, names)
    "sae_bilinear.checks": ("sae_bilinear.values", [
        "check_bool", "check_choice", "check_finite_float", "check_finite_result", "check_finite_tensor", "check_int",
    ]),
    "sae_bilinear.train": ("sae_bilinear.train_config", [
        "OPTIMIZERS", "SAE_BILINEAR_KEYS", "check_train_config_keys", "expand_config", "read_config_file",
        "runner_config_from_dict", "set_dotted",
    ]),
    "sae_bilinear.interventions": ("sae_bilinear.manifold_walk", [
        "LatentEigen", "WalkHook", "WalkResult", "latent_eigenvectors", "walk_hook", "walk_manifold",
    ]),
    "sae_bilinear.evaluate": ("sae_bilinear.checks", ["check_tokens", "is_bilinear"]),
}


@pytest.mark.parametrize("old", sorted(MOVED))
def test_moved_names_still_import_from_where_they_did(old):
    import importlib

    new, names = MOVED[old]
    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(old_module, name) is getattr(new_module, name), f"{old}.{name}"
    hooks = importlib.import_module("sae_bilinear.sae_hooks")
    interventions = importlib.import_module("sae_bilinear.interventions")
    for name in ("SAEHook", "latent_direction", "latent_directions", "latent_contribution", "HookFn", "Positions"):
        assert getattr(interventions, name) is getattr(hooks, name), f"sae_bilinear.interventions.{name}"
    errors, checks = importlib.import_module("sae_bilinear.errors"), importlib.import_module("sae_bilinear.checks")
    for name in ("ConfigTypeError", "IndexRangeError", "MissingFileError", "NonFiniteResultError"):
        assert getattr(checks, name) is getattr(errors, name), f"sae_bilinear.checks.{name}"
