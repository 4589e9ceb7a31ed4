"""Invocations observed at the function's port: the proxy, what it records, and `uniobs serve`.

- `admission`: the contract between the proxy and whatever owns the instance behind it (a fixed
  upstream for `run --function` / `compare`; the on-demand host of `uniobs serve`).
- `proxy`: the HTTP/1.1 (and plain TCP) proxy in front of the function's port.
- `record`: one finished invocation -> a SERVER span, `faas.*` metrics and a REPORT log record.
- `serve`: scale from zero, idle stop or pause, resume.
"""
