#!/usr/bin/env python3
"""make failover: the keycloak-pep filter in front of two Keycloak nodes of one cluster sharing a
real PostgreSQL, under load, while one node is killed (-9), restarted, and then both are stopped.

Run through scripts/failover.sh (make failover), which installs what is missing and hands over the
JDK the test stack picks. Everything here is real and on 127.0.0.1, on ports of its own (never the
test stack's or the benchmark's):

  PostgreSQL 55432                 data .cache/failover/pgdata; every run copies a template made
                                       once (schema + bank-realm.json) into a fresh "keycloak"
  Keycloak node-a 8280 (mgmt 9280)  \\ one Infinispan cluster (jdbc-ping discovery in PostgreSQL,
  Keycloak node-b 8281 (mgmt 9281)  /  JGroups on 7900/7901, FD_SOCK2 on 7950/7951); both issue
                                       tokens for the issuer http://127.0.0.1:8280/realms/bank
  echo upstream 8091                scripts/echo_upstream.py
  Envoy 10200 (admin 9921)          dist/keycloak_pep.wasm, --concurrency 2, --base-id 78; its
                                       cluster "keycloak" lists both nodes (active health checks on
                                       the realm's discovery document, outlier detection, circuit
                                       breakers, slow start)

The load: users created for this run through the admin API (partial import), each with a token
of its own. "Uncached" requests each bring a (token, enforcer) pair the filter has never seen, so
the filter has to ask Keycloak; "cached" requests cycle over a small set of users seen before the
load started. The expected allow/deny of every pair comes from Keycloak itself before the load
(the UMA grant with response_mode=decision, per user and client), never from the filter.

Phases (requests are counted in the phase in which they started):
  both up        both nodes serve
  one killed     node-a got SIGKILL; it is started again after KCPEP_FAILOVER_KILL_HOLD s and the
                 phase lasts until its /health/ready answers
  recovering     node-a ready again, both serve (KCPEP_FAILOVER_PHASE_SECONDS)
  stopping       (transition) both got SIGTERM, until both processes are gone
  both down      nothing answers (KCPEP_FAILOVER_PHASE_SECONDS)
  restarting     (transition) node-b started again, until its /health/ready answers
  after outage   node-b alone serves again (KCPEP_FAILOVER_PHASE_SECONDS, longer until the first
                 correct uncached decision, up to KCPEP_FAILOVER_RECOVERY_WAIT s more)

Targets (PASS/FAIL each; exit status 1 when one fails): with one node down no 503 other than for
requests in flight at the kill; every decision as Keycloak decided; with both down cached ALLOWs
still 200 and everything else 503; recovery within 5 s (the restarted node-a answering the
filter's calls through Envoy again; the first correct uncached decision after the outage).
Prints a table and saves results/failover-<timestamp>.json. docs/failover.md explains it all.
"""

import base64
import collections
import http.client
import json
import os
import random
import re
import secrets
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

from envoy_filter import keycloak_pep_filter, shipped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, ".cache", "failover")
RUN = os.path.join(ROOT, ".run", "failover")
ENVOY = os.path.join(ROOT, ".cache", "venv", "bin", "envoy")
WASM = os.path.join(ROOT, "dist", "keycloak_pep.wasm")
REALM_DIR = os.path.join(ROOT, "envoy", "keycloak")
KC_VERSION = os.environ.get("KCPEP_KEYCLOAK_VERSION", "26.7.3")
KC_TARBALL = os.path.join(ROOT, ".cache", "keycloak", f"keycloak-quarkus-dist-{KC_VERSION}.tar.gz")
KC_STACK_DIR = os.path.join(ROOT, ".cache", "keycloak", f"keycloak-{KC_VERSION}")
KC_DIST = os.path.join(DATA, f"keycloak-{KC_VERSION}")

PG_PORT = 55432
ECHO_PORT = 8091
ENVOY_PORT, ENVOY_ADMIN = 10200, 9921
NODES = {
    "node-a": {"http": 8280, "mgmt": 9280, "jgroups": 7900},
    "node-b": {"http": 8281, "mgmt": 9281, "jgroups": 7901},
}
FD_SOCK_OFFSET = 50  # JGroups' FD_SOCK2 listens on the JGroups port + this: 7950, 7951
ISSUER_BASE = "http://127.0.0.1:8280"  # --hostname of both nodes: one issuer whichever node answers
REALM = "bank"
HOSTS = {"unanimous.bank.local": "bank-api", "affirmative.bank.local": "bank-api-affirmative"}
PERMISSION = "View Account Resource#account:view"  # what GET /account/{id} asks, in both enforcers
REQUEST_PATH = "/account/1"
# four kinds of users, as the realm's role policies read them (realm roles in the token)
ROLE_SETS = {"owner": ["account_owner"], "teller": ["bank_teller"], "both": ["bank_teller", "account_owner"],
             "plain": ["user"]}


def env_num(name, default, kind=float):
    try:
        return kind(os.environ.get(name, default))
    except ValueError:
        sys.exit(f"failover: {name} must be a number")


PHASE_SECONDS = env_num("KCPEP_FAILOVER_PHASE_SECONDS", 10)
KILL_HOLD = env_num("KCPEP_FAILOVER_KILL_HOLD", 5)
# New (token, enforcer) pairs per second: the full rate for PHASE_SECONDS in each phase that
# matters (both up, right after the kill, recovering, after the outage), a trickle while a node
# boots and while nothing can answer (every new pair costs a user made before the load).
UNCACHED_RATE = env_num("KCPEP_FAILOVER_UNCACHED_RATE", 6)
TRICKLE_RATE = env_num("KCPEP_FAILOVER_TRICKLE_RATE", 1)
CACHED_RATE = env_num("KCPEP_FAILOVER_CACHED_RATE", 30)
CACHED_USERS = env_num("KCPEP_FAILOVER_CACHED_USERS", 40, int)
KC_READY_TIMEOUT = env_num("KC_READY_TIMEOUT", 240)
RECOVERY_TARGET_S = 5.0
# The enforcers' callout timeout: 5000, what docs/operations.md recommends in front of a
# cluster (above Infinispan's pause after a node crash); 0 keeps the enforcers' own (2000).
TIMEOUT_MS = env_num("KCPEP_FAILOVER_TIMEOUT_MS", 5000, int)
RECOVERY_WAIT = env_num("KCPEP_FAILOVER_RECOVERY_WAIT", 30)
RECOVERY_WAIT_RATE = 2
UNCACHED_WORKERS, CACHED_WORKERS = 6, 3

T0 = time.monotonic()


def say(msg):
    print(f"failover: [{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def die(msg):
    raise Failure(msg)


class Failure(Exception):
    pass


# ------------------------------------------------------------------ processes


class Proc:
    """A process of ours in a session of its own (pid == process group), its output in
    .run/failover/<name>.log, its pid in <name>.pid (scripts/failover.sh's trap reads those if this
    driver dies without cleaning up)."""

    registry = []

    def __init__(self, name, argv, env=None, marker=None, stop_signal=signal.SIGTERM, group=True, append=False):
        os.makedirs(RUN, exist_ok=True)
        self.name, self.stop_signal, self.group = name, stop_signal, group
        self.log_path = os.path.join(RUN, f"{name}.log")
        self.log = open(self.log_path, "a" if append else "w")
        self.log.write(f"=== {time.strftime('%F %T')} starting {name}: {os.path.basename(argv[0])}\n")
        self.log.flush()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=ROOT, start_new_session=True)
        self.pid = self.proc.pid
        self.pidfile = os.path.join(RUN, f"{name}.pid")
        with open(self.pidfile, "w") as f:
            f.write(f"{self.pid} {'group' if group else 'pid'} {stop_signal.name} {marker or os.path.basename(argv[0])}\n")
        Proc.registry.append(self)

    def alive(self):
        return self.proc.poll() is None

    def _signal(self, sig):
        try:
            if self.group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill9(self):
        """SIGKILL, no warning: what a crashed node or host looks like."""
        self._signal(signal.SIGKILL)
        self.proc.wait()
        self._reap_group()
        self._forget()

    def terminate(self):
        if self.alive():
            self._signal(self.stop_signal)

    def wait_exit(self, timeout):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            say(f"{self.name} still running {timeout:.0f} s after {self.stop_signal.name}: SIGKILL")
            self._signal(signal.SIGKILL)
            self.proc.wait()
        self._reap_group()
        self._forget()

    def stop(self, timeout=30):
        self.terminate()
        self.wait_exit(timeout)

    def _reap_group(self):
        # whatever else is left in the group (kc.sh exec's java, so normally nothing)
        if self.group:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def _forget(self):
        if os.path.exists(self.pidfile):
            os.remove(self.pidfile)
        if self in Proc.registry:
            Proc.registry.remove(self)
        if not self.log.closed:
            self.log.close()

    @classmethod
    def stop_all(cls):
        for p in reversed(list(cls.registry)):
            try:
                p.stop(20)
            except Exception as e:  # cleanup goes on with the others
                print(f"failover: stopping {p.name}: {e}", file=sys.stderr)


def port_in_use(port):
    import socket
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_until(what, check, timeout, interval=0.1, proc=None):
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return time.monotonic()
        if proc is not None and not proc.alive():
            tail = open(proc.log_path, errors="replace").read().splitlines()[-30:]
            die(f"{proc.name} exited while waiting for {what}; last lines of {proc.log_path}:\n  " + "\n  ".join(tail))
        if time.monotonic() > deadline:
            extra = f" (log: {proc.log_path})" if proc is not None else ""
            die(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def call(method, url, headers=None, body=None, timeout=10):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, http.client.HTTPException):
        return 0, b""


def form(d):
    return urllib.parse.urlencode(d).encode()


# ------------------------------------------------------------------ PostgreSQL


class Postgres:
    """Debian's PostgreSQL, run as the postgres system user when we are root (it refuses root),
    listening on 127.0.0.1:55432 only (no Unix socket). The cluster in .cache/failover/pgdata is
    kept between runs; the database "keycloak" is created afresh for every run. fsync is off: the
    data is thrown away and the disk is not what this harness measures."""

    def __init__(self):
        self.bin = self._find_bin()
        self.data = os.path.join(DATA, "pgdata")
        self.superpass_file = os.path.join(DATA, "pg-superuser.secret")
        self.as_user = []
        if os.geteuid() == 0:
            try:
                import pwd
                pw = pwd.getpwnam("postgres")
            except KeyError:
                die("running as root, and there is no 'postgres' system user to run PostgreSQL as "
                    "(Debian's postgresql package creates it)")
            self.uid, self.gid = pw.pw_uid, pw.pw_gid
            self.as_user = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]
        self.proc = None

    @staticmethod
    def _find_bin():
        explicit = os.environ.get("KCPEP_PG_BIN")
        cands = [explicit] if explicit else [f"/usr/lib/postgresql/{v}/bin" for v in
                                             sorted((d for d in os.listdir("/usr/lib/postgresql") if d.isdigit()),
                                                    key=int, reverse=True)] if os.path.isdir("/usr/lib/postgresql") else []
        for c in cands:
            if os.path.exists(os.path.join(c, "postgres")) and os.path.exists(os.path.join(c, "initdb")):
                return c
        die("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (Debian: apt-get install "
            "postgresql; scripts/failover.sh does it when run as root), or set KCPEP_PG_BIN")

    def _own(self, path):
        if self.as_user:
            os.chown(path, self.uid, self.gid)

    def init(self):
        if os.path.exists(os.path.join(self.data, "PG_VERSION")) and os.path.exists(self.superpass_file):
            return
        shutil.rmtree(self.data, ignore_errors=True)
        os.makedirs(self.data, mode=0o700)
        self._own(self.data)
        os.chmod(self.data, 0o700)
        password = secrets.token_urlsafe(24)
        fd = os.open(self.superpass_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password)
        say(f"initdb {os.path.relpath(self.data, ROOT)}")
        # initdb reads the superuser's password from a file it can open as the postgres user
        pwfile = os.path.join(DATA, ".pg-initdb-password")
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
        self._own(pwfile)
        try:
            r = subprocess.run(self.as_user + [os.path.join(self.bin, "initdb"), "-D", self.data, "-U", "postgres",
                                               f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8",
                                               "--locale=C.UTF-8"], text=True, capture_output=True)
        finally:
            os.remove(pwfile)
        if r.returncode != 0:
            die(f"initdb failed: {r.stderr.strip()[-500:]}")

    def start(self):
        self.init()
        if port_in_use(PG_PORT):
            die(f"port {PG_PORT} (PostgreSQL) is already in use")
        self.proc = Proc("postgres", self.as_user + [
            os.path.join(self.bin, "postgres"), "-D", self.data, "-c", f"port={PG_PORT}",
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=", "-c", "fsync=off",
            "-c", "synchronous_commit=off", "-c", "full_page_writes=off", "-c", "max_connections=200"],
            marker="postgres", stop_signal=signal.SIGINT, group=False)
        wait_until("PostgreSQL", lambda: self.sql("SELECT 1", check=False).returncode == 0, 30, 0.2, self.proc)

    def sql(self, script, check=True, db="postgres"):
        env = dict(os.environ, PGPASSWORD=open(self.superpass_file).read().strip(), PGCONNECT_TIMEOUT="3")
        r = subprocess.run([os.path.join(self.bin, "psql"), "-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres",
                            "-d", db, "-v", "ON_ERROR_STOP=1", "-q", "-X", "-At"],
                           input=script, text=True, capture_output=True, env=env)
        if check and r.returncode != 0:
            die(f"psql failed: {r.stderr.strip()[-500:]}")
        return r

    def keycloak_role(self, password):
        # the password travels on psql's stdin, never on a command line
        self.sql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'keycloak') THEN "
                 "CREATE ROLE keycloak LOGIN; END IF; END $$;\n"
                 f"ALTER ROLE keycloak PASSWORD '{password}';\n")

    def empty_database(self, name):
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);\nCREATE DATABASE {name} OWNER keycloak;\n")

    def database_from_template(self, name, template):
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE);\n"
                 f"CREATE DATABASE {name} OWNER keycloak TEMPLATE {template};\n")
        # no member of the template's cluster is alive: Keycloak's split-brain check must not
        # find one of them registered as a coordinator
        self.sql("DELETE FROM jgroups_ping;\n", db=name)

    def stop(self):
        if self.proc:
            self.proc.stop(30)


# ------------------------------------------------------------------ Keycloak


def policies_jar_bytes():
    """The realm's JavaScript policies as a provider jar: what scripts/policies-jar.py writes for
    scripts/stack.sh and the compose stack."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "kcpep-policies.jar")
        subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "policies-jar.py"),
                        os.path.join(REALM_DIR, "policies"), out], check=True)
        with open(out, "rb") as fh:
            return fh.read()


BUILD_OPTIONS = ["--db=postgres", "--health-enabled=true", "--features=scripts"]


def prepare_keycloak(java_home):
    """A copy of the distribution of our own, built for PostgreSQL with health checks (never the
    test stack's installation, which runs start-dev); rebuilt only when the options or the
    policies change. Then one home per node (hard links of that build, data/ of their own)."""
    jar = policies_jar_bytes()
    import hashlib
    stamp = json.dumps({"options": BUILD_OPTIONS, "policies": hashlib.sha256(jar).hexdigest()})
    stamp_file = os.path.join(KC_DIST, ".kcpep-failover-build")
    if not (os.path.exists(stamp_file) and open(stamp_file).read() == stamp):
        shutil.rmtree(KC_DIST, ignore_errors=True)
        os.makedirs(DATA, exist_ok=True)
        if os.path.exists(KC_TARBALL):
            say(f"extracting {os.path.relpath(KC_TARBALL, ROOT)} into {os.path.relpath(DATA, ROOT)}")
            subprocess.run(["tar", "xzf", KC_TARBALL, "-C", DATA], check=True)
        elif os.path.exists(os.path.join(KC_STACK_DIR, "bin", "kc.sh")):
            say(f"copying {os.path.relpath(KC_STACK_DIR, ROOT)} (no tarball) into {os.path.relpath(DATA, ROOT)}")
            shutil.copytree(KC_STACK_DIR, KC_DIST, symlinks=True, ignore=shutil.ignore_patterns("data"))
        else:
            die(f"Keycloak {KC_VERSION} is not installed: run scripts/stack.sh install")
        os.makedirs(os.path.join(KC_DIST, "providers"), exist_ok=True)
        with open(os.path.join(KC_DIST, "providers", "kcpep-policies.jar"), "wb") as f:
            f.write(jar)
        say(f"kc.sh build {' '.join(BUILD_OPTIONS)} (once; about a minute)")
        r = subprocess.run([os.path.join(KC_DIST, "bin", "kc.sh"), "build"] + BUILD_OPTIONS,
                           env=dict(os.environ, JAVA_HOME=java_home), capture_output=True, text=True)
        if r.returncode != 0:
            die(f"kc.sh build failed:\n{(r.stdout + r.stderr)[-2000:]}")
        with open(stamp_file, "w") as f:
            f.write(stamp)
    for name in NODES:
        home = os.path.join(DATA, name)
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(KC_DIST, home, symlinks=True, copy_function=os.link, ignore=shutil.ignore_patterns("data"))
    imp = os.path.join(DATA, "node-a", "data", "import")
    os.makedirs(imp)
    shutil.copy(os.path.join(REALM_DIR, "bank-realm.json"), imp)
    return stamp


TEMPLATE_DB = "keycloak_template"
TEMPLATE_STAMP = os.path.join(DATA, "db-template.json")
ADMIN_SECRET = os.path.join(DATA, "db-template-admin.secret")


def template_stamp(build_stamp):
    import hashlib
    realm = open(os.path.join(REALM_DIR, "bank-realm.json"), "rb").read()
    return json.dumps({"keycloak": KC_VERSION, "build": build_stamp, "realm": hashlib.sha256(realm).hexdigest()})


def prepare_database(pg, java_home, db_password, build_stamp):
    """The schema and the realm, once: a template database made by one start of node-a with
    --import-realm (Keycloak creates its schema on an empty database), kept until Keycloak, its
    build or bank-realm.json change. Every run gets a fresh copy of it as "keycloak". Returns the
    bootstrap admin's password (kept with the template, mode 0600; never printed)."""
    stamp = template_stamp(build_stamp)
    valid = (os.path.exists(TEMPLATE_STAMP) and open(TEMPLATE_STAMP).read() == stamp and os.path.exists(ADMIN_SECRET)
             and pg.sql(f"SELECT 1 FROM pg_database WHERE datname = '{TEMPLATE_DB}'").stdout.strip() == "1")
    if not valid:
        if os.path.exists(TEMPLATE_STAMP):
            os.remove(TEMPLATE_STAMP)
        admin_password = secrets.token_urlsafe(24)
        fd = os.open(ADMIN_SECRET, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(admin_password)
        pg.empty_database(TEMPLATE_DB)
        node = Node("node-a", java_home, db_password, admin_password, db=TEMPLATE_DB, log_name="node-a-template")
        t = time.monotonic()
        node.start(import_realm=True)
        node.wait_ready("node-a on the template database (schema created, realm imported)")
        node.proc.stop(60)
        with open(TEMPLATE_STAMP, "w") as f:
            f.write(stamp)
        say(f"template database made in {time.monotonic() - t:.1f} s (schema, realm {REALM}); kept for later runs")
    pg.database_from_template("keycloak", TEMPLATE_DB)
    return open(ADMIN_SECRET).read().strip()


class Node:
    def __init__(self, name, java_home, db_password, admin_password, db="keycloak", log_name=None):
        self.name, self.ports, self.db, self.log_name = name, NODES[name], db, log_name or name
        self.home = os.path.join(DATA, name)
        self.java_home, self.db_password, self.admin_password = java_home, db_password, admin_password
        self.url = f"http://127.0.0.1:{self.ports['http']}"
        self.ready_url = f"http://127.0.0.1:{self.ports['mgmt']}/health/ready"
        self.proc = None
        self.starts = 0

    def start(self, import_realm=False):
        for p in (self.ports["http"], self.ports["mgmt"], self.ports["jgroups"], self.ports["jgroups"] + FD_SOCK_OFFSET):
            if port_in_use(p):
                die(f"port {p} ({self.name}) is already in use")
        env = dict(os.environ, JAVA_HOME=self.java_home, KC_DB_PASSWORD=self.db_password,
                   JAVA_OPTS_KC_HEAP="-Xms256m -Xmx768m",
                   JAVA_OPTS_APPEND=f"-Djgroups.fd.port-offset={FD_SOCK_OFFSET} -Djgroups.port_range=0")
        if import_realm:
            env.update(KC_BOOTSTRAP_ADMIN_USERNAME="admin", KC_BOOTSTRAP_ADMIN_PASSWORD=self.admin_password)
        argv = [os.path.join(self.home, "bin", "kc.sh"), "start", "--optimized",
                f"--db-url=jdbc:postgresql://127.0.0.1:{PG_PORT}/{self.db}", "--db-username=keycloak",
                "--http-enabled=true", "--http-host=127.0.0.1", f"--http-port={self.ports['http']}",
                "--http-management-host=127.0.0.1", f"--http-management-port={self.ports['mgmt']}",
                f"--hostname={ISSUER_BASE}",
                "--cache=ispn", "--cache-stack=jdbc-ping",
                "--cache-embedded-network-bind-address=127.0.0.1",
                f"--cache-embedded-network-bind-port={self.ports['jgroups']}",
                f"--spi-cache-embedded--default--node-name={self.name}"]
        if import_realm:
            argv.append("--import-realm")
        self.starts += 1
        self.proc = Proc(self.log_name, argv, env=env, marker=f"kc.home.dir={self.home}", append=self.starts > 1)

    def ready(self, timeout=2):
        return call("GET", self.ready_url, timeout=timeout)[0] == 200

    def wait_ready(self, what=None, also=None):
        def check():
            if also:
                also()
            return self.ready()
        return wait_until(what or f"{self.name} /health/ready", check, KC_READY_TIMEOUT, 0.1, self.proc)

    def token_url(self):
        return f"{self.url}/realms/{REALM}/protocol/openid-connect/token"


def cluster_members(node):
    """Members of the last cluster view this node logged (ISPN000094)."""
    try:
        text = open(os.path.join(RUN, f"{node.name}.log"), errors="replace").read()
    except OSError:
        return None
    views = re.findall(r"ISPN000094: Received new cluster view for channel ISPN: \[[^\]]*\] \((\d+)\) \[([^\]]*)\]", text)
    if not views:
        return None
    return [m.split("(")[0].strip() for m in views[-1][1].split(",")]


# ------------------------------------------------------------------ users, tokens, the expected table


def jwt_claims(tok):
    payload = tok.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


class Realm:
    def __init__(self, nodes, admin_password):
        self.nodes, self.admin_password = nodes, admin_password

    def admin_token(self, node):
        s, raw = call("POST", f"{node.url}/realms/master/protocol/openid-connect/token",
                      body=form({"grant_type": "password", "client_id": "admin-cli", "username": "admin",
                                 "password": self.admin_password}), timeout=60)
        if s != 200:
            die(f"no admin token from {node.name}: HTTP {s}")
        return json.loads(raw)["access_token"]

    def admin(self, node, tok, method, path, body=None):
        return call(method, f"{node.url}/admin/realms/{REALM}{path}",
                    headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
                    body=json.dumps(body).encode() if body is not None else None, timeout=300)

    def create_users(self, names_roles):
        """One partial import, with the realm hashing passwords with one PBKDF2 iteration while
        the users are imported and log in (as bench/run.py does); the policy is put back after
        (restore_policy)."""
        node = self.nodes[0]
        tok = self.admin_token(node)
        s, raw = self.admin(node, tok, "GET", "")
        if s != 200:
            die(f"cannot read realm {REALM}: HTTP {s}")
        self.policy = json.loads(raw).get("passwordPolicy") or ""
        # PBKDF2 with one iteration: Keycloak's default for new passwords is Argon2, dear on 2 cores
        self.admin(node, tok, "PUT", "", {"passwordPolicy": "hashAlgorithm(pbkdf2-sha256) and hashIterations(1)"})
        users = [{"username": n, "enabled": True, "email": f"{n}@failover.bank.local", "emailVerified": True,
                  "firstName": "Failover", "lastName": n, "realmRoles": ["default-roles-bank"] + ROLE_SETS[kind],
                  "credentials": [{"type": "password", "value": "password", "temporary": False}]}
                 for n, kind in names_roles]
        s, raw = self.admin(node, tok, "POST", "/partialImport", {"ifResourceExists": "FAIL", "users": users})
        if s != 200:
            die(f"cannot import the users: HTTP {s} {raw[:300]!r}")

    def restore_policy(self):
        node = self.nodes[0]
        self.admin(node, self.admin_token(node), "PUT", "", {"passwordPolicy": self.policy})

    def user_token(self, i, name):
        node = self.nodes[i % len(self.nodes)]  # from both nodes: tokens of either must pass the filter
        for attempt in range(3):
            s, raw = call("POST", node.token_url(), body=form({"grant_type": "password", "client_id": "demo-cli",
                                                               "username": name, "password": "password"}), timeout=60)
            if s == 200:
                return json.loads(raw)["access_token"], node.name
        die(f"no token for {name} from {node.name}: HTTP {s}")

    def decision(self, i, tok, client):
        """Keycloak's own answer for this user and client: the UMA grant, response_mode=decision."""
        node = self.nodes[i % len(self.nodes)]
        s, raw = call("POST", node.token_url(), headers={"Authorization": f"Bearer {tok}"},
                      body=form({"grant_type": "urn:ietf:params:oauth:grant-type:uma-ticket", "audience": client,
                                 "permission": PERMISSION, "response_mode": "decision"}), timeout=60)
        if s == 200 and json.loads(raw).get("result") is True:
            return 200
        if s == 403:
            return 403
        die(f"Keycloak's UMA decision for the expected table: HTTP {s} {raw[:200]!r}")


# ------------------------------------------------------------------ Envoy


def enforcers_from_envoy_yaml():
    """The enforcers of envoy/envoy.yaml's plugin configuration."""
    return json.loads(shipped()["typed_config"]["config"]["configuration"]["value"])["enforcers"]


def plugin_config():
    enforcers = enforcers_from_envoy_yaml()
    out = {}
    for name in ("unanimous", "affirmative"):
        e = json.loads(json.dumps(enforcers[name]))
        e["auth-server-url"] = ISSUER_BASE
        kcpep = e.setdefault("kcpep", {})
        kcpep["cluster"] = "keycloak"
        # ALLOWs kept for the whole run (never past the token's exp), so the cached ones can be
        # served while both nodes are down; denials keep the default 5 s.
        kcpep["decision-cache"] = dict(kcpep.get("decision-cache", {}), **{"lifespan-ms": 600000})
        if TIMEOUT_MS:  # the callout timeout (0: the enforcers' own, 2000)
            kcpep["timeout-ms"] = TIMEOUT_MS
        out[name] = e
    return {"enforcers": out,
            "routes": [{"route-name": "affirmative", "enforcer": "affirmative"},
                       {"host": "unanimous.bank.local", "enforcer": "unanimous"}],
            "default": "unanimous"}


def envoy_config(plugin):
    hc_log = os.path.join(RUN, "envoy-health.jsonl")
    endpoints = [{"endpoint": {"hostname": name,
                               "address": {"socket_address": {"address": "127.0.0.1", "port_value": p["http"]}}}}
                 for name, p in NODES.items()]
    keycloak = {
        "name": "keycloak", "type": "STATIC", "connect_timeout": "0.5s", "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": "keycloak", "endpoints": [{"lb_endpoints": endpoints}]},
        # The realm's discovery document on the HTTP port, every second: a node that stops
        # answering leaves the rotation on its first failed check, a restarted one joins on its
        # first good check. Not Keycloak's /health/ready: since 26.4 its split-brain check reports the
        # survivor DOWN while the killed coordinator's row is still in the database
        # (docs/failover.md), which would take the last node out of the rotation.
        "health_checks": [{
            "timeout": "2s", "interval": "1s", "unhealthy_interval": "1s", "no_traffic_interval": "1s",
            "unhealthy_threshold": 1, "healthy_threshold": 1,
            "http_health_check": {"path": f"/realms/{REALM}/.well-known/openid-configuration"},
            "always_log_health_check_failures": True,
            "event_logger": [{"name": "envoy.health_check.event_sink.file", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.health_check.event_sinks.file.v3.HealthCheckEventFileSink",
                "event_log_path": hc_log}}],
        }],
        # Between two checks, refused or reset connections (and timeouts: 504) eject a node.
        "outlier_detection": {"consecutive_5xx": 5, "consecutive_gateway_failure": 3,
                              "enforcing_consecutive_gateway_failure": 100, "interval": "1s",
                              "base_ejection_time": "3s", "max_ejection_time": "10s", "max_ejection_percent": 50},
        # Retries are what keep a kill invisible; Envoy's default allows 3 at once per cluster.
        "circuit_breakers": {"thresholds": [{"priority": "DEFAULT", "max_connections": 1024,
                                             "max_pending_requests": 1024, "max_requests": 1024,
                                             "max_retries": 256}]},
        # No panic routing to nodes known to be down: with none healthy the callout fails at once.
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        # A node back from a restart is cold (its first answers take seconds): its share of the
        # calls grows over 10 s instead of a half at once.
        "round_robin_lb_config": {"slow_start_config": {"slow_start_window": "10s",
                                                        "min_weight_percent": {"value": 10}}},
    }
    upstream = {"name": "upstream", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "upstream", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": ECHO_PORT}}}}]}]}}
    wasm = keycloak_pep_filter(WASM, plugin)
    vhosts = [{"name": "unanimous", "domains": ["unanimous.bank.local"],
               "routes": [{"name": "unanimous", "match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]},
              {"name": "affirmative", "domains": ["affirmative.bank.local"],
               "routes": [{"name": "affirmative", "match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]
    access_log = [{"name": "envoy.access_loggers.file", "filter": {"status_code_filter": {"comparison": {
        "op": "GE", "value": {"default_value": 500, "runtime_key": "failover_access_log_min"}}}},
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
                         "path": os.path.join(RUN, "envoy-5xx.log"),
                         "log_format": {"text_format_source": {"inline_string":
                             "[%START_TIME%] %REQ(:AUTHORITY)% %RESPONSE_CODE% %RESPONSE_FLAGS% "
                             "%RESPONSE_CODE_DETAILS% %DURATION%ms\n"}}}}]
    hcm = {"@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
           "stat_prefix": "failover", "use_remote_address": True, "skip_xff_append": True,
           "normalize_path": True, "merge_slashes": True, "path_with_escaped_slashes_action": "UNESCAPE_AND_REDIRECT",
           "strip_any_host_port": True, "access_log": access_log,
           "route_config": {"name": "bank", "virtual_hosts": vhosts},
           "http_filters": [wasm, {"name": "envoy.filters.http.router", "typed_config": {
               "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]}
    return {"admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ENVOY_ADMIN}}},
            "static_resources": {
                "listeners": [{"name": "failover", "address": {"socket_address": {"address": "127.0.0.1",
                                                                                    "port_value": ENVOY_PORT}},
                               "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                               "typed_config": hcm}]}]}],
                "clusters": [keycloak, upstream]}}


def envoy_stats(prefixes):
    s, raw = call("GET", f"http://127.0.0.1:{ENVOY_ADMIN}/stats", timeout=5)
    out = {}
    for line in raw.decode(errors="replace").splitlines():
        k, _, v = line.partition(": ")
        if any(k.startswith(p) for p in prefixes) and v.strip().isdigit():
            out[k] = int(v)
    return out


def host_stats():
    """Envoy's per-host view of the keycloak cluster: {port: {rq_success, rq_error, health_flags, ...}}."""
    s, raw = call("GET", f"http://127.0.0.1:{ENVOY_ADMIN}/clusters", timeout=2)
    out = collections.defaultdict(dict)
    for line in raw.decode(errors="replace").splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "keycloak" and ":" in parts[1]:
            port = int(parts[1].rsplit(":", 1)[1])
            out[port][parts[2]] = int(parts[3]) if parts[3].isdigit() else parts[3]
    return out


# ------------------------------------------------------------------ load


class Load:
    """Threads of keep-alive HTTP/1.1 clients, paced. Every answer is recorded with its start
    and end (monotonic), kind, key and status."""

    def __init__(self, tokens, cached_keys, uncached_keys, reserve_keys=()):
        self.tokens = tokens
        self.cached_keys = cached_keys
        # the reserve is kept for the phase after the outage, so that the recovery is measured
        # even when slow start-ups used up the main pool
        self.pools = {"main": iter(uncached_keys), "reserve": iter(reserve_keys)}
        self.pool = "main"
        self.lock = threading.Lock()
        self.records = []
        self.reasons = collections.Counter()
        self.stop = threading.Event()
        self.rate = {"cached": CACHED_RATE, "uncached": UNCACHED_RATE}
        self.next_slot = {"cached": 0.0, "uncached": 0.0}
        self.exhausted_at = None
        self.threads = []

    def next_key(self, kind):
        if kind == "cached":
            return random.choice(self.cached_keys)
        with self.lock:
            key = next(self.pools[self.pool], None)
            if key is None and self.pool == "reserve":
                key = next(self.pools["main"], None)
        if key is None and self.exhausted_at is None:
            self.exhausted_at = time.monotonic()
        return key

    def one(self, conn, key):
        user, host = key
        headers = {"Host": host, "Authorization": f"Bearer {self.tokens[user]}"}
        try:
            if conn[0] is None:
                conn[0] = http.client.HTTPConnection("127.0.0.1", ENVOY_PORT, timeout=15)
            conn[0].request("GET", REQUEST_PATH, headers=headers)
            r = conn[0].getresponse()
            body = r.read()
            if r.status not in (200, 403):
                self.reasons[(r.status, body[:100].decode(errors="replace"))] += 1
            return r.status
        except (OSError, http.client.HTTPException) as e:
            if conn[0] is not None:
                conn[0].close()
            conn[0] = None
            self.reasons[(0, type(e).__name__)] += 1
            return 0

    def set_rate(self, kind, rate):
        with self.lock:
            self.rate[kind] = rate
            self.next_slot[kind] = min(self.next_slot[kind], time.monotonic() + 1 / rate)

    def take_slot(self, kind):
        """One request of this kind may start now: a shared schedule at the kind's rate, so the
        rate holds whatever the latency (up to the number of workers in flight at once)."""
        with self.lock:
            now = time.monotonic()
            if now < self.next_slot[kind]:
                return False
            # late slots are not made up for: no burst after a stall
            self.next_slot[kind] = max(self.next_slot[kind] + 1 / self.rate[kind], now - 0.5 / self.rate[kind])
            return True

    def worker(self, kind, n):
        conn = [None]
        while not self.stop.is_set():
            if not self.take_slot(kind):
                self.stop.wait(0.005)
                continue
            key = self.next_key(kind)
            if key is None:  # the pool is used up until the reserve opens
                continue
            t0 = time.monotonic()
            status = self.one(conn, key)
            self.records.append((t0, time.monotonic(), kind, key, status))

    def start(self):
        for kind, n in (("cached", CACHED_WORKERS), ("uncached", UNCACHED_WORKERS)):
            for _ in range(n):
                t = threading.Thread(target=self.worker, args=(kind, n), daemon=True)
                t.start()
                self.threads.append(t)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(20)


def probe_node(node, tok, seconds, out):
    """Keycloak's own latency on a node just restarted: UMA decisions sent straight to it (not
    through Envoy), one at a time, for `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        s, _ = call("POST", node.token_url(), headers={"Authorization": f"Bearer {tok}"},
                    body=form({"grant_type": "urn:ietf:params:oauth:grant-type:uma-ticket", "audience": "bank-api",
                               "permission": PERMISSION, "response_mode": "decision"}), timeout=10)
        out.append((t, time.monotonic() - t, s))
        time.sleep(0.25)  # paced probe, not a synchronisation


def probe_first_answer(samples):
    """When Keycloak itself first answered a direct UMA decision (monotonic), or None."""
    return next((t + l for t, l, st in samples if st in (200, 403)), None)


def probe_summary(samples, ready):
    if not samples:
        return "no probe"
    lat = sorted(l for _, l, _ in samples)
    first = probe_first_answer(samples)
    return (f"{len(samples)} direct UMA decisions, the first answered {first - ready:.2f} s after /health/ready"
            if first else f"{len(samples)} direct UMA decisions, none answered") + \
        (f", median {lat[len(lat) // 2]:.2f} s, max {lat[-1]:.2f} s, "
         f"{sum(1 for l in lat if l > (TIMEOUT_MS or 2000) / 1000)} over the filter's {(TIMEOUT_MS or 2000) / 1000:g} s timeout")


class Monitor(threading.Thread):
    """Every 0.25 s: each node's own /health/ready and Envoy's view of it (health flags, requests
    answered). Changes go to .run/failover/timeline.jsonl; the samples stay for the analysis."""

    def __init__(self, nodes):
        super().__init__(daemon=True)
        self.nodes, self.samples, self.stop = nodes, [], threading.Event()
        self.path = os.path.join(RUN, "timeline.jsonl")

    def run(self):
        last = None
        with open(self.path, "w") as f:
            while not self.stop.is_set():
                t = time.monotonic()
                ready = {n.name: bool(n.proc and n.proc.alive() and n.ready(timeout=1)) for n in self.nodes}
                hosts = host_stats()
                envoy = {n.name: {"flags": hosts.get(n.ports["http"], {}).get("health_flags"),
                                  **{k: hosts.get(n.ports["http"], {}).get(k, 0)
                                     for k in ("rq_success", "rq_error", "rq_timeout", "cx_connect_fail")}}
                         for n in self.nodes}
                self.samples.append((t, ready, envoy))
                state = (ready, {k: v["flags"] for k, v in envoy.items()})
                if state != last:
                    f.write(json.dumps({"t": round(t - T0, 3), "ready": ready, "envoy": envoy}) + "\n")
                    f.flush()
                    last = state
                self.stop.wait(0.25)

    def first(self, after, pred):
        for t, ready, envoy in self.samples:
            if t >= after and pred(ready, envoy):
                return t
        return None

    def delta(self, name, key, start, end):
        """How much a per-host counter of Envoy's grew within [start, end]."""
        inside = [e[name][key] for t, r, e in self.samples if start <= t <= end]
        before = [e[name][key] for t, r, e in self.samples if t < start]
        return (inside[-1] if inside else 0) - (before[-1] if before else (inside[0] if inside else 0))

    def not_ready_seconds(self, name, start, end, alive_check=None):
        """How long a node that was serving said DOWN on /health/ready within [start, end)."""
        total, prev = 0.0, None
        for t, ready, envoy in self.samples:
            if prev is not None and start <= prev[0] < end and not prev[1][name]:
                total += min(t, end) - prev[0]
            prev = (t, ready)
        return round(total, 1)


# ------------------------------------------------------------------ analysis

PHASES = [("both_up", "both up", False), ("one_killed", "one killed", False), ("recovering", "recovering", False),
          ("stopping", "stopping", True), ("both_down", "both down", False), ("restarting", "restarting", True),
          ("after_outage", "after outage", False)]


def phase_of(t, ev):
    bounds = [("both_up", ev["load_start"]), ("one_killed", ev["kill"]), ("recovering", ev["a_ready"]),
              ("stopping", ev["stop"]), ("both_down", ev["both_down"]), ("restarting", ev["b_launch"]),
              ("after_outage", ev["b_ready"])]
    current = None
    for name, start in bounds:
        if t >= start:
            current = name
    return current


def analyse(load, expected, cached_set, ev):
    counts = {p: {k: collections.Counter() for k in ("cached", "uncached")} for p, _, _ in PHASES}
    wrong = collections.Counter()
    other = collections.Counter()
    kill_in_flight = collections.Counter()
    after_kill_503 = 0
    down = {"cached_allow": collections.Counter(), "cached_deny": collections.Counter(),
            "uncached": collections.Counter()}
    first_ok_after_outage = None
    outage_503_after_recovery = 0
    for t0, t1, kind, key, status in load.records:
        if t0 >= ev["load_end"]:
            continue
        ph = phase_of(t0, ev)
        counts[ph][kind][status] += 1
        exp = expected[key]
        if status in (200, 403):
            if status != exp:
                wrong[(ph, kind)] += 1
        else:
            if status != 503:
                other[(ph, kind, status)] += 1
        if t0 < ev["kill"] <= t1:
            kill_in_flight[status] += 1
        if ph == "one_killed" and status == 503:
            after_kill_503 += 1
        if ph == "both_down":
            cls = "uncached" if kind == "uncached" else ("cached_allow" if exp == 200 else "cached_deny")
            down[cls][status] += 1
        if kind == "uncached" and t1 >= ev["b_ready"] and t0 >= ev["b_launch"] and status == exp:
            if first_ok_after_outage is None or t1 < first_ok_after_outage:
                first_ok_after_outage = t1
    if first_ok_after_outage is not None:
        for t0, t1, kind, key, status in load.records:
            if t0 > first_ok_after_outage and t0 < ev["load_end"] and status == 503:
                outage_503_after_recovery += 1
    return {"counts": counts, "wrong": wrong, "other": other, "kill_in_flight": kill_in_flight,
            "after_kill_503": after_kill_503, "down": down, "first_ok_after_outage": first_ok_after_outage,
            "outage_503_after_recovery": outage_503_after_recovery}


def fmt_counter(c):
    return " ".join(f"{k}:{v}" for k, v in sorted(c.items())) or "-"


def print_table(res, ev):
    starts = {"both_up": ev["load_start"], "one_killed": ev["kill"], "recovering": ev["a_ready"],
              "stopping": ev["stop"], "both_down": ev["both_down"], "restarting": ev["b_launch"],
              "after_outage": ev["b_ready"]}
    ends = {"both_up": ev["kill"], "one_killed": ev["a_ready"], "recovering": ev["stop"],
            "stopping": ev["both_down"], "both_down": ev["b_launch"], "restarting": ev["b_ready"],
            "after_outage": ev["load_end"]}
    cols = [200, 403, 503]
    print()
    print("failover: requests by status per phase (counted in the phase in which they started)")
    head = f"  {'phase':<14} {'secs':>5} | {'cached':^27} | {'uncached':^27} | wrong"
    sub = f"  {'':<14} {'':>5} | " + " ".join(f"{c:>6}" for c in cols) + f" {'other':>6} | " + \
          " ".join(f"{c:>6}" for c in cols) + f" {'other':>6} |"
    print(head)
    print(sub)
    for key, label, transition in PHASES:
        row = f"  {label + (' *' if transition else ''):<14} {ends[key] - starts[key]:5.1f} |"
        for kind in ("cached", "uncached"):
            c = res["counts"][key][kind]
            row += " " + " ".join(f"{c.get(s, 0):>6}" for s in cols)
            row += f" {sum(v for s, v in c.items() if s not in cols):>6} |"
        row += f" {sum(v for (p, _), v in res['wrong'].items() if p == key):>5}"
        print(row)
    print("  * transition, no target of its own: 'stopping' from SIGTERM to both processes gone, "
          "'restarting' from node-b's start to its /health/ready")


CLUSTER_COUNTERS = [("connect_fail", "upstream_cx_connect_fail"), ("timeout", "upstream_rq_timeout"),
                    ("retry", "upstream_rq_retry"), ("retry_ok", "upstream_rq_retry_success"),
                    ("retry_overflow", "upstream_rq_retry_overflow"), ("none_healthy", "upstream_cx_none_healthy"),
                    ("ejected", "outlier_detection.ejections_enforced_total"), ("calls", "upstream_rq_total")]
PHASE_BOUNDS = [("both_up", "load_start", "kill"), ("one_killed", "kill", "a_ready"),
                ("recovering", "a_ready", "stop"), ("stopping", "stop", "both_down"),
                ("both_down", "both_down", "b_launch"), ("restarting", "b_launch", "b_ready"),
                ("after_outage", "b_ready", "load_end")]


def cluster_per_phase(snap):
    out = {}
    for phase, start, end in PHASE_BOUNDS:
        out[phase] = {short: snap[end].get(f"cluster.keycloak.{k}", 0) - snap[start].get(f"cluster.keycloak.{k}", 0)
                      for short, k in CLUSTER_COUNTERS}
    return out


def print_cluster_per_phase(snap):
    """What Envoy saw of the filter's Keycloak calls, per phase: where 503s come from."""
    per = cluster_per_phase(snap)
    labels = dict((k, l) for k, l, _ in PHASES)
    print("failover: Envoy's keycloak cluster per phase (the filter's calls):")
    print(f"  {'phase':<14} " + " ".join(f"{short:>14}" for short, _ in CLUSTER_COUNTERS))
    for phase, _, _ in PHASE_BOUNDS:
        print(f"  {labels[phase]:<14} " + " ".join(f"{per[phase][short]:>14}" for short, _ in CLUSTER_COUNTERS))


# ------------------------------------------------------------------ main


def java_home():
    jh = os.environ.get("KCPEP_FAILOVER_JAVA_HOME") or os.environ.get("JAVA_HOME")
    if not jh or not os.access(os.path.join(jh, "bin", "java"), os.X_OK):
        die("no JDK: run through scripts/failover.sh (it picks the test stack's JDK), or set JAVA_HOME")
    return jh


def main():
    started = time.time()
    timings = {}
    for path, what in ((ENVOY, "Envoy (scripts/stack.sh install)"), (WASM, "the filter (make wasm)")):
        if not os.path.exists(path):
            die(f"{what} is missing: {path}")
    jh = java_home()
    ports = [PG_PORT, ECHO_PORT, ENVOY_PORT, ENVOY_ADMIN] + [p for n in NODES.values() for p in
                                                            (n["http"], n["mgmt"], n["jgroups"], n["jgroups"] + FD_SOCK_OFFSET)]
    busy = [p for p in ports if port_in_use(p)]
    if busy:
        die(f"ports already in use: {busy} (another failover run? scripts/failover.sh cleans up after itself)")
    os.makedirs(RUN, exist_ok=True)
    for f in os.listdir(RUN):
        if f.endswith((".log", ".jsonl", ".json", ".txt")):
            os.remove(os.path.join(RUN, f))

    say(f"Keycloak {KC_VERSION}, JAVA_HOME={jh}, filter {os.path.relpath(WASM, ROOT)} "
        f"({os.path.getsize(WASM) // 1024} KiB, {time.strftime('%F %T', time.localtime(os.path.getmtime(WASM)))})")
    t = time.monotonic()
    build_stamp = prepare_keycloak(jh)
    timings["keycloak_build_s"] = round(time.monotonic() - t, 1)

    pg = Postgres()
    pg.start()
    db_password = secrets.token_urlsafe(24)
    pg.keycloak_role(db_password)
    t = time.monotonic()
    admin_password = prepare_database(pg, jh, db_password, build_stamp)
    timings["database_s"] = round(time.monotonic() - t, 1)
    say(f"PostgreSQL {os.path.basename(os.path.dirname(pg.bin))} on 127.0.0.1:{PG_PORT}: database 'keycloak' "
        f"copied from '{TEMPLATE_DB}'")

    echo = Proc("echo", [sys.executable, "-u", os.path.join(ROOT, "scripts", "echo_upstream.py"), str(ECHO_PORT)],
                marker="echo_upstream.py")
    a, b = (Node(n, jh, db_password, admin_password) for n in NODES)
    t = time.monotonic()
    a.start()
    a.wait_ready()
    timings["node_a_start_s"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    b.start()
    b.wait_ready()
    timings["node_b_start_s"] = round(time.monotonic() - t, 1)
    wait_until("one cluster of two nodes (node-b's Infinispan view)",
               lambda: len(cluster_members(b) or []) == 2, 60, 0.2, b.proc)
    say(f"node-a ready in {timings['node_a_start_s']} s, node-b in {timings['node_b_start_s']} s; "
        f"cluster view {cluster_members(b)}")
    wait_until("echo upstream", lambda: call("GET", f"http://127.0.0.1:{ECHO_PORT}/healthz", timeout=1)[0] == 200,
               20, 0.1, echo)

    # ---- users, tokens and what Keycloak decides for each
    keys_per_user = len(HOSTS)
    boot = max(45.0, 1.5 * max(timings["node_a_start_s"], timings["node_b_start_s"]))  # a restart, estimated
    main_keys = 1.3 * (UNCACHED_RATE * 3 * PHASE_SECONDS + TRICKLE_RATE * (2 * boot + PHASE_SECONDS + 15))
    reserve_keys = 1.3 * (UNCACHED_RATE * PHASE_SECONDS + RECOVERY_WAIT_RATE * RECOVERY_WAIT)
    n_main, n_reserve = int(main_keys / keys_per_user) + 1, int(reserve_keys / keys_per_user) + 1
    kinds = list(ROLE_SETS)
    names = [(f"fo-c{i:03d}", kinds[i % len(kinds)]) for i in range(CACHED_USERS)] + \
            [(f"fo-u{i:04d}", kinds[i % len(kinds)]) for i in range(n_main + n_reserve)]
    realm = Realm([a, b], admin_password)
    t = time.monotonic()
    realm.create_users(names)
    timings["users_import_s"] = round(time.monotonic() - t, 1)
    t = time.monotonic()
    try:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(lambda iv: realm.user_token(iv[0], iv[1][0]), enumerate(names)))
    finally:
        realm.restore_policy()
    timings["tokens_s"] = round(time.monotonic() - t, 1)
    tokens = [g[0] for g in got]
    issuers = {(g[1], jwt_claims(g[0])["iss"]) for g in got}
    if len({iss for _, iss in issuers}) != 1:
        die(f"the nodes issue tokens for different issuers: {sorted(issuers)}")
    say(f"{len(names)} users imported ({timings['users_import_s']} s), a token each from both nodes "
        f"({timings['tokens_s']} s), one issuer: {next(iter(issuers))[1]}")
    t = time.monotonic()
    pairs = [(i, host) for i in range(len(names)) for host in HOSTS]
    with ThreadPoolExecutor(8) as pool:
        decided = list(pool.map(lambda p: realm.decision(p[0], tokens[p[0]], HOSTS[p[1]]), pairs))
    expected = dict(zip(pairs, decided))
    timings["expected_table_s"] = round(time.monotonic() - t, 1)
    table = collections.defaultdict(collections.Counter)
    for (i, host), d in expected.items():
        table[(names[i][1], HOSTS[host])][d] += 1
    say(f"expected table from Keycloak's UMA decisions ({len(pairs)} pairs, {timings['expected_table_s']} s): " +
        "; ".join(f"{kind}@{client} " + "/".join(f"{s}x{n}" for s, n in sorted(c.items()))
                  for (kind, client), c in sorted(table.items())))
    cached_keys = [(i, host) for i in range(CACHED_USERS) for host in HOSTS]
    uncached = [(i, host) for i in range(CACHED_USERS, len(names)) for host in HOSTS]
    random.shuffle(uncached)
    reserve = uncached[:n_reserve * keys_per_user]
    uncached = uncached[n_reserve * keys_per_user:]

    # ---- Envoy
    plugin = plugin_config()
    cfg_path = os.path.join(RUN, "envoy.json")
    with open(cfg_path, "w") as f:
        json.dump(envoy_config(plugin), f, indent=1)
    envoy = Proc("envoy", [ENVOY, "-c", cfg_path, "--disable-hot-restart", "--base-id", "78", "--concurrency", "2",
                           "--log-level", "warning"], marker=cfg_path)
    wait_until("Envoy /ready", lambda: call("GET", f"http://127.0.0.1:{ENVOY_ADMIN}/ready", timeout=1)[0] == 200,
               30, 0.1, envoy)
    wait_until("Envoy: both nodes healthy",
               lambda: (lambda h: len(h) == 2 and all(v.get("health_flags") == "healthy" for v in h.values()))(host_stats()),
               30, 0.1, envoy)
    probe = Load(tokens, cached_keys, [])
    conn = [None]
    wait_until("the filter's first decision", lambda: probe.one(conn, cached_keys[0]) == expected[cached_keys[0]],
               60, 0.2, envoy)
    warm = collections.Counter()
    for key in cached_keys:  # the cached users are seen once: their decisions are in the filter's cache
        s = probe.one(conn, key)
        warm["as Keycloak decided" if s == expected[key] else f"DIFFERENT ({s})"] += 1
    say(f"Envoy ready; {len(cached_keys)} cached pairs seen once: {fmt_counter(warm)}")

    # ---- the run: fixed-duration load phases; node events waited for by polling with deadlines
    load = Load(tokens, cached_keys, uncached, reserve)
    monitor = Monitor([a, b])
    monitor.start()
    ev, snap = {}, {}
    stats_before = envoy_stats(["cluster.keycloak."])
    ev["load_start"] = time.monotonic()
    snap["load_start"] = envoy_stats(["cluster.keycloak."])
    load.start()
    say(f"load: {CACHED_RATE:g} cached and {UNCACHED_RATE:g} uncached requests/s ({TRICKLE_RATE:g}/s while a node "
        f"boots or none answers); both up for {PHASE_SECONDS:g} s")
    time.sleep(PHASE_SECONDS)

    # the kill lands while node-a has calls of the filter in flight (Envoy's rq_active), if that
    # happens within 3 s
    in_flight_at_a = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        in_flight_at_a = host_stats().get(NODES["node-a"]["http"], {}).get("rq_active", 0)
        if in_flight_at_a:
            break
    ev["kill"] = time.monotonic()
    snap["kill"] = envoy_stats(["cluster.keycloak."])
    a.proc.kill9()
    say(f"node-a killed (SIGKILL) with {in_flight_at_a} call(s) of the filter in flight on it; restarted in {KILL_HOLD:g} s; full uncached rate for {PHASE_SECONDS:g} s after the kill")
    time.sleep(KILL_HOLD)
    ev["a_launch"] = time.monotonic()
    snap["a_launch"] = envoy_stats(["cluster.keycloak."])
    a.start()

    def trickle_after_kill():
        if time.monotonic() >= ev["kill"] + PHASE_SECONDS:
            load.set_rate("uncached", TRICKLE_RATE)
    ev["a_ready"] = a.wait_ready("node-a ready after its restart", also=trickle_after_kill)
    snap["a_ready"] = envoy_stats(["cluster.keycloak."])
    probes = {"node-a": [], "node-b": []}
    threading.Thread(target=probe_node, args=(a, tokens[0], PHASE_SECONDS, probes["node-a"]), daemon=True).start()
    load.set_rate("uncached", UNCACHED_RATE)
    say(f"node-a ready again {ev['a_ready'] - ev['a_launch']:.1f} s after its start; recovering for {PHASE_SECONDS:g} s")
    time.sleep(PHASE_SECONDS)
    members_after = cluster_members(b)

    ev["stop"] = time.monotonic()
    snap["stop"] = envoy_stats(["cluster.keycloak."])
    load.set_rate("uncached", TRICKLE_RATE)
    a.proc.terminate()
    b.proc.terminate()
    a.proc.wait_exit(60)
    b.proc.wait_exit(60)
    ev["both_down"] = time.monotonic()
    snap["both_down"] = envoy_stats(["cluster.keycloak."])
    say(f"both nodes stopped (SIGTERM; gone after {ev['both_down'] - ev['stop']:.1f} s); both down for "
        f"{PHASE_SECONDS:g} s")
    time.sleep(PHASE_SECONDS)

    ev["b_launch"] = time.monotonic()
    snap["b_launch"] = envoy_stats(["cluster.keycloak."])
    b.start()
    ev["b_ready"] = b.wait_ready("node-b ready after the outage")
    snap["b_ready"] = envoy_stats(["cluster.keycloak."])
    threading.Thread(target=probe_node, args=(b, tokens[0], PHASE_SECONDS, probes["node-b"]), daemon=True).start()
    load.pool = "reserve"
    load.set_rate("uncached", UNCACHED_RATE)
    say(f"node-b ready again {ev['b_ready'] - ev['b_launch']:.1f} s after its start; {PHASE_SECONDS:g} s more")
    time.sleep(PHASE_SECONDS)

    def recovered():
        return any(kind == "uncached" and t1 >= ev["b_ready"] and status == expected[key]
                   for t0, t1, kind, key, status in list(load.records))
    if not recovered():  # measured, not cut off: up to RECOVERY_WAIT s more for the first good decision
        say(f"no correct uncached decision yet; waiting up to {RECOVERY_WAIT:g} s more for one "
            f"({RECOVERY_WAIT_RATE:g} uncached requests/s)")
        load.set_rate("uncached", RECOVERY_WAIT_RATE)
        try:
            wait_until("the first correct uncached decision after the outage", recovered, RECOVERY_WAIT, 0.2)
        except Failure as e:
            say(str(e))
    ev["load_end"] = time.monotonic()
    snap["load_end"] = envoy_stats(["cluster.keycloak."])
    load.finish()
    monitor.stop.set()
    monitor.join(10)
    stats_after = envoy_stats(["cluster.keycloak.", "wasmcustom.kcpep."])
    cluster = {k: stats_after.get(k, 0) - stats_before.get(k, 0) for k in stats_after if k.startswith("cluster.keycloak.")}

    # ---- results
    res = analyse(load, expected, set(cached_keys), ev)
    print_table(res, ev)
    total = sum(sum(c.values()) for p in res["counts"].values() for c in p.values())
    inflight = res["kill_in_flight"]
    b_down_s = monitor.not_ready_seconds("node-b", ev["kill"], ev["a_ready"])
    print(f"\nfailover: {total} requests; in flight at the kill: {sum(inflight.values())} ({fmt_counter(inflight)}); "
          f"node-b's own /health/ready said DOWN for {b_down_s} s of the {ev['a_ready'] - ev['kill']:.1f} s node-a was "
          f"gone (Envoy checks the realm's discovery document instead)")
    print("failover: Envoy's keycloak cluster during the load: " + ", ".join(
        f"{k.split('.', 2)[2]} {cluster.get(k, 0)}" for k in (
            "cluster.keycloak.upstream_rq_retry", "cluster.keycloak.upstream_rq_retry_success",
            "cluster.keycloak.upstream_rq_retry_overflow", "cluster.keycloak.upstream_cx_connect_fail",
            "cluster.keycloak.upstream_rq_timeout", "cluster.keycloak.outlier_detection.ejections_enforced_total",
            "cluster.keycloak.upstream_cx_none_healthy")))
    print_cluster_per_phase(snap)
    after_kill = {n: {k: monitor.delta(n, k, ev["kill"], ev["kill"] + 5) for k in ("rq_success", "rq_timeout",
                                                                                   "cx_connect_fail", "rq_error")}
                  for n in NODES}
    print("failover: per node in the 5 s after the kill (Envoy): " + "; ".join(
        f"{n} " + ", ".join(f"{k} {v}" for k, v in c.items()) for n, c in after_kill.items()))
    print(f"failover: Keycloak itself after its restarts (straight to the node, not through Envoy): node-a "
          f"{probe_summary(probes['node-a'], ev['a_ready'])}; node-b {probe_summary(probes['node-b'], ev['b_ready'])}")
    if load.reasons:
        print("failover: answers other than 200/403, by status and body: " +
              "; ".join(f"{s} {b!r} x{n}" for (s, b), n in load.reasons.most_common(6)))

    targets = []
    targets.append(("one node down: no 503 but those in flight at the kill",
                    res["after_kill_503"] == 0,
                    f"{res['after_kill_503']} answers 503 among requests started after the kill; "
                    f"{inflight.get(503, 0)} of the {sum(inflight.values())} in flight at the kill"))
    n_wrong = sum(res["wrong"].values())
    n_other = sum(v for (p, k, s), v in res["other"].items() if p not in ("both_down", "stopping", "restarting"))
    decided = sum(c.get(200, 0) + c.get(403, 0) for p in res["counts"].values() for c in p.values())
    targets.append(("decisions as Keycloak's policies decide",
                    n_wrong == 0 and n_other == 0,
                    f"{decided} answers 200/403, {n_wrong} differ from Keycloak's decision; "
                    f"{n_other} answers neither 200, 403 nor 503 while a node was up"
                    + (f" ({fmt_counter(collections.Counter({f'{p}/{k}/{s}': v for (p, k, s), v in res['other'].items()}))})"
                       if res["other"] else "")))
    d = res["down"]
    allow_ok = d["cached_allow"].get(200, 0) == sum(d["cached_allow"].values()) > 0
    deny_ok = all(s in (503, 403) for s in d["cached_deny"])
    unc_ok = all(s == 503 for s in d["uncached"]) and sum(d["uncached"].values()) > 0
    targets.append(("both down: cached ALLOWs 200, everything else 503 (fail closed)",
                    allow_ok and deny_ok and unc_ok,
                    f"cached allows {fmt_counter(d['cached_allow'])}; cached denials {fmt_counter(d['cached_deny'])} "
                    f"(403: the denial still cached, up to 5 s); uncached {fmt_counter(d['uncached'])}"))
    # node-a rejoined: Envoy sends the filter's calls to it again and it answers them
    base = next((e["node-a"]["rq_success"] for t, r, e in monitor.samples if t >= ev["a_ready"]), None)
    rj = monitor.first(ev["a_ready"], lambda r, e: base is not None and e["node-a"]["rq_success"] > base)
    hc = monitor.first(ev["a_launch"], lambda r, e: e["node-a"]["flags"] == "healthy")
    rj_s = round(rj - ev["a_ready"], 2) if rj else None
    kc_first = lambda n, e: (lambda f: round(f - ev[e], 2) if f else None)(probe_first_answer(probes[n]))
    fo = res["first_ok_after_outage"]
    fo_s = round(max(0.0, fo - ev["b_ready"]), 2) if fo else None
    targets.append((f"recovery within {RECOVERY_TARGET_S:g} s",
                    rj_s is not None and rj_s <= RECOVERY_TARGET_S and fo_s is not None and fo_s <= RECOVERY_TARGET_S,
                    f"restarted node-a answering the filter's calls through Envoy {rj_s} s after its /health/ready "
                    f"(Envoy: healthy {round(hc - ev['a_ready'], 2) if hc else None} s after it); first correct uncached "
                    f"decision {fo_s} s after node-b's /health/ready following the outage "
                    f"({res['outage_503_after_recovery']} answers 503 after that; Keycloak's own first direct answer: "
                    f"node-a {kc_first('node-a', 'a_ready')} s, node-b {kc_first('node-b', 'b_ready')} s after ready)"))
    if load.exhausted_at:
        targets.append(("the pool of new users lasted the run", False,
                        f"used up {load.exhausted_at - ev['load_start']:.1f} s into the load "
                        "(slower start-ups than planned for; KCPEP_FAILOVER_TRICKLE_RATE lowers the need)"))
    print()
    for name, ok, detail in targets:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}: {detail}")
    duration = round(time.time() - started, 1)
    timings["total_s"] = duration
    timings["load_s"] = round(ev["load_end"] - ev["load_start"], 1)
    print(f"\nfailover: run took {duration} s: " + ", ".join(f"{k[:-2]} {v} s" for k, v in timings.items()
                                                            if k != "total_s")
          + f"; cluster view after node-a's restart: {members_after}")

    os.makedirs(os.path.join(ROOT, "results"), exist_ok=True)
    out = os.path.join(ROOT, "results", time.strftime("failover-%Y%m%dT%H%M%S.json"))
    rel = lambda t: round(t - ev["load_start"], 3)
    with open(out, "w") as f:
        json.dump({
            "keycloak_version": KC_VERSION, "java_home": jh, "envoy_concurrency": 2,
            "wasm": {"path": os.path.relpath(WASM, ROOT), "bytes": os.path.getsize(WASM),
                     "mtime": time.strftime("%FT%T", time.localtime(os.path.getmtime(WASM)))},
            "settings": {"phase_seconds": PHASE_SECONDS, "kill_hold_s": KILL_HOLD, "uncached_rate": UNCACHED_RATE,
                         "trickle_rate": TRICKLE_RATE, "cached_rate": CACHED_RATE, "cached_users": CACHED_USERS,
                         "uncached_users": n_main + n_reserve, "timeout_ms": TIMEOUT_MS or 2000, "killed": "node-a", "restarted_after_outage": "node-b"},
            "events_s": {k: rel(v) for k, v in ev.items()},
            "phases": {p: {k: {str(s): n for s, n in c.items()} for k, c in kinds_.items()}
                       for p, kinds_ in res["counts"].items()},
            "wrong_decisions": {f"{p}/{k}": n for (p, k), n in res["wrong"].items()},
            "kill_in_flight": {str(s): n for s, n in inflight.items()},
            "after_kill_503": res["after_kill_503"],
            "both_down": {k: {str(s): n for s, n in c.items()} for k, c in d.items()},
            "recovery_s": {"node_a_answering_through_envoy": rj_s,
                           "keycloak_first_direct_answer_node_a": (lambda f: round(f - ev["a_ready"], 2) if f else None)(
                               probe_first_answer(probes["node-a"])),
                           "keycloak_first_direct_answer_node_b": (lambda f: round(f - ev["b_ready"], 2) if f else None)(
                               probe_first_answer(probes["node-b"])),
                           "node_a_healthy_in_envoy": round(hc - ev["a_ready"], 2) if hc else None,
                           "first_correct_uncached_after_outage": fo_s},
            "node_b_health_ready_down_s_while_a_gone": b_down_s,
            "filter_calls_in_flight_on_node_a_at_kill": in_flight_at_a,
            "direct_probes_after_restart": {k: [[rel(t), round(l, 3), st] for t, l, st in v] for k, v in probes.items()},
            "non_decision_answers": [{"status": s, "body": b, "count": n} for (s, b), n in load.reasons.most_common(20)],
            "envoy_keycloak_cluster": cluster,
            "envoy_keycloak_cluster_per_phase": cluster_per_phase(snap),
            "envoy_per_node_5s_after_kill": after_kill,
            "filter_counters": {k: v for k, v in stats_after.items() if k.startswith("wasmcustom.")},
            "targets": [{"name": n, "pass": ok, "detail": dt} for n, ok, dt in targets],
            "timings_s": timings,
        }, f, indent=1)
    print(f"failover: saved {os.path.relpath(out, ROOT)}")
    return 0 if all(ok for _, ok, _ in targets) else 1


def on_signal(signum, _frame):
    print(f"failover: {signal.Signals(signum).name}: stopping everything this run started", file=sys.stderr, flush=True)
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    rc = 1
    try:
        rc = main()
    except Failure as e:
        print(f"failover: ERROR: {e}", file=sys.stderr)
        rc = 1
    except KeyboardInterrupt:
        print("failover: interrupted", file=sys.stderr)
        rc = 130
    finally:
        Proc.stop_all()
    sys.exit(rc)
