"""Read config fields and constants from the package's source, without importing it.

``sae-bilinear run`` turns every field of ``MainJobConfig`` into an option, with the field's
attribute docstring as its help and its default shown. Importing ``sae_bilinear.main_job``
to read them would import torch and SAELens before parsing (seconds of ``--help``), so the
fields are read from the module's source with :mod:`ast` instead. Only what the source
states literally is read: a default is a literal, a module constant (``NAME``) or a
constant of a sibling module (``models.EMBEDDED_MODEL_NAME``); anything else is
:data:`UNRESOLVED`. ``tests/test_cli.py`` checks the result against the imported classes.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Any, NamedTuple

PACKAGE = "sae_bilinear"


class _Unresolved:
    """A default whose value the source does not state literally."""

    def __repr__(self) -> str:
        return "UNRESOLVED"


UNRESOLVED: Any = _Unresolved()


class ConfigField(NamedTuple):
    """One field of a dataclass, as its source states it."""

    name: str
    """The field's name."""
    annotation: str
    """The annotation's source text, e.g. ``"int"`` or ``"str | None"``."""
    default: Any
    """The default value, or :data:`UNRESOLVED`."""
    doc: str
    """The attribute docstring under the field, whitespace collapsed ("" if none)."""


@functools.cache
def module_tree(module: str) -> ast.Module:
    """The parsed source of ``sae_bilinear.<module>`` (found, not imported)."""
    spec = importlib.util.find_spec(f"{PACKAGE}.{module}")
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise RuntimeError(f"the source of {PACKAGE}.{module} is not installed; the CLI reads config fields from it")
    return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))


def constant(module: str, name: str) -> Any:
    """The literal value of the top-level assignment ``name = ...`` in ``sae_bilinear.<module>``."""
    for node in module_tree(module).body:
        target = node.target if isinstance(node, ast.AnnAssign) else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
        if isinstance(target, ast.Name) and target.id == name and node.value is not None:  # type: ignore[union-attr]
            return ast.literal_eval(node.value)  # type: ignore[union-attr]
    raise LookupError(f"{PACKAGE}.{module} has no top-level constant {name!r}")


def _default(module: str, node: ast.expr | None) -> Any:
    if node is None:
        return UNRESOLVED
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    try:
        if isinstance(node, ast.Name):
            return constant(module, node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            return constant(node.value.id, node.attr)
    except (LookupError, ValueError, ImportError):
        pass
    return UNRESOLVED


def dataclass_fields(module: str, class_name: str) -> list[ConfigField]:
    """The annotated fields of class ``class_name`` in ``sae_bilinear.<module>``, in order."""
    classes = [n for n in module_tree(module).body if isinstance(n, ast.ClassDef) and n.name == class_name]
    if not classes:
        raise LookupError(f"{PACKAGE}.{module} has no class {class_name!r}")
    body = classes[0].body
    fields = []
    for index, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        following = body[index + 1] if index + 1 < len(body) else None
        doc = ""
        if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
            doc = " ".join(str(following.value.value).split())
        annotation = ast.unparse(node.annotation)
        fields.append(ConfigField(node.target.id, annotation, _default(module, node.value), doc))
    return fields
