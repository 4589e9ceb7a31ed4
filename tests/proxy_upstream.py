"""A real HTTP/1.1 function for the proxy's tests: Python's http.server, run as its own process.

    python tests/proxy_upstream.py PORT

Routes: `/hello` (Content-Length body), `/echo` (POST: the body back, Content-Length or chunked
in, Content-Length out), `/chunked` (a chunked answer of three chunks), `/headers` (the request's
headers as JSON), `/status/<code>`, `/sleep/<ms>`, `/hang` (never answers), `/upgrade` (101, then
every byte echoed back until the client closes), `/close` (answers with Connection: close).
"""

from __future__ import annotations

import json
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNKS = [b"first chunk\n", b"x" * 5000, b"\r\nlast\r\n"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, chunked, 100-continue

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/hello":
            self._send(200, b"hello\n")
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in CHUNKS:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/headers":
            self._send(200, json.dumps([[k.lower(), v] for k, v in self.headers.items()]).encode())
        elif path.startswith("/status/"):
            self._send(int(path.rsplit("/", 1)[1]), b"status\n")
        elif path.startswith("/sleep/"):
            time.sleep(int(path.rsplit("/", 1)[1]) / 1000)
            self._send(200, b"slept\n")
        elif path == "/hang":
            time.sleep(3600)
        elif path == "/close":
            self._send(200, b"bye\n", Connection="close")
            self.close_connection = True
        elif path == "/upgrade" and self.headers.get("Upgrade"):
            self.send_response(101)
            self.send_header("Upgrade", self.headers["Upgrade"])
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            while data := self.connection.recv(65536):
                self.connection.sendall(data)
            self.close_connection = True
        else:
            self._send(404, b"not found\n")

    def do_POST(self) -> None:
        body = self._body()
        self._send(200, body, X_Length=str(len(body)))


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("listening", flush=True)
    server.serve_forever()
