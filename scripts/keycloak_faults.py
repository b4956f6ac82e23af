#!/usr/bin/env python3
"""A Keycloak that misbehaves on request, for the keycloak-pep test stack (Python 3 standard
library only).

It forwards every request to the real Keycloak ($KCPEP_KEYCLOAK_UPSTREAM, default
http://127.0.0.1:8180) and relays the answer unchanged, except for the kinds of call a test
has set a fault for:

    PUT /faults {"uma": "garbage"}     the UMA grant (token endpoint, uma-ticket grant)
    PUT /faults {"jwks": "html"}       the realm keys (.../protocol/openid-connect/certs)
    PUT /faults {"pat": "status500"}   the client credentials grant (the PAT)
    PUT /faults {"resources": "huge"}  the protection API's resource set
    PUT /faults {"authzen": "status401"}  AuthZEN's evaluations (.../authzen/access/v1/evaluations)
    DELETE /faults                     forward everything again
    GET /faults                        the faults set, the calls seen per kind, and the trace
                                       headers (W3C, B3) of the last call of each kind

Faults: garbage (200, bytes that are not JSON), truncated (200, JSON cut short), html (200, a
login page), empty (200, no body), huge (200, 32 MiB of JSON), slow (the real answer after
$KCPEP_FAULT_SLOW_SECONDS, default 5), status401 (the caller's token refused), status500,
status502, reset (the connection closed without an answer).

Usage: keycloak_faults.py [PORT]   (default: $FAULTS_PORT or 8083; host 127.0.0.1)
"""
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM = os.environ.get("KCPEP_KEYCLOAK_UPSTREAM", "http://127.0.0.1:8180").rstrip("/")
SLOW_SECONDS = float(os.environ.get("KCPEP_FAULT_SLOW_SECONDS", "5"))
KINDS = ("uma", "jwks", "pat", "resources", "authzen")
FAULTS = ("garbage", "truncated", "html", "empty", "huge", "slow", "status401", "status500", "status502",
          "reset")

STATE = {"faults": {}, "calls": {k: 0 for k in KINDS + ("other",)}, "traces": {}}
TRACE_HEADERS = ("traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid",
                 "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags")
LOCK = threading.Lock()


def kind_of(method, path, body):
    if path.endswith("/protocol/openid-connect/certs"):
        return "jwks"
    if path.endswith("/protocol/openid-connect/token") and method == "POST":
        if b"uma-ticket" in body:
            return "uma"
        if b"client_credentials" in body:
            return "pat"
    if "/authz/protection/resource_set" in path:
        return "resources"
    if path.endswith("/authzen/access/v1/evaluations"):
        return "authzen"
    return "other"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kcpep-faults/1"

    def log_message(self, fmt, *args):  # one line per call, no request bodies (tokens)
        sys.stderr.write("faults: %s\n" % (fmt % args))

    def _reply(self, status, body, content_type="application/json", headers=()):
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _control(self, method):
        if method == "GET":
            with LOCK:
                doc = json.dumps(STATE).encode()
            return self._reply(200, doc)
        if method == "DELETE":
            with LOCK:
                STATE["faults"] = {}
            return self._reply(204, b"")
        if method == "PUT":
            try:
                asked = json.loads(self._body() or b"{}")
                bad = [f"{k}={v}" for k, v in asked.items() if k not in KINDS or v not in FAULTS]
            except (ValueError, AttributeError):
                return self._reply(400, b'{"error":"not a JSON object"}')
            if bad:
                return self._reply(400, json.dumps({"error": "unknown", "at": bad}).encode())
            with LOCK:
                STATE["faults"].update(asked)
            return self._reply(204, b"")
        return self._reply(405, b"")

    def _forward(self, method, body):
        req = urllib.request.Request(UPSTREAM + self.path, data=body or None, method=method)
        for k, v in self.headers.items():
            if k.lower() not in ("host", "content-length", "connection"):
                req.add_header(k, v)
        req.add_header("host", self.headers.get("host") or "")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                status, data, headers = r.status, r.read(), r.getheaders()
        except urllib.error.HTTPError as e:
            status, data, headers = e.code, e.read(), e.headers.items()
        ctype = next((v for k, v in headers if k.lower() == "content-type"), "application/json")
        self._reply(status, data, ctype)

    def _handle(self):
        method = self.command
        if self.path.split("?")[0] == "/faults":
            return self._control(method)
        body = self._body()
        kind = kind_of(method, self.path.split("?")[0], body)
        with LOCK:
            STATE["calls"][kind] += 1
            STATE["traces"][kind] = {h: self.headers.get(h) for h in TRACE_HEADERS if self.headers.get(h)}
            fault = STATE["faults"].get(kind)
        if fault is None:
            return self._forward(method, body)
        if fault == "garbage":
            return self._reply(200, b"\x00\xff{not json\x7f")
        if fault == "truncated":
            return self._reply(200, b'{"access_token":"eyJhbGciOi')
        if fault == "html":
            return self._reply(200, b"<html><body><form>Sign in</form></body></html>", "text/html")
        if fault == "empty":
            return self._reply(200, b"")
        if fault == "huge":
            filler = b'{"filler":"' + b"x" * (32 * 1024 * 1024) + b'"}'
            return self._reply(200, filler)
        if fault == "slow":
            time.sleep(SLOW_SECONDS)
            return self._forward(method, body)
        if fault.startswith("status"):
            return self._reply(int(fault[len("status"):]), b'{"error":"server_error"}')
        if fault == "reset":
            self.close_connection = True
            try:
                self.connection.shutdown(2)
            except OSError:
                pass
            return None
        return self._reply(500, b"unknown fault")

    def __getattr__(self, name):
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("FAULTS_PORT", "8083"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"keycloak_faults: http://127.0.0.1:{port} -> {UPSTREAM}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
