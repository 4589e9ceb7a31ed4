"""Pipeline cost alone: intake of a scrape, aggregation, and OTLP encoding, without a network.

Synthetic scrape: 1,000 series (500 cumulative counters + 500 gauges) over 10 workloads. Per
iteration the pipeline takes the scrape's samples, builds the OTLP metrics message through the
SDK encoder, and serialises it (what the OTLP exporters do before the wire). The baseline
builds the same `ExportMetricsServiceRequest` directly with the protobuf classes, once, from
the same values: the least any exporter could do. Figures are CPU time (process_time), medians
of repeated rounds in the same process.

    python bench/pipeline_bench.py [--series 1000] [--rounds 15] [--iterations 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from uniobs.model import Instrument, Kind, MetricSpec, Sample, Workload
from uniobs.plugin import ExporterSinks
from uniobs.telemetry.bridge import Telemetry


class EncodeOnly(MetricExporter):
    """What an OTLP exporter does before the network: encode and serialise."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kw: Any) -> MetricExportResult:
        self.bytes = len(encode_metrics(metrics_data).SerializeToString())
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kw: Any) -> None:
        return None


def make_scrape(series: int, workloads: int) -> tuple[list[MetricSpec], list[tuple[Workload, list[Sample]]]]:
    per_workload = series // workloads
    specs = []
    for i in range(per_workload // 2):
        specs.append(MetricSpec(f"bench.counter{i}", Instrument.COUNTER, "s", "A counter.", ("cpu.mode",)))
        specs.append(MetricSpec(f"bench.gauge{i}", Instrument.GAUGE, "By", "A gauge."))
    scrape = []
    for w in range(workloads):
        workload = Workload(kind=Kind.CONTAINER, runtime="runc", id=f"c{w:04d}", name=f"fn{w}", cgroup=f"/c{w}")
        samples = []
        for i in range(per_workload // 2):
            samples.append(Sample(f"bench.counter{i}", 1.5 * i, (("cpu.mode", "user"),)))
            samples.append(Sample(f"bench.gauge{i}", 1024 * i))
        scrape.append((workload, samples))
    return specs, scrape


def baseline_message(scrape: list[tuple[Workload, list[Sample]]], host: dict[str, str], now: int) -> bytes:
    """The same OTLP message, built directly: one pass over the values, no state kept."""
    request = ExportMetricsServiceRequest()
    for workload, samples in scrape:
        rm = request.resource_metrics.add()
        attrs = {**host, **workload.resource_attributes()}
        rm.resource.CopyFrom(Resource(attributes=[KeyValue(key=k, value=_any(v)) for k, v in attrs.items()]))
        sm = rm.scope_metrics.add()
        sm.scope.CopyFrom(InstrumentationScope(name="bench", version="0"))
        for sample in samples:
            metric = sm.metrics.add()
            metric.name = sample.metric
            point: Any
            if sample.metric.startswith("bench.counter"):
                metric.unit = "s"
                metric.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
                metric.sum.is_monotonic = True
                point = metric.sum.data_points.add()
                point.start_time_unix_nano = now
            else:
                metric.unit = "By"
                point = metric.gauge.data_points.add()
            point.time_unix_nano = now
            point.as_double = float(sample.value)
            for k, v in sample.attributes:
                point.attributes.add(key=k, value=_any(v))
    return request.SerializeToString()


def _any(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=str(v))


def cpu_per_iteration(func: Any, iterations: int, rounds: int) -> float:
    results = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(iterations):
            func()
        results.append((time.process_time() - start) / iterations)
    return statistics.median(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--workloads", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--iterations", type=int, default=20)
    args = parser.parse_args()

    specs, scrape = make_scrape(args.series, args.workloads)
    sink = EncodeOnly()
    telemetry = Telemetry([("encode", ExporterSinks(metrics=sink))])
    telemetry.declare(specs, scope="bench")

    def pipeline_scrape() -> None:
        for workload, samples in scrape:
            telemetry.record(workload, samples)
        data, _ = telemetry.metrics_data()
        sink.export(data)

    def intake_only() -> None:
        for workload, samples in scrape:
            telemetry.record(workload, samples)

    host = dict(telemetry._host)
    now = time.time_ns()

    def baseline() -> None:
        baseline_message(scrape, host, now)

    pipeline_scrape()  # warm up: series created, imports done
    points = telemetry.metrics_data()[1]
    t_pipe = cpu_per_iteration(pipeline_scrape, args.iterations, args.rounds)
    t_intake = cpu_per_iteration(intake_only, args.iterations, args.rounds)
    t_base = cpu_per_iteration(baseline, args.iterations, args.rounds)
    telemetry.shutdown(1)
    n = args.series
    print(f"pipeline benchmark: {n} series ({n // 2} counters + {n // 2} gauges) over {args.workloads} workloads")
    print(f"  data points per export (incl. uniobs self-metrics): {points}; message {sink.bytes} bytes")
    print(f"  median of {args.rounds} rounds x {args.iterations} scrapes, CPU time:")
    print(f"  {'':34}{'per scrape':>12}{'per point':>12}")
    print(f"  {'uniobs pipeline (intake+encode)':34}{t_pipe * 1e3:>10.2f}ms{t_pipe / n * 1e6:>10.2f}us")
    print(f"  {'  of which intake (record)':34}{t_intake * 1e3:>10.2f}ms{t_intake / n * 1e6:>10.2f}us")
    print(f"  {'baseline: build OTLP pb once':34}{t_base * 1e3:>10.2f}ms{t_base / n * 1e6:>10.2f}us")
    print(f"  ratio pipeline / baseline: {t_pipe / t_base:.2f}x")


if __name__ == "__main__":
    main()
