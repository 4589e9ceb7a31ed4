"""`uniobs serve FUNCTION.toml --as KIND`: one function on demand, behind the invocation proxy.

Registered on the `uniobs` group by uniobs/cli/main.py. What it does: uniobs/invoke/serve.py and
docs/serve.md.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import click

from uniobs.cli.main import (
    choose_exports,
    config_options,
    interval_option,
    load_settings,
    main,
    say_undelivered,
    side_skipped,
    telemetry_goes,
)
from uniobs.config import ConfigError
from uniobs.registry import PluginError

SHUTDOWN_GRACE_S = 10.0  # in-flight invocations may finish for this long after SIGTERM/SIGINT


def _listen(value: str | None, default_port: int | None) -> tuple[str, int]:
    """HOST:PORT (IPv6 as [ADDR]:PORT); default: the definition's port on 127.0.0.1 (0: any free one)."""
    if value is None:
        return "127.0.0.1", default_port or 0
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise click.BadParameter(f"{value!r}: HOST:PORT", param_hint="--listen")
    return (host.strip("[]") or "127.0.0.1"), int(port)


@main.command()
@config_options
@click.argument("definition", type=click.Path(dir_okay=False))
@click.option("--as", "shrinkwrap", metavar="SIDE", help="Which side of the definition (its table: unikernel, "
              "container, nanos, ...). Default: the first.")  # fmt: skip
@click.option("--listen", metavar="HOST:PORT", help="Where to listen. [default: 127.0.0.1 and the definition's port]")
@click.option("--idle-timeout", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds with no invocation in flight before the instance is stopped (or paused).")  # fmt: skip
@click.option("--on-idle", type=click.Choice(["stop", "pause"]), default="stop", show_default=True,
              help="What idle does: stop the instance, or pause it (QMP stop on uniobs' own socket, runc "
              "pause).")  # fmt: skip
@click.option("--max-concurrency", type=click.IntRange(min=1), help="Invocations in flight at most; others wait.")
@click.option("--request-timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds from a request's arrival to its response's first byte (a cold start included), "
              "else 504.")  # fmt: skip
@click.option("--start-timeout", type=click.FloatRange(min=0, min_open=True), default=180.0, show_default=True,
              help="Seconds a launch may take to be ready before its requests get 503.")  # fmt: skip
@interval_option
@click.option("--console/--no-console", default=False, help="Copy the function's console to standard output.")
@click.option("--rundir", metavar="DIR", envvar="UNIOBS_RUNDIR", show_envvar=True,
              help="Where each instance's run directory goes (as `uniobs run --rundir`).")  # fmt: skip
def serve(
    config_path: str | None, export: tuple[str, ...], definition: str, shrinkwrap: str | None, listen: str | None,
    idle_timeout: float, on_idle: str, max_concurrency: int | None, request_timeout: float | None,
    start_timeout: float, interval: float | None, console: bool, rundir: str | None,
) -> None:  # fmt: skip
    """Serve one function on demand: listen on its port, launch it at the first request (held until
    it is ready: a cold start, traced as a child of the request's span), stop or pause it after
    --idle-timeout, resume it at the next request. Every invocation is measured at the port (a span,
    faas.* metrics, a REPORT record). SIGTERM/SIGINT: in-flight requests finish, the instance stops."""
    from uniobs.compare import function as fn
    from uniobs.invoke.proxy import InvocationProxy
    from uniobs.invoke.record import InvocationRecorder
    from uniobs.invoke.serve import FunctionHost, FunctionSide
    from uniobs.pipeline import Pipeline

    settings = load_settings(config_path)
    try:
        fdef = fn.load_definition(definition)
        side = FunctionSide(fdef, shrinkwrap)
    except fn.SideSkipped as exc:  # the first side, taken by default, cannot be built here
        raise side_skipped(exc, fdef.wraps, shrinkwrap) from None
    except fn.DefinitionError as exc:
        raise click.ClickException(str(exc)) from None
    address = _listen(listen, side.public_port)
    specs = choose_exports(export, settings)
    try:
        pipeline = Pipeline(settings, export=specs)
    except (ConfigError, PluginError) as exc:
        raise click.ClickException(str(exc)) from None
    protocol, routes = fdef.protocol, fdef.routes  # serve always proxies, whatever `proxy` says
    host = FunctionHost(
        pipeline, side, idle_timeout=idle_timeout, on_idle=on_idle, start_timeout=start_timeout, interval=interval,
        quiet=not console, rundir=rundir,
    )  # fmt: skip
    recorder = InvocationRecorder(pipeline.telemetry, function=fdef.name, server_port=address[1] or None)
    proxy = InvocationProxy(
        host, recorder, listen=address, protocol=protocol, routes=routes, max_concurrency=max_concurrency,
        request_timeout=request_timeout,
    )  # fmt: skip
    try:
        bound = proxy.start()
    except OSError as exc:
        recorder.close()
        pipeline.close(1)
        shown_at = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
        why = exc.strerror or exc
        raise click.ClickException(f"cannot listen on {shown_at} (serve's listen address, --listen): {why}") from None
    if not address[1]:
        recorder.server_port = bound[1]
    host.start()
    stop = threading.Event()
    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    click.echo(
        f"uniobs: serving {fdef.name} ({side.side}) on {protocol}://{shown}:{bound[1]} -> {telemetry_goes(pipeline)}",
        err=True,
    )
    try:
        export_interval = pipeline.settings.core.export_interval
        while not stop.wait(export_interval):
            pipeline.telemetry.flush(timeout=0.0)  # hand over, as the scheduler does; never wait on a backend
    finally:
        proxy.close(SHUTDOWN_GRACE_S)  # stop accepting; in-flight invocations finish (bounded)
        host.close()  # the instance stops; its run directory and cgroup go with its run
        recorder.close()
        pipeline.close(7.5)  # one last export (a flush before it would send every point twice)
        for s, h in old.items():
            signal.signal(s, h)
    say_undelivered(pipeline)
    why = signal.Signals(received[0]).name if received else "the end"
    click.echo(f"uniobs: {fdef.name}: stopped serving ({why}); {host.launches} launch(es)", err=True)
    sys.exit(0)
