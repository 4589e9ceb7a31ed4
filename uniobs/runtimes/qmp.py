"""A synchronous, read-only client for QEMU's machine protocol (QMP), and pure parsers for its replies.

What is read: the greeting (QEMU's version), the replies to a fixed allowlist of query commands,
and the asynchronous events (SHUTDOWN, RESET, STOP, GUEST_PANICKED, ...) QEMU sends in between.
Queries used by uniobs and the first QEMU that has them: `query-status`, `query-balloon`,
`query-blockstats`, `query-version`, `query-name`, `query-kvm`, `query-uuid` (all before 2.0),
`query-memory-size-summary` (2.11), `query-cpus-fast` (2.12), `query-stats` and
`query-stats-schemas` (7.1; boolean stat values since 7.2). Developed against QEMU 7.2.

Safety: uniobs runs as root next to the VMs, so this client can only *read*. `execute` refuses
any command outside `ALLOWED_COMMANDS` with `QmpForbidden` before a byte is sent, and there is
no way to widen the list from configuration. Every socket operation has a deadline (2 s by
default); one message may be at most 1 MiB and the event buffer holds at most 256 events, so a
broken or hostile peer costs bounded memory and time. A peer that violates the protocol gets a
`QmpError` and the connection is closed; a VMM that goes away gets `QmpGone`, which is a
`uniobs.plugin.WorkloadGone` (churn, not an error).

QEMU serves one client at a time per `-qmp` socket: while another client (libvirt, a person with
socat) is connected, a second connection is accepted by the kernel but gets no greeting. That
shows up here as `QmpBusy` after the timeout. Give uniobs its own `-qmp` socket.

The parsers (`MessageFramer`, `decode_message`, `parse_*`) do no I/O; `QmpClient` does the
socket work and nothing else. Nothing here knows about metrics. Whatever a peer sends, a parser
raises nothing but `QmpError`, and that only when nothing of the reply can be used: it is not the
JSON type QEMU's schema (qapi/*.json) gives it, or a single-object reply lacks a mandatory member.
Otherwise it returns what it can: unknown members are ignored, integers are kept exact whatever
their size, and in a list an element that is not what the schema says (a device without its
counters, a statistic with a value of another type) is left out, absent, never read as 0, so one
bad element costs only itself.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import logging
import select
import socket
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, TypeVar

import orjson

from uniobs.model import AttributeValue, LogEvent, Severity
from uniobs.plugin import WorkloadGone

log = logging.getLogger("uniobs.qmp")
_T = TypeVar("_T")

DEFAULT_TIMEOUT = 2.0
# A workload label: its QMP events are already read on a socket of their own (`uniobs run` adds
# one; QEMU sends every event to every monitor), so the qemu collector must not report them again.
EVENTS_WATCHED = "uniobs.qmp.events_watched"
MAX_MESSAGE = 1 << 20  # bytes; QEMU's largest usual reply (query-stats-schemas under KVM) is ~6 KiB
MAX_EVENTS = 256  # buffered between two drains; the oldest are dropped first
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps(separators=) builds one per call

# The only commands this client sends. All are read-only queries; qmp_capabilities is the
# handshake that leaves capabilities-negotiation mode (it changes nothing in the VM).
ALLOWED_COMMANDS = frozenset(
    {
        "qmp_capabilities",
        "query-status",
        "query-cpus-fast",
        "query-memory-size-summary",
        "query-balloon",
        "query-blockstats",
        "query-stats",
        "query-stats-schemas",
        "query-version",
        "query-name",
        "query-kvm",
        "query-uuid",
    }
)

# QEMU's RunState enum (qapi/run-state.json, QEMU 7.2): the values query-status may return.
RUN_STATES = frozenset(
    {
        "debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate", "prelaunch",
        "finish-migrate", "restore-vm", "running", "save-vm", "shutdown", "suspended", "watchdog",
        "guest-panicked", "colo",
    }
)  # fmt: skip


# --- errors ---------------------------------------------------------------------------------


class QmpError(Exception):
    """The QMP conversation failed: protocol violation, oversized or non-JSON message, timeout."""


class QmpForbidden(QmpError):
    """A command outside the read-only allowlist was requested; nothing was sent."""


class QmpTimeout(QmpError):
    """QEMU did not answer within the timeout. The connection is closed."""


class QmpBusy(QmpTimeout):
    """Connected, but no greeting arrived: another client holds this QMP socket."""


class QmpGone(QmpError, WorkloadGone):
    """The VMM went away: nothing listens on the socket, or it closed the connection mid-call."""


class QmpCommandError(QmpError):
    """QEMU answered with an error (e.g. DeviceNotActive). The connection stays usable."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"{command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QmpGreeting:
    version: tuple[int, int, int]  # (major, minor, micro)
    package: str
    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QmpEvent:
    """An asynchronous event. `qemu_timestamp_s` is QEMU's wall-clock stamp (seconds since the
    epoch, microsecond resolution); `arrival_monotonic_ns` is when this client read it."""

    name: str
    data: Mapping[str, Any]
    qemu_timestamp_s: float
    arrival_monotonic_ns: int


@dataclass(frozen=True, slots=True)
class VmStatus:
    status: str  # a RunState value, as QEMU spelled it
    running: bool


@dataclass(frozen=True, slots=True)
class Vcpu:
    index: int  # cpu-index
    thread_id: int  # host thread id, in QEMU's pid namespace
    qom_path: str


@dataclass(frozen=True, slots=True)
class MemorySummary:
    base: int  # bytes of boot memory
    plugged: int  # bytes hot-plugged (DIMMs, virtio-mem); 0 when absent

    @property
    def total(self) -> int:
        return self.base + self.plugged


@dataclass(frozen=True, slots=True)
class BlockStats:
    device: str  # the BlockBackend name, else the qdev path, else the node name
    rd_bytes: int
    wr_bytes: int
    rd_operations: int
    wr_operations: int
    flush_operations: int


@dataclass(frozen=True, slots=True)
class StatSchema:
    """One statistic's description (query-stats-schemas)."""

    provider: str  # "kvm"
    target: str  # "vm" or "vcpu"
    name: str
    type: str  # cumulative | instant | peak | linear-histogram | log2-histogram
    unit: str | None  # bytes | seconds | cycles | boolean, or None for a plain count
    base: int
    exponent: int  # the value is in unit * base**exponent (e.g. seconds * 10**-9 for *_ns)


@dataclass(frozen=True, slots=True)
class StatsResult:
    """The statistics of one provider for one object (the VM, or one vCPU by QOM path)."""

    provider: str
    qom_path: str | None  # None for the VM target
    values: tuple[tuple[str, int | tuple[int, ...]], ...]  # booleans become 0/1; histograms tuples


# --- framing and decoding (no I/O) ----------------------------------------------------------


class MessageFramer:
    """Splits the byte stream into messages, with a hard bound on the size of each.

    QEMU writes each message as one line of compact JSON followed by CRLF (JSON strings escape
    newlines, so a newline always ends a message). Without a newline within `max_message`
    bytes the peer is not speaking QMP, or is sending more than we accept: QmpError.
    """

    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self.max_message = max_message
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Append bytes; return the complete messages (without the line end), in order."""
        if not self._buf and data.endswith(b"\n") and len(data) <= self.max_message:
            # The usual chunk: whole messages, nothing held back (QEMU writes each as one line).
            return [line for line in (raw.strip() for raw in data.split(b"\n")) if line]
        scanned = len(self._buf)  # no newline before here, or it would have been cut already
        self._buf += data
        out: list[bytes] = []
        start = 0
        while True:
            end = self._buf.find(b"\n", max(start, scanned))
            if end < 0:
                break
            if end - start > self.max_message:
                raise QmpError(f"QMP message of {end - start} bytes exceeds the {self.max_message}-byte limit")
            line = bytes(self._buf[start:end]).strip()
            if line:
                out.append(line)
            start = end + 1
        del self._buf[:start]
        if len(self._buf) > self.max_message:
            raise QmpError(
                f"QMP message exceeds the {self.max_message}-byte limit ({len(self._buf)} bytes without a line end)"
            )
        return out


def _loads(text: bytes) -> Any:
    """JSON from bytes: orjson (~2-3x faster here on QMP replies) when it reads them as the
    standard library would, else `json.loads`. orjson turns integers beyond 64 bits into floats,
    where these parsers promise them exact: text with a run of 19 digits (2**64 has 20, -2**63
    19) goes to the standard library; so does whatever orjson refuses (NaN, lone surrogates, deep nesting),
    which `json.loads` accepts or refuses as before."""
    if _LONG_NUMBER not in text.translate(_DIGITS):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


_DIGITS = bytes(0x30 if 0x30 <= i <= 0x39 else 0x20 for i in range(256))  # digits -> "0", the rest -> " "
_LONG_NUMBER = b"0" * 19


def decode_message(line: bytes) -> dict[str, Any]:
    """One QMP message: a JSON object. Anything else is a protocol violation."""
    try:
        obj = _loads(line)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested arrays
        snippet = line[:60].decode("utf-8", "replace")
        raise QmpError(f"QMP peer sent something that is not JSON ({type(exc).__name__}): {snippet!r}") from None
    if not isinstance(obj, dict):
        raise QmpError(f"QMP peer sent JSON that is not an object: {type(obj).__name__}")
    return obj


def decode_messages(lines: Sequence[bytes]) -> list[dict[str, Any]]:
    """Several QMP messages (lines, as `MessageFramer.feed` gives them) with one `json.loads` of
    them as one JSON array: what a scrape's round trip returns costs one decoder call, not one per
    reply (`_loads`). Each must be a JSON object; when the array does not give exactly one object per line,
    each line is decoded alone (`decode_message`), which names the one that is not one. (Lines
    made to parse only together, such as '{"a":[1' then '2]}', count as the objects they make:
    objects still, within the same size bounds.)"""
    try:
        objs = _loads(b"[" + b",".join(lines) + b"]")
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        objs = None
    if type(objs) is list and len(objs) == len(lines) and all(type(o) is dict for o in objs):
        return objs
    return [decode_message(line) for line in lines]


def _short(value: Any) -> str:
    """A value for a message, cut: a hostile peer's value can be a megabyte (or an integer too long
    for repr)."""
    text = repr(value) if isinstance(value, (str, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:59] + "…"


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise QmpError(f"malformed QMP reply: {what} is {_short(value)}, not an integer")
    return value


def _as_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise QmpError(f"malformed QMP reply: {what} is not an object")
    return value


def _as_list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise QmpError(f"malformed QMP reply: {what} is not a list")
    return value


def _as_str(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise QmpError(f"malformed QMP reply: {what} is not a string")
    return value


def parse_greeting(msg: Mapping[str, Any]) -> QmpGreeting:
    """{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": ...}, ...}}"""
    qmp = msg.get("QMP")
    if not isinstance(qmp, dict):
        raise QmpError("the peer's first message is not a QMP greeting")
    version = _as_dict(qmp.get("version", {}), "QMP.version")
    qemu = _as_dict(version.get("qemu", {}), "QMP.version.qemu")
    numbers = tuple(_as_int(qemu.get(k, 0), f"QMP.version.qemu.{k}") for k in ("major", "minor", "micro"))
    caps = tuple(str(c) for c in _as_list(qmp.get("capabilities", []), "QMP.capabilities"))
    package = version.get("package", "")
    return QmpGreeting((numbers[0], numbers[1], numbers[2]), package if isinstance(package, str) else "", caps)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_event(msg: Mapping[str, Any], arrival_monotonic_ns: int) -> QmpEvent:
    """{"event": "SHUTDOWN", "data": {...}, "timestamp": {"seconds": s, "microseconds": us}}

    A timestamp that is not two integers a float can hold reads as 0 (QEMU writes -1/-1 when it
    could not read its clock)."""
    name = _as_str(msg.get("event"), "event")
    data = msg.get("data", {})
    stamp = msg.get("timestamp", {})
    when = 0.0
    if isinstance(stamp, dict):
        s, us = stamp.get("seconds", 0), stamp.get("microseconds", 0)
        try:
            when = (s if _is_int(s) else 0) + (us if _is_int(us) else 0) / 1e6
        except OverflowError:  # integers beyond a double's range
            when = 0.0
    return QmpEvent(name, data if isinstance(data, dict) else {}, when, arrival_monotonic_ns)


def parse_status(ret: Any) -> VmStatus:
    """query-status: {"status": "running", "singlestep": false, "running": true}"""
    d = _as_dict(ret, "query-status")
    return VmStatus(_as_str(d.get("status"), "query-status.status"), d.get("running") is True)


def _each(items: list[Any], what: str, parse: Callable[[Any], _T]) -> list[_T]:
    """`parse` of each element of a list reply; an element it refuses (QmpError) is left out."""
    out = []
    for i, item in enumerate(items):
        try:
            out.append(parse(item))
        except QmpError as exc:
            log.debug("%s[%d] left out: %s", what, i, exc)
    return out


def _vcpu(entry: Any) -> Vcpu:
    d = _as_dict(entry, "query-cpus-fast element")
    qom = d.get("qom-path", "")
    return Vcpu(
        _as_int(d.get("cpu-index"), "cpu-index"),
        _as_int(d.get("thread-id"), "thread-id"),
        _as_str(qom, "qom-path"),
    )


def parse_cpus_fast(ret: Any) -> tuple[Vcpu, ...]:
    """query-cpus-fast: [{"cpu-index": 0, "thread-id": 8358, "qom-path": "/machine/...", ...}]"""
    return tuple(_each(_as_list(ret, "query-cpus-fast"), "query-cpus-fast", _vcpu))


def parse_memory_size_summary(ret: Any) -> MemorySummary:
    """query-memory-size-summary: {"base-memory": 67108864, "plugged-memory": 0} (plugged optional)"""
    d = _as_dict(ret, "query-memory-size-summary")
    base = _as_int(d.get("base-memory"), "base-memory")
    plugged = _as_int(d.get("plugged-memory", 0), "plugged-memory")
    return MemorySummary(base, plugged)


def parse_balloon(ret: Any) -> int:
    """query-balloon: {"actual": 67108864}, the guest's memory after ballooning, in bytes."""
    return _as_int(_as_dict(ret, "query-balloon").get("actual"), "query-balloon.actual")


def parse_blockstats(ret: Any) -> tuple[BlockStats, ...]:
    """query-blockstats: [{"device": "d0", "qdev": ..., "node-name": ..., "stats": {"rd_bytes": ...}}]

    Devices attached with -blockdev have an empty "device"; they are named by their qdev path
    (or node name) instead.
    """

    def device(numbered: tuple[int, Any]) -> BlockStats:
        i, entry = numbered
        d = _as_dict(entry, "query-blockstats element")
        stats = _as_dict(d.get("stats"), "query-blockstats stats")
        name = next((v for k in ("device", "qdev", "node-name") if isinstance(v := d.get(k), str) and v), f"#{i}")
        # every counter is mandatory in BlockDeviceStats: a missing one is not 0 (a false reset)
        counters: list[Any] = [stats.get(k) for k in _BLOCK_COUNTERS]
        if not all(type(c) is int for c in counters):  # the usual case checked at once; else say which
            counters = [_as_int(stats.get(k), k) for k in _BLOCK_COUNTERS]
        return BlockStats(name, *counters)

    return tuple(_each(list(enumerate(_as_list(ret, "query-blockstats"))), "query-blockstats", device))


_BLOCK_COUNTERS = ("rd_bytes", "wr_bytes", "rd_operations", "wr_operations", "flush_operations")


def parse_stats_schemas(ret: Any) -> tuple[StatSchema, ...]:
    """query-stats-schemas: [{"provider": "kvm", "target": "vcpu", "stats": [{"name": ...,
    "type": "cumulative", "unit": "seconds", "base": 10, "exponent": -9}, ...]}]. [] under TCG."""

    def schemas(schema: Any) -> list[StatSchema]:
        d = _as_dict(schema, "query-stats-schemas element")
        provider = _as_str(d.get("provider"), "provider")
        target = _as_str(d.get("target"), "target")

        def stat(entry: Any) -> StatSchema:
            s = _as_dict(entry, "query-stats-schemas stat")
            unit = s.get("unit")
            return StatSchema(
                provider,
                target,
                _as_str(s.get("name"), "name"),
                _as_str(s.get("type"), "type"),
                unit if isinstance(unit, str) else None,
                _as_int(s.get("base", 10), "base"),
                _as_int(s.get("exponent", 0), "exponent"),
            )

        return _each(_as_list(d.get("stats", []), "stats"), "query-stats-schemas stats", stat)

    found = _each(_as_list(ret, "query-stats-schemas"), "query-stats-schemas", schemas)
    return tuple(schema for group in found for schema in group)


def parse_stats(ret: Any) -> tuple[StatsResult, ...]:
    """query-stats: [{"provider": "kvm", "qom-path": "/machine/unattached/device[0]",
    "stats": [{"name": "exits", "value": 1914}, {"name": "guest_mode", "value": false},
    {"name": "halt_wait_hist", "value": [0, 8, ...]}]}]. "qom-path" is absent for the VM."""

    def stat(entry: Any) -> tuple[str, int | tuple[int, ...]]:
        s = _as_dict(entry, "query-stats stat")
        name = _as_str(s.get("name"), "name")
        value = s.get("value")
        if isinstance(value, bool):  # StatsValue 'boolean' (7.2), e.g. guest_mode
            return name, int(value)
        if isinstance(value, int):
            return name, value
        if isinstance(value, list):  # histogram buckets
            return name, tuple(_as_int(v, name) for v in value)
        raise QmpError(f"malformed QMP reply: query-stats value of {name} is {_short(value)}")

    def result(entry: Any) -> StatsResult:
        d = _as_dict(entry, "query-stats element")
        qom = d.get("qom-path")
        values = _each(_as_list(d.get("stats", []), "stats"), "query-stats stats", stat)
        return StatsResult(_as_str(d.get("provider"), "provider"), qom if isinstance(qom, str) else None, tuple(values))

    return tuple(_each(_as_list(ret, "query-stats"), "query-stats", result))


def check_allowed(command: str) -> None:
    if command not in ALLOWED_COMMANDS:
        raise QmpForbidden(f"QMP command {command!r} is not in uniobs' read-only allowlist; nothing was sent")


# --- the client -----------------------------------------------------------------------------

_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN})
# '{"execute":"<command>","id":"' for each allowed command: a request without arguments is this,
# its id and '"}' (the bytes _ENCODE gives for {"execute": command, "id": id}).
_HEADS = {c: _ENCODE({"execute": c, "id": ""})[:-2].encode() for c in ALLOWED_COMMANDS}


@dataclass(frozen=True, slots=True)
class _Ahead:
    """A batch `send_ahead` sent: its calls, request ids (id -> index), bytes still to send, or
    the error sending met."""

    calls: tuple[tuple[str, Mapping[str, Any] | None], ...]
    pending: Mapping[str, int]
    unsent: bytes
    error: OSError | None


class QmpClient:
    """One QMP connection over a unix socket. Not thread-safe: one caller at a time.

    Connects lazily on the first `execute`. After any failure other than a command error the
    connection is closed, and the next `execute` reconnects. Once connected the socket is
    non-blocking and every wait is a poll(2) bounded by the call's deadline; the lines a wait
    brings are decoded together (`decode_messages`).
    """

    def __init__(
        self,
        path: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_message: int = MAX_MESSAGE,
        max_events: int = MAX_EVENTS,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0 seconds")
        self.path = path
        self.timeout = timeout
        self.max_message = max_message
        self._sock: socket.socket | None = None
        self._framer = MessageFramer(max_message)
        self._ready: collections.deque[bytes] = collections.deque()  # framed lines, not yet consumed
        self._poller: select.poll | None = None  # the socket, readable (non-blocking once connected)
        self._events: collections.deque[QmpEvent] = collections.deque()
        self._max_events = max_events
        self.dropped_events = 0  # events dropped because the buffer was full, since creation
        self.greeting: QmpGreeting | None = None
        self.peer_pid: int | None = None  # the process that created the listening socket (SO_PEERCRED)
        self._next_id = 0
        self._ahead: _Ahead | None = None  # a batch sent by send_ahead, its replies not read yet

    # -- public API

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def connect(self) -> QmpGreeting:
        """Connect, read the greeting, and negotiate capabilities (none are enabled)."""
        self.close()
        deadline = time.monotonic() + self.timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            while True:
                try:
                    sock.connect(self.path)
                    break
                except BlockingIOError:
                    # EAGAIN: QEMU's listen backlog is full (another client is connecting, e.g.
                    # a second monitoring agent): it clears in milliseconds, so wait for it.
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.01)
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise QmpTimeout(f"{self.path}: connect timed out after {self.timeout:g} s") from None
            if exc.errno in _GONE_ERRNOS:
                raise QmpGone(f"{self.path}: no QMP server ({exc.strerror})") from None
            raise QmpError(f"{self.path}: cannot connect: {exc.strerror or exc}") from exc
        # From here the socket is non-blocking and waits are poll(2) with each call's deadline:
        # a socket timeout would cost a mode change (ioctl) per call and a poll before every recv.
        sock.setblocking(False)
        self._poller = select.poll()
        self._poller.register(sock.fileno(), select.POLLIN)
        self._sock = sock
        self._framer = MessageFramer(self.max_message)
        self._ready.clear()
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            self.peer_pid = struct.unpack("3i", creds)[0] or None
        except OSError:
            self.peer_pid = None
        try:
            first = self._next_message(deadline, waiting_for="the greeting")
        except QmpTimeout:
            raise QmpBusy(
                f"{self.path}: no QMP greeting within {self.timeout:g} s: another client is probably "
                "connected (QEMU serves one client per -qmp socket)"
            ) from None
        self.greeting = parse_greeting(first)
        self._call("qmp_capabilities", None, deadline)
        return self.greeting

    def execute(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Run one allowlisted command; return its "return" value.

        Raises QmpForbidden (nothing sent), QmpCommandError (QEMU refused; still connected),
        QmpGone (the VMM went away), QmpTimeout or QmpError (connection closed).
        """
        check_allowed(command)
        self._ahead = None  # the replies to a batch sent ahead are read and ignored (their ids)
        if self._sock is None:
            self.connect()
        return self._call(command, arguments, time.monotonic() + self.timeout)

    def send_ahead(self, calls: Sequence[tuple[str, Mapping[str, Any] | None]]) -> bool:
        """Send a batch now and return without waiting: the next `execute_many` of the same calls
        reads its replies instead of sending it again, so QEMU answers while the caller does
        other work (a scrape reads /proc meanwhile). Never blocks and never raises: False (nothing
        sent) when not connected, when a batch sent ahead is still unread, when the socket is not
        writable at once, or for a command outside the allowlist; a failure to send is raised by
        that `execute_many`, as it would have been."""
        if self._sock is None or self._ahead is not None or not calls:
            return False
        try:
            for command, _ in calls:
                check_allowed(command)
        except QmpForbidden:
            return False
        pending: dict[str, int] = {}
        payload = []
        for index, (command, arguments) in enumerate(calls):
            msg_id, request = self._request(command, arguments)
            pending[msg_id] = index
            payload.append(request)
        data = b"".join(payload)
        try:
            sent = self._sock.send(data)
        except BlockingIOError:  # QEMU is not reading (its socket buffer is full): ask at collect time
            return False
        except OSError as exc:
            self._ahead = _Ahead(tuple(calls), pending, b"", exc)
            return True
        self._ahead = _Ahead(tuple(calls), pending, data[sent:], None)
        return True

    def execute_many(self, calls: Sequence[tuple[str, Mapping[str, Any] | None]]) -> list[Any]:
        """Run several allowlisted commands in one round trip (sent together, answered in order).

        Returns one entry per call: its "return" value, or the QmpCommandError QEMU answered it
        with (the others still ran; still connected). Other failures raise as in `execute`.
        QEMU reads a client's requests in order and queues up to 8 before it pauses reading, so
        a batch needs no capability; it only saves the waits between them. When the same calls
        were sent by `send_ahead`, their replies are read (and nothing is sent but what was left).
        """
        for command, _ in calls:
            check_allowed(command)
        ahead, self._ahead = self._ahead, None
        if not calls:
            return []
        if self._sock is None:
            self.connect()
        deadline = time.monotonic() + self.timeout
        answered = ahead is not None and (ahead.calls is calls or ahead.calls == tuple(calls))
        if ahead is not None and answered:
            if ahead.error is not None:
                self._harvest()  # the SHUTDOWN QEMU sent before it exited is still readable
                self._fail_gone(f"{self.path}: connection lost while sending ({ahead.error.strerror or ahead.error})")
            pending = dict(ahead.pending)
            if ahead.unsent:
                self._send(ahead.unsent, deadline)
        else:  # a batch sent ahead but not asked for: its replies are read and ignored (their ids)
            pending = {}
            payload = []
            for index, (command, arguments) in enumerate(calls):
                msg_id, request = self._request(command, arguments)
                pending[msg_id] = index
                payload.append(request)
            self._send(b"".join(payload), deadline)
        results: list[Any] = [None] * len(calls)
        replies: collections.deque[dict[str, Any]] = collections.deque()
        while pending:
            waiting = calls[min(pending.values())][0]
            if not replies:  # at least one line per pending reply will come: decode them together
                what = f"the reply to {waiting}"
                replies.extend(self._next_messages(len(pending), deadline, waiting_for=what, answered=answered))
                answered = False
            reply = replies.popleft()
            if "event" in reply:
                self._stash([reply])
                continue
            reply_id = reply.get("id")
            found = pending.pop(reply_id, None) if isinstance(reply_id, str) else None
            if found is None:
                if reply_id is None and "error" in reply:
                    err = reply["error"] if isinstance(reply["error"], dict) else {}
                    self._fail(QmpError(f"{waiting}: QEMU rejected the request: {err.get('desc', reply['error'])}"))
                log.debug("%s: ignoring a reply for id %r", self.path, reply_id)
                continue
            index, command = found, calls[found][0]
            if "error" in reply:
                err = reply["error"] if isinstance(reply["error"], dict) else {}
                results[index] = QmpCommandError(
                    command, str(err.get("class", "GenericError")), str(err.get("desc", ""))
                )
            elif "return" in reply:
                results[index] = reply["return"]
            else:
                self._fail(QmpError(f"{command}: a reply with neither return nor error"))
        self._stash(replies)  # what came after the last reply (events), in order
        return results

    def poll(self) -> None:
        """Read whatever QEMU already sent (events between calls) without waiting.

        Raises QmpGone if QEMU closed the connection; the events read before are kept.
        """
        if self._sock is None:
            return
        if self._ahead is None:
            self._stash_lines()
        budget = 4 * self.max_message  # an event flood must not keep us here forever
        while budget > 0 and self._sock is not None and self._poller is not None:
            if not self._poller.poll(0):  # nothing to read: cheaper than a recv that fails
                return
            try:
                data = self._sock.recv(65536)  # non-blocking (see connect)
            except BlockingIOError:
                return
            except OSError as exc:
                self._fail_gone(f"{self.path}: connection lost ({exc.strerror or exc})")
            if not data:
                self._fail_gone(f"{self.path}: QEMU closed the QMP connection")
            budget -= len(data)
            lines = self._framer_feed(data)
            if lines and self._ahead is not None:  # replies to the batch sent ahead among them: kept for it
                self._ready.extend(lines)
            elif lines:
                self._stash(self._decode(lines))

    @property
    def events_waiting(self) -> int:
        """Events received and not drained yet."""
        return len(self._events)

    def drain_events(self) -> list[QmpEvent]:
        """The events received so far, oldest first; the buffer is emptied."""
        events = list(self._events)
        self._events.clear()
        return events

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._poller = None
        self._ahead = None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> QmpClient:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- internals

    def _call(self, command: str, arguments: Mapping[str, Any] | None, deadline: float) -> Any:
        check_allowed(command)  # again: _call is reachable from connect() too
        msg_id, request = self._request(command, arguments)
        self._send(request, deadline)
        while True:
            reply = self._next_message(deadline, waiting_for=f"the reply to {command}")
            if "event" in reply:
                self._stash([reply])
                continue
            reply_id = reply.get("id")
            if reply_id != msg_id:
                if reply_id is None and "error" in reply:
                    # QEMU answers input it could not parse with an id-less error.
                    err = reply["error"] if isinstance(reply["error"], dict) else {}
                    self._fail(QmpError(f"{command}: QEMU rejected the request: {err.get('desc', reply['error'])}"))
                log.debug("%s: ignoring a reply for id %r", self.path, reply_id)
                continue
            if "error" in reply:
                err = reply["error"] if isinstance(reply["error"], dict) else {}
                raise QmpCommandError(command, str(err.get("class", "GenericError")), str(err.get("desc", "")))
            if "return" not in reply:
                self._fail(QmpError(f"{command}: a reply with neither return nor error"))
            return reply["return"]

    def _request(self, command: str, arguments: Mapping[str, Any] | None) -> tuple[str, bytes]:
        """A new request id and the line that asks `command` (allowlisted by the caller)."""
        self._next_id += 1
        msg_id = f"uniobs-{self._next_id}"
        if not arguments:
            return msg_id, b'%s%s"}\n' % (_HEADS[command], msg_id.encode())
        msg = {"execute": command, "id": msg_id, "arguments": dict(arguments)}
        return msg_id, _ENCODE(msg).encode() + b"\n"

    def _send(self, data: bytes, deadline: float) -> None:
        assert self._sock is not None
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:  # the socket buffer is full: wait until QEMU reads
                if not self._wait(deadline, select.POLLOUT):
                    self._fail(QmpTimeout(f"{self.path}: sending timed out after {self.timeout:g} s"))
                continue
            except OSError as exc:
                self._harvest()  # the SHUTDOWN QEMU sent before it exited is still readable
                self._fail_gone(f"{self.path}: connection lost while sending ({exc.strerror or exc})")
            view = view[sent:]

    def _wait(self, deadline: float, event: int = select.POLLIN) -> bool:
        """Wait until the socket is readable (or writable); False at the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        poller = self._poller
        if event != select.POLLIN or poller is None:
            assert self._sock is not None
            poller = select.poll()
            poller.register(self._sock.fileno(), event)
        return bool(poller.poll(left * 1000 + 1))  # ms, rounded up: never 0 before the deadline

    def _next_message(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        return self._next_messages(1, deadline, waiting_for)[0]

    def _next_messages(
        self, count: int, deadline: float, waiting_for: str, *, answered: bool = False
    ) -> list[dict[str, Any]]:
        """The next `count` messages, waited for until the deadline and decoded together. The
        caller knows that many will come (one reply per request still unanswered); events
        among them count. `answered`: the requests went out a while ago (send_ahead), so the
        replies are likely there: read before waiting."""
        wait = not answered
        while len(self._ready) < count:
            assert self._sock is not None
            # Wait first: a reply is never there yet right after the request (QEMU answers one
            # command per main-loop turn), and poll(2) then recv costs less than a failed recv.
            if wait and not self._wait(deadline):
                self._fail(QmpTimeout(f"{self.path}: timed out after {self.timeout:g} s waiting for {waiting_for}"))
            wait = True
            try:
                data = self._sock.recv(65536)  # non-blocking (see connect)
            except BlockingIOError:  # readable, then not (spurious wake-up)
                continue
            except OSError as exc:
                self._fail_gone(f"{self.path}: connection lost waiting for {waiting_for} ({exc.strerror or exc})")
            if not data:
                self._fail_gone(f"{self.path}: QEMU closed the connection while we waited for {waiting_for}")
            self._ready.extend(self._framer_feed(data))
        lines = [self._ready.popleft() for _ in range(count)]
        return self._decode(lines)

    def _framer_feed(self, data: bytes) -> list[bytes]:
        try:
            return self._framer.feed(data)
        except QmpError as exc:
            self._fail(exc)

    def _decode(self, lines: Sequence[bytes]) -> list[dict[str, Any]]:
        try:
            return decode_messages(lines)
        except QmpError as exc:
            self._ready.extendleft(reversed(lines))  # so that _fail keeps the events among them
            self._fail(exc)

    def _harvest(self) -> None:
        """After the peer vanished: keep the events still readable from the socket."""
        with contextlib.suppress(QmpError):
            self.poll()

    def _stash(self, messages: Sequence[dict[str, Any]] | collections.deque[dict[str, Any]]) -> None:
        now = time.monotonic_ns()
        for msg in messages:
            if "event" not in msg:
                continue  # a late reply for a call that timed out: nothing waits for it
            try:
                event = parse_event(msg, now)
            except QmpError:
                continue
            if len(self._events) >= self._max_events:
                self._events.popleft()
                self.dropped_events += 1
            self._events.append(event)

    def _stash_lines(self) -> None:
        """The framed lines not consumed yet: events are kept, the rest dropped."""
        lines = list(self._ready)
        self._ready.clear()
        for line in lines:
            with contextlib.suppress(QmpError):
                self._stash([decode_message(line)])

    def _fail(self, exc: QmpError) -> NoReturn:
        self._stash_lines()
        self.close()
        raise exc

    def _fail_gone(self, message: str) -> NoReturn:
        self._stash_lines()
        self.close()
        raise QmpGone(message)


# --- events as log records (shared by the qemu collector and `uniobs run`'s event watcher) ---

_ERROR_EVENTS = frozenset({"GUEST_PANICKED", "GUEST_CRASHLOADED", "BLOCK_IO_ERROR", "MEMORY_FAILURE"})
_WARN_EVENTS = frozenset(
    {"RESET", "STOP", "WATCHDOG", "SUSPEND", "SUSPEND_DISK", "BLOCK_JOB_ERROR", "DEVICE_UNPLUG_GUEST_ERROR"}
)
_MAX_EVENT_ATTRS = 16
_MAX_TEXT = 256


def _attr_key(text: str) -> str:
    key = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return key or "_"


def _flatten(prefix: str, data: Mapping[str, Any], out: dict[str, AttributeValue], depth: int = 0) -> None:
    for key, value in data.items():
        if len(out) >= _MAX_EVENT_ATTRS:
            return
        name = f"{prefix}.{_attr_key(str(key))}"
        if isinstance(value, bool | int | float):
            out[name] = value
        elif isinstance(value, str):
            out[name] = value[:_MAX_TEXT]
        elif isinstance(value, dict) and depth < 2:
            _flatten(name, value, out, depth + 1)
        else:
            out[name] = json.dumps(value, separators=(",", ":"))[:_MAX_TEXT]


def event_severity(event: QmpEvent) -> Severity:
    if event.name in _ERROR_EVENTS or (event.name == "SHUTDOWN" and event.data.get("reason") == "guest-panic"):
        return Severity.ERROR
    if event.name in _WARN_EVENTS:
        return Severity.WARN
    return Severity.INFO


def event_log(event: QmpEvent) -> LogEvent:
    """A QMP event as a log record: `qemu.shutdown` with `qemu.shutdown.reason`, ..."""
    prefix = f"qemu.{_attr_key(event.name)}"
    attributes: dict[str, AttributeValue] = {}
    _flatten(prefix, event.data, attributes)
    attributes["qemu.event.timestamp"] = event.qemu_timestamp_s
    body = event.name
    if event.data:
        body += " " + json.dumps(event.data, separators=(",", ":"), sort_keys=True)[: 2 * _MAX_TEXT]
    return LogEvent(
        time_ns=event.arrival_monotonic_ns,
        body=body,
        severity=event_severity(event),
        attributes=tuple(attributes.items()),
        event_name=prefix,
    )
