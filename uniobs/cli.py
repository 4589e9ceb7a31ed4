"""The `uniobs` command line. Each option is defined once, with its environment variable."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from uniobs import __version__
from uniobs.config import ConfigError, Settings, load
from uniobs.model import MetricSpec
from uniobs.registry import PluginError, Registry

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("uniobs")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="uniobs: %(levelname)s %(name)s: %(message)s",
    )


def config_options(func: F) -> F:
    """--config and --export, shared by every command that exports telemetry."""
    func = click.option(
        "--export",
        "-e",
        "export",
        multiple=True,
        envvar="UNIOBS_EXPORT",
        metavar="SPEC",
        help="Where telemetry goes; repeat for several: console, file:PATH, otlp[:ENDPOINT], "
        "otlp-http[:ENDPOINT], prometheus[:HOST:PORT]. Overrides [uniobs] export.",
    )(func)
    func = click.option(
        "--config",
        "-c",
        "config_path",
        type=click.Path(dir_okay=False),
        envvar="UNIOBS_CONFIG",
        help="TOML configuration file.",
    )(func)
    return func


def load_settings(config_path: str | None) -> Settings:
    try:
        return load(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="uniobs")
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="warning",
    envvar="UNIOBS_LOG_LEVEL",
    show_default=True,
)
def main(log_level: str) -> None:
    """uniobs: observability for serverless functions in unikernels and containers."""
    _setup_logging(log_level)


def _registry() -> Registry:
    try:
        return Registry()
    except PluginError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
def plugins() -> None:
    """List installed collectors, exporters and parsers, with the package each came from."""
    registry = _registry()
    rows = [(p.group.removeprefix("uniobs."), p.name, f"{p.distribution} {p.version}", p.value) for p in registry.all()]
    widths = [max(len(r[i]) for r in [("GROUP", "NAME", "PACKAGE", "OBJECT"), *rows]) for i in range(4)]
    for row in [("GROUP", "NAME", "PACKAGE", "OBJECT"), *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def declared_metrics(registry: Registry) -> list[tuple[str, MetricSpec]]:
    """Every metric any installed plugin or the core declares, with who declares it."""
    from uniobs.pipeline import PIPELINE_METRICS
    from uniobs.telemetry import SELF_METRICS

    out: list[tuple[str, MetricSpec]] = []
    for name, info in sorted(registry.collectors.items()):
        out += [(f"collector {name}", spec) for spec in info.plugin.metrics]
    out += [("uniobs (self)", spec) for spec in (*SELF_METRICS, *PIPELINE_METRICS)]
    return out


def render_metric_table(metrics: Sequence[tuple[str, MetricSpec]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(
            [
                {
                    "name": s.name,
                    "instrument": s.instrument.value,
                    "unit": s.unit,
                    "description": s.description,
                    "attributes": list(s.attributes),
                    "source": src,
                }
                for src, s in metrics
            ],
            indent=2,
        )
    if fmt == "markdown":
        lines = [
            "| metric | instrument | unit | attributes | source | description |",
            "|---|---|---|---|---|---|",
        ]
        for src, s in metrics:
            attrs = ", ".join(f"`{a}`" for a in s.attributes) or "—"
            lines.append(f"| `{s.name}` | {s.instrument.value} | `{s.unit}` | {attrs} | {src} | {s.description} |")
        return "\n".join(lines)
    lines = []
    for src, s in metrics:
        lines.append(f"{s.name}  [{s.instrument.value}, {s.unit}]  ({src})")
        if s.attributes:
            lines.append(f"    attributes: {', '.join(s.attributes)}")
        lines.append(f"    {s.description}")
    return "\n".join(lines)


@main.command()
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "json"]), default="text", show_default=True)
def describe(fmt: str) -> None:
    """Every declared metric with instrument, unit and attributes (generated from the declarations)."""
    click.echo(render_metric_table(declared_metrics(_registry()), fmt))


@main.command("scrape-once")
@config_options
@click.option("--cgroup-root", default="/sys/fs/cgroup", show_default=True, envvar="UNIOBS_CGROUP_ROOT")
@click.option("--max-cgroups", default=2000, show_default=True, help="Stop listing cgroups past this many.")
@click.option("--timeout", default=15.0, show_default=True, help="Seconds to wait for exporters to deliver.")
def scrape_once(
    config_path: str | None, export: tuple[str, ...], cgroup_root: str, max_cgroups: int, timeout: float
) -> None:
    """Sample the host once (uniobs itself and every cgroup) and export: proof the pipeline works."""
    from uniobs import discovery
    from uniobs.cgroupfs import detect_layout
    from uniobs.pipeline import Pipeline
    from uniobs.telemetry import SELF

    settings = load_settings(config_path)
    specs = list(export) or list(settings.core.export) or ["console"]
    try:
        pipeline = Pipeline(settings, export=specs)
    except (ConfigError, PluginError) as exc:
        raise click.ClickException(str(exc)) from None
    workloads = [SELF]
    try:
        workloads += discovery.discover_cgroups(detect_layout(cgroup_root), max_cgroups=max_cgroups)
    except OSError as exc:
        log.warning("no cgroups under %s: %s", cgroup_root, exc)
    samples = pipeline.scrape(workloads)
    delivered = pipeline.flush(timeout)
    pipeline.close(timeout=min(timeout, 5.0))
    click.echo(
        f"uniobs: scraped {len(workloads)} workloads ({samples} samples) -> "
        + ", ".join(pipeline.describe_exporters()),
        err=True,
    )
    failures = pipeline.exporter_failures()
    for name, failure in failures.items():
        lost = {k: v for k, v in {**failure["failed"]}.items() if v}
        click.echo(f"uniobs: exporter {name} lost {lost}: {failure['error']}", err=True)
    if failures or not delivered:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
