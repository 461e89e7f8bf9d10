"""A therappai app that gets its tokens from therappai-broker: copy it and change `call_api`.

1. Ask the broker for an access token (GetAccessToken).
2. Call a therappai endpoint with it (GET /me/). On HTTP 401, tell the broker the token was
   refused (ReportRejected, by fingerprint): it refreshes once, however many apps report it,
   and answers with the fresh token; retry once with that.
3. Watch the session (WatchSession) and go back to the login prompt when it ends.

Settings, from the environment:
  THERAPPAI_BROKER_SOCKET  the broker's socket (default: the broker's own default path)
  THERAPPAI_ACCOUNT        the broker account to use (default: "default")
  THERAPPAI_API_URL        therappai's API base URL (default: the one the broker uses)
  THERAPPAI_CA_FILE        an extra CA certificate (PEM) to trust, e.g. the demo's fake-ca.pem
  THERAPPAI_BROKER_PROTO   the directory holding therappai/broker/v1/broker.proto
                           (default: ../../proto/proto from this file)

Never prints a token: only its fingerprint, which the broker's logs use too.
"""
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

import grpc

HERE = Path(__file__).resolve().parent
sys.path.append(os.environ.get("THERAPPAI_BROKER_PROTO", str(HERE / "../../proto/proto")))
# The .proto is the contract: loaded at run time, no generated code to keep in step.
pb, services = grpc.protos_and_services("therappai/broker/v1/broker.proto")

LOGIN_PROMPT = "login prompt: run `therappai-brokerctl login --account {}` to sign in again"


def default_socket():
    if os.geteuid() == 0:
        return "/run/therappai-broker/broker.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR", f"/run/user/{os.geteuid()}")
    return f"{runtime}/therappai-broker/broker.sock"


def api_url(broker, account):
    if "THERAPPAI_API_URL" in os.environ:
        return os.environ["THERAPPAI_API_URL"].rstrip("/")
    status = broker.Status(pb.StatusRequest(), timeout=10)
    for entry in status.accounts:
        if entry.name == account:
            return entry.base_url.rstrip("/")
    raise SystemExit(f"the broker has no account {account!r}: set THERAPPAI_ACCOUNT")


def call_api(base_url, token, tls):
    """GET /me/ with the token; returns (HTTP status, JSON body or None)."""
    request = urllib.request.Request(f"{base_url}/me/", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=tls, timeout=10) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as e:
        return e.code, None


def main():
    account = os.environ.get("THERAPPAI_ACCOUNT", "default")
    socket = os.environ.get("THERAPPAI_BROKER_SOCKET", default_socket())
    tls = ssl.create_default_context()
    if os.environ.get("THERAPPAI_CA_FILE"):
        tls.load_verify_locations(os.environ["THERAPPAI_CA_FILE"])

    with grpc.insecure_channel("unix:" + socket) as channel:
        broker = services.BrokerStub(channel)
        base_url = api_url(broker, account)

        answer = broker.GetAccessToken(pb.GetAccessTokenRequest(account=account), timeout=10)
        print("token", answer.fingerprint, flush=True)
        status, me = call_api(base_url, answer.access_token, tls)
        if status == 401:
            print("therappai answered 401: reported to the broker, retrying once", flush=True)
            answer = broker.ReportRejected(
                pb.ReportRejectedRequest(account=account, fingerprint=answer.fingerprint),
                timeout=30)
            print("token", answer.fingerprint, flush=True)
            status, me = call_api(base_url, answer.access_token, tls)
        if status == 401:
            print("therappai refused a fresh token too.", LOGIN_PROMPT.format(account), flush=True)
            return
        if status != 200:
            raise SystemExit(f"GET /me/ answered HTTP {status}")
        print("signed in as", me.get("email"), flush=True)

        # First the state now, then every change, until the session ends.
        for event in broker.WatchSession(pb.WatchSessionRequest(account=account)):
            state = pb.SessionState.Name(event.state)
            print("session", state, event.reason, flush=True)
            if event.state in (pb.SESSION_STATE_LOGGED_OUT, pb.SESSION_STATE_NEEDS_LOGIN):
                print(LOGIN_PROMPT.format(account), flush=True)
                return
    raise SystemExit("the broker ended the session stream (it stopped?): start the app again")


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        # The broker's details say what to do next (log in, ask an admin for a rule, ...).
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            print(e.details(), flush=True)
            print(LOGIN_PROMPT.format(os.environ.get("THERAPPAI_ACCOUNT", "default")), flush=True)
        else:
            raise SystemExit(f"the broker answered {e.code().name}: {e.details()}")
