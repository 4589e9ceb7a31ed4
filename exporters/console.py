"""`--export console`: every signal printed to standard output by the SDK's console exporters."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from uniobs.plugin import Exporter, ExporterSinks, PluginConfig


@dataclass(frozen=True)
class ConsoleConfig(PluginConfig):
    stream: str = "stdout"  # or "stderr"

    def validate(self) -> None:
        if self.stream not in ("stdout", "stderr"):
            raise ValueError(f"stream: must be stdout or stderr, not {self.stream!r}")


class ConsoleExporter(Exporter):
    name = "console"
    config_class = ConsoleConfig
    config: ConsoleConfig

    @classmethod
    def config_from_arg(cls, arg: str, base: PluginConfig) -> PluginConfig:
        return ConsoleConfig(stream=arg)

    def sinks(self) -> ExporterSinks:
        out = sys.stdout if self.config.stream == "stdout" else sys.stderr
        return ExporterSinks(
            metrics=ConsoleMetricExporter(out=out),
            logs=ConsoleLogRecordExporter(out=out),
            spans=ConsoleSpanExporter(out=out),
        )

    def describe(self) -> str:
        return f"console ({self.config.stream})"
