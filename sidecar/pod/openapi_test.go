package pod

import (
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/lastcall-dev/lastcall/sidecar/wire"
)

// specPath is the workers' API as a specification.
const specPath = "../openapi.yaml"

// apiSpec is the part of an OpenAPI 3 document the test reads.
type apiSpec struct {
	OpenAPI    string                             `json:"openapi"`
	Paths      map[string]map[string]apiOperation `json:"paths"`
	Components struct {
		Schemas map[string]*schema `json:"schemas"`
	} `json:"components"`
}

type apiOperation struct {
	Parameters []struct {
		Name           string   `json:"name"`
		In             string   `json:"in"`
		MaxWaitSeconds *float64 `json:"x-max-wait-seconds"`
		Schema         *schema  `json:"schema"`
	} `json:"parameters"`
	Responses map[string]struct {
		Content map[string]struct {
			Schema *schema `json:"schema"`
		} `json:"content"`
	} `json:"responses"`
}

// schema is the subset of JSON Schema the document uses.
type schema struct {
	Ref                  string             `json:"$ref"`
	Type                 string             `json:"type"`
	Enum                 []any              `json:"enum"`
	Pattern              string             `json:"pattern"`
	Description          string             `json:"description"`
	Minimum              *float64           `json:"minimum"`
	Required             []string           `json:"required"`
	Properties           map[string]*schema `json:"properties"`
	AdditionalProperties *bool              `json:"additionalProperties"`
}

func loadSpec(t *testing.T) *apiSpec {
	t.Helper()
	b, err := os.ReadFile(specPath)
	if err != nil {
		t.Fatal(err)
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		t.Fatalf("%s: %v", specPath, err)
	}
	var spec apiSpec
	if err := json.Unmarshal(j, &spec); err != nil {
		t.Fatalf("%s: %v", specPath, err)
	}
	if !strings.HasPrefix(spec.OpenAPI, "3.") {
		t.Fatalf("%s: openapi %q, want 3.x", specPath, spec.OpenAPI)
	}
	return &spec
}

func (sp *apiSpec) resolve(s *schema) *schema {
	if s != nil && s.Ref != "" {
		return sp.Components.Schemas[strings.TrimPrefix(s.Ref, "#/components/schemas/")]
	}
	return s
}

// validate returns how v breaks s.
func (sp *apiSpec) validate(s *schema, v any, at string) []string {
	s = sp.resolve(s)
	if s == nil {
		return []string{at + ": no schema"}
	}
	var errs []string
	bad := func(format string, args ...any) { errs = append(errs, at+": "+fmt.Sprintf(format, args...)) }
	if len(s.Enum) > 0 && !slices.ContainsFunc(s.Enum, func(e any) bool { return reflect.DeepEqual(e, v) }) {
		bad("%v is not one of %v", v, s.Enum)
	}
	switch s.Type {
	case "object":
		m, ok := v.(map[string]any)
		if !ok {
			bad("%v is not an object", v)
			return errs
		}
		for _, r := range s.Required {
			if _, ok := m[r]; !ok {
				bad("%s missing", r)
			}
		}
		for k, pv := range m {
			ps, ok := s.Properties[k]
			if !ok {
				if s.AdditionalProperties != nil && !*s.AdditionalProperties {
					bad("%s is not in the schema", k)
				}
				continue
			}
			errs = append(errs, sp.validate(ps, pv, at+"."+k)...)
		}
	case "string":
		str, ok := v.(string)
		if !ok {
			bad("%v is not a string", v)
		} else if s.Pattern != "" && !regexp.MustCompile(s.Pattern).MatchString(str) {
			bad("%q does not match %s", str, s.Pattern)
		}
	case "integer", "number":
		n, ok := v.(float64)
		if !ok {
			bad("%v is not a number", v)
		} else {
			if s.Type == "integer" && n != float64(int64(n)) {
				bad("%v is not an integer", v)
			}
			if s.Minimum != nil && n < *s.Minimum {
				bad("%v is below %v", n, *s.Minimum)
			}
		}
	case "boolean":
		if _, ok := v.(bool); !ok {
			bad("%v is not a boolean", v)
		}
	default:
		bad("type %q not understood by this test", s.Type)
	}
	return errs
}

// TestOpenAPIRoutes checks that the document and the server have the same
// operations.
func TestOpenAPIRoutes(t *testing.T) {
	spec := loadSpec(t)
	var documented, served []string
	for path, ops := range spec.Paths {
		for method := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path)
		}
	}
	s := newTestSidecar(t, "")
	for _, r := range s.routes() {
		served = append(served, r.method+" "+r.path)
	}
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Errorf("documented %v; served %v", documented, served)
	}
}

// TestOpenAPISchema checks the State schema against wire.State and the
// values the agent and the sidecar produce: fields, required fields,
// phases, reasons (the watcher's notice kinds and pod-terminating),
// sources, and the long-poll cap.
func TestOpenAPISchema(t *testing.T) {
	spec := loadSpec(t)
	st := spec.Components.Schemas["State"]
	if st == nil {
		t.Fatal("no State schema")
	}
	var fields, required []string
	typ := reflect.TypeFor[wire.State]()
	for i := range typ.NumField() {
		name, opts, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		fields = append(fields, name)
		if !strings.Contains(opts, "omit") {
			required = append(required, name)
		}
	}
	var props []string
	for p := range st.Properties {
		props = append(props, p)
	}
	for _, l := range [][]string{fields, required, props, st.Required} {
		slices.Sort(l)
	}
	if !slices.Equal(fields, props) {
		t.Errorf("wire.State has %v; the schema %v", fields, props)
	}
	if !slices.Equal(required, st.Required) {
		t.Errorf("wire.State always has %v; the schema requires %v", required, st.Required)
	}

	enum := func(prop string) []string {
		var out []string
		for _, v := range st.Properties[prop].Enum {
			out = append(out, fmt.Sprint(v))
		}
		slices.Sort(out)
		return out
	}
	phases := []string{string(wire.PhaseDraining), string(wire.PhaseRunning), string(wire.PhaseUnknown)}
	if got := enum("phase"); !slices.Equal(got, phases) {
		t.Errorf("phases: documented %v, want %v", got, phases)
	}
	// Reasons are open (an operator names the tool of a taint of their
	// own): each known one must match the pattern and be named.
	reason := st.Properties["reason"]
	reasons := append(watcherConsts(t, "Kind"), wire.ReasonPodTerminating)
	reasons = append(reasons, foreignConsts(t)...)
	for _, r := range reasons {
		if !regexp.MustCompile(reason.Pattern).MatchString(r) || !strings.Contains(reason.Description, r) {
			t.Errorf("reason %q: not named in the reason's description, or not matching its pattern %s", r, reason.Pattern)
		}
	}
	sources := append(watcherConsts(t, "Source"), foreignSource(t))
	slices.Sort(sources)
	if got := enum("source"); !slices.Equal(got, sources) {
		t.Errorf("sources: documented %v; the watcher's and a foreign drain's are %v", got, sources)
	}

	var maxWait *float64
	for _, p := range spec.Paths["/v1/state"]["get"].Parameters {
		if p.Name == "wait" {
			maxWait = p.MaxWaitSeconds
		}
	}
	if maxWait == nil || *maxWait != wire.MaxWait.Seconds() {
		t.Errorf("documented long-poll cap %v s, the server's %v s", maxWait, wire.MaxWait.Seconds())
	}
}

// foreignConsts returns the foreign sources package agent names, read from
// its source (agent/foreign.go: the string constants Foreign*, but
// ForeignSource): the reasons of drains another tool started.
func foreignConsts(t *testing.T) []string {
	t.Helper()
	var out []string
	for name, v := range agentConsts(t) {
		if strings.HasPrefix(name, "Foreign") && name != "ForeignSource" {
			out = append(out, v)
		}
	}
	if len(out) < 5 {
		t.Fatalf("foreign sources in agent/foreign.go: %v", out)
	}
	slices.Sort(out)
	return out
}

// foreignSource returns agent.ForeignSource, read from its source.
func foreignSource(t *testing.T) string {
	t.Helper()
	v, ok := agentConsts(t)["ForeignSource"]
	if !ok {
		t.Fatal("no ForeignSource in agent/foreign.go")
	}
	return v
}

// agentConsts returns agent/foreign.go's string constants by name.
func agentConsts(t *testing.T) map[string]string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "../../agent/foreign.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, sp := range g.Specs {
			vs := sp.(*ast.ValueSpec)
			for i, v := range vs.Values {
				if lit, ok := v.(*ast.BasicLit); ok && lit.Kind == token.STRING {
					out[vs.Names[i].Name], _ = strconv.Unquote(lit.Value)
				}
			}
		}
	}
	return out
}

// watcherConsts returns the values of the constants of type typ in package
// watcher, read from its source so that a new kind cannot go undocumented.
func watcherConsts(t *testing.T, typ string) []string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "../../watcher/notice.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, sp := range g.Specs {
			vs := sp.(*ast.ValueSpec)
			if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != typ {
				continue
			}
			for _, v := range vs.Values {
				if lit, ok := v.(*ast.BasicLit); ok {
					s, _ := strconv.Unquote(lit.Value)
					out = append(out, s)
				}
			}
		}
	}
	if len(out) == 0 {
		t.Fatalf("no watcher constants of type %s", typ)
	}
	slices.Sort(out)
	return out
}

// TestOpenAPIServer calls every operation of a sidecar over HTTP through
// the states a pod goes through, validates every answer against the
// document, and checks that every documented status code was produced and
// no undocumented one was. It also checks what the document says of done:
// idempotent, reset when the agent calls a node drain off, never reset in
// a pod's own drain.
func TestOpenAPIServer(t *testing.T) {
	spec := loadSpec(t)
	s := newTestSidecar(t, "")
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)

	seen := map[string]bool{} // "GET /v1/state 200"
	call := func(method, target, body string, want int) map[string]any {
		t.Helper()
		req, err := http.NewRequestWithContext(t.Context(), method, srv.URL+target, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		path, _, _ := strings.Cut(target, "?")
		key := fmt.Sprintf("%s %s %d", method, path, resp.StatusCode)
		seen[key] = true
		if resp.StatusCode != want {
			t.Errorf("%s %s: %d %q, want %d", method, target, resp.StatusCode, b, want)
		}
		op, ok := spec.Paths[path][strings.ToLower(method)]
		if !ok {
			t.Errorf("%s: not documented", key)
			return nil
		}
		r, ok := op.Responses[strconv.Itoa(resp.StatusCode)]
		if !ok {
			t.Errorf("%s: status not documented", key)
			return nil
		}
		ctype, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
		if len(r.Content) == 0 {
			if len(b) != 0 {
				t.Errorf("%s: body %q, documented none", key, b)
			}
			return nil
		}
		c, ok := r.Content[ctype]
		if !ok {
			t.Errorf("%s: content type %q not documented", key, ctype)
			return nil
		}
		var v any = string(b)
		if ctype == "application/json" {
			if err := json.Unmarshal(b, &v); err != nil {
				t.Errorf("%s: %v", key, err)
				return nil
			}
		}
		for _, e := range spec.validate(c.Schema, v, key) {
			t.Error(e)
		}
		m, _ := v.(map[string]any)
		return m
	}

	call("GET", "/healthz", "", 200)
	if st := call("GET", "/v1/state", "", 200); st["phase"] != "unknown" {
		t.Errorf("fresh sidecar: %v", st)
	}
	s.setNode(wire.NodeState{Generation: 1, Phase: wire.PhaseRunning})
	st := call("GET", "/v1/state", "", 200)
	if st["phase"] != "running" {
		t.Errorf("running: %v", st)
	}
	gen := strconv.FormatFloat(st["generation"].(float64), 'f', -1, 64)
	if again := call("GET", "/v1/state?generation="+gen+"&wait=0.05", "", 200); again["generation"] != st["generation"] {
		t.Errorf("long-poll without a change: %v, want generation %s", again, gen)
	}
	call("GET", "/v1/state?generation=x", "", 400)
	call("GET", "/v1/state?generation=1&wait=soon", "", 400)
	call("GET", "/v1/state?generation=1&wait=-1s", "", 400)

	// Done while running is remembered: the next drain finds the pod done.
	call("POST", "/v1/done", "", 204)
	deadline := time.Now().Add(time.Minute)
	s.setNode(wire.NodeState{Generation: 2, Phase: wire.PhaseDraining, Reason: "spot-interruption", Source: "aws", Deadline: deadline})
	st = call("GET", "/v1/state?generation="+gen+"&wait=30s", "", 200)
	if st["phase"] != "draining" || st["reason"] != "spot-interruption" || st["done"] != true {
		t.Errorf("draining after done while running: %v; want draining and done", st)
	}
	if got, err := time.Parse(time.RFC3339, fmt.Sprint(st["deadline"])); err != nil || got.Sub(deadline).Abs() >= time.Millisecond {
		t.Errorf("deadline %v (%v), want %s", st["deadline"], err, deadline)
	}

	call("POST", "/v1/inflight?count=3", "", 204)
	call("POST", "/v1/inflight", `{"inflight": 2}`, 204)
	call("POST", "/v1/inflight?count=-1", "", 400)
	call("POST", "/v1/inflight?count=two", "", 400)
	call("POST", "/v1/inflight", `{}`, 400)
	call("POST", "/v1/done", "", 204)
	st = call("GET", "/v1/state", "", 200)
	call("POST", "/v1/done", "", 204)
	if again := call("GET", "/v1/state", "", 200); st["done"] != true || st["inflight"] != 2.0 || again["generation"] != st["generation"] {
		t.Errorf("after done twice: %v then %v; want done, inflight 2, and no change the second time", st, again)
	}

	// The agent calls the drain off: done resets.
	s.setNode(wire.NodeState{Generation: 3, Phase: wire.PhaseRunning})
	if st := call("GET", "/v1/state", "", 200); st["phase"] != "running" || st["done"] != false {
		t.Errorf("after the drain was called off: %v; want running, not done", st)
	}

	// Another tool is taking the node away (Karpenter's taint): draining,
	// the reason naming it, and no deadline, so no remaining time either.
	s.setNode(wire.NodeState{Generation: 4, Phase: wire.PhaseDraining, Reason: "karpenter", Source: "node", NoticeID: "node/karpenter/karpenter.sh/disrupted"})
	st = call("GET", "/v1/state", "", 200)
	if st["phase"] != "draining" || st["reason"] != "karpenter" || st["source"] != "node" || st["done"] != false {
		t.Errorf("a drain by another tool: %v; want draining, reason karpenter, source node", st)
	}
	for _, absent := range []string{"deadline", "remaining_seconds"} {
		if v, ok := st[absent]; ok {
			t.Errorf("a drain without a deadline shows %s %v", absent, v)
		}
	}
	// Karpenter keeps the node (its replacement failed): running again.
	s.setNode(wire.NodeState{Generation: 5, Phase: wire.PhaseRunning})
	if st := call("GET", "/v1/state", "", 200); st["phase"] != "running" {
		t.Errorf("after the other tool's drain was called off: %v", st)
	}

	// The pod is deleted: the preStop hook drains and waits.
	call("GET", "/v1/prestop?timeout=soon", "", 400)
	st = call("GET", "/v1/prestop?timeout=0.05", "", 200)
	if st["phase"] != "draining" || st["reason"] != wire.ReasonPodTerminating || st["done"] != false {
		t.Errorf("prestop timed out: %v", st)
	}
	call("POST", "/v1/done", "", 204)
	if st := call("GET", "/v1/prestop", "", 200); st["done"] != true {
		t.Errorf("prestop after done: %v", st)
	}
	s.setNode(wire.NodeState{Generation: 6, Phase: wire.PhaseRunning})
	if st := call("GET", "/v1/state", "", 200); st["phase"] != "draining" || st["done"] != true {
		t.Errorf("a terminating pod after the agent's running: %v; want still draining and done", st)
	}

	var documented []string
	for path, ops := range spec.Paths {
		for method, op := range ops {
			for code := range op.Responses {
				documented = append(documented, fmt.Sprintf("%s %s %s", strings.ToUpper(method), path, code))
			}
		}
	}
	var produced []string
	for k := range seen {
		produced = append(produced, k)
	}
	slices.Sort(documented)
	slices.Sort(produced)
	if !slices.Equal(documented, produced) {
		t.Errorf("documented responses %v;\nproduced %v", documented, produced)
	}
}

// TestOpenAPIWaitCap checks the documented cap of the long-poll: a wait of
// an hour is answered after the cap.
func TestOpenAPIWaitCap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := newTestSidecar(t, "")
		gen := s.State().Generation
		start := time.Now()
		rec := httptest.NewRecorder()
		s.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/v1/state?wait=1h&generation="+itoa(gen), nil))
		if waited := time.Since(start); rec.Code != 200 || waited != wire.MaxWait {
			t.Errorf("answered %d after %s; want 200 after %s", rec.Code, waited, wire.MaxWait)
		}
	})
}
