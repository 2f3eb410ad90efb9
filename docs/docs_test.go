package docs

import (
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/yuin/goldmark"
	"github.com/yuin/goldmark/ast"
	"github.com/yuin/goldmark/extension"
	"github.com/yuin/goldmark/text"
)

// root is the repository's root, from this package's folder.
const root = ".."

// pages returns the Markdown files whose links are checked, relative to
// root: README.md, CHANGELOG.md, every .md under docs/ and the charts'
// READMEs.
func pages(t *testing.T) []string {
	t.Helper()
	out := []string{"README.md", "CHANGELOG.md", "charts/README.md", "charts/lastcall/README.md"}
	err := filepath.WalkDir(filepath.Join(root, "docs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".md") {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// page is what the links of a Markdown file point at and what they may
// point to in it.
type page struct {
	links   []link
	anchors map[string]bool
}

// link is one link's destination and the line it is on.
type link struct {
	dest string
	line int
}

var markdown = goldmark.New(goldmark.WithExtensions(extension.GFM))

// parse reads a Markdown file: its links (inline, reference and autolinks,
// never those in code) and the anchors GitHub gives its headings.
func parse(src []byte) page {
	p := page{anchors: map[string]bool{}}
	doc := markdown.Parser().Parse(text.NewReader(src))
	seen := map[string]int{}
	_ = ast.Walk(doc, func(n ast.Node, entering bool) (ast.WalkStatus, error) {
		if !entering {
			return ast.WalkContinue, nil
		}
		switch n := n.(type) {
		case *ast.Heading:
			slug := anchor(plainText(n, src))
			if k := seen[slug]; k > 0 {
				p.anchors[fmt.Sprintf("%s-%d", slug, k)] = true
			} else {
				p.anchors[slug] = true
			}
			seen[slug]++
		case *ast.Link:
			p.links = append(p.links, link{dest: string(n.Destination), line: lineOf(n, src)})
		case *ast.Image:
			p.links = append(p.links, link{dest: string(n.Destination), line: lineOf(n, src)})
		}
		return ast.WalkContinue, nil
	})
	return p
}

// plainText is the text of n's inline children, code spans included
// without their backticks.
func plainText(n ast.Node, src []byte) string {
	var b strings.Builder
	_ = ast.Walk(n, func(c ast.Node, entering bool) (ast.WalkStatus, error) {
		if !entering {
			return ast.WalkContinue, nil
		}
		switch c := c.(type) {
		case *ast.Text:
			b.Write(c.Segment.Value(src))
		case *ast.String:
			b.Write(c.Value)
		}
		return ast.WalkContinue, nil
	})
	return b.String()
}

// lineOf is the line of the first text under n, or 0.
func lineOf(n ast.Node, src []byte) int {
	line := 0
	_ = ast.Walk(n, func(c ast.Node, entering bool) (ast.WalkStatus, error) {
		if t, ok := c.(*ast.Text); ok && entering {
			line = 1 + strings.Count(string(src[:t.Segment.Start]), "\n")
			return ast.WalkStop, nil
		}
		return ast.WalkContinue, nil
	})
	return line
}

// anchor is the id GitHub gives a heading: lower case, punctuation but
// hyphens and underscores dropped, spaces made hyphens.
func anchor(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r) || unicode.Is(unicode.Mn, r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// external matches destinations with a scheme (https:, mailto:).
var external = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9+.-]*:`)

// TestLinks: every relative link of the pages resolves to a file or folder
// of the repository, and its #fragment, if any, to a heading of the
// Markdown file it names.
func TestLinks(t *testing.T) {
	parsed := map[string]page{}
	read := func(file string) (page, error) {
		if p, ok := parsed[file]; ok {
			return p, nil
		}
		src, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			return page{}, err
		}
		p := parse(src)
		parsed[file] = p
		return p, nil
	}
	checked := 0
	for _, file := range pages(t) {
		p, err := read(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range p.links {
			if l.dest == "" || external.MatchString(l.dest) {
				continue
			}
			checked++
			if err := resolve(file, l.dest, read); err != nil {
				t.Errorf("%s:%d: link %q: %v", file, l.line, l.dest, err)
			}
		}
	}
	t.Logf("%d relative links in %d pages resolve", checked, len(pages(t)))
	if checked < 100 {
		t.Errorf("only %d relative links checked: the pages or the parser are not what this test expects", checked)
	}
}

// resolve checks one relative destination of a link in file.
func resolve(file, dest string, read func(string) (page, error)) error {
	u, err := url.Parse(dest)
	if err != nil {
		return err
	}
	target := file
	if u.Path != "" {
		target = path.Clean(path.Join(path.Dir(file), u.Path))
		if target == ".." || strings.HasPrefix(target, "../") {
			return fmt.Errorf("leaves the repository")
		}
		if _, err := os.Stat(filepath.Join(root, filepath.FromSlash(target))); err != nil {
			return fmt.Errorf("no such file or folder %s", target)
		}
	}
	if u.Fragment == "" {
		return nil
	}
	if !strings.HasSuffix(target, ".md") {
		return fmt.Errorf("a #fragment on %s, which is not a Markdown file", target)
	}
	p, err := read(target)
	if err != nil {
		return err
	}
	if !p.anchors[u.Fragment] {
		return fmt.Errorf("%s has no heading #%s (it has %v)", target, u.Fragment, slices.Sorted(mapsKeys(p.anchors)))
	}
	return nil
}

func mapsKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestChecker shows the checker refuses what it must: a missing file, a
// missing heading, a fragment on a non-Markdown file, a link out of the
// repository; and reads headings and links as GitHub does.
func TestChecker(t *testing.T) {
	src := []byte("# Title\n\n## A fleet: make `fleet`\n\n## Same\n\n## Same\n\n" +
		"[ok](#a-fleet-make-fleet) [dup](#same-1) [here](README.md#install)\n\n" +
		"```sh\n[not a link](nowhere.md)\n```\n\n`[code](nowhere.md)`\n")
	p := parse(src)
	for _, a := range []string{"title", "a-fleet-make-fleet", "same", "same-1"} {
		if !p.anchors[a] {
			t.Errorf("no anchor %q in %v", a, p.anchors)
		}
	}
	var dests []string
	for _, l := range p.links {
		dests = append(dests, l.dest)
	}
	if want := []string{"#a-fleet-make-fleet", "#same-1", "README.md#install"}; !slices.Equal(dests, want) {
		t.Errorf("links %q, want %q (none from code)", dests, want)
	}
	read := func(file string) (page, error) {
		if file == "x.md" {
			return p, nil
		}
		src, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			return page{}, err
		}
		return parse(src), nil
	}
	for dest, ok := range map[string]bool{
		"#same-1":                          true,
		"#nowhere":                         false,
		"README.md#install":                true,
		"README.md#no-such-heading":        false,
		"docs/no-such-page.md":             false,
		"go.mod#module":                    false,
		"../outside.md":                    false,
		"docs/runbooks/":                   true,
		"charts/lastcall/README.md#values": true,
	} {
		if err := resolve("x.md", dest, read); (err == nil) != ok {
			t.Errorf("resolve %q: %v, want ok=%v", dest, err, ok)
		}
	}
}

// TestKubernetesVersions: the lowest version the support matrix, the README
// and the install docs claim is the chart's kubeVersion floor.
func TestKubernetesVersions(t *testing.T) {
	chart, err := os.ReadFile(filepath.Join(root, "charts", "lastcall", "Chart.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^kubeVersion: ">=1\.(\d+)\.0-0"$`).FindSubmatch(chart)
	if m == nil {
		t.Fatalf("Chart.yaml has no kubeVersion \">=1.N.0-0\"")
	}
	floor := "1." + string(m[1])
	for file, want := range map[string]string{
		"docs/kubernetes-versions.md": "| " + floor + " | yes (the lowest) |",
		"README.md":                   "Kubernetes " + floor + " or later",
	} {
		src, err := os.ReadFile(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(src), want) {
			t.Errorf("%s does not say %q, the chart's kubeVersion floor", file, want)
		}
	}
}

// TestRunbooks: each alert of the chart's PrometheusRule template has its
// runbook in docs/runbooks/, listed in that folder's README, and no runbook
// is left for an alert that is gone. (charts' TestMonitoring checks the
// rendered rule's runbook_url against the same files.)
func TestRunbooks(t *testing.T) {
	tmpl, err := os.ReadFile(filepath.Join(root, "charts", "lastcall", "templates", "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var alerts []string
	for _, m := range regexp.MustCompile(`(?m)^\s*- alert: (\w+)\s*$`).FindAllSubmatch(tmpl, -1) {
		alerts = append(alerts, string(m[1]))
	}
	if len(alerts) < 7 {
		t.Fatalf("found %d alerts in the template (%v): the template is not what this test expects", len(alerts), alerts)
	}
	index, err := os.ReadFile(filepath.Join(root, "docs", "runbooks", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		if _, err := os.Stat(filepath.Join(root, "docs", "runbooks", a+".md")); err != nil {
			t.Errorf("alert %s has no runbook: %v", a, err)
		}
		if !strings.Contains(string(index), "]("+a+".md)") {
			t.Errorf("docs/runbooks/README.md does not list %s", a)
		}
	}
	files, err := filepath.Glob(filepath.Join(root, "docs", "runbooks", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".md")
		if name != "README" && !slices.Contains(alerts, name) {
			t.Errorf("runbook %s.md is for no alert of the chart", name)
		}
	}
}
