"""`--export otlp[:ENDPOINT]` (OTLP/gRPC) and `--export otlp-http[:ENDPOINT]` (OTLP/HTTP protobuf).

The requests are the official OTLP messages: metrics as the bridge serialises them once per
flush for every OTLP exporter (`MetricsBatch.otlp_bytes()`, sent as is over HTTP), or the SDK's
`encode_metrics` of the `MetricsData` a caller hands in directly; logs and spans the SDK's own
encoding (`encode_logs`, `encode_spans`). Sending them is ours, so that every answer is
read the way the OTLP specification says (protocol/exporter.md, "Retry" and "Failures"):

- OTLP/HTTP: 429, 502, 503 and 504 are retryable, honouring `Retry-After` (seconds or an
  HTTP date); a refused connection or a timeout is retryable; any other status (400, 401, 404,
  405, 413, 500...) is final. A 2xx reply with `partial_success` counts its rejected items as
  failed, with the backend's message.
- OTLP/gRPC: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are
  retryable, and RESOURCE_EXHAUSTED when the server sent a `google.rpc.RetryInfo` (whose delay
  is honoured); any other code is final.

The sinks raise `uniobs.plugin.ExportError` saying which; the export queue (one per exporter and
signal) retries with back-off or gives the batch up. The sinks do not retry themselves.

Anything left unset here falls back to the standard variables, per signal first
(`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, then `OTEL_EXPORTER_OTLP_ENDPOINT`; the same for
`_HEADERS`, `_CERTIFICATE`, `_CLIENT_KEY`, `_CLIENT_CERTIFICATE`, `_COMPRESSION`, `_TIMEOUT` in
milliseconds, and `_INSECURE` for gRPC). A per-signal HTTP endpoint is used as is; the general
one gets `/v1/<signal>` appended, as the specification says (exporter.md, "Endpoint URLs for
OTLP/HTTP"). `OTEL_METRIC_EXPORT_TIMEOUT` (ms) bounds a metrics request when no OTLP timeout is set.

The protocol (`otlp` only; `otlp-http` always speaks http/protobuf): `protocol` in the table, then
`OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL`, then `OTEL_EXPORTER_OTLP_PROTOCOL`, then `default_protocol`:
gRPC for `--export otlp` (what it always meant here), http/protobuf (the specification's default)
when the environment turned OTLP on (`uniobs.config.export_specs`). `http/json` is refused with a
clear error: uniobs sends protobuf only. A bad variable is an error naming it.
"""

from __future__ import annotations

import email.utils
import gzip
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote, urlsplit

from uniobs import __version__
from uniobs.plugin import Exporter, ExporterConfig, ExportError, ExporterSinks, PluginConfig

_COMPRESSIONS = ("gzip", "deflate", "none")
USER_AGENT = f"uniobs/{__version__}"
DEFAULT_TIMEOUT_S = 10.0
HTTP_RETRYABLE = frozenset({429, 502, 503, 504})
_PATHS = {"metrics": "v1/metrics", "logs": "v1/logs", "traces": "v1/traces"}
PROTOCOLS = ("grpc", "http/protobuf")
_UNSUPPORTED = {"http/json": "http/json is not supported: uniobs sends protobuf (use http/protobuf or grpc)"}


@dataclass(frozen=True)
class OtlpConfig(ExporterConfig):
    endpoint: str | None = None  # default: OTEL_EXPORTER_OTLP_[SIGNAL_]ENDPOINT, then localhost:4317 / :4318
    headers: dict[str, str] = field(default_factory=dict)  # e.g. {"api-key" = "..."}
    insecure: bool | None = None  # gRPC: plaintext even for a non-http:// endpoint
    certificate: str | None = None  # CA bundle for verifying the server (TLS)
    client_key: str | None = None  # mutual TLS
    client_certificate: str | None = None
    timeout: float | None = None  # seconds per request
    compression: str | None = None  # gzip, deflate (HTTP only) or none
    max_export_batch_size: int = 5000  # data points per request: many workloads exceed a receiver's 4 MiB
    # `otlp` only: grpc or http/protobuf; unset: OTEL_EXPORTER_OTLP_[SIGNAL_]PROTOCOL, then default_protocol
    protocol: str | None = None
    default_protocol: str = "grpc"  # http/protobuf when the OTEL_* environment chose this exporter

    def validate(self) -> None:
        super().validate()
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
        for key in ("protocol", "default_protocol"):
            value = getattr(self, key)
            if value is not None and value not in PROTOCOLS:
                why = _UNSUPPORTED.get(value, f"must be one of {', '.join(PROTOCOLS)}, not {value!r}")
                raise ValueError(f"{key}: {why}")


# --- settings: the config, then the standard variables -------------------------------------


def _env(signal: str, key: str) -> str | None:
    """OTEL_EXPORTER_OTLP_<SIGNAL>_<KEY>, then OTEL_EXPORTER_OTLP_<KEY>; None when neither is set."""
    found = _env_named(signal, key)
    return found[1] if found else None


def _env_named(signal: str, key: str) -> tuple[str, str] | None:
    """(variable, value) of the first of OTEL_EXPORTER_OTLP_<SIGNAL>_<KEY>, OTEL_EXPORTER_OTLP_<KEY> that is set."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_{key}", f"OTEL_EXPORTER_OTLP_{key}"):
        value = os.environ.get(name, "").strip()
        if value:
            return name, value
    return None


def protocol_for(c: OtlpConfig, signal: str) -> str:
    """The `otlp` exporter's protocol for one signal (see the module's doc). ValueError naming the
    variable for a value that is not grpc or http/protobuf."""
    if c.protocol is not None:
        return c.protocol
    found = _env_named(signal, "PROTOCOL")
    if found is None:
        return c.default_protocol
    name, value = found
    value = value.lower()
    if value not in PROTOCOLS:
        why = _UNSUPPORTED.get(value, f"expected one of {', '.join(PROTOCOLS)}")
        raise ValueError(f"environment {name}={found[1]!r}: {why}")
    return value


def parse_headers(text: str) -> dict[str, str]:
    """`k1=v1,k2=v2` (W3C baggage style, values percent-decoded) as the OTEL_* variables write them."""
    headers = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


@dataclass(frozen=True)
class _Resolved:
    endpoint: str
    headers: dict[str, str]
    certificate: str | None
    client_key: str | None
    client_certificate: str | None
    timeout: float
    compression: str


def _env_ms(name: str, value: str) -> float:
    """A timeout variable's milliseconds as seconds; ValueError naming the variable if it is not > 0."""
    try:
        ms = float(value)
    except ValueError:
        ms = -1.0
    if not 0 < ms < float("inf"):
        raise ValueError(f"environment {name}={value!r}: expected milliseconds, a number > 0")
    return ms / 1000


def _resolve(c: OtlpConfig, signal: str, endpoint: str) -> _Resolved:
    """The settings one signal's requests use: the table's, then the variables'. ValueError for a bad variable."""
    timeout = c.timeout
    found = _env_named(signal, "TIMEOUT")
    if timeout is None and found is not None:
        timeout = _env_ms(*found)  # the specification's unit: milliseconds
    metric_timeout = os.environ.get("OTEL_METRIC_EXPORT_TIMEOUT", "").strip()
    if timeout is None and signal == "metrics" and metric_timeout:
        timeout = _env_ms("OTEL_METRIC_EXPORT_TIMEOUT", metric_timeout)
    return _Resolved(
        endpoint=endpoint,
        headers={**parse_headers(_env(signal, "HEADERS") or ""), **{k.lower(): v for k, v in c.headers.items()}},
        certificate=c.certificate or _env(signal, "CERTIFICATE"),
        client_key=c.client_key or _env(signal, "CLIENT_KEY"),
        client_certificate=c.client_certificate or _env(signal, "CLIENT_CERTIFICATE"),
        timeout=timeout if timeout and timeout > 0 else DEFAULT_TIMEOUT_S,
        compression=(c.compression or _env(signal, "COMPRESSION") or "none").lower(),
    )


def _http_endpoint(c: OtlpConfig, signal: str) -> str:
    if c.endpoint:
        return f"{c.endpoint.rstrip('/')}/{_PATHS[signal]}"  # our endpoint is the base URL
    own = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if own:
        return own  # a per-signal endpoint is the full URL
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
    return f"{base.rstrip('/')}/{_PATHS[signal]}"


def _grpc_endpoint(c: OtlpConfig, signal: str) -> str:
    return c.endpoint or _env(signal, "ENDPOINT") or "http://localhost:4317"


# --- the encoders, shared by both transports -----------------------------------------------


def _encoder(signal: str, wire: bool = False) -> Callable[[Any], Any]:
    """What a sink sends for a batch: the request message, or (metrics over HTTP, `wire`) the
    bridge's already serialised request bytes."""
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    def metrics(batch: Any) -> Any:
        if hasattr(batch, "otlp_bytes"):  # the bridge's MetricsBatch: encoded once for every exporter
            return batch.otlp_bytes() if wire else batch.request()
        return encode_metrics(batch)

    encoders: dict[str, Callable[[Any], Any]] = {
        "metrics": metrics,
        "logs": lambda batch: batch if hasattr(batch, "resource_logs") else encode_logs(batch),  # the bridge's request
        "traces": lambda batch: batch if hasattr(batch, "resource_spans") else encode_spans(batch),  # the bridge's
    }
    return encoders[signal]


def _response_type(signal: str) -> Any:
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    return {
        "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
        "logs": logs_service_pb2.ExportLogsServiceResponse,
        "traces": trace_service_pb2.ExportTraceServiceResponse,
    }[signal]


_REJECTED = {"metrics": "rejected_data_points", "logs": "rejected_log_records", "traces": "rejected_spans"}


def _check_partial(signal: str, response: Any) -> None:
    """A 2xx/OK reply may still refuse some items (`partial_success`): those count as failed."""
    if not response.HasField("partial_success"):
        return
    partial = response.partial_success
    rejected = int(getattr(partial, _REJECTED[signal]))
    if rejected:
        message = partial.error_message or "no reason given"
        raise ExportError(f"the backend rejected {rejected} items: {message}", retryable=False, rejected=rejected)


def _items(signal: str, batch: Any) -> Sequence[Any]:
    items: Sequence[Any] = batch.resource_metrics if signal == "metrics" else batch
    return items


class _Sink:
    """One signal's sink: `export(batch)` returns SUCCESS or raises ExportError. Duck-typed like the
    SDK's exporters (export, force_flush, shutdown), which is all the export queue calls."""

    def __init__(self, signal: str, send: Callable[[bytes | Any], None], encode: Callable[[Any], Any]) -> None:
        self.signal = signal
        self._send = send
        self._encode = encode
        self.encoded_metrics = signal == "metrics"  # takes the bridge's MetricsBatch (see _encoder)
        self.otlp_metrics_only = self.encoded_metrics  # ... and reads only its OTLP bytes (and length)
        self.encoded_logs = signal == "logs"  # takes the bridge's ExportLogsServiceRequest (see _encoder)
        self.encoded_traces = signal == "traces"  # takes the bridge's ExportTraceServiceRequest (see _encoder)

    def export(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        from opentelemetry.sdk.metrics.export import MetricExportResult

        if not _items(self.signal, batch):
            return MetricExportResult.SUCCESS
        self._send(self._encode(batch))
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        return None


# --- OTLP/HTTP ----------------------------------------------------------------------------------


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _HttpSender:
    def __init__(self, signal: str, settings: _Resolved) -> None:
        import requests

        self.signal = signal
        self.settings = settings
        self.session = requests.Session()
        self.session.headers.update(
            {"Content-Type": "application/x-protobuf", "User-Agent": USER_AGENT, **settings.headers}
        )
        if settings.compression in ("gzip", "deflate"):
            self.session.headers["Content-Encoding"] = settings.compression
        # The environment (proxies, NO_PROXY, CA bundle) is read once here, not on every POST: requests
        # re-reads it per request (~0.5 ms CPU each, half a log batch's cost). ~/.netrc is not consulted:
        # OTLP credentials go in OTEL_EXPORTER_OTLP_HEADERS.
        self.session.trust_env = False
        self.session.proxies = requests.utils.get_environ_proxies(settings.endpoint)
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if settings.certificate:
            self.session.verify = settings.certificate
        elif bundle:
            self.session.verify = bundle
        if settings.client_key and settings.client_certificate:
            self.session.cert = (settings.client_certificate, settings.client_key)
        self._lock = threading.Lock()  # a requests.Session is not documented as thread-safe

    def send(self, message: Any) -> None:
        import requests

        body = message if isinstance(message, bytes) else message.SerializeToString()
        if self.settings.compression == "gzip":
            body = gzip.compress(body, compresslevel=6)
        elif self.settings.compression == "deflate":
            body = zlib.compress(body)
        try:
            with self._lock:
                response = self.session.post(self.settings.endpoint, data=body, timeout=self.settings.timeout)
        except requests.exceptions.RequestException as exc:  # refused, reset, timed out, TLS...
            raise ExportError(f"{self.settings.endpoint}: {type(exc).__name__}: {exc}", retryable=True) from None
        if 200 <= response.status_code < 300:
            reply = _response_type(self.signal)()
            try:
                reply.ParseFromString(response.content)
            except Exception:  # an empty or non-protobuf 2xx body is still a success
                return
            _check_partial(self.signal, reply)
            return
        reason = f"{self.settings.endpoint}: HTTP {response.status_code} {response.reason or ''}".rstrip()
        detail = _status_message(response.content)
        if detail:
            reason += f": {detail}"
        retryable = response.status_code in HTTP_RETRYABLE
        raise ExportError(reason, retryable=retryable, retry_after=retry_after(response.headers.get("Retry-After")))


def _status_message(content: bytes) -> str:
    """The message of a google.rpc.Status body (what OTLP/HTTP servers send with an error), if any."""
    if not content:
        return ""
    try:
        from google.rpc import status_pb2  # type: ignore[import-untyped]

        status = status_pb2.Status()
        status.ParseFromString(content)
        return str(status.message)[:200]
    except Exception:
        text = content[:200].decode("utf-8", "replace").strip()
        return text if text.isprintable() else ""


# --- OTLP/gRPC ----------------------------------------------------------------------------------

_GRPC_RETRYABLE = ("CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS")


def _retry_info(error: Any) -> float | None:
    """The delay of a google.rpc.RetryInfo in the error's trailing details, if the server sent one."""
    try:
        from google.rpc import error_details_pb2, status_pb2

        for key, value in error.trailing_metadata() or ():
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        info = error_details_pb2.RetryInfo()
                        detail.Unpack(info)
                        return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    except Exception:
        return None
    return None


class _GrpcSender:
    def __init__(self, signal: str, settings: _Resolved, insecure: bool | None) -> None:
        import grpc
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        self.signal = signal
        self.settings = settings
        endpoint = settings.endpoint
        parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
        target = parts.netloc or endpoint
        if parts.scheme == "http":
            plaintext = True
        elif parts.scheme == "https":
            plaintext = False
        else:
            env = (_env(signal, "INSECURE") or "").lower() == "true"
            plaintext = insecure if insecure is not None else env
        compression = {"gzip": grpc.Compression.Gzip}.get(settings.compression, grpc.Compression.NoCompression)
        options = [("grpc.primary_user_agent", USER_AGENT)]
        if plaintext and not settings.certificate:
            self.channel = grpc.insecure_channel(target, options=options, compression=compression)
        else:
            credentials = grpc.ssl_channel_credentials(
                _read(settings.certificate), _read(settings.client_key), _read(settings.client_certificate)
            )
            self.channel = grpc.secure_channel(target, credentials, options=options, compression=compression)
        stubs: dict[str, Any] = {
            "metrics": metrics_service_pb2_grpc.MetricsServiceStub,
            "logs": logs_service_pb2_grpc.LogsServiceStub,
            "traces": trace_service_pb2_grpc.TraceServiceStub,
        }
        self._export = stubs[signal](self.channel).Export
        self._metadata = tuple(settings.headers.items())

    def send(self, message: Any) -> None:
        import grpc

        try:
            reply = self._export(message, metadata=self._metadata, timeout=self.settings.timeout)
        except grpc.RpcError as error:
            code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
            details = error.details() if hasattr(error, "details") else ""
            delay = _retry_info(error)
            retryable = code.name in _GRPC_RETRYABLE or (code.name == "RESOURCE_EXHAUSTED" and delay is not None)
            reason = f"{self.settings.endpoint}: gRPC {code.name}" + (f": {details}" if details else "")
            raise ExportError(reason, retryable=retryable, retry_after=delay) from None
        _check_partial(self.signal, reply)

    def close(self) -> None:
        self.channel.close()


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


# --- the plugins --------------------------------------------------------------------------------


class _OtlpBase(Exporter):
    config_class = OtlpConfig
    config: OtlpConfig

    def __init__(self, config: PluginConfig | None = None) -> None:
        super().__init__(config)
        # Every signal's protocol, endpoint and settings, resolved now: a bad OTEL_* variable is an
        # error at start (naming it), not at the first export.
        self.plan: dict[str, tuple[str, _Resolved]] = {}
        for signal in self._signals():
            protocol = self._protocol(signal)
            where = _grpc_endpoint(self.config, signal) if protocol == "grpc" else _http_endpoint(self.config, signal)
            self.plan[signal] = (protocol, _resolve(self.config, signal, where))

    def _protocol(self, signal: str) -> str:
        return protocol_for(self.config, signal)

    @classmethod
    def config_from_arg(cls, arg: str, base: PluginConfig) -> PluginConfig:
        assert isinstance(base, OtlpConfig)
        return replace(base, endpoint=arg)

    def _signals(self) -> tuple[str, ...]:
        return tuple(s for s in ("metrics", "logs", "traces") if s in self.config.signals)

    def sinks(self) -> ExporterSinks:
        sinks: dict[str, Any] = {}
        for signal, (protocol, settings) in self.plan.items():
            if protocol == "grpc":
                sinks[signal] = _ClosingSink(
                    signal, _GrpcSender(signal, settings, self.config.insecure), _encoder(signal)
                )
            else:
                sender = _HttpSender(signal, settings)
                sinks[signal] = _Sink(signal, sender.send, _encoder(signal, wire=True))
        return ExporterSinks(metrics=sinks.get("metrics"), logs=sinks.get("logs"), spans=sinks.get("traces"))

    def describe(self) -> str:
        """`otlp (http/protobuf) http://host:4318/v1/{metrics,logs,traces}`, or one part per signal when they differ."""
        parts: dict[tuple[str, str], list[str]] = {}
        for signal, (protocol, settings) in self.plan.items():
            endpoint = settings.endpoint
            if protocol != "grpc" and endpoint.endswith("/" + _PATHS[signal]):
                endpoint = endpoint[: -len(_PATHS[signal])] + "v1/{signal}"
            parts.setdefault((protocol, endpoint), []).append(signal)
        shown = []
        for (protocol, endpoint), signals in parts.items():
            note = "" if len(parts) == 1 and len(signals) == 3 else f" ({', '.join(signals)} only)"
            named = endpoint.replace("{signal}", signals[0] if len(signals) == 1 else "{" + ",".join(signals) + "}")
            shown.append(f"({protocol}) {named}{note}")
        return f"{self.name} " + "; ".join(shown)


class _ClosingSink(_Sink):
    def __init__(self, signal: str, sender: _GrpcSender, encode: Callable[[Any], Any]) -> None:
        super().__init__(signal, sender.send, encode)
        self._sender = sender

    def shutdown(self, *args: Any, **kwargs: Any) -> None:
        self._sender.close()


class OtlpGrpcExporter(_OtlpBase):
    """`--export otlp`: OTLP over gRPC, or over HTTP when `protocol` or OTEL_EXPORTER_OTLP_[SIGNAL_]PROTOCOL says."""

    name = "otlp"


class OtlpHttpExporter(_OtlpBase):
    """`--export otlp-http`: OTLP/HTTP with protobuf bodies, whatever the protocol variables say."""

    name = "otlp-http"

    def _protocol(self, signal: str) -> str:
        if self.config.protocol not in (None, "http/protobuf"):
            raise ValueError(f"protocol: otlp-http speaks http/protobuf (for {self.config.protocol}: --export otlp)")
        return "http/protobuf"
