"""A real Prometheus server (Debian's `prometheus`) scrapes our endpoint on loopback; the test reads
the series back through Prometheus' own HTTP query API."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import free_port, requires_prometheus

from uniobs.config import Settings
from uniobs.model import Workload
from uniobs.pipeline import Pipeline

pytestmark = [pytest.mark.prometheus, requires_prometheus]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture
def exporting_pipeline(process_workload: Workload) -> Iterator[tuple[Pipeline, int]]:
    pipeline = Pipeline(Settings(), export=["prometheus:127.0.0.1:0"], collectors=["process"], strict=True)
    pipeline.scrape([process_workload])
    pipeline.flush(5)
    port = pipeline.exporters[0][1].sink.port  # type: ignore[attr-defined]
    yield pipeline, port
    pipeline.close(5)


def test_endpoint_binds_loopback_by_default() -> None:
    from uniobs.exporters.prometheus import PrometheusConfig

    assert PrometheusConfig().host == "127.0.0.1"


def test_real_prometheus_scrapes_and_answers_queries(
    exporting_pipeline: tuple[Pipeline, int], process_workload: Workload, tmp_path: Path
) -> None:
    _, target_port = exporting_pipeline
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: uniobs\n"
        "    honor_labels: true\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    base = f"http://127.0.0.1:{prom_port}"
    try:
        query = 'process_memory_usage_bytes{service_name="child"}'
        result: list[Any] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not result:
            time.sleep(1)
            try:
                answer = get_json(f"{base}/api/v1/query?query={urllib.parse.quote(query)}")
            except OSError:
                continue  # not listening yet
            result = answer["data"]["result"]
        assert result, f"Prometheus never returned {query}; log: {(tmp_path / 'prometheus.log').read_text()[-2000:]}"
        series = result[0]
        assert float(series["value"][1]) >= 20 << 20
        labels = series["metric"]
        assert labels["process_pid"] == str(process_workload.pid)
        assert labels["job"] == "child" and labels["host_name"]
        # counters get _total and the unit suffix
        cpu = get_json(f"{base}/api/v1/query?query={urllib.parse.quote('process_cpu_time_seconds_total')}")
        modes = {s["metric"]["cpu_mode"] for s in cpu["data"]["result"] if s["metric"]["service_name"] == "child"}
        assert modes == {"user", "system"}
        targets = get_json(f"{base}/api/v1/targets")["data"]["activeTargets"]
        assert targets[0]["health"] == "up"
    finally:
        prom.terminate()
        prom.wait(10)
        log.close()
