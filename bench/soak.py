#!/usr/bin/env python3
"""make soak: a production-like load through the keycloak-pep filter for KCPEP_SOAK_SECONDS (600),
on a stack of its own (Keycloak :8380, echo upstream :8092, Envoy :10300 / admin :9931).

About 1,000 users of the demo realm (imported with the realm into a Keycloak of our own, whose
access tokens live KCPEP_SOAK_TOKEN_LIFESPAN = 120 s) send a mix of allowed and denied requests
over the test stack's enforcers, with anonymous, garbage and expired tokens among them; a
background thread refreshes every user's token before it expires, so new tokens (new decision
keys) keep arriving. wrk sends the load in 10-s rounds, each response checked against what
Keycloak's policies imply for that request (a table asked of Keycloak once, before the load).
Every 10 s: Envoy's RSS, requests by status, the decision table's slots in use, Keycloak calls per
second and the bound they must stay under, p50/p99 latency; CSV, JSON and PNG under results/.
The pass criteria are printed at the end and the exit status is 1 when one fails.
docs/soak.md explains the figures. Run through scripts/soak.sh (make soak)."""

import base64
import bisect
import hashlib
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, ".run", "soak")
ROUND_DIR = os.path.join(RUN, "round")
DATA = os.path.join(ROOT, ".cache", "soak")
RESULTS = os.path.join(ROOT, "results")
VENV = os.path.join(ROOT, ".cache", "venv")
ENVOY = os.path.join(VENV, "bin", "envoy")
WASM = os.path.join(ROOT, "dist", "keycloak_pep.wasm")
ENVOY_YAML = os.path.join(ROOT, "envoy", "envoy.yaml")
REALM_DIR = os.path.join(ROOT, "envoy", "keycloak")
LUA = os.path.join(ROOT, "bench", "soak.lua")

KC_VERSION = os.environ.get("KCPEP_KEYCLOAK_VERSION", "26.7.3")
KC_SRC = os.path.join(ROOT, ".cache", "keycloak", f"keycloak-{KC_VERSION}")
KC_DIR = os.path.join(DATA, f"keycloak-{KC_VERSION}")
KC_PORT, KC_MGMT_PORT, ECHO_PORT, ENVOY_PORT, ENVOY_ADMIN = 8380, 9380, 8092, 10300, 9931
PORTS = {KC_PORT: "Keycloak", KC_MGMT_PORT: "Keycloak management", ECHO_PORT: "echo upstream",
         ENVOY_PORT: "Envoy listener", ENVOY_ADMIN: "Envoy admin"}
BASE_ID, WORKERS = 79, 2
KC = f"http://127.0.0.1:{KC_PORT}"
TOKEN_URL = f"{KC}/realms/bank/protocol/openid-connect/token"

SECONDS = int(os.environ.get("KCPEP_SOAK_SECONDS", "600"))
USERS = int(os.environ.get("KCPEP_SOAK_USERS", "1000"))
RPS = int(os.environ.get("KCPEP_SOAK_RPS", "200"))
CONNECTIONS = int(os.environ.get("KCPEP_SOAK_CONNECTIONS", "8"))
TOKEN_LIFESPAN = int(os.environ.get("KCPEP_SOAK_TOKEN_LIFESPAN", "120"))
SEED = int(os.environ.get("KCPEP_SOAK_SEED", "20261201"))
ROUND = 10              # seconds per wrk round = the sampling interval
WARMUP = 60             # RSS growth is measured from the first sample after this
REFRESH_MARGIN = 45     # a token is refreshed this long before its exp
VALID_MARGIN = 15       # a token sent as valid has at least this long left when its round ends
SKEW = 30               # the filter's clock-skew-seconds (default): exp + SKEW is still accepted
EXPIRED_MARGIN = 15     # a token sent as expired is past exp + SKEW by this much
EXPIRING_LIFESPAN = 10  # access-token lifespan of the soak-expiring client (the first expired tokens)
RSS_LIMIT = 0.05

# What each request kind is, in shares of all requests (the rest carry a valid user token).
ANON_SHARE, GARBAGE_SHARE, EXPIRED_SHARE, BASIC_SHARE = 0.05, 0.03, 0.03, 0.005


def say(msg):
    print(f"soak: {msg}", flush=True)


class SoakError(Exception):
    pass


# ------------------------------------------------------------------ processes

STARTED = []  # every process this run started, stopped in reverse order on exit


class Proc:
    """A child in a session of its own (pid == process group), log and pid file under .run/soak/."""

    def __init__(self, name, argv, env=None, cwd=ROOT):
        os.makedirs(RUN, exist_ok=True)
        self.name = name
        self.log_path = os.path.join(RUN, f"{name}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)
        self.pid = self.proc.pid
        with open(os.path.join(RUN, f"{name}.pid"), "w") as f:
            f.write(f"{self.pid}\n")
        STARTED.append(self)
        say(f"{name} started (pid {self.pid}), log {os.path.relpath(self.log_path, ROOT)}")

    def alive(self):
        return self.proc.poll() is None

    def tail(self, n=30):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout=30):
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                say(f"{self.name} (pid {self.pid}) still alive after {timeout} s: SIGKILL")
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(10)
        # the group may outlive its leader (kc.sh -> java)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                break
            try:
                os.killpg(self.pid, signal.SIGKILL if time.time() > deadline - 5 else signal.SIGTERM)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        self.log.close()
        try:
            os.remove(os.path.join(RUN, f"{self.name}.pid"))
        except FileNotFoundError:
            pass


def cleanup():
    for p in reversed(STARTED):
        try:
            p.stop()
            say(f"{p.name} stopped")
        except Exception as e:  # keep stopping the others
            say(f"could not stop {p.name}: {e}")
    STARTED.clear()
    # the round files hold tokens: never left behind
    shutil.rmtree(ROUND_DIR, ignore_errors=True)


def port_in_use(port):
    import socket
    s = socket.socket()
    s.settimeout(0.5)
    try:
        return s.connect_ex(("127.0.0.1", port)) == 0
    finally:
        s.close()


def wait_until(what, check, seconds, proc=None, interval=0.25):
    deadline = time.time() + seconds
    while True:
        if proc is not None and not proc.alive():
            raise SoakError(f"{proc.name} exited while waiting for {what}; last lines of "
                            f"{os.path.relpath(proc.log_path, ROOT)}:\n{proc.tail()}")
        if check():
            return
        if time.time() > deadline:
            extra = f"; last lines of {os.path.relpath(proc.log_path, ROOT)}:\n{proc.tail()}" if proc else ""
            raise SoakError(f"timed out after {seconds} s waiting for {what}{extra}")
        time.sleep(interval)


# ------------------------------------------------------------------ HTTP

def call(method, url, data=None, headers=None, timeout=30):
    body = urllib.parse.urlencode(data, doseq=True).encode() if isinstance(data, (dict, list)) else data
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def ok(url):
    try:
        return call("GET", url, timeout=3)[0] == 200
    except OSError:
        return False


def jwt_claims(raw):
    p = raw.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))


# ------------------------------------------------------------------ the realm and Keycloak

CLASSES = ("owner", "teller", "both", "plain")
CLASS_ROLES = {"owner": ["account_owner"], "teller": ["bank_teller"], "both": ["bank_teller", "account_owner"],
               "plain": ["user"]}
# 20 users in a row: 7 account owners, 6 tellers, 2 both, 5 plain users
CLASS_OF = ["owner"] * 7 + ["teller"] * 6 + ["both"] * 2 + ["plain"] * 5


def user_class(i):
    return CLASS_OF[i % len(CLASS_OF)]


def username(i):
    return f"soak-{i:04d}"


def soak_realm():
    """bank-realm.json with the soak's changes: its users, a 2-minute access token, one PBKDF2
    iteration (so 1,000 logins do not take minutes on two cores; this Keycloak is the soak's own),
    and soak-expiring, a public client whose tokens live EXPIRING_LIFESPAN s (the first expired
    tokens of the run)."""
    with open(os.path.join(REALM_DIR, "bank-realm.json")) as f:
        realm = json.load(f)
    realm["accessTokenLifespan"] = TOKEN_LIFESPAN
    realm["passwordPolicy"] = "hashIterations(1)"
    realm["users"] += [{
        "username": username(i), "enabled": True, "emailVerified": True, "email": f"{username(i)}@bank.local",
        "firstName": "Soak", "lastName": f"User {i}", "requiredActions": [],
        "realmRoles": ["default-roles-bank"] + CLASS_ROLES[user_class(i)],
        "credentials": [{"type": "password", "value": "password", "temporary": False}]} for i in range(USERS)]
    realm["clients"].append({
        "clientId": "soak-expiring", "name": "soak-expiring", "enabled": True, "protocol": "openid-connect",
        "publicClient": True, "standardFlowEnabled": False, "implicitFlowEnabled": False,
        "directAccessGrantsEnabled": True, "serviceAccountsEnabled": False, "fullScopeAllowed": True,
        "attributes": {"access.token.lifespan": str(EXPIRING_LIFESPAN)}})
    return realm


def prepare_keycloak():
    if not os.path.exists(os.path.join(KC_SRC, "bin", "kc.sh")):
        raise SoakError(f"Keycloak {KC_VERSION} is not installed at {os.path.relpath(KC_SRC, ROOT)} "
                        "(scripts/stack.sh install does it)")
    if not os.path.exists(os.path.join(KC_DIR, "bin", "kc.sh")):
        say(f"copying Keycloak {KC_VERSION} to {os.path.relpath(KC_DIR, ROOT)} (a data directory of its own)")
        shutil.rmtree(KC_DIR, ignore_errors=True)
        shutil.copytree(KC_SRC, KC_DIR, symlinks=True, ignore=lambda d, names: ["data"] if d == KC_SRC else [])
    # a fresh database every run
    for sub in ("h2", "tmp", "import", "transaction-logs"):
        shutil.rmtree(os.path.join(KC_DIR, "data", sub), ignore_errors=True)
    os.makedirs(os.path.join(KC_DIR, "data", "import"))
    with open(os.path.join(KC_DIR, "data", "import", "bank-realm.json"), "w") as f:
        json.dump(soak_realm(), f)
    # the realm's JavaScript policies as a provider jar (scripts/policies-jar.py, as scripts/stack.sh),
    # rewritten only when it changes so Keycloak does not rebuild itself
    subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "policies-jar.py"),
                    os.path.join(REALM_DIR, "policies"),
                    os.path.join(KC_DIR, "providers", "kcpep-policies.jar")], check=True)


def java_env():
    env = dict(os.environ)
    home = os.environ.get("KCPEP_SOAK_JAVA_HOME") or os.environ.get("JAVA_HOME")
    if not home or not os.access(os.path.join(home, "bin", "java"), os.X_OK):
        raise SoakError("no JDK: set KCPEP_SOAK_JAVA_HOME (scripts/soak.sh takes the one scripts/stack.sh picks)")
    env["JAVA_HOME"] = home
    env["PATH"] = os.path.join(home, "bin") + os.pathsep + env.get("PATH", "")
    env["KC_BOOTSTRAP_ADMIN_USERNAME"] = "admin"
    env["KC_BOOTSTRAP_ADMIN_PASSWORD"] = "admin"
    return env


def start_keycloak():
    prepare_keycloak()
    kc = Proc("keycloak", [os.path.join(KC_DIR, "bin", "kc.sh"), "start-dev", "--http-host", "127.0.0.1",
                           "--http-port", str(KC_PORT), "--http-management-port", str(KC_MGMT_PORT),
                           "--hostname", KC, "--features=scripts", "--import-realm"], env=java_env())
    t0 = time.time()
    wait_until("Keycloak (realm bank)", lambda: ok(f"{KC}/realms/bank/.well-known/openid-configuration"),
               int(os.environ.get("KC_READY_TIMEOUT", "300")), kc, interval=0.5)
    say(f"Keycloak ready after {time.time() - t0:.0f} s")
    return kc


def password_grant(user, client="demo-cli"):
    status, raw, _ = call("POST", TOKEN_URL, {"grant_type": "password", "client_id": client, "username": user,
                                              "password": "password"})
    if status != 200:
        raise SoakError(f"no token for {user} from {client}: HTTP {status} {raw[:200]!r}")
    return json.loads(raw)


def client_token(client, secret):
    status, raw, _ = call("POST", TOKEN_URL, {"grant_type": "client_credentials", "client_id": client,
                                              "client_secret": secret})
    if status != 200:
        raise SoakError(f"no client token for {client}: HTTP {status}")
    return json.loads(raw)["access_token"]


# ------------------------------------------------------------------ the enforcers and the request mix

CLIENT_AFF = "bank-api-affirmative"
CLIENT_UNA = "bank-api"
SECRETS = {CLIENT_UNA: "bank-api-secret", CLIENT_AFF: "bank-api-affirmative-secret"}
# The test stack's enforcers that work against one Keycloak, with the lifespans their envoy.yaml
# configuration gives the decision cache (allow, deny; seconds). Left out: claims and
# claims-untrusted (a claim service), faulty (the faults proxy), unbound (its secret is refused:
# 503 by design, nothing Keycloak's policies decide), the replay-* enforcers (realm authz-test).
KEPT = {
    "unanimous": (CLIENT_UNA, 30, 5), "affirmative": (CLIENT_AFF, 30, 5), "permissive": (CLIENT_UNA, 30, 5),
    "redirect": (CLIENT_UNA, 30, 5), "methods": (CLIENT_AFF, 30, 5), "uma": (CLIENT_UNA, 30, 5),
    "dryrun": (CLIENT_UNA, 30, 5), "revocable": (CLIENT_UNA, 3, 5), "stale": (CLIENT_UNA, 0.001, 5),
}
PATH_CACHE_LIFESPAN = 30  # path-cache default (template instances and lazily loaded paths)
HOSTS = {e: f"{e}.bank.local" for e in KEPT}

ALL, ANY = "ALL", "ANY"
VIEW, TRANSFER, REPORT, OPS, REVOCABLE = ("View Account Resource", "Transfer Resource", "Lazy Report",
                                          "Ops Resource", "Revocable Resource")


def perm(resource, scopes, mode, fallback=False):
    """A path that asks Keycloak for `resource` with `scopes` (`fallback`: the request's method has
    no entry, so the scopes are the resource's, mode ANY; checked against the other reading, no
    scopes at all, before the load)."""
    return {"kind": "perm", "resource": resource, "scopes": tuple(scopes), "mode": mode, "fallback": fallback}


DISABLED = {"kind": "disabled"}
UNMATCHED = {"kind": "unmatched"}
DENY_PAGE = {"kind": "deny_page"}

# (weight, name, enforcer, host, method, path pattern, what the path is, how the filter finds it)
# lookup: "template" (an instance of a template path: up to two resource_set calls), "lazy" (one).
SHAPES = [
    (20, "una-view", "unanimous", None, "GET", "/account/{a}", perm(VIEW, ["account:view"], ALL), "template"),
    (2, "default-view", "unanimous", "www.example.com", "GET", "/account/{a}", perm(VIEW, ["account:view"], ALL), "template"),
    (2, "una-post-account", "unanimous", None, "POST", "/account/{a}", perm(VIEW, ["account:view"], ANY, True), "template"),
    (3, "una-public", "unanimous", None, "GET", "/public/{p}", DISABLED, None),
    (2, "una-transfer", "unanimous", None, "GET", "/transfer/{t}", UNMATCHED, None),
    (1, "una-report", "unanimous", None, "GET", "/reports/{r}", UNMATCHED, None),
    (12, "aff-view", "affirmative", None, "GET", "/account/{a}", perm(VIEW, ["account:view"], ALL), "template"),
    (6, "aff-transfer-post", "affirmative", None, "POST", "/transfer/{t}",
     perm(TRANSFER, ["transfer:create", "transfer:view"], ALL), "lazy"),
    (5, "aff-transfer-put", "affirmative", None, "PUT", "/transfer/{t}",
     perm(TRANSFER, ["transfer:create", "transfer:view"], ANY), "lazy"),
    (2, "aff-transfer-get", "affirmative", None, "GET", "/transfer/{t}",
     perm(TRANSFER, ["transfer:create", "transfer:view"], ANY, True), "lazy"),
    (7, "aff-report", "affirmative", None, "GET", "/reports/{r}", perm(REPORT, ["report:view"], ANY), "lazy"),
    (3, "aff-ops", "affirmative", None, "GET", "/ops/{o}", perm(OPS, ["GET", "POST"], ANY), "lazy"),
    (2, "aff-public", "affirmative", None, "GET", "/public/{p}", DISABLED, None),
    (2, "aff-nothing", "affirmative", None, "GET", "/nothing/{n}", UNMATCHED, "lazy"),
    (3, "perm-view", "permissive", None, "GET", "/account/{a}", perm(VIEW, ["account:view"], ALL), "template"),
    (2, "perm-elsewhere", "permissive", None, "GET", "/elsewhere/{n}", UNMATCHED, None),
    (3, "redir-view", "redirect", None, "GET", "/account/{a}", perm(VIEW, ["account:view"], ALL), "template"),
    (1, "redir-nowhere", "redirect", None, "GET", "/nowhere/{n}", UNMATCHED, None),
    (1, "redir-denied-page", "redirect", None, "GET", "/denied", DENY_PAGE, None),
    (5, "methods-get", "methods", None, "GET", "/ops/{o}", perm(OPS, ["GET"], ANY), None),
    (3, "methods-post", "methods", None, "POST", "/ops/{o}", perm(OPS, ["POST"], ANY), None),
    (1, "methods-account", "methods", None, "GET", "/account/{a}", UNMATCHED, None),
    (4, "revocable", "revocable", None, "GET", "/revocable/{v}", perm(REVOCABLE, [], ALL), None),
    (2, "dryrun-view", "dryrun", None, "GET", "/account/{a}", perm(VIEW, ["account:view"], ALL), "template"),
    (1, "uma-view", "uma", None, "GET", "/account/{a}", perm(VIEW, ["account:view"], ALL), "template"),
    (1, "stale-view", "stale", None, "GET", "/account/{a}", perm(VIEW, ["account:view"], ALL), "template"),
]
PARAMS = {"a": [str(i) for i in range(1, 41)], "t": [str(i) for i in range(1, 21)],
          "r": [str(i) for i in range(1, 21)], "o": ["run", "status", "jobs", "audit", "deploy"],
          "p": ["info", "faq", "rates", "branches"], "v": ["a", "b", "c"], "n": ["x", "y", "z", "q", "w"]}
GARBAGE_KINDS = ("junk", "jwt-ish", "tampered-signature", "foreign-kid", "alg-none", "oversize", "empty-bearer")


def zipf_cdf(n, s=1.0):
    c, total = [], 0.0
    for i in range(1, n + 1):
        total += 1 / i ** s
        c.append(total)
    return [x / total for x in c]


def expect(shape, auth, table, cls):
    """What Keycloak's policies and the enforcer's configuration imply for one request:
    (status, flag, needs_decision, verdict) with flag 's' for an answer the upstream gave,
    'u' a UMA challenge, 'd' the redirect to /denied."""
    _, _, enf, _, _, _, what, _ = shape
    kind = what["kind"]
    if enf == "dryrun":
        # evaluate everything, never block (only a 400 for an ambiguous path is kept; none are sent)
        allowed = table_allows(table, enf, what, cls) if (auth == "valid" and kind == "perm") else None
        return (200, "s", auth == "valid" and kind == "perm", allowed)
    if kind == "disabled" or kind == "deny_page":
        return (200, "s", False, None)
    if auth != "valid":
        if auth == "anon":
            if enf == "uma" and kind == "perm":
                return (401, "u", False, None)   # an anonymous UMA challenge: a permission ticket
            if enf == "redirect":
                return (302, "d", False, None)
        return (401, "-", False, None)
    if kind == "unmatched":
        if enf == "permissive":
            return (200, "s", False, None)
        if enf == "redirect":
            return (302, "d", False, None)
        return (403, "-", False, None)
    if enf == "uma":
        # user-managed-access: as Keycloak's enforcer, a plain access token that carries no
        # permission gets a permission ticket to exchange for an RPT, whoever its user is; no
        # decision is asked
        return (401, "u", False, None)
    allowed = table_allows(table, enf, what, cls)
    if allowed:
        return (200, "s", True, True)
    return (403, "-", True, False)


def table_allows(table, enf, what, cls):
    client = KEPT[enf][0]
    return table[(client, cls, what["resource"], what["scopes"], what["mode"])]


def authorized(perms, rid, scopes, mode):
    """Keycloak's isAuthorized over the permissions Keycloak granted for one resource."""
    for p in perms:
        if p.get("rsid") != rid:
            continue
        granted = set(p.get("scopes") or [])
        if not granted or not scopes:
            return True
        if mode == ALL and set(scopes) <= granted:
            return True
        if mode == ANY and set(scopes) & granted:
            return True
    return False


def uma_permissions(user_token, audience, rid, scopes):
    permission = rid + ("#" + ",".join(scopes) if scopes else "")
    status, raw, _ = call("POST", TOKEN_URL, {
        "grant_type": "urn:ietf:params:oauth:grant-type:uma-ticket", "audience": audience,
        "permission": permission, "response_mode": "permissions"},
        headers={"Authorization": f"Bearer {user_token}"})
    if status == 200:
        return json.loads(raw)
    if status == 403:
        return []
    raise SoakError(f"Keycloak's UMA grant for {audience} {permission}: HTTP {status} {raw[:200]!r}")


def decision_table(tokens_by_class):
    """Asked of Keycloak directly, once, before the load: for each client, user class and
    (resource, scopes, mode) the enforcers ask, whether Keycloak's policies grant it (two users
    per class, who must agree). Shapes read two ways (a method with no entry) are kept only when
    both readings agree for every class."""
    ids = {}
    for client, secret in SECRETS.items():
        pat = client_token(client, secret)
        for name in {s[6]["resource"] for s in SHAPES if s[6]["kind"] == "perm" and KEPT[s[2]][0] == client}:
            status, raw, _ = call("GET", f"{KC}/realms/bank/authz/protection/resource_set?" +
                                  urllib.parse.urlencode({"name": name, "exactName": "true"}),
                                  headers={"Authorization": f"Bearer {pat}"})
            found = json.loads(raw) if status == 200 else []
            if len(found) != 1:
                raise SoakError(f"resource {name!r} of {client}: expected one, Keycloak answered {status} {found}")
            ids[(client, name)] = found[0] if isinstance(found[0], str) else found[0]["_id"]
    table, dropped, asked = {}, set(), 0
    for shape in SHAPES:
        what = shape[6]
        if what["kind"] != "perm":
            continue
        client = KEPT[shape[2]][0]
        rid = ids[(client, what["resource"])]
        for cls in CLASSES:
            answers = set()
            for tok in tokens_by_class[cls]:
                answers.add(authorized(uma_permissions(tok, client, rid, what["scopes"]), rid, what["scopes"],
                                       what["mode"]))
                asked += 1
                if what["fallback"]:
                    other = authorized(uma_permissions(tok, client, rid, ()), rid, (), what["mode"])
                    asked += 1
                    if other not in answers:
                        dropped.add(shape[1])
            if len(answers) != 1:
                raise SoakError(f"users of class {cls} disagree on {client} {what['resource']} {what['scopes']}")
            table[(client, cls, what["resource"], what["scopes"], what["mode"])] = answers.pop()
    return table, dropped, asked


# ------------------------------------------------------------------ Envoy

def envoy_config(wasm_copy):
    """envoy/envoy.yaml's ingress listener, filters and routes, with the soak's ports, its Keycloak,
    the kept enforcers and their routing rules."""
    import yaml
    with open(ENVOY_YAML) as f:
        cfg = yaml.safe_load(f)
    cfg["admin"]["address"]["socket_address"]["port_value"] = ENVOY_ADMIN
    sr = cfg["static_resources"]
    sr["listeners"] = [l for l in sr["listeners"] if l["name"] == "ingress"]
    listener = sr["listeners"][0]
    listener["address"]["socket_address"]["port_value"] = ENVOY_PORT
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = next(f for f in hcm["http_filters"] if f["name"] == "keycloak-pep")["typed_config"]["config"]
    wasm["vm_config"]["code"]["local"]["filename"] = wasm_copy
    plugin = json.loads(wasm["configuration"]["value"])
    missing = set(KEPT) - set(plugin["enforcers"])
    if missing:
        raise SoakError(f"envoy/envoy.yaml no longer has the enforcers {sorted(missing)}")
    plugin["enforcers"] = {k: v for k, v in plugin["enforcers"].items() if k in KEPT}
    for name, e in plugin["enforcers"].items():
        e["auth-server-url"] = KC
        if e.get("kcpep", {}).get("cluster") != "keycloak":
            raise SoakError(f"enforcer {name} no longer uses the keycloak cluster")
    plugin["routes"] = [r for r in plugin["routes"] if r["enforcer"] in KEPT]
    wasm["configuration"]["value"] = json.dumps(plugin)
    ports = {"keycloak": KC_PORT, "upstream": ECHO_PORT}
    sr["clusters"] = [c for c in sr["clusters"] if c["name"] in ports]
    for c in sr["clusters"]:
        for ep in c["load_assignment"]["endpoints"][0]["lb_endpoints"]:
            ep["endpoint"]["address"]["socket_address"]["port_value"] = ports[c["name"]]
    return cfg, plugin


def envoy_stats():
    status, raw, _ = call("GET", f"http://127.0.0.1:{ENVOY_ADMIN}/stats", timeout=10)
    if status != 200:
        raise SoakError(f"Envoy's /stats answered {status}")
    out = {}
    for line in raw.decode().splitlines():
        k, sep, v = line.partition(": ")
        if sep and v.strip().lstrip("-").isdigit():
            out[k] = int(v)
    return out


def envoy_heap_mb():
    """Envoy's own heap (`/memory`, tcmalloc's allocated bytes): shared data lives there; the wasm
    VMs' linear memory does not, so RSS minus this is mostly the VMs."""
    status, raw, _ = call("GET", f"http://127.0.0.1:{ENVOY_ADMIN}/memory", timeout=10)
    if status != 200:
        raise SoakError(f"Envoy's /memory answered {status}")
    return round(int(json.loads(raw)["allocated"]) / 1048576, 1)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise SoakError(f"no VmRSS for pid {pid}")


# ------------------------------------------------------------------ tokens

class Tok:
    __slots__ = ("id", "user", "raw", "exp", "refresh")

    def __init__(self, tid, user, raw, exp, refresh):
        self.id, self.user, self.raw, self.exp, self.refresh = tid, user, raw, exp, refresh


class Tokens:
    """Every user's current token, refreshed REFRESH_MARGIN s before its exp by a background thread
    (the refresh-token grant, a password login when that fails); retired tokens become the expired
    tokens of later rounds."""

    def __init__(self, users):
        self.lock = threading.Lock()
        self.cur = {}
        self.next_at = {}
        self.retired = []
        self.seq = 0
        self.users = users
        self.refreshed = 0
        self.failed = 0
        self.logins = 0
        self.stop = threading.Event()
        self.busy = set()

    def make(self, user, answer):
        with self.lock:
            self.seq += 1
            tid = self.seq
        raw = answer["access_token"]
        return Tok(tid, user, raw, jwt_claims(raw)["exp"], answer.get("refresh_token"))

    def login(self, user):
        return self.make(user, password_grant(username(user)))

    def fetch_all(self, pool):
        for tok in pool.map(self.login, range(self.users)):
            self.cur[tok.user] = tok

    def freshen(self, pool, min_left, seconds=300):
        """Refreshes every token with less than `min_left` s left, until none has (the logins of
        1,000 users can take longer than a token lives on a busy machine)."""
        deadline = time.time() + seconds
        while True:
            now = time.time()
            stale = [u for u, t in self.cur.items() if t.exp - now < min_left]
            if not stale:
                return
            if now > deadline:
                raise SoakError(f"Keycloak cannot keep {len(stale)} of {self.users} tokens fresh "
                                f"({TOKEN_LIFESPAN} s lifespan): the machine is too busy")
            with self.lock:
                self.busy.update(stale)
            list(pool.map(self._refresh, stale))

    def schedule(self, load_start, rng):
        # spread the first refreshes over one refresh period so rotations arrive evenly
        period = TOKEN_LIFESPAN - REFRESH_MARGIN
        for u, tok in self.cur.items():
            self.next_at[u] = min(tok.exp - REFRESH_MARGIN, load_start + rng.uniform(0, period))

    def _refresh(self, u):
        try:
            old = self.cur[u]
            new = None
            if old.refresh:
                status, raw, _ = call("POST", TOKEN_URL, {"grant_type": "refresh_token", "client_id": "demo-cli",
                                                          "refresh_token": old.refresh}, timeout=20)
                if status == 200:
                    new = self.make(u, json.loads(raw))
            if new is None:
                new = self.login(u)
                with self.lock:
                    self.logins += 1
            with self.lock:
                self.cur[u] = new
                self.retired.append(old)
                self.next_at[u] = new.exp - REFRESH_MARGIN
                self.refreshed += 1
        except Exception:
            with self.lock:
                self.failed += 1
                self.next_at[u] = time.time() + 5
        finally:
            with self.lock:
                self.busy.discard(u)

    def run(self, pool):
        while not self.stop.wait(0.2):
            now = time.time()
            with self.lock:
                due = [u for u, t in self.next_at.items() if t <= now and u not in self.busy]
                self.busy.update(due)
            for u in due:
                pool.submit(self._refresh, u)

    def snapshot(self, now):
        """Tokens safe to send as valid until the round ends, and tokens safely expired."""
        with self.lock:
            valid = {u: t for u, t in self.cur.items() if t.exp - VALID_MARGIN > now + ROUND + 5}
            # retired tokens wait until they are safely expired; of those, the newest 200 are kept
            expired = [t for t in self.retired if t.exp + SKEW + EXPIRED_MARGIN < now][-200:]
            self.retired = [t for t in self.retired if t.exp + SKEW + EXPIRED_MARGIN >= now] + expired
        return valid, expired


def garbage_tokens(sample_raw, rng):
    """Bearer values the filter must refuse with 401, built from one real token where a real shape
    is needed (they are written to the round's auth file only, never logged)."""
    h, p, s = sample_raw.split(".")
    b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    rand = lambda n: "".join(rng.choice(alphabet) for _ in range(n))
    i = len(s) // 2
    tampered_sig = s[:i] + ("A" if s[i] != "A" else "B") + s[i + 1:]
    return {
        "junk": "Bearer " + rand(120),
        "jwt-ish": "Bearer " + ".".join(rand(n) for n in (36, 180, 342)),
        "tampered-signature": "Bearer " + ".".join((h, p, tampered_sig)),
        "foreign-kid": "Bearer " + ".".join((b64({"alg": "RS256", "typ": "JWT", "kid": "soak-foreign-kid"}), p, s)),
        "alg-none": "Bearer " + ".".join((b64({"alg": "none", "typ": "JWT"}), p, "")),
        "oversize": "Bearer " + ".".join((h, p + rand(17000), s)),
        "empty-bearer": "Bearer ",
    }


# ------------------------------------------------------------------ the bound on Keycloak calls

class Bound:
    """An upper bound on the filter's Keycloak calls, from the requests the harness sent (times at
    one-second resolution). Decisions: per decision key (enforcer, token, resource, scopes), an
    ideal cache calls at most once per lifespan, so a request is counted as a possible call when
    it comes at least (lifespan - 1) s after the last counted one (the second lost to rounding).
    Path lookups likewise per (enforcer, path), per worker, two calls per template instance.
    Permission tickets: one per UMA challenge. Background fetches: PAT renewals, JWKS refetches
    (age, and unknown kids at most every 10 s) per enforcer and VM."""

    def __init__(self):
        self.decision_last = {}
        self.lookup_last = {}
        self.keys_seen = set()
        self.births = 0  # counted calls that are a key's first: a new token's first request of a pair

    def request(self, shape, enf, path, auth, tok_id, verdict, needs_decision, flag, t):
        calls = 0
        what, lookup = shape[6], shape[7]
        if auth == "valid" and lookup and what["kind"] != "disabled":
            k = (enf, path)
            last = self.lookup_last.get(k)
            if last is None or t >= last + PATH_CACHE_LIFESPAN - 1:
                self.lookup_last[k] = t
                calls += WORKERS * (2 if lookup == "template" else 1)
        if needs_decision:
            key = (enf, tok_id, what["resource"], what["scopes"])
            self.keys_seen.add(key)
            life = KEPT[enf][1] if verdict else KEPT[enf][2]
            last = self.decision_last.get(key)
            if last is None or life < 2 or t >= last + life - 1:
                self.decision_last[key] = t
                calls += 1
                if last is None:
                    self.births += 1
        if flag == "u":
            calls += 1  # the permission ticket
        return calls

    @staticmethod
    def background(seconds):
        vms = WORKERS + 1
        n = len(KEPT)
        pat = n * (seconds / (TOKEN_LIFESPAN - 30) + 1)
        jwks = n * vms * (seconds / 10 + 1) + n * vms * (seconds / 600 + 1)
        return pat + jwks

    def live_keys(self, now, horizon=30):
        return sum(1 for t in self.decision_last.values() if t >= now - horizon)


# ------------------------------------------------------------------ a round of load

def build_round(rng, tokens, garbage, shapes_cdf, user_cdf, user_order, per_thread):
    """Writes the round's auth file and one request file per wrk thread; returns what each line is."""
    now = time.time()
    valid, expired = tokens.snapshot(now)
    expired_pool = expired[-200:]
    auths, meta = [], [None]

    def add(value, info):
        auths.append(value)
        meta.append(info)
        return len(auths)

    valid_idx = {u: add("Bearer " + t.raw, ("valid", u, t.id)) for u, t in valid.items()}
    expired_idx = [add("Bearer " + t.raw, ("expired", t.user, t.id)) for t in expired_pool]
    garbage_idx = [add(v, ("garbage", k, None)) for k, v in garbage.items()]
    basic_idx = add("Basic " + base64.b64encode(b"soak-0000:password").decode(), ("basic", None, None))
    os.makedirs(ROUND_DIR, exist_ok=True)
    fd = os.open(os.path.join(ROUND_DIR, "auth.txt"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(auths) + "\n")
    plan = {}
    for tid in range(1, CONNECTIONS + 1):
        lines, specs = [], []
        for _ in range(per_thread):
            shape = SHAPES[bisect.bisect_left(shapes_cdf, rng.random())]
            _, _, enf, host, method, pattern, _, _ = shape
            path = re.sub(r"\{(\w)\}", lambda m: PARAMS[m.group(1)][
                min(int(len(PARAMS[m.group(1)]) * rng.random() ** 2), len(PARAMS[m.group(1)]) - 1)], pattern)
            r = rng.random()
            if r < ANON_SHARE:
                auth, idx = "anon", 0
            elif r < ANON_SHARE + GARBAGE_SHARE:
                auth, idx = "garbage", rng.choice(garbage_idx)
            elif r < ANON_SHARE + GARBAGE_SHARE + EXPIRED_SHARE and expired_idx:
                auth, idx = "expired", rng.choice(expired_idx)
            elif r < ANON_SHARE + GARBAGE_SHARE + EXPIRED_SHARE + BASIC_SHARE:
                auth, idx = "basic", basic_idx
            else:
                auth = "valid"
                while True:
                    u = user_order[bisect.bisect_left(user_cdf, rng.random())]
                    if u in valid_idx:
                        break
                idx = valid_idx[u]
            info = meta[idx] if idx else ("anon", None, None)
            lines.append(f"{method} {host or HOSTS[enf]} {path} {idx}")
            specs.append((shape, enf, method, path, auth, info))
        with open(os.path.join(ROUND_DIR, f"requests-{tid}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        plan[tid] = specs
    return plan, len(valid), len(expired_idx)


def run_wrk(seconds, delay_ms):
    for tid in range(1, CONNECTIONS + 1):
        try:
            os.remove(os.path.join(ROUND_DIR, f"log-{tid}.txt"))
        except FileNotFoundError:
            pass
    env = dict(os.environ, KCPEP_SOAK_DIR=ROUND_DIR, KCPEP_SOAK_DELAY_MS=str(delay_ms))
    proc = subprocess.Popen(["wrk", f"-t{CONNECTIONS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s",
                             "-s", LUA, f"http://127.0.0.1:{ENVOY_PORT}"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise SoakError("wrk did not finish its round")
    line = next((l for l in out.splitlines() if l.startswith("SOAK ")), None)
    if proc.returncode != 0 or line is None:
        raise SoakError(f"wrk failed (status {proc.returncode}): {out[-800:]}")
    return json.loads(line[5:])


# ------------------------------------------------------------------ the run

def chart(rows, path, title):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("no matplotlib in the venv: no plot")
        return None
    t = [r["t_s"] / 60 for r in rows]
    fig, ax = plt.subplots(3, 2, figsize=(13, 10), sharex=True)
    a = ax[0][0]
    a.plot(t, [r["envoy_rss_mb"] for r in rows], color="#3b7dd8")
    a.set_ylabel("Envoy RSS, MB")
    a.set_ylim(bottom=0)
    a.axvline(WARMUP / 60, color="grey", lw=0.8, ls=":")
    a = ax[0][1]
    for col, label, color in (("s200", "200", "#2a9d55"), ("s302", "302", "#8a6bbf"), ("s401", "401", "#e0a030"),
                              ("s403", "403", "#d04a3a"), ("s_other", "other", "black")):
        a.plot(t, [r[col] / r["interval_s"] for r in rows], label=label, color=color)
    a.set_ylabel("responses per second, by status")
    a.legend(fontsize=8, ncol=5)
    a = ax[1][0]
    a.plot(t, [r["cache_slots_in_use"] for r in rows], color="#3b7dd8")
    a.set_ylabel("decision-table slots in use\n(kcpep.cache.entries)")
    a = ax[1][1]
    a.plot(t, [r["kc_calls_per_s"] for r in rows], label="Keycloak calls/s (cluster keycloak)", color="#d04a3a")
    a.plot(t, [r["kc_bound_per_s"] for r in rows], label="bound/s", color="grey", ls="--")
    a.plot(t, [r["kc_token_calls_per_s"] for r in rows], label="of which token endpoint", color="#e0a030", lw=0.8)
    a.set_ylabel("calls per second")
    a.legend(fontsize=8)
    a = ax[2][0]
    a.plot(t, [r["p50_ms"] for r in rows], label="p50", color="#3b7dd8")
    a.plot(t, [r["p99_ms"] for r in rows], label="p99", color="#e07b39")
    a.set_yscale("log")
    a.set_ylabel("latency, ms (log)")
    a.set_xlabel("minutes")
    a.legend(fontsize=8)
    a = ax[2][1]
    a.plot(t, [r["live_decision_keys"] for r in rows], label="decision keys asked in the last 30 s", color="#3b7dd8")
    a.plot(t, [r["mismatches"] for r in rows], label="responses unlike Keycloak's table", color="#d04a3a")
    a.set_xlabel("minutes")
    a.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main():
    t_begin = time.time()
    for name in ("wrk",):
        if not shutil.which(name):
            raise SoakError(f"'{name}' is missing (Debian: apt-get install wrk; scripts/soak.sh installs it as root)")
    if not os.access(ENVOY, os.X_OK):
        raise SoakError(f"{os.path.relpath(ENVOY, ROOT)} is missing: scripts/stack.sh install")
    if not os.path.exists(WASM) or os.path.getsize(WASM) == 0:
        raise SoakError("dist/keycloak_pep.wasm is missing: make wasm")
    try:
        import yaml  # noqa: F401
    except ImportError:
        raise SoakError("PyYAML is missing from the venv (scripts/soak.sh installs it)")
    busy = [f"{p} ({what})" for p, what in PORTS.items() if port_in_use(p)]
    if busy:
        raise SoakError(f"ports already in use by something else: {', '.join(busy)}")
    os.makedirs(RUN, exist_ok=True)
    os.makedirs(RESULTS, exist_ok=True)
    rng = random.Random(SEED)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    say(f"{SECONDS} s of load, {USERS} users, ~{RPS} rps over {CONNECTIONS} connections, access tokens "
        f"{TOKEN_LIFESPAN} s, Envoy --concurrency {WORKERS}, seed {SEED}")

    # the module as it is now (a rebuild during the run changes nothing here)
    wasm_copy = os.path.join(RUN, "keycloak_pep.wasm")
    shutil.copyfile(WASM, wasm_copy)
    wasm_sha = hashlib.sha256(open(wasm_copy, "rb").read()).hexdigest()

    kc = start_keycloak()
    echo = Proc("echo", [sys.executable, "-u", os.path.join(ROOT, "scripts", "echo_upstream.py"), str(ECHO_PORT)])
    wait_until("the echo upstream", lambda: ok(f"http://127.0.0.1:{ECHO_PORT}/healthz"), 20, echo)

    tokens = Tokens(USERS)
    pool = ThreadPoolExecutor(8)
    t0 = time.time()
    tokens.fetch_all(pool)
    say(f"{USERS} users logged in (password grant, demo-cli) in {time.time() - t0:.0f} s")
    expiring = [tokens.make(u, password_grant(username(u), "soak-expiring")) for u in range(0, min(USERS, 200), 4)]
    tokens.retired.extend(expiring)

    tokens.freshen(pool, TOKEN_LIFESPAN / 2)
    by_class = {c: [] for c in CLASSES}
    for u in range(USERS):
        if len(by_class[user_class(u)]) < 2:
            by_class[user_class(u)].append(tokens.cur[u].raw)
    t0 = time.time()
    table, dropped, asked = decision_table(by_class)
    say(f"Keycloak's decision table: {len(table)} (client, class, resource, scopes) entries from {asked} UMA "
        f"grants in {time.time() - t0:.1f} s" + (f"; dropped shapes Keycloak reads two ways: {sorted(dropped)}"
                                                 if dropped else ""))
    for client in SECRETS:
        rows = sorted({(k[2], k[3], k[4]) for k in table if k[0] == client})
        for res, scopes, mode in rows:
            say(f"  {client:<21} {res} {list(scopes)} {mode}: " +
                " ".join(f"{c}={'allow' if table[(client, c, res, scopes, mode)] else 'deny'}" for c in CLASSES))
    shapes = [s for s in SHAPES if s[1] not in dropped]
    SHAPES[:] = shapes
    cdf, total = [], 0
    for s in SHAPES:
        total += s[0]
        cdf.append(total)
    shapes_cdf = [c / total for c in cdf]
    user_order = list(range(USERS))
    rng.shuffle(user_order)
    user_cdf = zipf_cdf(USERS, 0.9)

    cfg, plugin = envoy_config(wasm_copy)
    config_path = os.path.join(RUN, "envoy.json")
    with open(config_path, "w") as f:
        json.dump(cfg, f, indent=1)
    envoy = Proc("envoy", [ENVOY, "-c", config_path, "--disable-hot-restart", "--base-id", str(BASE_ID),
                           "--concurrency", str(WORKERS), "--log-level", "warning"])
    wait_until("Envoy /ready", lambda: ok(f"http://127.0.0.1:{ENVOY_ADMIN}/ready"), 60, envoy)
    owner = next(u for u in range(USERS) if user_class(u) == "owner")

    def filter_ready():
        try:
            c = http.client.HTTPConnection("127.0.0.1", ENVOY_PORT, timeout=5)
            c.request("GET", "/account/1", headers={"Host": HOSTS["unanimous"],
                                                     "Authorization": f"Bearer {tokens.cur[owner].raw}"})
            s = c.getresponse().status
            c.close()
            return s == 200
        except OSError:
            return False

    wait_until("the filter's first allowed request", filter_ready, 60, envoy)
    # the filter's start-up fetches (keys, PATs, path bindings) settle: the call counter stays still 2 s
    last, still = -1, time.time()
    deadline = time.time() + 60
    while time.time() < deadline:
        n = envoy_stats().get("cluster.keycloak.upstream_rq_total", 0)
        if n != last:
            last, still = n, time.time()
        elif time.time() - still >= 2:
            break
        time.sleep(0.25)

    t0 = time.time()
    tokens.freshen(pool, REFRESH_MARGIN + ROUND)
    tokens.refreshed = tokens.failed = tokens.logins = 0
    say(f"tokens fresh ({time.time() - t0:.0f} s of refreshes before the load)")
    garbage = garbage_tokens(tokens.cur[owner].raw, rng)
    s0 = envoy_stats()
    rss0 = rss_mb(envoy.pid)
    wasm_stats0 = {k: v for k, v in s0.items() if k.startswith("wasm.")}
    say(f"Envoy ready: RSS {rss0} MB; wasm runtime stats {wasm_stats0}")

    load_start = time.time()
    tokens.schedule(load_start, rng)
    refresher = threading.Thread(target=tokens.run, args=(pool,), daemon=True)
    refresher.start()

    delay_ms = max(1, round(1000 * CONNECTIONS / RPS))
    per_thread = int(ROUND * RPS / CONNECTIONS * 2) + 20
    bound = Bound()
    rows, mismatches, mismatch_total = [], [], 0
    totals = {"checked": 0, "by_status": {}, "by_auth": {}, "socket_errors": 0, "lost": 0}
    prev = s0
    prev_t = load_start
    cum_calls = cum_bound = 0
    worst_excess = None
    kc_calls0 = s0.get("cluster.keycloak.upstream_rq_total", 0)
    csv_path = os.path.join(RESULTS, f"soak-{stamp}.csv")
    columns = ["t_s", "interval_s", "requests", "rps", "s200", "s302", "s401", "s403", "s_other", "mismatches",
               "socket_errors", "p50_ms", "p99_ms", "envoy_rss_mb", "envoy_heap_mb", "wasm_memory_mb", "cache_slots_in_use", "kc_calls",
               "kc_calls_per_s", "kc_bound", "kc_bound_per_s", "kc_token_calls_per_s", "kc_resource_set_calls",
               "kc_permission_calls", "kc_certs_calls", "cache_hit", "cache_miss", "cache_coalesced",
               "tokens_refreshed", "valid_tokens", "expired_tokens", "live_decision_keys", "wasm_vm_created",
               "wasm_vm_active", "envoy_alive"]
    csv = open(csv_path, "w")
    csv.write(",".join(columns) + "\n")
    envoy_died = False
    rnd = 0
    try:
        while time.time() - load_start < SECONDS:
            rnd += 1
            plan, n_valid, n_expired = build_round(rng, tokens, garbage, shapes_cdf, user_cdf, user_order,
                                                   per_thread)
            refreshed_before = tokens.refreshed
            w = run_wrk(ROUND, delay_ms)
            now = time.time()
            counts = {"s200": 0, "s302": 0, "s401": 0, "s403": 0, "s_other": 0}
            bound_calls = 0
            mism_round = 0
            events = []
            for tid, specs in plan.items():
                path = os.path.join(ROUND_DIR, f"log-{tid}.txt")
                answered = 0
                last_t = int(now)
                if os.path.exists(path):
                    with open(path) as f:
                        for line in f:
                            parts = line.split()
                            if len(parts) != 4:
                                continue
                            seq, status, flag, t = int(parts[0]), int(parts[1]), parts[2], int(parts[3])
                            if seq < 0:
                                totals["lost"] += 1
                                continue
                            answered += 1
                            last_t = t
                            events.append((t, tid, seq, status, flag))
                # the request in flight when wrk stopped may still have reached Keycloak
                events.append((last_t, tid, answered, None, None))
            events.sort(key=lambda e: (e[0], e[1], e[2]))
            for t, tid, seq, status, flag in events:
                specs = plan[tid]
                shape, enf, method, path, auth, info = specs[seq % len(specs)]
                cls = user_class(info[1]) if auth == "valid" else None
                exp_status, exp_flag, needs, verdict = expect(shape, auth, table, cls)
                bound_calls += bound.request(shape, enf, path, auth, info[2], verdict, needs, exp_flag, t)
                if status is None:
                    continue
                totals["checked"] += 1
                key = f"s{status}" if f"s{status}" in counts else "s_other"
                counts[key] += 1
                totals["by_status"][status] = totals["by_status"].get(status, 0) + 1
                totals["by_auth"][auth] = totals["by_auth"].get(auth, 0) + 1
                good = status == exp_status and (flag == exp_flag or (exp_flag == "-" and flag not in "sux"))
                if not good:
                    mism_round += 1
                    if len(mismatches) < 200:
                        mismatches.append({"round": rnd, "t": t - int(load_start), "shape": shape[1], "enforcer": enf,
                                           "method": method, "path": path, "auth": auth,
                                           "garbage_kind": info[1] if auth == "garbage" else None,
                                           "user_class": cls, "expected": [exp_status, exp_flag],
                                           "got": [status, flag]})
            mismatch_total += mism_round
            socket_errors = w["connect"] + w["read"] + w["write"]
            totals["socket_errors"] += socket_errors
            s = envoy_stats()
            alive = envoy.alive()
            if not alive:
                envoy_died = True
            rss = rss_mb(envoy.pid) if alive else 0.0
            heap = envoy_heap_mb() if alive else 0.0
            interval = now - prev_t
            d = lambda k: s.get(k, 0) - prev.get(k, 0)
            kc_calls = d("cluster.keycloak.upstream_rq_total")
            cum_calls += kc_calls
            cum_bound += bound_calls
            excess = cum_calls - (cum_bound + Bound.background(now - load_start))
            worst_excess = excess if worst_excess is None else max(worst_excess, excess)
            row = {"t_s": round(now - load_start, 1), "interval_s": round(interval, 2), "requests": sum(counts.values()),
                   "rps": round(sum(counts.values()) / interval, 1), **counts, "mismatches": mism_round,
                   "socket_errors": socket_errors, "p50_ms": round(w["p50_us"] / 1000, 2),
                   "p99_ms": round(w["p99_us"] / 1000, 2), "envoy_rss_mb": rss, "envoy_heap_mb": heap,
                   "wasm_memory_mb": round(s.get("wasmcustom.kcpep.wasm.memory_bytes", 0) / 1048576, 1),
                   "cache_slots_in_use": s.get("wasmcustom.kcpep.cache.entries", 0), "kc_calls": kc_calls,
                   "kc_calls_per_s": round(kc_calls / interval, 2), "kc_bound": bound_calls,
                   "kc_bound_per_s": round((bound_calls + Bound.background(interval) - Bound.background(0)) / interval, 2),
                   "kc_token_calls_per_s": round(d("wasmcustom.kcpep.keycloak.calls.token") / interval, 2),
                   "kc_resource_set_calls": d("wasmcustom.kcpep.keycloak.calls.resource_set"),
                   "kc_permission_calls": d("wasmcustom.kcpep.keycloak.calls.permission"),
                   "kc_certs_calls": d("wasmcustom.kcpep.keycloak.calls.certs"),
                   "cache_hit": d("wasmcustom.kcpep.cache.hit"), "cache_miss": d("wasmcustom.kcpep.cache.miss"),
                   "cache_coalesced": d("wasmcustom.kcpep.cache.coalesced"),
                   "tokens_refreshed": tokens.refreshed - refreshed_before, "valid_tokens": n_valid,
                   "expired_tokens": n_expired, "live_decision_keys": bound.live_keys(int(now)),
                   "wasm_vm_created": s.get("wasm.envoy.wasm.runtime.v8.created", -1),
                   "wasm_vm_active": s.get("wasm.envoy.wasm.runtime.v8.active", -1), "envoy_alive": int(alive)}
            rows.append(row)
            csv.write(",".join(str(row[c]) for c in columns) + "\n")
            csv.flush()
            say(f"t={row['t_s']:>5.0f}s {row['rps']:>6.1f} rps  200:{counts['s200']} 302:{counts['s302']} "
                f"401:{counts['s401']} 403:{counts['s403']} other:{counts['s_other']}  unlike Keycloak: {mism_round}  "
                f"RSS {rss} MB (heap {heap}, wasm {row['wasm_memory_mb']})  slots {row['cache_slots_in_use']}  Keycloak {row['kc_calls_per_s']}/s "
                f"(bound {row['kc_bound_per_s']}/s)  p50 {row['p50_ms']} ms p99 {row['p99_ms']} ms")
            prev, prev_t = s, now
            # pace the next round towards RPS: each connection waits delay_ms, then its request takes
            # the rest of its turn
            if row["rps"] > 0:
                turn_ms = 1000 * CONNECTIONS / row["rps"]
                delay_ms = int(min(1000, max(1, delay_ms + 0.7 * (1000 * CONNECTIONS / RPS - turn_ms))))
            if not alive:
                say("Envoy exited: stopping the load")
                break
    finally:
        csv.close()
        tokens.stop.set()

    # ------------------------------------------------------------ the verdict
    elapsed = time.time() - load_start
    final = prev
    log_text = open(envoy.log_path, errors="replace").read()
    crash_lines = [l for l in log_text.splitlines()
                   if re.search(r"panicked|Uncaught|VM failed|\[critical\]|Segmentation|wasm.*(crash|fail)", l, re.I)
                   and "kcpep dry-run" not in l]
    created0 = wasm_stats0.get("wasm.envoy.wasm.runtime.v8.created")
    created1 = final.get("wasm.envoy.wasm.runtime.v8.created")
    active0 = wasm_stats0.get("wasm.envoy.wasm.runtime.v8.active")
    active1 = final.get("wasm.envoy.wasm.runtime.v8.active")
    after = [r for r in rows if r["t_s"] >= WARMUP]
    rss_first = after[0]["envoy_rss_mb"] if after else None
    rss_last = rows[-1]["envoy_rss_mb"] if rows else None
    rss_max = max((r["envoy_rss_mb"] for r in after), default=None)
    growth = (rss_last - rss_first) / rss_first if after and len(after) > 1 and rss_first else None
    kc_total = final.get("cluster.keycloak.upstream_rq_total", 0) - kc_calls0
    bg = Bound.background(elapsed)
    bound_total = cum_bound + bg
    per_endpoint = {e: final.get(f"wasmcustom.kcpep.keycloak.calls.{e}", 0) - s0.get(f"wasmcustom.kcpep.keycloak.calls.{e}", 0)
                    for e in ("token", "resource_set", "permission", "certs", "discovery")}
    hits = final.get("wasmcustom.kcpep.cache.hit", 0) - s0.get("wasmcustom.kcpep.cache.hit", 0)
    misses = final.get("wasmcustom.kcpep.cache.miss", 0) - s0.get("wasmcustom.kcpep.cache.miss", 0)
    keycloak_errors = {k: final.get(f"wasmcustom.kcpep.keycloak.{k}", 0) - s0.get(f"wasmcustom.kcpep.keycloak.{k}", 0)
                       for k in ("errors", "timeouts")}
    criteria = [
        ("every response as Keycloak's policies imply",
         mismatch_total == 0 and totals["checked"] > 0 and totals["socket_errors"] == 0 and totals["lost"] == 0,
         f"{totals['checked']} responses checked, {mismatch_total} unlike Keycloak's table, "
         f"{totals['socket_errors']} socket errors"),
        ("no crash or VM restart",
         not envoy_died and not crash_lines and created0 is not None and created0 == created1 and active0 == active1,
         f"Envoy alive: {not envoy_died}; wasm.envoy.wasm.runtime.v8.created {created0} -> {created1}, "
         f"active {active0} -> {active1}; crash lines in the Envoy log: {len(crash_lines)}"),
        ("Envoy RSS after the first minute grows < 5 %",
         growth is not None and growth < RSS_LIMIT,
         f"{rss_first} MB at {after[0]['t_s'] if after else '-'} s -> {rss_last} MB at the end "
         f"({'n/a' if growth is None else f'{growth * 100:+.2f} %'}; max {rss_max} MB)"),
        ("Keycloak calls stay under the bound",
         kc_total <= bound_total and (worst_excess is None or worst_excess <= 0),
         f"{kc_total} calls = {kc_total / elapsed:.1f}/s; bound {bound_total:.0f} = {bound_total / elapsed:.1f}/s "
         f"(decisions, lookups and tickets {cum_bound}, background {bg:.0f}); worst cumulative excess at a sample: "
         f"{worst_excess}"),
    ]
    summary = {
        "seconds": round(elapsed), "rounds": rnd, "requests_checked": totals["checked"],
        "rps": round(totals["checked"] / elapsed, 1), "by_status": totals["by_status"], "by_auth": totals["by_auth"],
        "mismatches": mismatch_total, "socket_errors": totals["socket_errors"], "rss_mb_start": rss0,
        "rss_mb_after_warmup": rss_first, "rss_mb_end": rss_last, "rss_mb_max": rss_max,
        "rss_growth": None if growth is None else round(growth, 4), "keycloak_calls": kc_total,
        "keycloak_calls_per_s": round(kc_total / elapsed, 2), "bound": round(bound_total),
        "bound_per_s": round(bound_total / elapsed, 2), "keycloak_calls_by_endpoint": per_endpoint,
        "keycloak_errors": keycloak_errors, "cache_hit_ratio": round(hits / (hits + misses), 3) if hits + misses else None,
        "decision_keys": len(bound.keys_seen), "decision_key_births": bound.births, "token_rotations": tokens.refreshed,
        "rotations_per_s": round(tokens.refreshed / elapsed, 2), "refresh_failures": tokens.failed,
        "password_fallbacks": tokens.logins,
        "p50_ms_median": sorted(r["p50_ms"] for r in rows)[len(rows) // 2] if rows else None,
        "p99_ms_median": sorted(r["p99_ms"] for r in rows)[len(rows) // 2] if rows else None,
        "p99_ms_max": max((r["p99_ms"] for r in rows), default=None),
        "slots_in_use_end": rows[-1]["cache_slots_in_use"] if rows else None,
        "wasm_sha256": wasm_sha, "criteria": {name: passed for name, passed, _ in criteria},
    }
    json_path = os.path.join(RESULTS, f"soak-{stamp}.json")
    with open(json_path, "w") as f:
        json.dump({"summary": summary, "rows": rows, "mismatches": mismatches, "crash_lines": crash_lines[:20],
                   "decision_table": [{"client": k[0], "class": k[1], "resource": k[2], "scopes": list(k[3]),
                                       "mode": k[4], "allowed": v} for k, v in table.items()],
                   "dropped_shapes": sorted(dropped),
                   "config": {"seconds": SECONDS, "users": USERS, "rps": RPS, "connections": CONNECTIONS,
                              "token_lifespan": TOKEN_LIFESPAN, "seed": SEED, "workers": WORKERS,
                              "enforcers": sorted(KEPT), "shapes": [(s[0], s[1]) for s in SHAPES],
                              "keycloak": KC_VERSION}}, f, indent=1)
    png = chart(rows, os.path.join(RESULTS, f"soak-{stamp}.png"),
                f"make soak {stamp}: {USERS} users, {TOKEN_LIFESPAN} s tokens, ~{RPS} rps, Envoy --concurrency {WORKERS}")
    say(f"CSV {os.path.relpath(csv_path, ROOT)}, JSON {os.path.relpath(json_path, ROOT)}"
        + (f", plot {os.path.relpath(png, ROOT)}" if png else ""))
    for m in mismatches[:15]:
        say(f"  unlike Keycloak: {m}")
    say(f"{summary['requests_checked']} requests in {summary['seconds']} s ({summary['rps']} rps): by status "
        f"{dict(sorted(summary['by_status'].items()))}; by credential {summary['by_auth']}")
    say(f"Keycloak calls by endpoint {per_endpoint}, errors {keycloak_errors}; decision-cache hit ratio "
        f"{summary['cache_hit_ratio']}; {summary['decision_keys']} decision keys (each a token's first ask of a pair); {tokens.refreshed} token rotations "
        f"({summary['rotations_per_s']}/s, {tokens.failed} failed); latency p50 {summary['p50_ms_median']} ms, "
        f"p99 {summary['p99_ms_median']} ms (medians of the rounds; worst p99 {summary['p99_ms_max']} ms)")
    failed = 0
    for name, passed, detail in criteria:
        failed += not passed
        say(f"{'PASS' if passed else 'FAIL'}  {name}: {detail}")
    say(f"{'all criteria passed' if not failed else f'{failed} criteria failed'} "
        f"(total run time {time.time() - t_begin:.0f} s)")
    return 1 if failed else 0


def on_signal(signum, frame):
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    rc = 1
    try:
        rc = main()
    except SoakError as e:
        print(f"soak: ERROR: {e}", file=sys.stderr, flush=True)
        rc = 1
    except KeyboardInterrupt:
        rc = 130
    finally:
        cleanup()
    sys.exit(rc)
