package charts

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// chartDir is the chart under test, relative to this package.
const chartDir = "lastcall"

// kubeVersion is the Kubernetes version charts are rendered for: the
// version of the test apiserver (LASTCALL_KUBE_VERSION under `make
// test-oldest`).
var kubeVersion = func() string {
	if v := os.Getenv("LASTCALL_KUBE_VERSION"); v != "" {
		return strings.TrimPrefix(v, "v")
	}
	return "1.34.4"
}()

// helmPath returns the helm binary: $LASTCALL_HELM, else .tools/helm at the
// repository root. A missing helm fails the test, and skips it only under
// -short.
func helmPath(t *testing.T) string {
	t.Helper()
	path := os.Getenv("LASTCALL_HELM")
	if path == "" {
		abs, err := filepath.Abs(filepath.Join("..", ".tools", "helm"))
		if err != nil {
			t.Fatal(err)
		}
		path = abs
	}
	if _, err := os.Stat(path); err != nil {
		if testing.Short() {
			t.Skipf("helm not found at %s; skipped in -short mode", path)
		}
		t.Fatalf("helm not found at %s (run make chart-lint, which builds it, or set LASTCALL_HELM): %v", path, err)
	}
	return path
}

// runHelm runs helm with args in this package's directory, with its cache,
// config and data directories in a temporary directory, and returns its
// standard output and standard error.
func runHelm(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	helm := helmPath(t)
	home := t.TempDir()
	cmd := exec.CommandContext(t.Context(), helm, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(home, "config"),
		"HELM_DATA_HOME="+filepath.Join(home, "data"),
		"KUBECONFIG="+filepath.Join(home, "no-kubeconfig"),
	)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// templateArgs returns the arguments of `helm template` for release in
// namespace with the values files and --set values given.
func templateArgs(release, namespace string, files, set []string) []string {
	args := []string{"template", release, chartDir, "--namespace", namespace, "--kube-version", kubeVersion}
	for _, f := range files {
		args = append(args, "--values", f)
	}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return args
}

// render runs `helm template` and returns the rendered objects in order.
func render(t *testing.T, release, namespace string, files, set []string) []*unstructured.Unstructured {
	t.Helper()
	out, stderr, err := runHelm(t, templateArgs(release, namespace, files, set)...)
	if err != nil {
		t.Fatalf("helm template %v %v: %v\n%s", files, set, err, stderr)
	}
	objs, err := decodeObjects(out)
	if err != nil {
		t.Fatalf("decode helm template output: %v\n%s", err, out)
	}
	return objs
}

// decodeObjects splits a multi-document YAML stream into objects, leaving
// out empty documents.
func decodeObjects(manifest string) ([]*unstructured.Unstructured, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewBufferString(manifest)))
	var objs []*unstructured.Unstructured
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, err
		}
		var m map[string]any
		if err := yaml.Unmarshal(doc, &m); err != nil {
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		objs = append(objs, &unstructured.Unstructured{Object: m})
	}
}

// find returns the one object of kind in objs, failing the test when there
// is not exactly one.
func find(t *testing.T, objs []*unstructured.Unstructured, kind string) *unstructured.Unstructured {
	t.Helper()
	var found []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == kind {
			found = append(found, o)
		}
	}
	if len(found) > 1 {
		// The agent's, when the injector (on by default) has one too.
		found = slices.DeleteFunc(found, func(o *unstructured.Unstructured) bool {
			return o.GetLabels()["app.kubernetes.io/component"] == "injector"
		})
	}
	if len(found) != 1 {
		t.Fatalf("rendered %d objects of kind %s, want 1", len(found), kind)
	}
	return found[0]
}

// into converts an unstructured object into a typed one.
func into[T any](t *testing.T, o *unstructured.Unstructured) *T {
	t.Helper()
	out := new(T)
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, out, true); err != nil {
		t.Fatalf("convert %s %s: %v", o.GetKind(), o.GetName(), err)
	}
	return out
}

// kinds returns the kinds of objs in order.
func kinds(objs []*unstructured.Unstructured) []string {
	out := make([]string, len(objs))
	for i, o := range objs {
		out[i] = o.GetKind()
	}
	return out
}
