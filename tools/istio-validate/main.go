// istio-validate checks Istio manifests offline with Istio's own code: the validators istiod's
// validating admission webhook runs (each kind's ValidateConfig from
// istio.io/istio/pkg/config/schema/collections, which calls istio.io/istio/pkg/config/validation),
// after the strict YAML-to-proto conversion `istioctl validate` does (unknown fields and bad enum
// values are errors). An IstioOperator is decoded strictly into Istio's IstioOperator type and its
// meshConfig goes through mesh.ApplyMeshConfigDefaults and agent.ValidateMeshConfig, the mesh
// part of istioctl's operator validation (whose values/hub/tag checks would pull in Istio's whole
// Kubernetes client and double the build time; the manifests here set none of those).
//
// Usage: istio-validate [-version] FILE...
//
// One line per document: "<file>: <Kind>/<namespace>/<name>: ok", "... warning: ..." or
// "... error: ...". Exit status 1 if any document has an error, 2 on a usage error. A document
// whose kind Istio does not validate is an error here (istioctl would skip it silently).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sort"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	kubeyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	operator "istio.io/istio/operator/pkg/apis"
	"istio.io/istio/pkg/config"
	"istio.io/istio/pkg/config/mesh"
	"istio.io/istio/pkg/config/schema/collections"
	"istio.io/istio/pkg/config/schema/resource"
	"istio.io/istio/pkg/config/validation/agent"
	"istio.io/istio/pkg/log"
)

// The top-level fields istiod's webhook and istioctl accept.
var validFields = map[string]bool{"apiVersion": true, "kind": true, "metadata": true, "spec": true, "status": true}

func main() {
	args := os.Args[1:]
	if len(args) == 1 && args[0] == "-version" {
		fmt.Println(istioVersion())
		return
	}
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: istio-validate [-version] FILE...")
		os.Exit(2)
	}
	// Istio's packages log through their own logger; keep its debug noise out of the output.
	opts := log.DefaultOptions()
	opts.SetDefaultOutputLevel(log.OverrideScopeName, log.ErrorLevel)
	_ = log.Configure(opts)

	failed := false
	for _, path := range args {
		if !validateFile(path, os.Stdout) {
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

// istioVersion is the istio.io/istio module version this binary was built with.
func istioVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "istio.io/istio" {
				return "istio.io/istio " + d.Version
			}
		}
	}
	return "istio.io/istio (unknown version)"
}

// validateFile prints one line per document and reports whether all of them passed.
func validateFile(path string, out io.Writer) bool {
	f, err := os.Open(path)
	if err != nil {
		fmt.Fprintf(out, "%s: error: %v\n", path, err)
		return false
	}
	defer f.Close()
	reader := kubeyaml.NewYAMLReader(bufio.NewReader(f))
	ok := true
	docs := 0
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			fmt.Fprintf(out, "%s: error: cannot split YAML documents: %v\n", path, err)
			return false
		}
		obj := map[string]any{}
		// Strict like istioctl: duplicate keys are errors.
		if err := yaml.UnmarshalStrict(doc, &obj); err != nil {
			fmt.Fprintf(out, "%s: error: cannot decode YAML: %v\n", path, err)
			ok = false
			continue
		}
		if len(obj) == 0 {
			continue // an empty document (comments only)
		}
		docs++
		un := &unstructured.Unstructured{Object: obj}
		where := fmt.Sprintf("%s: %s/%s/%s", path, un.GetKind(), un.GetNamespace(), un.GetName())
		warnings, errs := validateObject(un)
		for _, w := range warnings {
			fmt.Fprintf(out, "%s: warning: %v\n", where, w)
		}
		for _, e := range errs {
			fmt.Fprintf(out, "%s: error: %v\n", where, e)
		}
		if len(errs) > 0 {
			ok = false
		} else if len(warnings) == 0 {
			fmt.Fprintf(out, "%s: ok\n", where)
		}
	}
	if docs == 0 {
		fmt.Fprintf(out, "%s: error: no YAML document in the file\n", path)
		return false
	}
	return ok
}

func validateObject(un *unstructured.Unstructured) (warnings []error, errs []error) {
	for _, key := range sortedKeys(un.Object) {
		if !validFields[key] {
			errs = append(errs, fmt.Errorf("unknown field %q", key))
		}
	}
	g := un.GroupVersionKind()
	gvk := config.GroupVersionKind{Group: g.Group, Version: g.Version, Kind: g.Kind}

	if schema, found := collections.Pilot.FindByGroupVersionAliasesKind(gvk); found {
		cfg, err := convert(schema, un)
		if err != nil {
			return warnings, append(errs, fmt.Errorf("cannot parse proto message: %v", err))
		}
		// As istioctl: the validity of some objects depends on their namespace.
		if cfg.Namespace == "" {
			cfg.Namespace = "default"
		}
		// The validation istiod's webhook runs (pkg/webhooks/validation/server).
		w, err := schema.ValidateConfig(*cfg)
		warnings = append(warnings, flatten(w)...)
		errs = append(errs, flatten(err)...)
		return warnings, errs
	}

	if un.GetAPIVersion() == operator.IstioOperatorGVK.GroupVersion().String() && un.GetKind() == operator.IstioOperatorGVK.Kind {
		iop := &operator.IstioOperator{}
		js, err := json.Marshal(un.Object)
		if err != nil {
			return warnings, append(errs, err)
		}
		dec := json.NewDecoder(bytes.NewReader(js))
		dec.DisallowUnknownFields()
		if err := dec.Decode(iop); err != nil {
			return warnings, append(errs, fmt.Errorf("could not unmarshal: %v", err))
		}
		// istioctl's operator validation runs this too but drops ValidateMeshConfig's errors (it
		// returns the nil parse error instead); here they count.
		mw, me := validateMeshConfig(un)
		warnings = append(warnings, mw...)
		errs = append(errs, me...)
		return warnings, errs
	}

	return warnings, append(errs, fmt.Errorf("kind %q (apiVersion %q) is not one Istio validates", un.GetKind(), un.GetAPIVersion()))
}

// convert is istioctl validate's conversion: the spec as JSON into the kind's proto, strictly.
func convert(schema resource.Schema, un *unstructured.Unstructured) (*config.Config, error) {
	js, err := json.Marshal(un.Object["spec"])
	if err != nil {
		return nil, err
	}
	spec, err := schema.NewInstance()
	if err != nil {
		return nil, err
	}
	if err := config.ApplyJSONStrict(spec, string(js)); err != nil {
		return nil, err
	}
	return &config.Config{
		Meta: config.Meta{
			GroupVersionKind: schema.GroupVersionKind(),
			Name:             un.GetName(),
			Namespace:        un.GetNamespace(),
			Labels:           un.GetLabels(),
			Annotations:      un.GetAnnotations(),
		},
		Spec: spec,
	}, nil
}

func validateMeshConfig(un *unstructured.Unstructured) (warnings []error, errs []error) {
	mc, found, err := unstructured.NestedFieldNoCopy(un.Object, "spec", "meshConfig")
	if err != nil || !found {
		return nil, nil
	}
	js, err := json.Marshal(mc)
	if err != nil {
		return nil, []error{err}
	}
	m, err := mesh.ApplyMeshConfigDefaults(string(js))
	if err != nil {
		return nil, []error{fmt.Errorf("meshConfig: %v", err)}
	}
	w, err := agent.ValidateMeshConfig(m)
	for _, x := range flatten(w) {
		warnings = append(warnings, fmt.Errorf("meshConfig: %v", x))
	}
	for _, x := range flatten(err) {
		errs = append(errs, fmt.Errorf("meshConfig: %v", x))
	}
	return warnings, errs
}

// flatten splits a multierror (or any joined error) into its parts, one line each.
func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if m, ok := err.(interface{ WrappedErrors() []error }); ok {
		var out []error
		for _, e := range m.WrappedErrors() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
