"""`uniobs top`: every workload on the host, live (a Textual table), or once (`--once`, `--json`).

The figures come from the agent's own discovery and collectors run in this process
(`uniobs.top.local`), or from running uniobs' Prometheus endpoints (`--from`, `uniobs.top.remote`);
the rows and their units are `uniobs.top.model.Row`'s. Keys in the live view: q quit, s next sort
column (again: reverse), n/k/r/t/u/c/m/l/i column sorts, / or f filter (Enter keeps it, Esc clears),
p pause.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from uniobs.cli.main import main
from uniobs.config import ConfigError
from uniobs.registry import PluginError
from uniobs.top.model import COLUMNS, filter_rows, plain_table, sort_rows, to_json


@main.command()
@click.option("--config", "-c", "config_path", type=click.Path(dir_okay=False), envvar="UNIOBS_CONFIG",
              help="TOML configuration file (the agent's: [agent] discovery, [collectors.*]).")  # fmt: skip
@click.option("--interval", "-d", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="Seconds between refreshes (and scrapes).")  # fmt: skip
@click.option("--once", is_flag=True, help="Measure over one interval, print a plain table and exit.")
@click.option("--json", "as_json", is_flag=True, help="Like --once, as JSON (unknown figures are null).")
@click.option("--sort", "sort_by", type=click.Choice(list(COLUMNS)), default="cpu", show_default=True)
@click.option("--reverse/--no-reverse", default=None,
              help="Reverse the column's usual order (numbers high first, text A-Z).")  # fmt: skip
@click.option("--filter", "filter_text", default="", metavar="TEXT",
              help="Only workloads whose name, kind, runtime, state or id contains TEXT.")  # fmt: skip
@click.option("--from", "from_urls", multiple=True, metavar="URL",
              help="Read a running uniobs' Prometheus endpoint (HOST:PORT or URL; repeat for several) "
              "instead of measuring here.")  # fmt: skip
@click.option("--consoles/--no-consoles", default=True, show_default=True,
              help="Follow VMM consoles for lines/s (a unix-socket console allows one reader).")  # fmt: skip
def top(
    config_path: str | None, interval: float, once: bool, as_json: bool, sort_by: str, reverse: bool | None,
    filter_text: str, from_urls: tuple[str, ...], consoles: bool,
) -> None:  # fmt: skip
    """Every workload on the host, both shrink-wraps: name, kind, runtime, state, uptime, CPU %,
    memory, cold start, console lines/s, invocations/s with error rate and p99 (where measured;
    "—" when not). Live, sortable and filterable; --once and --json for scripts."""
    if not (once or as_json) and not sys.stdout.isatty():
        raise click.UsageError("the live view needs a terminal: use --once or --json")
    source = _source(config_path, interval, from_urls, consoles)
    try:
        if once or as_json:
            source.measure_twice()
            rows = sort_rows(filter_rows(source.rows(), filter_text), sort_by, reverse)
            if as_json:
                meta: dict[str, Any] = {"source": source.describe(), "interval_s": interval, "sort": sort_by}
                errors = getattr(source, "errors", {})
                if errors:
                    meta["errors"] = errors
                click.echo(to_json(rows, **meta))
            else:
                click.echo(plain_table(rows))
                for url, error in getattr(source, "errors", {}).items():
                    click.echo(f"uniobs: {url}: {error}", err=True)
            errors = getattr(source, "errors", {})
            if from_urls and len(errors) == len(set(from_urls)):
                # no endpoint answered: an empty table would read as "no workloads"
                raise click.ClickException(f"no --from endpoint answered ({', '.join(sorted(errors))})")
            return
        from uniobs.top.app import TopApp

        app = TopApp(source, interval, sort_by, reverse, filter_text)
        app.run()
    finally:
        source.close()


def _source(config_path: str | None, interval: float, from_urls: tuple[str, ...], consoles: bool) -> Any:
    if from_urls:
        from uniobs.top.remote import RemoteSource

        return RemoteSource(list(from_urls), interval)
    from uniobs.top.local import LocalSource

    try:
        return LocalSource(config_path, interval, consoles)
    except (ConfigError, PluginError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
