#!/usr/bin/env python3
"""A DPoP client (RFC 9449) for the demo: one P-256 key in a file, a DPoP-bound token from
Keycloak with it, and proofs for requests through Envoy.

  dpop_client.py --key K token USER               a DPoP-bound access token of USER (client demo-cli-dpop)
  dpop_client.py --key K proof METHOD URL [TOKEN] a proof for METHOD URL (ath of TOKEN when given)

Needs the `cryptography` package (scripts/demo.sh installs it into the stack's venv).
"""
import argparse
import base64
import hashlib
import json
import os
import sys
import time
import urllib.parse
import urllib.request

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_key(path: str) -> ec.EllipticCurvePrivateKey:
    """The client's key: made on first use, kept so a token and its later proofs share it."""
    if not os.path.exists(path):
        key = ec.generate_private_key(ec.SECP256R1())
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    with open(path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def proof(key: ec.EllipticCurvePrivateKey, method: str, url: str, token: str | None = None) -> str:
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256",
           "x": b64(numbers.x.to_bytes(32, "big")), "y": b64(numbers.y.to_bytes(32, "big"))}
    header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}
    claims = {"jti": os.urandom(16).hex(), "htm": method, "htu": url, "iat": int(time.time())}
    if token:
        claims["ath"] = b64(hashlib.sha256(token.encode()).digest())
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def token(key: ec.EllipticCurvePrivateKey, keycloak: str, user: str) -> str:
    url = f"{keycloak}/realms/bank/protocol/openid-connect/token"
    form = urllib.parse.urlencode({"grant_type": "password", "client_id": "demo-cli-dpop",
                                   "username": user, "password": "password"}).encode()
    req = urllib.request.Request(url, data=form, headers={"DPoP": proof(key, "POST", url)})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = json.load(r)
    if body.get("token_type") != "DPoP":
        sys.exit(f"dpop_client: Keycloak did not bind the token (token_type {body.get('token_type')})")
    return body["access_token"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--key", required=True, help="the client's P-256 key (PEM; made when missing)")
    p.add_argument("--keycloak", default=os.environ.get("KCPEP_KEYCLOAK_URL", "http://127.0.0.1:8180"))
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("token")
    t.add_argument("user")
    pr = sub.add_parser("proof")
    pr.add_argument("method")
    pr.add_argument("url")
    pr.add_argument("token", nargs="?")
    a = p.parse_args()
    key = load_key(a.key)
    print(token(key, a.keycloak, a.user) if a.cmd == "token" else proof(key, a.method, a.url, a.token))


if __name__ == "__main__":
    main()
