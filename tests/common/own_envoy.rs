//! An Envoy of a test's own, beside the stack's: its listener (and so the plugin configuration)
//! from a watched file (LDS from a path), its clusters the test's, in front of the stack's
//! Keycloak and echo upstream. For what the shared stack cannot show: a configuration swapped
//! under traffic, a table sized small enough to fill.

use super::{poll_until, request};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `host:port` of the stack's Keycloak, from its URL (which may carry the `/auth` path).
pub fn keycloak_address() -> (String, u16) {
    let url = super::keycloak();
    let rest = url.trim_start_matches("http://");
    let authority = rest.split('/').next().unwrap();
    let (host, port) = authority.split_once(':').unwrap_or((authority, "80"));
    (host.to_string(), port.parse().unwrap())
}

/// A static cluster of the given ports on Keycloak's host.
pub fn cluster(name: &str, ports: &[u16]) -> Value {
    let (host, _) = keycloak_address();
    let endpoints: Vec<Value> = ports
        .iter()
        .map(|p| json!({"endpoint": {"address": {"socket_address": {"address": host, "port_value": p}}}}))
        .collect();
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s", "lb_policy": "ROUND_ROBIN",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": endpoints}]}
    })
}

/// Where a test's Envoy listens and what it talks to.
pub struct Setup {
    /// Its directory under `.run/`, node id and stat prefix.
    pub name: &'static str,
    pub admin: u16,
    pub listener: u16,
    /// Envoy's `--base-id`, apart from every other Envoy on the machine.
    pub base_id: u32,
    pub clusters: Vec<Value>,
}

/// envoy/envoy.yaml's `keycloak-pep` filter (the one template of every Envoy configuration the
/// tests and benchmarks generate) with `plugin` as its configuration and the built module.
pub fn shipped_filter(plugin: &Value) -> Value {
    let docs = super::yaml::read(&root().join("envoy/envoy.yaml"));
    let listener = docs[0]["static_resources"]["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == "ingress"))
        .expect("envoy/envoy.yaml has the ingress listener");
    let mut filter = listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        .as_array()
        .and_then(|fs| fs.iter().find(|f| f["name"] == "keycloak-pep"))
        .expect("envoy/envoy.yaml's ingress listener has the keycloak-pep filter")
        .clone();
    let config = &mut filter["typed_config"]["config"];
    config["vm_config"]["code"]["local"]["filename"] = json!(root().join("dist/keycloak_pep.wasm"));
    config["configuration"]["value"] = json!(plugin.to_string());
    filter
}

/// The HTTP connection manager of a listener: the filter with `plugin`, then the router to
/// cluster `upstream`.
fn plugin_hcm(setup: &Setup, plugin: &Value) -> Value {
    json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": setup.name,
        "route_config": {"name": "all", "virtual_hosts": [
            {"name": "all", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}
        ]},
        "http_filters": [shipped_filter(plugin), router()]
    })
}

/// Envoy's router filter, last in every chain.
pub fn router() -> Value {
    json!({"name": "envoy.filters.http.router", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
}

/// The listener resource (LDS) around an HTTP connection manager.
fn listener(setup: &Setup, hcm: Value, version: u32) -> Value {
    json!({
        "version_info": version.to_string(),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.listener.v3.Listener",
            "name": setup.name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": setup.listener}},
            "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}]
        }]
    })
}

/// Envoy with a file-based listener; killed when dropped.
pub struct OwnEnvoy {
    child: Child,
    dir: PathBuf,
    version: u32,
    setup: Setup,
}

impl OwnEnvoy {
    /// Envoy with the shipped filter holding `plugin`, routing everything to `upstream`.
    pub fn start(setup: Setup, plugin: &Value) -> OwnEnvoy {
        let hcm = plugin_hcm(&setup, plugin);
        OwnEnvoy::start_hcm(setup, hcm)
    }

    /// Envoy with an HTTP connection manager of the test's own (its filters and routes).
    pub fn start_hcm(setup: Setup, hcm: Value) -> OwnEnvoy {
        let dir = root().join(format!(".run/{}-test", setup.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lds")).unwrap();
        let bootstrap = json!({
            "node": {"id": format!("kcpep-{}", setup.name), "cluster": "kcpep"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": setup.admin}}},
            "dynamic_resources": {"lds_config": {"resource_api_version": "V3", "path_config_source": {
                "path": dir.join("lds/listener.json"),
                "watched_directory": {"path": dir.join("lds")}
            }}},
            "static_resources": {"clusters": setup.clusters}
        });
        std::fs::write(dir.join("bootstrap.json"), bootstrap.to_string()).unwrap();
        let mut envoy = OwnEnvoy {
            child: Command::new(root().join(".cache/venv/bin/envoy"))
                .current_dir(root())
                .args(["--disable-hot-restart", "--base-id"])
                .arg(setup.base_id.to_string())
                .args(["--concurrency", "2"])
                .args(["-l", "info", "--drain-time-s", "2"])
                .arg("-c")
                .arg(dir.join("bootstrap.json"))
                .stdout(Stdio::null())
                // Envoy's own log goes to stderr unbuffered (--log-path is flushed late).
                .stderr(std::fs::File::create(dir.join("envoy.log")).unwrap())
                .spawn()
                .expect("Envoy from .cache/venv (scripts/stack.sh install)"),
            dir,
            version: 0,
            setup,
        };
        envoy.write(hcm);
        let what = format!("the {} Envoy serving", envoy.setup.name);
        poll_until(&what, Duration::from_secs(60), || {
            if let Ok(Some(status)) = envoy.child.try_wait() {
                panic!("Envoy exited ({status}): {}", envoy.log());
            }
            let up = std::net::TcpStream::connect(("127.0.0.1", envoy.setup.admin)).is_ok();
            let ready = up && request(&envoy.admin(), "GET", "/ready", &[], b"").status == 200;
            (ready && envoy.stat("listener_manager.total_listeners_active") == 1).then_some(())
        });
        envoy
    }

    pub fn admin(&self) -> String {
        format!("http://127.0.0.1:{}", self.setup.admin)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.setup.listener)
    }

    /// Writes a new listener file and moves it into place: Envoy's watched directory sees the
    /// move (a file written in place could be read half-written).
    pub fn swap(&mut self, plugin: &Value) {
        let hcm = plugin_hcm(&self.setup, plugin);
        self.write(hcm);
    }

    fn write(&mut self, hcm: Value) {
        self.version += 1;
        let tmp = self.dir.join("listener.json.tmp");
        let l = listener(&self.setup, hcm, self.version);
        std::fs::write(&tmp, l.to_string()).unwrap();
        std::fs::rename(&tmp, self.dir.join("lds/listener.json")).unwrap();
    }

    /// One of Envoy's own stats, by its whole name (the filter's are [`super::stat_at`]'s).
    pub fn stat(&self, name: &str) -> i64 {
        super::envoy_stat(&self.admin(), name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// Waits for Envoy to have taken (or refused) the listener version just written.
    pub fn wait_lds(&self, counter: &str, before: i64) {
        poll_until(
            &format!("listener_manager.lds.{counter}"),
            Duration::from_secs(20),
            || (self.stat(&format!("listener_manager.lds.{counter}")) > before).then_some(()),
        );
    }
}

impl Drop for OwnEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
