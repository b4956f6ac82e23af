#!/usr/bin/env bash
# Shows the keycloak-pep filter deciding real requests. Assumes the stack is up (scripts/stack.sh up, or make demo).
#
# For each demo user (password grant via the public client demo-cli) it calls
#   GET http://127.0.0.1:10000/account/1   with Host: unanimous.bank.local   (resource server bank-api, UNANIMOUS)
#                                           and Host: affirmative.bank.local (bank-api-affirmative, AFFIRMATIVE)
# plus a request without a token and GET /public/info (enforcement-mode DISABLED) without a token.
#
# Realm bank: "View Account Resource" (/account/{id}, scope account:view) is guarded by two permissions:
#   resource permission -> teller-or-owner role policy;  scope permission (account:view) -> owner-only role policy.
# UNANIMOUS needs both to grant, AFFIRMATIVE needs one.
set -euo pipefail

KC=${KCPEP_KEYCLOAK_URL:-http://127.0.0.1:8180}
ENVOY=${KCPEP_ENVOY_URL:-http://127.0.0.1:10000}
TOKEN_URL="$KC/realms/bank/protocol/openid-connect/token"

die() { echo "demo: $*" >&2; exit 1; }

curl -sf -o /dev/null --max-time 5 "$KC/realms/bank/.well-known/openid-configuration" \
  || die "Keycloak does not answer at $KC: start the stack first (scripts/stack.sh up, or make up)"
ENVOY_ADMIN=${KCPEP_ENVOY_ADMIN:-http://127.0.0.1:9901}
curl -sf -o /dev/null --max-time 5 "$ENVOY_ADMIN/ready" \
  || die "Envoy is not ready (admin $ENVOY_ADMIN/ready): start the stack first (scripts/stack.sh up, or make up)"

token_for() {
  local body
  body=$(curl -s --max-time 10 -d grant_type=password -d client_id=demo-cli \
    --data-urlencode "username=$1" -d password=password "$TOKEN_URL") || return 1
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])' <<<"$body" 2>/dev/null \
    || { echo "demo: no token for $1: $body" >&2; return 1; }
}

status_of() { # $1 host, $2 path, $3 token (may be empty)
  local args=(-s -o /dev/null -w '%{http_code}' --max-time 20 -H "Host: $1")
  [ -n "$3" ] && args+=(-H "Authorization: Bearer $3")
  curl "${args[@]}" "$ENVOY$2" || echo "000"
}

why() { # $1 strategy, $2 user
  case "$1:$2" in
    UNANIMOUS:teller)   echo "UNANIMOUS: teller passes the resource permission but fails the owner-only scope permission" ;;
    UNANIMOUS:owner)    echo "UNANIMOUS: owner passes both the resource and the scope permission" ;;
    UNANIMOUS:both)     echo "UNANIMOUS: teller+owner passes both permissions" ;;
    UNANIMOUS:plain)    echo "UNANIMOUS: no bank role, fails both permissions" ;;
    AFFIRMATIVE:teller) echo "AFFIRMATIVE: the resource permission grants (teller); one grant is enough" ;;
    AFFIRMATIVE:owner)  echo "AFFIRMATIVE: owner passes both permissions" ;;
    AFFIRMATIVE:both)   echo "AFFIRMATIVE: teller+owner passes both permissions" ;;
    AFFIRMATIVE:plain)  echo "AFFIRMATIVE: no bank role, no permission grants" ;;
  esac
}

expected() { # $1 strategy, $2 user
  case "$1:$2" in
    UNANIMOUS:owner | UNANIMOUS:both | AFFIRMATIVE:teller | AFFIRMATIVE:owner | AFFIRMATIVE:both) echo 200 ;;
    *) echo 403 ;;
  esac
}

mismatches=0
row() { # user host path got expected why
  local mark="ok"
  if [ "$4" != "$5" ]; then mark="EXPECTED $5"; mismatches=$((mismatches + 1)); fi
  printf '%-7s %-24s %-14s %-17s %-12s %s\n' "$1" "$2" "$3" "$4" "$mark" "$6"
}

printf '%-7s %-24s %-14s %-17s %-12s %s\n' USER HOST PATH 'HTTP or gRPC' CHECK WHY
printf '%-7s %-24s %-14s %-17s %-12s %s\n' ---- ---- ---- ---- ----- ---
for user in teller owner both plain; do
  tok=$(token_for "$user") || die "could not get a token for $user from $TOKEN_URL"
  for pair in unanimous.bank.local:UNANIMOUS affirmative.bank.local:AFFIRMATIVE; do
    host=${pair%%:*} strategy=${pair##*:}
    got=$(status_of "$host" /account/1 "$tok")
    row "$user" "$host" /account/1 "$got" "$(expected "$strategy" "$user")" "$(why "$strategy" "$user")"
  done
done
for host in unanimous.bank.local affirmative.bank.local; do
  got=$(status_of "$host" /account/1 "")
  row "-" "$host" /account/1 "$got" 401 "no bearer token on an enforced path"
done
got=$(status_of unanimous.bank.local /public/info "")
row "-" unanimous.bank.local /public/info "$got" 200 "/public/* has enforcement-mode DISABLED: no token needed"

# Claims pushed to Keycloak (claim information point): a JavaScript policy in the realm allows
# /branch/transfer only for x-branch tokyo, amount <= 1000 and a client in 203.0.113.0/24.
transfer() { # $1 host, $2 branch, $3 amount
  curl -s -o /dev/null -w '%{http_code}' --max-time 20 -H "Host: $1" -H "Authorization: Bearer $owner_tok" \
    -H "x-branch: $2" -H "x-forwarded-for: 203.0.113.7" -H "content-type: application/json" \
    -d "{\"amount\": $3}" "$ENVOY/branch/transfer" || echo "000"
}
owner_tok=$(token_for owner) || die "could not get a token for owner"
echo
printf '%-7s %-24s %-14s %-17s %-12s %s\n' USER HOST "POST claims" HTTP CHECK WHY
row owner claims.bank.local "tokyo, 900" "$(transfer claims.bank.local tokyo 900)" 200 "claims branch=tokyo amount=900 ip=203.0.113.7 (X-Forwarded-For from a trusted proxy)"
row owner claims.bank.local "osaka, 900" "$(transfer claims.bank.local osaka 900)" 403 "claim branch=osaka: the JavaScript policy denies"
row owner claims.bank.local "tokyo, 5000" "$(transfer claims.bank.local tokyo 5000)" 403 "claim amount=5000 from the JSON body: over the limit"
row owner untrusted.bank.local "tokyo, 900" "$(transfer untrusted.bank.local tokyo 900)" 403 "127.0.0.1 is no trusted proxy here: ip=127.0.0.1, X-Forwarded-For ignored"

# Sender-constrained tokens (RFC 9449): demo-cli-dpop's tokens are bound to the client's key
# (cnf.jkt); the dpop.bank.local enforcer wants each request signed with that key (a DPoP proof).
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY="$ROOT/.cache/venv/bin/python"
[ -x "$PY" ] || PY=python3
"$PY" -c 'import cryptography' 2>/dev/null || "$PY" -m pip install -q cryptography >&2 \
  || die "could not install the Python package cryptography (the demo's DPoP client needs it)"
DPOP_KEY="$ROOT/.run/demo-dpop-key.pem"
dpop() { "$PY" "$ROOT/scripts/dpop_client.py" --key "$DPOP_KEY" --keycloak "$KC" "$@"; }
dpop_get() { # $1 path, $2 scheme, $3 token, $4 proof (may be empty)
  local args=(-s -o /dev/null -w '%{http_code}' --max-time 20 -H "Host: dpop.bank.local" -H "Authorization: $2 $3")
  [ -n "$4" ] && args+=(-H "DPoP: $4")
  curl "${args[@]}" "$ENVOY$1" || echo "000"
}
dpop_tok=$(dpop token owner) || die "could not get a DPoP-bound token for owner"
me_proof=$(dpop proof GET http://dpop.bank.local/me "$dpop_tok")
echo
printf '%-7s %-24s %-14s %-17s %-12s %s\n' USER HOST "DPoP" HTTP CHECK WHY
row owner dpop.bank.local "GET /me" "$(dpop_get /me DPoP "$dpop_tok" "$me_proof")" 200 "DPoP token + proof signed by its key (cnf.jkt, htm, htu, ath, iat): allowed (PERMISSIVE, /me has no resource)"
row owner dpop.bank.local "no proof" "$(dpop_get /me Bearer "$dpop_tok" "")" 401 "the same token as a plain Bearer token, as if copied from a log: refused (invalid_token)"
row owner dpop.bank.local "replayed" "$(dpop_get /me DPoP "$dpop_tok" "$me_proof")" 401 "the same proof again: its jti was taken (invalid_dpop_proof)"
row owner dpop.bank.local "GET /account/1" "$(dpop_get /account/1 DPoP "$dpop_tok" "$(dpop proof GET http://dpop.bank.local/account/1 "$dpop_tok")")" 200 "a good proof: Keycloak decides by AuthZEN (decision-protocol authzen-for-bound-tokens; its UMA grant refuses bound tokens): allowed"
teller_dpop=$(dpop token teller) || die "could not get a DPoP-bound token for teller"
row teller dpop.bank.local "GET /account/1" "$(dpop_get /account/1 DPoP "$teller_dpop" "$(dpop proof GET http://dpop.bank.local/account/1 "$teller_dpop")")" 403 "a good proof too, and Keycloak's policies refuse teller (UNANIMOUS: the owner-only scope permission fails)"

# Certificate-bound tokens (RFC 8705): demo-cli-mtls's tokens come from Keycloak's HTTPS port over a
# connection with a client certificate (the test CA of .run/pki) and are bound to it (cnf.x5t#S256);
# Envoy's :10443 listener requires a client certificate and the filter compares the two.
PKI="$ROOT/.run/pki"
mtls_tok=$(curl -s --max-time 20 --cacert "$PKI/ca.pem" --cert "$PKI/client-a.pem" --key "$PKI/client-a.key" \
  -d grant_type=password -d client_id=demo-cli-mtls -d username=owner -d password=password \
  "${KCPEP_KEYCLOAK_TLS_URL:-https://127.0.0.1:8543}/realms/bank/protocol/openid-connect/token" \
  | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
[ -n "$mtls_tok" ] || die "could not get a certificate-bound token for owner from Keycloak's HTTPS port"
mtls_get() { # $1 client certificate (client-a | client-b)
  curl -s -o /dev/null -w '%{http_code}' --max-time 20 --cacert "$PKI/ca.pem" \
    --cert "$PKI/$1.pem" --key "$PKI/$1.key" -H "Host: dpop.bank.local" \
    -H "Authorization: Bearer $mtls_tok" "${KCPEP_ENVOY_TLS_URL:-https://127.0.0.1:10443}/account/1"
}
echo
printf '%-7s %-24s %-14s %-17s %-12s %s\n' USER HOST "CERTIFICATE" HTTP CHECK WHY
row owner dpop.bank.local "client-a" "$(mtls_get client-a)" 200 "token bound to client-a's certificate, on client-a's connection: Keycloak decides by AuthZEN (allowed)"
row owner dpop.bank.local "client-b" "$(mtls_get client-b)" 401 "the same token on another client certificate's connection: refused before Keycloak is asked"
row owner dpop.bank.local "none (http)" "$(status_of dpop.bank.local /account/1 "$mtls_tok")" 401 "the same token over plain HTTP, as if copied from a log: refused"

# gRPC: the same decisions for a gRPC client (scripts/grpc_client.py, grpcio from the stack's venv),
# answered in gRPC status codes (docs/operations.md, "gRPC clients").
GRPC_PYTHON=${KCPEP_GRPC_PYTHON:-$(dirname "$0")/../.cache/venv/bin/python}
grpc_code() { # $1 method path, $2 token (may be empty): the gRPC status the client got
  GRPC_TARGET=${ENVOY#http://} GRPC_METHOD=$1 GRPC_TOKEN=$2 "$GRPC_PYTHON" -c '
import json, os, subprocess, sys
md = [["authorization", "Bearer " + os.environ["GRPC_TOKEN"]]] if os.environ["GRPC_TOKEN"] else []
call = [{"target": os.environ["GRPC_TARGET"], "authority": "grpc.bank.local",
         "method": os.environ["GRPC_METHOD"], "metadata": md}]
out = subprocess.run([sys.executable, sys.argv[1]], input=json.dumps(call), capture_output=True, text=True)
print(json.loads(out.stdout)[0]["code"] if out.returncode == 0 else "ERROR")
' "$(dirname "$0")/grpc_client.py" 2>/dev/null || echo ERROR
}
owner_tok=$(token_for owner) || die "could not get a token for owner"
teller_tok=$(token_for teller) || die "could not get a token for teller"
echo
printf '%-7s %-24s %-14s %-17s %-12s %s\n' USER HOST "gRPC method" gRPC CHECK WHY
row owner grpc.bank.local "GetAccount" "$(grpc_code /bank.v1.Accounts/GetAccount "$owner_tok")" OK "a gRPC call: Keycloak's decision as a gRPC status (allowed)"
row teller grpc.bank.local "GetAccount" "$(grpc_code /bank.v1.Accounts/GetAccount "$teller_tok")" PERMISSION_DENIED "denied by Keycloak's policies, the reason in grpc-message"
row - grpc.bank.local "GetAccount" "$(grpc_code /bank.v1.Accounts/GetAccount "")" UNAUTHENTICATED "no token: the Bearer challenge as metadata, where an HTTP client is redirected (on-deny-redirect-to)"

echo
if [ "$mismatches" -gt 0 ]; then
  echo "demo: $mismatches result(s) differ from the expected ones."
fi
echo "demo: the stack is still running (Keycloak $KC, Envoy $ENVOY); 'make down' stops it."
[ "$mismatches" = 0 ]
