package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	downward := map[string]string{
		"POD_NAME": "w-1", "POD_NAMESPACE": "jobs", "POD_IP": "10.1.2.3", "HOST_IP": "10.0.0.5",
	}
	tests := []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
		check   func(t *testing.T, o *options)
	}{
		{"downward API only", nil, downward, "", func(t *testing.T, o *options) {
			c := o.cfg
			if c.Name != "w-1" || c.Namespace != "jobs" || c.PodIP != "10.1.2.3" || c.Agent != "http://10.0.0.5:10574" ||
				c.Listen != "127.0.0.1:10575" || c.PrestopTimeout != 25*time.Second || c.Signal != nil {
				t.Errorf("config %+v", c)
			}
		}},
		{"IPv6 host", nil, map[string]string{"POD_NAME": "a", "POD_NAMESPACE": "b", "HOST_IP": "fd00::5"}, "", func(t *testing.T, o *options) {
			if o.cfg.Agent != "http://[fd00::5]:10574" {
				t.Errorf("agent %q", o.cfg.Agent)
			}
		}},
		{"flags win", []string{"--agent", "http://127.0.0.1:7000", "--signal", "SIGTSTP", "--signal-process", "sidekiq", "--dir", "/lastcall", "--prestop-timeout", "50s"}, downward, "", func(t *testing.T, o *options) {
			c := o.cfg
			if c.Agent != "http://127.0.0.1:7000" || c.Signal != syscall.SIGTSTP || c.SignalProcess != "sidekiq" || c.Dir != "/lastcall" || c.PrestopTimeout != 50*time.Second {
				t.Errorf("config %+v", c)
			}
		}},
		{"env settings", nil, merge(downward, map[string]string{"LASTCALL_SIGNAL": "usr1", "LASTCALL_SIGNAL_PROCESS": "w", "LASTCALL_PRESTOP_TIMEOUT": "5s"}), "", func(t *testing.T, o *options) {
			if o.cfg.Signal != syscall.SIGUSR1 || o.cfg.PrestopTimeout != 5*time.Second {
				t.Errorf("config %+v", o.cfg)
			}
		}},
		{"no pod", nil, map[string]string{"HOST_IP": "10.0.0.5"}, "no pod name", nil},
		{"no agent", nil, map[string]string{"POD_NAME": "a", "POD_NAMESPACE": "b"}, "no agent address", nil},
		{"signal without process", []string{"--signal", "TSTP"}, downward, "needs --signal-process", nil},
		{"bad signal", []string{"--signal", "KILLME", "--signal-process", "x"}, downward, "unknown signal", nil},
		{"bad env duration", nil, merge(downward, map[string]string{"LASTCALL_PRESTOP_TIMEOUT": "soon"}), "LASTCALL_PRESTOP_TIMEOUT", nil},
		{"extra argument", []string{"run"}, downward, "unexpected arguments", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseFlags(tt.args, func(k string) string { return tt.env[k] }, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, o)
		})
	}
}

func merge(a, b map[string]string) map[string]string {
	m := map[string]string{}
	for k, v := range a {
		m[k] = v
	}
	for k, v := range b {
		m[k] = v
	}
	return m
}

func TestMainUsage(t *testing.T) {
	var out strings.Builder
	if code := Main([]string{"--help"}, func(string) string { return "" }, &out); code != 0 || !strings.Contains(out.String(), "sidecar prestop") {
		t.Errorf("--help: %d %q", code, out.String())
	}
	if code := Main([]string{"prestop", "--addr", "127.0.0.1:1", "--timeout", "1s"}, func(string) string { return "" }, io.Discard); code != 1 {
		t.Errorf("prestop without a sidecar: exit %d, want 1", code)
	}
}

// TestProbe: the startup probe passes once the workers' API answers
// /healthz, and fails while nothing listens or it answers an error.
func TestProbe(t *testing.T) {
	var code atomic.Int32
	code.Store(http.StatusServiceUnavailable)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(int(code.Load()))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	env := func(string) string { return "" }
	if got := Main([]string{"probe", "--addr", "127.0.0.1:1"}, env, io.Discard); got != 1 {
		t.Errorf("nothing listening: exit %d, want 1", got)
	}
	if got := Main([]string{"probe", "--addr", addr}, env, io.Discard); got != 1 {
		t.Errorf("503: exit %d, want 1", got)
	}
	code.Store(http.StatusOK)
	if got := Main([]string{"probe", "--addr", addr}, env, io.Discard); got != 0 {
		t.Errorf("200: exit %d, want 0", got)
	}
	if got := Main([]string{"probe"}, func(k string) string {
		if k == "LASTCALL_LISTEN" {
			return addr
		}
		return ""
	}, io.Discard); got != 0 {
		t.Errorf("address from LASTCALL_LISTEN: exit %d, want 0", got)
	}
}
