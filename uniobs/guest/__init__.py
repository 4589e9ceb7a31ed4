"""What a guest prints and what it means.

- `capture`: console sources (fd:, fifo:, file:, tail:, unix:, pty:) read on the shared I/O thread.
- `lines`: bytes -> safe, timestamped lines (the untrusted-input boundary).
- `lineproto`: the `@@uniobs/1` line protocol.
- `reported`: confinement of what a guest reports (metrics, spans, logs).
- `parsers`: one console parser per unikernel family, and family detection.
"""
