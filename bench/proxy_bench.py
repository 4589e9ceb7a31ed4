"""What the invocation proxy costs: direct vs proxied requests, same run, loopback.

    .venv/bin/python bench/proxy_bench.py [--reps 5] [--duration 2] [--connections 16]
        [--before DIR] [--no-container]

Upstreams:
- `trivial`: a trivial HTTP/1.1 server (asyncio, a fixed 12-byte answer) in a process of its own,
  for a figure with as little noise from the function as possible;
- `hello-node`: the seed function in its runc container, launched by `uniobs run --function
  examples/hello-node/function.toml --as container --export otlp-http:...` (the proxy as users get
  it, in the collector's process: row `uniobs-run`); direct = its upstream port.

In front of each, proxies started in this process (an `InvocationProxy` and a real
`InvocationRecorder`, every invocation recorded): `after` (this checkout) with no exporter (the
proxy's and the recorder's own cost) and with the OTLP/HTTP exporter users would pick for
throughput, sending to a loopback receiver in another process (it reads each request and answers
200, as a collector's receiver would, without decoding); `before` likewise from `--before DIR` (a
directory holding an earlier proxy.py, record.py and telemetry bridge.py, run on asyncio's loop
as it was), if given.

Load generator: wrk (Debian: wrk), one thread, 1 and `--connections` connections; keep-alive, and
not (`Connection: close` on every request: a new TCP connection each, on both sides). Each figure
is the median of `--reps` repetitions, the variants interleaved within each repetition; shown as
added latency (proxied - direct, p50 and p99), the throughput ratio (proxied / direct), and the
CPU the proxying process spent per request (its user + system time over the run / requests).
Invocations the recorder could not queue (uniobs.invocation.unrecorded) are printed per variant.
Goal (issue 15): <= 0.2 ms added at p50, >= 80 % of direct throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from uniobs.compare.function import free_port  # noqa: E402
from uniobs.exporters.otlp import OtlpConfig, OtlpHttpExporter  # type: ignore[import-not-found]  # noqa: E402
from uniobs.invoke import proxy as proxy_after  # noqa: E402
from uniobs.invoke import record as record_after  # noqa: E402
from uniobs.invoke.admission import FixedUpstream  # noqa: E402
from uniobs.telemetry import Telemetry  # noqa: E402

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nHello World\n"
CLOSING = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\nHello World\n"


def trivial_upstream() -> tuple[subprocess.Popen[bytes], int]:
    """The trivial upstream in a process of its own (no GIL shared with the proxy): (process, port)."""
    proc = subprocess.Popen([sys.executable, __file__, "--upstream"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def serve_trivial() -> None:
    print(inproc_upstream(), flush=True)
    threading.Event().wait()


def inproc_upstream() -> int:
    """A minimal keep-alive HTTP/1.1 server on a loop thread of its own; returns its port."""
    ready: list[int] = []

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while b"\r\n\r\n" in self.buf:
                head, _, self.buf = self.buf.partition(b"\r\n\r\n")
                close = b"connection: close" in head.lower()
                self.t.write(CLOSING if close else ANSWER)  # type: ignore[attr-defined]
                if close:
                    self.t.close()
                    return

    def run() -> None:
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(loop.create_server(Answer, "127.0.0.1", 0, backlog=1024))
        ready.append(server.sockets[0].getsockname()[1])
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    while not ready:
        time.sleep(0.01)
    return ready[0]


_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def receiver() -> tuple[subprocess.Popen[bytes], int]:
    """The OTLP/HTTP receiver in a process of its own: (process, port)."""
    proc = subprocess.Popen([sys.executable, __file__, "--receiver"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def serve_receiver() -> None:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)  # an empty Export*ServiceResponse: all accepted
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def wrk(url: str, connections: int, duration: int, close: bool) -> dict[str, float]:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    if close:
        cmd[1:1] = ["-H", "Connection: close"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        figures[f"p{pct}"] = float(m.group(1)) * _UNIT[m.group(2)]
    if re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out):
        figures["errors"] = 1
    return figures


@dataclass
class Variant:
    """One way to reach the upstream: direct, or through a proxy in process `pid`."""

    label: str
    url: str
    pid: int | None = None  # the proxying process (its CPU is measured); None: direct
    closers: list[Any] = field(default_factory=list)
    recorder: Any = None


def load_before(directory: Path) -> tuple[ModuleType, ModuleType, type[Telemetry]]:
    """An earlier proxy.py, record.py and, if there, the telemetry bridge.py, as modules of their
    own (the proxy's own import of the recorder module resolves to this checkout's; only its record
    shape is shared)."""
    mods = []
    for name in ("record", "proxy", "bridge"):
        path = directory / f"{name}.py"
        if name == "bridge" and not path.exists():
            break
        spec = importlib.util.spec_from_file_location(f"before_{name}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        mods.append(module)
    telemetry: type[Telemetry] = mods[2].Telemetry if len(mods) > 2 else Telemetry
    return mods[1], mods[0], telemetry


Modules = tuple[ModuleType, ModuleType, type[Telemetry]]


def in_process(label: str, modules: Modules, upstream: int, otlp: int | None) -> Variant:
    proxy_mod, record_mod, telemetry_cls = modules
    exporters = []
    if otlp is not None:
        config = OtlpConfig(endpoint=f"http://127.0.0.1:{otlp}")
        exporters.append(("otlp-http", OtlpHttpExporter(config).sinks()))
    telemetry = telemetry_cls(exporters)
    recorder = record_mod.InvocationRecorder(telemetry, function="bench")
    proxy = proxy_mod.InvocationProxy(FixedUpstream("127.0.0.1", upstream), recorder)
    _, port = proxy.start()
    stop = threading.Event()

    def flush() -> None:  # the metrics' export cadence a collector would have
        while not stop.wait(1.0):
            telemetry.flush(timeout=0.5)

    flusher = threading.Thread(target=flush, daemon=True)
    flusher.start()

    def close() -> None:
        stop.set()
        proxy.close(1)
        recorder.close()
        telemetry.shutdown(5)

    return Variant(label, f"http://127.0.0.1:{port}/", os.getpid(), [close], recorder)


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def measure(name: str, variants: list[Variant], reps: int, duration: int, connections: int) -> None:
    direct = variants[0]
    for close in (False, True):
        for conns in (1, connections):
            runs: dict[str, list[dict[str, float]]] = {v.label: [] for v in variants}
            for _ in range(reps):
                for v in variants:
                    before = cpu_s(v.pid) if v.pid else 0.0
                    figures = wrk(v.url, conns, duration, close)
                    if v.pid:
                        figures["cpu_us"] = (cpu_s(v.pid) - before) / max(figures["rps"] * duration, 1) * 1e6
                    runs[v.label].append(figures)
            med = {
                label: {k: statistics.median(r[k] for r in rs) for k in ("p50", "p99", "rps")}
                for label, rs in runs.items()
            }
            d = med[direct.label]
            mode = "close" if close else "keep-alive"
            print(
                f"{name:10} {mode:10} c{conns:<3} direct: p50 {d['p50']:.3f} ms p99 {d['p99']:.3f} ms {d['rps']:.0f}/s",
                flush=True,
            )
            for v in variants[1:]:
                m = med[v.label]
                cpu = statistics.median(r["cpu_us"] for r in runs[v.label])
                errors = sum(1 for r in runs[v.label] if r.get("errors"))
                print(
                    f"    {v.label:18} p50 +{m['p50'] - d['p50']:.3f} ms  p99 +{m['p99'] - d['p99']:.3f} ms  "
                    f"{m['rps']:.0f}/s ({100 * m['rps'] / d['rps']:.0f} %)  proxying process CPU {cpu:.0f} us/request"
                    + (f"  ({errors} runs with errors)" if errors else ""),
                    flush=True,
                )


def proxies(upstream: int, otlp: int, before: Modules | None) -> list[Variant]:
    after: Modules = (proxy_after, record_after, Telemetry)
    out = []
    if before is not None:
        out += [in_process("before", before, upstream, None), in_process("before+otlp-http", before, upstream, otlp)]
    out += [in_process("after", after, upstream, None), in_process("after+otlp-http", after, upstream, otlp)]
    return out


def close_all(variants: list[Variant]) -> None:
    for v in variants:
        for closer in v.closers:
            closer()
        if v.recorder is not None:
            print(f"    {v.label}: {v.recorder.dropped} invocations not recorded (recorder queue full)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--duration", type=int, default=2)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--before", type=Path, help="a directory with an earlier proxy.py, record.py (and bridge.py)")
    ap.add_argument("--no-container", action="store_true", help="only the trivial upstream")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    print(f"medians of {args.reps} repetitions, {args.duration} s each; wrk -t1; event loop: "
          f"{type(proxy_after.new_event_loop()).__module__}", flush=True)  # fmt: skip
    before = load_before(args.before) if args.before else None
    tmp = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    sink, otlp = receiver()
    try:
        trivial, upstream = trivial_upstream()
        try:
            variants = proxies(upstream, otlp, before)
            try:
                measure("trivial", [Variant("direct", f"http://127.0.0.1:{upstream}/"), *variants], args.reps,
                        args.duration, args.connections)  # fmt: skip
            finally:
                close_all(variants)
        finally:
            trivial.kill()
            trivial.wait()
        if not args.no_container:
            seed(args, before, otlp, tmp)
    finally:
        sink.kill()
        sink.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def seed(args: argparse.Namespace, before: Modules | None, otlp: int, tmp: Path) -> None:
    subprocess.run(["make", "-s", "-C", str(ROOT / "examples/hello-node/container")], check=True, capture_output=True)
    public = free_port()
    run = subprocess.Popen(
        [sys.executable, "-m", "uniobs.cli", "run", "--quiet", "--export", f"otlp-http:http://127.0.0.1:{otlp}",
         "--function", str(ROOT / "examples/hello-node/function.toml"), "--as", "container",
         "--listen", f"127.0.0.1:{public}"],
        stderr=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert run.stderr is not None
    try:
        line = b""
        while b"proxied to" not in line:
            line = run.stderr.readline()
            if not line:
                sys.exit("uniobs run ended before its proxy started")
        m = re.search(rb"proxied to 127\.0\.0\.1:(\d+)", line)
        assert m
        upstream = int(m.group(1))
        direct = f"http://127.0.0.1:{upstream}/"
        threading.Thread(target=lambda: [None for _ in run.stderr or []], daemon=True).start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                wrk(direct, 1, 1, False)
                break
            except subprocess.CalledProcessError:
                time.sleep(0.2)
        variants = proxies(upstream, otlp, before)
        try:
            measure("hello-node", [Variant("direct", direct), *variants,
                                   Variant("uniobs-run+otlp-http", f"http://127.0.0.1:{public}/", run.pid)],
                    args.reps, args.duration, args.connections)  # fmt: skip
        finally:
            close_all(variants)
    finally:
        for child in _children(run.pid):
            if child[1][:2] == ["runc", "run"] or (child[1] and child[1][0].endswith("runc") and "run" in child[1]):
                subprocess.run(["runc", "kill", child[1][-1], "TERM"], capture_output=True)
        try:
            run.wait(30)
        except subprocess.TimeoutExpired:
            run.kill()
            run.wait()


def _children(pid: int) -> list[tuple[int, list[str]]]:
    return [(c.pid, c.cmdline()) for c in psutil.Process(pid).children(recursive=True)]


if __name__ == "__main__":
    if sys.argv[1:] == ["--upstream"]:
        serve_trivial()
    elif sys.argv[1:] == ["--receiver"]:
        serve_receiver()
    else:
        main()
