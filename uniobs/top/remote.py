"""`uniobs top --from URL`: a running uniobs' figures, read from its Prometheus endpoint.

An agent (or a `uniobs run` / `serve`) started with `--export prometheus[:HOST:PORT]` serves the
exposition that `exporters/prometheus.py` builds from the same bridge; nothing is measured here.
Series are told apart by `job` / `instance` (`service.name` / `service.instance.id`), and a
resource's attributes come from its `target_info` series (or, from an exporter that copies them,
from the series' own labels). Family names are those the exporter gives the metrics `uniobs top`
reads (`metric_name`, from their declarations).

The exposition has no timestamps and changes only when the remote exports: a scrape whose text is
the same as the last one is no new point. A workload's points are placed at its `process.uptime`
(the remote's own reading, taken in the same scrape as its other series), else at the time they
were read here (then a rate is off by up to the time between two reads of ours).
"""

from __future__ import annotations

import importlib
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from uniobs.model import Instrument, MetricSpec
from uniobs.top.local import instance_key
from uniobs.top.model import SOURCE_METRICS, Point, Row, Store, build_rows

POINT_LABELS_DROPPED = {"job", "instance", "otel_scope_name"}


def family_names(specs: list[MetricSpec]) -> dict[str, tuple[str, Instrument]]:
    """{Prometheus family name (without `_total`): (metric name, instrument)} for the metrics top reads."""
    # the exporter's own naming (exporters/prometheus.py), imported by name: a plugin module
    metric_name = importlib.import_module("uniobs.exporters.prometheus").metric_name
    out: dict[str, tuple[str, Instrument]] = {}
    for spec in specs:
        if spec.name in SOURCE_METRICS:
            counter = spec.instrument is Instrument.COUNTER
            gauge = spec.instrument is Instrument.GAUGE
            out[metric_name(spec.name, spec.unit, counter, gauge)] = (spec.name, spec.instrument)
    return out


def declared_specs() -> list[MetricSpec]:
    """Every metric the installed collectors and the core declare."""
    from uniobs.metrics import CORE_METRICS
    from uniobs.registry import Registry

    specs = [spec for info in Registry().collectors.values() for spec in info.plugin.metrics]
    return specs + [spec for _, group in CORE_METRICS for spec in group]


def parse_exposition(
    text: str, families: dict[str, tuple[str, Instrument]], now_ns: int
) -> dict[str, tuple[dict[str, Any], list[tuple[str, tuple[tuple[str, Any], ...], Point]]]]:
    """{store key: (resource labels, [(metric, point labels, point)])} from one exposition text.

    Raises ValueError on text that is not the exposition format."""
    targets: dict[tuple[str, str], dict[str, str]] = {}
    seen: dict[tuple[str, str], dict[str, str]] = {}  # a series' labels, when no target_info names it
    numbers: list[tuple[tuple[str, str], str, tuple[tuple[str, Any], ...], float]] = []
    hists: dict[tuple[tuple[str, str], str, tuple[tuple[str, Any], ...]], dict[str, Any]] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("target", "target_info"):
            for sample in family.samples:
                labels = dict(sample.labels)
                targets[(labels.get("job", ""), labels.get("instance", ""))] = labels
            continue
        known = families.get(family.name)
        if known is None:
            continue
        metric, instrument = known
        for sample in family.samples:
            labels = dict(sample.labels)
            target = (labels.get("job", ""), labels.get("instance", ""))
            seen.setdefault(target, labels)
            point_labels = tuple(sorted((k, v) for k, v in labels.items() if k not in POINT_LABELS_DROPPED))
            if instrument is Instrument.HISTOGRAM:
                le = labels.pop("le", None)
                plain = tuple((k, v) for k, v in point_labels if k != "le")
                hist = hists.setdefault((target, metric, plain), {"buckets": {}, "sum": 0.0, "count": 0})
                if sample.name.endswith("_bucket") and le is not None:
                    hist["buckets"][float(le)] = sample.value
                elif sample.name.endswith("_sum"):
                    hist["sum"] = sample.value
                elif sample.name.endswith("_count"):
                    hist["count"] = int(sample.value)
            elif sample.name.endswith("_created"):
                continue
            else:
                numbers.append((target, metric, point_labels, float(sample.value)))
    out: dict[str, tuple[dict[str, Any], list[tuple[str, tuple[tuple[str, Any], ...], Point]]]] = {}

    def entry(target: tuple[str, str]) -> list[tuple[str, tuple[tuple[str, Any], ...], Point]]:
        job, instance = target
        resource: dict[str, Any] = dict(targets.get(target) or seen.get(target) or {})
        resource.setdefault("service_name", job.rsplit("/", 1)[-1])
        resource["service_instance_id"] = instance
        key = instance_key(resource.get("uniobs_workload_kind"), resource.get("uniobs_workload_runtime"), instance)
        return out.setdefault(key, (resource, []))[1]

    # The exposition has no times; a workload's process.uptime is its own clock at the remote's
    # scrape (all its series are taken in that scrape), so rates use it rather than when we read.
    clock = {target: int(value * 1e9) for target, metric, _, value in numbers if metric == "process.uptime"}
    for target, metric, plabels, value in numbers:
        entry(target).append((metric, plabels, Point(clock.get(target, now_ns), value)))
    for (target, metric, hlabels), hist in hists.items():
        les = sorted(hist["buckets"])
        cumulative = [int(hist["buckets"][le]) for le in les]
        per = [b - a for a, b in zip([0, *cumulative], cumulative, strict=False)]
        bounds = tuple(le for le in les if le != float("inf"))
        if len(per) == len(bounds):  # no +Inf bucket written: the rest is above the last bound
            per.append(hist["count"] - sum(per))
        point = Point(clock.get(target, now_ns), hist["sum"], hist["count"], bounds, tuple(per))
        entry(target).append((metric, hlabels, point))
    return out


class RemoteSource:
    """Reads one or more running uniobs' Prometheus endpoints into a Store (`step()` per refresh)."""

    def __init__(self, urls: list[str], interval: float, timeout: float = 5.0) -> None:
        self.urls = [u if "://" in u else f"http://{u}/metrics" for u in urls]
        self.interval = interval
        self.timeout = timeout
        self.store = Store()
        self.families = family_names(declared_specs())
        self.errors: dict[str, str] = {}  # url -> the last failure, shown under the table
        self._last: dict[str, str] = {}
        self._keys: dict[str, set[str]] = {}

    def describe(self) -> str:
        return ", ".join(self.urls)

    def step(self) -> int:
        """Read every endpoint once. Returns the number of endpoints that gave new figures."""
        fresh = 0
        for url in self.urls:
            try:
                with urllib.request.urlopen(url, timeout=self.timeout) as response:
                    text = response.read().decode("utf-8", "replace")
                parsed = parse_exposition(text, self.families, time.time_ns())
            except (OSError, ValueError) as exc:
                self.errors[url] = f"{type(exc).__name__}: {exc}"
                continue
            self.errors.pop(url, None)
            if text == self._last.get(url):
                continue  # not exported again since the last read: no new point
            self._last[url] = text
            fresh += 1
            for key, (resource, points) in parsed.items():
                self.store.put(key, resource, points)
            gone = self._keys.get(url, set()) - set(parsed)
            self._keys[url] = set(parsed)
            if gone:
                everything = set().union(*self._keys.values())
                self.store.retain(everything)
        self.store.mark()
        return fresh

    def measure_twice(self, timeout: float = 10.0) -> None:
        """Two reads with new figures, if the remote exports again within an interval and `timeout`."""
        self.step()
        deadline = time.monotonic() + self.interval + timeout
        while time.monotonic() < deadline:
            time.sleep(min(self.interval, 0.5))
            if self.step():
                return

    def rows(self) -> list[Row]:
        return build_rows(self.store.snapshot())

    def close(self) -> None:
        return None
