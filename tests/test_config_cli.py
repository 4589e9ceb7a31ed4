"""Configuration errors are one clear line; the CLI's commands work end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from uniobs.config import ConfigError, CoreConfig, load


def uniobs(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "UNIOBS_"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "uniobs.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[uniobs]\nintervall = 3\n", "[uniobs]: unknown key 'intervall' (known keys:"),
        ('[uniobs]\ninterval = "fast"\n', "[uniobs] interval: expected float, got str 'fast'"),
        ("[collectors.process]\npss = 1\n", "[collectors.process] pss: expected bool, got int 1"),
        ("[collectors.nosuch]\n", "[collectors.nosuch]: no such plugin is installed"),
        (
            '[exporters.otlp]\nendpoint = "ftp://x:1"\n',
            "[exporters.otlp]: endpoint: scheme must be http or https",
        ),
        ("[exporters.prometheus]\nport = 70000\n", "[exporters.prometheus]: port: 70000 is not a TCP port"),
        ("[bogus]\n", "unknown table [bogus]"),
        ("[uniobs\n", "not valid TOML"),
    ],
)
def test_bad_configuration_is_one_line_naming_file_plugin_and_key(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "uniobs.toml"
    config.write_text(toml)
    result = uniobs("scrape-once", "--config", str(config), "--export", "console")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert str(config) in errors[0] and message in errors[0], errors[0]


def test_unknown_exporter_and_bad_export_argument() -> None:
    result = uniobs("scrape-once", "--export", "kafka")
    assert result.returncode != 0 and "unknown exporter 'kafka' (installed: console, file, otlp" in result.stderr
    result = uniobs("scrape-once", "--export", "prometheus:localhost:notaport")
    assert "expected HOST:PORT or PORT" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "uniobs.toml"
    config.write_text("[uniobs]\ninterval = 30\n[collectors.process]\ninterval = 20\n")
    env = {"UNIOBS__UNIOBS__INTERVAL": "2", "UNIOBS__COLLECTORS__PROCESS__PSS": "false"}
    settings = load(config, environ=env)
    assert settings.core.interval == 2.0
    assert settings.collectors["process"] == {"interval": 20, "pss": False}
    with pytest.raises(ConfigError, match=r"\[uniobs\]: interval: must be > 0"):
        load(None, environ={"UNIOBS__UNIOBS__INTERVAL": "-1"})
    # flags override both
    assert load(config, environ=env, overrides={"interval": 1}).core.interval == 1.0
    assert CoreConfig().export == ()


def test_unreachable_otlp_endpoint_is_one_error_line_and_the_other_exporters_still_deliver(
    tmp_path: Path,
) -> None:
    out = tmp_path / "telemetry.jsonl"
    config = tmp_path / "uniobs.toml"
    config.write_text("[exporters.otlp]\ntimeout = 2\n")
    result = uniobs(
        "scrape-once", "--config", str(config), "--export", "otlp:http://127.0.0.1:1", "--export", f"file:{out}",
        "--timeout", "10",
    )  # fmt: skip
    assert result.returncode == 1
    lost = [line for line in result.stderr.splitlines() if line.startswith("uniobs: exporter otlp: ")]
    # one line per signal that lost anything, with counts and the reason
    assert len(lost) == 1 and lost[0].startswith("uniobs: exporter otlp: metrics not delivered: "), result.stderr
    # a backend still refusing at the end failed the points (dropped is the buffer making room)
    assert "UNAVAILABLE" in lost[0] and " failed (" in lost[0] and "dropped" not in lost[0]
    assert "exporter file" not in result.stderr
    # the file exporter got everything, including the count of what otlp lost
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert any("resourceMetrics" in line for line in lines)


def test_version_plugins_and_describe() -> None:
    from uniobs import __version__

    assert uniobs("--version").stdout.strip() == f"uniobs, version {__version__}"
    table = uniobs("describe", "--format", "markdown").stdout
    assert "| `process.cpu.time` | counter | `s` | `cpu.mode` |" in table
    described = json.loads(uniobs("describe", "--format", "json").stdout)
    names = [m["name"] for m in described]
    assert len(names) == len(set(names)) and "uniobs.exporter.items" in names


def test_scrape_once_exports_the_host_to_a_file(tmp_path: Path) -> None:
    out = tmp_path / "t.jsonl"
    result = uniobs("scrape-once", "--export", f"file:{out}")
    assert result.returncode == 0, result.stderr
    assert "scraped" in result.stderr and f"file {out}" in result.stderr
    metrics = [json.loads(line) for line in out.read_text().splitlines() if line.startswith('{"resourceMetrics"')]
    names = {
        m["name"]
        for line in metrics for rm in line["resourceMetrics"] for sm in rm["scopeMetrics"] for m in sm["metrics"]
    }  # fmt: skip
    assert {"process.cpu.time", "process.memory.usage", "uniobs.exporter.items"} <= names


def test_scrape_once_console() -> None:
    result = uniobs("scrape-once", "--export", "console")
    assert result.returncode == 0, result.stderr
    assert '"name": "process.memory.usage"' in result.stdout
