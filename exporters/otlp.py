"""`--export otlp[:ENDPOINT]` (OTLP/gRPC) and `--export otlp-http[:ENDPOINT]` (OTLP/HTTP protobuf).

Thin factories over the OpenTelemetry SDK's OTLP exporters. Anything left unset here falls
back to the standard `OTEL_EXPORTER_OTLP_*` variables (endpoint, headers, certificates,
timeout, compression), which those exporters read themselves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from uniobs.plugin import Exporter, ExporterSinks, PluginConfig

_COMPRESSIONS = ("gzip", "deflate", "none")


@dataclass(frozen=True)
class OtlpConfig(PluginConfig):
    endpoint: str | None = None  # default: OTEL_EXPORTER_OTLP_ENDPOINT, then localhost:4317 / :4318
    headers: dict[str, str] = field(default_factory=dict)  # e.g. {"api-key" = "..."}
    insecure: bool | None = None  # gRPC: plaintext even for a non-http:// endpoint
    certificate: str | None = None  # CA bundle for verifying the server (TLS)
    client_key: str | None = None  # mutual TLS
    client_certificate: str | None = None
    timeout: float | None = None  # seconds per export, retries included
    compression: str | None = None  # gzip, deflate or none
    max_export_batch_size: int = 5000  # data points per request: many workloads exceed a receiver's 4 MiB

    def validate(self) -> None:
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint if "://" in self.endpoint else f"//{self.endpoint}")
            if "://" in self.endpoint and parts.scheme not in ("http", "https"):
                raise ValueError(f"endpoint: scheme must be http or https, not {parts.scheme!r}")
            try:
                port = parts.port
            except ValueError:
                raise ValueError(f"endpoint: bad port in {self.endpoint!r}") from None
            if not parts.hostname:
                raise ValueError(f"endpoint: no host in {self.endpoint!r}")
            del port
        for key in ("certificate", "client_key", "client_certificate"):
            path = getattr(self, key)
            if path is not None and not os.path.isfile(path):
                raise ValueError(f"{key}: no such file {path!r}")
        if (self.client_key is None) != (self.client_certificate is None):
            raise ValueError("client_key and client_certificate go together")
        if self.compression is not None and self.compression not in _COMPRESSIONS:
            raise ValueError(f"compression: must be one of {', '.join(_COMPRESSIONS)}")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError("timeout: must be > 0 seconds")
        if self.max_export_batch_size < 1:
            raise ValueError("max_export_batch_size: must be >= 1")


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


class _OtlpBase(Exporter):
    config_class = OtlpConfig
    config: OtlpConfig

    @classmethod
    def config_from_arg(cls, arg: str, base: PluginConfig) -> PluginConfig:
        assert isinstance(base, OtlpConfig)
        fields = {k: getattr(base, k) for k in base.__dataclass_fields__}
        fields["endpoint"] = arg
        return OtlpConfig(**fields)

    def _compression(self) -> Any:
        if self.config.compression is None:
            return None
        from grpc import Compression

        return {"gzip": Compression.Gzip, "deflate": Compression.Deflate, "none": Compression.NoCompression}[
            self.config.compression
        ]


class OtlpGrpcExporter(_OtlpBase):
    name = "otlp"

    def sinks(self) -> ExporterSinks:
        import grpc
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        c = self.config
        credentials = None
        if c.certificate or c.client_key:
            credentials = grpc.ssl_channel_credentials(
                _read(c.certificate), _read(c.client_key), _read(c.client_certificate)
            )
        kwargs: dict[str, Any] = {
            "endpoint": c.endpoint,
            "insecure": c.insecure,
            "credentials": credentials,
            "headers": dict(c.headers) or None,
            "timeout": c.timeout,
            "compression": self._compression(),
        }
        return ExporterSinks(
            metrics=OTLPMetricExporter(**kwargs, max_export_batch_size=c.max_export_batch_size),
            logs=OTLPLogExporter(**kwargs),
            spans=OTLPSpanExporter(**kwargs),
        )

    def describe(self) -> str:
        where = self.config.endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "localhost:4317"
        return f"otlp (gRPC) {where}"


class OtlpHttpExporter(_OtlpBase):
    name = "otlp-http"

    def sinks(self) -> ExporterSinks:
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        c = self.config
        compression = None
        if c.compression is not None:
            compression = {
                "gzip": Compression.Gzip,
                "deflate": Compression.Deflate,
                "none": Compression.NoCompression,
            }[c.compression]
        base = c.endpoint.rstrip("/") if c.endpoint else None

        def kwargs(signal: str) -> dict[str, Any]:
            # Our endpoint is the base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is; the SDK's
            # `endpoint=` argument is the full per-signal URL.
            return {
                "endpoint": f"{base}/v1/{signal}" if base else None,
                "certificate_file": c.certificate,
                "client_key_file": c.client_key,
                "client_certificate_file": c.client_certificate,
                "headers": dict(c.headers) or None,
                "timeout": c.timeout,
                "compression": compression,
            }

        return ExporterSinks(
            metrics=OTLPMetricExporter(**kwargs("metrics"), max_export_batch_size=c.max_export_batch_size),
            logs=OTLPLogExporter(**kwargs("logs")),
            spans=OTLPSpanExporter(**kwargs("traces")),
        )

    def describe(self) -> str:
        where = self.config.endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
        return f"otlp-http {where}"
