// istio-mesh runs Istio's control plane in this process: istiod's discovery server
// (pilot/pkg/bootstrap, what `pilot-discovery discovery` runs) over Istio's in-memory fake
// Kubernetes client instead of an API server, serving plaintext xDS to Envoys. The Istio
// objects of the given files are created in it as `kubectl apply` would create them, and more
// can be applied or deleted while it runs. tests/mesh.rs drives it, with the PyPI Envoy as the
// ingress gateway.
//
// Usage: istio-mesh [-xds ADDR] [-dir DIR] FILE...
//
// An IstioOperator document's spec.meshConfig becomes the mesh configuration (over the defaults
// below); every other document is an Istio object (collections.Pilot). When the objects are
// created and the xDS server listens, it prints "ready xds=ADDR" on stdout. Then it reads
// commands on stdin, one a line, and answers each with one line on stdout:
//
//	apply FILE     create or update each document of FILE   -> "ok applied Kind/ns/name ..."
//	delete FILE    delete each document of FILE             -> "ok deleted Kind/ns/name ..."
//	               (either: "error <what and why>"; nothing is changed for a document refused)
//
// It exits when stdin closes. Istio's own log goes to stderr.
//
// Istio internals this leans on (a bump of istio.io/istio that breaks them fails here, loudly):
//   - bootstrap.Server's unexported field kubeClient, set by reflection from NewServer's init
//     hook (Istio's own bootstrap tests set it from inside the package);
//   - the *crdclient.Client among Server.ConfigStores, which is where objects are created;
//   - clienttest.MakeCRD, which registers a CRD in the fake client so istiod watches the kind.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
	kerrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kubeyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"istio.io/istio/pilot/pkg/bootstrap"
	"istio.io/istio/pilot/pkg/config/kube/crd"
	"istio.io/istio/pilot/pkg/config/kube/crdclient"
	"istio.io/istio/pilot/pkg/serviceregistry/kube/controller"
	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/config/schema/collections"
	"istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/kube/kclient/clienttest"
	"istio.io/istio/pkg/log"
	"istio.io/istio/pkg/util/protomarshal"
)

// istiod reads these when its packages initialise, so they are set before: the process
// re-executes itself with them when they are missing.
var istiodEnv = [][2]string{
	{"POD_NAMESPACE", "istio-system"},
	{"POD_NAME", "istiod-kcpep-mesh"},
	// no CA: Envoy talks plaintext xDS and there is no istio-agent asking for certificates
	{"ENABLE_CA_SERVER", "false"},
	{"PILOT_ENABLE_GATEWAY_API", "false"},
	// filters only Istio's own Envoy build has
	{"PILOT_ENABLE_ALPN_FILTER", "false"},
	{"PILOT_ENABLE_METADATA_EXCHANGE", "false"},
}

// The mesh configuration under the IstioOperator's meshConfig.
const meshDefaults = `
rootNamespace: istio-system
trustDomain: cluster.local
enableAutoMtls: false
defaultConfig:
  discoveryAddress: %s
`

const rootNamespace = "istio-system"

func main() {
	reexecWithEnv()
	xds := flag.String("xds", "127.0.0.1:15010", "plaintext xDS (gRPC) address")
	dir := flag.String("dir", "", "a directory for the mesh configuration file (default: a temporary one)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: istio-mesh [-xds ADDR] [-dir DIR] FILE...")
		os.Exit(2)
	}
	opts := log.DefaultOptions()
	opts.OutputPaths = []string{"stderr"}
	opts.ErrorOutputPaths = []string{"stderr"}
	if err := log.Configure(opts); err != nil {
		fatal("logging: %v", err)
	}

	var meshConfigs []map[string]any
	var objects []config.Config
	for _, path := range flag.Args() {
		m, objs, err := readFile(path)
		if err != nil {
			fatal("%v", err)
		}
		meshConfigs = append(meshConfigs, m...)
		objects = append(objects, objs...)
	}
	workDir := *dir
	if workDir == "" {
		d, err := os.MkdirTemp("", "istio-mesh-")
		if err != nil {
			fatal("%v", err)
		}
		defer os.RemoveAll(d)
		workDir = d
	}
	meshFile, err := writeMeshConfig(workDir, *xds, meshConfigs)
	if err != nil {
		fatal("mesh configuration: %v", err)
	}

	client := kube.NewFakeClient()
	// A CRD for every kind istiod reads, as the API server of a cluster with Istio installed.
	for _, s := range collections.Pilot.All() {
		clienttest.MakeCRD(failer{}, client, s.GroupVersionResource())
	}
	for _, ns := range namespacesOf(objects) {
		if err := ensureNamespace(client, ns); err != nil {
			fatal("namespace %s: %v", ns, err)
		}
	}

	args := bootstrap.NewPilotArgs(func(p *bootstrap.PilotArgs) {
		p.Namespace = rootNamespace
		p.ServerOptions = bootstrap.DiscoveryServerOptions{
			HTTPAddr:       "127.0.0.1:0",
			MonitoringAddr: "127.0.0.1:0",
			GRPCAddr:       *xds,
			SecureGRPCAddr: "",
			TLSOptions:     bootstrap.TLSOptions{TLSMinVersion: bootstrap.TLSMinVersion1_2},
		}
		p.RegistryOptions = bootstrap.RegistryOptions{
			KubeOptions: controller.Options{DomainSuffix: "cluster.local", ClusterID: "Kubernetes"},
		}
		p.MeshConfigFile = meshFile
		p.NetworksConfigFile = filepath.Join(workDir, "meshNetworks-none")
		p.ShutdownDuration = time.Millisecond
	})
	if err := args.Complete(); err != nil {
		fatal("%v", err)
	}
	var injectErr error
	server, err := bootstrap.NewServer(args, func(s *bootstrap.Server) {
		injectErr = setKubeClient(s, client)
	})
	if injectErr != nil {
		fatal("%v", injectErr)
	}
	if err != nil {
		fatal("istiod: %v", err)
	}
	store := crdStore(server)
	if store == nil {
		fatal("no *crdclient.Client among bootstrap.Server.ConfigStores (Istio's bootstrap changed?)")
	}
	stop := make(chan struct{})
	if err := server.Start(stop); err != nil {
		fatal("istiod start: %v", err)
	}
	a := &applier{client: client, store: store}
	for _, o := range objects {
		if _, err := a.apply(o); err != nil {
			fatal("%v", err)
		}
	}
	fmt.Printf("ready xds=%s objects=%d\n", *xds, len(objects))

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	for in.Scan() {
		line := strings.TrimSpace(in.Text())
		if line == "" {
			continue
		}
		fmt.Println(a.command(line))
	}
	close(stop)
	server.WaitUntilCompletion()
}

// reexecWithEnv sets istiod's environment and starts the program again with it.
func reexecWithEnv() {
	missing := false
	for _, kv := range istiodEnv {
		if _, ok := os.LookupEnv(kv[0]); !ok {
			missing = true
			_ = os.Setenv(kv[0], kv[1])
		}
	}
	if !missing {
		return
	}
	self, err := os.Executable()
	if err != nil {
		fatal("%v", err)
	}
	err = syscall.Exec(self, os.Args, os.Environ())
	fatal("re-executing with istiod's environment: %v", err)
}

// setKubeClient puts the fake client into bootstrap.Server's unexported kubeClient field.
func setKubeClient(s *bootstrap.Server, client kube.Client) error {
	f := reflect.ValueOf(s).Elem().FieldByName("kubeClient")
	if !f.IsValid() {
		return errors.New("bootstrap.Server has no field kubeClient any more: the fake client cannot be injected (Istio's bootstrap changed)")
	}
	if !reflect.TypeOf(client).AssignableTo(f.Type()) {
		return fmt.Errorf("bootstrap.Server.kubeClient is a %v, which the fake client (%T) is not", f.Type(), client)
	}
	reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Set(reflect.ValueOf(client))
	return nil
}

func crdStore(s *bootstrap.Server) *crdclient.Client {
	for _, c := range s.ConfigStores {
		if cl, ok := c.(*crdclient.Client); ok {
			return cl
		}
	}
	return nil
}

// readFile splits FILE into the IstioOperators' meshConfig and the Istio objects.
func readFile(path string) (meshConfigs []map[string]any, objects []config.Config, err error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	reader := kubeyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(raw)))
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: cannot split YAML documents: %v", path, err)
		}
		obj := map[string]any{}
		if err := yaml.UnmarshalStrict(doc, &obj); err != nil {
			return nil, nil, fmt.Errorf("%s: cannot decode YAML: %v", path, err)
		}
		if len(obj) == 0 {
			continue
		}
		un := &unstructured.Unstructured{Object: obj}
		if un.GetKind() == "IstioOperator" {
			mc, found, err := unstructured.NestedMap(obj, "spec", "meshConfig")
			if err != nil {
				return nil, nil, fmt.Errorf("%s: IstioOperator %s: %v", path, un.GetName(), err)
			}
			if found {
				meshConfigs = append(meshConfigs, mc)
			}
			continue
		}
		// istiod's own parser, with the validation its admission webhook runs.
		cfgs, unknown, err := crd.ParseInputs(string(doc))
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %s/%s/%s: %v", path, un.GetKind(), un.GetNamespace(), un.GetName(), err)
		}
		if len(unknown) > 0 || len(cfgs) != 1 {
			return nil, nil, fmt.Errorf("%s: %s/%s/%s: not an Istio kind istiod reads", path, un.GetKind(), un.GetNamespace(), un.GetName())
		}
		if cfgs[0].Namespace == "" {
			cfgs[0].Namespace = "default"
		}
		objects = append(objects, cfgs[0])
	}
	return meshConfigs, objects, nil
}

// writeMeshConfig writes the defaults with the IstioOperators' meshConfig over them, through
// Istio's own merge (mesh.ApplyMeshConfig), and returns the file's path.
func writeMeshConfig(dir, xds string, overlays []map[string]any) (string, error) {
	m, err := mesh.ApplyMeshConfigDefaults(fmt.Sprintf(meshDefaults, xds))
	if err != nil {
		return "", err
	}
	for _, o := range overlays {
		js, err := json.Marshal(o)
		if err != nil {
			return "", err
		}
		if m, err = mesh.ApplyMeshConfig(string(js), m); err != nil {
			return "", err
		}
	}
	out, err := protomarshal.ToYAML(m)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, "mesh.yaml")
	return path, os.WriteFile(path, []byte(out), 0o600)
}

func namespacesOf(objects []config.Config) []string {
	seen := map[string]bool{rootNamespace: true}
	out := []string{rootNamespace}
	for _, o := range objects {
		if !seen[o.Namespace] {
			seen[o.Namespace] = true
			out = append(out, o.Namespace)
		}
	}
	return out
}

func ensureNamespace(client kube.Client, name string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	_, err := client.Kube().CoreV1().Namespaces().Create(context.TODO(), ns, metav1.CreateOptions{})
	if kerrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

type applier struct {
	mu     sync.Mutex
	client kube.Client
	store  *crdclient.Client
}

func (a *applier) command(line string) string {
	verb, path, _ := strings.Cut(line, " ")
	path = strings.TrimSpace(path)
	if path == "" || (verb != "apply" && verb != "delete") {
		return fmt.Sprintf("error unknown command %q (apply FILE | delete FILE)", line)
	}
	meshConfigs, objects, err := readFile(path)
	if err != nil {
		return "error " + oneLine(err)
	}
	if len(meshConfigs) > 0 {
		return fmt.Sprintf("error %s: the mesh configuration (IstioOperator) is fixed when istio-mesh starts", path)
	}
	var done []string
	for _, o := range objects {
		var what string
		if verb == "apply" {
			what, err = a.apply(o)
		} else {
			what, err = a.delete(o)
		}
		if err != nil {
			return "error " + oneLine(err)
		}
		done = append(done, what)
	}
	return fmt.Sprintf("ok %s %s", map[string]string{"apply": "applied", "delete": "deleted"}[verb], strings.Join(done, " "))
}

func name(o config.Config) string {
	return fmt.Sprintf("%s/%s/%s", o.GroupVersionKind.Kind, o.Namespace, o.Name)
}

// apply creates the object, or replaces the one of that name (kubectl apply).
func (a *applier) apply(o config.Config) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := ensureNamespace(a.client, o.Namespace); err != nil {
		return "", fmt.Errorf("namespace %s: %v", o.Namespace, err)
	}
	if old := a.store.Get(o.GroupVersionKind, o.Name, o.Namespace); old != nil {
		o.ResourceVersion = old.ResourceVersion
		if _, err := a.store.Update(o); err != nil {
			return "", fmt.Errorf("updating %s: %v", name(o), err)
		}
		return name(o), nil
	}
	if _, err := a.store.Create(o); err != nil {
		if !kerrors.IsAlreadyExists(err) {
			return "", fmt.Errorf("creating %s: %v", name(o), err)
		}
		// created just before and not yet in the informer's cache: update it once it is there
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if old := a.store.Get(o.GroupVersionKind, o.Name, o.Namespace); old != nil {
				o.ResourceVersion = old.ResourceVersion
				if _, err := a.store.Update(o); err != nil {
					return "", fmt.Errorf("updating %s: %v", name(o), err)
				}
				return name(o), nil
			}
		}
		return "", fmt.Errorf("creating %s: %v", name(o), err)
	}
	return name(o), nil
}

func (a *applier) delete(o config.Config) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.store.Delete(o.GroupVersionKind, o.Name, o.Namespace, nil); err != nil {
		return "", fmt.Errorf("deleting %s: %v", name(o), err)
	}
	return name(o), nil
}

func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

func fatal(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "istio-mesh: "+format+"\n", args...)
	os.Exit(1)
}

// failer is the test.Failer clienttest.MakeCRD reports to: any failure ends the program.
type failer struct{}

func (failer) Fail()                           { fatal("making a CRD failed") }
func (failer) FailNow()                        { fatal("making a CRD failed") }
func (failer) Fatal(args ...any)               { fatal("making a CRD: %s", fmt.Sprint(args...)) }
func (failer) Fatalf(format string, a ...any)  { fatal("making a CRD: "+format, a...) }
func (failer) Log(args ...any)                 {}
func (failer) Logf(format string, args ...any) {}
func (failer) TempDir() string                 { return os.TempDir() }
func (failer) Helper()                         {}
func (failer) Cleanup(func())                  {}
func (failer) Skip(args ...any)                {}
