"""The `uniobs` command line. Each option is defined once, with its environment variable."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, overload

import click

from uniobs import __version__
from uniobs.config import DEFAULT_EXPORT, ConfigError, Settings, export_specs, load
from uniobs.model import MetricSpec
from uniobs.registry import PluginError, Registry

if TYPE_CHECKING:
    from uniobs.compare.function import SideSkipped  # imported where used: compare is heavy to load

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("uniobs")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="uniobs: %(levelname)s %(name)s: %(message)s",
    )


@overload
def config_options(func: F) -> F: ...


@overload
def config_options(func: None = None, *, default_export: str = DEFAULT_EXPORT) -> Callable[[F], F]: ...


def config_options(func: F | None = None, *, default_export: str = DEFAULT_EXPORT) -> F | Callable[[F], F]:
    """--config and --export, shared by every command that exports telemetry; `default_export` is
    what --help shows as the command's default (`@config_options` or `@config_options(default_export=...)`)."""

    def decorate(func: F) -> F:
        func = click.option(
            "--export",
            "-e",
            "export",
            multiple=True,
            envvar="UNIOBS_EXPORT",
            show_envvar=True,
            metavar="SPEC",
            help="Where telemetry goes; repeat for several: console, file:PATH, otlp[:ENDPOINT], "
            "otlp-http[:ENDPOINT], prometheus[:HOST:PORT]. Overrides [uniobs] export, which overrides "
            "OTEL_{TRACES,METRICS,LOGS}_EXPORTER and OTEL_EXPORTER_OTLP_[SIGNAL_]ENDPOINT; OTEL_SDK_DISABLED=true "
            f"exports nothing.  [default: {default_export}]",
        )(func)
        func = click.option(
            "--config",
            "-c",
            "config_path",
            type=click.Path(dir_okay=False),
            envvar="UNIOBS_CONFIG",
            show_envvar=True,
            help="TOML configuration file.",
        )(func)
        return func

    return decorate(func) if func is not None else decorate


def choose_exports(flags: Sequence[str], settings: Settings, default: str = DEFAULT_EXPORT) -> list[str]:
    """The export specs of a command (`uniobs.config.export_specs`); says so once when
    OTEL_SDK_DISABLED turns every exporter off."""
    try:
        specs, chosen_by = export_specs(flags, settings, [default])
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if chosen_by == "OTEL_SDK_DISABLED":
        click.echo("uniobs: OTEL_SDK_DISABLED=true: no telemetry is exported", err=True)
    return specs


def telemetry_goes(pipeline: Any) -> str:
    """Where a pipeline's telemetry goes, for a start-up line: its exporters, or "nowhere"."""
    return ", ".join(pipeline.describe_exporters()) or "nowhere"


# run and attach: one definition of the option (the scheduler's precedence is in docs/configuration.md)
interval_option = click.option(
    "--interval",
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds between scrapes for collectors that set no interval of their own (overrides [uniobs] interval). "
    "[default: [uniobs] interval, else 1]",
)


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
    show_envvar=True,
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


def side_skipped(exc: SideSkipped, wraps: Iterable[str], asked: str | None) -> click.ClickException:
    """A function's side that cannot be built here (`SideSkipped`), as a CLI error; when the side
    was taken by default (no --as), the other sides the definition has are named."""
    others = [other for other in wraps if other != exc.side] if asked is None else []
    hint = f" (another side: --as {'|'.join(others)})" if others else ""
    return click.ClickException(str(exc) + hint)


def say_undelivered(pipeline: Any) -> list[str]:
    """Print, per exporter and signal, what was not delivered (nothing when all was). Returns the lines."""
    lines: list[str] = pipeline.undelivered_summary()
    for line in lines:
        click.echo(f"uniobs: {line}", err=True)
    return lines


@main.command()
def plugins() -> None:
    """List installed collectors, exporters, parsers and runtimes, with the package each came from."""
    registry = _registry()
    rows = [(p.group.removeprefix("uniobs."), p.name, f"{p.distribution} {p.version}", p.value) for p in registry.all()]
    widths = [max(len(r[i]) for r in [("GROUP", "NAME", "PACKAGE", "OBJECT"), *rows]) for i in range(4)]
    for row in [("GROUP", "NAME", "PACKAGE", "OBJECT"), *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def declared_metrics(registry: Registry) -> list[tuple[str, MetricSpec]]:
    """Every metric any installed plugin or the core declares, with who declares it."""
    from uniobs.metrics import CORE_METRICS

    out: list[tuple[str, MetricSpec]] = []
    for name, info in sorted(registry.collectors.items()):
        out += [(f"collector {name}", spec) for spec in info.plugin.metrics]
    for who, specs in CORE_METRICS:
        out += [(who, spec) for spec in specs]
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
@click.option(
    "--cgroup-root", default="/sys/fs/cgroup", show_default=True, envvar="UNIOBS_CGROUP_ROOT", show_envvar=True
)
@click.option("--max-cgroups", default=2000, show_default=True, help="Stop listing cgroups past this many.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=15.0,
    show_default=True,
    help="Seconds, from the end of the scrape, for the exporters to deliver; what is not delivered by then is "
    "counted as lost.",
)
def scrape_once(
    config_path: str | None, export: tuple[str, ...], cgroup_root: str, max_cgroups: int, timeout: float
) -> None:
    """Sample the host once (uniobs itself, every container and cgroup) and export: proof the pipeline works."""
    from uniobs.containers.discovery import discover_containers
    from uniobs.host.cgroupfs import detect_layout
    from uniobs.lifecycle import discover as discovery
    from uniobs.pipeline import Pipeline
    from uniobs.telemetry import SELF

    settings = load_settings(config_path)
    specs = choose_exports(export, settings)
    try:
        pipeline = Pipeline(settings, export=specs)
    except (ConfigError, PluginError) as exc:
        raise click.ClickException(str(exc)) from None
    workloads = [SELF]
    try:
        layout = detect_layout(cgroup_root)
    except OSError as exc:
        log.warning("no cgroups under %s: %s", cgroup_root, exc)
    else:
        containers = discover_containers(layout, max_cgroups=max_cgroups)
        claimed = {path for w in containers for path in w.cgroup_paths}
        workloads += containers
        workloads += [w for w in discovery.discover_cgroups(layout, max_cgroups=max_cgroups) if w.cgroup not in claimed]
    samples = pipeline.scrape(workloads)
    # One export of what was scraped: close() hands it over once and waits for delivery; a second
    # flush before it would export every data point again (cumulative series are re-sent whole).
    # close(t) waits up to t for delivery and up to t again to settle: half the budget each keeps
    # the whole within --timeout (plus the last request's own timeout, at worst).
    pipeline.close(timeout=timeout / 2)
    click.echo(
        f"uniobs: scraped {len(workloads)} workloads ({samples} samples) -> {telemetry_goes(pipeline)}", err=True
    )
    lost = say_undelivered(pipeline)
    # a request still unanswered at the deadline is neither sent nor failed yet: lost all the same
    for worker in pipeline.telemetry.workers:
        unanswered = worker.queued_items()
        if unanswered:
            lost.append(worker.name)
            click.echo(
                f"uniobs: exporter {worker.name}: {unanswered} items not delivered: no answer within --timeout "
                f"{timeout:g} s",
                err=True,
            )
    if lost:
        sys.exit(1)


# allow_interspersed_args=False: everything from the command's name on is the command's (`run qemu-system-x86_64
# -m 512 ...`), and so is everything after `--`; an unknown option before either is an error naming it.
@main.command(context_settings={"allow_interspersed_args": False})
@config_options
@click.option("--name", "-n", help="The function's name (service.name, faas.name). Default: the image's name.")
@interval_option
@click.option("--quiet", "-q", is_flag=True, help="Do not copy the guest console to standard output.")
@click.option(
    "--cgroup",
    metavar="PATH|auto",
    help="Start the VMM in a cgroup of its own (created, then removed), so it is measured like a container.",
)
@click.option(
    "--ready",
    metavar="PROBE",
    help="When the function is ready: tcp:HOST:PORT, http://HOST:PORT/PATH[=STATUS] or console:REGEX "
    "(default: its `ready` milestone).",
)
@click.option("--request", metavar="URL", help="Send this HTTP GET once ready and time it (the first request).")
@click.option(
    "--propagate-trace",
    is_flag=True,
    help="Also pass the cold start's W3C traceparent to a unikernel, which changes its command line: "
    "`traceparent=...` appended to QEMU's -append, or added as the hvt guest's last argument. Off by default: "
    "a unikernel runs exactly as given. (Containers and processes always get TRACEPARENT in their environment.)",
)
@click.option(
    "--function", "definition", type=click.Path(dir_okay=False), help="A function definition (TOML) to launch."
)
@click.option(
    "--as",
    "shrinkwrap",
    metavar="SIDE",
    help="With --function: which side of the definition (its table: unikernel, container, nanos, ...). "
    "[default: the first table]",
)
@click.option(
    "--rundir",
    metavar="DIR",
    envvar="UNIOBS_RUNDIR",
    show_envvar=True,
    help="Where the run keeps its sockets, FIFOs and bundle copy: a run-* directory of its own, removed when it "
    "ends; stale ones of killed runs are removed at the next start.  [default: /run/uniobs, else $TMPDIR/uniobs-UID]",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="With --function: where the invocation proxy listens (default: 127.0.0.1 and the definition's port, "
    "else a free one). PORT 0: a free port.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="With --function: a request with no response byte this long after it arrived is answered 504 (faas.timeouts).",
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(
    config_path: str | None, export: tuple[str, ...], name: str | None, interval: float | None, quiet: bool,
    cgroup: str | None, ready: str | None, request: str | None, definition: str | None, shrinkwrap: str | None,
    rundir: str | None, command: tuple[str, ...], propagate_trace: bool = False, listen: str | None = None,
    request_timeout: float | None = None,
) -> None:  # fmt: skip
    """Run COMMAND and observe it until it exits: a unikernel (qemu-system-*, solo5-hvt), a container
    (runc run, crun run, podman run, docker run) or any command; or `--function F.toml --as KIND`.

    uniobs adds its own QMP sockets and a lossless console capture to a QEMU command, owns the
    hvt tender's and the container runtime's stdout and stderr, and exits with the command's
    exit status. A unikernel's command line is left as given (see --propagate-trace).
    """
    env: dict[str, str] = {}
    cwd = None
    front = None
    if definition is None and (listen is not None or request_timeout is not None):
        raise click.UsageError("--listen and --request-timeout go with --function")
    if definition is not None:
        from uniobs.compare import function as fn
        from uniobs.invoke.proxy import FrontSpec
        from uniobs.invoke.serve import FunctionSide

        if command:
            raise click.UsageError("give either --function or a COMMAND, not both")
        try:
            fdef = fn.load_definition(definition)
            side = FunctionSide(fdef, shrinkwrap)  # checked, built, its accelerator probed: as serve and compare
            spec = side.spec()
            listen_at = _host_port(listen) if listen is not None else ("127.0.0.1", fdef.port or 0)
            # the public port is bound by the proxy itself (port 0: the kernel picks it); {port} in a
            # request URL needs it first, so a free one is chosen here
            public = listen_at[1] or fn.free_port()
            if side.proxied:
                front = FrontSpec((listen_at[0], public), (spec.host, spec.port), fdef.protocol, fdef.routes,
                                  request_timeout)  # fmt: skip
            elif listen is not None or request_timeout is not None:
                raise fn.DefinitionError(f"{fdef.path}: [{side.side}] is not proxied (proxy = false, or no port)")
        except fn.SideSkipped as exc:
            raise side_skipped(exc, fdef.wraps, shrinkwrap) from None
        except fn.DefinitionError as exc:
            raise click.ClickException(str(exc)) from None
        command = tuple(spec.command)
        env = spec.env
        ready = ready or spec.ready
        url_port = public if side.proxied else spec.port  # the first request goes through the proxy
        request = request or (side.public_url(fdef.request, url_port) if fdef.request else None)
        name = name or spec.name
        cwd = spec.cwd
        propagate_trace = propagate_trace or spec.propagate_trace
    elif shrinkwrap is not None:
        raise click.UsageError("--as goes with --function")
    if not command:
        raise click.UsageError("a COMMAND to run, or --function")
    settings = load_settings(config_path)
    from uniobs.lifecycle.run import RunInterrupted

    try:
        info, described, function = launch(
            settings, list(export), list(command), name=name, interval=interval, quiet=quiet, cgroup=cgroup,
            ready=ready, request=request, env=env, cwd=cwd, rundir=rundir, propagate_trace=propagate_trace,
            front=front,
        )  # fmt: skip
    except RunInterrupted as exc:
        click.echo(f"uniobs: {exc}", err=True)
        sys.exit(128 + exc.signum)
    # the same words as the `uniobs.exited` record and the cold-start span (ExitInfo.describe)
    click.echo(f"uniobs: {function} exited: {info.describe()} -> {described}", err=True)
    sys.exit(info.status)


def _host_port(text: str) -> tuple[str, int]:
    """HOST:PORT (or [IPv6]:PORT, or :PORT for 127.0.0.1) as (host, port); a usage error otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise click.UsageError(f"--listen {text!r}: expected HOST:PORT")
    return host, int(port)


def launch(
    settings: Settings, export: list[str], command: list[str], *, name: str | None = None,
    interval: float | None = None,
    quiet: bool = False, cgroup: str | None = None, ready: str | None = None, request: str | None = None,
    env: dict[str, str] | None = None, cwd: str | None = None, rundir: str | None = None,
    propagate_trace: bool = False, front: Any = None,
) -> tuple[Any, str, str]:  # fmt: skip
    """One observed launch; returns (exit info, where telemetry went, the function's name).

    `front`: a uniobs.invoke.proxy.FrontSpec: the invocation proxy in front of the function, from
    before the launch to its end (its address printed on stderr).

    Its run directory (under `rundir`, see uniobs.rundir) is removed however the launch ends; a
    SIGINT, SIGTERM or SIGHUP before the command runs raises RunInterrupted (after that, the
    runner forwards them to the command)."""
    import signal
    import threading

    from uniobs.lifecycle.run import FORWARDED_SIGNALS, RunInterrupted

    def interrupted(signum: int, _frame: Any) -> None:
        raise RunInterrupted(signum, "")

    main_thread = threading.current_thread() is threading.main_thread()
    old = {s: signal.signal(s, interrupted) for s in FORWARDED_SIGNALS} if main_thread else {}
    try:
        return _launch(settings, export, command, name=name, interval=interval, quiet=quiet, cgroup=cgroup,
                       ready=ready, request=request, env=env, cwd=cwd, rundir=rundir,
                       propagate_trace=propagate_trace, front=front)  # fmt: skip
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def _launch(
    settings: Settings, export: list[str], command: list[str], *, name: str | None, interval: float | None,
    quiet: bool,
    cgroup: str | None, ready: str | None, request: str | None, env: dict[str, str] | None, cwd: str | None,
    rundir: str | None, propagate_trace: bool = False, front: Any = None,
) -> tuple[Any, str, str]:  # fmt: skip
    from uniobs.coldstart.probes import ProbeError
    from uniobs.lifecycle.run import RunInterrupted, Runner
    from uniobs.lifecycle.rundir import RunDir
    from uniobs.pipeline import Pipeline
    from uniobs.plugin import LaunchError
    from uniobs.runtimes.select import Runtimes

    specs = choose_exports(export, settings)
    try:
        owned = RunDir.create(rundir)
    except OSError as exc:
        raise click.ClickException(f"cannot create the run directory: {_os_error(exc)}") from None
    with owned:
        try:
            runtimes = Runtimes()
            plan = runtimes.plan(command, owned, "vm")  # by the installed runtime that recognises it
            pipeline = Pipeline(settings, export=specs)
        except (ConfigError, PluginError, LaunchError) as exc:
            raise click.ClickException(str(exc)) from None
        for note in plan.notes:
            log.info("%s", note)
        function = name or runtimes.of(plan).function_name(plan)
        click.echo(f"uniobs: {function}: telemetry -> {telemetry_goes(pipeline)}", err=True)  # where, before it runs
        if cgroup == "auto":
            cgroup = f"/uniobs/{function}-{os.path.basename(owned.path)}"
        if cgroup is not None and not cgroup.strip("/"):
            pipeline.close(1)
            raise click.UsageError(f"--cgroup {cgroup!r}: a cgroup of its own needs a path below the root")
        try:
            runner = Runner(
                pipeline, plan, function, interval=interval, mirror_console=not quiet, rundir=owned,
                cgroup=cgroup, ready=ready, request=request, env=env, cwd=cwd, propagate_trace=propagate_trace,
            )  # fmt: skip
        except ProbeError as exc:
            pipeline.close(1)
            raise click.ClickException(str(exc)) from None
        proxy = None
        if front is not None:
            from uniobs.invoke.proxy import RunnerFront

            proxy = RunnerFront(front, pipeline.telemetry, function, runner)
            try:
                host, port = proxy.start()
            except OSError as exc:
                pipeline.close(1)
                at = f"{front.listen[0]}:{front.listen[1]}"
                why = exc.strerror or exc
                raise click.ClickException(f"cannot listen on {at} (the invocation proxy, --listen): {why}") from None
            up_host, up_port = front.upstream
            scheme = "http" if front.protocol == "http" else "tcp"
            click.echo(f"uniobs: {function}: invocations at {scheme}://{host}:{port}/ (proxied to {up_host}:{up_port})",
                       err=True)  # fmt: skip
        try:
            info = runner.run()
        except RunInterrupted:
            if proxy is not None:
                proxy.close(1)
            pipeline.close(5)
            raise
        except OSError as exc:
            if proxy is not None:
                proxy.close(1)
            pipeline.close(5)
            raise click.ClickException(f"cannot run {command[0]}: {exc.strerror or exc}") from None
        if proxy is not None:
            proxy.close(1)  # the function has ended: requests still held get a 503
        pipeline.close(7.5)  # one last export (a flush before it would send every point twice)
    say_undelivered(pipeline)
    return info, ", ".join(pipeline.describe_exporters()), function


@main.command()
@config_options
@click.option("--name", "-n", help="The function's name. Default: the VMM's own (QEMU's -name), else the image's name.")
@interval_option
@click.argument("target")
def attach(
    config_path: str | None, export: tuple[str, ...], name: str | None, interval: float | None, target: str
) -> None:
    """Observe a running workload until it exits: a VMM an installed runtime recognises (QEMU, an hvt
    tender...: its PID, or its QMP socket), or a container (its id, an id prefix, or its name)."""
    import dataclasses
    import os

    from uniobs.lifecycle.attach import Attacher
    from uniobs.model import Workload
    from uniobs.pipeline import Pipeline
    from uniobs.plugin import VmmInfo
    from uniobs.runtimes.select import Runtimes

    try:
        runtimes = Runtimes()
    except PluginError as exc:
        raise click.ClickException(str(exc)) from None
    info: VmmInfo | None = None
    container: Workload | None = None
    if target.isdigit():
        info = runtimes.inspect(int(target))
        if info is None:
            raise click.ClickException(f"pid {target}: not a running {runtimes.programs()} process")
    elif "/" in target or os.path.exists(target):
        if not os.path.exists(target):
            raise click.ClickException(f"{target}: no such QMP socket")
        info = runtimes.find_by_qmp(target)
        if info is None:
            raise click.ClickException(f"{target}: no running VMM uses this QMP socket")
    else:
        container = _find_container(target, runtimes.programs())
    settings = load_settings(config_path)
    specs = choose_exports(export, settings)
    try:
        pipeline = Pipeline(settings, export=specs)
    except (ConfigError, PluginError) as exc:
        raise click.ClickException(str(exc)) from None
    if container is not None:
        workload = dataclasses.replace(container, name=name or container.name)
        function = workload.display_name
        click.echo(
            f"uniobs: attached to {workload.runtime} container {workload.id[:12]} ({function}); pid {workload.pid}, "
            f"cgroup {workload.cgroup} -> {telemetry_goes(pipeline)}",
            err=True,
        )
    else:
        assert info is not None
        if info.console is None:
            log.warning("console: %s", info.console_note)
        workload = info.workload(name)
        function = workload.display_name
        click.echo(
            f"uniobs: attached to {info.runtime} pid {info.pid} ({function}); qmp {info.qmp or 'none'}, "
            f"console {info.console or 'none'} -> {telemetry_goes(pipeline)}",
            err=True,
        )
    ended = Attacher(pipeline, workload, interval=interval).run()
    pipeline.close(7.5)  # one last export (a flush before it would send every point twice)
    say_undelivered(pipeline)
    click.echo(f"uniobs: {function}: {ended}", err=True)


@main.command()
@config_options(default_export="none: only with --export")
@click.option("--family", help="Skip detection: parse as this family (see `uniobs plugins`).")
@click.option("--name", "-n", help="The function's name on the exported records. Default: the file's name.")
@click.argument("console", type=click.Path(dir_okay=False, allow_dash=True))
def parse(config_path: str | None, export: tuple[str, ...], family: str | None, name: str | None, console: str) -> None:
    """Replay a recorded console (a file, or - for stdin) through the parsers: the family, the boot
    milestones and the boot-phase breakdown; with --export, the same records are exported."""
    import os
    import time

    from uniobs.guest.lines import LineSplitter
    from uniobs.guest.parsers.detect import replay
    from uniobs.model import Kind, LogEvent, Workload
    from uniobs.pipeline import Pipeline

    registry = _registry()
    raw = sys.stdin.buffer.read() if console == "-" else _read_bytes(console)
    splitter = LineSplitter()
    # A recorded console has no arrival times: a line's "time" is its index (0, 1, 2... ns), which
    # keeps the order and is shown as line numbers, never as a duration.
    lines = [dataclasses.replace(line, time_ns=i) for i, line in enumerate([*splitter.feed(raw, 0), *splitter.flush()])]
    try:
        result = replay(lines, registry.parsers, family=family)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"family: {result.family or 'unknown (no guest parser recognised this console)'}")
    click.echo(f"lines: {len(lines)}")
    for milestone, event in result.milestones.items():
        guest = f", guest {event.guest_time_s:.6f} s" if event.guest_time_s is not None else ""
        click.echo(f"milestone {milestone.value:<13} line {event.time_ns + 1:>5}{guest}: {event.name}")
    for vmm, vmm_milestones in result.vmm.items():  # a VMM's own log beside the guest's console
        click.echo(f"vmm log: {vmm}")
        for milestone, event in vmm_milestones.items():
            click.echo(f"vmm milestone {milestone.value:<9} line {event.time_ns + 1:>5}: {event.name}")
    if result.phases and result.clock == "guest":
        click.echo("boot phases (as the guest timed them):")
        for phase in result.phases:
            click.echo(f"  {phase.name:<40} at {phase.start_s * 1000:>10.3f} ms  +{phase.duration_s * 1000:.3f} ms")
    elif result.phases:
        click.echo("boot phases (by line: a recorded console has no times, and not every milestone has a guest stamp):")
        for phase in result.phases:
            first, count = round(phase.start_s * 1e9) + 1, round(phase.duration_s * 1e9)
            later = f"{count} line{'' if count == 1 else 's'} later"
            click.echo(f"  {phase.name:<40} line {first:>5} -> {first + count:>5}  ({later})")
    crashes = [e for e in result.events if e.milestone is not None and e.milestone.value == "crash"]
    for event in crashes:
        click.echo(f"crash: {event.name} " + " ".join(f"{k}={v}" for k, v in event.attributes))
    if not export:
        return
    settings = load_settings(config_path)
    try:
        pipeline = Pipeline(settings, export=list(export))
    except (ConfigError, PluginError) as exc:
        raise click.ClickException(str(exc)) from None
    function = name or os.path.splitext(os.path.basename(console))[0] if console != "-" else (name or "stdin")
    workload = Workload(kind=Kind.UNIKERNEL, runtime="replay", id=f"{function}-replay", name=function)
    base = time.monotonic_ns() - len(lines)  # the replayed console ends now, its lines 1 ns apart (in order)
    pipeline.telemetry.log_batch(workload, [LogEvent(base + line.time_ns, line.text) for line in lines])
    pipeline.telemetry.log_batch(
        workload,
        [LogEvent(base + e.time_ns, e.name, e.severity, e.attributes, event_name=e.name) for e in result.events],
    )
    pipeline.close(7.5)  # one last export (a flush before it would send every point twice)
    click.echo("exported -> " + ", ".join(pipeline.describe_exporters()))
    say_undelivered(pipeline)


@main.command()
@config_options(default_export="file:OUT/telemetry.jsonl, beside the reports")
@click.argument("definition", required=False, type=click.Path(dir_okay=False))
@click.option("--runs", "-N", default=3, show_default=True, help="Cold starts per shrink-wrap (interleaved).")
@click.option("--out", "out_dir", default="uniobs-compare", show_default=True, type=click.Path(file_okay=False),
              help="Where report.md, report.html and results.json go.")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Also write the results here.")
@click.option("--from", "from_path", type=click.Path(dir_okay=False, exists=True),
              help="Render a results file again instead of measuring.")  # fmt: skip
@click.option("--diff", "diff_paths", nargs=2, type=click.Path(dir_okay=False, exists=True),
              help="Compare two results files (before, after).")  # fmt: skip
@click.option("--idle", "idle_s", default=2.0, show_default=True, help="Seconds of idle measurement per run.")
@click.option("--color/--no-color", default=None, help="Colour the table (default: when stdout is a terminal).")
def compare(
    config_path: str | None, export: tuple[str, ...], definition: str | None, runs: int, out_dir: str,
    json_path: str | None, from_path: str | None, diff_paths: tuple[str, str] | None, idle_s: float,
    color: bool | None,
) -> None:  # fmt: skip
    """Measure one function on every side its definition lists (unikernels, containers) on this host,
    side by side: image size, cold start, memory and CPU at idle and under load, attack surface,
    observability coverage. A side this host cannot build is skipped, and the report says why."""
    from uniobs.compare import report
    from uniobs.compare.results import ResultsError, dump, load

    use_color = sys.stdout.isatty() if color is None else color
    undelivered: list[str] = []
    try:
        if diff_paths:
            click.echo(report.diff(load(diff_paths[0]), load(diff_paths[1])))
            return
        if from_path:
            results = load(from_path)
        else:
            if definition is None:
                raise click.UsageError("a FUNCTION.toml to compare, or --from / --diff")
            if runs < 1:
                raise click.UsageError("--runs: at least 1")
            from uniobs.compare import comparison as cmp
            from uniobs.compare import function as fn

            try:
                fdef = fn.load_definition(definition)
            except fn.DefinitionError as exc:
                raise click.ClickException(str(exc)) from None
            settings = load_settings(config_path)
            specs = choose_exports(export, settings, f"file:{out_dir}/telemetry.jsonl")
            from uniobs.coldstart.probes import ProbeError
            from uniobs.runtimes.launch import LaunchError

            _makedirs(out_dir)
            try:
                comparison = cmp.Comparison(fdef, runs, specs, settings, cmp.progress_printer(), idle_s)
                results = comparison.run()
                undelivered = comparison.undelivered
            except (fn.DefinitionError, ConfigError, PluginError, LaunchError, ProbeError) as exc:
                raise click.ClickException(str(exc)) from None
            except OSError as exc:
                raise click.ClickException(f"compare: {_os_error(exc)}") from None
    except ResultsError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.terminal_table(results, use_color), color=use_color)
    for line in undelivered:
        click.echo(f"uniobs: {line}", err=True)
    try:
        paths = report.write_reports(results, out_dir)
        if json_path:
            dump(results, json_path)
            paths["json"] = Path(json_path)
    except OSError as exc:
        raise click.ClickException(f"cannot write the reports: {_os_error(exc)}") from None
    click.echo("reports: " + ", ".join(str(p) for p in paths.values()), err=True)


@main.command()
@config_options
def agent(config_path: str | None, export: tuple[str, ...]) -> None:
    """Run the long-running host collector: discover every workload (QEMU, hvt, containers), scrape
    them, stream their consoles, export; a health endpoint on loopback; SIGTERM flushes, SIGHUP reloads."""
    from uniobs.lifecycle.agent import Agent

    try:
        runner = Agent(config_path, list(export) or None)
    except (ConfigError, PluginError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    where = f"health http://{runner.config.health}/healthz" if runner.health is not None else "no health endpoint"
    click.echo(f"uniobs agent: exporting to {telemetry_goes(runner.pipeline)}; {where}", err=True)
    sys.exit(runner.run())


def _os_error(exc: OSError) -> str:
    """An OSError as one line: the file it was about, and why."""
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return exc.strerror or str(exc)


def _makedirs(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"cannot create the output folder: {_os_error(exc)}") from None


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror or exc}") from None


def _find_container(target: str, vmms: str) -> Any:
    """A running container by full id, unique id prefix, or name (from state files; no daemon)."""
    from uniobs.containers.discovery import discover_containers
    from uniobs.host.cgroupfs import detect_layout

    try:
        layout = detect_layout()
    except OSError:
        layout = None
    found = discover_containers(layout)
    exact = [w for w in found if target in (w.id, w.name)]
    matches = exact or [w for w in found if w.id.startswith(target)]
    if not matches:
        raise click.ClickException(f"{target}: not a running container, nor a {vmms} pid or QMP socket")
    if len(matches) > 1:
        ids = ", ".join(w.id[:12] for w in matches[:5])
        raise click.ClickException(f"{target}: matches several containers ({ids}); give more of the id")
    return matches[0]


from uniobs.cli import serve as _serve  # noqa: E402, F401  (registers `uniobs serve`: uniobs/cli/serve.py)
from uniobs.cli import top as _top  # noqa: E402, F401  (registers `uniobs top`: uniobs/cli/top.py)

if __name__ == "__main__":  # pragma: no cover
    main()
