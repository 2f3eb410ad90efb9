package agent

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var testPayload = WebhookPayload{
	Node: "spot-7", Source: "aws", Kind: "spot-interruption", State: "active", ID: "i-0abc",
	Action: "drain", Detected: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC),
	Deadline: time.Date(2026, 12, 1, 10, 2, 0, 0, time.UTC), Remaining: 118.6,
	Pods: []string{"jobs/worker-1", `jobs/odd"name`},
}

// TestWebhookBodies renders the built-in formats and a custom template for
// one payload; each body is JSON of the shape its receiver wants.
func TestWebhookBodies(t *testing.T) {
	pagerDuty, err := ParseWebhookTemplate(`{"routing_key": "KEY", "event_action": "trigger", "dedup_key": {{ json .ID }},
  "payload": {"summary": {{ json (printf "%s: %s notice, node goes away at %s" .Node .Kind (rfc3339 .Deadline)) }},
              "source": {{ json .Node }}, "severity": "warning", "custom_details": {"pods": {{ json .Pods }}}}}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		hook  Webhook
		check func(t *testing.T, body map[string]any)
	}{
		{"json", Webhook{Format: WebhookJSON}, func(t *testing.T, b map[string]any) {
			if b["node"] != "spot-7" || b["deadline"] != "2026-12-01T10:02:00Z" || len(b["pods"].([]any)) != 2 {
				t.Errorf("payload %v", b)
			}
		}},
		{"slack", Webhook{Format: WebhookSlack}, func(t *testing.T, b map[string]any) {
			want := ":warning: node spot-7: spot-interruption notice from aws, goes away at 2026-12-01T10:02:00Z (in 119s); lastcall will drain 2 pods"
			if b["text"] != want || len(b) != 1 {
				t.Errorf("slack body %v, want text %q", b, want)
			}
		}},
		{"teams", Webhook{Format: WebhookTeams}, func(t *testing.T, b map[string]any) {
			att := b["attachments"].([]any)[0].(map[string]any)
			card := att["content"].(map[string]any)
			if b["type"] != "message" || att["contentType"] != "application/vnd.microsoft.card.adaptive" || card["type"] != "AdaptiveCard" {
				t.Fatalf("teams body %v", b)
			}
			raw, _ := json.Marshal(card["body"])
			for _, want := range []string{"Node spot-7 goes away in 119s", "spot-interruption from aws (i-0abc)", "2026-12-01T10:02:00Z", "drain 2 pods"} {
				if !strings.Contains(string(raw), want) {
					t.Errorf("card body lacks %q: %s", want, raw)
				}
			}
		}},
		{"pagerduty template", Webhook{Format: WebhookTemplate, Template: pagerDuty}, func(t *testing.T, b map[string]any) {
			p := b["payload"].(map[string]any)
			if b["dedup_key"] != "i-0abc" || p["summary"] != "spot-7: spot-interruption notice, node goes away at 2026-12-01T10:02:00Z" {
				t.Errorf("pagerduty body %v", b)
			}
			if pods := p["custom_details"].(map[string]any)["pods"].([]any); len(pods) != 2 || pods[1] != `jobs/odd"name` {
				t.Errorf("pods %v: want both, the quote kept", pods)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := tc.hook.Body(testPayload)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s body: %s", tc.name, raw)
			var body map[string]any
			if err := json.Unmarshal(raw, &body); err != nil {
				t.Fatalf("body is not JSON: %v\n%s", err, raw)
			}
			tc.check(t, body)
		})
	}
}

// TestWebhookBodiesForeignDrain renders the built-in formats for another
// tool taking the node: they name the tool and say lastcall only told the
// workers, with no deadline (none in the JSON, none invented in the text).
func TestWebhookBodiesForeignDrain(t *testing.T) {
	p := WebhookPayload{
		Node: "spot-7", Source: ForeignSource, Kind: ForeignKarpenter, State: "active", ID: "node:karpenter.sh/disrupted",
		Action: ForeignAction, Detected: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), Pods: []string{"jobs/worker-1"},
	}
	for _, tc := range []struct {
		format WebhookFormat
		want   []string
	}{
		{WebhookJSON, []string{`"source":"node"`, `"kind":"karpenter"`, `"action":"notify"`, `"remaining_seconds":0`}},
		{WebhookSlack, []string{"node spot-7: karpenter is taking the node away (node:karpenter.sh/disrupted); lastcall told the workers of 1 pods to finish"}},
		{WebhookTeams, []string{"Node spot-7: karpenter is taking it away", `"value": "none"`, "workers of 1 pods told to finish; lastcall neither cordons nor evicts"}},
	} {
		t.Run(string(tc.format), func(t *testing.T) {
			raw, err := Webhook{Format: tc.format}.Body(p)
			if err != nil {
				t.Fatal(err)
			}
			if !json.Valid(raw) {
				t.Fatalf("body is not JSON: %s", raw)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(raw), w) {
					t.Errorf("body lacks %q: %s", w, raw)
				}
			}
			for _, bad := range []string{"deadline\":", "0001-01-01", "goes away at", "in 0s"} {
				if strings.Contains(string(raw), bad) {
					t.Errorf("body has %q, a deadline there is none of: %s", bad, raw)
				}
			}
		})
	}
}

func TestParseWebhookTemplateRefuses(t *testing.T) {
	for name, text := range map[string]string{
		"syntax":        `{"text": {{ .Node }`,
		"unknown field": `{"text": {{ json .Nodes }}}`,
		"not JSON":      `text={{ .Node }}`,
		"unquoted":      `{"text": {{ .Node }}}`,
	} {
		if _, err := ParseWebhookTemplate(text); err == nil {
			t.Errorf("%s: %q accepted", name, text)
		}
	}
}

// request is what the test server saw of one request.
type request struct {
	header http.Header
	body   string
}

// TestWebhookPostRetries posts to a server that fails once with a 503,
// then answers 200: the body and headers arrive twice, the second attempt
// succeeds. A 400 is not retried, and the URL is read from a file at each
// post.
func TestWebhookPostRetries(t *testing.T) {
	var (
		mu     sync.Mutex
		seen   []request
		status = []int{http.StatusServiceUnavailable, http.StatusOK}
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		seen = append(seen, request{r.Header.Clone(), string(body)})
		code := http.StatusOK
		if len(status) > 0 {
			code, status = status[0], status[1:]
		}
		mu.Unlock()
		w.WriteHeader(code)
	}))
	defer srv.Close()
	file := filepath.Join(t.TempDir(), "url")
	if err := os.WriteFile(file, []byte(srv.URL+"/hook\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	w := Webhook{URLFile: file, Format: WebhookSlack, Header: http.Header{"X-Team": {"sre"}}, Backoff: 10 * time.Millisecond, Attempts: 3}
	body, err := w.Body(testPayload)
	if err != nil {
		t.Fatal(err)
	}
	var retries []string
	start := time.Now()
	attempts, err := w.Post(t.Context(), body, func(n int, err error) { retries = append(retries, err.Error()) })
	t.Logf("posted in %d attempts, %v; retried after %q", attempts, time.Since(start).Round(time.Millisecond), retries)
	if err != nil || attempts != 2 {
		t.Fatalf("Post = %d, %v; want 2 attempts, nil", attempts, err)
	}
	mu.Lock()
	got := seen
	mu.Unlock()
	if len(got) != 2 || len(retries) != 1 || retries[0] != "webhook answered 503" {
		t.Fatalf("server saw %d requests, retries %q; want 2 and one 503", len(got), retries)
	}
	for _, r := range got {
		if r.body != string(body) || r.header.Get("X-Team") != "sre" || r.header.Get("Content-Type") != "application/json" {
			t.Errorf("request %+v", r)
		}
	}

	mu.Lock()
	status = []int{http.StatusBadRequest, http.StatusOK}
	mu.Unlock()
	attempts, err = w.Post(t.Context(), body, nil)
	var se *StatusError
	if attempts != 1 || !errors.As(err, &se) || se.Code != http.StatusBadRequest {
		t.Errorf("after a 400: %d attempts, %v; want 1 attempt and the 400", attempts, err)
	}

	// Every attempt fails: the last error is returned after Attempts.
	mu.Lock()
	status = []int{500, 500, 500, 500}
	mu.Unlock()
	if attempts, err = w.Post(t.Context(), body, nil); attempts != 3 || !errors.As(err, &se) || se.Code != 500 {
		t.Errorf("always 500: %d attempts, %v; want 3 and the 500", attempts, err)
	}
}

// TestWebhookPostStopsAtDeadline: a server that never answers in time is
// retried until ctx (the notice's deadline) ends, not beyond.
func TestWebhookPostStopsAtDeadline(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	defer close(release)
	w := Webhook{URL: srv.URL, Timeout: 50 * time.Millisecond, Backoff: 20 * time.Millisecond, Attempts: 100}
	ctx, cancel := context.WithTimeout(t.Context(), 400*time.Millisecond)
	defer cancel()
	start := time.Now()
	attempts, err := w.Post(ctx, []byte(`{}`), nil)
	took := time.Since(start)
	t.Logf("gave up after %d attempts in %v", attempts, took.Round(time.Millisecond))
	if err == nil || attempts >= 100 || took > 2*time.Second {
		t.Errorf("Post = %d attempts, %v in %v; want an error well before 100 attempts", attempts, err, took)
	}
	if strings.Contains(err.Error(), srv.URL) {
		t.Errorf("error %q names the URL, which may be a credential", err)
	}
}

// TestWebhookFormatsSent sends each body (Slack, Teams, a custom template)
// to a server that answers 500 first: each arrives twice, unchanged, and
// the second is accepted.
func TestWebhookFormatsSent(t *testing.T) {
	custom, err := ParseWebhookTemplate(`{"node": {{ json .Node }}, "pods": {{ json (join .Pods ",") }}}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []Webhook{{Format: WebhookSlack}, {Format: WebhookTeams}, {Format: WebhookTemplate, Template: custom}} {
		t.Run(string(w.Format), func(t *testing.T) {
			var (
				mu     sync.Mutex
				bodies []string
			)
			srv := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				mu.Lock()
				bodies = append(bodies, string(b))
				first := len(bodies) == 1
				mu.Unlock()
				if first {
					rw.WriteHeader(http.StatusInternalServerError)
				}
			}))
			defer srv.Close()
			w.URL, w.Backoff = srv.URL, time.Millisecond
			body, err := w.Body(testPayload)
			if err != nil {
				t.Fatal(err)
			}
			attempts, err := w.Post(t.Context(), body, nil)
			mu.Lock()
			defer mu.Unlock()
			if err != nil || attempts != 2 || len(bodies) != 2 || bodies[0] != string(body) || bodies[1] != string(body) {
				t.Errorf("Post = %d, %v; server got %q; want the body twice", attempts, err, bodies)
			}
			t.Logf("%s: 500, then 200, in %d attempts: %s", w.Format, attempts, strings.Join(strings.Fields(string(body)), " "))
		})
	}
}
