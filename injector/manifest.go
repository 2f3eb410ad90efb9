package injector

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// templatePaths says where each workload kind keeps its pod template.
var templatePaths = map[string][]string{
	"Deployment":  {"spec", "template"},
	"StatefulSet": {"spec", "template"},
	"DaemonSet":   {"spec", "template"},
	"ReplicaSet":  {"spec", "template"},
	"Job":         {"spec", "template"},
	"CronJob":     {"spec", "jobTemplate", "spec", "template"},
}

// InjectManifests reads a multi-document YAML stream of manifests and
// writes it back with the sidecar injected into every Pod and every pod
// template of a Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or
// CronJob, for GitOps repositories that keep what runs (like istioctl
// kube-inject). Injection is as the webhook does it in a namespace that
// opted in: every pod but those labelled InjectLabel=InjectDisabled, and
// none twice. Other documents pass through unchanged; a pod in an excluded
// namespace is left alone. It returns how many pods it injected.
func InjectManifests(r io.Reader, w io.Writer, cfg Config) (int, error) {
	cfg.NamespaceOptIn = true
	reader := utilyaml.NewYAMLReader(bufio.NewReader(r))
	injected, docs := 0, 0
	for {
		doc, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return injected, nil
		}
		if err != nil {
			return injected, fmt.Errorf("read manifests: %w", err)
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		out, changed, err := injectDocument(doc, cfg)
		if err != nil {
			return injected, fmt.Errorf("document %d: %w", docs+1, err)
		}
		if changed {
			injected++
		}
		if docs > 0 {
			if _, err := io.WriteString(w, "---\n"); err != nil {
				return injected, err
			}
		}
		docs++
		if _, err := w.Write(out); err != nil {
			return injected, err
		}
	}
}

// injectDocument injects the pod of one manifest, if it holds one.
func injectDocument(doc []byte, cfg Config) ([]byte, bool, error) {
	var obj map[string]any
	if err := yaml.Unmarshal(doc, &obj); err != nil {
		return nil, false, err
	}
	u := &unstructured.Unstructured{Object: obj}
	var podObj map[string]any
	path, workload := templatePaths[u.GetKind()]
	switch {
	case u.GetKind() == "Pod" && u.GetAPIVersion() == "v1":
		podObj = obj
	case workload:
		tmpl, found, err := unstructured.NestedMap(obj, path...)
		if err != nil || !found {
			return nil, false, fmt.Errorf("%s %s: no pod template at %v", u.GetKind(), u.GetName(), path)
		}
		podObj = tmpl
	default:
		return doc, false, nil
	}
	var pod corev1.Pod
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(podObj, &pod); err != nil {
		return nil, false, fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
	}
	pod.Namespace = u.GetNamespace()
	if pod.Namespace == "" {
		pod.Namespace = "default"
	}
	if pod.Name == "" {
		pod.Name = u.GetName()
	}
	out, changed, err := Inject(&pod, cfg)
	switch {
	case errors.Is(err, ErrExcluded):
		return doc, false, nil
	case err != nil:
		return nil, false, fmt.Errorf("%s %s: %w", u.GetKind(), u.GetName(), err)
	case !changed:
		return doc, false, nil
	}
	if u.GetKind() == "Pod" {
		out.Namespace, out.Name = u.GetNamespace(), u.GetName()
		outObj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(out)
		if err != nil {
			return nil, false, err
		}
		obj = outObj
		obj["apiVersion"], obj["kind"] = "v1", "Pod"
	} else {
		tmpl := map[string]any{}
		meta, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&out.ObjectMeta)
		if err != nil {
			return nil, false, err
		}
		delete(meta, "namespace")
		if name, _, _ := unstructured.NestedString(podObj, "metadata", "name"); name == "" {
			delete(meta, "name")
		}
		spec, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&out.Spec)
		if err != nil {
			return nil, false, err
		}
		tmpl["metadata"], tmpl["spec"] = meta, spec
		if err := unstructured.SetNestedMap(obj, tmpl, path...); err != nil {
			return nil, false, err
		}
	}
	delete(obj, "status")
	unstructured.RemoveNestedField(obj, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(obj, "spec", "template", "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(obj, "spec", "jobTemplate", "spec", "template", "metadata", "creationTimestamp")
	raw, err := yaml.Marshal(obj)
	return raw, true, err
}
