#!/usr/bin/env python3
"""Echo upstream for the keycloak-pep test stack (Python 3 standard library only).

Answers every request (any method, any path) with 200 and a JSON body describing
exactly what it received, so tests can see what the filter forwarded:

    {"method": "GET",
     "path": "/account/1?x=1",              # raw request target, query included
     "headers": {"host": "...", "x-a": ["1", "2"], ...},   # lower-cased; a list when repeated
     "body": "...",                         # request body as text (UTF-8, invalid bytes replaced)
     "trailers": {"x-t": "1"}}              # chunked bodies' trailers, as headers

When the body is not valid UTF-8, "body_base64" carries the exact bytes as well.

Usage: echo_upstream.py [PORT]   (default: $ECHO_PORT or 8081; host $ECHO_HOST or 127.0.0.1)
"""
import base64
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's connection pool expects
    server_version = "kcpep-echo/1"

    def __getattr__(self, name):
        # BaseHTTPRequestHandler dispatches to do_<METHOD>; echo every method.
        if name.startswith("do_"):
            return self._echo
        raise AttributeError(name)

    def _read_body(self):
        self.trailers = {}
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                line = self.rfile.readline()
                if not line:
                    break
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    # trailers until the empty line
                    while True:
                        trailer = self.rfile.readline()
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                        name, _, value = trailer.decode("latin-1").partition(":")
                        self.trailers[name.strip().lower()] = value.strip()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after the chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _echo(self):
        raw = self._read_body()
        headers = {}
        for name, value in self.headers.items():
            key = name.lower()
            if key in headers:
                if isinstance(headers[key], list):
                    headers[key].append(value)
                else:
                    headers[key] = [headers[key], value]
            else:
                headers[key] = value
        doc = {
            "method": self.command,
            "path": self.path,
            "headers": headers,
            "body": raw.decode("utf-8", errors="replace"),
            "trailers": self.trailers,
        }
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            doc["body_base64"] = base64.b64encode(raw).decode("ascii")
        out = json.dumps(doc, indent=None, sort_keys=False).encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    def log_message(self, fmt, *args):
        sys.stderr.write("echo %s %s\n" % (self.address_string(), fmt % args))


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("ECHO_PORT", "8081"))
    host = os.environ.get("ECHO_HOST", "127.0.0.1")
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer((host, port), EchoHandler)
    sys.stderr.write("echo upstream listening on http://%s:%d\n" % (host, port))
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
