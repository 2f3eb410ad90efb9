package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"text/template"
	"time"
)

// goTemplate renders text with Go's text/template and the same functions,
// the reference BodyTemplate must match.
func goTemplate(t *testing.T, text string, p WebhookPayload) string {
	t.Helper()
	funcs := template.FuncMap{
		"json": func(v any) (string, error) {
			raw, err := json.Marshal(v)
			return string(raw), err
		},
		"rfc3339": func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
		"join":    strings.Join,
		"upper":   func(v any) string { return strings.ToUpper(fmt.Sprint(v)) },
		"lower":   func(v any) string { return strings.ToLower(fmt.Sprint(v)) },
	}
	tmpl, err := template.New("t").Option("missingkey=error").Funcs(funcs).Parse(text)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, p); err != nil {
		t.Fatal(err)
	}
	return buf.String()
}

// TestBodyTemplateMatchesTextTemplate renders templates with every
// supported construct through BodyTemplate and through text/template: the
// bodies are the same.
func TestBodyTemplateMatchesTextTemplate(t *testing.T) {
	for _, text := range []string{
		`{"text": {{ json .Node }}, "left": {{ .Remaining }}, "at": {{ json (rfc3339 .Deadline) }}}`,
		`{"pods": [{{ range $i, $p := .Pods }}{{ if $i }}, {{ end }}{{ json $p }}{{ end }}]}`,
		`{"pods": [{{ range .Pods }}{{ json . }},{{ else }}"none",{{ end }} null]}`,
		`{"n": {{ len .Pods }}, "all": {{ join .Pods ";" | json }}, "first": {{ printf "%s/%d" .Kind (len .Pods) | json }}}`,
		`{{/* a comment */}}{"drain": {{ if eq .Action "drain" }}true{{ else }}false{{ end }}, "soon": {{ and .Pods (not (eq .Kind "rebalance")) | json }}}`,
		`{{ with .Node }}{"node": {{ json . }}, "root": {{ json $.Kind }}}{{ end }}`,
		`{{ $n := .Node }}{"a": {{ json $n }}, "b": {{ json (upper .Source) }}, "c": {{ or .State "x" | json }}, "d": {{ ne .ID "y" }}}`,
		`{"detected": {{ json .Detected }}, "remaining": {{ printf "%.0f" .Remaining | json }}}`,
	} {
		for _, p := range []WebhookPayload{testPayload, {Node: "n", Kind: "rebalance", Action: "cordon"}} {
			bt, err := ParseWebhookTemplate(text)
			if err != nil {
				t.Fatalf("%s: %v", text, err)
			}
			got, err := bt.Execute(p)
			if err != nil {
				t.Fatalf("%s: %v", text, err)
			}
			if want := goTemplate(t, text, p); string(got) != want {
				t.Errorf("%s\n got %s\nwant %s", text, got, want)
			}
		}
	}
}

// TestBodyTemplateRefuses: what the evaluator does not do is refused when
// the template is parsed, not when a notice arrives.
func TestBodyTemplateRefuses(t *testing.T) {
	for name, text := range map[string]string{
		"define":         `{{ define "x" }}{}{{ end }}{}`,
		"template":       `{{ template "x" }}`,
		"unknown func":   `{"a": {{ call .Node }}}`,
		"unknown field":  `{"a": {{ json .Nodes }}}`,
		"field of field": `{"a": {{ json .Node.Name }}}`,
		"range a string": `{{ range .Node }}{{ end }}{}`,
		"not JSON":       `node={{ .Node }}`,
		"syntax":         `{"a": {{ .Node }`,
	} {
		if _, err := ParseWebhookTemplate(text); err == nil {
			t.Errorf("%s: %q accepted", name, text)
		}
	}
}
