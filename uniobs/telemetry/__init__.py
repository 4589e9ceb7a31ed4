"""The telemetry bridge: the only package that builds OpenTelemetry data.

- `bridge`: per-workload aggregation -> MetricsData / ReadableLogRecord / ReadableSpan (`Telemetry`).
- `export`: the export buffer (one byte budget), a queue and thread per exporter and signal.
- `resource`: the host's identity and uniobs' own workload (`SELF`).
"""

from uniobs.metrics import SELF_METRICS
from uniobs.telemetry.bridge import Telemetry, UndeclaredTelemetry
from uniobs.telemetry.export import DEFAULT_BUFFER_BYTES, SIGNALS, ExportBuffer, ExporterStats, ExportWorker, log_cost
from uniobs.telemetry.resource import SELF, host_attributes

__all__ = [
    "DEFAULT_BUFFER_BYTES", "SELF", "SELF_METRICS", "SIGNALS", "ExportBuffer", "ExportWorker", "ExporterStats",
    "Telemetry", "UndeclaredTelemetry", "host_attributes", "log_cost",
]  # fmt: skip
