#!/usr/bin/env python3
"""One call to the gRPC echo server (grpc_echo.py), result as one JSON line.

Run: grpc_client.py --target grpc.mesh:50051 --method Unary|Stream|Fail|Flaky|Sum|Chat|Slow|Count
       [--data BYTES] [--timeout SECONDS]
For Stream, --data is the number of messages to ask for. For Sum and Chat
it is a comma-separated list of messages; Chat sends each only after the
echo of the one before has come back, so a proxy that held the request
stream back would stall it (and the call would fail on its timeout).

Prints, whatever the outcome (exit status 0 unless the arguments are bad):
  {"code": "OK", "details": str|null, "responses": [str, ...],
   "initial_metadata": {k: v}, "trailing_metadata": {k: v}, "ms": f}
`code` is the grpc.StatusCode name (e.g. "UNAVAILABLE"). A mesh-made error
answered trailers-only carries `x-mesh-error` in trailing_metadata (grpc
puts a trailers-only response's headers there).
Needs: pip install grpcio
"""

import argparse
import json
import os
import queue
import sys
import time

# getaddrinfo, like any other client in the pod, rather than grpc's own
# c-ares resolver: the pod's resolv.conf decides either way.
os.environ.setdefault("GRPC_DNS_RESOLVER", "native")

import grpc  # noqa: E402  (after the resolver choice)

SERVICE = "mesh.test.Echo"


def metadata(md):
    return {k: (v.decode("latin-1") if isinstance(v, bytes) else v) for k, v in (md or ())}


def main():
    p = argparse.ArgumentParser(description="one call to grpc_echo.py")
    p.add_argument("--target", required=True)
    p.add_argument("--method", required=True, choices=["Unary", "Stream", "Fail", "Flaky", "Sum", "Chat", "Slow", "Count"])
    p.add_argument("--data", default="hello")
    p.add_argument("--timeout", type=float, default=5.0)
    a = p.parse_args()
    out = {"code": "OK", "details": None, "responses": [],
           "initial_metadata": {}, "trailing_metadata": {}}
    path = f"/{SERVICE}/{a.method}"
    # No proxy even if the environment names one: the mesh intercepts.
    options = [("grpc.enable_http_proxy", 0)]
    t0 = time.monotonic()
    with grpc.insecure_channel(a.target, options=options) as channel:
        try:
            if a.method == "Stream":
                call = channel.unary_stream(path)(a.data.encode(), timeout=a.timeout)
                for msg in call:
                    out["responses"].append(msg.decode("utf-8", "replace"))
            elif a.method == "Sum":
                msgs = iter([m.encode() for m in a.data.split(",")])
                msg, call = channel.stream_unary(path).with_call(msgs, timeout=a.timeout)
                out["responses"].append(msg.decode("utf-8", "replace"))
            elif a.method == "Chat":
                echoed = queue.Queue()

                def lockstep():
                    for m in a.data.split(","):
                        yield m.encode()
                        # The next message waits for this one's echo.
                        echoed.get(timeout=a.timeout)

                call = channel.stream_stream(path)(lockstep(), timeout=a.timeout)
                for msg in call:
                    out["responses"].append(msg.decode("utf-8", "replace"))
                    echoed.put(msg)
            else:
                msg, call = channel.unary_unary(path).with_call(
                    a.data.encode(), timeout=a.timeout)
                out["responses"].append(msg.decode("utf-8", "replace"))
            out["initial_metadata"] = metadata(call.initial_metadata())
            out["trailing_metadata"] = metadata(call.trailing_metadata())
        except grpc.RpcError as e:
            out["code"] = e.code().name
            out["details"] = e.details()
            out["initial_metadata"] = metadata(e.initial_metadata())
            out["trailing_metadata"] = metadata(e.trailing_metadata())
    out["ms"] = (time.monotonic() - t0) * 1000.0
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
