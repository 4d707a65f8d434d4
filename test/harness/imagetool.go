package harness

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// GoBuild builds a static binary of pkg (a directory, relative to dir) into out.
func GoBuild(dir, pkg, out string) error {
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, b)
	}
	return nil
}

// ImageTool is tools/image (what `make image` runs), built into dir once:
// a later call with the same dir returns the binary already there.
func ImageTool(t testing.TB, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "image-tool")
	if _, err := os.Stat(out); err == nil {
		return out
	}
	start := time.Now()
	if err := GoBuild(filepath.Join(RepoRoot(), "tools", "image"), ".", out); err != nil {
		t.Fatal(err)
	}
	t.Logf("built tools/image in %v", time.Since(start).Round(time.Millisecond))
	return out
}
