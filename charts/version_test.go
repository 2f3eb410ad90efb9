package charts

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// semver is a semantic version as Helm and the release tags spell it.
var semver = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$`)

// TestReleaseVersion: the chart's version is a semantic version; its
// appVersion is the same with a v, the release's git tag; the images `make
// image` tags by default carry that tag, the one the chart installs by
// default (TestTemplate checks the rendered images), so a chart installed
// with no values runs the images of its own release.
func TestReleaseVersion(t *testing.T) {
	raw, err := os.ReadFile(chartDir + "/Chart.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Version    string `json:"version"`
		AppVersion string `json:"appVersion"`
	}
	if err := yaml.Unmarshal(raw, &c); err != nil {
		t.Fatal(err)
	}
	if !semver.MatchString(c.Version) {
		t.Fatalf("chart version %q is not a semantic version", c.Version)
	}
	if c.AppVersion != "v"+c.Version {
		t.Errorf("appVersion %q, want v%s (the release tag of chart version %s)", c.AppVersion, c.Version, c.Version)
	}
	cmd := exec.CommandContext(t.Context(), "make", "-s", "-C", "..", "--eval", "print-image-tag: ; @echo $(IMAGE_TAG)", "print-image-tag")
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "IMAGE_TAG=") && !strings.HasPrefix(kv, "MAKEFLAGS=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != c.AppVersion {
		t.Errorf("make image tags the images %q by default, the chart installs %q", got, c.AppVersion)
	}
}
