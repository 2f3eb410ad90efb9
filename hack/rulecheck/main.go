// Command rulecheck checks Prometheus rule files and Grafana dashboards
// with Prometheus's own parsers, as `promtool check rules` does, without
// building promtool and its service discovery: rules are parsed and
// validated by model/rulefmt (expressions, durations, label names, the Go
// templates of annotations), dashboard queries by promql/parser. It prints,
// as JSON, the metric names each expression selects and each alert's `for`,
// labels and annotations.
//
// Usage:
//
//	rulecheck [-conventions] [-rules FILE]... [-dashboard FILE]...
//
// A rules file holds rule groups (`groups:`), in YAML or JSON. It exits 1,
// with the errors on standard error, when a file does not parse, or, with
// -conventions, when an alert breaks the kube-prometheus mixin's
// conventions: every alert has a `for:` of at least a minute, a severity
// label of critical, warning or info, and a runbook_url annotation that is
// an absolute http(s) URL.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// files collects a repeated flag.
type files []string

func (f *files) String() string     { return strings.Join(*f, ",") }
func (f *files) Set(v string) error { *f = append(*f, v); return nil }

// Report is rulecheck's output.
type Report struct {
	// Rules counts the rules parsed.
	Rules int `json:"rules"`
	// Queries counts the dashboard queries parsed.
	Queries int `json:"queries"`
	// Metrics maps each metric name selected to where: the alert or record
	// name, or the dashboard panel's title.
	Metrics map[string][]string `json:"metrics"`
	// Alerts are the alerting rules, in order.
	Alerts []Alert `json:"alerts"`
}

// Alert is what rulefmt parsed of one alerting rule.
type Alert struct {
	Name string `json:"name"`
	// For is the rule's `for`, as Prometheus prints a duration ("0s" when
	// there is none).
	For         string            `json:"for"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

// severities are the mixin's severity values.
var severities = []string{"critical", "warning", "info"}

// conventions returns what a breaks of the kube-prometheus mixin's
// conventions.
func conventions(a Alert, forDur model.Duration) []error {
	var errs []error
	if time.Duration(forDur) < time.Minute {
		errs = append(errs, fmt.Errorf("alert %s: for %s: want at least 1m, so that one scrape does not page", a.Name, a.For))
	}
	if !slices.Contains(severities, a.Labels["severity"]) {
		errs = append(errs, fmt.Errorf("alert %s: severity %q: want one of %v", a.Name, a.Labels["severity"], severities))
	}
	if u, err := url.Parse(a.Annotations["runbook_url"]); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		errs = append(errs, fmt.Errorf("alert %s: runbook_url %q: want an absolute http(s) URL", a.Name, a.Annotations["runbook_url"]))
	}
	return errs
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	var rules, dashboards files
	fs := flag.NewFlagSet("rulecheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	mixin := fs.Bool("conventions", false, "refuse alerts without a for of at least 1m, a severity of critical, warning or info, or a runbook_url")
	fs.Var(&rules, "rules", "a rule groups file (repeatable)")
	fs.Var(&dashboards, "dashboard", "a Grafana dashboard JSON file (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	p := parser.NewParser(parser.Options{})
	rep := Report{Metrics: map[string][]string{}}
	var errs []error
	for _, f := range rules {
		errs = append(errs, checkRules(p, f, *mixin, &rep)...)
	}
	for _, f := range dashboards {
		errs = append(errs, checkDashboard(p, f, &rep)...)
	}
	if len(errs) > 0 {
		fmt.Fprintln(stderr, errors.Join(errs...))
		return 1
	}
	out, _ := json.MarshalIndent(rep, "", "  ")
	fmt.Fprintln(stdout, string(out))
	return 0
}

func checkRules(p parser.Parser, file string, mixin bool, rep *Report) []error {
	groups, errs := rulefmt.ParseFile(file, false, model.UTF8Validation, p, slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		return errs
	}
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			name := r.Alert
			if name == "" {
				name = r.Record
			}
			expr, err := p.ParseExpr(r.Expr)
			if err != nil {
				return []error{fmt.Errorf("%s: %s: %w", file, name, err)}
			}
			rep.Rules++
			selected(expr, name, rep)
			if r.Alert == "" {
				continue
			}
			a := Alert{Name: r.Alert, For: r.For.String(), Labels: r.Labels, Annotations: r.Annotations}
			rep.Alerts = append(rep.Alerts, a)
			if mixin {
				errs = append(errs, conventions(a, r.For)...)
			}
		}
	}
	return errs
}

// dashboard is the part of a Grafana dashboard that holds queries.
type dashboard struct {
	Panels []panel `json:"panels"`
}

type panel struct {
	Title   string  `json:"title"`
	Panels  []panel `json:"panels"` // rows
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

// grafanaVars are Grafana's variables, replaced by what PromQL accepts.
var grafanaVars = regexp.MustCompile(`\$\{?__(rate_interval|interval|range)\}?`)

func checkDashboard(p parser.Parser, file string, rep *Report) []error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return []error{err}
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		return []error{fmt.Errorf("%s: %w", file, err)}
	}
	var errs []error
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, pn := range ps {
			walk(pn.Panels)
			for _, t := range pn.Targets {
				expr, err := p.ParseExpr(grafanaVars.ReplaceAllString(t.Expr, "5m"))
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: panel %q: %q: %w", file, pn.Title, t.Expr, err))
					continue
				}
				rep.Queries++
				selected(expr, "panel "+pn.Title, rep)
			}
		}
	}
	walk(d.Panels)
	return errs
}

// selected records the metric names expr selects.
func selected(expr parser.Expr, where string, rep *Report) {
	parser.Inspect(expr, func(n parser.Node, _ []parser.Node) error {
		if vs, ok := n.(*parser.VectorSelector); ok && vs.Name != "" && !slices.Contains(rep.Metrics[vs.Name], where) {
			rep.Metrics[vs.Name] = append(rep.Metrics[vs.Name], where)
		}
		return nil
	})
}
