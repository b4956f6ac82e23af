//! The Istio manifests under envoy/istio/ validated by Istio's own code, offline:
//! `scripts/istio-validate.sh` builds tools/istio-validate (a small Go program importing the
//! istio.io/istio version its go.mod pins) and runs the validators istiod's admission webhook
//! runs, after the strict YAML-to-proto conversion of `istioctl validate`. Broken copies of the
//! manifests (a misspelled field, a wrong enum value, values Istio's validators refuse) must be
//! refused with a message naming the problem, so the check can fail. The first run builds the
//! validator (minutes, the Go module proxy needed); a build that cannot run fails every test here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::yaml;

use serde_json::{Map, Value};
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
    let result = BUILT.get_or_init(|| {
        let out = Command::new("bash")
            .arg(root().join("scripts/istio-validate.sh"))
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
        Err(e) => panic!(
            "Istio's validator (tools/istio-validate) could not be built, so the Istio manifests \
             are not validated; it needs Go 1.26+ and the Go module proxy: {e}"
        ),
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
    let module_fields = [
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
    let mut spec = Map::new();
    let mut wasm = Map::new();
    for (k, v) in plugin["spec"].as_object().unwrap() {
        if module_fields.contains(&k.as_str()) {
            wasm.insert(k.clone(), v.clone());
        } else {
            spec.insert(k.clone(), v.clone());
        }
    }
    assert!(wasm.contains_key("url") && wasm.contains_key("pluginConfig"));
    spec.insert("wasm".into(), Value::Object(wasm));
    let extension = |spec: &Value| {
        let mut doc = plugin.clone();
        doc["kind"] = "TrafficExtension".into();
        doc["spec"] = spec.clone();
        doc
    };
    let dir = scratch("traffic-extension");
    // JSON is YAML: the validator reads it as it reads the manifests.
    let good = dir.join("trafficextension.yaml");
    std::fs::write(&good, extension(&Value::Object(spec)).to_string()).unwrap();
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
