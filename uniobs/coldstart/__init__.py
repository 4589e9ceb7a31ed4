"""Cold starts: marks -> spans and metrics (`trace`), readiness and first-request probes (`probes`)."""

from uniobs.coldstart.trace import COLDSTART_METRICS, ColdStart, new_trace_id, traceparent

__all__ = ["COLDSTART_METRICS", "ColdStart", "new_trace_id", "traceparent"]
