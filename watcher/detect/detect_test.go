package detect

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/lastcall-dev/lastcall/watcher"
	"github.com/lastcall-dev/lastcall/watcher/azure"
	"github.com/lastcall-dev/lastcall/watcher/gce"
	"github.com/lastcall-dev/lastcall/watcher/sim"
)

// fakes that answer like each cloud's metadata service, and like none.
var (
	gceFake = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Metadata-Flavor", "Google")
		if r.Header.Get("Metadata-Flavor") != "Google" {
			http.Error(w, "", http.StatusForbidden)
			return
		}
		if r.URL.Path == "/computeMetadata/v1/instance/id" {
			fmt.Fprint(w, "4520031799277581759")
			return
		}
		http.NotFound(w, r)
	})
	awsFake = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" && r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds") != "" {
			w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
			fmt.Fprint(w, "AQAEAA==")
			return
		}
		http.NotFound(w, r)
	})
	azureFake = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Metadata") != "true" {
			http.Error(w, `{"error": "Bad request"}`, http.StatusBadRequest)
			return
		}
		if r.URL.Path == "/metadata/instance/compute/vmId" {
			fmt.Fprint(w, "02aab8a4-74ef-476e-8182-f6d2ba4166a6")
			return
		}
		http.NotFound(w, r)
	})
	// okToAll answers 200 "ok" to anything: not a metadata service.
	okToAll = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ok") })
)

func serve(t *testing.T, h http.Handler) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

// closedURL returns the URL of a loopback port nothing listens on.
func closedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	ln.Close()
	return u
}

func TestCloud(t *testing.T) {
	for _, tc := range []struct {
		name       string
		gce        http.Handler
		aws, azure http.Handler
		want       watcher.Source
	}{
		{"gce", gceFake, nil, nil, watcher.SourceGCE},
		{"aws", nil, awsFake, nil, watcher.SourceAWS},
		{"azure", nil, nil, azureFake, watcher.SourceAzure},
		{"every probe at a cloud that is not its own", azureFake, gceFake, awsFake, ""},
		{"a server that says ok to everything", okToAll, okToAll, okToAll, ""},
		{"nothing listening", nil, nil, nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := func(h http.Handler) string {
				if h == nil {
					return closedURL(t)
				}
				return serve(t, h)
			}
			p := Probes{GCEHost: strings.TrimPrefix(url(tc.gce), "http://"), AWSEndpoint: url(tc.aws), AzureEndpoint: url(tc.azure)}
			got, err := Cloud(t.Context(), p)
			if tc.want == "" {
				if !errors.Is(err, ErrNoCloud) {
					t.Fatalf("got %q, %v; want ErrNoCloud", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %s", got, err, tc.want)
			}
		})
	}
}

// TestCloudSlowService: a metadata address that accepts but never answers
// costs the detection budget, not more.
func TestCloudSlowService(t *testing.T) {
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	slow := serve(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-block:
		case <-r.Context().Done():
		}
	}))
	_, err := Cloud(t.Context(), Probes{GCEHost: strings.TrimPrefix(slow, "http://"), AWSEndpoint: slow, AzureEndpoint: slow, Timeout: 200 * time.Millisecond})
	if !errors.Is(err, ErrNoCloud) {
		t.Fatalf("got %v", err)
	}
}

func TestNew(t *testing.T) {
	p := Probes{GCEHost: strings.TrimPrefix(closedURL(t), "http://"), AWSEndpoint: closedURL(t), AzureEndpoint: serve(t, azureFake)}
	w, src, err := New(t.Context(), Config{Probes: p})
	if err != nil || src != watcher.SourceAzure {
		t.Fatalf("got %q, %v", src, err)
	}
	if _, ok := w.(*azure.Watcher); !ok {
		t.Fatalf("got %T", w)
	}
	// The agent reaches Acknowledge through an interface it declares.
	if _, ok := w.(interface {
		Acknowledge(ctx context.Context, eventID string) error
	}); !ok {
		t.Fatal("azure watcher without Acknowledge")
	}

	w, src, err = New(t.Context(), Config{Cloud: watcher.SourceGCE})
	if err != nil || src != watcher.SourceGCE {
		t.Fatalf("forced gce: %q, %v", src, err)
	}
	if _, ok := w.(*gce.Watcher); !ok {
		t.Fatalf("got %T", w)
	}

	w, src, err = New(t.Context(), Config{Cloud: watcher.SourceSim, Sim: sim.Options{Addr: "127.0.0.1:0"}})
	if err != nil || src != watcher.SourceSim {
		t.Fatalf("sim: %q, %v", src, err)
	}
	if _, ok := w.(*sim.Watcher); !ok {
		t.Fatalf("got %T", w)
	}

	none := Probes{GCEHost: strings.TrimPrefix(closedURL(t), "http://"), AWSEndpoint: closedURL(t), AzureEndpoint: closedURL(t)}
	if _, _, err := New(t.Context(), Config{Probes: none}); !errors.Is(err, ErrNoCloud) {
		t.Fatalf("no cloud: %v", err)
	}
	if _, _, err := New(t.Context(), Config{Cloud: "openstack"}); err == nil {
		t.Fatal("unknown cloud accepted")
	}
}
