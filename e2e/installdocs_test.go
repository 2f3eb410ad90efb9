package e2e

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// installMarker, alone on the line before a block's opening fence ```sh,
// marks a block of the install docs that the e2e runs: README.md and every
// Markdown file under docs/. Each marked block holds only helm commands (a
// line ending in \ goes on on the next; # starts a comment), and installs
// the release "lastcall" in the namespace "lastcall-system" from
// oci://ghcr.io/lastcall-dev/charts/lastcall. The e2e runs the blocks in
// file order, each on a cluster with no release (the one before is
// uninstalled), with the registry on loopback in place of ghcr.io.
const installMarker = "<!-- e2e: install -->"

// chartOCI is the chart's home in the docs; the e2e's registry stands in
// for its host.
const chartOCI = "oci://ghcr.io/lastcall-dev/charts/"

// docBlock is one marked block of the install docs.
type docBlock struct {
	// file is its path from the repository's root, line its opening fence's.
	file string
	line int
	// commands are its commands, continuation lines joined.
	commands []string
}

func (b docBlock) String() string { return fmt.Sprintf("%s:%d", b.file, b.line) }

// installBlocks finds the marked blocks of README.md and docs/**/*.md
// under root, in file order.
func installBlocks(root string) ([]docBlock, error) {
	files := []string{"README.md"}
	err := filepath.WalkDir(filepath.Join(root, "docs"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) && p == filepath.Join(root, "docs") {
				return filepath.SkipDir
			}
			return err
		}
		if !d.IsDir() && strings.HasSuffix(p, ".md") {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(files[1:])
	var blocks []docBlock
	for _, f := range files {
		text, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			return nil, err
		}
		bs, err := parseInstallBlocks(f, string(text))
		if err != nil {
			return nil, err
		}
		blocks = append(blocks, bs...)
	}
	return blocks, nil
}

// parseInstallBlocks returns the marked blocks of one Markdown file. A
// marker not followed by a ```sh fence, an unterminated block, an empty
// block or a command other than helm is an error.
func parseInstallBlocks(file, text string) ([]docBlock, error) {
	var blocks []docBlock
	lines := strings.Split(text, "\n")
	for i := 0; i < len(lines); i++ {
		if strings.TrimSpace(lines[i]) != installMarker {
			continue
		}
		if i+1 >= len(lines) || strings.TrimSpace(lines[i+1]) != "```sh" {
			return nil, fmt.Errorf("%s:%d: %s must be followed by a ```sh fence", file, i+1, installMarker)
		}
		b := docBlock{file: file, line: i + 2}
		var cur string
		closed := false
		for i += 2; i < len(lines); i++ {
			l := strings.TrimSpace(lines[i])
			if strings.HasPrefix(l, "```") {
				closed = true
				break
			}
			if cur == "" && (l == "" || strings.HasPrefix(l, "#")) {
				continue
			}
			if c, ok := strings.CutSuffix(l, "\\"); ok {
				cur += c
				continue
			}
			b.commands = append(b.commands, strings.Join(strings.Fields(cur+l), " "))
			cur = ""
		}
		switch {
		case !closed:
			return nil, fmt.Errorf("%s: the block is not closed", b)
		case cur != "":
			return nil, fmt.Errorf("%s: the last command ends in a \\", b)
		case len(b.commands) == 0:
			return nil, fmt.Errorf("%s: no command in the block", b)
		}
		for _, c := range b.commands {
			if !strings.HasPrefix(c, "helm ") {
				return nil, fmt.Errorf("%s: %q: the e2e runs only helm commands", b, c)
			}
		}
		blocks = append(blocks, b)
	}
	return blocks, nil
}

// forRegistry is cmd as the e2e runs it: the chart from the registry
// reg (plain HTTP on loopback) instead of ghcr.io, and, to helm install and
// upgrade, the e2e's values appended (they point the agent at the metadata
// fakes), and --wait to those that are not a dry run.
func forRegistry(cmd, reg string, values []string) string {
	if !strings.Contains(cmd, chartOCI) {
		return cmd
	}
	cmd = strings.ReplaceAll(cmd, "oci://ghcr.io/", "oci://"+reg+"/") + " --plain-http"
	f := strings.Fields(cmd)
	if len(f) > 1 && (f[1] == "install" || f[1] == "upgrade") {
		for _, v := range values {
			cmd += " '" + v + "'"
		}
		if !slices.ContainsFunc(f, func(a string) bool { return strings.HasPrefix(a, "--dry-run") }) {
			cmd += " --wait --timeout 3m"
		}
	}
	return cmd
}

func TestParseInstallBlocks(t *testing.T) {
	text := "# Install\n\n" + installMarker + "\n```sh\n# first a dry run\n" +
		"helm install lastcall oci://ghcr.io/lastcall-dev/charts/lastcall \\\n  --namespace lastcall-system --create-namespace --dry-run\n\n" +
		"helm install lastcall oci://ghcr.io/lastcall-dev/charts/lastcall --namespace lastcall-system --create-namespace\n```\n\n" +
		"```sh\nhelm uninstall lastcall\n```\n"
	blocks, err := parseInstallBlocks("x.md", text)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"helm install lastcall oci://ghcr.io/lastcall-dev/charts/lastcall --namespace lastcall-system --create-namespace --dry-run",
		"helm install lastcall oci://ghcr.io/lastcall-dev/charts/lastcall --namespace lastcall-system --create-namespace",
	}
	if len(blocks) != 1 || blocks[0].line != 4 || !slices.Equal(blocks[0].commands, want) {
		t.Fatalf("blocks = %+v, want one at x.md:4 with %q", blocks, want)
	}
	got := forRegistry(want[0], "127.0.0.1:5", []string{"--set", "a=b"})
	if got != "helm install lastcall oci://127.0.0.1:5/lastcall-dev/charts/lastcall --namespace lastcall-system --create-namespace --dry-run --plain-http '--set' 'a=b'" {
		t.Errorf("dry run as run: %s", got)
	}
	if got := forRegistry(want[1], "127.0.0.1:5", nil); !strings.HasSuffix(got, " --plain-http --wait --timeout 3m") {
		t.Errorf("install as run: %s", got)
	}
	for _, bad := range []string{
		installMarker + "\n```bash\nhelm version\n```\n",
		installMarker + "\n```sh\nhelm version\n",
		installMarker + "\n```sh\n```\n",
		installMarker + "\n```sh\nkubectl apply -f x.yaml\n```\n",
		installMarker + "\n```sh\nhelm install \\\n```\n",
	} {
		if _, err := parseInstallBlocks("bad.md", bad); err == nil {
			t.Errorf("no error for\n%s", bad)
		}
	}
}

// TestInstallDocsMarked: the repository's install docs have at least one
// marked block and each parses, so the e2e has commands to run; here,
// without a cluster.
func TestInstallDocsMarked(t *testing.T) {
	blocks, err := installBlocks("..")
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) == 0 {
		t.Fatalf("no %s block in README.md or docs/: the e2e would install nothing the docs say", installMarker)
	}
	raw, err := os.ReadFile("../charts/lastcall/Chart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	version := regexp.MustCompile(`(?m)^version: *"?([^"\s]+)`).FindStringSubmatch(string(raw))
	if version == nil {
		t.Fatal("no version in Chart.yaml")
	}
	for _, b := range blocks {
		if !slices.ContainsFunc(b.commands, func(c string) bool { return strings.Contains(c, chartOCI+"lastcall") }) {
			t.Errorf("%s: no command uses %slastcall", b, chartOCI)
		}
		for _, c := range b.commands {
			f := strings.Fields(c)
			if i := slices.Index(f, "--version"); i >= 0 && (i+1 == len(f) || f[i+1] != version[1]) {
				t.Errorf("%s: %q installs another chart version than this one's, %s", b, c, version[1])
			}
		}
	}
}

// runInstallDocs runs the marked blocks of the install docs against the
// cluster, the last one's release left installed.
func (c *cluster) runInstallDocs(t *testing.T) {
	t.Helper()
	blocks, err := installBlocks("..")
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) == 0 {
		t.Fatalf("no %s block in README.md or docs/", installMarker)
	}
	values := c.helmValues("gce")
	env := append(os.Environ(), "KUBECONFIG="+c.kubeconfig,
		"PATH="+filepath.Dir(c.helm)+string(os.PathListSeparator)+os.Getenv("PATH"))
	for i, b := range blocks {
		if i > 0 {
			c.helmRun(t, "uninstall", release, "-n", releaseNS, "--wait", "--timeout", "2m")
		}
		for _, cmd := range b.commands {
			run := forRegistry(cmd, c.registry, values)
			sh := exec.CommandContext(t.Context(), "sh", "-c", run)
			sh.Env = env
			out, err := sh.CombinedOutput()
			if err != nil {
				t.Fatalf("%s: %s\nas run: %s\n%v\n%s", b, cmd, run, err, tail(out, 40))
			}
			t.Logf("%s: ran %s", b, cmd)
		}
	}
	out, err := exec.CommandContext(t.Context(), c.helm, "status", release, "-n", releaseNS, "--kubeconfig", c.kubeconfig).CombinedOutput()
	if err != nil {
		t.Fatalf("after the install docs' commands, no release %s in %s: %v\n%s", release, releaseNS, err, out)
	}
}

// tail is the last n lines of out.
func tail(out []byte, n int) string {
	var lines []string
	s := bufio.NewScanner(strings.NewReader(string(out)))
	for s.Scan() {
		lines = append(lines, s.Text())
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
