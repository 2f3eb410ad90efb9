package kubetest

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// auditPolicy logs every request's metadata once, when the response
// starts (a watch) or completes (everything else).
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
`

// AuditEvent is one request as the apiserver's audit log records it.
type AuditEvent struct {
	// Stage is ResponseStarted (watches) or ResponseComplete.
	Stage string `json:"stage"`
	// Verb is the request's verb (get, list, watch, update, create, ...).
	Verb string `json:"verb"`
	// RequestURI is the path and query.
	RequestURI string `json:"requestURI"`
	// User is the authenticated user.
	User struct {
		Username string `json:"username"`
	} `json:"user"`
	// UserAgent is the client's User-Agent.
	UserAgent string `json:"userAgent"`
	// Received is when the apiserver received the request.
	Received time.Time `json:"requestReceivedTimestamp"`
	// ResponseStatus holds the response's status code.
	ResponseStatus struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
}

// AuditEvents returns the requests of user received at or after since, one
// per request (a watch counts once).
func (e *Env) AuditEvents(user string, since time.Time) ([]AuditEvent, error) {
	return ReadAuditLog(filepath.Join(e.Dir, "audit.log"), user, since)
}

// ReadAuditLog returns the requests of user received at or after since
// from the JSON audit log at path, one per request (a watch counts once).
func ReadAuditLog(path, user string, since time.Time) ([]AuditEvent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	defer f.Close()
	var out []AuditEvent
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), 16<<20)
	for sc.Scan() {
		var ev struct {
			AuditEvent
			AuditID string `json:"auditID"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return nil, fmt.Errorf("parse audit log: %w", err)
		}
		if ev.User.Username != user || ev.Received.Before(since) || seen[ev.AuditID] {
			continue
		}
		seen[ev.AuditID] = true
		out = append(out, ev.AuditEvent)
	}
	return out, sc.Err()
}
