// hello-node: the uniobs sample function. A plain Node.js HTTP server (no npm packages) that
// answers "Hello World\n" on 0.0.0.0:8002 (PORT overrides the port); /status/<code> and
// /sleep/<ms> (below) are there to test errors and timeouts.
//
// The same file runs as the microVM's application (unikernel/) and in the container twin. It
// reports what it does on stdout in the uniobs line protocol v1, one record per line:
//
//   @@uniobs/1 mark app_start [t=...]                       as soon as this file runs
//   @@uniobs/1 span start <id> name=app.listen [parent=<id> trace=<id>] [t=...]
//   @@uniobs/1 span end <id> name=app.listen status=ok|error [...]
//   @@uniobs/1 mark ready [t=...]                           once the socket listens
//   @@uniobs/1 metric hello.requests counter <N> unit={request}   after each request
//   @@uniobs/1 mark exit code=0 [t=...]                     on SIGTERM / SIGINT
//
// Trace context: the W3C `traceparent` comes from the environment (TRACEPARENT) or, if that is
// unset, from the kernel command line (/proc/cmdline, "traceparent=..."), which is how a host
// hands it to a microVM. Its parent id becomes the parent of the app.listen span and its trace id
// the span's trace= attribute. Without one, the span is a root and carries no trace=.
//
// Times: t= (seconds since boot) is written only when UNIOBS_BOOT_CLOCK=1, which the microVM's
// /init sets: there the kernel's clocks count from the guest's boot, the clock kernel_ready uses.
// In a container they count from the host's boot, so the collector timestamps those lines on
// arrival instead.

"use strict";

const crypto = require("node:crypto");
const fs = require("node:fs");
const http = require("node:http");

const PREFIX = "@@uniobs/1 ";
const HOST = "0.0.0.0";
const PORT = Number.parseInt(process.env.PORT || "8002", 10);
const BOOT_CLOCK = process.env.UNIOBS_BOOT_CLOCK === "1";

// One write per record. On a console or a file Node writes stdout synchronously (and on pipes
// too, on Linux), so records appear in order and none is lost when the process exits.
function emit(record) {
  process.stdout.write(PREFIX + record + "\n");
}

// " t=<seconds since boot>" on the guest's boot clock, or "" when that clock is not ours.
// process.hrtime reads CLOCK_MONOTONIC, which counts from boot like /proc/uptime (CLOCK_BOOTTIME)
// and differs only by time spent suspended (a microVM never is), at 1 us instead of 10 ms.
function t() {
  if (!BOOT_CLOCK) return "";
  return " t=" + (Number(process.hrtime.bigint() / 1000n) / 1e6).toFixed(6);
}

// A value as the protocol wants it: a bare token, or double-quoted with \" and \\ escaped.
function quote(value) {
  const s = String(value);
  if (/^[^\s"=\\]+$/.test(s)) return s;
  return '"' + s.replace(/[\\"]/g, "\\$&").replace(/[\r\n]+/g, " ") + '"';
}

emit("mark app_start" + t());

// --- W3C trace context ---------------------------------------------------------------------

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

// Returns {traceId, parentId} for a valid traceparent, or null (invalid ones are ignored, as the
// W3C spec asks: version ff, all-zero ids, or extra fields on version 00).
function parseTraceparent(value) {
  const m = TRACEPARENT.exec((value || "").trim());
  if (!m) return null;
  const [, version, traceId, parentId, , rest] = m;
  if (version === "ff" || /^0+$/.test(traceId) || /^0+$/.test(parentId)) return null;
  if (version === "00" && rest !== undefined) return null;
  return { traceId, parentId };
}

function traceparentFromCmdline() {
  try {
    const words = fs.readFileSync("/proc/cmdline", "utf8").split(/\s+/);
    const word = words.find((w) => w.startsWith("traceparent="));
    return word ? word.slice("traceparent=".length) : undefined;
  } catch {
    return undefined; // no /proc (or not Linux): no trace context
  }
}

const rawTraceparent = process.env.TRACEPARENT || traceparentFromCmdline();
const context = parseTraceparent(rawTraceparent);
if (rawTraceparent && !context) emit("log warn app: ignoring a malformed traceparent");

// --- the server ----------------------------------------------------------------------------

let requests = 0;

// Two routes for testing what the host sees of invocations (errors, timeouts):
//   /status/<code>  answers with that status code (200-599)
//   /sleep/<ms>     answers 200 after <ms> milliseconds (at most 600000)
// Every other path, "/" included, answers "Hello World".
const STATUS = /^\/status\/([2-5][0-9][0-9])$/;
const SLEEP = /^\/sleep\/([0-9]{1,6})$/;

function answer(res, status, body) {
  res.writeHead(status, { "Content-Type": "text/plain; charset=utf-8" });
  res.end(body);
  requests += 1;
  emit(`metric hello.requests counter ${requests} unit={request}`);
}

const server = http.createServer((req, res) => {
  const path = (req.url || "/").split("?")[0];
  let m;
  if ((m = STATUS.exec(path))) {
    answer(res, Number(m[1]), `status ${m[1]}\n`);
  } else if ((m = SLEEP.exec(path))) {
    const ms = Math.min(Number(m[1]), 600000);
    setTimeout(() => answer(res, 200, `slept ${ms} ms\n`), ms);
  } else {
    answer(res, 200, "Hello World\n");
  }
});

// The span around start-up: from here until the socket listens (or fails to).
const spanId = crypto.randomBytes(8).toString("hex");
const spanAttrs = "name=app.listen" + (context ? ` parent=${context.parentId} trace=${context.traceId}` : "");
emit(`span start ${spanId} ${spanAttrs}${t()}`);

server.on("error", (err) => {
  emit(`span end ${spanId} ${spanAttrs} status=error error=${quote(err.code || err.message)}${t()}`);
  emit(`log error app: cannot listen on ${HOST}:${PORT}: ${String(err.message).replace(/[\r\n]+/g, " ")}`);
  process.exit(1);
});

server.listen(PORT, HOST, () => {
  emit(`span end ${spanId} ${spanAttrs} status=ok${t()}`);
  emit(`mark ready${t()} port=${PORT}`);
});

// As PID 1 (in a container, or as the microVM's application) a process gets no default action
// for SIGTERM/SIGINT: without these handlers a stop request would be ignored.
function stop(signal) {
  emit(`mark exit${t()} code=0 signal=${signal}`);
  server.close();
  process.exit(0);
}
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));
