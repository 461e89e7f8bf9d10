#!/usr/bin/env bash
# Interop test: the real therappai-broker against an independent, therappai-compatible server
# built from PyPI (Django + djangorestframework + djangorestframework-simplejwt, served by uvicorn
# over HTTPS on 127.0.0.1 with a throwaway CA). See README.md beside this file.
#
# Environment (all optional):
#   BROKER_BIN / BROKERCTL_BIN  the binaries (default: target/debug/ of this workspace)
#   INTEROP_VENV                reuse (or create once) a venv here instead of a fresh one per run
#   INTEROP_KEEP=1              keep the temp dir (logs, config; never tokens) for inspection
#   INTEROP_SERVER_ONLY=1       only build and check the Django server; skip the broker
#
# Never prints a token or a password: only lengths and SHA-256 fingerprints (first 8 hex).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
BROKER_BIN="${BROKER_BIN:-$ROOT/target/debug/therappai-broker}"
BROKERCTL_BIN="${BROKERCTL_BIN:-$ROOT/target/debug/therappai-brokerctl}"

EMAIL="interop@example.com"
PASSWORD="interop-password-123"
SERVICE="therappai-broker-interop"

PIP_SPECS=(
    'django>=5.1,<6'
    'djangorestframework>=3.15,<4'
    'djangorestframework-simplejwt>=5.3,<6'
    'uvicorn>=0.30,<1'
)

TMP="$(mktemp -d "${TMPDIR:-/tmp}/therappai-interop.XXXXXX")"
chmod 700 "$TMP"
SERVER_PID=""
BROKER_PID=""
FAILURES=0
STEPS=0
SUMMARY_DONE=0

log() { printf '%s\n' "$*" >&2; }
pass() { STEPS=$((STEPS + 1)); printf 'PASS  %s\n' "$*"; }
fail() { STEPS=$((STEPS + 1)); FAILURES=$((FAILURES + 1)); printf 'FAIL  %s\n' "$*"; }
die() { printf 'FAIL  %s\n' "$*"; exit 1; }

stop_pid() { # pid: SIGTERM, wait up to 10 s, then SIGKILL
    local pid="$1"
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "process $pid did not stop on SIGTERM; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    if [ "$rc" != 0 ] && [ "$STEPS" -gt 0 ] && [ "$SUMMARY_DONE" = 0 ]; then
        echo
        echo "interop: stopped early; $FAILURES of $STEPS steps FAILED so far"
    fi
    stop_pid "$BROKER_PID"
    stop_pid "$SERVER_PID"
    if [ "${INTEROP_KEEP:-0}" = 1 ]; then
        # Token scratch files and the server's token records go even when keeping the rest.
        rm -f "$TMP"/secrets/* "$TMP"/site/db.sqlite3 2>/dev/null
        log "kept $TMP (logs: broker-*.log, server.log, ctl-all.log; config: broker.toml)"
    else
        rm -rf "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# fingerprint FILE -> "len=N sha256:XXXXXXXX" of the file's content without trailing newline
fingerprint() {
    local v
    v="$(tr -d '\n' <"$1")"
    printf 'len=%d sha256:%s' "${#v}" "$(printf '%s' "$v" | sha256sum | cut -c1-8)"
}

# ---------------------------------------------------------------------------------------------
# 0. Preconditions
# ---------------------------------------------------------------------------------------------
for tool in python3 openssl curl sha256sum; do
    command -v "$tool" >/dev/null || die "prerequisite: '$tool' is not installed"
done
for bin in "$BROKER_BIN" "$BROKERCTL_BIN"; do
    [ "${INTEROP_SERVER_ONLY:-0}" = 1 ] || [ -x "$bin" ] || die "prerequisite: $bin is missing: run 'cargo build --workspace --bins' in $ROOT"
done
mkdir -m 700 "$TMP/secrets" "$TMP/run"

# ---------------------------------------------------------------------------------------------
# 1. Python venv with the real server stack from PyPI
# ---------------------------------------------------------------------------------------------
VENV="${INTEROP_VENV:-$TMP/venv}"
if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv in $VENV and installing ${PIP_SPECS[*]} (needs PyPI)"
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${PIP_SPECS[@]}" >"$TMP/pip.log" 2>&1 ||
    { tail -20 "$TMP/pip.log" >&2; die "pip install of the server stack failed (is PyPI reachable?)"; }
PY="$VENV/bin/python"
pass "server stack installed: $("$PY" - <<'EOF'
from importlib.metadata import version as v
print(", ".join(f"{p} {v(p)}" for p in ("Django", "djangorestframework", "djangorestframework-simplejwt", "uvicorn")))
EOF
)"

# ---------------------------------------------------------------------------------------------
# 2. A minimal Django project: custom user (USERNAME_FIELD = email), SimpleJWT with rotation and
#    blacklisting, the therappai URL layout under /api/v1/.
# ---------------------------------------------------------------------------------------------
SITE="$TMP/site"
mkdir -p "$SITE/interop" "$SITE/accounts"
SECRET_KEY="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(48))')"

cat >"$SITE/manage.py" <<'EOF'
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interop.settings")
from django.core.management import execute_from_command_line
execute_from_command_line(sys.argv)
EOF
: >"$SITE/interop/__init__.py"
: >"$SITE/accounts/__init__.py"

cat >"$SITE/interop/settings.py" <<EOF
from datetime import timedelta
from pathlib import Path
BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "$SECRET_KEY"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
    "rest_framework_simplejwt.token_blacklist",
    "accounts",
]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "interop.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
AUTH_USER_MODEL = "accounts.User"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework_simplejwt.authentication.JWTAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
}
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=5),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=1),
    "ROTATE_REFRESH_TOKENS": True,
    "BLACKLIST_AFTER_ROTATION": True,
    "ALGORITHM": "HS256",
}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": ["console"], "level": "ERROR"}},
}
EOF

cat >"$SITE/accounts/models.py" <<'EOF'
from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """therappai logs users in by e-mail."""
    email = models.EmailField(unique=True)
    USERNAME_FIELD = "email"
    REQUIRED_FIELDS = ["username"]
EOF

cat >"$SITE/accounts/views.py" <<'EOF'
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView


class Me(APIView):
    permission_classes = [IsAuthenticated]

    def get(self, request):
        return Response({"email": request.user.email})
EOF

cat >"$SITE/interop/urls.py" <<'EOF'
from django.urls import path
from rest_framework_simplejwt.views import (
    TokenBlacklistView,
    TokenObtainPairView,
    TokenRefreshView,
)
from accounts.views import Me

urlpatterns = [
    path("api/v1/login/", TokenObtainPairView.as_view()),
    path("api/v1/refresh/", TokenRefreshView.as_view()),
    path("api/v1/token/blacklist/", TokenBlacklistView.as_view()),
    path("api/v1/me/", Me.as_view()),
]
EOF

cat >"$SITE/tokstate.py" <<'EOF'
"""Server-side view of the refresh tokens: counts, or a 0600 dump for the leak scan."""
import os, sys
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interop.settings")
import django
django.setup()
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
if sys.argv[1] == "blacklist-live":  # what an admin's "log this user out everywhere" does
    for t in OutstandingToken.objects.filter(blacklistedtoken__isnull=True):
        BlacklistedToken.objects.create(token=t)
elif sys.argv[1] == "livefp":  # fingerprints of the refresh tokens not blacklisted
    import hashlib
    for t in OutstandingToken.objects.filter(blacklistedtoken__isnull=True):
        print(hashlib.sha256(t.token.encode()).hexdigest()[:8])
elif sys.argv[1] == "counts":
    total = OutstandingToken.objects.count()
    dead = BlacklistedToken.objects.count()
    print(f"outstanding={total} blacklisted={dead} live={total - dead}")
else:
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, "".join(t.token + "\n" for t in OutstandingToken.objects.all()).encode())
    os.close(fd)
EOF

cat >"$SITE/interop/asgi.py" <<'EOF'
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "interop.settings")
from django.core.asgi import get_asgi_application
application = get_asgi_application()
EOF

(
    cd "$SITE"
    "$PY" manage.py makemigrations accounts
    "$PY" manage.py migrate
    INTEROP_EMAIL="$EMAIL" INTEROP_PASSWORD="$PASSWORD" "$PY" manage.py shell -c '
import os
from django.contrib.auth import get_user_model
get_user_model().objects.create_user(
    username="interop", email=os.environ["INTEROP_EMAIL"], password=os.environ["INTEROP_PASSWORD"])
'
) >"$TMP/django-setup.log" 2>&1 || { tail -30 "$TMP/django-setup.log" >&2; die "Django project setup failed"; }
pass "Django project migrated; user $EMAIL created"

# ---------------------------------------------------------------------------------------------
# 3. A throwaway CA and a server certificate for IP 127.0.0.1
# ---------------------------------------------------------------------------------------------
(
    cd "$TMP"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -keyout ca.key -out ca.pem \
        -subj "/CN=therappai interop test CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=127.0.0.1"
    printf '%s\n' \
        "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth" \
        "subjectAltName=IP:127.0.0.1" >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -extfile server.ext -out server.pem
) >"$TMP/openssl.log" 2>&1 || { cat "$TMP/openssl.log" >&2; die "certificate generation failed"; }
pass "self-signed CA and server certificate (SAN IP:127.0.0.1) generated"

# ---------------------------------------------------------------------------------------------
# 4. Serve it over HTTPS on 127.0.0.1 with uvicorn
# ---------------------------------------------------------------------------------------------
PORT="$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
BASE="https://127.0.0.1:$PORT/api/v1"
(
    cd "$SITE"
    PYTHONUNBUFFERED=1 exec "$VENV/bin/uvicorn" interop.asgi:application --host 127.0.0.1 --port "$PORT" \
        --ssl-keyfile "$TMP/server.key" --ssl-certfile "$TMP/server.pem" --log-level info
) >"$TMP/server.log" 2>&1 &
SERVER_PID=$!
up=0
for _ in $(seq 1 150); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    if curl -s -o /dev/null --cacert "$TMP/ca.pem" "$BASE/me/"; then up=1; break; fi
    sleep 0.2
done
[ "$up" = 1 ] || { tail -30 "$TMP/server.log" >&2; die "uvicorn did not come up on $BASE"; }
pass "uvicorn serves $BASE over HTTPS (verified against the test CA)"

# api METHOD PATH BODY_FILE_OR_EMPTY [BEARER_FILE] -> writes body to $TMP/secrets/resp, echoes status
api() {
    local method="$1" path="$2" body="${3:-}" bearer="${4:-}"
    local args=(-s -o "$TMP/secrets/resp" -w '%{http_code}' --cacert "$TMP/ca.pem" -X "$method")
    [ -n "$body" ] && args+=(-H 'Content-Type: application/json' --data-binary "@$body")
    # The bearer header goes through a file (curl -H @file), never through argv.
    if [ -n "$bearer" ]; then
        printf 'Authorization: Bearer %s\n' "$(tr -d '\n' <"$bearer")" >"$TMP/secrets/hdr"
        args+=(-H "@$TMP/secrets/hdr")
    fi
    curl "${args[@]}" "$BASE$path" || true
}
# json_shape: prints the sorted keys of the response, and "detail"/"code" values (never tokens)
json_shape() {
    "$PY" - "$TMP/secrets/resp" <<'EOF'
import json, sys
try:
    d = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"<not JSON: {e}>"); sys.exit()
if not isinstance(d, dict):
    print(f"<{type(d).__name__}>"); sys.exit()
out = ["keys=" + ",".join(sorted(d))]
for k in ("detail", "code"):
    if k in d:
        out.append(f"{k}={d[k]!r}")
print(" ".join(out))
EOF
}
# json_field NAME OUTFILE: extracts a string field of the last response into a 0600 file
json_field() {
    "$PY" - "$TMP/secrets/resp" "$1" "$2" <<'EOF'
import json, os, sys
d = json.load(open(sys.argv[1]))
fd = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, d[sys.argv[2]].encode())
os.close(fd)
EOF
}
jsonfile() { # NAME then key=value pairs via python, written 0600 (bodies may hold secrets)
    local out="$TMP/secrets/$1"; shift
    "$PY" - "$out" "$@" <<'EOF'
import json, os, sys
out, pairs = sys.argv[1], sys.argv[2:]
d = {}
for p in pairs:
    k, _, v = p.partition("=")
    if v.startswith("@"):
        v = open(v[1:]).read().strip()
    d[k] = v
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
os.write(fd, json.dumps(d).encode())
os.close(fd)
EOF
    echo "$out"
}
check() { # NAME EXPECTED_STATUS GOT_STATUS SHAPE EXPECTED_SHAPE_SUBSTRING
    if [ "$3" = "$2" ] && [[ "$4" == *"$5"* ]]; then pass "$1: HTTP $3 $4"; else fail "$1: HTTP $3 $4 (expected HTTP $2 with $5)"; fi
}

# ---------------------------------------------------------------------------------------------
# 5. The server on its own: does it answer the way the design doc expects of therappai?
# ---------------------------------------------------------------------------------------------
printf '%s' "$PASSWORD" >"$TMP/secrets/pw"
S="$(api POST /login/ "$(jsonfile b_login email="$EMAIL" password=@"$TMP/secrets/pw")")"
check "server: login" 200 "$S" "$(json_shape)" "keys=access,refresh"
if [ "$S" = 200 ]; then
    json_field access "$TMP/secrets/s_access"; json_field refresh "$TMP/secrets/s_refresh"
    S="$(api GET /me/ "" "$TMP/secrets/s_access")"
    check "server: GET /me/ with the access token" 200 "$S" "$(json_shape)" "keys=email"
    S="$(api POST /refresh/ "$(jsonfile b_ref refresh=@"$TMP/secrets/s_refresh")")"
    check "server: refresh (rotation on)" 200 "$S" "$(json_shape)" "keys=access,refresh"
    [ "$S" = 200 ] && json_field refresh "$TMP/secrets/s_refresh2"
    S="$(api POST /refresh/ "$TMP/secrets/b_ref")"
    check "server: reuse of the rotated-out refresh token" 401 "$S" "$(json_shape)" "code='token_not_valid'"
    if [ -f "$TMP/secrets/s_refresh2" ]; then
        S="$(api POST /token/blacklist/ "$(jsonfile b_bl refresh=@"$TMP/secrets/s_refresh2")")"
        check "server: blacklist the current refresh token" 200 "$S" "$(json_shape)" "keys="
        S="$(api POST /refresh/ "$TMP/secrets/b_bl")"
        check "server: refresh with a blacklisted token" 401 "$S" "$(json_shape)" "code='token_not_valid'"
    fi
fi
S="$(api POST /refresh/ "$(jsonfile b_garbage refresh=not-a-jwt)")"
check "server: refresh with garbage" 401 "$S" "$(json_shape)" "code='token_not_valid'"
printf 'wrong-%s' "$PASSWORD" >"$TMP/secrets/badpw"
S="$(api POST /login/ "$(jsonfile b_bad email="$EMAIL" password=@"$TMP/secrets/badpw")")"
check "server: login with a wrong password" 401 "$S" "$(json_shape)" "detail='No active account found with the given credentials'"
S="$(api POST /login/ "$(jsonfile b_missing email="$EMAIL")")"
check "server: login without a password" 400 "$S" "$(json_shape)" "keys=password"
S="$(api GET /me/)"
check "server: GET /me/ without a token" 401 "$S" "$(json_shape)" "keys=detail"

if [ "${INTEROP_SERVER_ONLY:-0}" = 1 ]; then
    echo
    SUMMARY_DONE=1
    [ "$FAILURES" = 0 ] || { echo "interop (server only): $FAILURES of $STEPS steps FAILED"; exit 1; }
    echo "interop (server only): all $STEPS steps passed"
    exit 0
fi

# ---------------------------------------------------------------------------------------------
# 6. The real broker against it
# ---------------------------------------------------------------------------------------------
SOCK="$TMP/run/broker.sock"
CONF="$TMP/broker.toml"
cat >"$CONF" <<EOF
socket = "$SOCK"

[store]
backend = "keyutils"
service = "$SERVICE"

[upstream]
base_url = "$BASE"
ca_file = "$TMP/ca.pem"
revoke_path = "/token/blacklist/"

[[account]]
name = "default"
email = "$EMAIL"
EOF

BROKER_RUN=0
start_broker() {
    BROKER_RUN=$((BROKER_RUN + 1))
    BROKER_LOG="$TMP/broker-$BROKER_RUN.log"
    "$BROKER_BIN" --config "$CONF" --log-level debug >"$BROKER_LOG" 2>&1 &
    BROKER_PID=$!
    local rc
    for _ in $(seq 1 100); do
        if ! kill -0 "$BROKER_PID" 2>/dev/null; then
            wait "$BROKER_PID" && rc=0 || rc=$?
            BROKER_PID=""
            fail "broker start #$BROKER_RUN: exited with $rc before binding its socket; log:"
            sed 's/^/        /' "$BROKER_LOG" | tail -30
            return 1
        fi
        [ -S "$SOCK" ] && { pass "broker start #$BROKER_RUN: listening on its socket (pid $BROKER_PID)"; return 0; }
        sleep 0.1
    done
    fail "broker start #$BROKER_RUN: no socket after 10 s; log:"
    sed 's/^/        /' "$BROKER_LOG" | tail -30
    return 1
}
stop_broker() {
    local pid="$BROKER_PID" rc
    BROKER_PID=""
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        fail "broker stop #$BROKER_RUN: did not exit within 10 s of SIGTERM (killed)"
        return 1
    fi
    wait "$pid" && rc=0 || rc=$?
    if [ "$rc" = 0 ] && [ ! -e "$SOCK" ]; then
        pass "broker stop #$BROKER_RUN: SIGTERM -> exit 0, socket removed"
    else
        fail "broker stop #$BROKER_RUN: exit $rc, socket $([ -e "$SOCK" ] && echo left behind || echo removed)"
    fi
}
ctl() { "$BROKERCTL_BIN" --socket "$SOCK" "$@"; }
# Everything brokerctl said (never the token on stdout) goes into ctl-all.log for the leak scan.
note_ctl() { cat "$TMP/ctl.out" "$TMP/ctl.err" >>"$TMP/ctl-all.log" 2>/dev/null || true; }
: >"$TMP/ctl.out"; : >"$TMP/ctl.err"
# abort_broker_steps MESSAGE: show the log tail and stop (later steps depend on this one)
abort() {
    fail "$1"
    log "--- broker log ($BROKER_LOG), last 40 lines ---"
    tail -40 "$BROKER_LOG" >&2 || true
    exit 1
}
# get_token STEP_NAME OUTFILE: brokerctl token; checks exit 0 and a JWT shape; sets LAST_FP
get_token() {
    local rc
    ctl token --account default >"$2" 2>"$TMP/ctl.err" && rc=0 || rc=$?
    note_ctl
    if [ "$rc" != 0 ]; then
        fail "$1: brokerctl token exit $rc: $(head -c 400 "$TMP/ctl.err")"
        return 1
    fi
    if ! tr -d '\n' <"$2" | grep -Eq '^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$'; then
        fail "$1: brokerctl token printed something that is not a JWT ($(fingerprint "$2"))"
        return 1
    fi
    LAST_FP="$(fingerprint "$2")"
}
me_with() { # STEP FILE: GET /me/ with the token in FILE must be 200 with our e-mail
    local s
    s="$(api GET /me/ "" "$2")"
    if [ "$s" = 200 ] && grep -q "\"$EMAIL\"" "$TMP/secrets/resp"; then
        pass "$1: GET /me/ with the broker's access token -> 200 $EMAIL"
    else
        fail "$1: GET /me/ with the broker's access token -> HTTP $s $(json_shape)"
    fi
}
# The server's own records of refresh tokens (SimpleJWT's OutstandingToken/BlacklistedToken):
# sets OUT, BL, LIVE. Rotation is proven twice: by the server's counts (each broker refresh
# blacklists one token and issues one) and by behaviour (after a restart, a refresh works only
# with the newest stored token, because the server blacklists each one as soon as it rotates it).
server_tokens() {
    local line
    line="$(cd "$SITE" && "$PY" tokstate.py counts)"
    OUT="$(sed -E 's/.*outstanding=([0-9]+).*/\1/' <<<"$line")"
    BL="$(sed -E 's/.*blacklisted=([0-9]+).*/\1/' <<<"$line")"
    LIVE="$(sed -E 's/.*live=([0-9]+).*/\1/' <<<"$line")"
}
# expect_rotation STEP: since the last server_tokens call, exactly one refresh token was issued and
# one blacklisted, and exactly one is live
expect_rotation() {
    local out0="$OUT" bl0="$BL"
    server_tokens
    if [ "$OUT" = $((out0 + 1)) ] && [ "$BL" = $((bl0 + 1)) ] && [ "$LIVE" = 1 ]; then
        pass "$1: server rotated the refresh token once (issued +1, blacklisted +1, live 1)"
    else
        fail "$1: server token records issued +$((OUT - out0)), blacklisted +$((BL - bl0)), live $LIVE (expected +1, +1, 1)"
    fi
}
server_tokens
# check_restored STEP: the refresh token the broker says it restored from the store at start-up
# (its log's refresh_sha256 fingerprint) is the one the server holds as live. Soft when the log
# line is absent (log wording is not an interface), hard when the fingerprints differ.
check_restored() {
    local got want
    got="$(sed 's/\x1b\[[0-9;]*m//g' "$BROKER_LOG" | grep -i 'restored' | grep -Eo 'refresh_sha256=[0-9a-f]{8}' | head -1 | cut -d= -f2 || true)"
    want="$(cd "$SITE" && "$PY" tokstate.py livefp | tr '\n' ' ' | sed 's/ $//')"
    if [ -z "$got" ]; then
        log "note: $1: broker log has no 'restored ... refresh_sha256=' line to compare"
    elif [ "$got" = "$want" ]; then
        pass "$1: broker restored refresh token sha256:$got from the store = the server's only live one"
    else
        fail "$1: broker restored refresh token sha256:$got from the store; server's live one(s): ${want:-none}"
    fi
}

start_broker || exit 1

# login with a wrong password: exit 7, nothing issued
out0="$OUT"
printf 'wrong-%s\n' "$PASSWORD" | ctl login --account default --password-stdin >"$TMP/ctl.out" 2>"$TMP/ctl.err" && rc=0 || rc=$?
note_ctl
server_tokens
if [ "$rc" = 7 ] && [ "$OUT" = "$out0" ]; then
    pass "brokerctl login with a wrong password: exit 7 ($(head -1 "$TMP/ctl.err" | cut -c1-160))"
else
    fail "brokerctl login with a wrong password: exit $rc (expected 7): $(head -c 300 "$TMP/ctl.err")"
fi

# login
if printf '%s\n' "$PASSWORD" | ctl login --account default --password-stdin >"$TMP/ctl.out" 2>"$TMP/ctl.err"; then
    note_ctl
    pass "brokerctl login: $(head -1 "$TMP/ctl.out")"
    out0="$OUT"; server_tokens
    if [ "$OUT" = $((out0 + 1)) ] && [ "$LIVE" = 1 ]; then
        pass "brokerctl login: server issued one refresh token (live 1)"
    else
        fail "brokerctl login: server issued $((OUT - out0)) refresh tokens, live $LIVE (expected 1, 1)"
    fi
else
    rc=$?
    note_ctl
    abort "brokerctl login: exit $rc: $(head -c 400 "$TMP/ctl.err")"
fi

# token + /me/
get_token "token after login" "$TMP/secrets/t1" || abort "token after login"
pass "token after login: $LAST_FP"
me_with "token after login" "$TMP/secrets/t1"
get_token "token again (cached)" "$TMP/secrets/t1b" || abort "token again (cached)"
if cmp -s "$TMP/secrets/t1" "$TMP/secrets/t1b"; then
    pass "token again: same access token served from the cache ($LAST_FP)"
else
    fail "token again: a different access token although the first one is still valid"
fi

# restart -> token forces a refresh with the stored refresh token (rotated by the server)
stop_broker
start_broker || exit 1
check_restored "start #2"
get_token "token after restart #1" "$TMP/secrets/t2" || abort "token after restart #1 (refresh with the stored refresh token)"
if cmp -s "$TMP/secrets/t1" "$TMP/secrets/t2"; then
    fail "token after restart #1: same access token as before the restart (no refresh happened?)"
else
    pass "token after restart #1: new access token via refresh ($LAST_FP)"
fi
me_with "token after restart #1" "$TMP/secrets/t2"
expect_rotation "token after restart #1"

# restart again -> refresh must use the ROTATED refresh token (the old one is blacklisted)
stop_broker
start_broker || exit 1
check_restored "start #3 (rotated token stored)"
get_token "token after restart #2" "$TMP/secrets/t3" ||
    abort "token after restart #2 (needs the rotated refresh token to have been stored)"
pass "token after restart #2: new access token via the rotated refresh token ($LAST_FP)"
me_with "token after restart #2" "$TMP/secrets/t3"
expect_rotation "token after restart #2"

# status
if ctl status >"$TMP/ctl.out" 2>"$TMP/ctl.err"; then
    note_ctl
    if grep -Eq '^default +active ' "$TMP/ctl.out" && grep -q 'stored' "$TMP/ctl.out"; then
        pass "brokerctl status: default is active, refresh token stored"
    else
        fail "brokerctl status: default is not 'active' with a stored refresh token"
    fi
    sed 's/^/        /' "$TMP/ctl.out"
else
    rc=$?
    fail "brokerctl status: exit $rc: $(head -c 400 "$TMP/ctl.err")"
fi

# logout -> revoked upstream
if ctl logout --account default >"$TMP/ctl.out" 2>"$TMP/ctl.err"; then
    note_ctl
    if grep -q 'therappai: revoked' "$TMP/ctl.out"; then
        pass "brokerctl logout: upstream revoked"
    else
        fail "brokerctl logout: did not report 'therappai: revoked'"
    fi
    server_tokens
    if [ "$LIVE" = 0 ]; then
        pass "brokerctl logout: the server has no live refresh token left (the current one was blacklisted)"
    else
        fail "brokerctl logout: the server still has $LIVE live refresh token(s)"
    fi
    sed 's/^/        /' "$TMP/ctl.out"
else
    rc=$?
    fail "brokerctl logout: exit $rc: $(head -c 400 "$TMP/ctl.err")"
fi

# token after logout -> exit 3
ctl token --account default >"$TMP/secrets/t4" 2>"$TMP/ctl.err" && rc=0 || rc=$?
note_ctl
if [ "$rc" = 3 ] && [ ! -s "$TMP/secrets/t4" ]; then
    pass "token after logout: exit 3 ($(head -1 "$TMP/ctl.err" | cut -c1-160))"
else
    fail "token after logout: exit $rc (expected 3), stdout $(fingerprint "$TMP/secrets/t4")"
fi

# after a restart the account must still be logged out (the store entry is really gone)
stop_broker
start_broker || exit 1
ctl token --account default >"$TMP/secrets/t5" 2>"$TMP/ctl.err" && rc=0 || rc=$?
note_ctl
if [ "$rc" = 3 ]; then
    pass "token after logout + restart: exit 3 (nothing left in the store)"
else
    fail "token after logout + restart: exit $rc (expected 3)"
fi

# The server kills the session behind the broker's back (all of the user's refresh tokens
# blacklisted). The broker's refresh gets 401 token_not_valid: it must stop after ONE refresh
# call (no silent refresh loop), answer "not logged in" (exit 3) and show needs-login.
if printf '%s\n' "$PASSWORD" | ctl login --account default --password-stdin >"$TMP/ctl.out" 2>"$TMP/ctl.err"; then
    note_ctl
    pass "brokerctl login again (for the server-side revocation scenario)"
    stop_broker
    (cd "$SITE" && "$PY" tokstate.py blacklist-live)
    start_broker || exit 1
    n0="$(grep -c 'POST /api/v1/refresh/' "$TMP/server.log" || true)"
    ctl token --account default >"$TMP/secrets/t6" 2>"$TMP/ctl.err" && rc=0 || rc=$?
    note_ctl
    ctl token --account default >"$TMP/secrets/t7" 2>"$TMP/ctl.err" && rc2=0 || rc2=$?
    note_ctl
    sleep 1
    n1="$(grep -c 'POST /api/v1/refresh/' "$TMP/server.log" || true)"
    if [ "$rc" = 3 ] && [ "$rc2" = 3 ] && [ $((n1 - n0)) = 1 ]; then
        pass "refresh token revoked by the server: token exits 3 twice, exactly 1 refresh call upstream"
    else
        fail "refresh token revoked by the server: token exit $rc then $rc2 (expected 3, 3), $((n1 - n0)) refresh calls upstream (expected 1)"
    fi
    if ctl status >"$TMP/ctl.out" 2>"$TMP/ctl.err" && grep -Eq '^default +needs-login .* none +' "$TMP/ctl.out"; then
        pass "brokerctl status after the server-side revocation: default is needs-login, dead refresh token deleted from the store"
    else
        fail "brokerctl status after the server-side revocation: default is not needs-login with no refresh token stored"
        sed 's/^/        /' "$TMP/ctl.out"
    fi
    note_ctl
else
    rc=$?
    note_ctl
    fail "brokerctl login again: exit $rc: $(head -c 300 "$TMP/ctl.err")"
fi
stop_broker

# No token or password in any broker log or brokerctl message: every refresh token the server
# ever issued (from its own records), the access tokens the broker handed out, the password.
(cd "$SITE" && "$PY" tokstate.py dump "$TMP/secrets/all_refresh")
cat "$TMP"/secrets/t1 "$TMP"/secrets/t2 "$TMP"/secrets/t3 "$TMP"/secrets/all_refresh >"$TMP/secrets/needles"
printf '%s\n' "$PASSWORD" >>"$TMP/secrets/needles"
n="$(grep -c . "$TMP/secrets/needles")"
if grep -qF -f "$TMP/secrets/needles" "$TMP"/broker-*.log "$TMP/ctl-all.log"; then
    fail "broker logs or brokerctl messages contain one of $n secrets"
else
    pass "no secret (of $n: access tokens, every refresh token the server issued, the password) in broker logs or brokerctl messages"
fi

echo
SUMMARY_DONE=1
if [ "$FAILURES" = 0 ]; then
    echo "interop: all $STEPS steps passed"
else
    echo "interop: $FAILURES of $STEPS steps FAILED"
    exit 1
fi
