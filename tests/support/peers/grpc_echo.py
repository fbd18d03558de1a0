#!/usr/bin/env python3
"""A gRPC echo server for the mesh's protocol tests (grpcio, no protobuf).

Methods take and return raw bytes (generic handlers, identity
serializers), so no .proto file or code generation is needed:

  /mesh.test.Echo/Unary    unary: answers the request bytes unchanged.
  /mesh.test.Echo/Stream   server-streaming: the request is a count N
                           (ASCII digits, default 3); answers N messages
                           "<name> i" for i in 0..N.
  /mesh.test.Echo/Fail     unary: aborts with INTERNAL "<name>: failing".
  /mesh.test.Echo/Sum      client-streaming: ASCII integers in, their sum out.
  /mesh.test.Echo/Chat     bidirectional: answers each message "<name>: msg"
                           as soon as it arrives.
  /mesh.test.Echo/Flaky    unary: odd-numbered calls (1st, 3rd, ...) abort
                           with UNAVAILABLE before any metadata (a
                           trailers-only answer), even ones echo.
  /mesh.test.Echo/Slow     unary: sleeps the request's milliseconds (ASCII
                           digits, at most 10000) before any metadata, then
                           echoes them.
  /mesh.test.Echo/Count    unary: JSON {"Unary": n, "Stream": n, "Fail": n, "Flaky": n},
                           the calls each method has received (Count itself
                           is not counted), so a test can tell whether calls
                           reached the server.

Every answer carries the initial metadata `x-served-by: <name>`.

Run: grpc_echo.py --port 50051 [--bind 0.0.0.0] [--name NAME]
Once serving it prints "listening PORT" on stdout (flushed).
Needs: pip install grpcio
"""

import argparse
import json
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "mesh.test.Echo"
# Bounds a Stream request, so a bad count cannot keep a thread forever.
MAX_STREAM = 10000


class Counts:
    """Calls received per method; shared by the handler threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_method = {"Unary": 0, "Stream": 0, "Fail": 0, "Flaky": 0, "Sum": 0, "Chat": 0}

    def hit(self, method):
        """Counts a call; returns how many `method` has had, this one included."""
        with self.lock:
            self.by_method[method] += 1
            return self.by_method[method]

    def snapshot(self):
        with self.lock:
            return dict(self.by_method)


def handlers(name, counts):
    def served_by(context):
        context.send_initial_metadata((("x-served-by", name),))

    def unary(request, context):
        counts.hit("Unary")
        served_by(context)
        return request

    def stream(request, context):
        counts.hit("Stream")
        served_by(context)
        text = request.decode("ascii", "replace").strip() or "3"
        if not text.isdigit() or int(text) > MAX_STREAM:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad count {text!r}")
        for i in range(int(text)):
            yield f"{name} {i}".encode()

    def fail(request, context):
        counts.hit("Fail")
        served_by(context)
        context.abort(grpc.StatusCode.INTERNAL, f"{name}: failing")

    def flaky(request, context):
        if counts.hit("Flaky") % 2 == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{name}: try again")
        served_by(context)
        return request

    def sum_(requests, context):
        counts.hit("Sum")
        total = 0
        for m in requests:
            text = m.decode("ascii", "replace").strip()
            if not text.lstrip("-").isdigit():
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a number: {text!r}")
            total += int(text)
        return str(total).encode()

    def chat(requests, context):
        counts.hit("Chat")
        served_by(context)
        for m in requests:
            yield f"{name}: ".encode() + m

    def slow(request, context):
        text = request.decode("ascii", "replace").strip()
        if not text.isdigit() or int(text) > 10000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad milliseconds {text!r}")
        # The wait comes before any metadata: a unary call that takes long
        # to answer, headers included.
        time.sleep(int(text) / 1000.0)
        served_by(context)
        return request

    def count(request, context):
        return json.dumps(counts.snapshot()).encode()

    # No (de)serializers: requests and responses stay bytes.
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Flaky": grpc.unary_unary_rpc_method_handler(flaky),
            "Sum": grpc.stream_unary_rpc_method_handler(sum_),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
            "Slow": grpc.unary_unary_rpc_method_handler(slow),
            "Count": grpc.unary_unary_rpc_method_handler(count),
        },
    )


def main():
    p = argparse.ArgumentParser(description="gRPC echo server (raw bytes)")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--name", default="grpc-echo")
    a = p.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((handlers(a.name, Counts()),))
    port = server.add_insecure_port(f"{a.bind}:{a.port}")
    if port == 0:
        print(f"cannot bind {a.bind}:{a.port}", file=sys.stderr, flush=True)
        return 1
    server.start()
    print(f"listening {port}", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
