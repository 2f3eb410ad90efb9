package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
)

// WebhookFormat is the body a webhook gets.
type WebhookFormat string

// The webhook body formats.
const (
	// WebhookJSON posts a WebhookPayload.
	WebhookJSON WebhookFormat = "json"
	// WebhookSlack posts {"text": "..."}, which Slack incoming webhooks and
	// compatible chat tools (Mattermost, Rocket.Chat, Chime's "Content")
	// accept.
	WebhookSlack WebhookFormat = "slack"
	// WebhookTeams posts a Microsoft Teams message with an Adaptive Card,
	// which Teams workflows ("post to a channel when a webhook request is
	// received") accept.
	WebhookTeams WebhookFormat = "teams"
	// WebhookTemplate posts what Webhook.Template renders from a
	// WebhookPayload: any JSON shape (PagerDuty Events v2, Chime, ...).
	WebhookTemplate WebhookFormat = "template"
)

// ParseWebhookFormat parses a flag value.
func ParseWebhookFormat(s string) (WebhookFormat, error) {
	switch f := WebhookFormat(s); f {
	case WebhookJSON, WebhookSlack, WebhookTeams, WebhookTemplate:
		return f, nil
	}
	return "", fmt.Errorf("unknown webhook format %q: want json, slack, teams or template", s)
}

// Webhook configures the notification sent when a notice arrives, or when
// another tool starts taking the node away (ForeignAction).
type Webhook struct {
	// URL receives a POST per notice and per tool taking the node; empty
	// (and no URLFile) sends nothing.
	URL string
	// URLFile, if set, holds the URL instead (a mounted Secret, so that the
	// URL is in no command line); it is read at every notice, so a rotated
	// Secret takes effect without a restart.
	URLFile string
	// Format is the body's format. Default WebhookJSON.
	Format WebhookFormat
	// Template renders the body for WebhookTemplate; see
	// ParseWebhookTemplate.
	Template *BodyTemplate
	// Header holds extra request headers (Authorization, a routing key).
	Header http.Header
	// Timeout bounds one request. Default 5s.
	Timeout time.Duration
	// Attempts is how many requests are sent at most: a request that gets
	// no answer, a 408, a 429 or a 5xx is retried with backoff while the
	// notice's deadline is ahead. Default 5.
	Attempts int
	// Backoff is the pause before the second attempt, doubled for each
	// later one (up to 30s); a Retry-After header replaces it. Default 1s.
	Backoff time.Duration
	// Client sends the request. Default http.DefaultClient.
	Client *http.Client
}

// Enabled says whether notices are posted anywhere.
func (w Webhook) Enabled() bool { return w.URL != "" || w.URLFile != "" }

// WebhookPayload is the JSON body of a WebhookJSON notification and the
// data of the templates.
type WebhookPayload struct {
	Node      string    `json:"node"`
	Source    string    `json:"source"`
	Kind      string    `json:"kind"`
	State     string    `json:"state"`
	ID        string    `json:"id"`
	Action    string    `json:"action"`
	Detected  time.Time `json:"detected"`
	Deadline  time.Time `json:"deadline,omitzero"`
	Remaining float64   `json:"remaining_seconds"`
	Pods      []string  `json:"pods"`
}

// ForeignAction is the Action of the webhook sent when another tool
// (Source ForeignSource, Kind the tool) takes the node away: lastcall tells
// the workers to finish, and neither cordons nor evicts for it. Deadline is
// then a notice of lastcall's own that also holds, or none (omitted from the
// JSON, Remaining 0).
const ForeignAction = "notify"

// The built-in templates of WebhookSlack and WebhookTeams.
const (
	slackTemplate = `{{ if eq .Source "node" }}{"text": {{ json (printf ":warning: node %s: %s is taking the node away (%s); lastcall told the workers of %d pods to finish" .Node .Kind .ID (len .Pods)) }}}` +
		`{{ else }}{"text": {{ json (printf ":warning: node %s: %s notice from %s, goes away at %s (in %.0fs); lastcall will %s %d pods" .Node .Kind .Source (rfc3339 .Deadline) .Remaining .Action (len .Pods)) }}}{{ end }}`
	teamsTemplate = `{"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": {
  "$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard", "version": "1.4",
  "body": [
    {"type": "TextBlock", "size": "Medium", "weight": "Bolder", "color": "Attention", "wrap": true,
     "text": {{ if eq .Source "node" }}{{ json (printf "Node %s: %s is taking it away" .Node .Kind) }}{{ else }}{{ json (printf "Node %s goes away in %.0fs" .Node .Remaining) }}{{ end }}},
    {"type": "FactSet", "facts": [
      {"title": "Notice", "value": {{ json (printf "%s from %s (%s)" .Kind .Source .ID) }}},
      {"title": "Deadline", "value": {{ if eq .Source "node" }}"none"{{ else }}{{ json (rfc3339 .Deadline) }}{{ end }}},
      {"title": "Action", "value": {{ if eq .Source "node" }}{{ json (printf "workers of %d pods told to finish; lastcall neither cordons nor evicts" (len .Pods)) }}{{ else }}{{ json (printf "%s %d pods" .Action (len .Pods)) }}{{ end }}}]}]}}]}`
)

// Body renders the request body for p in w's format.
func (w Webhook) Body(p WebhookPayload) ([]byte, error) {
	t := w.Template
	switch w.Format {
	case WebhookJSON, "":
		return json.Marshal(p)
	case WebhookSlack, WebhookTeams:
		text := slackTemplate
		if w.Format == WebhookTeams {
			text = teamsTemplate
		}
		var err error
		if t, err = ParseWebhookTemplate(text); err != nil {
			return nil, err
		}
	case WebhookTemplate:
		if t == nil {
			return nil, errors.New("webhook format template without a template")
		}
	default:
		return nil, fmt.Errorf("unknown webhook format %q", w.Format)
	}
	body, err := t.Execute(p)
	if err != nil {
		return nil, fmt.Errorf("render webhook body: %w", err)
	}
	return body, nil
}

// url returns the URL to post to: the file's content, trimmed, or URL.
func (w Webhook) url() (string, error) {
	if w.URLFile == "" {
		return w.URL, nil
	}
	raw, err := os.ReadFile(w.URLFile)
	if err != nil {
		return "", fmt.Errorf("webhook URL: %w", err)
	}
	u := strings.TrimSpace(string(raw))
	if u == "" {
		return "", fmt.Errorf("webhook URL: %s is empty", w.URLFile)
	}
	return u, nil
}

// Post sends body, retrying as Webhook.Attempts says until ctx is done. It
// reports the attempts made (after each failed one that is retried, retried
// is called) and the last error.
func (w Webhook) Post(ctx context.Context, body []byte, retried func(attempt int, err error)) (attempts int, err error) {
	timeout, tries, pause := w.Timeout, w.Attempts, w.Backoff
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	if tries <= 0 {
		tries = 5
	}
	if pause <= 0 {
		pause = time.Second
	}
	client := w.Client
	if client == nil {
		client = http.DefaultClient
	}
	for attempts = 1; ; attempts++ {
		var wait time.Duration
		wait, err = w.post(ctx, client, timeout, body)
		if err == nil || wait < 0 || attempts >= tries || ctx.Err() != nil {
			return attempts, err
		}
		if wait == 0 {
			wait = pause
		}
		if retried != nil {
			retried(attempts, err)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return attempts, fmt.Errorf("%w (then: %w)", err, context.Cause(ctx))
		case <-t.C:
		}
		pause = min(2*pause, 30*time.Second)
	}
}

// post sends one request. wait < 0 says that a retry cannot help; wait > 0
// is the server's Retry-After.
func (w Webhook) post(ctx context.Context, client *http.Client, timeout time.Duration, body []byte) (wait time.Duration, err error) {
	u, err := w.url()
	if err != nil {
		return 0, err // the Secret may be mounted late: worth another try
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return -1, fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, vs := range w.Header {
		req.Header.Del(k)
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		// The URL may be a credential: say where, not what.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return 0, fmt.Errorf("webhook POST to %s: %w", req.URL.Host, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch code := resp.StatusCode; {
	case code/100 == 2:
		return 0, nil
	case code == http.StatusRequestTimeout || code == http.StatusTooManyRequests || code/100 == 5:
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			wait = time.Duration(s) * time.Second
		}
		return wait, &StatusError{Code: code}
	default:
		return -1, &StatusError{Code: code}
	}
}

// StatusError is a webhook answer other than 2xx.
type StatusError struct {
	// Code is the HTTP status code.
	Code int
}

func (e *StatusError) Error() string { return fmt.Sprintf("webhook answered %d", e.Code) }

// foreignRetries bounds the retries of a foreign drain's webhook, which has
// no deadline of its own to stop at.
const foreignRetries = 2 * time.Minute

// sendWebhook posts notice n, retrying until its deadline.
func (a *Agent) sendWebhook(ctx context.Context, log *slog.Logger, n watcher.Notice, action Action) {
	a.postWebhook(ctx, log, WebhookPayload{
		Node: a.cfg.Node, Source: string(n.Source), Kind: string(n.Kind), State: string(n.State), ID: n.ID,
		Action: string(action), Detected: n.Detected, Deadline: n.Deadline,
		Remaining: n.Deadline.Sub(a.Now()).Seconds(),
	}, n.Deadline)
}

// sendForeignWebhook posts that tool l is taking the node away, seen as f;
// deadline is that of a notice of lastcall's own that also holds, or zero.
// Retries stop at that deadline, or foreignRetries after now.
func (a *Agent) sendForeignWebhook(ctx context.Context, log *slog.Logger, f Foreign, l ForeignLabel, deadline time.Time) {
	now := a.Now()
	detected := f.Since
	if detected.IsZero() {
		detected = now
	}
	p := WebhookPayload{
		Node: a.cfg.Node, Source: l.Source, Kind: l.Reason, State: "active", ID: ForeignSource + ":" + f.Signal,
		Action: ForeignAction, Detected: detected, Deadline: deadline,
	}
	until := now.Add(foreignRetries)
	if !deadline.IsZero() {
		p.Remaining, until = deadline.Sub(now).Seconds(), deadline
	}
	a.postWebhook(ctx, log, p, until)
}

// postWebhook posts p with the node's pods, retrying until until.
func (a *Agent) postWebhook(ctx context.Context, log *slog.Logger, p WebhookPayload, until time.Time) {
	w := a.cfg.Webhook
	if list, err := a.Pods.ListPods(ctx, a.cfg.Node); err == nil {
		for _, pod := range list {
			p.Pods = append(p.Pods, pod.Namespace+"/"+pod.Name)
		}
	}
	body, err := w.Body(p)
	if err != nil {
		log.Error("webhook body", "err", err)
		a.Metrics.webhook("error")
		return
	}
	// Retries stop at the deadline: after it, the news is stale.
	if until.After(a.Now()) {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, until)
		defer cancel()
	}
	attempts, err := w.Post(ctx, body, func(attempt int, err error) {
		log.Warn("webhook failed, retrying", "attempt", attempt, "err", err)
		a.Metrics.webhook("retried")
	})
	var status *StatusError
	switch {
	case err == nil:
		log.Info("webhook sent", "attempts", attempts)
		a.Metrics.webhook("sent")
	case errors.As(err, &status):
		log.Error("webhook refused", "status", status.Code, "attempts", attempts)
		a.Metrics.webhook("refused")
	default:
		log.Error("webhook failed", "err", err, "attempts", attempts)
		a.Metrics.webhook("error")
	}
}
