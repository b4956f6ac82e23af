#!/usr/bin/env python3
"""Claim service for the keycloak-pep test stack (Python 3 standard library only).

The `http` claim provider of the demo realm's /branch/statement path asks it about a customer:

    GET /customers?user=<name>   -> 200 {"status": "active", "segment": ["retail"]}

GET /calls tells how many calls it answered and the trace headers of the last one.

Tests change its answers (nothing else does):

    PUT /state {"user": "owner", "status": "frozen"}        that customer's status
    PUT /state {"user": "owner", "http_status": 500}        answer that customer with HTTP 500
    DELETE /state                                           back to every customer active

Usage: claim_service.py [PORT]   (default: $CLAIMS_PORT or 8082; host 127.0.0.1)
"""
import json
import os
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {}
LOCK = threading.Lock()
CALLS = {"count": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kcpep-claims/1"

    def _send(self, status, doc):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/healthz":
            return self._send(200, {"ok": True})
        if url.path == "/calls":
            return self._send(200, CALLS)
        if url.path != "/customers":
            return self._send(404, {"error": "not found"})
        user = (urllib.parse.parse_qs(url.query).get("user") or [""])[0]
        with LOCK:
            CALLS["count"] += 1
            # the trace context of the last call (W3C, B3): a claims callout carries its request's
            CALLS["trace"] = {h: self.headers.get(h) for h in ("traceparent", "tracestate", "b3", "x-b3-traceid")
                              if self.headers.get(h)}
            s = dict(STATE.get(user, {}))
        status = s.get("http_status", 200)
        if status != 200:
            return self._send(status, {"error": "configured failure"})
        return self._send(200, {"user": user, "status": s.get("status", "active"), "segment": ["retail"]})

    def do_PUT(self):
        if self.path != "/state":
            return self._send(404, {"error": "not found"})
        try:
            doc = json.loads(self._body() or b"{}")
            user = doc.pop("user")
        except (ValueError, KeyError):
            return self._send(400, {"error": "expected {\"user\": ..., ...}"})
        with LOCK:
            STATE.setdefault(user, {}).update(doc)
        return self._send(200, {"ok": True})

    def do_DELETE(self):
        self._body()
        with LOCK:
            STATE.clear()
        return self._send(200, {"ok": True})

    def log_message(self, fmt, *args):
        sys.stdout.write("%s %s\n" % (self.address_string(), fmt % args))


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("CLAIMS_PORT", "8082"))
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"claim service on 127.0.0.1:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
