#!/usr/bin/env python3
"""gRPC upstream for the keycloak-pep test stack (grpcio, from the stack's venv).

Serves every method of the services bank.v1.Accounts, bank.v1.Transfers and bank.v1.Ops as a
unary call. Messages are opaque bytes to gRPC, so no protobuf schema is needed: each call is
answered with JSON describing what arrived, so tests can see what the filter forwarded:

    {"method": "/bank.v1.Accounts/GetAccount",
     "metadata": {"authorization": ["Bearer ..."], "x-kcpep-permissions": ["[...]"], ...},
     "request": "<the request message as text>"}

Any other service is UNIMPLEMENTED (grpcio's answer for an unknown method).
Readiness: GET http://127.0.0.1:<PORT+1>/healthz answers 200 once the gRPC server is serving.

Usage: grpc_upstream.py [PORT]   (default 8084; host 127.0.0.1)
"""
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc

SERVICES = ("/bank.v1.Accounts/", "/bank.v1.Transfers/", "/bank.v1.Ops/")


def echo(method):
    def handle(request, context):
        metadata = {}
        for key, value in context.invocation_metadata():
            text = value if isinstance(value, str) else "<binary>"
            metadata.setdefault(key, []).append(text)
        answer = {
            "method": method,
            "metadata": metadata,
            "request": request.decode("utf-8", "replace"),
        }
        return json.dumps(answer).encode()

    return handle


class Echo(grpc.GenericRpcHandler):
    def service(self, details):
        if details.method.startswith(SERVICES):
            # no (de)serializers: the messages stay bytes
            return grpc.unary_unary_rpc_method_handler(echo(details.method))
        return None


class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        status = 200 if self.path == "/healthz" else 404
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, fmt, *args):
        pass


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8084
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[Echo()])
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        sys.exit(f"grpc_upstream: cannot listen on 127.0.0.1:{port}")
    server.start()
    health = ThreadingHTTPServer(("127.0.0.1", port + 1), Health)
    threading.Thread(target=health.serve_forever, daemon=True).start()
    print(f"grpc_upstream: serving on 127.0.0.1:{port}, health on :{port + 1}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
