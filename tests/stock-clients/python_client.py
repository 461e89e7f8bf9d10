"""A stock grpcio client of the broker, as a Python app would write it: stubs generated from
the published .proto, `grpc.insecure_channel("unix:PATH")`, no channel options.

Usage: python_client.py STUBS_DIR SOCKET ACCOUNT DENIED_ACCOUNT UNKNOWN_ACCOUNT
Prints one line per step (`token <fp>`, `denied <CODE>`, `unknown <CODE>`, `watch <state>`);
never a token. Exits non-zero on any unexpected answer.
"""
import sys

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from therappai.broker.v1 import broker_pb2, broker_pb2_grpc  # noqa: E402

_, _, socket, account, denied, unknown = sys.argv


def code_of(call):
    try:
        call()
    except grpc.RpcError as e:
        return e.code().name, e.details()
    raise SystemExit("expected an error, got an answer")


with grpc.insecure_channel("unix:" + socket) as channel:
    broker = broker_pb2_grpc.BrokerStub(channel)
    answer = broker.GetAccessToken(broker_pb2.GetAccessTokenRequest(account=account), timeout=10)
    if not answer.access_token or answer.expires_at_unix <= 0:
        raise SystemExit("an empty token")
    print("token", answer.fingerprint, flush=True)
    code, details = code_of(
        lambda: broker.GetAccessToken(broker_pb2.GetAccessTokenRequest(account=denied), timeout=10))
    print("denied", code, "|", details, flush=True)
    code, details = code_of(
        lambda: broker.GetAccessToken(broker_pb2.GetAccessTokenRequest(account=unknown), timeout=10))
    print("unknown", code, "|", details, flush=True)
    events = broker.WatchSession(broker_pb2.WatchSessionRequest(account=account), timeout=10)
    first = next(events)
    print("watch", broker_pb2.SessionEvent.DESCRIPTOR.fields_by_name["state"].enum_type
          .values_by_number[first.state].name, "snapshot" if first.snapshot else "", flush=True)
    events.cancel()
