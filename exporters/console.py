"""`--export console`: every signal printed to standard output by the SDK's console exporters."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace

from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from uniobs.plugin import Exporter, ExporterConfig, ExporterSinks, PluginConfig


@dataclass(frozen=True)
class ConsoleConfig(ExporterConfig):
    stream: str = "stdout"  # or "stderr"

    def validate(self) -> None:
        super().validate()
        if self.stream not in ("stdout", "stderr"):
            raise ValueError(f"stream: must be stdout or stderr, not {self.stream!r}")


class ConsoleExporter(Exporter):
    name = "console"
    config_class = ConsoleConfig
    config: ConsoleConfig

    @classmethod
    def config_from_arg(cls, arg: str, base: PluginConfig) -> PluginConfig:
        assert isinstance(base, ConsoleConfig)
        return replace(base, stream=arg)

    def sinks(self) -> ExporterSinks:
        out = sys.stdout if self.config.stream == "stdout" else sys.stderr
        signals = self.config.signals
        return ExporterSinks(
            metrics=ConsoleMetricExporter(out=out) if "metrics" in signals else None,
            logs=ConsoleLogRecordExporter(out=out) if "logs" in signals else None,
            spans=ConsoleSpanExporter(out=out) if "traces" in signals else None,
        )

    def describe(self) -> str:
        return f"console ({self.config.stream})"
