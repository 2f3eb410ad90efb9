package injector

import (
	"bytes"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/yaml"
)

const manifests = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: workers
  namespace: jobs
spec:
  selector:
    matchLabels: {app: workers}
  template:
    metadata:
      labels: {app: workers}
      annotations: {lastcall.dev/signal: TSTP}
    spec:
      securityContext: {runAsUser: 1000}
      containers:
        - name: worker
          image: worker:1
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  a: b
---
apiVersion: batch/v1
kind: CronJob
metadata:
  name: nightly
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
            - name: batch
              image: batch:1
---
apiVersion: v1
kind: Pod
metadata:
  name: opted-out
  labels: {lastcall.dev/inject: disabled}
spec:
  containers:
    - name: c
      image: c:1
---
apiVersion: v1
kind: Pod
metadata:
  name: system
  namespace: kube-system
spec:
  containers:
    - name: c
      image: c:1
`

// TestInjectManifests injects a GitOps repository's manifests: the
// Deployment's and the CronJob's pod templates get the sidecar, the
// ConfigMap, the opted-out pod and the kube-system pod pass unchanged, and
// injecting the output again changes nothing.
func TestInjectManifests(t *testing.T) {
	var out bytes.Buffer
	n, err := InjectManifests(strings.NewReader(manifests), &out, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("injected %d, want 2 (the Deployment and the CronJob)", n)
	}
	docs := strings.Split(out.String(), "\n---\n")
	if len(docs) != 5 {
		t.Fatalf("%d documents out, want 5:\n%s", len(docs), out.String())
	}
	var dep appsv1.Deployment
	if err := yaml.UnmarshalStrict([]byte(docs[0]), &dep); err != nil {
		t.Fatalf("deployment: %v\n%s", err, docs[0])
	}
	tmpl := corev1.Pod{ObjectMeta: dep.Spec.Template.ObjectMeta, Spec: dep.Spec.Template.Spec}
	c, native := sidecar(t, &tmpl)
	if !native || c.StartupProbe == nil || !strings.Contains(strings.Join(c.Args, " "), "--signal=TSTP") ||
		tmpl.Annotations[InjectedAnnotation] != "true" || dep.Name != "workers" || dep.Namespace != "jobs" {
		t.Errorf("deployment not injected as the webhook would: %+v", dep)
	}
	if tmpl.Spec.ShareProcessNamespace == nil || !*tmpl.Spec.ShareProcessNamespace || dep.Spec.Template.Name != "" {
		t.Errorf("template: shareProcessNamespace %v, name %q", tmpl.Spec.ShareProcessNamespace, dep.Spec.Template.Name)
	}
	var cj batchv1.CronJob
	if err := yaml.UnmarshalStrict([]byte(docs[2]), &cj); err != nil {
		t.Fatal(err)
	}
	jt := cj.Spec.JobTemplate.Spec.Template
	if _, native := sidecar(t, &corev1.Pod{Spec: jt.Spec}); !native || jt.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("cronjob template %+v", jt.Spec)
	}
	for i, name := range map[int]string{1: "settings", 3: "opted-out", 4: "system"} {
		if strings.Contains(docs[i], "lastcall.dev/injected") || !strings.Contains(docs[i], name) {
			t.Errorf("document %d (%s) changed:\n%s", i, name, docs[i])
		}
	}

	var again bytes.Buffer
	if n, err := InjectManifests(strings.NewReader(out.String()), &again, testConfig()); err != nil || n != 0 {
		t.Errorf("second pass injected %d (%v), want 0", n, err)
	}
}
