#!/usr/bin/env bash
# The test stack's certificates, made with openssl at stack start (never committed):
#   ca.pem / ca.key            a throwaway CA, trusted by Keycloak (client certificates) and Envoy
#   keycloak.pem / .key        Keycloak's HTTPS port (SAN 127.0.0.1, localhost)
#   envoy.pem / .key           Envoy's mutual-TLS listener (SAN 127.0.0.1, localhost)
#   client-a.pem / .key        a client certificate: the one a certificate-bound token is bound to
#   client-b.pem / .key        another client certificate of the same CA (tests/binding.rs: refused)
# Usage: scripts/test-pki.sh DIR   (idempotent: kept while every file is there and valid for a day)
# Keys are P-256, PKCS#8 PEM (what Keycloak's Quarkus, Envoy and rustls all read).
set -euo pipefail

DIR=${1:?usage: scripts/test-pki.sh DIR}
DAYS=30
FILES=(ca keycloak envoy client-a client-b)

fresh() {
  local f
  for f in "${FILES[@]}"; do
    [ -s "$DIR/$f.pem" ] && [ -s "$DIR/$f.key" ] || return 1
    openssl x509 -checkend 86400 -noout -in "$DIR/$f.pem" >/dev/null 2>&1 || return 1
  done
}

if fresh; then exit 0; fi

mkdir -p "$DIR"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/$1.key" 2>/dev/null; }

key ca
openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days "$DAYS" -subj "/CN=keycloak-pep test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$tmp/ca.pem"

# $1 = name, $2 = CN, $3 = serverAuth|clientAuth
issue() {
  key "$1"
  openssl req -new -key "$tmp/$1.key" -subj "/CN=$2" -out "$tmp/$1.csr"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$3"
    [ "$3" = serverAuth ] && echo "subjectAltName=IP:127.0.0.1,DNS:localhost"
  } > "$tmp/$1.ext"
  openssl x509 -req -in "$tmp/$1.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
    -days "$DAYS" -sha256 -extfile "$tmp/$1.ext" -out "$tmp/$1.pem" 2>/dev/null
}

issue keycloak "127.0.0.1" serverAuth
issue envoy "127.0.0.1" serverAuth
issue client-a "bank-client-a" clientAuth
issue client-b "bank-client-b" clientAuth

for f in "${FILES[@]}"; do
  # Keycloak runs as this user; the keys are test-only and never leave the machine.
  install -m 0644 "$tmp/$f.pem" "$DIR/$f.pem"
  install -m 0644 "$tmp/$f.key" "$DIR/$f.key"
done
echo "test-pki: made a test CA and certificates in $DIR"
