// Package injector adds lastcall's sidecar to worker pods: the mutation
// itself (Inject, a pure function of a pod and a Config), the mutating
// admission webhook that applies it (Handler, admission.k8s.io/v1 with a
// JSONPatch answer), and the webhook's TLS: a self-generated CA kept in a
// Secret (EnsureCerts) and written into the MutatingWebhookConfiguration's
// caBundle (PatchCABundle), renewed while the injector runs (Rotator).
// InjectManifests does the same mutation on manifests, for GitOps.
//
// A pod asks for the sidecar with the label lastcall.dev/inject=enabled, or
// its namespace does with the same label (Config.NamespaceOptIn; a pod
// labelled lastcall.dev/inject=disabled declines); the webhook
// configuration's selectors send only such pods. The injected
// pod carries a native sidecar (an init container with restartPolicy
// Always) or, for clusters older than 1.29, a plain container; a shared
// emptyDir at /lastcall; the downward API's POD_NAME, POD_NAMESPACE, POD_IP
// and HOST_IP; and an exec preStop hook /lastcall/sidecar prestop on each
// worker container that has none. It needs no hostPath, so Pod Security
// "baseline" admits it, and "restricted" too when the workers comply.
package injector
