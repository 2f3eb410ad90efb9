package injector

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"

	"gomodules.xyz/jsonpatch/v2"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MaxReviewBytes bounds an AdmissionReview's body. A pod CREATE's review
// carries the pod once (no old object); a pod's annotations are at most
// 256 KiB, and a pod spec with its containers and env seldom reaches
// 100 KiB. A larger body is refused (413) before it is read: anything in
// the cluster can reach the port, and the injector's memory limit is 64 MiB.
const MaxReviewBytes = 1 << 20

// Handler is the mutating admission webhook: it answers POSTed
// admission.k8s.io/v1 AdmissionReviews of pod CREATEs with a JSONPatch that
// adds the sidecar. It allows every pod it does not change, and refuses
// only a pod that asks for the sidecar with invalid annotations.
type Handler struct {
	// Metrics counts what the handler does; nil counts nothing.
	Metrics *Metrics

	cfg Config
	log *slog.Logger
}

// NewHandler returns the webhook handler for cfg.
func NewHandler(cfg Config, log *slog.Logger) *Handler {
	return &Handler{cfg: cfg, log: log}
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	serveReview(w, r, h.log, h.review)
}

// serveReview decodes a POSTed admission.k8s.io/v1 AdmissionReview, answers
// its request with review and writes the response.
func serveReview(w http.ResponseWriter, r *http.Request, log *slog.Logger, review func(*admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST an AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	if r.ContentLength > MaxReviewBytes {
		http.Error(w, fmt.Sprintf("an AdmissionReview of %d bytes: the limit is %d", r.ContentLength, MaxReviewBytes), http.StatusRequestEntityTooLarge)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxReviewBytes))
	if err != nil {
		code := http.StatusBadRequest
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			code = http.StatusRequestEntityTooLarge
		}
		http.Error(w, "read body: "+err.Error(), code)
		return
	}
	var in admissionv1.AdmissionReview
	if err := json.Unmarshal(body, &in); err != nil || in.Request == nil {
		http.Error(w, fmt.Sprintf("want an admission.k8s.io/v1 AdmissionReview with a request: %v", err), http.StatusBadRequest)
		return
	}
	resp := review(in.Request)
	resp.UID = in.Request.UID
	out := admissionv1.AdmissionReview{TypeMeta: in.TypeMeta, Response: resp}
	if out.APIVersion == "" {
		out.APIVersion, out.Kind = "admission.k8s.io/v1", "AdmissionReview"
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(out); err != nil {
		log.Warn("write admission response", "err", err)
	}
}

// review answers one admission request.
func (h *Handler) review(req *admissionv1.AdmissionRequest) *admissionv1.AdmissionResponse {
	log := h.log.With("namespace", req.Namespace, "name", req.Name, "uid", req.UID)
	allow := &admissionv1.AdmissionResponse{Allowed: true}
	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.SubResource != "" || req.Operation != admissionv1.Create {
		log.Debug("not a pod create", "kind", req.Kind.Kind, "operation", req.Operation)
		h.Metrics.skip(SkipNotPodCreate)
		return allow
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		log.Error("decode pod", "err", err)
		h.Metrics.fail(ErrDecode)
		return deny(http.StatusBadRequest, fmt.Sprintf("lastcall injector: decode pod: %v", err))
	}
	if pod.Namespace == "" {
		pod.Namespace = req.Namespace
	}
	patch, err := Patch(&pod, h.cfg)
	switch {
	case errors.Is(err, ErrExcluded):
		log.Info("namespace excluded, pod left alone")
		h.Metrics.skip(SkipExcluded)
		return allow
	case err != nil:
		log.Warn("pod refused", "err", err)
		h.Metrics.fail(ErrRefused)
		return deny(http.StatusUnprocessableEntity, "lastcall injector: "+err.Error())
	case len(patch) == 0:
		log.Debug("nothing to inject")
		if _, done := pod.Annotations[InjectedAnnotation]; done {
			h.Metrics.skip(SkipAlreadyInjected)
		} else {
			h.Metrics.skip(SkipNotLabelled)
		}
		return allow
	}
	if reason := NotInjectable(&pod); reason != "" {
		// Only the annotation that says why is added.
		log.Info("pod not injected", "reason", reason)
		h.Metrics.skip(SkipNotInjectable)
	}
	raw, err := json.Marshal(patch)
	if err != nil {
		log.Error("encode patch", "err", err)
		h.Metrics.fail(ErrEncode)
		return deny(http.StatusInternalServerError, fmt.Sprintf("lastcall injector: encode patch: %v", err))
	}
	if NotInjectable(&pod) == "" {
		log.Info("sidecar injected", "generate_name", pod.GenerateName)
		h.Metrics.inject()
	}
	pt := admissionv1.PatchTypeJSONPatch
	allow.Patch, allow.PatchType = raw, &pt
	return allow
}

// Patch returns the JSONPatch operations that Inject's changes to pod
// amount to, none when it changes nothing.
func Patch(pod *corev1.Pod, cfg Config) ([]jsonpatch.Operation, error) {
	mutated, changed, err := Inject(pod, cfg)
	if err != nil || !changed {
		return nil, err
	}
	before, err := json.Marshal(pod)
	if err != nil {
		return nil, fmt.Errorf("encode pod: %w", err)
	}
	after, err := json.Marshal(mutated)
	if err != nil {
		return nil, fmt.Errorf("encode injected pod: %w", err)
	}
	ops, err := jsonpatch.CreatePatch(before, after)
	if err != nil {
		return nil, fmt.Errorf("diff the injected pod: %w", err)
	}
	return ops, nil
}

// deny refuses a request; the reason follows the code, so that clients
// classify the refusal right (403 for good, 503 to retry, else invalid).
func deny(code int32, msg string) *admissionv1.AdmissionResponse {
	reason := metav1.StatusReasonInvalid
	switch code {
	case http.StatusForbidden:
		reason = metav1.StatusReasonForbidden
	case http.StatusServiceUnavailable:
		reason = metav1.StatusReasonServiceUnavailable
	}
	return &admissionv1.AdmissionResponse{
		Allowed: false,
		Result:  &metav1.Status{Status: metav1.StatusFailure, Code: code, Message: msg, Reason: reason},
	}
}
