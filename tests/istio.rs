//! The Istio manifests under envoy/istio/ validated by Istio's own code, offline:
//! `scripts/istio-validate.sh` builds tools/istio-validate (a small Go program importing the
//! istio.io/istio version its go.mod pins) and runs the validators istiod's admission webhook
//! runs, after the strict YAML-to-proto conversion of `istioctl validate`. Broken copies of the
//! manifests (a misspelled field, a wrong enum value, values Istio's validators refuse) must be
//! refused with a message naming the problem, so the check can fail. The first run builds the
//! validator (minutes, the Go module proxy needed); a build that cannot run fails every test here.
//! Also the OCI image of `make oci`, pulled by Istio's own Wasm image fetcher from a registry served
//! in-process (`scripts/istio-ocifetch.sh`, tools/istio-validate/ocifetch, built the same way).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::yaml;

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The one warning Istio gives every EnvoyFilter (mesh-safety.yaml has one); any other warning
/// fails the test.
const ENVOYFILTER_WARNING: &str = "warning: EnvoyFilter exposes internal implementation details";

/// Builds the validator once for all the tests of this file (the others wait for it).
fn built() {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    build_once(
        &BUILT,
        "scripts/istio-validate.sh",
        "Istio's validator (tools/istio-validate) could not be built, so the Istio manifests are \
         not validated",
    );
}

/// Runs `script --build` once per `cell`; a build that fails fails every test that needs it.
fn build_once(cell: &OnceLock<Result<String, String>>, script: &str, what: &str) {
    let result = cell.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root().join(script))
            .arg("--build")
            .output()
            .map_err(|e| format!("cannot run bash: {e}"))?;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        if out.status.success() {
            Ok(stderr)
        } else {
            Err(format!("{}\n{stderr}", out.status))
        }
    });
    match result {
        Ok(log) => eprint!("{log}"),
        Err(e) => panic!("{what}; it needs Go 1.26+ and the Go module proxy: {e}"),
    }
}

struct Verdict {
    success: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Verdict {
    fn text(&self) -> String {
        format!(
            "exit {:?}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn validate(files: &[PathBuf]) -> Verdict {
    built();
    let out = Command::new("bash")
        .arg(root().join("scripts/istio-validate.sh"))
        .args(files)
        .output()
        .unwrap();
    Verdict {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
    }
}

/// A folder of this test's own under the system's temporary folder, emptied.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kcpep-istio-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn every_shipped_istio_manifest_passes_istios_validation() {
    let files = yaml::files("envoy/istio");
    assert!(files.len() >= 4, "{files:?}");
    let verdict = validate(&files);
    let text = verdict.text();
    assert!(verdict.success, "Istio refused a shipped manifest:\n{text}");
    let lines: Vec<&str> = verdict.stdout.lines().collect();
    // One verdict per document: none skipped, none refused, no warning but EnvoyFilter's.
    let documents: usize = files.iter().map(|f| yaml::read(f).len()).sum();
    assert_eq!(lines.len(), documents, "{text}");
    for line in &lines {
        assert!(
            line.ends_with(": ok") || line.contains(ENVOYFILTER_WARNING),
            "unexpected: {line}\n{text}"
        );
    }
    for object in [
        "WasmPlugin/bank/keycloak-pep: ok",
        "VirtualService/bank/bank-api: ok",
        "Gateway/bank/bank-gateway: ok",
        "ServiceEntry/bank/keycloak: ok",
        "DestinationRule/bank/keycloak: ok",
        "IstioOperator/istio-system/keycloak-pep-mesh: ok",
        "EnvoyFilter/bank/keycloak-pep-hcm: warning",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(object)),
            "no {object}\n{text}"
        );
    }
}

/// README.md here shows the WasmPlugin as a TrafficExtension (Istio 1.30+): the module's fields
/// under `wasm:`, the selection and phase at the top. That form, built from wasmplugin.yaml,
/// passes; the WasmPlugin layout under the TrafficExtension kind does not.
#[test]
fn the_wasmplugin_as_a_traffic_extension_passes() {
    let docs = yaml::read(&root().join("envoy/istio/wasmplugin.yaml"));
    assert_eq!(docs.len(), 1);
    let plugin = &docs[0];
    assert_eq!(plugin["kind"], "WasmPlugin");
    let traffic_extension = common::mesh::traffic_extension(plugin);
    let wasm = &traffic_extension["spec"]["wasm"];
    assert!(wasm["url"].is_string() && wasm["pluginConfig"].is_object());
    let extension = |spec: &Value| {
        let mut doc = plugin.clone();
        doc["kind"] = "TrafficExtension".into();
        doc["spec"] = spec.clone();
        doc
    };
    let dir = scratch("traffic-extension");
    // JSON is YAML: the validator reads it as it reads the manifests.
    let good = dir.join("trafficextension.yaml");
    std::fs::write(&good, traffic_extension.to_string()).unwrap();
    let verdict = validate(std::slice::from_ref(&good));
    assert!(verdict.success, "{}", verdict.text());
    assert!(
        verdict
            .stdout
            .contains("TrafficExtension/bank/keycloak-pep: ok"),
        "{}",
        verdict.text()
    );

    let wrong = dir.join("wasmplugin-layout.yaml");
    std::fs::write(&wrong, extension(&plugin["spec"]).to_string()).unwrap();
    let verdict = validate(std::slice::from_ref(&wrong));
    assert_eq!(verdict.code, Some(1), "{}", verdict.text());
    assert!(
        verdict.stdout.contains(
            "TrafficExtension/bank/keycloak-pep: error: cannot parse proto message: unknown field"
        ) && verdict
            .stdout
            .contains("in istio.extensions.v1alpha1.TrafficExtension"),
        "{}",
        verdict.text()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A broken copy of a shipped manifest: `from` replaced by `to` (once), and what Istio's error
/// line for `object` must say.
struct Broken {
    file: &'static str,
    from: &'static str,
    to: &'static str,
    object: &'static str,
    says: &'static [&'static str],
}

const BROKEN: &[Broken] = &[
    // a misspelled field
    Broken {
        file: "wasmplugin.yaml",
        from: "\n  phase: AUTHZ\n",
        to: "\n  phse: AUTHN\n",
        object: "WasmPlugin/bank/keycloak-pep",
        says: &[r#"unknown field "phse" in istio.extensions.v1alpha1.WasmPlugin"#],
    },
    // wrong enum values
    Broken {
        file: "wasmplugin.yaml",
        from: "\n  phase: AUTHZ\n",
        to: "\n  phase: SOMETIMES\n",
        object: "WasmPlugin/bank/keycloak-pep",
        says: &["SOMETIMES", "for enum istio.extensions.v1alpha1.PluginPhase"],
    },
    Broken {
        file: "wasmplugin.yaml",
        from: "\n  failStrategy: FAIL_CLOSE\n",
        to: "\n  failStrategy: MAYBE\n",
        object: "WasmPlugin/bank/keycloak-pep",
        says: &["MAYBE", "for enum istio.extensions.v1alpha1.FailStrategy"],
    },
    Broken {
        file: "wasmplugin.yaml",
        from: "valueFrom: HOST\n",
        to: "valueFrom: ENV\n",
        object: "WasmPlugin/bank/keycloak-pep",
        says: &["ENV", "for enum istio.extensions.v1alpha1.EnvValueSource"],
    },
    // values the WasmPlugin validator refuses
    Broken {
        file: "wasmplugin.yaml",
        from: "\n  sha256: \"0000000000000000000000000000000000000000000000000000000000000000\"\n",
        to: "\n  sha256: \"0000\"\n",
        object: "WasmPlugin/bank/keycloak-pep",
        says: &["sha256 field must be 64 characters long"],
    },
    Broken {
        file: "wasmplugin.yaml",
        from: "\n  selector:\n",
        to: "\n  targetRefs: [{ kind: Gateway, group: gateway.networking.k8s.io, name: bank-gateway }]\n  selector:\n",
        object: "WasmPlugin/bank/keycloak-pep",
        says: &["only one of targetRefs or workloadSelector can be set"],
    },
    // the VirtualService: a misspelled match field, a port out of range
    Broken {
        file: "virtualservice.yaml",
        from: "uri: { prefix: /reports/ }",
        to: "uri: { prefx: /reports/ }",
        object: "VirtualService/bank/bank-api",
        says: &[r#"unknown field "prefx" in istio.networking.v1alpha3.StringMatch"#],
    },
    Broken {
        file: "virtualservice.yaml",
        from: "port: { number: 8080 }",
        to: "port: { number: 80800 }",
        object: "VirtualService/bank/bank-api",
        says: &["port number 80800 must be in the range 1..65535"],
    },
    // the DestinationRule: the insecure setting its comments warn about, an outlier percentage
    Broken {
        file: "keycloak-serviceentry.yaml",
        from: "\n          sni: sso.example.com\n",
        to: "\n          sni: sso.example.com\n          insecureSkipVerify: true\n",
        object: "DestinationRule/bank/keycloak",
        says: &["cannot specify CaCertificates or CredentialName or SubjectAltNames when InsecureSkipVerify is set true"],
    },
    Broken {
        file: "keycloak-serviceentry.yaml",
        from: "maxEjectionPercent: 50",
        to: "maxEjectionPercent: 150",
        object: "DestinationRule/bank/keycloak",
        says: &["percentage 150 is not in range 0..100"],
    },
    // the ServiceEntry
    Broken {
        file: "keycloak-serviceentry.yaml",
        from: "location: MESH_EXTERNAL",
        to: "location: OUTSIDE",
        object: "ServiceEntry/bank/keycloak",
        says: &["OUTSIDE", "for enum istio.networking.v1alpha3.ServiceEntry.Location"],
    },
    // the mesh config
    Broken {
        file: "mesh-safety.yaml",
        from: "normalization: DECODE_AND_MERGE_SLASHES",
        to: "normalization: DECODE_AND_MERGE",
        object: "IstioOperator/istio-system/keycloak-pep-mesh",
        says: &["DECODE_AND_MERGE", "for enum istio.mesh.v1alpha1.MeshConfig.ProxyPathNormalization.NormalizationType"],
    },
];

#[test]
fn broken_copies_are_refused_naming_the_problem() {
    let dir = scratch("broken");
    let mut problems = Vec::new();
    for (i, b) in BROKEN.iter().enumerate() {
        let original = std::fs::read_to_string(root().join("envoy/istio").join(b.file)).unwrap();
        assert!(
            original.contains(b.from),
            "{}: {:?} is not in the file any more; update this case",
            b.file,
            b.from
        );
        let copy = dir.join(format!("{i}-{}", b.file));
        std::fs::write(&copy, original.replacen(b.from, b.to, 1)).unwrap();
        let verdict = validate(std::slice::from_ref(&copy));
        let error = format!("{}: error: ", b.object);
        let refused = verdict.code == Some(1)
            && verdict
                .stdout
                .lines()
                .any(|l| l.contains(&error) && b.says.iter().all(|s| l.contains(s)));
        if refused {
            eprintln!(
                "{} ({:?} -> {:?}): {}",
                b.file,
                b.from.trim(),
                b.to.trim(),
                verdict.stdout.lines().find(|l| l.contains(&error)).unwrap()
            );
        } else {
            problems.push(format!(
                "{} with {:?} instead of {:?}: expected an error for {} saying {:?}\n{}",
                b.file,
                b.to,
                b.from,
                b.object,
                b.says,
                verdict.text()
            ));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn what_istio_does_not_validate_is_an_error_not_a_pass() {
    let dir = scratch("unknown");
    let cases = [
        (
            "configmap.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: { name: x, namespace: bank }\ndata: { a: b }\n",
            r#"ConfigMap/bank/x: error: kind "ConfigMap" (apiVersion "v1") is not one Istio validates"#,
        ),
        ("empty.yaml", "# nothing\n", "error: no YAML document in the file"),
        (
            "toplevel.yaml",
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: { name: g, namespace: bank }\nspce: {}\n",
            r#"Gateway/bank/g: error: unknown field "spce""#,
        ),
    ];
    for (name, text, says) in cases {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let verdict = validate(std::slice::from_ref(&path));
        assert_eq!(verdict.code, Some(1), "{name}: {}", verdict.text());
        assert!(verdict.stdout.contains(says), "{name}: {}", verdict.text());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What `scripts/istio-ocifetch.sh` printed and how it exited.
struct Fetched {
    code: Option<i32>,
    json: Value,
    text: String,
}

/// `make oci` (scripts/oci.sh) on `wasm`, into `dir`/oci tagged "test": the layout's path and its
/// manifest digest (hex), the WasmPlugin's `sha256`.
fn oci_layout(wasm: &std::path::Path, dir: &std::path::Path) -> (PathBuf, String) {
    let out = dir.join("oci");
    let made = Command::new(root().join("scripts/oci.sh"))
        .args([wasm.to_str().unwrap(), out.to_str().unwrap(), "test"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let index: Value =
        serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    (out, digest.strip_prefix("sha256:").unwrap().to_string())
}

/// tools/istio-validate/ocifetch: the layout pushed to an in-process registry on 127.0.0.1 and
/// pulled back with Istio's pkg/wasm, with the layout's digest and with `sha256`.
fn ocifetch(layout: &std::path::Path, module: &std::path::Path, sha256: &str) -> Fetched {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    build_once(
        &BUILT,
        "scripts/istio-ocifetch.sh",
        "tools/istio-validate/ocifetch could not be built, so the OCI image is not pulled with \
         Istio's fetcher",
    );
    let script = root().join("scripts/istio-ocifetch.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args([layout.to_str().unwrap(), module.to_str().unwrap(), sha256])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let text = format!(
        "exit {:?}\n--- stdout\n{stdout}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {text}"));
    Fetched {
        code: out.status.code(),
        json,
        text,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("{:x}", Sha256::digest(bytes))
}

/// The image `make oci` builds, pushed to a registry and pulled with Istio's own fetcher
/// (istio.io/istio/pkg/wasm: ImageFetcher.PrepareFetch, and LocalFileCache.Get as istio-agent
/// calls it for a WasmPlugin): the module it extracts is dist/keycloak_pep.wasm byte for byte, the
/// manifest digest scripts/oci.sh prints is the `sha256` it accepts, and another one, here the
/// module's own sha256 (a likely mistake: for `oci://` Istio compares the manifest's), is refused.
#[test]
fn istios_image_fetcher_pulls_the_module_from_the_oci_image() {
    let wasm = root().join("dist/keycloak_pep.wasm");
    assert!(wasm.exists(), "dist/keycloak_pep.wasm: run `make wasm`");
    let module = std::fs::read(&wasm).unwrap();
    let module_sha = sha256_hex(&module);
    let dir = scratch("ocifetch");
    let (layout, digest) = oci_layout(&wasm, &dir);
    assert_ne!(digest, module_sha);
    let f = ocifetch(&layout, &wasm, &module_sha);
    let (j, text) = (&f.json, &f.text);
    assert_eq!(f.code, Some(0), "{text}");
    assert_eq!(j["ok"], true, "{text}");
    assert!(
        j["url"].as_str().unwrap().starts_with("oci://127.0.0.1:")
            && j["url"].as_str().unwrap().ends_with("/keycloak-pep:test"),
        "{text}"
    );
    // PrepareFetch: the digest Istio computes is the layout's, the module extracted is ours
    assert_eq!(j["layout_digest"], digest.as_str(), "{text}");
    assert_eq!(j["fetched_digest"], digest.as_str(), "{text}");
    assert_eq!(j["fetched"]["sha256"], module_sha.as_str(), "{text}");
    assert_eq!(j["fetched"]["bytes"], module.len(), "{text}");
    assert_eq!(j["equal"], true, "{text}");
    // LocalFileCache.Get with the right sha256: accepted, the cached file is the module
    assert_eq!(j["right"]["sha256"], digest.as_str(), "{text}");
    assert_eq!(j["right"]["accepted"], true, "{text}");
    assert_eq!(
        j["right"]["module"]["sha256"],
        module_sha.as_str(),
        "{text}"
    );
    assert_eq!(j["right"]["equal"], true, "{text}");
    // with a wrong one: refused, Istio's error naming both checksums
    assert_eq!(j["wrong"]["accepted"], false, "{text}");
    assert!(j["wrong"]["module"].is_null(), "{text}");
    let error = j["wrong"]["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "has checksum {digest}, which does not match: {module_sha}"
        )),
        "{text}"
    );
    eprintln!("wrong sha256 refused: {error}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The check above can fail: an image of another module (dist/keycloak_pep.wasm with one more
/// custom section, still a valid module) is pulled all the same, but is not taken for ours, and a
/// "wrong" sha256 that is in fact the image's digest is accepted, so the program says not ok.
#[test]
fn istios_image_fetcher_check_can_fail() {
    let wasm = root().join("dist/keycloak_pep.wasm");
    assert!(wasm.exists(), "dist/keycloak_pep.wasm: run `make wasm`");
    let dir = scratch("ocifetch-other");
    let mut other = std::fs::read(&wasm).unwrap();
    // custom section (id 0), 5 bytes: the name "kcpx"
    other.extend_from_slice(&[0, 5, 4, b'k', b'c', b'p', b'x']);
    let other_path = dir.join("other.wasm");
    std::fs::write(&other_path, &other).unwrap();
    let (layout, digest) = oci_layout(&other_path, &dir);
    let f = ocifetch(&layout, &wasm, &digest);
    let (j, text) = (&f.json, &f.text);
    assert_eq!(f.code, Some(1), "{text}");
    assert_eq!(j["ok"], false, "{text}");
    assert_eq!(j["fetched_digest"], digest.as_str(), "{text}");
    assert_eq!(
        j["fetched"]["sha256"],
        sha256_hex(&other).as_str(),
        "{text}"
    );
    assert_eq!(j["equal"], false, "{text}");
    assert_eq!(j["right"]["accepted"], true, "{text}");
    assert_eq!(j["right"]["equal"], false, "{text}");
    assert_eq!(j["wrong"]["accepted"], true, "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
