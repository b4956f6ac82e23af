#!/usr/bin/env python3
"""make bench: Envoy without a filter, with a no-op proxy-wasm filter, and with keycloak-pep
(decision cache hit, and cache off: one Keycloak call per request, by the UMA grant and by
AuthZEN), under wrk; then the
coalescing check (64 identical concurrent requests on a cold cache, Keycloak calls counted at
Envoy's keycloak cluster). Prints figures, saves JSON under results/, asserts nothing."""

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

from envoy_filter import keycloak_pep_filter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, ".run", "bench")
ENVOY = os.path.join(ROOT, ".cache", "venv", "bin", "envoy")
STACK = os.path.join(ROOT, "scripts", "stack.sh")
KEYCLOAK = "http://127.0.0.1:8180"
PORT, ADMIN = 10100, 9911
DURATION = int(os.environ.get("KCPEP_BENCH_SECONDS", "8"))
WARMUP = 2
REPEAT = int(os.environ.get("KCPEP_BENCH_REPEAT", "3"))
# Proofs made for case 8 before each of its runs (split in three for the warm-up, throughput and
# latency runs): more than a run sends, so none is sent twice.
DPOP_PROOFS = int(os.environ.get("KCPEP_BENCH_DPOP_PROOFS", str(3 * 6000 * max(DURATION, WARMUP))))

ENFORCER = {
    "realm": "bank",
    "auth-server-url": KEYCLOAK,
    "resource": "bank-api",
    "credentials": {"secret": "bank-api-secret"},
    "policy-enforcer": {"paths": [{"name": "View Account Resource", "path": "/account/{id}",
                                   "methods": [{"method": "GET", "scopes": ["account:view"]}]}]},
}


def plugin_config(cache_on, protocol="uma-grant"):
    """The bench enforcer; `protocol`: its kcpep.decision-protocol (case 9 and the AuthZEN mix
    ask Keycloak's AuthZEN evaluations, which the stack's Keycloak serves with --features=authzen)."""
    cfg = json.loads(json.dumps(ENFORCER))
    cache = {"max-entries": 10000, "lifespan-ms": 300000} if cache_on else {"max-entries": 0}
    cfg["kcpep"] = {"cluster": "keycloak", "decision-cache": cache, "decision-protocol": protocol}
    return cfg


def dpop_plugin_config():
    """Case 8: the cache-hit configuration with sender constraints on, and an unbound token sent
    with the DPoP scheme and a new proof on every request (`accept-unbound-tokens`): each request
    costs the proof's checks and signature verification, the decision is a cache hit. Keycloak
    26.7 evaluates no permission for DPoP-bound tokens (docs/configuration.md), so a bound token
    could not reach the cache-hit path at all. The proofs are made before the run: their window
    is long enough to outlast it."""
    cfg = plugin_config(True)
    cfg["kcpep"]["sender-constraint"] = "if-bound"
    # a window that outlasts making the proofs and the three runs; every proof of it is remembered,
    # so the replay table holds them all at under half full
    # (one token sends every proof: its share of the table is all of it, or the bench would
    # measure refusals)
    cfg["kcpep"]["dpop"] = {"accept-unbound-tokens": True, "proof-lifetime-seconds": 120,
                            "replay-slots": 1 << 19, "replay-share-percent": 100}
    return cfg


def dpop_proofs(tok, n, path):
    """`n` DPoP proofs of one P-256 key for `GET http://bench.local/account/1` naming `tok`, one
    per line in `path` (Python's cryptography, ES256)."""
    import base64
    import hashlib
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "x": b64(pub.x.to_bytes(32, "big")), "y": b64(pub.y.to_bytes(32, "big"))}
    header = b64(json.dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": jwk}, separators=(",", ":")).encode())
    ath = b64(hashlib.sha256(tok.encode()).digest())
    with open(path, "w") as f:
        for _ in range(n):
            claims = {"jti": os.urandom(12).hex(), "htm": "GET", "htu": "http://bench.local/account/1",
                      "iat": int(time.time()), "ath": ath}
            signing_input = header + "." + b64(json.dumps(claims, separators=(",", ":")).encode())
            r, sig_s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
            f.write(signing_input + "." + b64(r.to_bytes(32, "big") + sig_s.to_bytes(32, "big")) + "\n")
    return path


def envoy_config(wasm, plugin, native=None):
    filters = list(native or [])
    if wasm:
        filters.append(keycloak_pep_filter(wasm, plugin, name="bench"))
    filters.append({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bench", "normalize_path": True, "merge_slashes": True,
        "route_config": {"name": "bench", "virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [{
            "name": "direct", "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}]}]},
        "http_filters": filters,
    }
    cluster = {"name": "keycloak", "type": "STATIC", "connect_timeout": "1s", "load_assignment": {
        "cluster_name": "keycloak", "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
            "socket_address": {"address": "127.0.0.1", "port_value": 8180}}}}]}]}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN}}},
        "static_resources": {
            "listeners": [{"name": "bench", "address": {"socket_address": {"address": "127.0.0.1", "port_value": PORT}},
                           "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                           "typed_config": hcm}]}]}],
            "clusters": [cluster],
        },
    }


def get(url, headers=None, data=None, timeout=10):
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def token(user):
    body = urllib.parse.urlencode({"grant_type": "password", "client_id": "demo-cli",
                                   "username": user, "password": "password"}).encode()
    status, raw = get(f"{KEYCLOAK}/realms/bank/protocol/openid-connect/token", data=body)
    if status != 200:
        sys.exit(f"bench: no token for {user}: {status} {raw[:200]!r}")
    return json.loads(raw)["access_token"]


_OWNER = {"token": None, "at": 0.0}


def owner_token():
    """The bench user's token, fetched again once it is 4 minutes old (the realm's tokens live
    10): no case runs into its token's expiry, however long the run."""
    if _OWNER["token"] is None or time.time() - _OWNER["at"] > 240:
        _OWNER.update(token=token("owner"), at=time.time())
    return _OWNER["token"]


def wait_until(what, check, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    sys.exit(f"bench: timed out waiting for {what}")


class Envoy:
    def __init__(self, name, wasm=None, plugin=None, concurrency=1, native=None, config=None,
                 wasm_log=False):
        os.makedirs(RUN, exist_ok=True)
        path = os.path.join(RUN, f"{name}.json")
        with open(path, "w") as f:
            json.dump(config or envoy_config(wasm, plugin, native), f)
        self.log = open(os.path.join(RUN, f"{name}.log"), "w")
        self.started = time.time()
        self.proc = subprocess.Popen(
            [ENVOY, "-c", path, "--disable-hot-restart", "--base-id", "77", "--concurrency", str(concurrency),
             "--log-level", "warning"] + (["--component-log-level", "wasm:info"] if wasm_log else []),
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_until("bench Envoy /ready", lambda: self._ready(), 30)

    def _ready(self):
        if self.proc.poll() is not None:
            sys.exit(f"bench: Envoy exited, see {self.log.name}")
        try:
            return get(f"http://127.0.0.1:{ADMIN}/ready", timeout=1)[0] == 200
        except OSError:
            return False

    def stat(self, name):
        _, raw = get(f"http://127.0.0.1:{ADMIN}/stats?filter=^{name}$")
        for line in raw.decode().splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def memory_mb(self):
        """Envoy's allocator (admin `/memory`): what is allocated, and what its heap holds in RAM
        (allocated, free but kept, caches); the rest of the RSS is outside the heap (V8's code
        and its own pages, the binary)."""
        _, raw = get(f"http://127.0.0.1:{ADMIN}/memory")
        m = {k: int(v) for k, v in json.loads(raw).items() if str(v).isdigit()}
        mb = lambda b: round(b / 1048576, 1)
        return {"allocated": mb(m.get("allocated", 0)),
                "heap_resident": mb(m.get("heap_size", 0) - m.get("pageheap_unmapped", 0))}

    def stats_by_prefix(self, prefix):
        """The counters under `prefix` that are not 0, by the rest of their name."""
        _, raw = get(f"http://127.0.0.1:{ADMIN}/stats?filter=^{re.escape(prefix)}")
        out = {}
        for line in raw.decode().splitlines():
            key, _, value = line.partition(": ")
            if key.startswith(prefix) and value.strip().isdigit() and int(value) > 0:
                out[key[len(prefix):]] = int(value)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # JavaEnforcer.stop uses this too
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class JavaEnforcer:
    """Case 5: Keycloak's own Java policy enforcer (bench/java) on the same port, same realm and config."""

    def __init__(self, name):
        java_dir = os.path.join(ROOT, "bench", "java")
        jar = os.path.join(java_dir, "target", "java-enforcer-1.jar")
        if not os.path.exists(jar):
            subprocess.run(["mvn", "-q", "-B", "-f", os.path.join(java_dir, "pom.xml"), "package",
                            "dependency:copy-dependencies", "-DincludeScope=runtime"], check=True)
        os.makedirs(RUN, exist_ok=True)
        config = os.path.join(RUN, f"{name}.json")
        with open(config, "w") as f:
            json.dump(ENFORCER["policy-enforcer"], f)
        classpath = jar + os.pathsep + os.path.join(java_dir, "target", "dependency", "*")
        self.log = open(os.path.join(RUN, f"{name}.log"), "w")
        self.proc = subprocess.Popen(
            ["java", "-cp", classpath, "kcpep.bench.JavaEnforcer", str(PORT), ENFORCER["auth-server-url"],
             ENFORCER["realm"], ENFORCER["resource"], ENFORCER["credentials"]["secret"], config],
            stdout=self.log, stderr=subprocess.STDOUT)

    def stat(self, name):
        return None  # no proxy in front to count Keycloak requests

    def stop(self):
        Envoy.stop(self)


def wrk(connections, seconds, tok, **extra):
    env = dict(os.environ, KCPEP_TOKEN=tok or "", **extra)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", os.path.join(ROOT, "bench", "wrk.lua"),
                          f"http://127.0.0.1:{PORT}"], env=env, capture_output=True, text=True, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("BENCH "))
    r = json.loads(line[6:])
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def ok_status(tok):
    headers = {"Host": "bench.local"}
    if tok:
        headers["Authorization"] = f"Bearer {tok}"
    try:
        return get(f"http://127.0.0.1:{PORT}/account/1", headers, timeout=5)[0]
    except OSError:
        return 0


def median_of(results):
    """Each figure's median over runs (the runs are kept too)."""
    out = {}
    for k in ("rps", "p50_us", "p99_us", "rps_c1", "cpu_us"):
        vals = sorted(r[k] for r in results)
        out[k] = vals[len(vals) // 2]
    out["non2xx"] = sum(r["non2xx"] for r in results)
    out["keycloak_requests"] = max(r["keycloak_requests"] or 0 for r in results)
    out["runs"] = results
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """User + system CPU time of a process, all its threads, so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def stack_pids():
    """The stack's processes (scripts/stack.sh's pid files): Keycloak, the echo, Envoy..."""
    pids = []
    run = os.path.join(ROOT, ".run")
    for name in ("keycloak", "echo", "claims", "faults", "grpc", "envoy"):
        try:
            with open(os.path.join(run, f"{name}.pid")) as f:
                pid = int(f.read().strip())
            cpu_seconds(pid)
            pids.append(pid)
        except (OSError, ValueError, IndexError):
            pass
    return pids


def wait_idle(what, limit=0.05, longest=120):
    """Waits until the stack's other processes use under `limit` of one core over a second
    (Keycloak compiles itself hot for minutes after its start; its CPU would be the measured
    Envoy's loss). Gives up after `longest` seconds, saying so. Returns the share last seen."""
    pids = stack_pids()
    deadline = time.time() + longest
    while True:
        before = sum(cpu_seconds(p) for p in pids)
        time.sleep(1)
        share = sum(cpu_seconds(p) for p in pids) - before
        if share < limit or time.time() > deadline:
            if share >= limit:
                print(f"  ({what}: the stack still used {share:.0%} of a core after {longest} s; measuring anyway)",
                      flush=True)
            return round(share, 3)


PERF_HZ = 2000


def where_it_ran(data, requests):
    """Envoy's CPU per request by where it ran (`perf report --sort dso` of samples taken at
    PERF_HZ): Envoy's own code (V8's runtime included), the module's code as V8 compiled it
    (`[JIT]`), the kernel, the rest (libc...)."""
    out = {"envoy": 0.0, "module": 0.0, "kernel": 0.0, "other": 0.0}
    report = subprocess.run(["perf", "report", "-i", data, "--sort", "dso", "--stdio", "-n"],
                            capture_output=True, text=True).stdout
    for line in report.splitlines():
        m = re.match(r"\s+[0-9.]+%\s+(\d+)\s+(.+?)\s*$", line)
        if not m:
            continue
        samples, dso = int(m.group(1)), m.group(2)
        place = ("envoy" if dso == "envoy" else "module" if dso.startswith("[JIT]")
                 else "kernel" if dso.startswith("[kernel") else "other")
        out[place] += samples * 1e6 / PERF_HZ / max(requests, 1)
    return {k: round(v, 1) for k, v in out.items()}


def run_case(name, wasm, plugin, tok, server=None, proofs=None, where=False):
    """`where`: the throughput run also sampled with `perf` (where_it_ran), when perf is here
    (at PERF_HZ its cost is within the noise of the CPU figure)."""
    envoy = server or Envoy(name, wasm, plugin)
    try:
        # The filter fetches its keys and PAT first; the case starts once requests pass.
        wait_until(f"{name}: 200 from the filter", lambda: ok_status(tok) == 200, 60)
        # Case 8: each wrk run takes its own slice of the proofs (a proof is taken once).
        slices = iter(range(3))
        extra = lambda: {"KCPEP_PROOFS_FILE": proofs, "KCPEP_PROOFS_SLICE": f"{next(slices)}/3"} if proofs else {}
        wrk(16, WARMUP, tok, **extra())
        idle = wait_idle(name)
        # CPU per request: the proxy's own CPU time over the throughput run, divided by the
        # requests it answered (a figure that does not move with the load generator's share)
        perf = None
        if where and shutil.which("perf"):
            data = os.path.join(RUN, "perf.data")
            perf = subprocess.Popen(["perf", "record", "-q", "-F", str(PERF_HZ), "-o", data, "-p",
                                     str(envoy.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu_before = cpu_seconds(envoy.proc.pid)
        thr = wrk(16, DURATION, tok, **extra())
        cpu_us = round((cpu_seconds(envoy.proc.pid) - cpu_before) * 1e6 / max(thr["requests"], 1), 1)
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait()
        lat = wrk(1, DURATION, tok, **extra())
        calls = envoy.stat("cluster.keycloak.upstream_rq_total")
        result = {"rps": round(thr["rps"]), "p50_us": lat["p50_us"], "p99_us": lat["p99_us"],
                  "rps_c1": round(lat["rps"]), "cpu_us": cpu_us, "stack_idle_share": idle,
                  "non2xx": thr["non2xx"] + lat["non2xx"],
                  "socket_errors": thr["socket_errors"] + lat["socket_errors"], "keycloak_requests": calls}
        if perf:
            result["where_us"] = where_it_ran(data, thr["requests"])
        refused = ""
        if proofs:
            # why a proof was refused, if one was (the filter's counters per reason)
            result["proofs_refused"] = envoy.stats_by_prefix("wasmcustom.kcpep.binding.")
            ran = [round(r["duration_us"] / 1e6, 1) for r in (thr, lat)]
            refused = f"  proofs refused {result['proofs_refused'] or 'none'}, ran {ran[0]} s / {ran[1]} s"
        print(f"  {name:<28} {result['cpu_us']:>7} us CPU/request {result['rps']:>8} rps (c16)   "
              f"p50 {result['p50_us']:>6} us  p99 {result['p99_us']:>6} us (c1)"
              f"   non-2xx {result['non2xx']}  Keycloak requests {calls}{refused}", flush=True)
        return result
    finally:
        envoy.stop()


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def startup_split(envoy, first_allow):
    """Where the time to the first allowed request went, from the module's own log lines (Envoy's
    timestamps): Envoy's start until the first VM had compiled and configured the module ("kcpep:
    configured"), then until the enforcer had Keycloak's keys, PAT and resources ("ready"), then
    until the first request was allowed."""
    envoy.log.flush()
    stamps = {}
    with open(envoy.log.name) as f:
        for line in f:
            m = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\]", line)
            if not m:
                continue
            t = time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%d %H:%M:%S")) + float("0." + m.group(1)[20:])
            for what, marker in (("configuring", "kcpep: configuring"), ("configured", "kcpep: configured"),
                                 ("ready", "kcpep: ready: realm keys")):
                if marker in line:
                    stamps.setdefault(what, t)
    if not {"configured", "ready"} <= set(stamps):
        return None
    ms = lambda a, b: round((b - a) * 1000)
    return {"envoy_and_module_ms": ms(envoy.started, stamps["configured"]),
            # of which: Envoy's start, V8 compiling the module and starting its first VM; then the
            # module's own configure (parsing, compiling, making the shared tables' slots)
            "envoy_and_compile_ms": ms(envoy.started, stamps["configuring"]) if "configuring" in stamps else None,
            "configure_ms": ms(stamps["configuring"], stamps["configured"]) if "configuring" in stamps else None,
            "keycloak_fetches_ms": ms(stamps["configured"], stamps["ready"]),
            "to_first_allow_ms": ms(stamps["ready"], first_allow)}


def footprint(owner):
    """What a sidecar costs before any traffic matters: Envoy's RSS after a warm-up with two
    workers (no filter, the no-op filter, keycloak-pep), and keycloak-pep's start-up, from
    Envoy's start to the first enforced request allowed (the module compiled in every VM, the
    realm's keys and PAT fetched), with 1 and 4 workers."""
    out = {"rss_mb": {}, "startup_ms": {}, "wasm_memory_mb": {}}
    # keycloak-pep twice: with the bench's decision table (10,000 slots, made empty in shared data
    # at configure) and without one, so the table's share of the RSS is measured apart
    for name, wasm, plugin, tok in (("bare", None, None, None), ("noop", "dist/noop.wasm", {}, None),
                                    ("pep_no_table", "dist/keycloak_pep.wasm", plugin_config(False), owner),
                                    ("pep", "dist/keycloak_pep.wasm", plugin_config(True), owner)):
        envoy = Envoy(f"rss-{name}", wasm, plugin, concurrency=2)
        try:
            wait_until(f"rss {name}: 200", lambda: ok_status(tok) == 200, 60)
            wrk(16, WARMUP, tok)
            out["rss_mb"][name] = rss_mb(envoy.proc.pid)
            out.setdefault("heap_mb", {})[name] = envoy.memory_mb()
            out["wasm_memory_mb"][name] = round(envoy.stat("wasmcustom.kcpep.wasm.memory_bytes") / 1048576, 1)
        finally:
            envoy.stop()
    rss, linear = out["rss_mb"], out["wasm_memory_mb"]
    # the RSS over the no-op filter, in parts: the decision table's slots, the VMs' linear
    # memory (the module's own gauge, all VMs), and the rest (V8's compiled code and the VMs'
    # runtime state, the plugin's configuration in Envoy)
    out["rss_parts_mb"] = {
        "decision_table": round(rss["pep"] - rss["pep_no_table"], 1),
        "linear_memory": linear["pep_no_table"],
        "compiled_code_and_runtime": round(rss["pep_no_table"] - rss["noop"] - linear["pep_no_table"], 1),
    }
    # the delta without the table, by where it sits: Envoy's heap (live allocations, and free
    # memory its allocator keeps) or outside it (V8's code space, its own pages, linear memory)
    heap = out["heap_mb"]
    live = round(heap["pep_no_table"]["allocated"] - heap["noop"]["allocated"], 1)
    kept = round((heap["pep_no_table"]["heap_resident"] - heap["pep_no_table"]["allocated"])
                 - (heap["noop"]["heap_resident"] - heap["noop"]["allocated"]), 1)
    out["rss_parts_mb"]["heap_allocated"] = live
    out["rss_parts_mb"]["heap_free_kept"] = kept
    out["rss_parts_mb"]["outside_heap"] = round(
        (rss["pep_no_table"] - heap["pep_no_table"]["heap_resident"]) - (rss["noop"] - heap["noop"]["heap_resident"]), 1)
    parts = out["rss_parts_mb"]
    print(f"  RSS over the no-op filter, in parts (2 workers): decision table of 10,000 slots "
          f"{parts['decision_table']} MB, VMs' linear memory {parts['linear_memory']} MB, compiled code and "
          f"runtime {parts['compiled_code_and_runtime']} MB; the delta by where it sits: Envoy's heap "
          f"allocated {parts['heap_allocated']} MB, free memory the heap keeps {parts['heap_free_kept']} MB, "
          f"outside the heap (V8's code and pages, the linear memory among them) {parts['outside_heap']} MB", flush=True)
    out["startup_split_ms"] = {}
    # Envoy's own start with a filter that fetches nothing: the floor of the figures below
    envoy = Envoy("startup-noop", "dist/noop.wasm", {}, concurrency=1)
    try:
        wait_until("startup noop: 200", lambda: ok_status(None) == 200, 60)
        out["startup_ms"]["noop"] = round((time.time() - envoy.started) * 1000)
    finally:
        envoy.stop()
    for workers in (1, 4):
        envoy = Envoy(f"startup-{workers}", "dist/keycloak_pep.wasm", plugin_config(True), concurrency=workers,
                      wasm_log=True)
        try:
            while ok_status(owner) != 200:
                if time.time() - envoy.started > 60:
                    sys.exit("bench: keycloak-pep never allowed the first request")
                time.sleep(0.01)
            first_allow = time.time()
            out["startup_ms"][workers] = round((first_allow - envoy.started) * 1000)
            out["startup_split_ms"][workers] = startup_split(envoy, first_allow)
        finally:
            envoy.stop()
    out["per_route"] = per_route_footprint()
    rss = out["rss_mb"]
    print(f"  footprint: Envoy RSS with 2 workers after warm-up: no filter {rss['bare']} MB, no-op filter "
          f"{rss['noop']} MB, keycloak-pep {rss['pep']} MB; start-up to the first allowed request: "
          f"{out['startup_ms'][1]} ms (1 worker), {out['startup_ms'][4]} ms (4 workers)", flush=True)
    split = out["startup_split_ms"].get(1)
    if split:
        print(f"  start-up, 1 worker (the no-op filter's Envoy answers {out['startup_ms']['noop']} ms after its start): "
              f"Envoy's start to the module configured {split['envoy_and_module_ms']} ms "
              f"(Envoy and V8's compile {split['envoy_and_compile_ms']}, configure {split['configure_ms']}), "
              f"Keycloak's keys, PAT and resources {split['keycloak_fetches_ms']} ms, then the first allow "
              f"{split['to_first_allow_ms']} ms", flush=True)
    return out


def per_route_config(form):
    """Two routes (virtual hosts unanimous.bank.local and affirmative.bank.local), each with its own
    keycloak.json: bank-api (seed 002, UNANIMOUS) and bank-api-affirmative. `form`: "rules" (one
    plugin, both enforcers, a route-name rule), "filter_chain" (Envoy's filter_chain filter: the
    unanimous filter as its default chain, the affirmative one in the route's per-route config,
    both of one vm_config), "filter_chain_own_vms" (the same with a vm_id per route)."""
    def enforcer(client):
        cfg = plugin_config(True)
        cfg["resource"] = client
        cfg["credentials"] = {"secret": f"{client}-secret"}
        return cfg
    config = envoy_config(None, None)
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    router = hcm["http_filters"][-1]
    ok = {"status": 200, "body": {"inline_string": "ok"}}
    hosts = [{"name": n, "domains": [f"{n}.bank.local"],
              "routes": [{"name": n, "match": {"prefix": "/"}, "direct_response": ok}]}
             for n in ("unanimous", "affirmative")]
    if form == "rules":
        plugin = {"enforcers": {"unanimous": enforcer("bank-api"), "affirmative": enforcer("bank-api-affirmative")},
                  "routes": [{"route-name": "affirmative", "enforcer": "affirmative"}], "default": "unanimous"}
        hcm["http_filters"] = [keycloak_pep_filter("dist/keycloak_pep.wasm", plugin, name="bench"), router]
    else:
        def pep(client, vm_id):
            f = keycloak_pep_filter("dist/keycloak_pep.wasm", enforcer(client), name="bench")
            if form == "filter_chain_own_vms":
                f["typed_config"]["config"]["vm_config"]["vm_id"] = vm_id
            return f
        chain = "keycloak-pep-routes"
        hcm["http_filters"] = [{"name": chain, "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.filter_chain.v3.FilterChainConfig",
            "default_filter_chain": {"filters": [pep("bank-api", "unanimous")]}}}, router]
        hosts[1]["routes"][0]["typed_per_filter_config"] = {chain: {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.filter_chain.v3.FilterChainConfigPerRoute",
            "filter_chain": {"filters": [pep("bank-api-affirmative", "affirmative")]}}}
    hcm["route_config"]["virtual_hosts"] = hosts
    return config


def per_route_footprint():
    """The per-route forms' cost with the same two keycloak.json: Envoy's Wasm VMs, the plugins'
    linear memory and Envoy's RSS, two workers, after both routes answered a warm-up. The verdicts
    are printed too (seed 002: the teller is refused by the unanimous route only)."""
    tokens = {u: token(u) for u in ("owner", "teller")}
    out = {}
    for form in ("rules", "filter_chain", "filter_chain_own_vms"):
        envoy = Envoy(f"per-route-{form}", config=per_route_config(form), concurrency=2)
        try:
            def status(host, user):
                headers = {"Host": f"{host}.bank.local", "Authorization": f"Bearer {tokens[user]}"}
                return get(f"http://127.0.0.1:{PORT}/account/1", headers, timeout=5)[0]
            wait_until(f"per-route {form}: 200", lambda: status("unanimous", "owner") == 200, 60)
            verdicts = {f"{u}@{h}": status(h, u) for u in tokens for h in ("unanimous", "affirmative")}
            for host in ("unanimous", "affirmative"):
                c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
                for _ in range(300):
                    c.request("GET", "/account/1", headers={"Host": f"{host}.bank.local",
                                                            "Authorization": f"Bearer {tokens['owner']}"})
                    c.getresponse().read()
                c.close()
            out[form] = {"wasm_vms": envoy.stat("wasm.wasm_vm_count"),
                         "wasm_memory_mb": round(envoy.stat("wasmcustom.kcpep.wasm.memory_bytes") / 1048576, 1),
                         "rss_mb": rss_mb(envoy.proc.pid), "verdicts": verdicts}
        finally:
            envoy.stop()
    print("  per-route forms, 2 workers, two keycloak.json: " + "; ".join(
        f"{form} {r['wasm_vms']} VMs, Wasm memory {r['wasm_memory_mb']} MB, RSS {r['rss_mb']} MB"
        for form, r in out.items()), flush=True)
    print("  per-route verdicts: " + "; ".join(
        f"{form} " + " ".join(f"{k}={v}" for k, v in r["verdicts"].items()) for form, r in out.items()), flush=True)
    return out


def jwt_authn_filters():
    """Case 6, the native anchor: what checking a Keycloak token costs in Envoy itself. Envoy's
    jwt_authn (C++, the realm's keys inline, its JWT cache on) and RBAC allowing account owners
    by the token's realm roles, on the same route."""
    _, jwks = get(f"{KEYCLOAK}/realms/bank/protocol/openid-connect/certs")
    role = {"metadata": {"filter": "envoy.filters.http.jwt_authn",
                         "path": [{"key": "jwt"}, {"key": "realm_access"}, {"key": "roles"}],
                         "value": {"list_match": {"one_of": {"string_match": {"exact": "account_owner"}}}}}}
    return [
        {"name": "envoy.filters.http.jwt_authn", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"keycloak": {"issuer": f"{KEYCLOAK}/realms/bank",
                                       "local_jwks": {"inline_string": jwks.decode()},
                                       "payload_in_metadata": "jwt",
                                       "jwt_cache_config": {"jwt_cache_size": 1000}}},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "keycloak"}}]}},
        {"name": "envoy.filters.http.rbac", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "rules": {"action": "ALLOW", "policies": {"owners": {"permissions": [{"any": True}],
                                                                 "principals": [role]}}}}},
    ]


# The host-call probe: dist/noop.wasm doing COUNT of one host call per request, against the bare
# no-op, alternately; (1/rps_probe - 1/rps_noop) / COUNT is what one call costs inside Envoy.
PROBE_OPS = ("map", "header", "set_header", "set_property", "get_property", "metric", "time", "verify", "cas")
PROBE_COUNT = 20


def host_call_costs(tok):
    runs = {op: [] for op in ("",) + PROBE_OPS}
    for _ in range(REPEAT):
        for op in runs:
            envoy = Envoy("probe", "dist/noop.wasm", f"{op}:{PROBE_COUNT}" if op else {})
            try:
                wait_until("probe: 200", lambda: ok_status(tok) == 200, 30)
                wrk(16, 1, tok)
                runs[op].append(wrk(16, 4, tok)["rps"])
            finally:
                envoy.stop()
    med = {op: sorted(v)[len(v) // 2] for op, v in runs.items()}
    costs = {op: round((1e6 / med[op] - 1e6 / med[""]) / PROBE_COUNT, 2) for op in PROBE_OPS}
    print("  host calls inside Envoy, us per call (medians of alternating runs, the same token "
          "header as case 3): " + ", ".join(f"{op} {c}" for op, c in costs.items()), flush=True)
    return {"us_per_call": costs, "noop_rps": round(med[""]), "count_per_request": PROBE_COUNT}


# What a DPoP hit makes beside a bearer hit (tests/abi.rs a_dpop_hit_makes_only_the_host_calls_it_needs):
# one verify_signature, one property read, three shared-data reads and two writes.
DPOP_EXTRA_CALLS = "verify:1,get_property:1,cas:2,get_shared:1"


def dpop_parts():
    """Where a DPoP hit's CPU goes beyond a bearer hit's, each part measured alone and alternately:
    the larger request (the no-op filter sent the DPoP requests instead of the bearer ones), the
    extra host calls (the no-op filter making them, the DPoP requests sent), and what is left, the
    module's own work. Medians of REPEAT rounds of Envoy's CPU per request."""
    runs = {k: [] for k in ("noop", "noop_dpop_request", "noop_dpop_calls", "hit", "dpop_hit")}
    for _ in range(REPEAT):
        tok = owner_token()
        proofs = dpop_proofs(tok, DPOP_PROOFS, os.path.join(RUN, "dpop-proofs.txt"))
        runs["noop"].append(run_case("d no-op, bearer request", "dist/noop.wasm", {}, tok, where=True))
        runs["noop_dpop_request"].append(
            run_case("d no-op, DPoP request", "dist/noop.wasm", {}, tok, proofs=proofs, where=True))
        runs["noop_dpop_calls"].append(run_case("d no-op, DPoP's extra calls", "dist/noop.wasm", DPOP_EXTRA_CALLS,
                                                tok, proofs=proofs, where=True))
        runs["hit"].append(run_case("d keycloak-pep, cache hit", "dist/keycloak_pep.wasm", plugin_config(True), tok,
                                    where=True))
        proofs = dpop_proofs(tok, DPOP_PROOFS, os.path.join(RUN, "dpop-proofs.txt"))
        runs["dpop_hit"].append(run_case("d keycloak-pep, DPoP hit", "dist/keycloak_pep.wasm",
                                         dpop_plugin_config(), tok, proofs=proofs, where=True))
    cpu = {k: sorted(r["cpu_us"] for r in v)[len(v) // 2] for k, v in runs.items()}
    parts = {
        "request_us": round(cpu["noop_dpop_request"] - cpu["noop"], 1),
        "host_calls_us": round(cpu["noop_dpop_calls"] - cpu["noop_dpop_request"], 1),
    }
    parts["module_us"] = round(cpu["dpop_hit"] - cpu["hit"] - parts["request_us"] - parts["host_calls_us"], 1)
    # where each case's CPU ran (perf, the throughput runs), medians per place
    where = {k: {place: sorted(r["where_us"][place] for r in v)[len(v) // 2] for place in v[0]["where_us"]}
             for k, v in runs.items() if v and all("where_us" in r for r in v)}
    if len(where) == len(runs):
        for k, w in where.items():
            print(f"  {k}: us per request by where it ran (perf, c16): " +
                  ", ".join(f"{place} {us}" for place, us in w.items()), flush=True)
        # the module's code in V8 beyond a bearer hit's; Envoy's own code beyond what the no-op
        # filter making the same extra calls costs there, the bearer hit's calls taken out
        parts["module_in_v8_us"] = round(where["dpop_hit"]["module"] - where["hit"]["module"], 1)
        parts["envoy_unexplained_us"] = round(
            where["dpop_hit"]["envoy"] - where["noop_dpop_calls"]["envoy"]
            - (where["hit"]["envoy"] - where["noop"]["envoy"]), 1)
    print(f"  a DPoP hit beyond a bearer hit ({cpu['dpop_hit']} against {cpu['hit']} us CPU/request): "
          f"the larger request {parts['request_us']} us, the extra host calls {parts['host_calls_us']} us, "
          f"the module's own work {parts['module_us']} us; by perf: the module's code in V8 "
          f"{parts.get('module_in_v8_us')} us more than a bearer hit's, Envoy's own code "
          f"{parts.get('envoy_unexplained_us')} us more than the same calls from the no-op filter", flush=True)
    return {"cpu_us": cpu, "parts_us": parts, "where_us": where, "extra_calls": DPOP_EXTRA_CALLS, "runs": runs}


USERS = int(os.environ.get("KCPEP_BENCH_USERS", "1000"))
MIX_SECONDS = int(os.environ.get("KCPEP_BENCH_MIX_SECONDS", "60"))
ROLES = ("account_owner", "bank_teller", "user")
# The many-users enforcer: five resources of the bank realm, ten (resource, scopes) pairs.
MIX_PATHS = [
    {"name": "View Account Resource", "path": "/account/{id}",
     "methods": [{"method": "GET", "scopes": ["account:view"]}]},
    {"name": "Transfer Resource", "path": "/transfer/*",
     "methods": [{"method": "GET", "scopes": ["transfer:view"]}, {"method": "POST", "scopes": ["transfer:create"]},
                 {"method": "PUT", "scopes": ["transfer:create", "transfer:view"]}]},
    {"name": "Ops Resource", "path": "/ops/*",
     "methods": [{"method": "GET", "scopes": ["GET"]}, {"method": "POST", "scopes": ["POST"]},
                 {"method": "PUT", "scopes": ["GET", "POST"]}]},
    {"name": "Revocable Resource", "path": "/revocable/*"},
    {"name": "Branch Statement", "path": "/branch/statement"},
    {"name": "Lazy Report", "path": "/reports/{id}", "methods": [{"method": "GET", "scopes": ["report:view"]}]},
]
# one request per (resource, scopes) pair: 10 decisions per user
FILL_REQUESTS = ["GET /account/1", "GET /transfer/1", "POST /transfer/1", "PUT /transfer/1", "GET /ops/1",
                 "POST /ops/1", "PUT /ops/1", "GET /revocable/1", "GET /branch/statement", "GET /reports/1"]
# 20 requests, most popular first (Zipf-like weights 1/rank)
MIX_REQUESTS = [f"GET /account/{i}" for i in range(1, 9)] + [
    "GET /transfer/1", "GET /transfer/2", "POST /transfer/1", "GET /ops/1", "GET /account/9", "GET /transfer/3",
    "PUT /transfer/2", "GET /ops/2", "POST /ops/1", "GET /revocable/1", "GET /branch/statement", "GET /reports/1"]


def admin_call(method, path, body=None, tok=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{KEYCLOAK}/admin/realms/bank{path}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def bench_users(n):
    """n users of the bank realm (bench-0000, ...: a third each account owners, tellers and plain
    users) and a token of each, from Keycloak. While they are imported and log in the realm
    hashes passwords with one PBKDF2 iteration (Keycloak's default of 210,000 would take minutes
    for 1,000 logins on two cores); the realm's policy is put back afterwards."""
    body = urllib.parse.urlencode({"grant_type": "password", "client_id": "admin-cli",
                                   "username": os.environ.get("KEYCLOAK_ADMIN_USER", "admin"),
                                   "password": os.environ.get("KEYCLOAK_ADMIN_PASSWORD", "admin")}).encode()
    status, raw = get(f"{KEYCLOAK}/realms/master/protocol/openid-connect/token", data=body)
    if status != 200:
        sys.exit(f"bench: no admin token: {status}")
    admin = json.loads(raw)["access_token"]
    status, raw = admin_call("GET", "", tok=admin)
    policy = json.loads(raw).get("passwordPolicy") or ""
    admin_call("PUT", "", {"passwordPolicy": "hashIterations(1)"}, admin)
    try:
        users = [{"username": f"bench-{i:04d}", "enabled": True, "email": f"bench-{i:04d}@bank.local",
                  "emailVerified": True, "firstName": "Bench", "lastName": f"User {i}",
                  "realmRoles": ["default-roles-bank", ROLES[i % 3]],
                  "credentials": [{"type": "password", "value": "password", "temporary": False}]}
                 for i in range(n)]
        status, raw = admin_call("POST", "/partialImport", {"ifResourceExists": "SKIP", "users": users}, admin)
        if status != 200:
            sys.exit(f"bench: cannot import the bench users: {status} {raw[:300]!r}")
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(token, (u["username"] for u in users)))
    finally:
        admin_call("PUT", "", {"passwordPolicy": policy}, admin)


def many_users(tokens, protocol="uma-grant", fill_table=True):
    """1,000 users' real tokens over 20 requests with Zipf-like popularity (weights 1/rank for
    users and requests), two workers, a cold filter, MIX_SECONDS; then (fill_table) every user
    asks every (resource, scopes) pair once, 10,000 decisions, and Envoy's RSS is read again.
    `protocol`: the enforcer's decision-protocol; Keycloak's decision calls are counted at the
    endpoint it asks (the token endpoint's UMA grants, or AuthZEN's evaluations)."""
    plugin = plugin_config(True, protocol)
    plugin["policy-enforcer"] = {"paths": MIX_PATHS}
    os.makedirs(RUN, exist_ok=True)
    files = {}
    for name, lines in (("tokens", tokens), ("mix", MIX_REQUESTS), ("fill", FILL_REQUESTS)):
        files[name] = os.path.join(RUN, f"{name}.txt")
        with open(files[name], "w") as f:
            f.write("\n".join(lines) + "\n")
    envoy = Envoy("many-users", "dist/keycloak_pep.wasm", plugin, concurrency=2)
    stat = lambda n: envoy.stat(f"wasmcustom.kcpep.{n}")
    calls = "keycloak.calls.token" if protocol == "uma-grant" else "keycloak.calls.authzen"
    try:
        wait_until("many users: filter ready", lambda: ok_status(tokens[0]) == 200, 60)
        warm_rss = rss_mb(envoy.proc.pid)
        before = {n: stat(n) for n in ("cache.hit", "cache.miss", "cache.coalesced", calls)}
        r = wrk(16, MIX_SECONDS, None, KCPEP_TOKENS_FILE=files["tokens"], KCPEP_REQUESTS_FILE=files["mix"])
        d = {n: stat(n) - v for n, v in before.items()}
        decided = d["cache.hit"] + d["cache.miss"] + d["cache.coalesced"]
        lat = wrk(1, 10, None, KCPEP_TOKENS_FILE=files["tokens"], KCPEP_REQUESTS_FILE=files["mix"])
        mix = {"rps": round(r["rps"]), "p50_us": lat["p50_us"], "p99_us": lat["p99_us"],
               "p50_us_c16": r["p50_us"], "p99_us_c16": r["p99_us"], "non2xx": r["non2xx"],
               "hit_ratio": round(d["cache.hit"] / decided, 3) if decided else None,
               "keycloak_decision_calls_per_s": round(d[calls] / MIX_SECONDS, 1),
               "decision_protocol": protocol,
               "users": len(tokens), "requests": len(MIX_REQUESTS), "seconds": MIX_SECONDS}
        print(f"  many users ({protocol}): {len(tokens)} users x {len(MIX_REQUESTS)} requests (Zipf), 2 workers, "
              f"{MIX_SECONDS} s: {mix['rps']} rps (c16, p50 {r['p50_us']} us, p99 {r['p99_us']} us), "
              f"c1 p50 {lat['p50_us']} us p99 {lat['p99_us']} us, hit ratio {mix['hit_ratio']}, "
              f"{mix['keycloak_decision_calls_per_s']} Keycloak decision calls/s ({calls}), non-2xx {r['non2xx']} "
              "(plain users and tellers are denied some)", flush=True)
        if not fill_table:
            return mix, None
        # every (user, pair) once: the decision table fills
        target = len(tokens) * len(FILL_REQUESTS)
        deadline, entries, last = time.time() + 300, stat("cache.entries"), -1
        # until every pair was asked (the table stops growing: some slots are shared by two keys)
        while entries < target and entries != last and time.time() < deadline:
            wrk(16, 10, None, KCPEP_TOKENS_FILE=files["tokens"], KCPEP_REQUESTS_FILE=files["fill"],
                KCPEP_SEQUENTIAL="1")
            last, entries = entries, stat("cache.entries")
        fill = {"decisions_in_table": entries, "rss_warm_mb": warm_rss, "rss_mb": rss_mb(envoy.proc.pid),
                "max_entries": plugin["kcpep"]["decision-cache"]["max-entries"]}
        fill["rss_growth_mb"] = round(fill["rss_mb"] - warm_rss, 1)
        print(f"  decision table: {entries} decisions cached (max-entries {fill['max_entries']}): Envoy RSS "
              f"{warm_rss} MB warm -> {fill['rss_mb']} MB (+{fill['rss_growth_mb']} MB)", flush=True)
        return mix, fill
    finally:
        envoy.stop()


def chart(cases, path):
    """results/bench-*.png: throughput and latency per case, side by side."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: no matplotlib here (pip install matplotlib): no chart", flush=True)
        return None
    shown = [(k, v) for k, v in cases.items() if not v.get("skipped")]
    if not shown:
        return None  # KCPEP_BENCH_CASES chose no wrk case
    labels = [k.split("_", 1)[1].replace("_", " ") for k, _ in shown]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    def scale(ax, values, what):
        # log only where the cases differ by orders of magnitude (the uncached and Java cases)
        if max(values) > 20 * max(min(values), 1):
            ax.set_xscale("log")
            what += " (log scale)"
        ax.set_xlabel(what)

    rps = [v["rps"] for _, v in shown]
    a.barh(labels, rps, color="#3b7dd8")
    scale(a, rps, "requests per second, 16 connections")
    a.invert_yaxis()
    y = range(len(shown))
    b.barh([i - 0.2 for i in y], [v["p50_us"] for _, v in shown], height=0.4, label="p50", color="#3b7dd8")
    b.barh([i + 0.2 for i in y], [v["p99_us"] for _, v in shown], height=0.4, label="p99", color="#e07b39")
    b.set_yticks(list(y))
    b.set_yticklabels(labels)
    scale(b, [v["p99_us"] for _, v in shown] + [v["p50_us"] for _, v in shown],
          "latency, 1 connection, µs")
    b.invert_yaxis()
    b.legend()
    fig.suptitle("make bench: Envoy 1.40, one worker, routes answered by direct_response")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def coalescing():
    envoy = Envoy("coalesce", "dist/keycloak_pep.wasm", plugin_config(True), concurrency=2)
    try:
        # Ready: a different user's request passes through the filter (a separate cache key).
        warm = token("both")
        wait_until("coalesce: filter ready", lambda: ok_status(warm) == 200, 30)
        # Background fetches settle: the Keycloak request counter stays still for a second.
        last, still_since = -1, time.time()
        deadline = time.time() + 30
        while time.time() < deadline:
            now = envoy.stat("cluster.keycloak.upstream_rq_total")
            if now != last:
                last, still_since = now, time.time()
            elif time.time() - still_since >= 1.0:
                break
            time.sleep(0.05)
        tok = token("owner")
        before = envoy.stat("cluster.keycloak.upstream_rq_total")
        barrier = threading.Barrier(64)
        statuses = []
        lock = threading.Lock()

        def one():
            c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=20)
            c.connect()
            barrier.wait()
            c.request("GET", "/account/1", headers={"Host": "bench.local", "Authorization": f"Bearer {tok}"})
            s = c.getresponse().status
            with lock:
                statuses.append(s)
            c.close()

        threads = [threading.Thread(target=one) for _ in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        calls = envoy.stat("cluster.keycloak.upstream_rq_total") - before
        waited = envoy.stat("wasmcustom.kcpep.cache.coalesced")
        ok = sum(1 for s in statuses if s == 200)
        print(f"  coalescing: 64 concurrent identical requests, --concurrency 2, cold cache: "
              f"{calls} Keycloak call(s), {ok}/64 answered 200, {waited} waited for another request", flush=True)
        return {"keycloak_calls": calls, "ok": ok, "coalesced": waited}
    finally:
        envoy.stop()


def main():
    started_stack = subprocess.run([STACK, "status"], capture_output=True).returncode != 0
    if started_stack:
        subprocess.run([STACK, "up"], check=True, stdout=subprocess.DEVNULL)
    try:
        owner = owner_token()
        print(f"bench: Envoy 1.40, --concurrency 1, wrk -t1, {DURATION} s per measurement after {WARMUP} s warm-up, "
              "routes answered by direct_response", flush=True)
        only = os.environ.get("KCPEP_BENCH_CASES")  # e.g. "2,3" while investigating; all by default
        wanted = lambda n: not only or n in only.split(",")
        skipped = {"rps": 1, "p50_us": 0, "p99_us": 0, "skipped": True}
        cases = {"1_bare": run_case("1 no filter", None, None, None) if wanted("1") else skipped}
        # The ratio that matters (3 vs 2) moves by 10-20 % between single runs on a 2-core machine:
        # cases 2 and 3 run alternately REPEAT times and each figure is the median.
        runs = {"2_noop": [], "3_pep_cache_hit": [], "6_jwt_authn_rbac": [], "7_pep_hit_filter_state_only": [],
                "8_pep_dpop_proof_hit": []}
        # KCPEP_BENCH_BASELINE_WASM: another build of the filter (an earlier commit's) measured on the
        # cache-hit path in the same alternation, so a change is compared with what it replaced.
        baseline = os.environ.get("KCPEP_BENCH_BASELINE_WASM")
        if baseline:
            runs["3_baseline_cache_hit"] = []
            runs["8_baseline_dpop_proof_hit"] = []
        for round_no in range(REPEAT):
            owner = owner_token()
            if wanted("2"):
                runs["2_noop"].append(run_case("2 no-op proxy-wasm filter", "dist/noop.wasm", {}, None))
            hit = lambda: runs["3_pep_cache_hit"].append(
                run_case("3 keycloak-pep, cache hit", "dist/keycloak_pep.wasm", plugin_config(True), owner))
            base = lambda: runs["3_baseline_cache_hit"].append(
                run_case("3 baseline build, cache hit", os.path.abspath(baseline), plugin_config(True), owner))
            # with a baseline, the two builds take turns going first (no position bias)
            order = [hit, base] if round_no % 2 == 0 else [base, hit]
            for run in (order if baseline else [hit]):
                if wanted("3"):
                    run()
            if wanted("7"):
                # the permissions only in the filter state (`send-permissions-header: false`)
                quiet = plugin_config(True)
                quiet["kcpep"]["send-permissions-header"] = False
                runs["7_pep_hit_filter_state_only"].append(run_case(
                    "7 keycloak-pep, hit, no header", "dist/keycloak_pep.wasm", quiet, owner))
            if wanted("8"):
                # every request a new DPoP proof: enough for the busiest run of the three
                def dpop(key, label, wasm):
                    proofs = dpop_proofs(owner, DPOP_PROOFS, os.path.join(RUN, "dpop-proofs.txt"))
                    runs[key].append(run_case(label, wasm, dpop_plugin_config(), owner, proofs=proofs))
                pep = lambda: dpop("8_pep_dpop_proof_hit", "8 keycloak-pep, DPoP proof, hit",
                                   "dist/keycloak_pep.wasm")
                base = lambda: dpop("8_baseline_dpop_proof_hit", "8 baseline build, DPoP hit",
                                    os.path.abspath(baseline))
                for run in (([pep, base] if round_no % 2 == 0 else [base, pep]) if baseline else [pep]):
                    run()
            if wanted("6"):
                native = Envoy("jwt-authn", native=jwt_authn_filters())
                runs["6_jwt_authn_rbac"].append(
                    run_case("6 jwt_authn + RBAC (native)", None, None, owner, native))
        for key, rs in runs.items():
            cases[key] = median_of(rs) if rs else skipped
            if len(rs) > 1:
                print(f"  {key}: median of {len(rs)} runs: {cases[key]['cpu_us']} us CPU/request, "
                      f"{cases[key]['rps']} rps, p50 {cases[key]['p50_us']} us", flush=True)
        owner = owner_token()
        cases["4_pep_no_cache"] = (
            run_case("4 keycloak-pep, no cache", "dist/keycloak_pep.wasm", plugin_config(False), owner)
            if wanted("4") else skipped)
        owner = owner_token()
        cases["9_pep_authzen_no_cache"] = (
            run_case("9 keycloak-pep, AuthZEN, no cache", "dist/keycloak_pep.wasm",
                     plugin_config(False, "authzen"), owner)
            if wanted("9") else skipped)
        owner = owner_token()
        cases["5_java_enforcer"] = (
            run_case("5 Keycloak's Java enforcer", None, None, owner, JavaEnforcer("java-enforcer"))
            if wanted("5") and shutil.which("java") and shutil.which("mvn") else skipped)
        co = coalescing() if wanted("c") else {"keycloak_calls": None, "ok": 0, "coalesced": 0}
        fp = footprint(owner_token()) if wanted("f") else None
        probe = host_call_costs(owner_token()) if wanted("h") else None
        dparts = dpop_parts() if wanted("d") else None
        mix = fill = mix_authzen = None
        if wanted("m"):
            users = bench_users(USERS)
            mix, fill = many_users(users)
            # the same mix with every decision from AuthZEN (the table not filled again)
            mix_authzen, _ = many_users(users, "authzen", fill_table=False)
    finally:
        if started_stack:
            subprocess.run([STACK, "down"], stdout=subprocess.DEVNULL)
    wasm_bytes = os.path.getsize(os.path.join(ROOT, "dist", "keycloak_pep.wasm"))
    wasm_kb = round(wasm_bytes / 1024)
    import tomllib
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        budget = tomllib.load(f)["package"]["metadata"]["kcpep"]["wasm-budget-bytes"]
    bare, noop, hit, nocache = (cases[k] for k in ("1_bare", "2_noop", "3_pep_cache_hit", "4_pep_no_cache"))
    summary = {}
    # CPU per request first: the figure that does not depend on how the load generator and the
    # stack share this machine's two cores
    for key, case in (("hit", hit), ("noop", noop), ("jwt_authn", cases["6_jwt_authn_rbac"]),
                      ("dpop_hit", cases["8_pep_dpop_proof_hit"]), ("bare", bare)):
        if case.get("cpu_us") is not None:
            summary[f"cpu_us_{key}"] = case["cpu_us"]
    if "cpu_us_hit" in summary and "cpu_us_noop" in summary:
        summary["cpu_us_hit_minus_noop"] = round(summary["cpu_us_hit"] - summary["cpu_us_noop"], 1)
    summary.update({
        "hit_vs_noop_rps": round(hit["rps"] / noop["rps"], 2),
        "hit_vs_noop_p50_us": hit["p50_us"] - noop["p50_us"],
        "hit_vs_bare_rps": round(hit["rps"] / bare["rps"], 2),
        "nocache_vs_noop_rps": round(nocache["rps"] / noop["rps"], 3),
        "coalesce_calls": co["keycloak_calls"],
        "wasm_kb": wasm_kb,
        "wasm_bytes": wasm_bytes,
        "wasm_budget_bytes": budget,
        "wasm_over_budget_bytes": max(wasm_bytes - budget, 0),
    })
    if fp:
        summary["rss_delta_mb"] = round(fp["rss_mb"]["pep"] - fp["rss_mb"]["noop"], 1)
        for k, v in fp["rss_parts_mb"].items():
            summary[f"rss_{k}_mb"] = v
        summary["startup_ms"] = fp["startup_ms"][1]
        summary["startup_ms_4_workers"] = fp["startup_ms"][4]
        summary["startup_ms_noop"] = fp["startup_ms"]["noop"]
        for k, v in (fp.get("startup_split_ms", {}).get(1) or {}).items():
            summary[f"startup_{k}"] = v
        for form, r in fp["per_route"].items():
            summary[f"per_route_{form}_vms"] = r["wasm_vms"]
            summary[f"per_route_{form}_rss_mb"] = r["rss_mb"]
    if not cases["7_pep_hit_filter_state_only"].get("skipped"):
        quiet = cases["7_pep_hit_filter_state_only"]
        summary["hit_no_header_vs_noop_rps"] = round(quiet["rps"] / noop["rps"], 2)
        summary["hit_no_header_vs_noop_p50_us"] = quiet["p50_us"] - noop["p50_us"]
    if not cases["8_pep_dpop_proof_hit"].get("skipped"):
        d = cases["8_pep_dpop_proof_hit"]
        summary["dpop_hit_vs_hit_rps"] = round(d["rps"] / hit["rps"], 2)
        summary["dpop_hit_vs_hit_p50_us"] = d["p50_us"] - hit["p50_us"]
    if probe and "cpu_us_hit" in summary and "cpu_us_dpop_hit" in summary:
        # the DPoP floor: a bearer hit plus what a proof cannot do without, each measured alone
        # (one ES256 check by Envoy's verify_signature, one shared-data compare-and-swap)
        per = probe["us_per_call"]
        summary["dpop_floor_us"] = round(summary["cpu_us_hit"] + per["verify"] + per["cas"], 1)
        summary["dpop_hit_vs_floor"] = round(summary["cpu_us_dpop_hit"] / summary["dpop_floor_us"], 2)
    if dparts:
        for k, v in dparts["parts_us"].items():
            summary[f"dpop_extra_{k}"] = v
    if not cases["6_jwt_authn_rbac"].get("skipped"):
        summary["hit_vs_jwt_authn_rps"] = round(hit["rps"] / cases["6_jwt_authn_rbac"]["rps"], 2)
    if not cases["9_pep_authzen_no_cache"].get("skipped"):
        summary["authzen_nocache_vs_uma_nocache_rps"] = round(
            cases["9_pep_authzen_no_cache"]["rps"] / nocache["rps"], 2)
        summary["authzen_nocache_p99_us"] = cases["9_pep_authzen_no_cache"]["p99_us"]
    if mix_authzen:
        summary["mix_authzen_rps"] = mix_authzen["rps"]
        summary["mix_authzen_kc_calls_per_s"] = mix_authzen["keycloak_decision_calls_per_s"]
        summary["mix_authzen_p99_us"] = mix_authzen["p99_us"]
    if mix:
        summary["mix_rps"] = mix["rps"]
        summary["mix_kc_calls_per_s"] = mix["keycloak_decision_calls_per_s"]
        summary["mix_p99_us"] = mix["p99_us"]
        summary["mix_hit_ratio"] = mix["hit_ratio"]
        summary["rss_growth_10k_decisions_mb"] = fill["rss_growth_mb"]
    if "3_baseline_cache_hit" in cases:
        base = cases["3_baseline_cache_hit"]
        summary["hit_vs_baseline_rps"] = round(hit["rps"] / base["rps"], 2)
        summary["hit_vs_baseline_p50_us"] = hit["p50_us"] - base["p50_us"]
    if cases.get("8_baseline_dpop_proof_hit", {}).get("runs"):
        summary["cpu_us_dpop_hit_baseline"] = cases["8_baseline_dpop_proof_hit"]["cpu_us"]
    os.makedirs(os.path.join(ROOT, "results"), exist_ok=True)
    path = os.path.join(ROOT, "results", time.strftime("bench-%Y%m%dT%H%M%S.json"))
    with open(path, "w") as f:
        json.dump({"cases": cases, "coalescing": co, "footprint": fp, "host_calls": probe,
                   "dpop_parts": dparts,
                   "many_users": mix, "many_users_authzen": mix_authzen, "decision_table": fill,
                   "summary": summary,
                   "duration_s": DURATION, "machine_cores": os.cpu_count()}, f, indent=1)
    java = cases["5_java_enforcer"]
    if not java.get("skipped"):
        print(f"bench: Keycloak's Java enforcer {java['rps']} rps, p50 {java['p50_us']} us; "
              f"keycloak-pep cache hit is {hit['rps'] / java['rps']:.1f}x its throughput")
    print(f"bench: saved {os.path.relpath(path, ROOT)}")
    png = chart(cases, path[:-len(".json")] + ".png")
    if png:
        print(f"bench: chart {os.path.relpath(png, ROOT)}")
    print("bench: " + " ".join(f"{k}={v}" for k, v in summary.items()))


if __name__ == "__main__":
    main()
