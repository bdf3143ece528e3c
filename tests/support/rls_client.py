#!/usr/bin/env python3
"""An independent Envoy RLS v3 client for tests/grpc_rls.rs: Python grpcio (Debian python3-grpcio) with
message classes built at run time from the published protos (rls.proto and its imports, as shipped in the
envoy-types crate source) compiled by grpc_tools.protoc (Debian python3-grpc-tools) into a descriptor set,
plus the published grpc.health.v1 health.proto (written below).

Reads one JSON command per line on stdin and writes one JSON answer per line on stdout:
  {"op": "check", "addr": "127.0.0.1:N", "request": {...RateLimitRequest in proto3 JSON...}, "token": null}
  {"op": "health", "addr": "127.0.0.1:N", "service": ""}
  {"op": "parse", "type": "envoy.config.bootstrap.v3.Bootstrap", "json": {...}}: proto3 JSON parsing, unknown
  fields refused, "@type" resolved against the same protos
Answers: {"ok": {...response as proto3 JSON, proto field names, defaults included...}} or
{"error": {"code": "INVALID_ARGUMENT", "details": "..."}}.
Only loopback addresses are accepted.
"""
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

# grpc/grpc-proto: grpc/health/v1/health.proto (Apache-2.0), the messages and service only.
HEALTH_PROTO = """
syntax = "proto3";
package grpc.health.v1;
message HealthCheckRequest { string service = 1; }
message HealthCheckResponse {
  enum ServingStatus { UNKNOWN = 0; SERVING = 1; NOT_SERVING = 2; SERVICE_UNKNOWN = 3; }
  ServingStatus status = 1;
}
service Health { rpc Check(HealthCheckRequest) returns (HealthCheckResponse); }
"""


def build_pool(proto_root):
    work = tempfile.mkdtemp(prefix="rls-client-")
    health_dir = os.path.join(work, "health", "grpc", "health", "v1")
    os.makedirs(health_dir)
    with open(os.path.join(health_dir, "health.proto"), "w") as f:
        f.write(HEALTH_PROTO)
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    includes = ["data-plane-api", "xds", "protoc-gen-validate", "googleapis", "cel-spec",
                "opentelemetry-proto", "client_model"]
    out = os.path.join(work, "set.pb")
    args = ["protoc", "--include_imports", "--descriptor_set_out=" + out, "-I" + well_known,
            "-I" + os.path.join(work, "health")]
    args += ["-I" + os.path.join(proto_root, d) for d in includes]
    args += ["envoy/service/ratelimit/v3/rls.proto", "grpc/health/v1/health.proto",
             # For "parse": an Envoy bootstrap with the types the README's snippet names.
             "envoy/config/bootstrap/v3/bootstrap.proto",
             "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
             "envoy/extensions/filters/http/ratelimit/v3/rate_limit.proto",
             "envoy/extensions/filters/http/router/v3/router.proto",
             "envoy/extensions/upstreams/http/v3/http_protocol_options.proto"]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on the envoy protos under " + proto_root)
    files = descriptor_pb2.FileDescriptorSet()
    with open(out, "rb") as f:
        files.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fd in files.file:
        pool.Add(fd)
    return pool


def message_class(pool, name):
    desc = pool.FindMessageTypeByName(name)
    if hasattr(message_factory, "GetMessageClass"):
        return message_factory.GetMessageClass(desc)
    return message_factory.MessageFactory(pool).GetPrototype(desc)


def main():
    pool = build_pool(sys.argv[1])
    req_cls = message_class(pool, "envoy.service.ratelimit.v3.RateLimitRequest")
    resp_cls = message_class(pool, "envoy.service.ratelimit.v3.RateLimitResponse")
    hreq_cls = message_class(pool, "grpc.health.v1.HealthCheckRequest")
    hresp_cls = message_class(pool, "grpc.health.v1.HealthCheckResponse")
    channels = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd["op"] == "parse":
            try:
                message = json_format.ParseDict(cmd["json"], message_class(pool, cmd["type"])(),
                                                descriptor_pool=pool)
                answer = {"ok": {"bytes": len(message.SerializeToString())}}
            except json_format.ParseError as e:
                answer = {"error": {"code": "PARSE", "details": str(e)}}
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
            continue
        addr = cmd["addr"]
        if not addr.startswith("127.0.0.1:"):
            raise SystemExit("loopback only: " + addr)
        if addr not in channels:
            channels[addr] = grpc.insecure_channel(addr)
        channel = channels[addr]
        metadata = []
        if cmd.get("token"):
            metadata.append(("authorization", "Bearer " + cmd["token"]))
        try:
            if cmd["op"] == "check":
                call = channel.unary_unary(
                    "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=resp_cls.FromString)
                request = json_format.ParseDict(cmd["request"], req_cls())
                response = call(request, timeout=10, metadata=metadata)
            elif cmd["op"] == "health":
                call = channel.unary_unary(
                    "/grpc.health.v1.Health/Check",
                    request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=hresp_cls.FromString)
                response = call(hreq_cls(service=cmd.get("service", "")), timeout=10)
            else:
                raise SystemExit("unknown op " + cmd["op"])
            answer = {"ok": json_format.MessageToDict(
                response, preserving_proto_field_name=True, including_default_value_fields=True)}
        except grpc.RpcError as e:
            answer = {"error": {"code": e.code().name, "details": e.details()}}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
