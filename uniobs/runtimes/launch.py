"""Planning a launch: what uniobs adds to the user's own VMM command. Pure: no process is started.

QEMU (`qemu-system-*`, 7.0+; tested with 7.2):
- two QMP sockets of our own, always added even when the command has its own `-qmp`: QEMU's
  monitor serves one client per socket, so sharing the user's would lock out their tooling.
  One is for the stats collector (synchronous queries), one for the event watcher.
- lossless console capture of the first serial port from its first byte:
  - `-serial stdio`, or `-nographic` without `-serial`: QEMU's stdout becomes our pipe and we
    copy it to our own stdout, so the user still sees the console;
  - any other `-serial` (`file:`, `unix:`, `tcp:`, `pty`, `null`, `chardev:ID`): it is turned
    into the equivalent `-chardev` with `logfile=` pointing at a FIFO we read, so the user's
    backend keeps working beside our copy;
  - no serial port at all (`-nodefaults`): a `null` chardev with our `logfile=` is added.

Solo5 hvt (`solo5-hvt [--mem=MB] [--net:NAME=IFACE] [--block:NAME=PATH] KERNEL.hvt ARGS`, also
the legacy `ukvm-bin`): the guest console is the tender's stdout, which becomes our pipe.

Anything else is run as a plain process whose stdout is captured.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

QEMU_EXE = re.compile(r"^qemu-system-[a-z0-9_]+$")
HVT_EXE = re.compile(r"^(solo5-hvt|ukvm-bin)(\.[a-z0-9_]+)?$")

# QEMU options that take a value (so the value is not mistaken for an option).
_QEMU_FLAGS_WITHOUT_VALUE = frozenset(
    {"-nographic", "-nodefaults", "-no-reboot", "-no-shutdown", "-S", "-snapshot", "-enable-kvm", "-no-hpet",
     "-daemonize", "-no-user-config", "-full-screen", "-s", "-version", "-h", "-help", "-noautoconsole"}
)  # fmt: skip


class LaunchError(ValueError):
    """A command uniobs cannot wrap as asked; str() says why and what to do."""


@dataclass
class LaunchPlan:
    argv: list[str]
    runtime: str  # "qemu", "solo5-hvt", "process"
    executable: str
    console: str  # a capture source: "fd:stdout" (the pipe on the child's stdout) or "fifo:PATH"
    console_on_stdout: bool  # give the child a pipe for stdout and copy it to ours
    qmp: str | None = None  # the collector's QMP socket
    qmp_events: str | None = None  # the event watcher's QMP socket
    fifos: list[str] = field(default_factory=list)  # to create before spawning
    kernel: str | None = None  # the guest image, when the command names one
    notes: list[str] = field(default_factory=list)  # what was changed, for --verbose output
    append_index: int | None = None  # position of the QEMU -append value, for traceparent
    container_id: str | None = None  # runc/crun: the id given on the command line
    runtime_root: str | None = None  # runc/crun --root
    cidfile: str | None = None  # podman/docker: where the engine writes the container id


def _split_opts(value: str) -> list[str]:
    """QEMU option strings: comma-separated, ",," is a literal comma."""
    parts, current, i = [], "", 0
    while i < len(value):
        if value[i] == ",":
            if value[i + 1 : i + 2] == ",":
                current += ","
                i += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += value[i]
        i += 1
    parts.append(current)
    return parts


def _serial_to_chardev(spec: str, chardev_id: str) -> str:
    """A `-serial` value as an equivalent `-chardev` value (without logfile)."""
    kind, _, rest = spec.partition(":")
    if spec in ("pty", "null", "stdio", "vc"):
        return f"{spec},id={chardev_id}"
    if kind == "file":
        return f"file,id={chardev_id},path={rest}"
    if kind == "unix":
        path, *opts = _split_opts(rest)
        extra = "".join(f",{o}" if "=" in o else f",{o}=on" for o in opts if o)
        return f"socket,id={chardev_id},path={path}{extra}"
    if kind == "tcp":
        hostport, *opts = _split_opts(rest)
        host, _, port = hostport.rpartition(":")
        extra = "".join(f",{o}" if "=" in o else f",{o}=on" for o in opts if o)
        return f"socket,id={chardev_id},host={host or '0.0.0.0'},port={port}{extra}"
    if kind == "mon":
        raise LaunchError(f"-serial {spec}: a serial port shared with the monitor; use -serial stdio or a chardev")
    raise LaunchError(
        f"-serial {spec}: this backend cannot be captured beside its own output; use -serial stdio, file:, "
        "unix:, tcp:, pty, null or chardev:ID"
    )


def plan_qemu(argv: list[str], rundir: str | os.PathLike[str], tag: str) -> LaunchPlan:
    rundir = Path(rundir)
    out = [argv[0]]
    serials: list[tuple[int, str]] = []  # (index in out of the value, value)
    chardevs: dict[str, int] = {}  # id -> index in out of the -chardev value
    nographic = False
    kernel: str | None = None
    i = 1
    while i < len(argv):
        arg = argv[i]
        opt = arg if not arg.startswith("--") else arg[1:]  # QEMU accepts --opt too
        if opt in _QEMU_FLAGS_WITHOUT_VALUE or not opt.startswith("-") or i + 1 >= len(argv):
            out.append(arg)
            nographic = nographic or opt == "-nographic"
            i += 1
            continue
        value = argv[i + 1]
        out += [arg, value]
        if opt == "-serial":
            serials.append((len(out) - 1, value))
        elif opt == "-chardev":
            for o in _split_opts(value)[1:]:
                if o.startswith("id="):
                    chardevs[o[3:]] = len(out) - 1
        elif opt == "-kernel":
            kernel = value
        i += 2

    notes: list[str] = []
    fifo = str(rundir / f"{tag}-console.fifo")
    plan = LaunchPlan(out, "qemu", os.path.basename(argv[0]), console="", console_on_stdout=False, kernel=kernel)
    first = serials[0] if serials else None
    if (first is not None and first[1] == "stdio") or (first is None and nographic):
        plan.console = "fd:stdout"
        plan.console_on_stdout = True
        notes.append("console: QEMU's stdout (the serial port on stdio) is captured and copied to ours")
    elif first is not None and first[1].startswith("chardev:"):
        chardev_id = first[1].partition(":")[2]
        if chardev_id not in chardevs:
            raise LaunchError(f"-serial {first[1]}: no -chardev with id={chardev_id}")
        index = chardevs[chardev_id]
        existing = [o for o in _split_opts(out[index]) if o.startswith("logfile=")]
        if existing:
            plan.console = f"file:{existing[0][len('logfile=') :]}"
            notes.append(f"console: following the chardev's own logfile {plan.console[5:]}")
        else:
            out[index] += f",logfile={fifo},logappend=off"
            plan.console, plan.fifos = f"fifo:{fifo}", [fifo]
            notes.append(f"console: chardev {chardev_id} also logs to {fifo}")
    elif first is not None:
        index, spec = first
        chardev_id = "uniobs-serial0"
        out[index] = f"chardev:{chardev_id}"
        out[index - 1 : index - 1] = [
            "-chardev",
            f"{_serial_to_chardev(spec, chardev_id)},logfile={fifo},logappend=off",
        ]
        plan.console, plan.fifos = f"fifo:{fifo}", [fifo]
        notes.append(f"console: -serial {spec} became a chardev that also logs to {fifo}")
    else:
        out += ["-chardev", f"null,id=uniobs-serial0,logfile={fifo},logappend=off", "-serial", "chardev:uniobs-serial0"]
        plan.console, plan.fifos = f"fifo:{fifo}", [fifo]
        notes.append("console: the command had no serial port; one was added, logged to " + fifo)

    plan.qmp = str(rundir / f"{tag}-qmp.sock")
    plan.qmp_events = str(rundir / f"{tag}-events.sock")
    out += ["-qmp", f"unix:{plan.qmp},server=on,wait=off", "-qmp", f"unix:{plan.qmp_events},server=on,wait=off"]
    # insertions may have moved -append: find its value again
    plan.append_index = next((j + 1 for j in range(len(out) - 1) if out[j] in ("-append", "--append")), None)
    plan.notes = notes
    return plan


def plan_hvt(argv: list[str]) -> LaunchPlan:
    """solo5-hvt: options start with --, then the unikernel image, then its arguments."""
    kernel = next((a for a in argv[1:] if not a.startswith("-")), None)
    if kernel is None:
        raise LaunchError(f"{argv[0]}: no unikernel image in the command")
    return LaunchPlan(
        list(argv), "solo5-hvt", os.path.basename(argv[0]), console="fd:stdout", console_on_stdout=True,
        kernel=kernel, notes=["console: the tender's stdout is the guest console"],
    )  # fmt: skip


OCI_RUNTIMES = frozenset({"runc", "crun"})
ENGINES = frozenset({"podman", "docker"})
# options of `runc run`/`crun run` that take a value (global ones come before "run")
_OCI_VALUE_OPTS = frozenset({"-b", "--bundle", "--console-socket", "--pid-file", "--preserve-fds", "--root",
                             "--log", "--log-format", "--criu", "--rootless", "--cgroup-manager",
                             # podman/docker global options that take a value
                             "--runtime", "--runroot", "--events-backend", "--log-level", "--storage-driver",
                             "--url", "--connection", "--identity", "--tmpdir", "-H", "--host", "--config",
                             "--context", "-c", "-l"})  # fmt: skip


def plan_container(argv: list[str], rundir: str | os.PathLike[str], tag: str) -> LaunchPlan:
    """`runc|crun [global opts] run [opts] ID` or `podman|docker run [opts] IMAGE [ARGS]`.

    The container runs in the foreground (the runtime's stdout and stderr are the function's),
    so its exit status is the command's. Detached runs are refused: use `uniobs attach` then.
    """
    exe = os.path.basename(argv[0])
    try:
        sub = next(i for i, a in enumerate(argv[1:], 1) if not a.startswith("-") and argv[i - 1] not in _OCI_VALUE_OPTS)
    except StopIteration:
        raise LaunchError(f"{exe}: no subcommand") from None
    if argv[sub] != "run":
        raise LaunchError(f"{exe} {argv[sub]}: uniobs run wraps `{exe} run ...` (in the foreground)")
    rest = argv[sub + 1 :]
    if any(a in ("-d", "--detach") or a.startswith("--detach=") for a in rest):
        raise LaunchError(f"{exe} run -d: a detached container is not watched to its end; run it in the "
                          "foreground under uniobs run, or use `uniobs attach CONTAINER-ID`")  # fmt: skip
    plan = LaunchPlan(list(argv), exe, exe, console="fd:stdout", console_on_stdout=True)
    if exe in OCI_RUNTIMES:
        root = next((argv[i + 1] for i in range(1, sub) if argv[i] == "--root" and i + 1 < sub), None)
        positional = [
            a for i, a in enumerate(rest) if not a.startswith("-") and (i == 0 or rest[i - 1] not in _OCI_VALUE_OPTS)
        ]
        if not positional:
            raise LaunchError(f"{exe} run: no container id")
        plan.container_id = positional[-1]
        plan.runtime_root = root
        bundle = next((rest[i + 1] for i, a in enumerate(rest[:-1]) if a in ("-b", "--bundle")), ".")
        plan.kernel = bundle
        plan.notes.append(f"container {plan.container_id}: the runtime's stdout and stderr are the function's")
    else:
        cidfile = str(Path(rundir) / f"{tag}.cid")
        plan.argv = [*argv[: sub + 1], "--cidfile", cidfile, *rest]
        plan.cidfile = cidfile
        image = next(
            (a for i, a in enumerate(rest) if not a.startswith("-") and (i == 0 or not _engine_value(rest[i - 1]))),
            None,
        )
        plan.kernel = image
        plan.notes.append(f"{exe}: the container id is read from --cidfile {cidfile}")
    return plan


def _engine_value(opt: str) -> bool:
    """Whether a podman/docker run option takes the next word as its value (most long ones do)."""
    flags = {"-i", "-t", "-it", "-ti", "--rm", "--init", "--privileged", "--read-only", "-P", "--publish-all",
             "--interactive", "--tty", "--quiet", "-q", "--no-healthcheck", "--oom-kill-disable",
             "--replace"}  # fmt: skip
    return opt.startswith("-") and "=" not in opt and opt not in flags


def plan_process(argv: list[str]) -> LaunchPlan:
    return LaunchPlan(
        list(argv), "process", os.path.basename(argv[0]), console="fd:stdout", console_on_stdout=True,
        notes=["console: the process's stdout is captured"],
    )  # fmt: skip


def plan_launch(argv: list[str], rundir: str | os.PathLike[str], tag: str) -> LaunchPlan:
    if not argv:
        raise LaunchError("no command to run")
    exe = os.path.basename(argv[0])
    if QEMU_EXE.match(exe):
        return plan_qemu(argv, rundir, tag)
    if HVT_EXE.match(exe):
        return plan_hvt(argv)
    if exe in OCI_RUNTIMES or exe in ENGINES:
        return plan_container(argv, rundir, tag)
    return plan_process(argv)
