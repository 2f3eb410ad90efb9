package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

// DefaultAddr is where the sidecar serves its workers unless told otherwise.
const DefaultAddr = "127.0.0.1:10575"

// Client talks to the sidecar of the worker's pod. It is safe for
// concurrent use.
type Client struct {
	base *url.URL
	hc   *http.Client
	// Wait is how long one long-poll waits. Default 30s.
	Wait time.Duration
}

// NewClient returns a client of the sidecar at addr ("127.0.0.1:10575" or
// "http://127.0.0.1:10575"; empty: DefaultAddr).
func NewClient(addr string) (*Client, error) {
	if addr == "" {
		addr = DefaultAddr
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return nil, fmt.Errorf("sidecar address: %w", err)
	}
	return &Client{base: u, hc: &http.Client{}, Wait: 30 * time.Second}, nil
}

// State returns the current state at once.
func (c *Client) State(ctx context.Context) (State, error) {
	return c.get(ctx, "/v1/state", "")
}

// Next long-polls: it returns the state once its generation differs from
// gen (at once if it already does), or the unchanged state after c.Wait.
func (c *Client) Next(ctx context.Context, gen uint64) (State, error) {
	ctx, cancel := context.WithTimeout(ctx, c.Wait+10*time.Second)
	defer cancel()
	return c.get(ctx, "/v1/state", wire.PollQuery{Generation: gen, Wait: c.Wait}.Encode())
}

// Watch calls fn with the state, then again after every change, until ctx
// is done; it returns ctx's cause. When the sidecar cannot be reached it
// retries with backoff and calls fn with nothing: the workers keep working
// (fail open).
func (c *Client) Watch(ctx context.Context, fn func(State)) error {
	var gen uint64
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		st, err := c.Next(ctx, gen)
		if err != nil {
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		if st.Generation != gen {
			gen = st.Generation
			fn(st)
		}
	}
	return context.Cause(ctx)
}

// Done tells the sidecar that the pod's workers are done: the agent may
// evict the pod now.
func (c *Client) Done(ctx context.Context) error {
	return c.post(ctx, "/v1/done", nil)
}

// InFlight tells the sidecar how many messages the workers hold.
func (c *Client) InFlight(ctx context.Context, n int) error {
	body, err := json.Marshal(map[string]int{"inflight": n})
	if err != nil {
		return err
	}
	return c.post(ctx, "/v1/inflight", body)
}

func (c *Client) get(ctx context.Context, path, query string) (State, error) {
	u := c.base.JoinPath(path)
	u.RawQuery = query
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return State{}, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return State{}, fmt.Errorf("sidecar state: %w", err)
	}
	defer resp.Body.Close()
	if err := checkStatus(resp); err != nil {
		return State{}, fmt.Errorf("sidecar state: %w", err)
	}
	var st State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return State{}, fmt.Errorf("sidecar state: decode: %w", err)
	}
	return st, nil
}

func (c *Client) post(ctx context.Context, path string, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base.JoinPath(path).String(), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("sidecar %s: %w", path, err)
	}
	defer resp.Body.Close()
	if err := checkStatus(resp); err != nil {
		return fmt.Errorf("sidecar %s: %w", path, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	return nil
}

func checkStatus(resp *http.Response) error {
	if resp.StatusCode/100 == 2 {
		return nil
	}
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(b))
}
