#!/usr/bin/env bash
# make oci: an OCI image layout of the filter, built without a container engine.
#
#   dist/oci/   oci-layout, index.json, blobs/sha256/{manifest, config, layer}
#
# The format is the Wasm image "compat" variant with OCI media types: an image manifest
# (application/vnd.oci.image.manifest.v1+json) whose one layer (application/vnd.oci.image.layer.v1.tar+gzip)
# is a tar.gz holding plugin.wasm. Istio's fetcher (pkg/wasm/imagefetcher.go, PrepareFetch) tries, in
# order: a Docker manifest whose last layer is a Docker tar.gz with plugin.wasm; this (extractOCIStandardImage);
# then the "oci" variant, which needs exactly two layers, one of type
# application/vnd.module.wasm.content.layer.v1+wasm (extractOCIArtifactImage). Envoy Gateway's fetcher
# (internal/wasm/imagefetcher.go) has the same three branches. It is the shape of an image built
# `FROM scratch` + `COPY plugin.wasm ./` with OCI media types: a plain OCI image, which registries,
# oras and skopeo handle like any other.
#
# Reproducible: the tar entry has a fixed name, mode, owner and time, and the gzip header no time or
# name, so the same .wasm gives the same digests, given the same zlib (the compressed bytes are
# zlib's; another deflate implementation, such as zlib-ng, may compress differently).
#
# Usage: scripts/oci.sh [WASM] [OUT_DIR] [TAG]     (defaults: dist/keycloak_pep.wasm dist/oci <crate version>)
set -euo pipefail
cd "$(dirname "$0")/.."
WASM=${1:-dist/keycloak_pep.wasm}
OUT=${2:-dist/oci}
TAG=${3:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
[ -s "$WASM" ] || { echo "oci: $WASM is missing (make wasm)" >&2; exit 1; }
python3 - "$WASM" "$OUT" "$TAG" <<'PY'
import gzip, hashlib, io, json, os, shutil, sys, tarfile, zlib
wasm_path, out, tag = sys.argv[1:4]
wasm = open(wasm_path, "rb").read()

def blob(data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": "sha256:" + digest, "size": len(data)}

if os.path.isdir(out) and os.listdir(out) and not os.path.exists(os.path.join(out, "oci-layout")):
    sys.exit(f"oci: {out} exists and is not an OCI layout; not replacing it")
shutil.rmtree(out, ignore_errors=True)
os.makedirs(os.path.join(out, "blobs", "sha256"))
with open(os.path.join(out, "oci-layout"), "w") as f:
    json.dump({"imageLayoutVersion": "1.0.0"}, f)

tar_bytes = io.BytesIO()
with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.USTAR_FORMAT) as t:
    info = tarfile.TarInfo("plugin.wasm")
    info.size, info.mtime, info.mode, info.uid, info.gid = len(wasm), 0, 0o644, 0, 0
    info.uname = info.gname = ""
    t.addfile(info, io.BytesIO(wasm))
layer_tar = tar_bytes.getvalue()
gz = io.BytesIO()
with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0, filename="") as g:
    g.write(layer_tar)
layer = blob(gz.getvalue())
diff_id = "sha256:" + hashlib.sha256(layer_tar).hexdigest()

config = json.dumps({
    "architecture": "wasm", "os": "wasip1",
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    "config": {"Labels": {"org.opencontainers.image.title": "keycloak-pep"}},
}, sort_keys=True, separators=(",", ":")).encode()
cfg = blob(config)
manifest = json.dumps({
    "schemaVersion": 2,
    "mediaType": "application/vnd.oci.image.manifest.v1+json",
    "config": dict(mediaType="application/vnd.oci.image.config.v1+json", **cfg),
    "layers": [dict(mediaType="application/vnd.oci.image.layer.v1.tar+gzip", **layer)],
    "annotations": {"org.opencontainers.image.title": "keycloak-pep",
                    "org.opencontainers.image.description": "Keycloak policy enforcer, proxy-wasm filter for Envoy and Istio"},
}, sort_keys=True, separators=(",", ":")).encode()
man = blob(manifest)
with open(os.path.join(out, "index.json"), "w") as f:
    json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": [dict(mediaType="application/vnd.oci.image.manifest.v1+json",
                                  annotations={"org.opencontainers.image.ref.name": tag}, **man)]}, f, indent=1)
print(f"oci: {out} (tag {tag}), gzip by zlib {zlib.ZLIB_RUNTIME_VERSION}")
print(f"oci: manifest {man['digest']}")
print(f"oci: plugin.wasm sha256:{hashlib.sha256(wasm).hexdigest()} ({len(wasm)} bytes)")
print("oci: push with one of")
print(f"  oras cp --from-oci-layout {out}:{tag} ghcr.io/OWNER/keycloak-pep:{tag}")
print(f"  skopeo copy oci:{out}:{tag} docker://ghcr.io/OWNER/keycloak-pep:{tag}")
print("oci: and pin it in the WasmPlugin (envoy/istio/wasmplugin.yaml), Istio checks it after pulling:")
print(f"  url: oci://ghcr.io/OWNER/keycloak-pep:{tag}")
print(f'  sha256: "{man["digest"][len("sha256:"):]}"')
print(f"  (or url: oci://ghcr.io/OWNER/keycloak-pep@{man['digest']})")
PY
