//! Istio's control plane without a cluster, serving envoy/istio/ to the PyPI Envoy as the
//! ingress gateway (tests/mesh.rs): `scripts/istio-mesh.sh` (istiod's discovery server
//! in-process over Istio's fake Kubernetes client, tools/istio-validate/mesh) and an Envoy whose
//! bootstrap is a gateway node's ADS connection to it, nothing else: listeners, routes,
//! clusters and the filter all come from istiod.
//!
//! The manifests are the shipped files with the overlay of [`shipped_with_overlay`], the part of
//! a cluster this machine has not: where the module, Keycloak and the upstream are.

use super::{env, request, send_raw_to, send_to, Response};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// istiod's plaintext xDS, the gateway Envoy's admin and the Gateway server's port (the listener
/// Istio makes), the Envoy's `--base-id`: apart from the stack's and the other suites' ports.
pub const XDS_PORT: u16 = 15010;
pub const ADMIN_PORT: u16 = 15000;
pub const GATEWAY_PORT: u16 = 18080;
pub const BASE_ID: u32 = 90;
/// The gateway pod's address in its node id: not 127.0.0.1, which is a ServiceEntry endpoint
/// here (istiod would take that endpoint's labels for the proxy's, and no Gateway would select
/// it). 192.0.2.0/24 is a documentation range.
pub const NODE_IP: &str = "192.0.2.10";
/// The virtual host of envoy/istio/virtualservice.yaml.
pub const HOST: &str = "bank.example.com";
/// The sidecar scenario: the workload's address in its node id (beside [`NODE_IP`]), and the
/// service port its inbound listener takes (bound to 127.0.0.1: no iptables here).
pub const WORKLOAD_IP: &str = "192.0.2.20";
pub const SIDECAR_PORT: u16 = 18090;

/// The proxy Envoy joins istiod as: what its node id and metadata say, and how to tell it has
/// the configuration to serve.
pub struct Node {
    id: String,
    cluster: &'static str,
    metadata: Value,
    /// Whether a config dump holds the routes this node serves (RDS may follow the listener).
    served: fn(&Value) -> bool,
}

impl Node {
    /// The ingress gateway pod of envoy/istio/: `istio=ingressgateway` in namespace `bank`.
    pub fn gateway() -> Node {
        Node {
            // Istio's node id of a gateway: router~<ip>~<pod>.<namespace>~<namespace>.svc.<domain>
            id: format!("router~{NODE_IP}~istio-ingressgateway-kcpep.bank~bank.svc.cluster.local"),
            cluster: "istio-ingressgateway.bank",
            metadata: json!({
                "ISTIO_VERSION": "1.31.0",
                "CLUSTER_ID": "Kubernetes",
                "NAMESPACE": "bank",
                "NAME": "istio-ingressgateway-kcpep",
                "WORKLOAD_NAME": "istio-ingressgateway",
                "SERVICE_ACCOUNT": "istio-ingressgateway",
                "MESH_ID": "cluster.local",
                "INSTANCE_IPS": NODE_IP,
                // the pod's labels, which the Gateway's and the WasmPlugin's selectors read
                "LABELS": {"istio": "ingressgateway", "app": "istio-ingressgateway"}
            }),
            served: has_routes,
        }
    }

    /// A `bank-api` pod's sidecar (`app=bank-api`, [`WORKLOAD_IP`]) with no traffic capture
    /// (`INTERCEPTION_MODE: NONE`, as a VM's sidecar without iptables): the `Sidecar` of
    /// [`sidecar_manifests`] binds its inbound listener to 127.0.0.1.
    pub fn sidecar() -> Node {
        Node {
            id: format!("sidecar~{WORKLOAD_IP}~bank-api-0.bank~bank.svc.cluster.local"),
            cluster: "bank-api.bank",
            metadata: json!({
                "ISTIO_VERSION": "1.31.0",
                "CLUSTER_ID": "Kubernetes",
                "NAMESPACE": "bank",
                "NAME": "bank-api-0",
                "WORKLOAD_NAME": "bank-api",
                "SERVICE_ACCOUNT": "bank-api",
                "MESH_ID": "cluster.local",
                "INSTANCE_IPS": WORKLOAD_IP,
                "INTERCEPTION_MODE": "NONE",
                "LABELS": {"app": "bank-api"}
            }),
            served: |dump| {
                inbound_hcm(dump).is_some_and(|hcm| hcm["route_config"]["virtual_hosts"].is_array())
            },
        }
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A named YAML file of documents (written as JSON, which is YAML).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub file: String,
    pub docs: Vec<Value>,
}

impl Manifest {
    /// The document of this kind and name; panics when absent.
    pub fn doc_mut(&mut self, kind: &str, name: &str) -> &mut Value {
        let file = self.file.clone();
        self.docs
            .iter_mut()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{file}: no {kind} {name}"))
    }

    fn text(&self) -> String {
        self.docs
            .iter()
            .map(|d| format!("---\n{d}\n"))
            .collect::<String>()
    }
}

/// The manifests of envoy/istio/, the files users copy, with the overlay this machine needs, and
/// nothing else changed:
///
/// - `wasmplugin.yaml`: `url` is `file://` of `dist/keycloak_pep.wasm` (an `oci://` image needs
///   istio-agent to pull it; istiod hands a `file://` URL to Envoy as a local file), and each
///   enforcer's `auth-server-url` is the test Keycloak's URL (the issuer of its tokens). The
///   calls still go to `outbound|80||sso.example.com` with `:authority` `sso.example.com`.
/// - `virtualservice.yaml`: the Gateway's server is plain HTTP on [`GATEWAY_PORT`] (the shipped
///   HTTPS server's `credentialName` needs SDS from istio-agent).
/// - `keycloak-serviceentry.yaml`: `sso.example.com` is the test Keycloak (a static endpoint
///   127.0.0.1, `targetPort` its port) in plain HTTP: the DestinationRule's TLS origination
///   (`portLevelSettings`) is left out; its connection pool and outlier detection stay.
/// - `mesh-safety.yaml`: as shipped (the IstioOperator's `meshConfig` is istiod's mesh
///   configuration, the EnvoyFilter is applied).
/// - added, `bank-api-service.yaml`: a ServiceEntry for `bank-api.bank.svc.cluster.local:8080`,
///   the VirtualService's destination (a Kubernetes Service in a cluster), on the stack's echo
///   upstream.
pub fn shipped_with_overlay() -> Vec<Manifest> {
    let dir = root().join("envoy/istio");
    let read = |file: &str| Manifest {
        file: file.to_string(),
        docs: super::yaml::read(&dir.join(file)),
    };
    let (kc_host, kc_port) = super::own_envoy::keycloak_address();
    let keycloak = super::keycloak();

    let mut plugin = read("wasmplugin.yaml");
    let wp = plugin.doc_mut("WasmPlugin", "keycloak-pep");
    wp["spec"]["url"] = json!(format!(
        "file://{}",
        root().join("dist/keycloak_pep.wasm").display()
    ));
    let enforcers = wp["spec"]["pluginConfig"]["enforcers"]
        .as_object_mut()
        .expect("pluginConfig.enforcers");
    for e in enforcers.values_mut() {
        e["auth-server-url"] = json!(keycloak);
    }

    let mut vs = read("virtualservice.yaml");
    let gw = vs.doc_mut("Gateway", "bank-gateway");
    let hosts = gw["spec"]["servers"][0]["hosts"].clone();
    gw["spec"]["servers"] = json!([{
        "port": {"number": GATEWAY_PORT, "name": "http", "protocol": "HTTP"},
        "hosts": hosts
    }]);

    let mut se = read("keycloak-serviceentry.yaml");
    let entry = se.doc_mut("ServiceEntry", "keycloak");
    entry["spec"]["resolution"] = json!("STATIC");
    entry["spec"]["endpoints"] = json!([{"address": kc_host}]);
    entry["spec"]["ports"][0]["targetPort"] = json!(kc_port);
    let dr = se.doc_mut("DestinationRule", "keycloak");
    dr["spec"]["trafficPolicy"]
        .as_object_mut()
        .expect("DestinationRule trafficPolicy")
        .remove("portLevelSettings")
        .expect("the shipped DestinationRule originates TLS in portLevelSettings");

    let safety = read("mesh-safety.yaml");

    let upstream = env("KCPEP_UPSTREAM_URL");
    let authority = upstream.trim_start_matches("http://").trim_end_matches('/');
    let (up_host, up_port) = authority.split_once(':').expect("upstream host:port");
    let service = Manifest {
        file: "bank-api-service.yaml".into(),
        docs: vec![json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "ServiceEntry",
            "metadata": {"name": "bank-api", "namespace": "bank"},
            "spec": {
                "hosts": ["bank-api.bank.svc.cluster.local"],
                "location": "MESH_INTERNAL",
                "resolution": "STATIC",
                "ports": [{"number": 8080, "name": "http", "protocol": "HTTP",
                           "targetPort": up_port.parse::<u16>().expect("upstream port")}],
                "endpoints": [{"address": up_host}]
            }
        })],
    };
    vec![plugin, vs, se, safety, service]
}

/// The sidecar scenario: the overlay's manifests with `bank-api` as a workload of the mesh
/// (a `bank-api-0` pod at [`WORKLOAD_IP`], labelled `app=bank-api`) whose sidecar
/// ([`Node::sidecar`]) takes inbound traffic on [`SIDECAR_PORT`] and hands it to the stack's echo
/// upstream, and a second WasmPlugin, the shipped one with `selector: app=bank-api`, on it:
///
/// - `bank-api-service.yaml` is replaced by a ServiceEntry selecting the workload, the
///   WorkloadEntry a pod would be, a `Sidecar` (ingress bound to 127.0.0.1, the workload at the
///   echo upstream's address; egress to the Keycloak ServiceEntry only) and a PeerAuthentication
///   with mTLS off (the listener's certificates come from istio-agent, which is not here);
/// - `wasmplugin-sidecar.yaml`: the WasmPlugin `keycloak-pep-sidecar`.
pub fn sidecar_manifests() -> Vec<Manifest> {
    let mut manifests = shipped_with_overlay();
    let upstream = env("KCPEP_UPSTREAM_URL");
    let upstream = upstream.trim_start_matches("http://").trim_end_matches('/');
    let selector = json!({"app": "bank-api"});
    let workload = Manifest {
        file: "bank-api-workload.yaml".into(),
        docs: vec![
            json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "ServiceEntry",
                "metadata": {"name": "bank-api", "namespace": "bank"},
                "spec": {
                    "hosts": ["bank-api.bank.svc.cluster.local"],
                    "location": "MESH_INTERNAL",
                    "resolution": "STATIC",
                    "ports": [{"number": SIDECAR_PORT, "name": "http", "protocol": "HTTP"}],
                    "workloadSelector": {"labels": selector}
                }
            }),
            json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "WorkloadEntry",
                "metadata": {"name": "bank-api-0", "namespace": "bank"},
                "spec": {"address": WORKLOAD_IP, "labels": selector, "serviceAccount": "bank-api"}
            }),
            json!({
                "apiVersion": "networking.istio.io/v1",
                "kind": "Sidecar",
                "metadata": {"name": "bank-api", "namespace": "bank"},
                "spec": {
                    "workloadSelector": {"labels": selector},
                    "ingress": [{
                        "port": {"number": SIDECAR_PORT, "protocol": "HTTP", "name": "http"},
                        "bind": "127.0.0.1",
                        "defaultEndpoint": upstream
                    }],
                    "egress": [{"hosts": ["./sso.example.com"]}]
                }
            }),
            json!({
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "bank-api", "namespace": "bank"},
                "spec": {"selector": {"matchLabels": selector}, "mtls": {"mode": "DISABLE"}}
            }),
        ],
    };
    let mut plugin = wasm_plugin(&mut manifests).clone();
    plugin["metadata"]["name"] = json!("keycloak-pep-sidecar");
    plugin["spec"]["selector"] = json!({"matchLabels": selector});
    manifests.retain(|m| m.file != "bank-api-service.yaml");
    manifests.push(workload);
    manifests.push(Manifest {
        file: "wasmplugin-sidecar.yaml".into(),
        docs: vec![plugin],
    });
    manifests
}

/// The WasmPlugin document of a set of manifests.
pub fn wasm_plugin(manifests: &mut [Manifest]) -> &mut Value {
    manifests
        .iter_mut()
        .find(|m| m.file == "wasmplugin.yaml")
        .expect("wasmplugin.yaml")
        .doc_mut("WasmPlugin", "keycloak-pep")
}

/// The demo realm's client secrets, as the `istio-proxy` container's environment would carry them
/// (from the Secret of envoy/istio/README.md).
pub fn client_secrets() -> Vec<(&'static str, &'static str)> {
    vec![
        ("KCPEP_CLIENT_SECRET", super::CLIENTS[0].1),
        ("KCPEP_REPORTS_CLIENT_SECRET", super::CLIENTS[1].1),
    ]
}

/// One mesh at a time on these ports, whatever the test threads.
static ONE_MESH: Mutex<()> = Mutex::new(());

/// istiod (scripts/istio-mesh.sh) and the gateway Envoy; both killed when dropped.
pub struct Mesh {
    istiod: Child,
    commands: Option<ChildStdin>,
    answers: Receiver<String>,
    envoy: Option<Child>,
    dir: PathBuf,
    _one: MutexGuard<'static, ()>,
}

impl Mesh {
    /// Starts istiod with `manifests` and the gateway Envoy with `envoy_env` as its only
    /// `KCPEP_*` variables, and waits for Envoy's listener (at most a minute, after the build).
    pub fn start(manifests: &[Manifest], envoy_env: &[(&str, &str)]) -> Mesh {
        Mesh::start_as(Node::gateway(), manifests, envoy_env)
    }

    /// The same with Envoy joining as `node`.
    pub fn start_as(node: Node, manifests: &[Manifest], envoy_env: &[(&str, &str)]) -> Mesh {
        let one = ONE_MESH.lock().unwrap_or_else(|e| e.into_inner());
        let bin = build();
        let dir = root().join(".run/mesh-test");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut files = Vec::new();
        for m in manifests {
            let path = dir.join(&m.file);
            std::fs::write(&path, m.text()).unwrap();
            files.push(path);
        }
        let mut istiod = Command::new(&bin)
            .current_dir(&dir)
            .arg("-xds")
            .arg(format!("127.0.0.1:{XDS_PORT}"))
            .arg("-dir")
            .arg(&dir)
            .args(&files)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("istiod.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
        let stdout = istiod.stdout.take().unwrap();
        let (tx, answers) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut mesh = Mesh {
            commands: istiod.stdin.take(),
            istiod,
            answers,
            envoy: None,
            dir,
            _one: one,
        };
        let ready = mesh.answer("istiod ready", Duration::from_secs(60));
        assert!(ready.starts_with("ready "), "istiod: {ready}");
        mesh.start_envoy(&node, envoy_env);
        mesh
    }

    fn start_envoy(&mut self, node: &Node, envoy_env: &[(&str, &str)]) {
        let bootstrap = json!({
            "node": {"id": node.id, "cluster": node.cluster, "metadata": node.metadata},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": ADMIN_PORT}}},
            "dynamic_resources": {
                "ads_config": {
                    "api_type": "GRPC",
                    "transport_api_version": "V3",
                    "set_node_on_first_message_only": true,
                    "grpc_services": [{"envoy_grpc": {"cluster_name": "xds-grpc"}}]
                },
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
                "lds_config": {"ads": {}, "resource_api_version": "V3"}
            },
            "static_resources": {"clusters": [{
                "name": "xds-grpc",
                "type": "STATIC",
                "connect_timeout": "1s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        "explicit_http_config": {"http2_protocol_options": {}}
                    }
                },
                "load_assignment": {"cluster_name": "xds-grpc", "endpoints": [{"lb_endpoints": [
                    {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": XDS_PORT}}}}
                ]}]}
            }]}
        });
        std::fs::write(self.dir.join("envoy.json"), bootstrap.to_string()).unwrap();
        let mut cmd = Command::new(root().join(".cache/venv/bin/envoy"));
        // istio-proxy's environment: the test's own KCPEP_* variables never leak into it
        for (k, _) in std::env::vars() {
            if k.starts_with("KCPEP_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(envoy_env.iter().copied());
        let child = cmd
            .current_dir(&self.dir)
            .args(["--disable-hot-restart", "--base-id"])
            .arg(BASE_ID.to_string())
            .args(["--concurrency", "2", "-l", "info", "--drain-time-s", "1"])
            // the access log (the mesh's accessLogFile, /dev/stdout) within 0.1 s
            .args(["--file-flush-interval-msec", "100"])
            .arg("-c")
            .arg(self.dir.join("envoy.json"))
            // the mesh's accessLogFile is /dev/stdout
            .stdout(std::fs::File::create(self.dir.join("access.log")).unwrap())
            .stderr(std::fs::File::create(self.dir.join("envoy.log")).unwrap())
            .spawn()
            .expect("Envoy from .cache/venv (scripts/stack.sh install)");
        self.envoy = Some(child);
        let served = node.served;
        let ready = || {
            self.check_alive();
            let up = std::net::TcpStream::connect(("127.0.0.1", ADMIN_PORT)).is_ok();
            // the listener, and its routes (RDS can come after the listener is active)
            (up && request(&self.admin(), "GET", "/ready", &[], b"").status == 200
                && self.stat("listener_manager.total_listeners_active") >= 1
                && served(&self.config_dump()))
            .then_some(())
        };
        if super::try_poll_until(Duration::from_secs(60), ready).is_none() {
            // what Envoy refused of istiod's configuration says why
            let log = self.envoy_log();
            let refused: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("rejected") || l.contains("[error]"))
                .take(10)
                .collect();
            panic!(
                "no listener with its routes from istiod within 60 s; Envoy refused:\n{}\n{}",
                refused.join("\n"),
                tail(&log)
            );
        }
    }

    /// Panics with the logs when istiod or Envoy has exited.
    pub fn check_alive(&mut self) {
        if let Ok(Some(s)) = self.istiod.try_wait() {
            panic!("istiod exited ({s}):\n{}", tail(&self.istiod_log()));
        }
        if let Some(Ok(Some(s))) = self.envoy.as_mut().map(Child::try_wait) {
            panic!("Envoy exited ({s}):\n{}", tail(&self.envoy_log()));
        }
    }

    fn answer(&mut self, what: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            match self.answers.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => return line,
                Err(RecvTimeoutError::Timeout) if Instant::now() < deadline => {
                    self.check_alive();
                }
                Err(e) => panic!("{what}: no answer ({e}):\n{}", tail(&self.istiod_log())),
            }
        }
    }

    fn command(&mut self, verb: &str, m: &Manifest) -> Result<String, String> {
        let path = self.dir.join(&m.file);
        std::fs::write(&path, m.text()).unwrap();
        let stdin = self.commands.as_mut().expect("istiod's stdin");
        writeln!(stdin, "{verb} {}", path.display()).unwrap();
        stdin.flush().unwrap();
        let line = self.answer(&format!("{verb} {}", m.file), Duration::from_secs(30));
        match line.strip_prefix("ok ") {
            Some(done) => Ok(done.to_string()),
            None => Err(line.trim_start_matches("error ").to_string()),
        }
    }

    /// `kubectl apply -f` of the manifest (written under `.run/mesh-test/` by its file name).
    pub fn apply(&mut self, m: &Manifest) -> Result<String, String> {
        self.command("apply", m)
    }

    /// `kubectl delete -f` of the manifest.
    pub fn delete(&mut self, m: &Manifest) -> Result<String, String> {
        self.command("delete", m)
    }

    pub fn admin(&self) -> String {
        format!("http://127.0.0.1:{ADMIN_PORT}")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{GATEWAY_PORT}")
    }

    /// A request to the sidecar's inbound listener, as a client in the mesh sends it.
    pub fn get_inbound(&self, path: &str, token: Option<&str>) -> Response {
        let base = format!("http://127.0.0.1:{SIDECAR_PORT}");
        let host = format!("bank-api.bank.svc.cluster.local:{SIDECAR_PORT}");
        send_to(&base, "GET", &host, path, token, &[], b"")
    }

    /// One of Envoy's stats by its whole name (the filter's: `wasmcustom.kcpep.*`).
    pub fn stat(&self, name: &str) -> i64 {
        super::envoy_stat(&self.admin(), name)
    }

    /// Requests the gateway sent to the upstream (`bank-api`'s cluster); `None` when Envoy has no
    /// such cluster.
    pub fn upstream_requests(&self) -> Option<i64> {
        // Istio sets each cluster's alt_stat_name to "<name>;"
        let name = "cluster.outbound|8080||bank-api.bank.svc.cluster.local;.upstream_rq_total";
        let r = request(
            &self.admin(),
            "GET",
            "/stats?filter=upstream_rq_total",
            &[],
            b"",
        );
        r.text().lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix(": "))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    /// Envoy's configuration as Istio made it (`/config_dump`, ECDS included).
    pub fn config_dump(&self) -> Value {
        let r = request(
            &self.admin(),
            "GET",
            "/config_dump?include_eds=false",
            &[],
            b"",
        );
        assert_eq!(r.status, 200, "config_dump: {}", r.text());
        r.json()
    }

    /// A request to the gateway for [`HOST`].
    pub fn get(&self, path: &str, token: Option<&str>, extra: &[(&str, &[u8])]) -> Response {
        send_to(&self.url(), "GET", HOST, path, token, extra, b"")
    }

    /// The same through the raw client (bytes ureq would not send).
    pub fn get_raw(
        &self,
        host: &str,
        path: &str,
        token: Option<&str>,
        extra: &[(&str, &[u8])],
    ) -> Response {
        send_raw_to(&self.url(), "GET", host, path, token, extra, b"")
    }

    pub fn envoy_log(&self) -> String {
        read(&self.dir.join("envoy.log"))
    }

    pub fn istiod_log(&self) -> String {
        read(&self.dir.join("istiod.log"))
    }

    pub fn access_log(&self) -> String {
        read(&self.dir.join("access.log"))
    }

    /// A file of this mesh's directory (for a test's own manifests).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(mut e) = self.envoy.take() {
            let _ = e.kill();
            let _ = e.wait();
        }
        // istiod stops at the end of its stdin; killed in case it does not
        drop(self.commands.take());
        let _ = self.istiod.kill();
        let _ = self.istiod.wait();
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The last lines of a log, for a failure message.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Builds tools/istio-validate/mesh when needed (scripts/istio-mesh.sh --build: minutes the
/// first time) and returns the binary.
fn build() -> PathBuf {
    let out = Command::new(root().join("scripts/istio-mesh.sh"))
        .arg("--build")
        .stderr(Stdio::inherit())
        .output()
        .expect("scripts/istio-mesh.sh");
    assert!(
        out.status.success(),
        "scripts/istio-mesh.sh --build failed ({}): Go 1.26 and the Go module proxy are needed",
        out.status
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The gateway listener's connection manager as Istio made it.
pub fn gateway_hcm(dump: &Value) -> Value {
    let listeners = section(dump, "ListenersConfigDump");
    let listener = listeners["dynamic_listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["name"] == format!("0.0.0.0_{GATEWAY_PORT}"))
        .unwrap_or_else(|| panic!("no listener 0.0.0.0_{GATEWAY_PORT} from istiod"));
    let chains = &listener["active_state"]["listener"]["filter_chains"];
    chains
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["filters"].as_array().cloned().unwrap_or_default())
        .find(|f| f["name"] == "envoy.filters.network.http_connection_manager")
        .map(|f| f["typed_config"].clone())
        .expect("the gateway listener's http_connection_manager")
}

/// The connection manager of the sidecar's inbound listener on [`SIDECAR_PORT`], once Envoy has
/// it.
pub fn inbound_hcm(dump: &Value) -> Option<Value> {
    let listeners = section(dump, "ListenersConfigDump");
    let listener = listeners["dynamic_listeners"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| &l["active_state"]["listener"])
        .find(|l| {
            l["traffic_direction"] == "INBOUND"
                && l["address"]["socket_address"]["port_value"] == SIDECAR_PORT
        })?;
    listener["filter_chains"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["filters"].as_array().cloned().unwrap_or_default())
        .find(|f| f["name"] == "envoy.filters.network.http_connection_manager")
        .map(|f| f["typed_config"].clone())
}

/// The names of the gateway's HTTP filters, in order.
pub fn http_filter_names(dump: &Value) -> Vec<String> {
    gateway_hcm(dump)["http_filters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| f["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The ECDS filter configurations Envoy holds, by name.
pub fn ecds_filters(dump: &Value) -> Vec<(String, Value)> {
    section(dump, "EcdsConfigDump")["ecds_filters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let f = &e["ecds_filter"];
            (
                f["name"].as_str().unwrap_or_default().to_string(),
                f["typed_config"].clone(),
            )
        })
        .collect()
}

fn has_routes(dump: &Value) -> bool {
    section(dump, "RoutesConfigDump")["dynamic_route_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["route_config"]["name"] == format!("http.{GATEWAY_PORT}"))
}

/// The Envoy route names Istio generated for the gateway's port (route configuration
/// `http.<port>`), in order.
pub fn generated_route_names(dump: &Value) -> Vec<String> {
    let routes = section(dump, "RoutesConfigDump");
    let config = routes["dynamic_route_configs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| &r["route_config"])
        .find(|c| c["name"] == format!("http.{GATEWAY_PORT}"))
        .unwrap_or_else(|| panic!("no route configuration http.{GATEWAY_PORT} from istiod"));
    route_names(config)
}

/// The names of a route configuration's routes, over its virtual hosts, in order.
pub fn route_names(route_config: &Value) -> Vec<String> {
    route_config["virtual_hosts"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|vh| vh["routes"].as_array().cloned().unwrap_or_default())
        .map(|r| r["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Each `route-name` rule of a plugin configuration that names no route Istio generated, as a
/// message saying which rule and what Istio did generate.
pub fn route_rules_istio_does_not_generate(plugin: &Value, generated: &[String]) -> Vec<String> {
    plugin["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, rule)| {
            let name = rule["route-name"].as_str()?;
            (!generated.iter().any(|g| g == name)).then(|| {
                format!(
                    "routes[{i}].route-name {name:?} names no route Istio generated for the gateway \
                     (it generated: {})",
                    generated.join(", ")
                )
            })
        })
        .collect()
}

fn section<'a>(dump: &'a Value, kind: &str) -> &'a Value {
    dump["configs"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| {
            c["@type"]
                .as_str()
                .is_some_and(|t| t.ends_with(&format!(".{kind}")))
        })
        .unwrap_or_else(|| panic!("no {kind} in Envoy's config_dump"))
}

/// The outcome of one request of a traffic loop: an HTTP status, or the transport error.
pub fn try_get(base: &str, path: &str, token: &str) -> Result<u16, String> {
    static AGENT: std::sync::OnceLock<ureq::Agent> = std::sync::OnceLock::new();
    let agent = AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections(0)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into()
    });
    let auth = format!("Bearer {token}");
    let req = ureq::http::Request::builder()
        .method("GET")
        .uri(format!("{base}{path}"))
        .header("host", HOST)
        .header("authorization", auth)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    agent
        .run(req)
        .map(|r| r.status().as_u16())
        .map_err(|e| e.to_string())
}

/// Istio 1.30's TrafficExtension written from wasmplugin.yaml as envoy/istio/README.md says:
/// `selector`, `targetRefs`, `phase`, `priority` and `match` stay at the top of `spec`, the
/// module's fields move under `wasm:`.
pub fn traffic_extension(wasm_plugin: &Value) -> Value {
    const MODULE: [&str; 9] = [
        "url",
        "sha256",
        "imagePullPolicy",
        "imagePullSecret",
        "pluginConfig",
        "pluginName",
        "failStrategy",
        "vmConfig",
        "type",
    ];
    let mut spec = wasm_plugin["spec"].as_object().unwrap().clone();
    let mut wasm = serde_json::Map::new();
    for field in MODULE {
        if let Some(v) = spec.remove(field) {
            wasm.insert(field.to_string(), v);
        }
    }
    for (field, _) in &spec {
        assert!(
            ["selector", "targetRefs", "phase", "priority", "match"].contains(&field.as_str()),
            "wasmplugin.yaml has {field}, which the README's TrafficExtension mapping does not place"
        );
    }
    spec.insert("wasm".into(), Value::Object(wasm));
    json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "TrafficExtension",
        "metadata": wasm_plugin["metadata"].clone(),
        "spec": spec
    })
}
