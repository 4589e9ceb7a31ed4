"""Configuration: a TOML file, overridden by the environment, overridden by command-line flags.

    [uniobs]                    # the core
    interval = 10               # default seconds between scrapes
    export = ["console", "file:telemetry.jsonl"]

    [collectors.process]        # one table per plugin, keys are its config dataclass' fields
    interval = 5

    [exporters.otlp]
    endpoint = "https://collector.example:4317"
    headers = { "api-key" = "..." }

Any key can also be set as `UNIOBS__<SECTION>__<PLUGIN>__<KEY>=<TOML value>`, e.g.
`UNIOBS__COLLECTORS__PROCESS__INTERVAL=5` or `UNIOBS__UNIOBS__INTERVAL=2`. The OpenTelemetry
exporters also honour the standard `OTEL_EXPORTER_OTLP_*` variables themselves.

Unknown keys and values of the wrong type fail at start with one line naming the file, the
plugin and the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from uniobs.plugin import PluginConfig

C = TypeVar("C", bound=PluginConfig)

ENV_PREFIX = "UNIOBS__"


class ConfigError(Exception):
    """A configuration problem; str() is one line naming where and what."""


@dataclass(frozen=True)
class CoreConfig(PluginConfig):
    # Seconds between scrapes for collectors that set none (`run`/`attach --interval` overrides
    # it). Unset: the command's default, 10 s for the agent, 1 s for `run` and `attach`.
    interval: float | None = None
    export: tuple[str, ...] = ()  # exporter specs, as for --export
    export_interval: float = 10.0  # seconds between exports of accumulated telemetry
    # Memory held for export, in bytes, shared by every exporter: log records, spans and data points
    # waiting to be delivered (a batch two exporters take counts once). Past it the oldest is
    # dropped, counted in uniobs.exporter.items{outcome="dropped"}. See docs/configuration.md.
    buffer_bytes: int = 32 << 20
    export_batch_size: int = 512  # log records or spans per export request
    retry_initial: float = 1.0  # seconds before retrying a retryable failure; doubles each time (0: no retry)
    retry_max: float = 30.0  # the longest back-off between retries
    service_name: str = ""  # uniobs' own resource; OTEL_SERVICE_NAME when empty, then "uniobs"

    def validate(self) -> None:
        if (self.interval is not None and self.interval <= 0) or self.export_interval <= 0:
            raise ValueError("interval: must be > 0 seconds")
        if self.buffer_bytes < 1 << 20:
            raise ValueError("buffer_bytes: must be >= 1048576 (1 MiB)")
        if not 1 <= self.export_batch_size <= 100_000:
            raise ValueError("export_batch_size: must be between 1 and 100000")
        if self.retry_initial < 0 or self.retry_max < 0:
            raise ValueError("retry_initial, retry_max: must be >= 0 seconds")


@dataclass
class Settings:
    """The whole configuration, validated, before plugins are built."""

    source: str = "<defaults>"
    core: CoreConfig = field(default_factory=CoreConfig)
    collectors: dict[str, dict[str, Any]] = field(default_factory=dict)  # raw tables, checked later
    exporters: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, dict[str, Any]] = field(default_factory=dict)  # tables a command owns, e.g. [agent]

    def collector_config(self, name: str, cls: type[C]) -> C:
        return build(cls, self.collectors.get(name, {}), f"{self.source}: [collectors.{name}]")

    def exporter_config(self, name: str, cls: type[C]) -> C:
        return build(cls, self.exporters.get(name, {}), f"{self.source}: [exporters.{name}]")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check(value: Any, hint: Any, where: str) -> Any:
    """Check (and lightly coerce) one TOML value against a dataclass field's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        if isinstance(value, list | tuple):
            return tuple(_check(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    elif origin is dict:
        if isinstance(value, Mapping):
            return {_check(k, args[0], f"{where} key"): _check(v, args[1], f"{where}.{k}") for k, v in value.items()}
    elif isinstance(hint, type) and issubclass(hint, str):  # a StrEnum
        if isinstance(value, str):
            try:
                return hint(value)
            except ValueError:
                pass
    else:
        raise ConfigError(f"{where}: unsupported field type {hint!r}")
    raise ConfigError(f"{where}: expected {_type_name(hint)}, got {type(value).__name__} {value!r}")


def build(cls: type[C], table: Mapping[str, Any], where: str) -> C:
    """Build a plugin's config dataclass from a table: unknown keys and wrong types are fatal."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key {key!r} (known keys: {known})")
        kwargs[key] = _check(value, hints[key], f"{where} {key}")
    config = cls(**kwargs)
    try:
        config.validate()
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return config


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if len(path) == 3 and path[0] != "uniobs":
            path[1] = path[1].replace("_", "-")  # plugin names use dashes: OTLP_HTTP -> otlp-http
        if not all(path):
            raise ConfigError(f"environment {name}: empty path element")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare string
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment {name}: conflicts with another variable")
        node[path[-1]] = value
    return tree


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def load(
    path: str | os.PathLike[str] | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    extra_tables: tuple[str, ...] = (),
) -> Settings:
    """Read the TOML file (if any), apply environment and flag overrides, check the core table.

    Plugin tables are checked when the plugins are built (`Settings.collector_config`), but
    tables naming no installed plugin are refused by `check_plugin_names`.
    """
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: no such file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{source}: cannot read: {exc}") from None
    raw = _merge(raw, _env_overrides(os.environ if environ is None else environ))
    if overrides:
        raw = _merge(raw, {"uniobs": dict(overrides)})
    known = ("uniobs", "collectors", "exporters", *extra_tables)
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown table [{key}] (known: {', '.join(known)})")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: [{key}] must be a table")
    settings = Settings(source=source)
    settings.extra = {key: dict(raw[key]) for key in extra_tables if key in raw}
    settings.core = build(CoreConfig, raw.get("uniobs", {}), f"{source}: [uniobs]")
    for section in ("collectors", "exporters"):
        tables = raw.get(section, {})
        for name, table in tables.items():
            if not isinstance(table, Mapping):
                raise ConfigError(f"{source}: [{section}.{name}] must be a table")
        setattr(settings, section, {name: dict(table) for name, table in tables.items()})
    return settings


def check_plugin_names(settings: Settings, collectors: set[str], exporters: set[str]) -> None:
    for section, known in (("collectors", collectors), ("exporters", exporters)):
        for name in getattr(settings, section):
            if name not in known:
                names = ", ".join(sorted(known)) or "none"
                raise ConfigError(
                    f"{settings.source}: [{section}.{name}]: no such plugin is installed (installed: {names})"
                )
