"""What a sweep is: its members, and the groups of members that share one model pass.

A sweep file is the ``base:`` + ``sweep:`` YAML that ``sae-bilinear train`` already reads
(:func:`sae_bilinear.train_config.expand_config`): a SAELens runner config and, for each dotted key,
a list of values; the members are the product of the lists. Members whose activations are
identical — same model, hook, data, context, BOS handling, token budget and dtype — form a
*group*: the language model runs once per group, and every member of the group trains on
the stored activations (:mod:`sae_bilinear.sweep`).

This module only reads and checks files.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sae_bilinear import errors
from sae_bilinear.train_config import expand_config, read_config_file

ACTIVATION_KEYS = (
    "model_name",
    "model_class_name",
    "hook_name",
    "hook_head_index",
    "dataset_path",
    "is_dataset_tokenized",
    "context_size",
    "prepend_bos",
    "exclude_special_tokens",
    "seqpos_slice",
    "training_tokens",
    "dtype",
    "model_from_pretrained_kwargs",
    "seed",
)
"""Runner-config keys that determine a member's activations; members equal on all share a pass."""

_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]*$")

_SAELENS_DEFAULTS: dict[str, Any] = {
    "model_class_name": "HookedTransformer",
    "hook_head_index": None,
    "is_dataset_tokenized": True,
    "context_size": 128,
    "prepend_bos": True,
    "exclude_special_tokens": False,
    "seqpos_slice": (None,),
    "training_tokens": 2_000_000,
    "dtype": "float32",
    "model_from_pretrained_kwargs": None,
    "seed": 42,
}
"""SAELens 6.54's defaults for the activation keys, so an omitted key and its default group together."""


@dataclass(frozen=True)
class Resources:
    """What one member asks the cluster for (Ray places members by these)."""

    num_cpus: float = 1.0
    """CPU cores per member."""
    num_gpus: float = 0.0
    """GPUs per member (fractions share a GPU, e.g. 0.25 puts four members on one)."""
    memory_gb: float | None = None
    """Host memory per member in GiB (None: no reservation)."""


@dataclass(frozen=True)
class Member:
    """One SAE of the sweep."""

    name: str
    """Folder name under the sweep's output folder (from the swept values, e.g. ``mixed-a10``)."""
    config: dict[str, Any]
    """Its SAELens runner config mapping (the ``train`` form, ``sae_bilinear:`` section included)."""
    group: str
    """Key of the activation group it trains on."""


@dataclass(frozen=True)
class Group:
    """Members that train on the same activations."""

    key: str
    """Short content hash of :attr:`settings`."""
    settings: dict[str, Any]
    """The activation-determining settings (``ACTIVATION_KEYS``)."""
    members: tuple[str, ...]
    """Names of the members in this group."""


@dataclass
class SweepPlan:
    """A sweep file, expanded and grouped."""

    source: Path
    """The sweep file."""
    members: list[Member]
    """Every member, in the order of the file's product."""
    groups: dict[str, Group] = field(default_factory=dict)
    """Activation groups by key."""

    def member(self, name: str) -> Member:
        """The member called ``name``."""
        for member in self.members:
            if member.name == name:
                return member
        raise errors.ConfigError(f"the sweep has no member {name!r}; members: {[m.name for m in self.members]}")


def activation_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``config`` that determine its activations, SAELens's defaults filled in."""
    settings = {}
    for key in ACTIVATION_KEYS:
        value = config.get(key, _SAELENS_DEFAULTS.get(key))
        settings[key] = list(value) if isinstance(value, tuple) else value
    if not settings.get("model_name"):
        raise errors.ConfigError("the sweep's base config needs 'model_name'")
    if not settings.get("hook_name"):
        raise errors.ConfigError("the sweep's base config needs 'hook_name'")
    return settings


def settings_key(settings: dict[str, Any]) -> str:
    """A short, stable content hash of activation settings (same settings, same key)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_sweep(path: str | Path) -> SweepPlan:
    """Expand a sweep (or single-run) config file into members grouped by shared activations."""
    path = Path(path)
    runs = expand_config(path)
    members: list[Member] = []
    groups: dict[str, list[str]] = {}
    settings_of: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for name, config in runs:
        if not _MEMBER_NAME.match(name):
            raise errors.ConfigError(f"{path}: member name {name!r} is not a safe folder name")
        if name in seen:
            raise errors.ConfigError(f"{path}: two members are both called {name!r}; make the swept values distinct")
        seen.add(name)
        settings = activation_settings(config)
        key = settings_key(settings)
        settings_of[key] = settings
        groups.setdefault(key, []).append(name)
        members.append(Member(name=name, config=config, group=key))
    plan = SweepPlan(source=path, members=members)
    plan.groups = {
        key: Group(key=key, settings=settings_of[key], members=tuple(names)) for key, names in groups.items()
    }
    return plan


def default_out(path: str | Path) -> Path:
    """A sweep's output folder when none is given: its ``output_root``, else ``runs/sweep-<stem>``."""
    path = Path(path)
    root = read_config_file(path).get("output_root")
    return Path(root) if root else Path("runs") / f"sweep-{path.stem}"
