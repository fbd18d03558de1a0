#!/usr/bin/env python3
"""A small OTLP/HTTP trace receiver for the tests.

    otlp_sink.py [--port N]     (0: the kernel picks; printed first)

Listens on 127.0.0.1, prints `listening HOST:PORT`, then accepts
`POST /v1/traces` bodies of `application/x-protobuf` (an
ExportTraceServiceRequest, decoded with the `opentelemetry-proto` package
from PyPI) and prints one JSON line per span received:

    {"service": ..., "trace_id": hex, "span_id": hex, "parent_span_id": hex,
     "name": ..., "kind": int, "status": int, "attributes": {key: value}}

A body it cannot decode is answered 400 and printed as {"error": ...}.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


def value(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        if self.path != "/v1/traces":
            self.send_error(404)
            return
        req = ExportTraceServiceRequest()
        try:
            req.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - any decode failure is the client's
            print(json.dumps({"error": str(e)}), flush=True)
            self.send_error(400)
            return
        for rs in req.resource_spans:
            service = next(
                (value(a.value) for a in rs.resource.attributes if a.key == "service.name"),
                None,
            )
            for ss in rs.scope_spans:
                for s in ss.spans:
                    line = {
                        "service": service,
                        "scope": ss.scope.name,
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "kind": s.kind,
                        "status": s.status.code,
                        "start": s.start_time_unix_nano,
                        "end": s.end_time_unix_nano,
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                    }
                    print(json.dumps(line), flush=True)
        out = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    host, port = server.server_address
    print(f"listening {host}:{port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
