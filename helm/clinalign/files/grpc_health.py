"""Health probe over TLS: `python grpc_health.py PORT SERVICE` exits 0 when
grpc.health.v1.Health/Check on 127.0.0.1:PORT answers SERVING for SERVICE ("" = the process).

kubelet's built-in gRPC probe cannot speak TLS, so with tls.enabled the chart runs this with
the pod's own CA (CLINALIGN_TLS_CA_FILE) and, for mTLS, its own certificate. The certificate
names the Services, not 127.0.0.1, so the name checked is CLINALIGN_PROBE_TLS_NAME.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    port, service = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else ""
    env = os.environ
    with open(env["CLINALIGN_TLS_CA_FILE"], "rb") as fh:
        ca = fh.read()
    key = chain = None
    if env.get("CLINALIGN_TLS_CLIENT_CA_FILE"):
        with open(env["CLINALIGN_TLS_KEY_FILE"], "rb") as fh:
            key = fh.read()
        with open(env["CLINALIGN_TLS_CERT_FILE"], "rb") as fh:
            chain = fh.read()
    creds = grpc.ssl_channel_credentials(ca, key, chain)
    options = [("grpc.ssl_target_name_override", env.get("CLINALIGN_PROBE_TLS_NAME", "localhost"))]
    with grpc.secure_channel(f"127.0.0.1:{port}", creds, options=options) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=4)
        except grpc.RpcError as err:
            print(f"health check failed: {err.code().name}", file=sys.stderr)
            return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    if not serving:
        print(f"{service or 'process'} is not serving", file=sys.stderr)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
