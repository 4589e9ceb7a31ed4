"""The QMP client: parsers on replies recorded from QEMU 7.2 (tests/testdata/qmp, see SOURCE.md), and
the client against a fake QMP server on a unix socket that misbehaves in every way we could think of."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from uniobs.plugin import WorkloadGone
from uniobs.runtimes.qmp import (
    ALLOWED_COMMANDS,
    MAX_EVENTS,
    MessageFramer,
    QmpBusy,
    QmpClient,
    QmpCommandError,
    QmpError,
    QmpForbidden,
    QmpGone,
    QmpTimeout,
    StatsResult,
    Vcpu,
    decode_message,
    decode_messages,
    parse_balloon,
    parse_blockstats,
    parse_cpus_fast,
    parse_event,
    parse_greeting,
    parse_memory_size_summary,
    parse_stats,
    parse_stats_schemas,
    parse_status,
)

DATA = Path(__file__).parent / "testdata" / "qmp"


def recorded(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def ret(name: str) -> Any:
    return recorded(name)["return"]


# --- parsers on recorded replies ------------------------------------------------------------


def test_greeting_gives_the_qemu_version() -> None:
    greeting = parse_greeting(recorded("greeting.json"))
    assert greeting.version == (7, 2, 22)
    assert greeting.package.startswith("Debian")
    assert greeting.capabilities == ("oob",)
    with pytest.raises(QmpError, match="not a QMP greeting"):
        parse_greeting({"return": {}})


def test_status_cpus_memory_from_tcg() -> None:
    status = parse_status(ret("tcg-query-status.json"))
    assert (status.status, status.running) == ("running", True)
    cpus = parse_cpus_fast(ret("tcg-query-cpus-fast.json"))
    assert [c.index for c in cpus] == [0, 1]
    assert all(c.thread_id > 0 for c in cpus) and cpus[0].thread_id != cpus[1].thread_id
    assert [c.qom_path for c in cpus] == ["/machine/unattached/device[0]", "/machine/unattached/device[2]"]
    memory = parse_memory_size_summary(ret("tcg-query-memory-size-summary.json"))
    assert (memory.base, memory.plugged, memory.total) == (64 << 20, 0, 64 << 20)
    assert parse_memory_size_summary({"base-memory": 1024}).plugged == 0  # plugged-memory is optional


def test_balloon_and_blockstats() -> None:
    assert parse_balloon(ret("tcg-devices-query-balloon.json")) == 64 << 20
    assert recorded("tcg-query-balloon.json")["error"]["class"] == "DeviceNotActive"
    assert parse_blockstats(ret("tcg-query-blockstats.json")) == ()
    (d0,) = parse_blockstats(ret("tcg-devices-query-blockstats.json"))
    assert d0.device == "d0"
    assert (d0.rd_bytes, d0.wr_bytes, d0.rd_operations, d0.wr_operations, d0.flush_operations) == (0, 0, 0, 0, 0)
    # -blockdev devices have no BlockBackend name: the qdev path names them
    stats = ret("tcg-devices-query-blockstats.json")[0]["stats"]
    entry = {"device": "", "qdev": "/machine/peripheral/disk0/virtio-backend", "stats": {**stats, "rd_bytes": 512}}
    assert parse_blockstats([entry])[0].device == "/machine/peripheral/disk0/virtio-backend"


def test_tcg_has_no_stats() -> None:
    assert parse_stats(ret("tcg-query-stats-vm.json")) == ()
    assert parse_stats(ret("tcg-query-stats-vcpu.json")) == ()
    assert parse_stats_schemas(ret("tcg-query-stats-schemas.json")) == ()
    assert ret("tcg-query-kvm.json") == {"enabled": False, "present": True}


def test_kvm_stats_schemas_and_values() -> None:
    schemas = parse_stats_schemas(ret("kvm-query-stats-schemas.json"))
    by_key = {(s.target, s.name): s for s in schemas}
    assert len([s for s in schemas if s.target == "vm"]) == 16
    assert len([s for s in schemas if s.target == "vcpu"]) == 47
    assert by_key[("vcpu", "exits")].type == "cumulative"
    wait = by_key[("vcpu", "halt_wait_ns")]
    assert (wait.unit, wait.base, wait.exponent) == ("seconds", 10, -9)
    assert by_key[("vcpu", "guest_mode")].unit == "boolean"
    assert by_key[("vm", "max_mmu_rmap_size")].type == "peak"
    assert by_key[("vm", "pages_4k")].type == "instant"
    assert by_key[("vcpu", "halt_wait_hist")].type == "log2-histogram"

    (vm,) = parse_stats(ret("kvm-query-stats-vm.json"))
    assert vm.provider == "kvm" and vm.qom_path is None
    assert dict(vm.values)["mmu_cache_miss"] == 4
    vcpus = parse_stats(ret("kvm-query-stats-vcpu.json"))
    assert {r.qom_path for r in vcpus} == {"/machine/unattached/device[0]", "/machine/unattached/device[2]"}
    cpu0 = dict(next(r for r in vcpus if r.qom_path == "/machine/unattached/device[0]").values)
    assert cpu0["exits"] == 1914 and cpu0["insn_emulation"] == 43507
    assert cpu0["guest_mode"] == 0  # JSON false
    hist = cpu0["halt_wait_hist"]
    assert isinstance(hist, tuple) and len(hist) == 32


def test_stats_shape_from_the_reference_docs() -> None:
    schemas = parse_stats_schemas(ret("docs-query-stats-schemas.json"))
    assert {s.type for s in schemas} == {"cumulative", "instant", "peak", "log2-histogram", "linear-histogram"}
    results = parse_stats(ret("docs-query-stats-vcpu.json"))
    assert [dict(r.values)["blocking"] for r in results] == [1, 1]  # JSON true
    assert dict(results[0].values)["halt_wait_hist"] == (0, 0, 0, 0, 0, 8, 1, 0)
    # a value of another type is left out, not the reply: the other statistics stay
    odd = [{"provider": "kvm", "stats": [{"name": "x", "value": "many"}, {"name": "exits", "value": 3}]}]
    assert parse_stats(odd) == (StatsResult("kvm", None, (("exits", 3),)),)


def test_events_recorded() -> None:
    (shutdown,) = [parse_event(m, 42) for m in recorded("tcg-events-sigterm.json")]
    assert shutdown.name == "SHUTDOWN"
    assert shutdown.data == {"guest": False, "reason": "host-signal"}
    assert shutdown.arrival_monotonic_ns == 42
    assert 1.7e9 < shutdown.qemu_timestamp_s < 2.1e9
    (guest,) = [parse_event(m, 0) for m in recorded("tcg-events-guest-triplefault-no-reboot.json")]
    assert guest.data == {"guest": True, "reason": "guest-reset"}
    resets = [parse_event(m, 0) for m in recorded("tcg-events-guest-reset-loop.json")]
    assert {e.name for e in resets} == {"RESET"}
    assert [e.qemu_timestamp_s for e in resets] == sorted(e.qemu_timestamp_s for e in resets)
    panic = parse_event(recorded("docs-events-guest-panicked.json")[0], 0)
    assert (panic.name, panic.data, panic.qemu_timestamp_s) == (
        "GUEST_PANICKED",
        {"action": "pause"},
        1648245231.900001,
    )


def test_malformed_replies_are_qmp_errors_not_crashes() -> None:
    for bad, parser in [
        ([], parse_status),
        ({"status": 3}, parse_status),
        ({}, parse_cpus_fast),
        ({"base-memory": None}, parse_memory_size_summary),
        ({"stats": []}, parse_stats_schemas),
    ]:
        with pytest.raises(QmpError, match="malformed QMP reply"):
            parser(bad)
    # in a list reply, a malformed element is left out: the rest is returned
    good = {"cpu-index": 1, "thread-id": 2, "qom-path": "/machine/unattached/device[1]"}
    for bad_cpu in ({"cpu-index": "0", "thread-id": 1}, {"cpu-index": True, "thread-id": 1}):  # a bool is no integer
        assert parse_cpus_fast([bad_cpu, good]) == (Vcpu(1, 2, "/machine/unattached/device[1]"),)
    assert parse_blockstats([{"device": "x"}]) == ()  # no counters: absent, not zeros


# --- framing --------------------------------------------------------------------------------


def test_framer_splits_on_line_ends_across_chunks() -> None:
    framer = MessageFramer(max_message=100)
    assert framer.feed(b'{"a"') == []
    assert framer.feed(b': 1}\r\n{"b": 2}\r\n\r\n{"c"') == [b'{"a": 1}', b'{"b": 2}']
    assert framer.feed(b": 3}\r\n") == [b'{"c": 3}']
    assert framer.pending == 0


def test_framer_bounds_a_message_with_or_without_a_line_end() -> None:
    with pytest.raises(QmpError, match="exceeds the 100-byte limit"):
        MessageFramer(max_message=100).feed(b"x" * 101)
    with pytest.raises(QmpError, match="150 bytes exceeds the 100-byte limit"):
        MessageFramer(max_message=100).feed(b"x" * 150 + b"\n")
    framer = MessageFramer(max_message=100)
    for _ in range(3):
        framer.feed(b"y" * 30)
    with pytest.raises(QmpError, match="limit"):
        framer.feed(b"y" * 30)


def test_decode_refuses_what_is_not_a_json_object() -> None:
    assert decode_message(b'{"return": {}}') == {"return": {}}
    with pytest.raises(QmpError, match="not JSON"):
        decode_message(b"\x00\xffgarbage")
    with pytest.raises(QmpError, match="not an object"):
        decode_message(b"[1, 2]")
    with pytest.raises(QmpError, match="not JSON"):
        decode_message(b"[" * 200_000 + b"]" * 200_000)  # nesting that would blow the stack


def test_decode_messages_gives_what_decoding_each_line_gives() -> None:
    """One json.loads for a round trip's lines: the same objects as one decode per line, and the
    same error, naming the line, when one is not an object (the recorded replies are QEMU 7.2's)."""
    lines = [
        json.dumps({"return": ret("tcg-query-status.json"), "id": "uniobs-1"}).encode(),
        json.dumps(recorded("tcg-events-guest-reset-loop.json")[0]).encode(),
        json.dumps({"return": ret("tcg-query-cpus-fast.json"), "id": "uniobs-2"}).encode(),
    ]
    assert decode_messages(lines) == [decode_message(one) for one in lines]
    assert decode_messages(lines[:1]) == [decode_message(lines[0])]
    with pytest.raises(QmpError, match="not an object: list"):
        decode_messages([lines[0], b"[1, 2]"])
    with pytest.raises(QmpError, match="not JSON"):
        decode_messages([lines[0], b'{"a": 1}, {"b": 2}'])  # two objects on one line: not one message
    with pytest.raises(QmpError, match="not JSON"):
        decode_messages([b'{"return": "\xff"}', lines[0]])  # not UTF-8


@pytest.mark.parametrize(
    ("line", "value"),
    [
        (b'{"return": 18446744073709551615}', 2**64 - 1),  # uint64: what QEMU's counters hold
        (b'{"return": 18446744073709551616}', 2**64),  # beyond: exact still (orjson would make it a float)
        (b'{"return": -9223372036854775809}', -(2**63) - 1),
        (b'{"return": ' + b"9" * 400 + b"}", int("9" * 400)),
        (b'{"return": NaN}', None),  # refused by orjson, read by the standard library as before
        (b'{"return": "\\ud800"}', "\\ud800"),  # a lone surrogate escape, likewise
    ],
)
def test_decoding_is_the_standard_librarys_whatever_the_fast_path(line: bytes, value: Any) -> None:
    """QMP replies are decoded with orjson where it reads what `json.loads` reads, else with it."""
    expected = json.loads(line)
    for got in (decode_message(line), decode_messages([line, b'{"return": {}}'])[0]):
        assert got.keys() == expected.keys()
        if value is None:  # NaN != NaN
            assert str(got["return"]) == "nan"
        else:
            assert got == expected and type(got["return"]) is type(expected["return"])


def test_framer_whole_chunks_and_split_ones_give_the_same_lines() -> None:
    stream = b'{"a": 1}\r\n\r\n{"b": "x\\ny"}\r\n{"c": 3}\r\n'
    whole = MessageFramer(max_message=100).feed(stream)
    assert whole == [b'{"a": 1}', b'{"b": "x\\ny"}', b'{"c": 3}']
    for cut in range(1, len(stream)):
        framer = MessageFramer(max_message=100)
        assert framer.feed(stream[:cut]) + framer.feed(stream[cut:]) == whole
        assert framer.pending == 0


# --- a fake QMP server ----------------------------------------------------------------------

GREETING = (DATA / "greeting.json").read_bytes()


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\r\n"


class Peer:
    """The server side of one connection, for a script to drive."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.received = bytearray()
        self._buf = b""

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)

    def read_command(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self.conn.recv(65536)
            if not chunk:
                raise EOFError
            self.received += chunk
            self._buf += chunk
        one, self._buf = self._buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(one)
        return msg

    def handshake(self) -> None:
        self.send(json.dumps(json.loads(GREETING)).encode() + b"\r\n")
        cmd = self.read_command()
        assert cmd["execute"] == "qmp_capabilities"
        self.send(line({"return": {}, "id": cmd["id"]}))

    def reply(self, value: Any, **extra: Any) -> dict[str, Any]:
        cmd = self.read_command()
        self.send(line({"return": value, "id": cmd["id"], **extra}))
        return cmd


class FakeQmp:
    """A unix-socket server that runs `script(peer)` for each connection, one at a time."""

    def __init__(self, path: str, script: Callable[[Peer], None], connections: int = 1) -> None:
        self.path = path
        self.script = script
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self.accepted = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(path)
        self._server.listen(4)
        self._server.settimeout(10)
        self._thread = threading.Thread(target=self._run, args=(connections,), daemon=True)
        self._thread.start()

    def _run(self, connections: int) -> None:
        for _ in range(connections):
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            self.accepted += 1
            peer = Peer(conn)
            self.peers.append(peer)
            try:
                self.script(peer)
            except (EOFError, OSError) as exc:  # the client went away: part of several tests
                self.errors.append(exc)
            finally:
                conn.close()

    def close(self) -> None:
        self._server.close()
        self._thread.join(10)


@pytest.fixture
def sock_path() -> Iterator[str]:
    # unix socket paths are limited to 107 bytes: pytest's tmp_path can be longer
    d = tempfile.mkdtemp(prefix="uniobs-qmp-", dir="/tmp")
    yield os.path.join(d, "qmp.sock")
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def serve(sock_path: str) -> Iterator[Callable[..., FakeQmp]]:
    servers: list[FakeQmp] = []

    def start(script: Callable[[Peer], None], connections: int = 1) -> FakeQmp:
        server = FakeQmp(sock_path, script, connections)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_replies_are_matched_by_id_and_events_buffered(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    events = recorded("tcg-events-guest-reset-loop.json")

    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.read_command()
        assert cmd == {"execute": "query-status", "id": cmd["id"]}
        peer.send(line(events[0]))
        peer.send(line({"return": {"status": "stale"}, "id": "someone-else"}))  # not ours: ignored
        peer.send(line(events[1]) + line({"return": ret("tcg-query-status.json"), "id": cmd["id"]}))
        cmd = peer.read_command()
        assert cmd["arguments"] == {"target": "vm"}
        peer.send(line({"return": [], "id": cmd["id"]}))

    serve(script)
    with QmpClient(sock_path) as client:
        assert parse_status(client.execute("query-status")).status == "running"
        assert client.greeting is not None and client.greeting.version == (7, 2, 22)
        assert client.peer_pid == os.getpid()  # SO_PEERCRED: the process that listens
        assert client.execute("query-stats", {"target": "vm"}) == []
        got = client.drain_events()
        assert [e.name for e in got] == ["RESET", "RESET"]
        assert got[0].arrival_monotonic_ns <= got[1].arrival_monotonic_ns <= time.monotonic_ns()
        assert client.drain_events() == []


def test_a_batch_is_sent_at_once_and_answered_in_order(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    """`execute_many`: all requests before any reply; replies matched by id (an event and a reply
    for someone else in between); a command error is that call's result, the others still count."""
    events = recorded("tcg-events-guest-reset-loop.json")
    error = recorded("tcg-query-balloon.json")["error"]

    def script(peer: Peer) -> None:
        peer.handshake()
        cmds = [peer.read_command() for _ in range(3)]  # all three arrive without waiting for a reply
        assert [c["execute"] for c in cmds] == ["query-status", "query-balloon", "query-stats"]
        peer.send(line(events[0]) + line({"return": {}, "id": "someone-else"}))
        peer.send(line({"return": ret("tcg-query-status.json"), "id": cmds[0]["id"]}))
        peer.send(line({"id": cmds[1]["id"], "error": error}) + line({"return": [], "id": cmds[2]["id"]}))
        peer.reply(ret("tcg-query-memory-size-summary.json"))

    serve(script)
    with QmpClient(sock_path) as client:
        status, balloon, stats = client.execute_many(
            [("query-status", None), ("query-balloon", None), ("query-stats", {"target": "vm"})]
        )
        assert parse_status(status).status == "running"
        assert isinstance(balloon, QmpCommandError) and balloon.error_class == "DeviceNotActive"
        assert stats == []
        assert [e.name for e in client.drain_events()] == ["RESET"]
        assert client.execute("query-memory-size-summary")["base-memory"] == 64 << 20
        with pytest.raises(QmpForbidden):
            client.execute_many([("query-status", None), ("quit", None)])  # nothing is sent


def test_a_batch_sent_ahead_is_answered_while_the_caller_works(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    """`send_ahead` sends without waiting; the `execute_many` of the same calls reads the replies
    and sends nothing again. A poll() in between keeps the replies for it (and the events); a
    batch sent ahead but then not asked for is read and ignored by its ids."""
    reset = recorded("tcg-events-guest-reset-loop.json")[0]
    asked: list[str] = []

    def script(peer: Peer) -> None:
        peer.handshake()
        while True:
            cmd = peer.read_command()
            asked.append(cmd["execute"])
            if cmd["execute"] == "query-status":
                peer.send(line(reset))  # an event before the reply
            peer.send(line({"return": ret(f"tcg-{cmd['execute']}.json"), "id": cmd["id"]}))

    serve(script)
    calls = [("query-status", None), ("query-blockstats", None)]
    with QmpClient(sock_path) as client:
        assert not client.send_ahead(calls)  # not connected: nothing sent, nothing waited for
        client.connect()
        assert client.send_ahead(calls)
        assert not client.send_ahead(calls)  # one batch ahead at a time
        deadline = time.monotonic() + 5
        assert client._sock is not None
        while not select.select([client._sock], [], [], 0.01)[0]:  # the server answers meanwhile
            assert time.monotonic() < deadline
        client.poll()  # the replies stay for execute_many
        status, blocks = client.execute_many(calls)
        assert parse_status(status).status == "running" and blocks == []
        assert asked == ["query-status", "query-blockstats"]  # sent once
        assert [e.name for e in client.drain_events()] == ["RESET"]
        assert client.send_ahead(calls)
        assert client.execute_many(calls[1:]) == [[]]  # not what was sent ahead: asked anew
        assert client.execute("query-status")["status"] == "running"
        assert asked == ["query-status", "query-blockstats"] * 2 + ["query-blockstats", "query-status"]
        assert not client.send_ahead([("query-status", None), ("quit", None)])  # the allowlist: nothing sent
        assert client.execute("query-blockstats") == []
        assert asked[-1] == "query-blockstats"


def test_a_failed_send_ahead_is_raised_by_the_call_that_reads_it(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    closed = threading.Event()

    def script(peer: Peer) -> None:
        peer.handshake()
        peer.send(line(recorded("tcg-events-sigterm.json")[0]))
        peer.conn.shutdown(socket.SHUT_RDWR)
        closed.set()

    serve(script)
    client = QmpClient(sock_path)
    client.connect()
    assert closed.wait(5)
    time.sleep(0.05)
    # Sent (the kernel may take it) or failed (EPIPE, kept): either way the reading call says gone.
    assert client.send_ahead([("query-status", None)])
    with pytest.raises(QmpGone):
        client.execute_many([("query-status", None)])
    assert [e.data["reason"] for e in client.drain_events()] == ["host-signal"]  # the last words are kept


def test_a_command_error_keeps_the_connection(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.read_command()
        error = recorded("tcg-query-balloon.json")["error"]
        peer.send(line({"id": cmd["id"], "error": error}))
        peer.reply(ret("tcg-query-memory-size-summary.json"))

    serve(script)
    client = QmpClient(sock_path)
    with pytest.raises(QmpCommandError) as info:
        client.execute("query-balloon")
    assert info.value.error_class == "DeviceNotActive"
    assert client.connected
    assert client.execute("query-memory-size-summary")["base-memory"] == 64 << 20
    client.close()


@pytest.mark.parametrize("command", ["quit", "system_reset", "human-monitor-command", "qom-set", "stop", "cont"])
def test_the_allowlist_refuses_without_sending(serve: Callable[..., FakeQmp], sock_path: str, command: str) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.reply({"status": "running", "running": True})
        time.sleep(0.3)  # anything sent after this point would still be read below
        peer.conn.settimeout(0.2)
        try:
            while chunk := peer.conn.recv(65536):
                peer.received += chunk
        except TimeoutError:
            pass

    assert command not in ALLOWED_COMMANDS
    # Not connected yet: refused before connecting at all.
    client = QmpClient(sock_path)
    with pytest.raises(QmpForbidden, match="allowlist"):
        client.execute(command, {"command-line": "info registers"})
    assert not client.connected
    server = serve(script)
    client.execute("query-status")
    sent_before = bytes(server.peers[0].received)
    with pytest.raises(QmpForbidden):
        client.execute(command)
    assert client.connected  # nothing happened to the connection either
    client.close()
    server.close()
    assert bytes(server.peers[0].received) == sent_before
    assert command.encode() not in server.peers[0].received


def test_garbage_is_a_clean_error_and_closes(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.read_command()
        peer.send(b"\x00\xffthis is not JSON\r\n")

    serve(script)
    client = QmpClient(sock_path)
    with pytest.raises(QmpError, match="not JSON") as info:
        client.execute("query-status")
    assert not isinstance(info.value, WorkloadGone)
    assert not client.connected


def test_garbage_within_a_batch_keeps_the_events_before_it(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    events = recorded("tcg-events-guest-reset-loop.json")

    def script(peer: Peer) -> None:
        peer.handshake()
        cmds = [peer.read_command() for _ in range(2)]
        peer.send(line(events[0]) + line({"return": {}, "id": cmds[0]["id"]}) + b"not JSON\r\n")

    serve(script)
    client = QmpClient(sock_path)
    with pytest.raises(QmpError, match="not JSON"):
        client.execute_many([("query-status", None), ("query-blockstats", None)])
    assert not client.connected
    assert [e.name for e in client.drain_events()] == ["RESET"]


def test_a_batch_larger_than_the_socket_buffer_is_sent_whole(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    """The socket is non-blocking: a send the kernel takes in part waits for the peer to read."""
    calls = [("query-stats", {"target": "vm", "pad": "x" * 4000}) for _ in range(200)]  # ~800 KB

    def script(peer: Peer) -> None:
        peer.handshake()
        time.sleep(0.3)  # the client's buffer fills meanwhile
        for _ in calls:
            peer.reply([])

    serve(script)
    with QmpClient(sock_path) as client:
        assert client.execute_many(calls) == [[]] * len(calls)


def test_a_2_mib_message_is_refused_after_at_most_1_mib(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    outcome: dict[str, Any] = {}

    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.read_command()
        huge = line({"return": {"status": "x" * (2 << 20)}, "id": cmd["id"]})
        try:
            peer.send(huge)
            outcome["sent"] = True
        except OSError as exc:  # the client stopped reading and hung up
            outcome["sent"] = exc

    server = serve(script)
    client = QmpClient(sock_path)
    started = time.monotonic()
    with pytest.raises(QmpError, match="exceeds the 1048576-byte limit"):
        client.execute("query-status")
    assert time.monotonic() - started < 2
    assert not client.connected
    server.close()
    assert isinstance(outcome["sent"], OSError)  # never read to the end: memory stayed bounded


def test_a_stream_without_line_ends_is_bounded(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        peer.read_command()
        while True:
            peer.send(b"[" * 65536)

    serve(script)
    client = QmpClient(sock_path, max_message=256 << 10)
    with pytest.raises(QmpError, match="without a line end"):
        client.execute("query-cpus-fast")


def test_closing_mid_response_means_the_vmm_is_gone(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.read_command()
        peer.send(line(recorded("tcg-events-sigterm.json")[0]))
        peer.send(line({"return": ret("tcg-query-cpus-fast.json"), "id": cmd["id"]})[:50])

    serve(script)
    client = QmpClient(sock_path)
    with pytest.raises(QmpGone, match="closed the connection") as info:
        client.execute("query-cpus-fast")
    assert isinstance(info.value, WorkloadGone) and isinstance(info.value, QmpError)
    assert not client.connected
    assert [e.name for e in client.drain_events()] == ["SHUTDOWN"]  # what came before is kept


def test_events_then_eof_between_calls(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    done = threading.Event()

    def script(peer: Peer) -> None:
        peer.handshake()
        peer.reply({"status": "running", "running": True})
        peer.send(line(recorded("tcg-events-sigterm.json")[0]))
        done.set()

    serve(script)
    client = QmpClient(sock_path)
    client.execute("query-status")
    assert done.wait(5)
    time.sleep(0.05)
    with pytest.raises(QmpGone):
        client.poll()
    assert [e.data["reason"] for e in client.drain_events()] == ["host-signal"]
    with pytest.raises(QmpGone):  # reconnecting: the server is gone for good
        os.unlink(sock_path)
        client.execute("query-status")


def test_nothing_listening_is_gone(sock_path: str) -> None:
    with pytest.raises(QmpGone, match="no QMP server"):
        QmpClient(sock_path).execute("query-status")  # no such file
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)  # the file a SIGKILLed QEMU leaves behind: nobody accepts
    stale.close()
    with pytest.raises(QmpGone, match="Connection refused"):
        QmpClient(sock_path).execute("query-status")


def test_a_peer_that_closes_before_the_greeting_is_gone(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    serve(lambda peer: None)
    with pytest.raises(QmpGone):
        QmpClient(sock_path).execute("query-status")


def test_no_greeting_means_another_client_holds_the_socket(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    release = threading.Event()
    serve(lambda peer: release.wait(5) and None)
    started = time.monotonic()
    with pytest.raises(QmpBusy, match="another client"):
        QmpClient(sock_path, timeout=0.3).execute("query-status")
    assert 0.25 < time.monotonic() - started < 1.5
    release.set()


def test_a_silent_server_times_out(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    release = threading.Event()

    def script(peer: Peer) -> None:
        peer.handshake()
        peer.read_command()
        release.wait(5)

    serve(script)
    client = QmpClient(sock_path, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(QmpTimeout, match=r"timed out after 0.3 s waiting for the reply to query-status") as info:
        client.execute("query-status")
    assert not isinstance(info.value, WorkloadGone)
    assert time.monotonic() - started < 1.0
    assert not client.connected
    release.set()


def test_an_event_flood_is_bounded(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    reset = recorded("tcg-events-guest-reset-loop.json")[0]

    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.read_command()
        peer.send(line(reset) * 1000 + line({"return": {"status": "running"}, "id": cmd["id"]}))

    serve(script)
    client = QmpClient(sock_path)
    client.execute("query-status")
    assert len(client.drain_events()) == MAX_EVENTS
    assert client.dropped_events == 1000 - MAX_EVENTS
    client.close()


def test_reconnects_after_a_failure(serve: Callable[..., FakeQmp], sock_path: str) -> None:
    calls = []

    def script(peer: Peer) -> None:
        peer.handshake()
        cmd = peer.read_command()
        calls.append(cmd["execute"])
        if len(calls) == 1:
            peer.send(b"garbage\r\n")
        else:
            peer.send(line({"return": {"status": "paused", "running": False}, "id": cmd["id"]}))

    serve(script, connections=2)
    client = QmpClient(sock_path)
    with pytest.raises(QmpError):
        client.execute("query-status")
    assert parse_status(client.execute("query-status")) == parse_status({"status": "paused", "running": False})
    client.close()
