"""Built-in exporters: thin factories over the OpenTelemetry SDK exporters (`uniobs.exporters`)."""
