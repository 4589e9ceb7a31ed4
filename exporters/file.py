"""`--export file:PATH`: every signal appended to a file in the OTLP file format.

One JSON-encoded `ExportMetricsServiceRequest`, `ExportLogsServiceRequest` or
`ExportTraceServiceRequest` per line, in the OTLP/JSON flavour of the protobuf JSON mapping
(lowerCamelCase keys, enums as integers, trace and span ids as hex), as the OpenTelemetry
specification's OTLP File Exporter describes; the Collector's `otlpjsonfile` receiver and
other OTLP tools read it back. This is the embedded default: no backend is needed to keep
every signal.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from uniobs.plugin import Exporter, ExporterConfig, ExporterSinks, PluginConfig

_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId"})


def _hex_ids(node: Any) -> Any:
    """protobuf's JSON mapping writes bytes as base64; OTLP/JSON wants trace/span ids in hex."""
    if isinstance(node, dict):
        return {
            k: (base64.b64decode(v).hex() if k in _ID_FIELDS and isinstance(v, str) else _hex_ids(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_hex_ids(v) for v in node]
    return node


def otlp_json(message: Message) -> str:
    """One OTLP/JSON line for an Export*ServiceRequest message."""
    as_dict = MessageToDict(message, use_integers_for_enums=True, preserving_proto_field_name=False)
    return json.dumps(_hex_ids(as_dict), separators=(",", ":"), ensure_ascii=False)


class OtlpJsonLines:
    """Appends lines to one file; shared by the three signal exporters, safe across threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        # Opened once, line-buffered appends: a reader tailing the file sees whole lines.
        self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, message: Message) -> None:
        line = otlp_json(message)
        with self._lock:
            self._file.write(line + "\n")

    def flush(self) -> None:
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


class _Metrics(MetricExporter):
    encoded_metrics = True  # takes the bridge's MetricsBatch: its request is built once per flush

    def __init__(self, out: OtlpJsonLines) -> None:
        super().__init__()
        self._out = out

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        batch: Any = metrics_data
        self._out.write(batch.request() if hasattr(batch, "otlp_bytes") else encode_metrics(metrics_data))
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        self._out.flush()
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._out.close()


class _Logs(LogRecordExporter):
    def __init__(self, out: OtlpJsonLines) -> None:
        self._out = out

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        self._out.write(encode_logs(batch))
        return LogRecordExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self._out.flush()
        return True

    def shutdown(self) -> None:
        self._out.close()


class _Spans(SpanExporter):
    def __init__(self, out: OtlpJsonLines) -> None:
        self._out = out

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self._out.write(encode_spans(spans))
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self._out.flush()
        return True

    def shutdown(self) -> None:
        self._out.close()


@dataclass(frozen=True)
class FileConfig(ExporterConfig):
    path: str = "uniobs-telemetry.jsonl"

    def validate(self) -> None:
        super().validate()
        if not self.path:
            raise ValueError("path: must not be empty")
        if Path(self.path).is_dir():
            raise ValueError(f"path: {self.path} is a directory")


class FileExporter(Exporter):
    name = "file"
    config_class = FileConfig
    config: FileConfig

    @classmethod
    def config_from_arg(cls, arg: str, base: PluginConfig) -> PluginConfig:
        assert isinstance(base, FileConfig)
        return replace(base, path=arg)

    def sinks(self) -> ExporterSinks:
        out = OtlpJsonLines(Path(self.config.path))
        signals = self.config.signals
        return ExporterSinks(
            metrics=_Metrics(out) if "metrics" in signals else None,
            logs=_Logs(out) if "logs" in signals else None,
            spans=_Spans(out) if "traces" in signals else None,
        )

    def describe(self) -> str:
        return f"file {self.config.path} (OTLP JSON lines)"
