"""Reading back the OTLP JSON lines our file exporter writes (what a user's tooling would do)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _value(v: dict[str, Any]) -> Any:
    if "intValue" in v:
        return int(v["intValue"])
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    return v


def attrs(kvs: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {kv["key"]: _value(kv["value"]) for kv in kvs or []}


class Signals:
    def __init__(self, path: str | Path) -> None:
        self.lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

    def logs(self) -> list[dict[str, Any]]:
        """Every log record in export order, with its resource attributes under "resource"."""
        out = []
        for line in self.lines:
            for rl in line.get("resourceLogs", []):
                res = attrs(rl.get("resource", {}).get("attributes"))
                for sl in rl.get("scopeLogs", []):
                    for r in sl.get("logRecords", []):
                        out.append({
                            "body": r.get("body", {}).get("stringValue", ""),
                            "event": r.get("eventName", ""),
                            "attributes": attrs(r.get("attributes")),
                            "severity": r.get("severityText", ""),
                            "time": int(r.get("timeUnixNano", 0)),
                            "resource": res,
                        })  # fmt: skip
        return out

    def events(self, prefix: str = "uniobs.") -> list[dict[str, Any]]:
        return [r for r in self.logs() if r["event"].startswith(prefix)]

    def console(self) -> list[str]:
        """The console's lines (stdout), in order: records without an event name, stderr's left out."""
        return [r["body"] for r in self.logs() if not r["event"] and r["attributes"].get("log.iostream") != "stderr"]

    def stderr(self) -> list[str]:
        """The command's stderr lines (log.iostream=stderr), in order."""
        return [r["body"] for r in self.logs() if not r["event"] and r["attributes"].get("log.iostream") == "stderr"]

    def points(self, name: str) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
        """(resource attributes, point attributes, point) for a metric, last export last."""
        out = []
        for line in self.lines:
            for rm in line.get("resourceMetrics", []):
                res = attrs(rm.get("resource", {}).get("attributes"))
                for sm in rm.get("scopeMetrics", []):
                    for m in sm.get("metrics", []):
                        if m["name"] != name:
                            continue
                        data = m.get("sum") or m.get("gauge") or m.get("histogram") or {}
                        for p in data.get("dataPoints", []):
                            out.append((res, attrs(p.get("attributes")), {**p, "unit": m.get("unit", "")}))
        return out

    def last(self, name: str, **point_attrs: Any) -> float:
        matching = [
            p for _, a, p in self.points(name) if all(a.get(k.replace("_", ".")) == v for k, v in point_attrs.items())
        ]
        assert matching, f"no point for {name} {point_attrs}"
        p = matching[-1]
        return float(p.get("asDouble", p.get("asInt", 0)))

    def spans(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines:
            for rs in line.get("resourceSpans", []):
                res = attrs(rs.get("resource", {}).get("attributes"))
                for ss in rs.get("scopeSpans", []):
                    for s in ss.get("spans", []):
                        out.append({**s, "attributes": attrs(s.get("attributes")), "resource": res})
        return out
