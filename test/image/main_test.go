package image

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

const testTag = "ghcr.io/nodetrust/nodetrust:v0.0.0-test"

// tinyBinary builds a static hello-world for linux/goarch.
func tinyBinary(t *testing.T, goarch string) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("go.mod", "module hello\n\ngo 1.26\n")
	write("main.go", "package main\n\nfunc main() { println(\"hello\") }\n")
	out := filepath.Join(dir, "hello")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	return out
}

// runTool runs tools/image (built once, see tool_test.go) with args and
// returns its stdout and stderr; a failure's error carries the message the
// tool printed ("image: …").
func runTool(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(imageTool(t), args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		err = fmt.Errorf("%s (%w)", strings.TrimSpace(stderr.String()), err)
	}
	return stdout.String() + stderr.String(), err
}

func TestImageArchive(t *testing.T) {
	t.Parallel()
	bin := tinyBinary(t, "amd64")
	out := filepath.Join(t.TempDir(), "img.tar")
	msg, err := runTool(t, "-bin", bin, "-o", out, "-tag", testTag)
	if err != nil {
		t.Fatalf("%v\n%s", err, msg)
	}
	if !strings.Contains(msg, testTag) || !strings.Contains(msg, "linux/amd64") {
		t.Errorf("report: %q", msg)
	}

	manifest, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(out) })
	if err != nil {
		t.Fatal(err)
	}
	if len(manifest) != 1 || !slices.Equal(manifest[0].RepoTags, []string{testTag}) {
		t.Fatalf("manifest.json: %+v, want one image tagged %s", manifest, testTag)
	}

	tag, err := name.NewTag(testTag)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(out, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{"/nodetrust"}) || len(cf.Config.Cmd) != 0 {
		t.Errorf("entrypoint %q cmd %q", cf.Config.Entrypoint, cf.Config.Cmd)
	}
	if cf.Config.Labels["org.opencontainers.image.version"] != "v0.0.0-test" {
		t.Errorf("labels %v", cf.Config.Labels)
	}
	if cf.Created.Unix() != 0 {
		t.Errorf("created %v, want the Unix epoch (SOURCE_DATE_EPOCH unset)", cf.Created)
	}

	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	hdr, err := tr.Next()
	if err != nil {
		t.Fatal(err)
	}
	if hdr.Name != "nodetrust" || hdr.Mode != 0o755 || hdr.Uid != 0 || hdr.Gid != 0 || hdr.Typeflag != tar.TypeReg {
		t.Errorf("layer entry %+v", hdr)
	}
	got, err := io.ReadAll(tr)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Error("layer's /nodetrust differs from -bin")
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Errorf("layer holds more than /nodetrust: %v", err)
	}
}

func TestImageReproducible(t *testing.T) {
	t.Parallel()
	bin := tinyBinary(t, "amd64")
	dir := t.TempDir()
	sums := make([][32]byte, 2)
	for i := range sums {
		out := filepath.Join(dir, "img.tar")
		if msg, err := runTool(t, "-bin", bin, "-o", out, "-tag", testTag); err != nil {
			t.Fatalf("%v\n%s", err, msg)
		}
		data, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		sums[i] = sha256.Sum256(data)
	}
	if sums[0] != sums[1] {
		t.Error("two builds of one binary differ")
	}
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Errorf("temporary files left beside the archive: %v %v", entries, err)
	}
}

func TestImageRefuses(t *testing.T) {
	t.Parallel()
	amd64 := tinyBinary(t, "amd64")
	arm64 := tinyBinary(t, "arm64")
	text := filepath.Join(t.TempDir(), "text")
	if err := os.WriteFile(text, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		args []string
		want string
	}{
		"no -bin":            {[]string{}, "-bin is required"},
		"missing binary":     {[]string{"-bin", filepath.Join(t.TempDir(), "nope")}, "no such file"},
		"not ELF":            {[]string{"-bin", text}, "not an ELF executable"},
		"other arch":         {[]string{"-bin", arm64}, "want EM_X86_64"},
		"arm64 ok":           {[]string{"-bin", arm64, "-platform", "linux/arm64"}, ""},
		"bad tag":            {[]string{"-bin", amd64, "-tag", "Not A Tag"}, "-tag"},
		"not linux":          {[]string{"-bin", amd64, "-platform", "windows/amd64"}, "only linux"},
		"extra argument":     {[]string{"-bin", amd64, "extra"}, "unexpected arguments"},
		"unknown arch":       {[]string{"-bin", amd64, "-platform", "linux/mips"}, "unknown architecture"},
		"malformed platform": {[]string{"-bin", amd64, "-platform", "a/b/c/d"}, "-platform"},
	}
	if hasInterp(t, "/bin/true") {
		tests["dynamic"] = struct {
			args []string
			want string
		}{[]string{"-bin", "/bin/true"}, "dynamically linked"}
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			out := filepath.Join(t.TempDir(), "img.tar")
			msg, err := runTool(t, append(tt.args, "-o", out)...)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("%v\n%s", err, msg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
			if _, statErr := os.Stat(out); statErr == nil {
				t.Error("an archive was written despite the error")
			}
		})
	}
}

// hasInterp reports whether path is a dynamically linked ELF (Debian's /bin/true is).
func hasInterp(t *testing.T, path string) bool {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return f.Machine == elf.EM_X86_64
		}
	}
	return false
}
