"""What export costs per data point: intake, build, encode and delivery to a real OTLP/HTTP receiver,
and Prometheus exposition generation, at 1,000 workloads x 15 series.

Per round, the pipeline takes every workload's scrape (`Telemetry.record`), then `flush()`: the
bridge snapshots the series, the `otlp-http` exporter's sink encodes them and POSTs them to a
loopback OTLP/HTTP receiver (a tiny HTTP server in a child process that reads each body and
answers 200, so its CPU is not ours); flush returns once delivery is acknowledged. The
Prometheus figure is the same intake and flush to the `prometheus` exporter, then the first
scrape's exposition of that state (the text `/metrics` answers with; later scrapes of the same
state are served from it).

The baseline builds the same `ExportMetricsServiceRequest` directly with the protobuf classes from
the same values (one pass, nothing kept between rounds), serialises it, and sends it the same way
(a `requests` session POST of the same batches to the same receiver): the least an exporter could
do without keeping state. Figures are CPU time of this process (all threads, `process_time`),
medians of rounds in the same run, and their ratios.

    python bench/pipeline_bench.py [--workloads 1000] [--series 15] [--rounds 9]
"""

from __future__ import annotations

import argparse
import http.server
import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

import requests
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from uniobs.exporters.otlp import OtlpConfig, OtlpHttpExporter
from uniobs.exporters.prometheus import PrometheusConfig, PrometheusExporter
from uniobs.model import Instrument, Kind, MetricSpec, Sample, Workload
from uniobs.telemetry.bridge import Telemetry

Scrape = list[tuple[Workload, list[Sample]]]


class _Receiver(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return None


def _serve(port: Any) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    port.value = server.server_port
    server.serve_forever()


def make_scrape(workloads: int, series: int) -> tuple[list[MetricSpec], Scrape]:
    """Per workload: counters with a cpu.mode attribute (two series each) and gauges, like the
    cgroup collector's output; values change every round."""
    specs, per = [], []
    i = 0
    while len(per) < series:
        if i % 2 == 0 and series - len(per) >= 2:
            specs.append(MetricSpec(f"bench.counter{i}", Instrument.COUNTER, "s", "A counter.", ("cpu.mode",)))
            per += [(f"bench.counter{i}", (("cpu.mode", "user"),)), (f"bench.counter{i}", (("cpu.mode", "system"),))]
        else:
            specs.append(MetricSpec(f"bench.gauge{i}", Instrument.GAUGE, "By", "A gauge."))
            per.append((f"bench.gauge{i}", ()))
        i += 1
    scrape = []
    for w in range(workloads):
        workload = Workload(kind=Kind.CONTAINER, runtime="runc", id=f"c{w:05d}", name=f"fn{w}", cgroup=f"/c{w}")
        samples = [
            Sample(name, (1.5 * (w + j) if name.startswith("bench.counter") else 1024 * (w + j)), attrs)
            for j, (name, attrs) in enumerate(per)
        ]
        scrape.append((workload, samples))
    return specs, scrape


def bump(scrape: Scrape) -> Scrape:
    """The next scrape: every value moves on (counters grow)."""
    return [(w, [Sample(s.metric, s.value + 1, s.attributes) for s in samples]) for w, samples in scrape]


def baseline_requests(scrape: Scrape, host: dict[str, Any], now: int, per_request: int) -> list[bytes]:
    """The same OTLP messages, built directly from the values: one pass, nothing kept."""
    bodies = []
    request = ExportMetricsServiceRequest()
    points = 0
    for workload, samples in scrape:
        if points and points + len(samples) > per_request:
            bodies.append(request.SerializeToString())
            request, points = ExportMetricsServiceRequest(), 0
        points += len(samples)
        rm = request.resource_metrics.add()
        attrs = {**host, **workload.resource_attributes()}
        rm.resource.CopyFrom(Resource(attributes=[KeyValue(key=k, value=_any(v)) for k, v in attrs.items()]))
        sm = rm.scope_metrics.add()
        sm.scope.CopyFrom(InstrumentationScope(name="bench", version="0"))
        metrics: dict[str, Any] = {}
        for sample in samples:
            metric = metrics.get(sample.metric)
            point: Any
            if sample.metric.startswith("bench.counter"):
                if metric is None:
                    metric = metrics[sample.metric] = sm.metrics.add(name=sample.metric, unit="s")
                    metric.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
                    metric.sum.is_monotonic = True
                point = metric.sum.data_points.add(start_time_unix_nano=now)
            else:
                if metric is None:
                    metric = metrics[sample.metric] = sm.metrics.add(name=sample.metric, unit="By")
                point = metric.gauge.data_points.add()
            point.time_unix_nano = now
            point.as_double = float(sample.value)
            for k, v in sample.attributes:
                point.attributes.add(key=k, value=_any(v))
    bodies.append(request.SerializeToString())
    return bodies


def _any(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=str(v))


def cpu_median(func: Callable[[], Any], rounds: int) -> float:
    results = []
    for _ in range(rounds):
        start = time.process_time()
        func()
        results.append(time.process_time() - start)
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", type=int, default=1000)
    parser.add_argument("--series", type=int, default=15, help="series per workload")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()

    port = multiprocessing.Value("i", 0)
    receiver = multiprocessing.Process(target=_serve, args=(port,), daemon=True)
    receiver.start()
    while not port.value:
        time.sleep(0.01)
    endpoint = f"http://127.0.0.1:{port.value}"

    specs, scrape = make_scrape(args.workloads, args.series)
    otlp = OtlpHttpExporter(OtlpConfig(endpoint=endpoint, signals=("metrics",)))
    prom = PrometheusExporter(PrometheusConfig(port=0))
    batch_points = OtlpConfig().max_export_batch_size
    telemetry = Telemetry(
        [("otlp-http", otlp.sinks())], retry_initial=0, metrics_batch_points=batch_points
    )  # fmt: skip
    prom_telemetry = Telemetry([("prometheus", prom.sinks())], retry_initial=0, metrics_batch_points=batch_points)
    for t in (telemetry, prom_telemetry):
        t.declare(specs, scope="bench")
    timed_scrape: dict[str, Scrape] = {"s": scrape}

    def intake_only() -> None:
        for workload, samples in timed_scrape["s"]:
            telemetry.record(workload, samples)

    def pipeline() -> None:
        for workload, samples in timed_scrape["s"]:
            telemetry.record(workload, samples)
        assert telemetry.flush(60)

    session = requests.Session()
    session.headers["Content-Type"] = "application/x-protobuf"
    host = dict(telemetry._host)

    def baseline() -> None:
        for body in baseline_requests(timed_scrape["s"], host, time.time_ns(), batch_points):
            session.post(f"{endpoint}/v1/metrics", data=body, timeout=60).raise_for_status()

    sink = prom.sink  # type: ignore[attr-defined]
    # (before issue 14 the exporter had no exposition(): prometheus_client generated it per scrape)
    expose = getattr(sink, "exposition", None) or (
        lambda: __import__("prometheus_client").generate_latest(sink.registry)
    )
    exposition: dict[str, bytes] = {}

    def prometheus() -> None:
        for workload, samples in timed_scrape["s"]:
            prom_telemetry.record(workload, samples)
        assert prom_telemetry.flush(60)
        exposition["text"] = expose()

    pipeline()  # warm up: series created, connections open, imports done
    baseline()
    prometheus()

    def median_with_new_values(func: Callable[[], None]) -> float:
        results = []
        for _ in range(args.rounds):
            timed_scrape["s"] = bump(timed_scrape["s"])  # new values each round, made outside the timing
            results.append(cpu_median(func, 1))
        return statistics.median(results)

    t_pipe = median_with_new_values(pipeline)
    t_intake = median_with_new_values(intake_only)
    t_base = median_with_new_values(baseline)
    t_prom = median_with_new_values(prometheus)
    points = sum(len(samples) for _, samples in scrape)
    sent = telemetry.stats()["otlp-http"].sent["metrics"]
    failed = telemetry.stats()["otlp-http"].failed["metrics"]
    telemetry.shutdown(5)
    prom_telemetry.shutdown(5)
    receiver.terminate()

    n = points
    print(
        f"pipeline benchmark: {args.workloads} workloads x {args.series} series = {n} data points "
        f"(+ uniobs' own), OTLP/HTTP requests of up to {batch_points} points to a loopback receiver"
    )
    print(f"  delivered {sent} points, {failed} failed; Prometheus exposition {len(exposition['text'])} bytes")
    print(f"  median of {args.rounds} rounds, CPU time of this process (all threads):")
    print(f"  {'':52}{'per round':>12}{'per point':>12}")
    rows = [
        ("uniobs: intake + build + encode + send (OTLP/HTTP)", t_pipe),
        ("  of which intake (record)", t_intake),
        ("baseline: protobuf classes, serialise, same send", t_base),
        ("uniobs: intake + flush + exposition (Prometheus)", t_prom),
    ]
    for label, t in rows:
        print(f"  {label:52}{t * 1e3:>10.1f}ms{t / n * 1e6:>10.2f}us")
    print(f"  ratio OTLP pipeline / baseline: {t_pipe / t_base:.2f}x")
    print(f"  ratio Prometheus pipeline / baseline: {t_prom / t_base:.2f}x")


if __name__ == "__main__":
    main()
