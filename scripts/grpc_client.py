#!/usr/bin/env python3
"""A real gRPC client (grpcio) for the tests: makes the unary calls described on stdin and prints
what the client saw of each, so a Rust test can assert on it.

stdin:  a JSON list of calls, each
        {"target": "127.0.0.1:10000", "authority": "grpc.bank.local",
         "method": "/bank.v1.Accounts/GetAccount", "metadata": [["authorization", "Bearer ..."]],
         "request": "text of the message"}
stdout: a JSON list, one answer per call:
        {"code": "OK" | "PERMISSION_DENIED" | ..., "details": "<grpc-message>",
         "initial_metadata": [[k, v], ...], "trailing_metadata": [[k, v], ...],
         "response": "<the answer message as text>" | null}

Usage: grpc_client.py < calls.json
"""
import json
import sys

import grpc


def pairs(metadata):
    return [[k, v if isinstance(v, str) else "<binary>"] for k, v in (metadata or ())]


def call(c):
    options = [("grpc.default_authority", c["authority"])]
    with grpc.insecure_channel(c["target"], options=options) as channel:
        rpc = channel.unary_unary(c["method"])
        metadata = [tuple(kv) for kv in c.get("metadata", [])]
        try:
            response, outcome = rpc.with_call(
                c.get("request", "").encode(), metadata=metadata, timeout=c.get("timeout", 10)
            )
            return {
                "code": outcome.code().name,
                "details": outcome.details() or "",
                "initial_metadata": pairs(outcome.initial_metadata()),
                "trailing_metadata": pairs(outcome.trailing_metadata()),
                "response": response.decode("utf-8", "replace"),
            }
        except grpc.RpcError as e:
            return {
                "code": e.code().name,
                "details": e.details() or "",
                "initial_metadata": pairs(e.initial_metadata()),
                "trailing_metadata": pairs(e.trailing_metadata()),
                "response": None,
            }


def main():
    calls = json.load(sys.stdin)
    json.dump([call(c) for c in calls], sys.stdout)


if __name__ == "__main__":
    main()
