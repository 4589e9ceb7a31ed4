"""Cold starts: marks -> spans and metrics (`trace`), readiness and first-request probes (`probes`)."""

from uniobs.coldstart.trace import ColdStart, new_trace_id, traceparent
from uniobs.metrics import COLDSTART_METRICS

__all__ = ["COLDSTART_METRICS", "ColdStart", "new_trace_id", "traceparent"]
