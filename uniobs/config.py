"""Configuration: defaults < the standard OTEL_* variables < a TOML file < UNIOBS__* variables < flags.

    [uniobs]                    # the core
    interval = 10               # default seconds between scrapes
    export = ["console", "file:telemetry.jsonl"]

    [collectors.process]        # one table per plugin, keys are its config dataclass' fields
    interval = 5

    [exporters.otlp]
    endpoint = "https://collector.example:4317"
    headers = { "api-key" = "..." }

Any key can also be set as `UNIOBS__<SECTION>__<PLUGIN>__<KEY>=<TOML value>`, e.g.
`UNIOBS__COLLECTORS__PROCESS__INTERVAL=5` or `UNIOBS__UNIOBS__INTERVAL=2`: one named key of the
file, overridden (how deploy/uniobs.toml is meant to be adjusted per host).

The standard OpenTelemetry variables (SDK environment-variable specification,
opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/) rank below the file:
`OTEL_METRIC_EXPORT_INTERVAL` (ms) is `[uniobs] export_interval` when neither the file nor a flag
sets it; `OTEL_SDK_DISABLED=true` turns every exporter off; `OTEL_{TRACES,METRICS,LOGS}_EXPORTER`
and the `OTEL_EXPORTER_OTLP_[SIGNAL_]ENDPOINT` variables choose the exporters when neither
`--export` nor `[uniobs] export` does (`export_specs`). The OTLP exporters read the other
`OTEL_EXPORTER_OTLP_*` variables themselves (exporters/otlp.py). The table of them all:
docs/configuration.md.

Unknown keys and values of the wrong type fail at start with one line naming the file (or the
environment variable), the plugin and the key.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from uniobs.plugin import PluginConfig

C = TypeVar("C", bound=PluginConfig)

ENV_PREFIX = "UNIOBS__"
# What every command that exports writes unless told otherwise (`compare`: in its --out folder):
# OTLP/JSON lines in a file, said at start. docs/configuration.md, "Where telemetry goes".
DEFAULT_EXPORT = "file:uniobs-telemetry.jsonl"
SIGNALS = ("traces", "metrics", "logs")  # the order of the specification's OTEL_<SIGNAL>_EXPORTER variables
# What OTEL_<SIGNAL>_EXPORTER may name here, and the uniobs exporter each one is.
ENV_EXPORTERS = {"otlp": "otlp", "console": "console", "prometheus": "prometheus"}


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
        if self.interval is not None and self.interval <= 0:
            raise ValueError("interval: must be > 0 seconds")
        if self.export_interval <= 0:
            raise ValueError("export_interval: must be > 0 seconds")
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
    # Keys set by an environment variable rather than the file: "collectors.process.pss" ->
    # "UNIOBS__COLLECTORS__PROCESS__PSS", "uniobs.export_interval" -> "OTEL_METRIC_EXPORT_INTERVAL".
    origins: dict[str, str] = field(default_factory=dict)
    sdk_disabled: bool = False  # OTEL_SDK_DISABLED=true: nothing is exported (export_specs returns [])

    def collector_config(self, name: str, cls: type[C]) -> C:
        table = f"collectors.{name}"
        return build(cls, self.collectors.get(name, {}), f"{self.source}: [{table}]", self._origins(table))

    def exporter_config(self, name: str, cls: type[C]) -> C:
        table = f"exporters.{name}"
        return build(cls, self.exporters.get(name, {}), f"{self.source}: [{table}]", self._origins(table))

    def table_origins(self, table: str) -> dict[str, str]:
        """{key: environment variable} for the keys of `table` ("agent", "collectors.process") set from it."""
        return self._origins(table)

    def _origins(self, table: str) -> dict[str, str]:
        prefix = f"{table}."
        return {
            k[len(prefix) :]: v for k, v in self.origins.items() if k.startswith(prefix) and "." not in k[len(prefix) :]
        }


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


def build(cls: type[C], table: Mapping[str, Any], where: str, origins: Mapping[str, str] | None = None) -> C:
    """Build a plugin's config dataclass from a table: unknown keys and wrong types are fatal.

    `origins` maps the keys that came from an environment variable to its name: an error about
    such a key names the variable ("environment UNIOBS__UNIOBS__INTERVAL: [uniobs] interval: ...")
    rather than the file, which did not say it."""
    origins = origins or {}
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        at = _where(where, origins.get(key))
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{at}: unknown key {key!r} (known keys: {known})")
        kwargs[key] = _check(value, hints[key], f"{at} {key}")
    config = cls(**kwargs)
    try:
        config.validate()
    except ValueError as exc:
        # validate() names the key first ("interval: must be > 0"): blame its variable if one set it
        key = str(exc).partition(":")[0].strip()
        raise ConfigError(f"{_where(where, origins.get(key))}: {exc}") from None
    return config


def _where(where: str, variable: str | None) -> str:
    """`<file>: [table]` for a key the file set; `environment VAR: [table]` for one a variable set."""
    if variable is None:
        return where
    _source, sep, table = where.rpartition(": ")
    return f"environment {variable}: {table if sep else where}"


def _env_overrides(environ: Mapping[str, str], origins: dict[str, str]) -> dict[str, Any]:
    """The UNIOBS__* variables as a tree of tables; `origins` gets "table.key" -> variable name."""
    tree: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
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
        origins[".".join(path)] = name
    return tree


def _truthy(environ: Mapping[str, str], name: str) -> bool:
    """A boolean OTEL_* variable: only "true" (any case) is true, as the specification says."""
    return environ.get(name, "").strip().lower() == "true"


def env_milliseconds(environ: Mapping[str, str], name: str) -> float | None:
    """A duration variable in milliseconds (the specification's unit for OTEL_*_TIMEOUT and
    _INTERVAL) as seconds; None when unset or empty. Not a number > 0: ConfigError naming it."""
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"environment {name}={raw!r}: expected milliseconds, a number > 0")
    return value / 1000


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
    environ = os.environ if environ is None else environ
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
    origins: dict[str, str] = {}
    raw = _merge(raw, _env_overrides(environ, origins))
    if overrides:
        raw = _merge(raw, {"uniobs": dict(overrides)})
        for key in overrides:
            origins.pop(f"uniobs.{key}", None)
    core = raw.get("uniobs")
    interval = env_milliseconds(environ, "OTEL_METRIC_EXPORT_INTERVAL")
    if interval is not None and not (isinstance(core, Mapping) and "export_interval" in core):
        raw = _merge(raw, {"uniobs": {"export_interval": interval}})  # below the file and the flags
        origins["uniobs.export_interval"] = "OTEL_METRIC_EXPORT_INTERVAL"
    known = ("uniobs", "collectors", "exporters", *extra_tables)
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{source}: unknown table [{key}] (known: {', '.join(known)})")
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: [{key}] must be a table")
    settings = Settings(source=source, origins=origins, sdk_disabled=_truthy(environ, "OTEL_SDK_DISABLED"))
    settings.extra = {key: dict(raw[key]) for key in extra_tables if key in raw}
    settings.core = build(CoreConfig, raw.get("uniobs", {}), f"{source}: [uniobs]", settings.table_origins("uniobs"))
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


def env_exporters(environ: Mapping[str, str]) -> dict[str, list[str]] | None:
    """What the standard variables choose: {uniobs exporter name: [signals]}, or None when they
    choose nothing (no OTEL_<SIGNAL>_EXPORTER and no OTEL_EXPORTER_OTLP_[SIGNAL_]ENDPOINT is set).

    As the specification's autoconfiguration does, setting any of them turns the environment on,
    and a signal whose OTEL_<SIGNAL>_EXPORTER is unset goes to `otlp` (its default); a list
    (`otlp,console`) sends the signal to each; `none` sends it nowhere. `prometheus` takes
    metrics only. Other names (zipkin, jaeger, logging...): ConfigError naming the variable."""
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", *(f"OTEL_EXPORTER_OTLP_{s.upper()}_ENDPOINT" for s in SIGNALS))
    chosen = {s: environ.get(f"OTEL_{s.upper()}_EXPORTER", "").strip() for s in SIGNALS}
    if not any(chosen.values()) and not any(environ.get(name, "").strip() for name in endpoints):
        return None
    out: dict[str, list[str]] = {}
    for signal, value in chosen.items():
        variable = f"OTEL_{signal.upper()}_EXPORTER"
        names = [n.strip().lower() for n in (value or "otlp").split(",") if n.strip()]
        if "none" in names and len(names) > 1:
            raise ConfigError(f"environment {variable}={value!r}: 'none' goes alone")
        for name in names:
            if name == "none":
                continue
            if name not in ENV_EXPORTERS:
                known = ", ".join([*ENV_EXPORTERS, "none"])
                raise ConfigError(
                    f"environment {variable}={value!r}: {name!r} is not supported here (supported: {known})"
                )
            if name == "prometheus" and signal != "metrics":
                raise ConfigError(f"environment {variable}={value!r}: prometheus takes metrics only")
            signals = out.setdefault(ENV_EXPORTERS[name], [])
            if signal not in signals:
                signals.append(signal)
    return out


def export_specs(
    flags: Sequence[str], settings: Settings, default: Sequence[str], environ: Mapping[str, str] | None = None
) -> tuple[list[str], str]:
    """The `--export` specs a command runs with, and what chose them ("--export", "the file",
    "the environment (OTEL_*)", "the default", "OTEL_SDK_DISABLED"), in this precedence:

    1. `OTEL_SDK_DISABLED=true`: none at all (the specification: the SDK is off);
    2. `--export` (or its variable UNIOBS_EXPORT);
    3. `[uniobs] export` in the file (or UNIOBS__UNIOBS__EXPORT);
    4. the standard variables (`env_exporters`): each exporter they name, limited to its signals
       unless its table sets `signals`; an `otlp` chosen there speaks the specification's default
       protocol, http/protobuf, unless OTEL_EXPORTER_OTLP_[SIGNAL_]PROTOCOL or the table says;
    5. the command's default.
    """
    environ = os.environ if environ is None else environ
    if settings.sdk_disabled:
        return [], "OTEL_SDK_DISABLED"
    if flags:
        return list(flags), "--export"
    if settings.core.export:
        return list(
            settings.core.export
        ), "the file" if "uniobs.export" not in settings.origins else "UNIOBS__UNIOBS__EXPORT"
    chosen = env_exporters(environ)
    if chosen is None:
        return list(default), "the default"
    for name, signals in chosen.items():
        table = settings.exporters.setdefault(name, {})
        table.setdefault("signals", [s for s in ("metrics", "logs", "traces") if s in signals])
        if name == "otlp":
            table.setdefault("default_protocol", "http/protobuf")
    return list(chosen), "the environment (OTEL_*)"
