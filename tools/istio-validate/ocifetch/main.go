// istio-ocifetch pulls the Wasm OCI image that `make oci` builds (scripts/oci.sh) with the code
// istio-agent pulls WasmPlugin `oci://` modules with, istio.io/istio/pkg/wasm, from a container
// registry served in this process. tests/istio.rs drives it.
//
// Usage: istio-ocifetch [-tag TAG] LAYOUT MODULE SHA256
//
//	LAYOUT  an OCI image layout (dist/oci); its image tagged TAG (default: the layout's only
//	        image's org.opencontainers.image.ref.name) is pushed to the registry
//	MODULE  the module the image must hold (dist/keycloak_pep.wasm)
//	SHA256  a digest to try as the WasmPlugin's sha256, which Istio must refuse
//
// Steps:
//  1. go-containerregistry's registry (pkg/registry, the in-memory registry its own tests and
//     crane use) serves on 127.0.0.1 at a free port; the layout's image is pushed to it with
//     pkg/v1/layout and pkg/v1/remote, manifest and blobs byte for byte.
//  2. wasm.NewImageFetcher + ImageFetcher.PrepareFetch on 127.0.0.1:PORT/keycloak-pep:TAG: the
//     digest Istio computes and the module its binaryFetcher extracts.
//  3. wasm.NewLocalFileCache + LocalFileCache.Get, istio-agent's entry point (pkg/wasm/convert.go,
//     with its default Options and 5 s timeout), on oci://127.0.0.1:PORT/keycloak-pep:TAG with
//     GetOptions.Checksum = the layout's manifest digest (the sha256 scripts/oci.sh prints), then
//     with SHA256: the first must give a file holding MODULE, the second the checksum mismatch.
//
// Plain HTTP: go-containerregistry's name.Registry.Scheme speaks http to a loopback registry, so
// the agent's defaults (no WASM_INSECURE_REGISTRIES) reach it; nothing here sets Insecure.
// DOCKER_CONFIG is pointed at an empty directory, so the pull is anonymous whatever ~/.docker holds.
//
// It prints one JSON object on stdout (Istio's log goes to stderr) and exits 0 if the module extracted equals MODULE (both
// ways), the layout's digest is accepted and SHA256 is refused with Istio's mismatch error; 1 if
// any of these does not hold; 2 if it cannot run (arguments, layout, registry, push).
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	istiolog "istio.io/istio/pkg/log"
	"istio.io/istio/pkg/wasm"
)

// Blob is a module's identity in the result.
type Blob struct {
	SHA256 string `json:"sha256"`
	Bytes  int    `json:"bytes"`
}

func blobOf(b []byte) Blob {
	s := sha256.Sum256(b)
	return Blob{SHA256: hex.EncodeToString(s[:]), Bytes: len(b)}
}

// Attempt is one LocalFileCache.Get with a checksum.
type Attempt struct {
	SHA256   string `json:"sha256"`
	Accepted bool   `json:"accepted"`
	Error    string `json:"error,omitempty"`
	Module   *Blob  `json:"module,omitempty"`
	Equal    bool   `json:"equal"`
}

// Result is what it prints.
type Result struct {
	URL          string `json:"url"`
	LayoutDigest string `json:"layout_digest"`
	// PrepareFetch: the manifest digest Istio computed and the module its binaryFetcher extracted.
	FetchedDigest string  `json:"fetched_digest"`
	Fetched       *Blob   `json:"fetched,omitempty"`
	FetchError    string  `json:"fetch_error,omitempty"`
	Expected      Blob    `json:"expected"`
	Equal         bool    `json:"equal"`
	Right         Attempt `json:"right"`
	Wrong         Attempt `json:"wrong"`
	OK            bool    `json:"ok"`
}

func fail(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "istio-ocifetch: "+format+"\n", args...)
	return 2
}

func main() {
	os.Exit(run())
}

func run() int {
	tag := flag.String("tag", "", "the tag of the layout's image to push (default: its only image's ref.name)")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: istio-ocifetch [-tag TAG] LAYOUT MODULE SHA256")
		flag.PrintDefaults()
	}
	flag.Parse()
	if flag.NArg() != 3 {
		flag.Usage()
		return 2
	}
	// Istio's log (the wasm scope's "fetching image ..." lines) on stderr: stdout is the JSON.
	opts := istiolog.DefaultOptions()
	opts.OutputPaths = []string{"stderr"}
	opts.ErrorOutputPaths = []string{"stderr"}
	if err := istiolog.Configure(opts); err != nil {
		return fail("logging: %v", err)
	}
	dir, modulePath, wrong := flag.Arg(0), flag.Arg(1), strings.TrimPrefix(flag.Arg(2), "sha256:")

	expected, err := os.ReadFile(modulePath)
	if err != nil {
		return fail("%v", err)
	}
	img, digest, imgTag, err := imageOf(dir, *tag)
	if err != nil {
		return fail("layout %s: %v", dir, err)
	}

	empty, err := os.MkdirTemp("", "istio-ocifetch-")
	if err != nil {
		return fail("%v", err)
	}
	defer os.RemoveAll(empty)
	if err := os.Setenv("DOCKER_CONFIG", filepath.Join(empty, "docker")); err != nil {
		return fail("%v", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fail("listen: %v", err)
	}
	srv := &http.Server{
		Handler:           registry.New(registry.Logger(log.New(io.Discard, "", 0))),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	ref := fmt.Sprintf("%s/keycloak-pep:%s", ln.Addr(), imgTag)
	pushRef, err := name.ParseReference(ref)
	if err != nil {
		return fail("%s: %v", ref, err)
	}
	if err := remote.Write(pushRef, img); err != nil {
		return fail("push to %s: %v", ref, err)
	}

	res := Result{URL: "oci://" + ref, LayoutDigest: digest, Expected: blobOf(expected)}

	// 2. The fetcher itself, as LocalFileCache.getOrFetch calls it (host + path, no scheme).
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	fetcher := wasm.NewImageFetcher(ctx, wasm.ImageFetcherOption{})
	binaryFetcher, actual, err := fetcher.PrepareFetch(ref)
	res.FetchedDigest = actual
	if err == nil {
		var b []byte
		if b, err = binaryFetcher(); err == nil {
			fb := blobOf(b)
			res.Fetched = &fb
			res.Equal = string(b) == string(expected)
		}
	}
	if err != nil {
		res.FetchError = err.Error()
	}

	// 3. istio-agent's cache, with the right digest and with the wrong one; a cache of its own each.
	res.Right = get(filepath.Join(empty, "right"), res.URL, digest, expected)
	res.Wrong = get(filepath.Join(empty, "wrong"), res.URL, wrong, expected)

	res.OK = res.Equal && res.FetchedDigest == digest &&
		res.Right.Accepted && res.Right.Equal &&
		!res.Wrong.Accepted && strings.Contains(res.Wrong.Error, "which does not match")
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		return fail("%v", err)
	}
	if !res.OK {
		return 1
	}
	return 0
}

// imageOf opens the layout's image tagged tag (or its only image) and returns it with its
// manifest digest's hex and its tag.
func imageOf(dir, tag string) (v1.Image, string, string, error) {
	p, err := layout.FromPath(dir)
	if err != nil {
		return nil, "", "", err
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, "", "", err
	}
	im, err := idx.IndexManifest()
	if err != nil {
		return nil, "", "", err
	}
	var found []v1.Descriptor
	for _, d := range im.Manifests {
		if t := d.Annotations["org.opencontainers.image.ref.name"]; (tag == "" && t != "") || (tag != "" && t == tag) {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		return nil, "", "", fmt.Errorf("%d images tagged %q in index.json; want one", len(found), tag)
	}
	d := found[0]
	img, err := idx.Image(d.Digest)
	if err != nil {
		return nil, "", "", err
	}
	if got, err := img.Digest(); err != nil || got != d.Digest {
		return nil, "", "", errors.Join(fmt.Errorf("manifest digest %v, index.json says %v", got, d.Digest), err)
	}
	return img, d.Digest.Hex, d.Annotations["org.opencontainers.image.ref.name"], nil
}

// get runs LocalFileCache.Get as istio-agent does for a WasmPlugin with this url and sha256.
func get(dir, url, checksum string, expected []byte) Attempt {
	a := Attempt{SHA256: checksum}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		a.Error = err.Error()
		return a
	}
	cache := wasm.NewLocalFileCache(dir, wasm.Options{})
	defer cache.Cleanup()
	path, err := cache.Get(url, wasm.GetOptions{
		Checksum:       checksum,
		ResourceName:   "istio-system.keycloak-pep",
		RequestTimeout: 5 * time.Second,
	})
	if err != nil {
		a.Error = err.Error()
		return a
	}
	b, err := os.ReadFile(path)
	if err != nil {
		a.Error = err.Error()
		return a
	}
	a.Accepted = true
	mb := blobOf(b)
	a.Module = &mb
	a.Equal = string(b) == string(expected)
	return a
}
