package injector

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"reflect"
	goruntime "runtime"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	"github.com/prometheus/client_golang/prometheus"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// post sends an AdmissionReview for pod to h and returns the response.
func post(t *testing.T, h http.Handler, op admissionv1.Operation, namespace string, pod *corev1.Pod) *admissionv1.AdmissionResponse {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	review := admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID:       "uid-1",
			Kind:      metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: namespace,
			Operation: op,
			Object:    runtime.RawExtension{Raw: raw},
		},
	}
	body, err := json.Marshal(review)
	if err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body)))
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatal(err)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Response == nil || out.Response.UID != "uid-1" {
		t.Fatalf("review %+v: want a v1 AdmissionReview answering uid-1", out)
	}
	return out.Response
}

func TestHandler(t *testing.T) {
	h := NewHandler(testConfig(), slog.New(slog.NewTextHandler(io.Discard, nil)))

	for name, pod := range map[string]*corev1.Pod{
		"plain": workerPod(func(p *corev1.Pod) { p.Namespace = "" }),
		"init containers, volumes, two workers": workerPod(func(p *corev1.Pod) {
			p.Namespace = ""
			p.Spec.InitContainers = []corev1.Container{{Name: "migrate", Image: "m:1"}, {Name: "seed", Image: "s:1"}}
			p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}}
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
			p.Spec.Containers = append(p.Spec.Containers, corev1.Container{Name: "helper", Image: "h:1"})
		}),
	} {
		t.Run("patch gives the injected pod: "+name, func(t *testing.T) { checkPatch(t, h, pod) })
	}
	for _, tc := range []struct {
		name    string
		op      admissionv1.Operation
		ns      string
		pod     *corev1.Pod
		allowed bool
	}{
		{"kube-system allowed untouched", admissionv1.Create, "kube-system", workerPod(func(p *corev1.Pod) { p.Namespace = "" }), true},
		{"update allowed untouched", admissionv1.Update, "jobs", workerPod(), true},
		{"already injected allowed untouched", admissionv1.Create, "jobs", workerPod(annotate(InjectedAnnotation, "true")), true},
		{"bad annotation denied", admissionv1.Create, "jobs", workerPod(annotate(SignalAnnotation, "KILL")), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := post(t, h, tc.op, tc.ns, tc.pod)
			if resp.Allowed != tc.allowed || resp.Patch != nil {
				t.Errorf("response %+v: want allowed %v and no patch", resp, tc.allowed)
			}
			if !tc.allowed && (resp.Result == nil || resp.Result.Message == "") {
				t.Errorf("denied without a message: %+v", resp)
			}
		})
	}
	t.Run("not a review", func(t *testing.T) {
		for _, req := range []*http.Request{
			httptest.NewRequest(http.MethodGet, "/mutate", nil),
			httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewBufferString("{}")),
			httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewBufferString("nonsense")),
		} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code < 400 {
				t.Errorf("%s %s: status %d, want an error", req.Method, req.URL, rec.Code)
			}
		}
	})
}

// checkPatch shows that the JSONPatch h answers for pod turns pod into what
// Inject returns.
func checkPatch(t *testing.T, h http.Handler, pod *corev1.Pod) {
	t.Helper()
	resp := post(t, h, admissionv1.Create, "jobs", pod)
	if !resp.Allowed || resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("response %+v: want allowed with a JSONPatch", resp)
	}
	patch, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(pod)
	patched, err := patch.Apply(raw)
	if err != nil {
		t.Fatalf("apply patch %s: %v", resp.Patch, err)
	}
	var got corev1.Pod
	if err := json.Unmarshal(patched, &got); err != nil {
		t.Fatal(err)
	}
	pod.Namespace = "jobs"
	want, _, err := Inject(pod, testConfig())
	if err != nil {
		t.Fatal(err)
	}
	want.Namespace = ""
	if !reflect.DeepEqual(&got, want) {
		t.Errorf("patched pod\n%+v\nwant\n%+v", got, want)
	}
}

// TestHandlerMetrics counts one request of each kind: injected, skipped
// (for each reason) and refused.
func TestHandlerMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := NewHandler(testConfig(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	h.Metrics = NewMetrics(reg, "v-test")
	unlabelled := workerPod(func(p *corev1.Pod) { delete(p.Labels, InjectLabel) })
	post(t, h, admissionv1.Create, "jobs", workerPod())
	post(t, h, admissionv1.Create, "jobs", workerPod())
	post(t, h, admissionv1.Create, "jobs", unlabelled)
	post(t, h, admissionv1.Create, "jobs", workerPod(annotate(InjectedAnnotation, "true")))
	post(t, h, admissionv1.Create, "kube-system", workerPod(func(p *corev1.Pod) { p.Namespace = "" }))
	post(t, h, admissionv1.Update, "jobs", workerPod())
	post(t, h, admissionv1.Create, "jobs", workerPod(annotate(SignalAnnotation, "KILL")))
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "{" + l.GetValue() + "}"
			}
			got[key] = m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	want := map[string]float64{
		"lastcall_injector_injected_total":                         2,
		"lastcall_injector_skipped_total{already_injected}":        1,
		"lastcall_injector_skipped_total{excluded_namespace}":      1,
		"lastcall_injector_skipped_total{not_labelled}":            1,
		"lastcall_injector_skipped_total{not_pod_create}":          1,
		"lastcall_injector_errors_total{refused}":                  1,
		"lastcall_injector_errors_total{decode}":                   0,
		"lastcall_injector_errors_total{encode}":                   0,
		"lastcall_build_info{" + goruntime.Version() + "}{v-test}": 1,
	}
	for k, v := range want {
		if g, ok := got[k]; !ok || g != v {
			t.Errorf("%s = %v (present %v), want %v", k, g, ok, v)
		}
	}
}
