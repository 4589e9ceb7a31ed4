"""Function definitions: one function, and how to launch it in each shrink-wrap it is compared in.

    name = "hello-node"
    port = 8002                                  # optional: the function's public port (`uniobs serve`'s default)
    proxy = true                                 # optional (default true): invocations observed at the port
    protocol = "http"                            # optional: "http" (an invocation per request), "tcp" (per connection)
    routes = ["/status/{code}"]                  # optional: http.route templates
    ready = "http://127.0.0.1:{port}/=200"      # probe: tcp:, http://, console:
    request = "http://127.0.0.1:{port}/"        # optional: the first request, timed

    [load]                                       # optional: requests sent once ready
    url = "http://127.0.0.1:{port}/"
    requests = 200
    concurrency = 4

    [unikernel]
    build = ["make", "-C", "unikernel"]          # run when an image file is missing
    image = ["unikernel/build/vmlinux", "unikernel/build/initramfs.cpio.gz"]
    boot_args = ["python3", "unikernel/boot_args.py"]   # stdout fills {boot_args}
    command = ["qemu-system-x86_64", "-accel", "{accel}", ..., "-append", "{boot_args}"]
    propagate_trace = true                       # optional: also `traceparent=...` on -append (off: as given)

    [container]
    build = ["make", "-C", "container"]
    image = ["container/build/bundle/rootfs"]
    command = ["runc", "run", "--bundle", "container/build/bundle-hostnet", "{id}"]
    env = { PORT = "{port}" }                    # passed to the function (bundle copy, -e)

    [nanos]                                      # any other name: a side of its own
    shrinkwrap = "unikernel"                     # required unless the name is unikernel or container
    build = ["python3", "nanos/build.py"]        # exit status 77: cannot be built on this host
    image = ["nanos/build/node.img"]
    command = ["qemu-system-x86_64", "-machine", "q35", "-accel", "{accel}", ...]

Each table other than `[load]` is one side, compared in the order the file lists them; its name
(`unikernel`, `container`, `nanos`, ...) is what `uniobs run --function F --as NAME` takes. A build
that exits with status 77 (automake's "skip") says the side cannot be built on this host (e.g. no
Nanos toolchain): `compare` then skips that side and reports the build's last line as the reason;
every other build failure stops it.

Placeholders: `{port}` (a free loopback port, new for each launch), `{accel}` (KVM or TCG, by a
real probe boot), `{id}` (a unique instance id), `{boot_args}`, `{dir}` (the definition's
folder).

The proxy (`proxy = true`, the default; uniobs/invoke/proxy.py): uniobs listens on the function's
public port and forwards each request to the instance, recording every invocation (a span, the
`faas.*` metrics, a REPORT). Then `{port}` means two ports:
- in `command`, `env` and `boot_args` (and so the guest's `hostfwd`, the container's PORT) and in
  `ready`: the UPSTREAM port, a free loopback port the instance listens on. A readiness probe goes
  straight to the instance: it is not an invocation;
- in `request` and `[load] url`: the PUBLIC port, the proxy's, so the first request and the load
  are invocations. The public port is `port` for `uniobs run --function` (and `uniobs serve`; a
  free port when the definition has none), a free port for each launch of `uniobs compare`.
With `proxy = false`, or a side with no port (no `port` key, no `{port}` in its command, env or
boot_args), both are the same port and nothing is proxied.

Relative paths in `image`, `build` and `command` are relative to the definition's
folder, which is also the working directory of the commands. Commands are argument lists, never
shell strings.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SHRINKWRAPS = ("unikernel", "container")  # what a side is; its table's name is its own
TOP_LEVEL = ("name", "description", "ready", "request", "load", "port", "proxy", "protocol", "routes")
PROTOCOLS = ("http", "tcp")
SIDE_KEYS = ("command", "image", "build", "boot_args", "env", "label", "shrinkwrap", "propagate_trace")
SIDE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
SKIP_STATUS = 77  # a build's "cannot be built on this host": the side is skipped, not failed


class DefinitionError(ValueError):
    """A function definition that cannot be used; str() names the file and the key."""


class SideSkipped(DefinitionError):
    """A side that cannot be built on this host (its build exited with SKIP_STATUS); `reason` is the
    build's own last line, str() the whole sentence."""

    def __init__(self, message: str, side: str, reason: str) -> None:
        super().__init__(message)
        self.side = side
        self.reason = reason


@dataclass(frozen=True)
class Wrap:
    """One side of the comparison: the function in one shrink-wrap."""

    shrinkwrap: str  # "unikernel" or "container"
    command: tuple[str, ...]
    image: tuple[str, ...] = ()
    build: tuple[str, ...] = ()
    boot_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    label: str = ""
    name: str = ""  # the side's table name ("nanos"); the shrink-wrap's when empty
    # also hand the traceparent to a unikernel on its command line (`uniobs run --propagate-trace`)
    propagate_trace: bool = False

    @property
    def side(self) -> str:
        return self.name or self.shrinkwrap

    @property
    def uses_accel(self) -> bool:
        """Whether its launch command takes the {accel} a probe boot chooses."""
        return any("{accel}" in a for a in self.command)


@dataclass(frozen=True)
class Load:
    url: str
    requests: int = 100
    concurrency: int = 4


@dataclass(frozen=True)
class FunctionDef:
    name: str
    path: Path
    wraps: dict[str, Wrap]
    ready: str | None = None
    request: str | None = None
    load: Load | None = None
    description: str = ""
    port: int | None = None  # the public port (the proxy's; `uniobs serve`'s default); None: a free one
    proxy: bool = True  # invocations observed at the port (see the module's docstring)
    protocol: str = "http"  # "http": one invocation per request; "tcp": one per connection
    routes: tuple[str, ...] = ()  # http.route templates ("/users/{id}")

    @property
    def dir(self) -> Path:
        return self.path.parent


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DefinitionError(f"{where}: expected a list of strings")
    return tuple(value)


def load_definition(path: str | os.PathLike[str]) -> FunctionDef:
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DefinitionError(f"{path}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise DefinitionError(f"{path}: {exc}") from None
    for key, value in raw.items():
        if key not in TOP_LEVEL and not isinstance(value, dict):
            raise DefinitionError(f"{path}: unknown key {key!r} (known: {', '.join(TOP_LEVEL)}, and a table per side)")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise DefinitionError(f"{path}: name: required, a string")
    wraps = {}
    for side, table in raw.items():
        if side in TOP_LEVEL:
            continue
        where = f"{path}: [{side}]"
        if not SIDE_NAME.fullmatch(side):
            raise DefinitionError(f"{where}: a side's name is lower-case letters, digits, - and _")
        for key in table:
            if key not in SIDE_KEYS:
                raise DefinitionError(f"{where}: unknown key {key!r} (known: {', '.join(SIDE_KEYS)})")
        kind = table.get("shrinkwrap", side if side in SHRINKWRAPS else None)
        if kind not in SHRINKWRAPS:
            raise DefinitionError(f"{where} shrinkwrap: required, {' or '.join(map(repr, SHRINKWRAPS))}")
        if "command" not in table:
            raise DefinitionError(f"{where}: command: required")
        env = table.get("env", {})
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise DefinitionError(f"{where} env: expected a table of strings")
        propagate = table.get("propagate_trace", False)
        if not isinstance(propagate, bool):
            raise DefinitionError(f"{where} propagate_trace: expected true or false")
        wraps[side] = Wrap(
            kind,
            _strings(table["command"], f"{where} command"),
            _strings(table.get("image", []), f"{where} image"),
            _strings(table.get("build", []), f"{where} build"),
            _strings(table.get("boot_args", []), f"{where} boot_args"),
            dict(env),
            str(table.get("label", "")),
            side,
            propagate_trace=propagate,
        )
    if not wraps:
        raise DefinitionError(f"{path}: no side ([unikernel], [container], ...): nothing to run")
    load = None
    if "load" in raw:
        table = raw["load"]
        if not isinstance(table, dict) or not isinstance(table.get("url"), str):
            raise DefinitionError(f"{path}: [load] url: required, a string")
        requests, concurrency = table.get("requests", 100), table.get("concurrency", 4)
        if not (isinstance(requests, int) and requests > 0 and isinstance(concurrency, int) and 0 < concurrency <= 64):
            raise DefinitionError(f"{path}: [load] requests > 0 and 1 <= concurrency <= 64")
        load = Load(table["url"], requests, concurrency)
    for key in ("ready", "request"):
        if key in raw and not isinstance(raw[key], str):
            raise DefinitionError(f"{path}: {key}: expected a string")
    port = raw.get("port")
    if port is not None and not (isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536):
        raise DefinitionError(f"{path}: port: expected a TCP port, 1 to 65535")
    proxy = raw.get("proxy", True)
    if not isinstance(proxy, bool):
        raise DefinitionError(f"{path}: proxy: expected true or false")
    protocol = raw.get("protocol", "http")
    if protocol not in PROTOCOLS:
        raise DefinitionError(f"{path}: protocol: expected {' or '.join(map(repr, PROTOCOLS))}")
    routes = _strings(raw.get("routes", []), f"{path}: routes")
    bad = [r for r in routes if not r.startswith("/")]
    if bad:
        raise DefinitionError(f"{path}: routes: a template starts with / ({bad[0]!r})")
    return FunctionDef(
        name, path, wraps, raw.get("ready"), raw.get("request"), load, str(raw.get("description", "")),
        port=port, proxy=proxy, protocol=protocol, routes=routes,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Instance:
    """One launch's concrete values: `port` is the port the instance listens on (upstream of the
    proxy), `public_port` the one clients use (the proxy's; `port` itself without a proxy)."""

    port: int
    id: str
    accel: str
    boot_args: str = ""
    public_port: int = 0  # 0: the same as `port` (no proxy)

    def fill(self, text: str, definition: FunctionDef, port: int | None = None) -> str:
        """`text` with its placeholders filled; `{port}` is the upstream port (command, env, ready)."""
        return (
            text.replace("{port}", str(self.port if port is None else port))
            .replace("{id}", self.id)
            .replace("{accel}", self.accel)
            .replace("{boot_args}", self.boot_args)
            .replace("{dir}", str(definition.dir))
        )

    def fill_public(self, text: str, definition: FunctionDef) -> str:
        """`text` with `{port}` the public port (`request`, `[load] url`: through the proxy)."""
        return self.fill(text, definition, self.public_port or self.port)


# Where the programs a definition's commands name usually come from, for the "not installed" line.
_INSTALL_HINTS = {
    "make": "Debian: apt-get install make gcc",
    "qemu-system-x86_64": "Debian: apt-get install qemu-system-x86",
    "runc": "Debian: apt-get install runc",
    "crun": "Debian: apt-get install crun",
    "podman": "Debian: apt-get install podman",
    "docker": "Debian: apt-get install docker.io",
    "solo5-hvt": "Solo5 is not packaged in Debian: build it from source",
}


def _not_installed(program: str) -> str:
    hint = _INSTALL_HINTS.get(os.path.basename(program))
    return f"{program} is not installed" + (f" ({hint})" if hint else "")


def _which(program: str, cwd: Path) -> str | None:
    """The program a command names, as the launch will find it (relative paths from `cwd`)."""
    if os.sep in program:
        path = cwd / program
        return str(path) if path.is_file() and os.access(path, os.X_OK) else None
    return shutil.which(program)


def missing_images(definition: FunctionDef, wrap: Wrap) -> list[str]:
    return [p for p in wrap.image if not (definition.dir / p).exists()]


def ensure_built(definition: FunctionDef, wrap: Wrap) -> None:
    """Run the wrap's build command when any image file is missing; a DefinitionError (one line) when
    it cannot be built: no build command, the build's program not installed, the build failed, or it
    did not make the image; SideSkipped when the build says this host cannot build it (status 77)."""
    where = f"{definition.path}: [{wrap.side}]"
    missing = missing_images(definition, wrap)
    if not missing:
        return
    if not wrap.build:
        raise DefinitionError(f"{where} image missing and no build command: {', '.join(missing)}")
    build = " ".join(wrap.build)
    if _which(wrap.build[0], definition.dir) is None:
        raise DefinitionError(f"{where} cannot build the missing image ({build}): {_not_installed(wrap.build[0])}")
    try:
        result = subprocess.run(
            list(wrap.build), cwd=definition.dir, capture_output=True, text=True, stdin=subprocess.DEVNULL
        )
    except OSError as exc:
        raise DefinitionError(f"{where} cannot run the build ({build}): {exc.strerror or exc}") from None
    if result.returncode == SKIP_STATUS:
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = lines[-1].strip() if lines else f"its build ({build}) says it cannot be built here (status 77)"
        raise SideSkipped(f"{where} cannot be built on this host: {reason}", wrap.side, reason)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:] or [f"status {result.returncode}"]
        raise DefinitionError(f"{where} build failed ({build}): " + " | ".join(tail))
    still = missing_images(definition, wrap)
    if still:
        raise DefinitionError(f"{where} the build ({build}) succeeded but did not make: {', '.join(still)}")


def check_runnable(definition: FunctionDef, wrap: Wrap) -> None:
    """A DefinitionError (one line) when the program the wrap's command runs is not there."""
    program = wrap.command[0] if wrap.command else ""
    if program and _which(program, definition.dir) is None:
        raise DefinitionError(f"{definition.path}: [{wrap.side}] cannot launch: {_not_installed(program)}")


def proxied(definition: FunctionDef, wrap: Wrap) -> bool:
    """Whether a launch of `wrap` gets the invocation proxy: `proxy` is on and the function has a
    port (a `port` key, or `{port}` in the side's command, env or boot_args). A function without
    one (a run-to-completion guest) has nothing to proxy."""
    uses_port = any("{port}" in a for a in (*wrap.command, *wrap.env.values(), *wrap.boot_args))
    return definition.proxy and (definition.port is not None or uses_port)


def instance(definition: FunctionDef, wrap: Wrap, accel: str, public_port: int | None = None) -> Instance:
    """A launch's values: a free upstream port; when proxied, `public_port` (else a free one)."""
    inst = Instance(free_port(), f"{definition.name}-{secrets.token_hex(4)}", accel)
    if proxied(definition, wrap):
        inst.public_port = public_port or free_port()
    if wrap.boot_args:
        args = [inst.fill(a, definition) for a in wrap.boot_args]
        if args and args[0] == "python3":
            args[0] = sys.executable
        try:
            out = subprocess.run(args, cwd=definition.dir, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise DefinitionError(f"[{wrap.side}] boot_args: cannot run {args[0]}: {exc.strerror or exc}") from None
        if out.returncode != 0:
            raise DefinitionError(f"[{wrap.side}] boot_args failed: {out.stderr.strip()[-300:]}")
        inst.boot_args = out.stdout.strip()
    return inst


def command_for(definition: FunctionDef, wrap: Wrap, inst: Instance) -> list[str]:
    return [inst.fill(a, definition) for a in wrap.command]


def image_paths(definition: FunctionDef, wrap: Wrap) -> list[str]:
    return [str(definition.dir / p) for p in wrap.image]
