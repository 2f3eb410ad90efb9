package main

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"

	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

var (
	amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64 = v1.Platform{OS: "linux", Architecture: "arm64"}
)

// startRegistry serves go-containerregistry's OCI registry on loopback and
// returns its host:port.
func startRegistry(t *testing.T) string {
	t.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// fileIn is the content of the file at p (no leading slash) in img's only
// layer.
func fileIn(t *testing.T, img v1.Image, p string) []byte {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) != 1 {
		t.Fatalf("%d layers, want 1", len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			t.Fatalf("no %s in the layer; it has %v", p, names)
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if h.Name == p {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
	}
}

// pushed pushes the layout dir to "to" through the command and checks
// that it printed the reference want.
func pushed(t *testing.T, dir, to, want string) {
	t.Helper()
	var out bytes.Buffer
	if err := run(t.Context(), []string{"push", "-layout", dir, to}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "pushed "+want+"@sha256:") {
		t.Fatalf("push printed %q, want pushed %s@sha256:...", out.String(), want)
	}
}

// resolveByDigest fetches the index at ref and each of its platforms'
// images by digest (repo@sha256:...), as a node of that architecture
// does, and checks that both platforms are there, each image's config
// names its platform, and the index pulled is the one built.
func resolveByDigest(t *testing.T, ref string, built v1.ImageIndex) map[string]v1.Image {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(r, remote.WithContext(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	got, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}
	want, err := built.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("index at %s is %s, built %s", ref, got, want)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	imgs := map[string]v1.Image{}
	for _, d := range m.Manifests {
		if d.Platform == nil {
			t.Fatalf("manifest %s has no platform", d.Digest)
		}
		byDigest := r.Context().Digest(d.Digest.String())
		img, err := remote.Image(byDigest, remote.WithContext(t.Context()))
		if err != nil {
			t.Fatalf("%s (%s): %v", byDigest, d.Platform, err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != d.Platform.OS || cf.Architecture != d.Platform.Architecture {
			t.Errorf("%s: config says %s/%s, index says %s", byDigest, cf.OS, cf.Architecture, d.Platform)
		}
		imgs[d.Platform.String()] = img
	}
	for _, p := range []v1.Platform{amd64, arm64} {
		if imgs[p.String()] == nil {
			t.Errorf("%s: no %s image; the index has %d manifests", ref, p.String(), len(m.Manifests))
		}
	}
	return imgs
}

// TestBuildPushResolve builds a two-platform image from per-architecture
// files, writes it as an OCI layout, pushes it to a real registry on
// loopback and pulls each platform back by digest: each has its own file.
func TestBuildPushResolve(t *testing.T) {
	src := t.TempDir()
	for _, arch := range []string{"amd64", "arm64"} {
		if err := os.MkdirAll(filepath.Join(src, "linux-"+arch), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, "linux-"+arch, "tool"), []byte("tool for "+arch), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	spec := Spec{
		Platforms:  []v1.Platform{amd64, arm64},
		Files:      []string{filepath.Join(src, "{os}-{arch}", "tool") + ":/usr/local/bin/tool"},
		Entrypoint: "/usr/local/bin/tool",
		User:       "65532:65532",
	}
	idx, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := idx.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Fatalf("two builds of the same files: %s and %s, want one digest", d1, d2)
	}
	dir := filepath.Join(t.TempDir(), "tool")
	if err := WriteLayout(dir, "v9.9.9", idx); err != nil {
		t.Fatal(err)
	}
	reg := startRegistry(t)
	// A repository without tag gets the layout's.
	ref := reg + "/lastcall-dev/tool:v9.9.9"
	pushed(t, dir, reg+"/lastcall-dev/tool", ref)
	imgs := resolveByDigest(t, ref, idx)
	for _, arch := range []string{"amd64", "arm64"} {
		img := imgs["linux/"+arch]
		if img == nil {
			continue
		}
		if got := string(fileIn(t, img, "usr/local/bin/tool")); got != "tool for "+arch {
			t.Errorf("linux/%s image holds %q", arch, got)
		}
		cf, _ := img.ConfigFile()
		if cf.Config.User != "65532:65532" || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/usr/local/bin/tool" {
			t.Errorf("linux/%s config: user %q entrypoint %q", arch, cf.Config.User, cf.Config.Entrypoint)
		}
	}
}

// TestBuildMissingFile: a platform whose binary was not built is an error
// that names the file, not an image without it.
func TestBuildMissingFile(t *testing.T) {
	_, err := Build(Spec{
		Platforms: []v1.Platform{amd64, arm64},
		Files:     []string{filepath.Join(t.TempDir(), "{arch}", "x") + ":/x"},
	})
	if err == nil || !strings.Contains(err.Error(), "linux/amd64") || !strings.Contains(err.Error(), "amd64/x") {
		t.Fatalf("err = %v, want one naming linux/amd64 and its missing file", err)
	}
}

// TestReleaseImages pushes the layouts `make image` wrote (LASTCALL_IMAGES,
// set by `make test-images`) to a registry on loopback, resolves both
// platforms of each by digest, and checks that each image's binaries are
// ELF files for its architecture; then pushes the chart with `helm push`
// (LASTCALL_HELM, LASTCALL_CHART) and reads it back from oci://.
func TestReleaseImages(t *testing.T) {
	images, tag := os.Getenv("LASTCALL_IMAGES"), os.Getenv("LASTCALL_IMAGE_TAG")
	if images == "" || tag == "" {
		t.Skip("LASTCALL_IMAGES and LASTCALL_IMAGE_TAG not set: run `make test-images`")
	}
	reg := startRegistry(t)
	machines := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}
	for _, img := range []struct {
		name     string
		binaries []string
	}{
		{"lastcall", []string{"usr/local/bin/node-agent", "usr/local/bin/injector"}},
		{"sidecar", []string{"usr/local/bin/sidecar"}},
	} {
		dir := filepath.Join(images, img.name)
		built, err := ReadLayout(dir, tag)
		if err != nil {
			t.Fatal(err)
		}
		ref := reg + "/lastcall-dev/" + img.name + ":" + tag
		pushed(t, dir, ref, ref)
		var out bytes.Buffer
		if err := run(t.Context(), []string{"inspect", ref}, &out); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s", out.String())
		for plat, pulled := range resolveByDigest(t, ref, built) {
			arch := strings.TrimPrefix(plat, "linux/")
			for _, b := range img.binaries {
				f, err := elf.NewFile(bytes.NewReader(fileIn(t, pulled, b)))
				if err != nil {
					t.Fatalf("%s %s: %v", plat, b, err)
				}
				if f.Machine != machines[arch] {
					t.Errorf("%s image: %s is for %v, want %v", plat, b, f.Machine, machines[arch])
				}
			}
		}
	}

	helm, chart := os.Getenv("LASTCALL_HELM"), os.Getenv("LASTCALL_CHART")
	if helm == "" || chart == "" {
		t.Fatal("LASTCALL_HELM and LASTCALL_CHART must be set with LASTCALL_IMAGES")
	}
	pkg := t.TempDir()
	helmRun(t, helm, "package", chart, "-d", pkg)
	tgz, err := filepath.Glob(filepath.Join(pkg, "lastcall-*.tgz"))
	if err != nil || len(tgz) != 1 {
		t.Fatalf("helm package wrote %v", tgz)
	}
	pushOut := helmRun(t, helm, "push", tgz[0], "oci://"+reg+"/lastcall-dev/charts", "--plain-http")
	t.Logf("helm push: %s", pushOut)
	version := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(tgz[0]), "lastcall-"), ".tgz")
	shown := helmRun(t, helm, "show", "chart", "oci://"+reg+"/lastcall-dev/charts/lastcall", "--version", version, "--plain-http")
	if !strings.Contains(shown, "appVersion: "+tag) {
		t.Errorf("chart pulled from oci:// says\n%s\nwant appVersion: %s (the images' tag)", shown, tag)
	}
}

func helmRun(t *testing.T, helm string, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), helm, args...)
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestDockerfile: the Dockerfile builds for any target platform from the
// build machine's (FROM --platform=$BUILDPLATFORM, GOOS/GOARCH from
// TARGETOS/TARGETARCH), and every base image but scratch is pinned by
// digest.
func TestDockerfile(t *testing.T) {
	raw, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var froms, builds int
	for i, l := range strings.Split(string(raw), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			froms++
			if f[1] == "scratch" {
				continue
			}
			if f[1] != "--platform=$BUILDPLATFORM" || !strings.Contains(f[2], "@sha256:") {
				t.Errorf("Dockerfile:%d: %s: want FROM --platform=$BUILDPLATFORM IMAGE@sha256:...", i+1, l)
			}
		case "RUN":
			if strings.Contains(l, "go build") {
				builds++
				if !strings.Contains(l, "GOOS=$TARGETOS") || !strings.Contains(l, "GOARCH=$TARGETARCH") {
					t.Errorf("Dockerfile:%d: %s: want GOOS=$TARGETOS GOARCH=$TARGETARCH", i+1, l)
				}
			}
		}
	}
	if froms != 3 || builds != 1 {
		t.Errorf("%d FROM and %d go build lines, want 3 and 1", froms, builds)
	}
}

// TestBuildArchive: build writes the OCI layout and, with -archive, the
// chosen platform's image as a docker archive under its name.
func TestBuildArchive(t *testing.T) {
	src := t.TempDir()
	for _, arch := range []string{"amd64", "arm64"} {
		if err := os.WriteFile(filepath.Join(src, arch), []byte("tool for "+arch), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir, archive := filepath.Join(t.TempDir(), "tool"), filepath.Join(t.TempDir(), "tool.tar")
	var out bytes.Buffer
	err := run(t.Context(), []string{"build", "-o", dir, "-tag", "v9.9.9", "-add", filepath.Join(src, "{arch}") + ":/tool",
		"-archive", archive, "-archive-ref", "example.com/tool:v9.9.9", "-archive-platform", "linux/arm64"}, &out)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"linux/amd64", "linux/arm64"} {
		if !strings.Contains(out.String(), "  "+p+" ") {
			t.Errorf("build printed\n%s\nwithout %s", out.String(), p)
		}
	}
	tag, err := name.NewTag("example.com/tool:v9.9.9")
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.Architecture != "arm64" || string(fileIn(t, img, "tool")) != "tool for arm64" {
		t.Errorf("archive: %s image holding %q, want the arm64 one", cf.Architecture, fileIn(t, img, "tool"))
	}
}
