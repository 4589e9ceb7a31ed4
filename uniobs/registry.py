"""Plugin discovery through entry points: `uniobs.collectors`, `uniobs.exporters`, `uniobs.parsers`,
`uniobs.runtimes`.

Built-in plugins are declared in uniobs' own pyproject.toml exactly as a third-party package
declares its own, so both are found, loaded and checked the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, TypeVar

from uniobs.plugin import Collector, ConsoleParser, Exporter, Runtime, StreamingCollector

GROUPS: dict[str, tuple[type, ...]] = {
    "uniobs.collectors": (Collector, StreamingCollector),
    "uniobs.exporters": (Exporter,),
    "uniobs.parsers": (ConsoleParser,),
    "uniobs.runtimes": (Runtime,),
}

P = TypeVar("P")


class PluginError(Exception):
    """A plugin could not be loaded or does not satisfy its contract."""


@dataclass(frozen=True)
class PluginInfo(Generic[P]):
    name: str
    group: str
    plugin: type[P]
    distribution: str  # the package it came from
    version: str
    value: str  # "module:attr"


def _distribution_of(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ("?", "?")
    return (dist.metadata["Name"] or "?", dist.version or "?")


def load_group(group: str, entry_points: Iterable[metadata.EntryPoint] | None = None) -> dict[str, PluginInfo[Any]]:
    """Load every plugin of a group, checking its type. Errors name the group and entry point."""
    if group not in GROUPS:
        raise PluginError(f"unknown plugin group {group!r}")
    bases = GROUPS[group]
    eps = metadata.entry_points(group=group) if entry_points is None else entry_points
    found: dict[str, PluginInfo[Any]] = {}
    for ep in eps:
        where = f"entry point {ep.name!r} = {ep.value!r} in group {group!r}"
        try:
            obj = ep.load()
        except Exception as exc:
            raise PluginError(f"{where}: cannot be loaded: {type(exc).__name__}: {exc}") from exc
        if not (isinstance(obj, type) and issubclass(obj, bases)):
            names = " or ".join(b.__name__ for b in bases)
            raise PluginError(f"{where}: {obj!r} is not a subclass of {names}")
        declared = getattr(obj, "family" if group == "uniobs.parsers" else "name", None)
        if declared != ep.name:
            raise PluginError(f"{where}: the class declares name {declared!r}; it must equal the entry point name")
        if ep.name in found:
            other = found[ep.name]
            raise PluginError(f"{where}: name {ep.name!r} is already taken by {other.value} ({other.distribution})")
        dist, version = _distribution_of(ep)
        found[ep.name] = PluginInfo(ep.name, group, obj, dist, version, ep.value)
    return found


class Registry:
    """All installed plugins, loaded once. Pass `entry_points` to load a chosen set (tests)."""

    def __init__(self, entry_points: dict[str, list[metadata.EntryPoint]] | None = None) -> None:
        def eps(group: str) -> Iterable[metadata.EntryPoint] | None:
            return None if entry_points is None else entry_points.get(group, [])

        self.collectors = load_group("uniobs.collectors", eps("uniobs.collectors"))
        self.exporters = load_group("uniobs.exporters", eps("uniobs.exporters"))
        self.parsers = load_group("uniobs.parsers", eps("uniobs.parsers"))
        self.runtimes = load_group("uniobs.runtimes", eps("uniobs.runtimes"))

    def all(self) -> list[PluginInfo[Any]]:
        return [*self.collectors.values(), *self.exporters.values(), *self.parsers.values(), *self.runtimes.values()]

    def exporter(self, name: str) -> PluginInfo[Any]:
        try:
            return self.exporters[name]
        except KeyError:
            known = ", ".join(sorted(self.exporters)) or "none"
            raise PluginError(f"unknown exporter {name!r} (installed: {known})") from None
