package pod

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

// Handler returns the workers' API, specified in sidecar/openapi.yaml:
//
//	GET  /v1/state?generation=N&wait=30s
//	POST /v1/done
//	POST /v1/inflight?count=N   (or body {"inflight": N})
//	GET  /v1/prestop?timeout=25s
//	GET  /healthz
func (s *Sidecar) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, r := range s.routes() {
		mux.HandleFunc(r.method+" "+r.path, r.handle)
	}
	return mux
}

// route is one operation of the workers' API.
type route struct {
	method, path string
	handle       http.HandlerFunc
}

// routes lists the workers' API; every entry is in sidecar/openapi.yaml
// and the spec's test checks that nothing else is.
func (s *Sidecar) routes() []route {
	return []route{
		{http.MethodGet, "/v1/state", s.serveState},
		{http.MethodPost, "/v1/done", func(w http.ResponseWriter, _ *http.Request) {
			s.SetDone()
			w.WriteHeader(http.StatusNoContent)
		}},
		{http.MethodPost, "/v1/inflight", func(w http.ResponseWriter, r *http.Request) {
			n, err := inflightCount(r)
			if err != nil {
				http.Error(w, "inflight: "+err.Error(), http.StatusBadRequest)
				return
			}
			s.SetInFlight(n)
			w.WriteHeader(http.StatusNoContent)
		}},
		{http.MethodGet, "/v1/prestop", s.servePrestop},
		{http.MethodGet, "/healthz", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			_, _ = w.Write([]byte("ok\n"))
		}},
	}
}

// serveState answers at once, or long-polls when the caller names the
// generation it has.
func (s *Sidecar) serveState(w http.ResponseWriter, r *http.Request) {
	q, err := wire.ParsePollQuery(r.URL.Query().Get)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.URL.Query().Get("generation") == "" {
		q.Wait = 0
	}
	writeJSON(w, s.wait(r.Context(), q.Generation, q.Wait))
}

// servePrestop drains with reason pod-terminating and answers once the
// workers are done or the timeout has passed.
func (s *Sidecar) servePrestop(w http.ResponseWriter, r *http.Request) {
	var timeout time.Duration
	if t := r.URL.Query().Get("timeout"); t != "" {
		d, err := wire.ParseDuration(t)
		if err != nil {
			http.Error(w, "timeout: "+err.Error(), http.StatusBadRequest)
			return
		}
		timeout = d
	}
	s.Terminate(r.Context(), timeout)
	writeJSON(w, s.State())
}

func inflightCount(r *http.Request) (int, error) {
	if c := r.URL.Query().Get("count"); c != "" {
		return parseCount(c)
	}
	var body struct {
		InFlight *int `json:"inflight"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 4096)).Decode(&body); err != nil {
		return 0, err
	}
	if body.InFlight == nil || *body.InFlight < 0 {
		return 0, strconv.ErrRange
	}
	return *body.InFlight, nil
}

func parseCount(c string) (int, error) {
	n, err := strconv.Atoi(c)
	if err != nil {
		return 0, err
	}
	if n < 0 {
		return 0, strconv.ErrRange
	}
	return n, nil
}

func writeJSON(w http.ResponseWriter, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(append(b, '\n'))
}
