"""The standard OpenTelemetry variables (SDK environment-variable specification and the OTLP
exporter specification), each one against real receivers on loopback (tests/otlp_receiver.py),
driven through the real `uniobs` command: protocol, endpoint-alone autoconfiguration, per-signal
exporters, export interval, OTEL_SDK_DISABLED, service name and resource attributes, and the
precedence flags > file > environment > defaults (docs/configuration.md)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from otlp_receiver import GrpcReceiver, HttpReceiver
from support import uniobs_cli

from uniobs.config import ConfigError, Settings, export_specs, load


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands run in the test's folder: a default ./uniobs-telemetry.jsonl lands there."""
    monkeypatch.chdir(tmp_path)


uniobs = uniobs_cli


def run_true(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`uniobs run` of a short real command: metrics, a console log line and a cold-start span."""
    return uniobs("run", "-q", *args, "--", "sh", "-c", "echo hello; sleep 0.3", env=env)


def test_endpoint_alone_turns_on_otlp_over_http_protobuf(http_receiver: HttpReceiver, tmp_path: Path) -> None:
    """The specification's default protocol is http/protobuf; the base endpoint gets /v1/<signal>."""
    result = run_true(env={"OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint})
    assert result.returncode == 0, result.stderr
    assert f"otlp (http/protobuf) {http_receiver.endpoint}/v1/{{metrics,logs,traces}}" in result.stderr
    received = http_receiver.received
    assert received.metrics and received.logs and received.traces
    assert set(http_receiver.attempts) == {"/v1/metrics", "/v1/logs", "/v1/traces"}
    assert not (tmp_path / "uniobs-telemetry.jsonl").exists()  # the environment replaced the default


def test_protocol_grpc_speaks_grpc(grpc_receiver: GrpcReceiver) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    result = run_true(env=env)
    assert result.returncode == 0, result.stderr
    assert "otlp (grpc)" in result.stderr
    received = grpc_receiver.received
    assert received.wait_for(lambda r: bool(r.metrics and r.logs and r.traces), timeout=10)


def test_protocol_http_protobuf_with_explicit_otlp_exporter(http_receiver: HttpReceiver) -> None:
    """`--export otlp` speaks gRPC unless told; OTEL_EXPORTER_OTLP_PROTOCOL tells it (issue 16)."""
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    result = uniobs("scrape-once", "--export", "otlp", env=env)
    assert result.returncode == 0, result.stderr
    assert http_receiver.received.metrics and "/v1/metrics" in http_receiver.attempts


def test_per_signal_protocol_and_endpoint(http_receiver: HttpReceiver, grpc_receiver: GrpcReceiver) -> None:
    """Metrics over HTTP to a per-signal endpoint used as is (no /v1/metrics appended); the rest over gRPC."""
    env = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.endpoint,
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"{http_receiver.endpoint}/v1/metrics",
    }
    result = run_true(env=env)
    assert result.returncode == 0, result.stderr
    assert set(http_receiver.attempts) == {"/v1/metrics"} and http_receiver.received.metrics
    received = grpc_receiver.received
    assert received.wait_for(lambda r: bool(r.logs and r.traces), timeout=10)
    assert not received.metrics
    # a per-signal endpoint is the full URL: nothing is appended to it
    env["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"] = f"{http_receiver.endpoint}/custom"
    uniobs("scrape-once", env=env)
    assert "/custom" in http_receiver.attempts and "/custom/v1/metrics" not in http_receiver.attempts


def test_per_signal_exporters(http_receiver: HttpReceiver) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint,
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "console",
    }  # metrics: unset, so otlp (the specification's default)
    result = run_true(env=env)
    assert result.returncode == 0, result.stderr
    assert set(http_receiver.attempts) == {"/v1/metrics"}
    assert '"body": "hello"' in result.stdout  # the console exporter's log record
    assert '"name": "coldstart"' not in result.stdout  # traces: none


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OTEL_TRACES_EXPORTER", "zipkin", "environment OTEL_TRACES_EXPORTER='zipkin': 'zipkin' is not supported"),
        ("OTEL_LOGS_EXPORTER", "prometheus", "environment OTEL_LOGS_EXPORTER='prometheus': prometheus takes metrics"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL='http/json': http/json is not"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "udp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='udp': expected one of"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "soon", "environment OTEL_METRIC_EXPORT_INTERVAL='soon': expected millis"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "-1", "environment OTEL_EXPORTER_OTLP_TIMEOUT='-1': expected millis"),
    ],
)
def test_a_bad_variable_is_one_error_naming_it(variable: str, value: str, message: str) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", variable: value}
    result = uniobs("scrape-once", env=env)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "<defaults>" not in result.stderr


def test_metric_export_interval_sets_the_cadence(http_receiver: HttpReceiver) -> None:
    """200 ms: several exports while a 3 s command runs; 60000 ms: one, at the end."""
    command = ("run", "-q", "--", "sleep", "3")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint, "OTEL_METRIC_EXPORT_INTERVAL": "200"}
    assert uniobs(*command, env=env).returncode == 0
    fast = len(http_receiver.attempts["/v1/metrics"])
    assert fast >= 3, fast
    http_receiver.attempts.clear()
    env["OTEL_METRIC_EXPORT_INTERVAL"] = "60000"
    assert uniobs(*command, env=env).returncode == 0
    assert len(http_receiver.attempts["/v1/metrics"]) == 1


def test_sdk_disabled_exports_nothing_and_says_so_once(http_receiver: HttpReceiver, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    env = {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint}
    result = run_true("--export", f"file:{out}", "--export", "otlp-http:" + http_receiver.endpoint, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("OTEL_SDK_DISABLED") == 1, result.stderr
    assert "telemetry -> nowhere" in result.stderr
    assert not http_receiver.attempts and not out.exists()
    # anything but "true" leaves it on (the specification's boolean rule)
    result = uniobs("scrape-once", env={**env, "OTEL_SDK_DISABLED": "1"})
    assert result.returncode == 0 and http_receiver.received.metrics


def test_service_name_and_resource_attributes(http_receiver: HttpReceiver) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint,
        "OTEL_SERVICE_NAME": "uniobs-node-7",
        "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging,service.name=ignored",
    }
    result = uniobs("scrape-once", env=env)
    assert result.returncode == 0, result.stderr
    resources = {tuple(sorted(res.items())) for res, _, _ in http_receiver.received.metric_points()}
    assert resources and all(dict(r)["deployment.environment"] == "staging" for r in resources)
    names = {dict(r)["service.name"] for r in resources}
    assert "uniobs-node-7" in names and "ignored" not in names  # OTEL_SERVICE_NAME wins, as specified


# --- precedence: flags > file > environment > defaults ------------------------------------------


def test_the_file_wins_over_the_environment(http_receiver: HttpReceiver, tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    config = tmp_path / "uniobs.toml"
    config.write_text(f'[uniobs]\nexport = ["file:{out}"]\n')
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": http_receiver.endpoint}
    result = uniobs("scrape-once", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert out.exists() and not http_receiver.attempts
    # a flag wins over the file
    flagged = tmp_path / "flag.jsonl"
    assert uniobs("scrape-once", "--config", str(config), "--export", f"file:{flagged}", env=env).returncode == 0
    assert flagged.exists()
    # [exporters.otlp] protocol wins over OTEL_EXPORTER_OTLP_PROTOCOL
    config.write_text('[exporters.otlp]\nprotocol = "http/protobuf"\n')
    env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    result = uniobs("scrape-once", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    assert "/v1/metrics" in http_receiver.attempts


def test_precedence_of_the_export_interval(tmp_path: Path) -> None:
    env = {"OTEL_METRIC_EXPORT_INTERVAL": "250"}
    assert load(None, environ=env).core.export_interval == 0.25  # environment over the default
    assert load(None, environ={}).core.export_interval == 10.0
    config = tmp_path / "uniobs.toml"
    config.write_text("[uniobs]\nexport_interval = 3\n")
    assert load(config, environ=env).core.export_interval == 3.0  # the file over the environment
    assert load(config, environ=env, overrides={"export_interval": 1}).core.export_interval == 1.0  # flags first
    # UNIOBS__ variables name one key of the file: they override it (deploy/uniobs.toml relies on it)
    assert load(config, environ={**env, "UNIOBS__UNIOBS__EXPORT_INTERVAL": "2"}).core.export_interval == 2.0


def test_export_specs_precedence() -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_METRICS_EXPORTER": "prometheus,otlp"}
    settings = Settings()
    specs, chosen_by = export_specs([], settings, ["file:x"], env)
    assert (sorted(specs), chosen_by) == (["otlp", "prometheus"], "the environment (OTEL_*)")
    assert settings.exporters["prometheus"]["signals"] == ["metrics"]
    assert settings.exporters["otlp"] == {"signals": ["metrics", "logs", "traces"], "default_protocol": "http/protobuf"}
    assert export_specs(["console"], Settings(), ["file:x"], env) == (["console"], "--export")
    assert export_specs([], Settings(), ["file:x"], {}) == (["file:x"], "the default")
    disabled = Settings(sdk_disabled=True)
    assert export_specs(["console"], disabled, ["file:x"], env) == ([], "OTEL_SDK_DISABLED")
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER='none,otlp': 'none' goes alone"):
        export_specs([], Settings(), [], {"OTEL_TRACES_EXPORTER": "none,otlp"})
