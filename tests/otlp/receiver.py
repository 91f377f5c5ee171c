"""An OTLP/gRPC trace receiver for the tests: the TraceService of the official OpenTelemetry protocol
definitions (PyPI opentelemetry-proto, served with grpcio). It listens on a free loopback port, prints
`listening PORT` once ready, and appends every span it receives to the file given as its argument, one JSON
object per line: ids in hex, name, kind, attributes, the service that sent it, and the whole span in
protobuf text form (`raw`), so that a test can look for text that must not be there. With `-` for OUT it
only counts the spans (for benchmarks: a collector that keeps up) and prints the count when stopped.

Usage: receiver.py OUT.jsonl|-
"""

import json
import signal
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf import text_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def value_of(v):
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind in ("string_value", "bool_value", "int_value", "double_value") else str(v)


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.count = 0

    def Export(self, request, context):
        if self.path == "-":
            with self.lock:
                self.count += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            return trace_service_pb2.ExportTraceServiceResponse()
        lines = []
        for rs in request.resource_spans:
            resource = {a.key: value_of(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for span in ss.spans:
                    lines.append(json.dumps({
                        "service": resource.get("service.name"),
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": span.kind,
                        "start": span.start_time_unix_nano,
                        "end": span.end_time_unix_nano,
                        "attributes": {a.key: value_of(a.value) for a in span.attributes},
                        "raw": text_format.MessageToString(span) + text_format.MessageToString(rs.resource),
                    }))
        with self.lock, open(self.path, "a") as out:
            for line in lines:
                out.write(line + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    receiver = Receiver(sys.argv[1])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(f"listening {port}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()
    if receiver.path == "-":
        print(f"received {receiver.count} spans", flush=True)


if __name__ == "__main__":
    main()
