package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
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
	// compatible chat tools accept.
	WebhookSlack WebhookFormat = "slack"
)

// Webhook configures the notification sent when a notice arrives.
type Webhook struct {
	// URL receives a POST per notice; empty sends nothing.
	URL string
	// Format is the body's format. Default WebhookJSON.
	Format WebhookFormat
	// Timeout bounds one POST. Default 5s.
	Timeout time.Duration
	// Client sends the request. Default http.DefaultClient.
	Client *http.Client
}

// WebhookPayload is the JSON body of a WebhookJSON notification.
type WebhookPayload struct {
	Node      string    `json:"node"`
	Source    string    `json:"source"`
	Kind      string    `json:"kind"`
	State     string    `json:"state"`
	ID        string    `json:"id"`
	Action    string    `json:"action"`
	Detected  time.Time `json:"detected"`
	Deadline  time.Time `json:"deadline"`
	Remaining float64   `json:"remaining_seconds"`
	Pods      []string  `json:"pods"`
}

func (a *Agent) sendWebhook(ctx context.Context, log *slog.Logger, n watcher.Notice, action Action) {
	w := a.cfg.Webhook
	timeout := w.Timeout
	if timeout == 0 {
		timeout = 5 * time.Second
	}
	client := w.Client
	if client == nil {
		client = http.DefaultClient
	}
	var pods []string
	if list, err := a.Pods.ListPods(ctx, a.cfg.Node); err == nil {
		for _, p := range list {
			pods = append(pods, p.Namespace+"/"+p.Name)
		}
	}
	payload := WebhookPayload{
		Node: a.cfg.Node, Source: string(n.Source), Kind: string(n.Kind), State: string(n.State), ID: n.ID,
		Action: string(action), Detected: n.Detected, Deadline: n.Deadline,
		Remaining: n.Deadline.Sub(a.Now()).Seconds(), Pods: pods,
	}
	var body any = payload
	if w.Format == WebhookSlack {
		body = map[string]string{"text": fmt.Sprintf(":warning: node %s: %s notice from %s, goes away at %s (in %.0fs); lastcall will %s %d pods",
			payload.Node, payload.Kind, payload.Source, payload.Deadline.UTC().Format(time.RFC3339), payload.Remaining, action, len(pods))}
	}
	raw, err := json.Marshal(body)
	if err != nil {
		log.Error("webhook body", "err", err)
		a.Metrics.webhook("error")
		return
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(raw))
	if err != nil {
		log.Error("webhook request", "err", err)
		a.Metrics.webhook("error")
		return
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		log.Error("webhook failed", "err", err)
		a.Metrics.webhook("error")
		return
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		log.Error("webhook refused", "status", resp.StatusCode)
		a.Metrics.webhook("refused")
		return
	}
	a.Metrics.webhook("sent")
}
